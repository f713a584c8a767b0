"""Plain HTTP through the proxy (mod_proxy_http's part): bodies both ways, keep-alive,
bodiless answers, 100-continue, refused upgrades, and the headers the backend sees."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from typing import Optional

import h11
import pytest
from websockets.sync.client import connect as ws_connect

from .helpers import read_head, status_of, upgrade_request

pytestmark = pytest.mark.timeout(30)


class Backend:
    """A thread-per-connection HTTP/1.1 server (h11) that records what it receives.

    Paths: /echo (body back; chunked reply when the request says ``X-Reply: chunked``),
    /403, /204, /304, anything else: 200 "ok". Every request head is kept in ``seen``.
    """

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.connections = 0
        self._threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        h = h11.Connection(h11.SERVER)
        conn.settimeout(10)
        try:
            while True:
                event = h.next_event()
                if event is h11.NEED_DATA:
                    data = conn.recv(1 << 16)
                    h.receive_data(data)
                    if not data and h.their_state is not h11.DONE:
                        return
                    continue
                if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    return
                assert isinstance(event, h11.Request), event
                headers = {k.decode().lower(): v.decode() for k, v in event.headers}
                target = event.target.decode()
                self.seen.append((event.method.decode(), target, headers))
                if headers.get("expect", "").lower() == "100-continue":
                    conn.sendall(h.send(h11.InformationalResponse(status_code=100, headers=[])))
                body = bytearray()
                while True:
                    ev = h.next_event()
                    if ev is h11.NEED_DATA:
                        h.receive_data(conn.recv(1 << 16))
                    elif isinstance(ev, h11.Data):
                        body += ev.data
                    else:
                        break
                self._answer(conn, h, event.method.decode(), target, headers, bytes(body))
                if h.our_state is h11.MUST_CLOSE or h.their_state is h11.MUST_CLOSE:
                    return
                h.start_next_cycle()
        except (OSError, h11.ProtocolError):
            return
        finally:
            conn.close()

    def _answer(self, conn, h, method, target, headers, body) -> None:
        if target.startswith("/echo"):
            if headers.get("x-reply") == "chunked":
                conn.sendall(h.send(h11.Response(status_code=200, headers=[("Transfer-Encoding", "chunked")])))
                for i in range(0, len(body), 100_000):
                    conn.sendall(h.send(h11.Data(data=body[i : i + 100_000])))
            else:
                conn.sendall(h.send(h11.Response(status_code=200, headers=[("Content-Length", str(len(body)))])))
                conn.sendall(h.send(h11.Data(data=body)))
        elif target.startswith("/403"):
            text = b"forbidden here\n"
            conn.sendall(h.send(h11.Response(status_code=403, headers=[("Content-Length", str(len(text)))])))
            conn.sendall(h.send(h11.Data(data=text)))
        elif target.startswith("/204"):
            conn.sendall(h.send(h11.Response(status_code=204, headers=[])))
        elif target.startswith("/304"):
            conn.sendall(h.send(h11.Response(status_code=304, headers=[("ETag", '"v1"')])))
        else:
            text = b"ok"
            conn.sendall(h.send(h11.Response(status_code=200, headers=[("Content-Length", "2")])))
            if method != "HEAD":
                conn.sendall(h.send(h11.Data(data=text)))
        conn.sendall(h.send(h11.EndOfMessage()))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def backend():
    b = Backend()
    yield b
    b.close()


class Client:
    """A keep-alive HTTP/1.1 client on one connection (h11), for exchanges in sequence."""

    def __init__(self, addr) -> None:
        self.sock = socket.create_connection(addr[:2], timeout=10)
        self.h = h11.Connection(h11.CLIENT)

    def request(self, method: str, target: str, headers=(), body: Optional[bytes] = None, chunked: bool = False):
        hdrs = [("Host", "front.test"), *headers]
        if body is not None and not chunked:
            hdrs.append(("Content-Length", str(len(body))))
        if chunked:
            hdrs.append(("Transfer-Encoding", "chunked"))
        self.sock.sendall(self.h.send(h11.Request(method=method, target=target, headers=hdrs)))
        if body:
            for i in range(0, len(body), 64_000):
                self.sock.sendall(self.h.send(h11.Data(data=body[i : i + 64_000])))
        self.sock.sendall(self.h.send(h11.EndOfMessage()))
        return self.response()

    def response(self):
        status, headers, data = None, {}, bytearray()
        while True:
            ev = self.h.next_event()
            if ev is h11.NEED_DATA:
                self.h.receive_data(self.sock.recv(1 << 16))
                continue
            if isinstance(ev, h11.InformationalResponse):
                continue
            if isinstance(ev, h11.Response):
                status, headers = ev.status_code, {k.decode().lower(): v.decode() for k, v in ev.headers}
            elif isinstance(ev, h11.Data):
                data += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                break
            else:
                raise AssertionError(ev)
        if self.h.our_state is h11.DONE and self.h.their_state is h11.DONE:
            self.h.start_next_cycle()
        return status, headers, bytes(data)

    def close(self) -> None:
        self.sock.close()


def proxy(make_proxy, backend, extra=""):
    return make_proxy(extra + f"ProxyPass / http://127.0.0.1:{backend.port}/\n")


@pytest.mark.parametrize("chunked_up", [False, True], ids=["length-up", "chunked-up"])
@pytest.mark.parametrize("chunked_down", [False, True], ids=["length-down", "chunked-down"])
def test_bodies_both_ways_intact(make_proxy, backend, chunked_up, chunked_down):
    engine = proxy(make_proxy, backend)
    client = Client(engine.addresses[0])
    body = os.urandom(3 << 20)
    headers = [("X-Reply", "chunked")] if chunked_down else []
    status, rh, data = client.request("POST", "/echo", headers, body, chunked=chunked_up)
    assert status == 200
    assert ("transfer-encoding" in rh) == chunked_down
    assert hashlib.sha256(data).digest() == hashlib.sha256(body).digest()
    method, target, seen = backend.seen[-1]
    assert (method, target) == ("POST", "/echo")
    assert ("transfer-encoding" in seen) == chunked_up
    client.close()


def test_keep_alive_several_requests_and_bodiless_answers(make_proxy, backend):
    engine = proxy(make_proxy, backend)
    client = Client(engine.addresses[0])
    assert client.request("GET", "/a")[::2] == (200, b"ok")
    assert client.request("HEAD", "/b")[::2] == (200, b"")
    assert client.request("GET", "/204")[::2] == (204, b"")
    assert client.request("GET", "/304")[::2] == (304, b"")
    assert client.request("GET", "/c")[::2] == (200, b"ok")  # still in step after all of them
    assert [t for _, t, _ in backend.seen] == ["/a", "/b", "/204", "/304", "/c"]
    client.close()


def test_expect_100_continue(make_proxy, backend):
    engine = proxy(make_proxy, backend)
    client = Client(engine.addresses[0])
    body = b"x" * 50_000
    status, _, data = client.request("POST", "/echo", [("Expect", "100-continue")], body)
    assert status == 200 and data == body
    client.close()


def test_hop_by_hop_never_reach_the_backend_and_forwarded_headers_are_added(make_proxy, backend):
    engine = proxy(make_proxy, backend)
    client = Client(engine.addresses[0])
    hop = [
        ("Connection", "keep-alive, X-Secret"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Trailer", "X-T"),
        ("Proxy-Authorization", "Basic c2VjcmV0"),
        ("Proxy-Connection", "keep-alive"),
        ("X-Secret", "named in Connection"),
        ("X-Kept", "yes"),
    ]
    assert client.request("GET", "/h", hop)[0] == 200
    _, _, seen = backend.seen[-1]
    for name in ("keep-alive", "te", "trailer", "proxy-authorization", "proxy-connection", "x-secret", "upgrade"):
        assert name not in seen, (name, seen)
    assert seen.get("connection", "close").lower() in ("close", "keep-alive")
    assert seen["x-kept"] == "yes"
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-host"] == "front.test"
    assert "x-forwarded-server" in seen
    assert seen["host"] == f"127.0.0.1:{backend.port}"  # ProxyPreserveHost Off
    client.close()


def test_proxy_add_headers_off_and_preserve_host_on(make_proxy, backend):
    engine = proxy(make_proxy, backend, "ProxyAddHeaders Off\nProxyPreserveHost On\n")
    client = Client(engine.addresses[0])
    assert client.request("GET", "/h")[0] == 200
    _, _, seen = backend.seen[-1]
    assert not [k for k in seen if k.startswith("x-forwarded-")]
    assert seen["host"] == "front.test"
    client.close()


def test_refused_upgrade_is_relayed_then_the_connection_stays_http(make_proxy, backend):
    """R48: a 403 to an upgrade goes back with its body; the next request on the same
    connection is parsed and routed by the proxy, never tunnelled."""
    engine = make_proxy(f"ProxyPass / ws://127.0.0.1:{backend.port}/\n")
    with socket.create_connection(engine.addresses[0], timeout=10) as sock:
        sock.sendall(upgrade_request("/403"))
        head, rest = read_head(sock)
        assert status_of(head) == 403
        while len(rest) < len(b"forbidden here\n"):
            rest += sock.recv(1024)
        assert rest == b"forbidden here\n"
        sock.sendall(b"GET /second HTTP/1.1\r\nHost: front.test\r\n\r\n")
        head, rest = read_head(sock)
        assert status_of(head) == 200
    assert [t for _, t, _ in backend.seen] == ["/403", "/second"]
    assert "upgrade" not in backend.seen[1][2]


def test_keep_alive_get_then_upgrade_on_the_same_connection(make_proxy, echo):
    engine = make_proxy(f"ProxyPass / ws://127.0.0.1:{echo.address[1]}/\nProxyPass / http://127.0.0.1:{echo.address[1]}/\n")
    sock = socket.create_connection(engine.addresses[0], timeout=10)
    sock.sendall(b"GET /page HTTP/1.1\r\nHost: front.test\r\n\r\n")
    head, rest = read_head(sock)
    assert status_of(head) == 200
    length = int(next(l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")).split(b":")[1])
    while len(rest) < length:
        rest += sock.recv(65536)
    before = echo.accepted
    # The same client connection now asks for a WebSocket (websockets reuses our socket).
    with ws_connect("ws://front.test/chat", sock=sock, open_timeout=5) as ws:
        ws.send("after a GET")
        assert ws.recv(timeout=5) == "after a GET"
    assert echo.accepted == before + 1  # the upgrade rode a fresh backend connection
