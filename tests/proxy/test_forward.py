"""Plain HTTP through the proxy (mod_proxy_http's part): bodies both ways, keep-alive,
bodiless answers, 100-continue, refused upgrades, and the headers the backend sees."""

from __future__ import annotations

import hashlib
import os
import socket
from typing import Optional

import h11
import pytest
from websockets.sync.client import connect as ws_connect

from tests.support.backends import Answering, ChatUpgrader, HTTPBackend
from tests.support.clients import (
    content_length,
    http_get,
    read_head,
    recv_exactly,
    recv_until_eof,
    status_of,
    upgrade_request,
)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def backend():
    with HTTPBackend() as b:
        yield b


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
    body = os.urandom(5 << 20)  # larger than any buffer on the way: it must stream
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


def test_bodies_stream_without_waiting_for_the_whole_message(make_proxy, backend):
    """Neither body is buffered whole: the backend sees the first MiB of a 5 MiB request
    before the client sends the rest, and the client sees the first chunk of an answer
    before the backend sends the rest."""
    engine = proxy(make_proxy, backend)
    mib = 1 << 20
    with socket.create_connection(engine.addresses[0], timeout=10) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: front.test\r\nContent-Length: %d\r\n\r\n" % (5 * mib))
        part = os.urandom(mib)
        sock.sendall(part)
        wait_for(lambda: backend.body_progress >= mib, what="the first MiB at the backend")
        rest = os.urandom(4 * mib)
        sock.sendall(rest)
        head, got = read_head(sock)
        assert status_of(head) == 200
        assert hashlib.sha256(recv_exactly(sock, 5 * mib, initial=got)).digest() == hashlib.sha256(part + rest).digest()

        sock.sendall(b"GET /hold HTTP/1.1\r\nHost: front.test\r\nConnection: close\r\n\r\n")
        head, got = read_head(sock)
        assert status_of(head) == 200
        while b"first;" not in got:  # the backend holds the rest until we have this
            chunk = sock.recv(65536)
            assert chunk, got
            got += chunk
        backend.release.set()
        got = recv_until_eof(sock, initial=got)
    assert got.endswith(b"rest\r\n0\r\n\r\n"), got


@pytest.mark.parametrize(
    "first",
    [
        b"GET /a HTTP/1.1\r\nHost: front.test\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: front.test\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /echo HTTP/1.1\r\nHost: front.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ],
    ids=["get", "length-body", "chunked-body"],
)
def test_pipelined_requests_in_one_packet_are_all_answered_in_order(make_proxy, backend, first):
    """RFC 9112 §9.3.2: a server must answer pipelined requests. The second request
    arrives in the same segment as the first one's head and body."""
    engine = proxy(make_proxy, backend)
    with socket.create_connection(engine.addresses[0], timeout=10) as sock:
        sock.sendall(first + b"GET /second HTTP/1.1\r\nHost: front.test\r\n\r\n" + b"GET /third HTTP/1.1\r\nHost: front.test\r\nConnection: close\r\n\r\n")
        answers = []
        data = b""
        while True:
            chunk = sock.recv(65536)
            data += chunk
            if not chunk:
                break
        for _ in range(3):
            head, _, data = data.partition(b"\r\n\r\n")
            length = content_length(head)
            assert length is not None, head
            answers.append((status_of(head), data[:length]))
            data = data[length:]
    assert answers == [(200, b"hello" if b"POST" in first else b"ok"), (200, b"ok"), (200, b"ok")]
    assert [t for _, t, _ in backend.seen] == [("/echo" if b"POST" in first else "/a"), "/second", "/third"]


def test_expect_100_continue(make_proxy, backend):
    """The client waits for 100 Continue before sending its body, as RFC 9110 §10.1.1 lets
    it; the proxy must send one (or the exchange would hang until a timeout)."""
    engine = proxy(make_proxy, backend)
    body = b"x" * 50_000
    with socket.create_connection(engine.addresses[0], timeout=10) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: front.test\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        head, rest = read_head(sock, timeout=5)
        assert head == b"HTTP/1.1 100 Continue" and rest == b"", head
        sock.sendall(body)
        head, rest = read_head(sock, timeout=10)
        assert status_of(head) == 200
        while len(rest) < len(body):
            rest += sock.recv(65536)
        assert rest == body
        # and the connection is still in step for another request
        sock.sendall(b"GET /after HTTP/1.1\r\nHost: front.test\r\n\r\n")
        head, rest = read_head(sock)
        assert status_of(head) == 200
    assert [t for _, t, _ in backend.seen] == ["/echo", "/after"]


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
        ("X-Forwarded-For", "10.9.8.7"),
    ]
    assert client.request("GET", "/h", hop)[0] == 200
    _, _, seen = backend.seen[-1]
    for name in ("keep-alive", "te", "trailer", "proxy-authorization", "proxy-connection", "x-secret", "upgrade"):
        assert name not in seen, (name, seen)
    assert seen["connection"] == "close"  # one request per backend connection, said so
    assert seen["x-kept"] == "yes"
    assert seen["x-forwarded-for"] == "10.9.8.7, 127.0.0.1"  # appended with ", " (R8)
    assert seen["x-forwarded-host"] == "front.test"
    assert seen["x-forwarded-server"] == "proxy.test"  # the engine's server name
    assert seen["host"] == f"127.0.0.1:{backend.port}"  # ProxyPreserveHost Off
    client.close()


