"""HTTP/2 on the TLS listener (R140-R146): WebSockets over RFC 8441 extended CONNECT to
a python `websockets` backend, plain requests, many streams on one connection, flow
control against a backend that stops reading, and the refusals. Real sockets: an
h2-based client (tests/support/h2client.py) over TLS with ALPN."""

from __future__ import annotations

import base64
import hashlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import pytest
import trustme
from websockets.sync.server import ServerConnection, serve
from wsproto.events import CloseConnection, Pong

from tests.support.backends import HTTPBackend, Server
from tests.support.clients import read_head
from tests.support.h2client import H2Client, H2WebSocket
from tests.support.resources import fd_table, wait_fds_back
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def cert(ca, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("h2certs") / "proxy.pem"
    ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(path))
    return str(path)


def client_ctx(ca) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


def _ws_handler(ws: ServerConnection) -> None:
    """Echo; "close:CODE" makes the backend close with CODE; "proto?" names the subprotocol."""
    for message in ws:
        if isinstance(message, str) and message.startswith("close:"):
            ws.close(int(message[6:]), "backend says bye")
            return
        if message == "proto?":
            ws.send(ws.subprotocol or "none")
            continue
        ws.send(message)


class _Listening(logging.Handler):
    """Set when websockets' serve_forever says it listens: its selector exists then."""

    def __init__(self) -> None:
        super().__init__()
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("server listening"):
            self.event.set()


@pytest.fixture(scope="module")
def ws_backend() -> Iterator[tuple[str, int]]:
    logger = logging.getLogger("tests.e2e.test_h2.ws_backend")
    logger.setLevel(logging.INFO)
    listening = _Listening()
    logger.addHandler(listening)
    server = serve(_ws_handler, "127.0.0.1", 0, max_size=None, subprotocols=["chat", "superchat"], compression=None, select_subprotocol=lambda conn, offered: offered[0] if offered else None, logger=logger)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # serve_forever makes its selector in that thread: wait for it, so that an fd
    # baseline a test takes (test_stream_fds_are_released) already counts it.
    assert listening.event.wait(10), "the websockets backend never started listening"
    yield server.socket.getsockname()[:2]
    server.shutdown()
    thread.join(5)
    logger.removeHandler(listening)


def h2_proxy(make_proxy, cert: str, body: str, *, websockets: bool = True, protocols: str = "h2 http/1.1", log: str = ""):
    text = (
        f"Listen 127.0.0.1:0 https\nSSLEngine On\nSSLCertificateFile {cert}\n"
        f"Protocols {protocols}\nH2WebSockets {'on' if websockets else 'off'}\n{body}\n"
    )
    if log:
        text += f'CustomLog {log} "%H|%r|%>s|%a"\n'
    return make_proxy(text)


def test_alpn_offers_h2_only_where_protocols_name_it(make_proxy, cert, ca, ws_backend):
    on = h2_proxy(make_proxy, cert, f"ProxyPass /ws/ ws://{ws_backend[0]}:{ws_backend[1]}/")
    off = h2_proxy(make_proxy, cert, f"ProxyPass /ws/ ws://{ws_backend[0]}:{ws_backend[1]}/", protocols="http/1.1")
    for engine, expected in ((on, "h2"), (off, "http/1.1")):
        ctx = client_ctx(ca)
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        with socket.create_connection(engine.addresses[0], timeout=5) as raw, ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.selected_alpn_protocol() == expected
            if expected == "http/1.1":  # and HTTP/1.1 is served on it as before
                tls.sendall(b"GET /nothing HTTP/1.1\r\nHost: localhost\r\n\r\n")
                assert read_head(tls)[0].startswith(b"HTTP/1.1 404")


def test_settings_announce_extended_connect_only_with_h2websockets_on(make_proxy, cert, ca):
    for on in (True, False):
        engine = h2_proxy(make_proxy, cert, "H2MaxSessionStreams 7\nH2WindowSize 100000", websockets=on)
        with H2Client(engine.addresses[0], client_ctx(ca)) as client:
            client.wait(lambda: 3 in client.remote_settings, what="server SETTINGS")
            assert client.remote_settings[3] == 7  # MAX_CONCURRENT_STREAMS
            assert client.remote_settings[4] == 100000  # INITIAL_WINDOW_SIZE
            assert client.remote_settings.get(8, 0) == (1 if on else 0)  # ENABLE_CONNECT_PROTOCOL


def test_websocket_over_h2_text_binary_ping_and_close_codes(make_proxy, cert, ca, ws_backend, tmp_path):
    log = tmp_path / "access.log"
    engine = h2_proxy(make_proxy, cert, f"ProxyPass /ws/ ws://{ws_backend[0]}:{ws_backend[1]}/", log=str(log))
    with H2Client(engine.addresses[0], client_ctx(ca)) as client:
        sid = client.connect_ws("/ws/chat", headers=[("sec-websocket-protocol", "superchat")])
        state = client.response(sid)
        assert state.status == 200
        headers = dict(state.headers)
        assert headers["sec-websocket-protocol"] == "superchat"  # the backend's choice
        assert "sec-websocket-accept" not in headers and "upgrade" not in headers
        ws = H2WebSocket(client, sid)
        ws.send("hello over h2")
        assert ws.recv() == "hello over h2"
        ws.send("proto?")
        assert ws.recv() == "superchat"
        big = bytes(range(256)) * (16 * 4096)  # 16 MiB
        ws.send(big)
        assert ws.recv(timeout=40) == big
        ws.ping(b"are you there")
        event = ws.next_event()
        assert isinstance(event, Pong) and event.payload == b"are you there"
        ws.close(4001, "client says bye")
        event = ws.next_event()
        assert isinstance(event, CloseConnection) and event.code == 4001
        ws.end()
        client.complete(sid)
        wait_for(lambda: engine.stats["tunnels.closed"] == 1, what="the first tunnel closed")

        sid = client.connect_ws("/ws/other", headers=[("sec-websocket-protocol", "chat")])  # a second one
        assert client.response(sid).status == 200
        ws = H2WebSocket(client, sid)
        ws.send("close:4002")
        event = ws.next_event()
        assert isinstance(event, CloseConnection) and event.code == 4002 and event.reason == "backend says bye"
        ws.close(4002)
        ws.end()
        client.complete(sid)
    wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= 2, what="both tunnels logged")
    lines = log.read_text().splitlines()
    assert lines[0] == "HTTP/2.0|GET /ws/chat HTTP/2.0|101|127.0.0.1"
    assert lines[1].startswith("HTTP/2.0|GET /ws/other HTTP/2.0|101|")


def test_ten_websockets_and_plain_requests_at_once_on_one_connection(make_proxy, cert, ca, ws_backend, tmp_path):
    log = tmp_path / "access.log"
    with HTTPBackend() as http:
        engine = h2_proxy(
            make_proxy,
            cert,
            f"ProxyPass /ws/ ws://{ws_backend[0]}:{ws_backend[1]}/\nProxyPass /api/ http://127.0.0.1:{http.port}/",
            log=str(log),
        )
        with H2Client(engine.addresses[0], client_ctx(ca)) as client:
            ws_ids = [client.connect_ws(f"/ws/{i}") for i in range(10)]
            body = b"b" * 300_000
            plain = [client.request("GET", f"/api/get{i}") for i in range(5)]
            posted = client.request("POST", "/api/echo", body=body)  # chunked to the backend
            sized = client.request("POST", "/api/echo", body=b"12345", headers=[("content-length", "5")])
            sockets = []
            for sid in ws_ids:
                assert client.response(sid).status == 200
                sockets.append(H2WebSocket(client, sid))
            for i, ws in enumerate(sockets):
                ws.send(f"message {i}")
            for i, ws in enumerate(sockets):
                assert ws.recv() == f"message {i}"
            for sid in plain:
                state = client.complete(sid)
                assert (state.status, bytes(state.data)) == (200, b"ok")
            state = client.complete(posted)
            assert state.status == 200 and bytes(state.data) == body
            assert bytes(client.complete(sized).data) == b"12345"
            assert len(engine._h2) == 1  # one connection carried all of it
            assert http.seen[-1][2].get("x-forwarded-for") == "127.0.0.1"
            for ws in sockets:
                ws.close()
                ws.end()
            for sid in ws_ids:
                client.complete(sid)
        wait_for(lambda: engine.stats["tunnels.closed"] == 10, what="ten tunnels closed")
    wait_for(lambda: len(log.read_text().splitlines()) == 17, what="17 access-log records")
    records = log.read_text().splitlines()
    assert sum("|101|" in r for r in records) == 10
    assert all(r.startswith("HTTP/2.0|") for r in records)