@pytest.mark.parametrize("route", ["http", "ws"])
def test_upgrade_on_a_plain_request_never_reaches_the_backend(make_proxy, backend, route):
    """R14: an Upgrade the route does not take (h2c on an http:// route with no upgrade=,
    or on a ws:// route) is stripped with Connection; the request goes as plain HTTP and
    the client connection stays usable."""
    engine = make_proxy(f"ProxyPass / {route}://127.0.0.1:{backend.port}/\n")
    client = Client(engine.addresses[0])
    headers = [("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", "h2c"), ("HTTP2-Settings", "AAMAAABkAAQAAP__")]
    status, rh, data = client.request("GET", "/plain", headers)
    assert (status, data) == (200, b"ok")
    assert "upgrade" not in rh
    _, _, seen = backend.seen[-1]
    for name in ("upgrade", "http2-settings"):
        assert name not in seen, (name, seen)
    assert "upgrade" not in seen.get("connection", "").lower()
    assert client.request("GET", "/next")[::2] == (200, b"ok")
    client.close()


def one_shot_backend(answer: bytes) -> Answering:
    """A backend that reads one request head, sends ``answer`` raw, and closes."""
    return Answering(answer, close=True)


@pytest.mark.parametrize(
    "answer, sent",
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789", b"0123456789"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n", b"5\r\nhello\r\n"),
    ],
    ids=["short-length", "bad-chunk"],
)
def test_a_body_broken_by_the_backend_closes_the_client_connection(make_proxy, answer, sent, caplog):
    """Once a response head has gone out, a backend that breaks the body leaves one honest
    signal: closing the connection (no terminating chunk). Never a second status line
    inside the body."""
    bad = one_shot_backend(answer)
    try:
        engine = make_proxy(f"ProxyPass / http://127.0.0.1:{bad.port}/\n")
        with socket.create_connection(engine.addresses[0], timeout=5) as sock:
            sock.sendall(b"GET /x HTTP/1.1\r\nHost: front.test\r\n\r\n")
            data = recv_until_eof(sock, timeout=3)
        head, _, body = data.partition(b"\r\n\r\n")
        assert status_of(head) == 200
        assert body == sent, data  # what the backend sent, then EOF
        assert "502" in caplog.text and f"127.0.0.1:{bad.port}" in caplog.text  # logged, not sent
    finally:
        bad.close()


def test_hop_by_hop_response_headers_are_dropped_and_the_client_keeps_its_connection(make_proxy):
    bad = one_shot_backend(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: X-Foo, close\r\nX-Foo: secret\r\n"
        b"Keep-Alive: timeout=5\r\nProxy-Authenticate: Basic realm=x\r\nTrailer: X-T\r\nUpgrade: h2c\r\n"
        b"X-Bar: kept\r\n\r\nok"
    )
    try:
        engine = make_proxy(f"ProxyPass / http://127.0.0.1:{bad.port}/\n")
        client = Client(engine.addresses[0])
        status, headers, body = client.request("GET", "/x")
        assert (status, body) == (200, b"ok")
        for name in ("x-foo", "keep-alive", "proxy-authenticate", "trailer", "upgrade", "connection"):
            assert name not in headers, (name, headers)
        assert headers["x-bar"] == "kept"
        # the backend's "Connection: close" is about its own connection, not the client's
        assert client.request("GET", "/y")[0] == 200
        client.close()
    finally:
        bad.close()


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
    length = content_length(head)
    assert length is not None, head
    while len(rest) < length:
        rest += sock.recv(65536)
    before = echo.accepted
    # The same client connection now asks for a WebSocket (websockets reuses our socket).
    with ws_connect("ws://front.test/chat", sock=sock, open_timeout=5) as ws:
        ws.send("after a GET")
        assert ws.recv(timeout=5) == "after a GET"
    assert echo.accepted == before + 1  # the upgrade rode a fresh backend connection


def test_echo_backend_closes_after_connection_close(echo):
    """The built-in backend ends a "Connection: close" exchange by closing (a client
    reading to EOF must not wait for its own timeout)."""
    status, _, body = http_get(echo.address, "/")
    assert status == 200 and body == b"tunnel echo backend\n"