class _Stalled(Server):
    """Accepts the upgrade (a correct Accept for the proxy's key), then never reads."""

    def __init__(self) -> None:
        self.release = threading.Event()
        super().__init__(timeout=30)

    def handle(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        head, _ = read_head(conn)
        key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n") if line.lower().startswith(b"sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1(key + GUID.encode()).digest()).decode()
        conn.sendall(f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n".encode())
        self.release.wait(30)

    def close(self) -> None:
        self.release.set()
        super().close()


def test_flow_control_backend_that_stops_reading_bounds_what_the_proxy_holds(make_proxy, cert, ca):
    with _Stalled() as backend:
        engine = h2_proxy(make_proxy, cert, f"ProxyPass /ws/ ws://127.0.0.1:{backend.port}/\nH2WindowSize 65536")
        with H2Client(engine.addresses[0], client_ctx(ca)) as client:
            sid = client.connect_ws("/ws/stall")
            assert client.response(sid).status == 200
            sent = 0
            chunk = b"z" * 16384
            deadline = time.monotonic() + 20
            # Send until the stream's window stays shut: the proxy stopped acknowledging.
            quiet_since = None
            while time.monotonic() < deadline:
                window = client.conn.local_flow_control_window(sid)
                if window > 0:
                    n = min(window, len(chunk))
                    client.conn.send_data(sid, chunk[:n])
                    client._flush()
                    sent += n
                    quiet_since = None
                    continue
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > 1.0:
                    break
                client.pump(0.1)
            assert client.conn.local_flow_control_window(sid) == 0
            # What got in is one window plus the socket buffers on the way (pair, backend
            # socket) and the pump's buffer: far below what an unbounded proxy would take.
            assert sent < 8 * 1024 * 1024, sent
            (conn,) = engine._h2
            stream = conn.streams[sid]
            assert len(stream.to_pair) <= 65536  # never more than the window held here
            other = client.request("GET", "/elsewhere")  # the connection itself still flows
            assert client.complete(other).status == 404


def test_refusals_are_http2_answers(make_proxy, cert, ca, ws_backend):
    with HTTPBackend() as http:
        engine = h2_proxy(
            make_proxy,
            cert,
            f"""<VirtualHost *:0>
ServerName localhost
ProxyPass /ws/ ws://{ws_backend[0]}:{ws_backend[1]}/
ProxyPass /plain/ ws://127.0.0.1:{http.port}/
<Location /ws/secret>
Require all denied
</Location>
</VirtualHost>
<VirtualHost *:0>
ServerName nows.test
H2WebSockets off
ProxyPass /ws/ ws://{ws_backend[0]}:{ws_backend[1]}/
</VirtualHost>""",
        )
        with H2Client(engine.addresses[0], client_ctx(ca)) as client:
            denied = client.connect_ws("/ws/secret")
            assert client.complete(denied).status == 403  # Require, as for HTTP/1.1
            assert b"403" in client.streams[denied].data
            nope = client.connect_ws("/nowhere")
            assert client.complete(nope).status == 404
            plain = client.connect_ws("/plain/403")  # the backend's own refusal, relayed
            state = client.complete(plain)
            assert state.status == 403 and bytes(state.data) == b"forbidden here\n"
            ignored = client.connect_ws("/plain/ok")  # a 200 that did not switch: 502 (httpd)
            assert client.complete(ignored).status == 502
            version = client.connect_ws("/ws/v", version="8")
            state = client.complete(version)
            assert state.status == 426 and dict(state.headers)["sec-websocket-version"] == "13"
            vhost_off = client.connect_ws("/ws/x", authority="nows.test")
            assert client.complete(vhost_off).status == 501  # H2WebSockets off for that host
            connect = client.conn.get_next_available_stream_id()
            client.conn.send_headers(connect, [(":method", "CONNECT"), (":authority", "example.com:443")])
            client._flush()
            client.streams.setdefault(connect, type(client.streams[denied])())
            assert client.complete(connect).status == 405  # no forward proxy
            assert client.goaway is None  # each refusal was the stream's alone


def test_extended_connect_without_the_setting_is_a_stream_error(make_proxy, cert, ca, ws_backend):
    engine = h2_proxy(make_proxy, cert, f"ProxyPass /ws/ ws://{ws_backend[0]}:{ws_backend[1]}/", websockets=False)
    with H2Client(engine.addresses[0], client_ctx(ca)) as client:
        sid = client.connect_ws("/ws/x")
        state = client.complete(sid)
        assert state.reset == 1  # PROTOCOL_ERROR (RFC 8441 3)
        other = client.request("GET", "/ws/")  # the connection lives on
        assert client.complete(other).status in (400, 426)


def test_stream_fds_are_released(make_proxy, cert, ca, ws_backend):
    engine = h2_proxy(make_proxy, cert, f"ProxyPass /ws/ ws://{ws_backend[0]}:{ws_backend[1]}/")
    with H2Client(engine.addresses[0], client_ctx(ca)) as client:
        client.wait(lambda: 3 in client.remote_settings, what="server SETTINGS")
        before = fd_table()
        for _ in range(5):
            sid = client.connect_ws("/ws/again")
            assert client.response(sid).status == 200
            ws = H2WebSocket(client, sid)
            ws.close()
            ws.end()
            client.complete(sid)
        (conn,) = engine._h2
        wait_for(lambda: not conn.streams and engine.stats["tunnels.closed"] == 5, what="streams forgotten")
        wait_fds_back(before)
    wait_for(lambda: not engine._h2, what="connection gone")