def test_upgrade_with_a_body_sends_the_body_first_then_tunnels(make_proxy):
    """R12/R19: a non-WebSocket upgrade may carry a body; it goes to the backend as HTTP
    before the switch, and bytes the client sent after it are tunnel bytes."""
    chat = ChatUpgrader()
    try:
        engine = make_proxy(f"ProxyPass / http://127.0.0.1:{chat.port}/ upgrade=chat\n")
        body = os.urandom(70_000)
        with socket.create_connection(engine.addresses[0], timeout=10) as sock:
            sock.sendall(
                b"POST /room HTTP/1.1\r\nHost: front.test\r\nUpgrade: chat\r\nConnection: Upgrade\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body) + body + b"early-tunnel-bytes"
            )
            head, rest = read_head(sock)
            assert status_of(head) == 101 and b"upgrade: chat" in head.lower()
            assert recv_exactly(sock, len(b"early-tunnel-bytes"), initial=rest) == b"early-tunnel-bytes"
            sock.sendall(b"later")
            assert recv_exactly(sock, 5) == b"later"
        assert chat.body == body
        assert chat.head.startswith(b"POST /room HTTP/1.1") and b"\r\nUpgrade: chat" in chat.head
    finally:
        chat.close()


def exchange_twice(engine, first: bytes) -> list[bytes]:
    """Send ``first`` then a plain GET on the same client connection; return both
    answers as raw bytes (the second read to EOF: it says Connection: close)."""
    with socket.create_connection(engine.addresses[0], timeout=5) as sock:
        sock.sendall(first)
        head, rest = read_head(sock)
        length = content_length(head)
        sock.sendall(b"GET /second HTTP/1.1\r\nHost: front.test\r\nConnection: close\r\n\r\n")
        tail = recv_until_eof(sock, timeout=5, initial=rest)
    return [head, length, tail]


@pytest.mark.parametrize(
    "answer, request_line",
    [
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\nETag: \"x\"\r\n\r\n", b"GET /a"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", b"HEAD /a"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"HEAD /a"),
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", b"GET /a"),
    ],
    ids=["304-with-length", "head-with-length", "head-chunked", "204-length-0"],
)
def test_bodiless_answers_announcing_a_length_end_at_the_head(make_proxy, answer, request_line):
    """RFC 9112 §6.3: a HEAD answer, 204 and 304 end at their head whatever length they
    announce; neither the proxy nor the client may wait for a body, and the next request
    on the connection is answered."""
    bad = one_shot_backend(answer)  # every backend connection gets the same answer
    try:
        engine = make_proxy(f"ProxyPass / http://127.0.0.1:{bad.port}/\n")
        head, _, tail = exchange_twice(engine, request_line + b" HTTP/1.1\r\nHost: front.test\r\n\r\n")
        assert status_of(head) == status_of(answer), head
        # the second request's answer follows the first head directly: no body bytes between
        assert tail.startswith(b"HTTP/1.1 " + str(status_of(answer)).encode()), tail
    finally:
        bad.close()


def test_a_response_with_both_transfer_encoding_and_length_is_relayed_with_one_framing(make_proxy):
    """RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, and a proxy must remove
    the Content-Length before forwarding. Relaying the stale ``Content-Length: 50`` with
    a 2-byte body would desynchronise the client (response splitting)."""
    bad = one_shot_backend(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 50\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    )
    try:
        engine = make_proxy(f"ProxyPass / http://127.0.0.1:{bad.port}/\n")
        client = Client(engine.addresses[0])
        status, headers, body = client.request("GET", "/x")
        assert (status, body) == (200, b"ok")
        # relayed chunked as it came, the stale length dropped (not corrected: one framing)
        assert headers.get("transfer-encoding") == "chunked" and "content-length" not in headers, headers
        assert client.request("GET", "/y")[::2] == (200, b"ok")  # still in step
        client.close()
    finally:
        bad.close()


@pytest.mark.parametrize("framing", ["Content-Length: 5\r\n\r\nhello", "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"], ids=["length", "chunked"])
def test_connection_naming_a_framing_header_does_not_lose_the_body(make_proxy, backend, framing):
    """RFC 9110 §7.6.1 lets a client name any field in Connection; the proxy strips the
    named ones but must still frame the body it forwards (httpd re-frames it itself)."""
    engine = proxy(make_proxy, backend)
    name = framing.split(":")[0]
    with socket.create_connection(engine.addresses[0], timeout=5) as sock:
        head, body_bytes = framing.split("\r\n\r\n", 1)
        sock.sendall(f"POST /echo HTTP/1.1\r\nHost: front.test\r\nConnection: close, {name}\r\n{head}\r\n\r\n{body_bytes}".encode())
        data = recv_until_eof(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert status_of(head) == 200 and body == b"hello", data


def test_expect_100_continue_to_a_dead_backend_gets_the_final_status_not_100(make_proxy):
    """RFC 9110 §10.1.1: a server that will not take the body answers the final status
    instead of 100; the client is not invited to send a body that goes nowhere."""
    from tests.support.clients import free_port_refused

    engine = make_proxy(f"ProxyPass / http://127.0.0.1:{free_port_refused()}/\n")
    with socket.create_connection(engine.addresses[0], timeout=5) as sock:
        sock.sendall(b"POST /x HTTP/1.1\r\nHost: front.test\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n")
        head, _ = read_head(sock, timeout=3)
    assert status_of(head) == 503, head
