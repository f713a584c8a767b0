"""Relay details end to end, with real backends and clients: the Upgrade a relayed 426
(200, 101) leaves the client (R101), the idle-limit precedence (R100), early bytes in
the counts (R99), a reset after the close handshake (R98), the plain-HTTP upgrade debug
line (R102)."""

from __future__ import annotations

import logging
import re
import socket
import struct
import threading
import time

import pytest
from websockets.exceptions import ConnectionClosedOK
from websockets.sync.client import connect as ws_connect

from tests.support.backends import Answering, Server, read_upgrade, switching_protocols
from tests.support.clients import raw_upgrade, read_head, recv_exactly, recv_until_eof, status_of, upgrade_request
from tests.support.strategies import STRATEGY_CONFIGS
from tests.support.waiting import wait_for
from tunnel.protocol.frames import build_frame, close_frame

pytestmark = pytest.mark.timeout(60)

MASK = b"\x01\x02\x03\x04"


def header(head: bytes, name: str) -> list[str]:
    return [m.decode() for m in re.findall(rb"(?im)^" + name.encode() + rb": *([^\r\n]*)", head)]


# -- R101: the Upgrade of a relayed answer -------------------------------------------------


def _answer(status_line: bytes, extra: bytes = b"") -> Answering:
    return Answering(status_line + b"\r\n" + extra + b"Content-Length: 2\r\n\r\nno", close=True)


@pytest.mark.parametrize("as_upgrade", [True, False])
def test_a_relayed_426_keeps_its_upgrade(make_proxy, as_upgrade):
    backend = _answer(b"HTTP/1.1 426 Upgrade Required", b"Upgrade: websocket\r\nConnection: Upgrade\r\n")
    try:
        engine = make_proxy(f"ProxyPass / http://127.0.0.1:{backend.port}/\n")  # a plain http:// route
        sock = socket.create_connection(engine.addresses[0], timeout=5)
        sock.sendall(upgrade_request("/x") if as_upgrade else b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
        head, rest = read_head(sock)
        assert status_of(head) == 426
        assert header(head, "Upgrade") == ["websocket"]
        assert "upgrade" in [t.strip().lower() for v in header(head, "Connection") for t in v.split(",")]
        assert recv_exactly(sock, 2, initial=rest) == b"no"
        sock.close()
    finally:
        backend.close()


@pytest.mark.parametrize(
    ("route", "kept"),
    [("ws", True), ("http", False)],  # a 200 keeps it only where the worker could upgrade
)
def test_a_relayed_200_keeps_upgrade_as_httpd_does(make_proxy, route, kept):
    backend = _answer(b"HTTP/1.1 200 OK", b"Upgrade: websocket\r\nConnection: Upgrade\r\n")
    try:
        engine = make_proxy("ProxyWebsocketFallbackToProxyHttp On\n" f"ProxyPass / {route}://127.0.0.1:{backend.port}/\n")
        status, head, body = _plain_get(engine)
        assert status == 200 and body == b"no"
        assert header(head, "Upgrade") == (["websocket"] if kept else [])
        assert any("upgrade" in v.lower() for v in header(head, "Connection")) is kept
    finally:
        backend.close()


def test_a_200_to_an_upgrade_request_gives_no_upgrade(make_proxy):
    # The backend declines the upgrade with a plain 200 (no Upgrade of its own): the
    # client connection stays HTTP and is told nothing about upgrading.
    backend = _answer(b"HTTP/1.1 200 OK")
    try:
        engine = make_proxy(f"ProxyPass / ws://127.0.0.1:{backend.port}/\n")
        sock, head, rest = raw_upgrade(engine.addresses[0], "/x")
        assert status_of(head) == 200
        assert header(head, "Upgrade") == []
        assert not any("upgrade" in v.lower() for v in header(head, "Connection"))
        sock.close()
        assert b"Upgrade: websocket" in bytes(backend.received)  # it was asked
    finally:
        backend.close()


def test_a_101_gives_the_client_upgrade_and_connection(make_proxy):
    backend = Answering(switching_protocols())
    try:
        engine = make_proxy(f"ProxyPass / ws://127.0.0.1:{backend.port}/\n")
        sock, head, _ = raw_upgrade(engine.addresses[0], "/x")
        assert status_of(head) == 101
        assert header(head, "Upgrade") == ["websocket"] and header(head, "Connection") == ["Upgrade"]
        sock.close()
    finally:
        backend.close()


def _plain_get(engine) -> tuple[int, bytes, bytes]:
    with socket.create_connection(engine.addresses[0], timeout=5) as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = recv_until_eof(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    return status_of(head), head, body


# -- R100: the idle limit, most specific setting first -----------------------------------------


def _lifetime(engine, path: str = "/ws/") -> float:
    """Open a tunnel, stay silent, and return how long until the proxy closes it."""
    sock, head, _ = raw_upgrade(engine.addresses[0], path)
    assert status_of(head) == 101
    opened = time.monotonic()
    sock.settimeout(10)  # the deadline: every limit under test is far below it
    assert sock.recv(1) == b""  # the proxy's orderly close, no byte before it
    sock.close()
    return time.monotonic() - opened


@pytest.mark.parametrize("strategy", ["sync", "async"])
def test_the_routes_timeout_wins_over_the_servers_idle_timeout(make_proxy, raw_echo, strategy):
    engine = make_proxy(
        STRATEGY_CONFIGS[strategy]
        + "ProxyWebsocketIdleTimeout 30\n"
        + f"ProxyPass /ws/ ws://127.0.0.1:{raw_echo.address[1]}/ timeout=0.3\n"
    )
    assert 0.25 <= _lifetime(engine) < 5


@pytest.mark.parametrize("strategy", ["sync", "async"])
def test_a_locations_idle_timeout_wins_over_the_route_and_the_server(make_proxy, raw_echo, strategy, caplog):
    engine = make_proxy(
        STRATEGY_CONFIGS[strategy]
        + "ProxyWebsocketIdleTimeout 30\n"
        + "<Location /ws/>\n"
        + f"  ProxyPass ws://127.0.0.1:{raw_echo.address[1]}/ timeout=20\n"
        + "  ProxyWebsocketIdleTimeout 250ms\n"
        + "</Location>\n"
    )
    assert 0.2 <= _lifetime(engine) < 5
    wait_for(lambda: "closed: idle timeout" in caplog.text, what="the idle close logged")


def test_the_servers_idle_timeout_applies_without_a_route_timeout(make_proxy, raw_echo):
    engine = make_proxy(f"ProxyWebsocketIdleTimeout 300ms\nProxyPass /ws/ ws://127.0.0.1:{raw_echo.address[1]}/\n")
    assert 0.25 <= _lifetime(engine) < 5


# -- R99: early bytes in every count ---------------------------------------------------------------


def test_early_bytes_both_ways_are_counted_in_the_logs(make_proxy, tmp_path, strategy, caplog):
    down = build_frame(2, b"backend-early")  # in the same write as the 101
    up = build_frame(2, b"client-early", mask=MASK)  # in the same write as the request head
    backend = Answering(switching_protocols() + down)
    log = tmp_path / "access.log"
    try:
        engine = make_proxy(
            STRATEGY_CONFIGS[strategy]
            + f'CustomLog {log} "%>s %I %O %b %{{to_backend}}n %{{to_client}}n"\n'
            + f"ProxyPass / ws://127.0.0.1:{backend.port}/\n"
        )
        request = upgrade_request("/x")
        sock = socket.create_connection(engine.addresses[0], timeout=5)
        sock.sendall(request + up)
        head, rest = read_head(sock)
        assert status_of(head) == 101
        assert recv_exactly(sock, len(down), initial=rest) == down
        assert _after_head(backend, len(up)) == up
        sock.close()
        backend.conns[0].close()  # Answering holds its connection: end the backend's side too
        wait_for(lambda: engine.stats["tunnels.closed"] == 1, what="tunnel closed")
        engine.stop()
        sent_101 = len(head) + 4
        assert log.read_text().split() == [
            "101",
            str(len(request) + len(up)),
            str(sent_101 + len(down)),
            str(len(down)),
            str(len(up)),
            str(len(down)),
        ]
        assert f"{len(up)} bytes to backend, {len(down)} to client" in caplog.text
    finally:
        backend.close()


def _after_head(backend: Answering, n: int) -> bytes:
    """The first ``n`` bytes the backend got after the request head (Answering reads the
    head and whatever came in the same reads; the rest is read here)."""
    data = bytes(backend.received)
    tail = data[data.find(b"\r\n\r\n") + 4 :]
    if len(tail) < n:
        tail += recv_exactly(backend.conns[0], n - len(tail))
    return tail


# -- R98: a reset after the close handshake ------------------------------------------------------


class ResettingWebSocket(Server):
    """A WebSocket backend that answers the handshake, and after a close handshake ends the
    connection with a reset (SO_LINGER 0), as uvicorn and aiohttp servers often do.

    ``initiate``: it sends the first Close (after one message from the client); else it
    answers the client's Close. ``reset_early``: it resets right after its own Close,
    before any answer to it (no close handshake).
    """

    def __init__(self, *, initiate: bool = False, reset_early: bool = False) -> None:
        self.initiate = initiate
        self.reset_early = reset_early
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        upgrade = read_upgrade(conn)
        if upgrade is None:
            return
        accept, buf = upgrade
        conn.sendall(switching_protocols(accept=accept))
        if self.initiate or self.reset_early:
            self._frame(conn, buf)  # one message first
            conn.sendall(close_frame(1000, "server done"))
            if not self.reset_early:
                self._frame(conn, buf)  # the client's Close answer
        else:
            while self._frame(conn, buf) not in (0x8, None):  # messages, until the client's Close
                pass
            conn.sendall(close_frame(1000))
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()  # a reset, not a FIN

    @staticmethod
    def _frame(conn: socket.socket, buf: bytearray) -> int | None:
        """Read one whole (small, masked) client frame; its opcode (None at EOF)."""
        while len(buf) < 2 or len(buf) < 6 + (buf[1] & 0x7F):
            chunk = conn.recv(65536)
            if not chunk:
                return None
            buf += chunk
        opcode = buf[0] & 0x0F
        del buf[: 6 + (buf[1] & 0x7F)]
        return opcode


def _url(engine) -> str:
    host, port = engine.addresses[0]
    return f"ws://{host}:{port}/ws"


@pytest.mark.parametrize("initiate", [False, True])
def test_a_backend_reset_after_the_close_handshake_is_a_normal_end(make_proxy, strategy, caplog, tmp_path, initiate):
    log = tmp_path / "access.log"
    with ResettingWebSocket(initiate=initiate) as backend:
        engine = make_proxy(
            STRATEGY_CONFIGS[strategy]
            + "ProxyWebsocketFrameTracking On\n"  # seeing the close handshake needs the frames (R160)
            + f'CustomLog {log} "%>s %{{close_reason}}n"\n'
            + f"ProxyPass /ws ws://127.0.0.1:{backend.port}/\n"
        )
        with ws_connect(_url(engine), open_timeout=5, close_timeout=5) as ws:
            ws.send("hello")
            if not initiate:
                ws.close()
            else:
                with pytest.raises(ConnectionClosedOK):  # the server's Close ends the client's recv
                    ws.recv(timeout=5)
        assert ws.close_code == 1000  # a clean close on the client's side
        wait_for(lambda: engine.stats["tunnels.closed"] == 1, what="tunnel closed")
        engine.stop()
    ends = [r for r in caplog.records if "closed:" in r.getMessage()]
    assert len(ends) == 1 and ends[0].levelno == logging.INFO
    assert "closed: backend reset after the close handshake" in ends[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert log.read_text().strip() == "101 backend reset after the close handshake"


@pytest.mark.parametrize("initiate", [False, True])
def test_without_frame_tracking_a_reset_after_the_close_handshake_is_still_a_normal_end(
    make_proxy, strategy, caplog, tmp_path, initiate
):
    """ProxyWebsocketFrameTracking Auto with nothing that needs it (the default): the
    relay follows no frame, but each flow's last short read is kept, and a lone Close
    frame each way (masked from the client, not from the backend) is the close
    handshake: the reset after it is a normal end at info (R98, R160)."""
    log = tmp_path / "access.log"
    with ResettingWebSocket(initiate=initiate) as backend:
        engine = make_proxy(
            STRATEGY_CONFIGS[strategy]
            + f'CustomLog {log} "%>s %{{close_reason}}n"\nProxyPass /ws ws://127.0.0.1:{backend.port}/\n'
        )
        with ws_connect(_url(engine), open_timeout=5, close_timeout=5) as ws:
            ws.send("hello")
            if not initiate:
                ws.close()
            else:
                with pytest.raises(ConnectionClosedOK):
                    ws.recv(timeout=5)
        assert ws.close_code == 1000
        wait_for(lambda: engine.stats["tunnels.closed"] == 1, what="tunnel closed")
        engine.stop()
    assert log.read_text().strip() == "101 backend reset after the close handshake"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_without_frame_tracking_a_close_frame_in_a_longer_read_is_not_taken_as_a_handshake(make_proxy, raw_echo, caplog):
    """The heuristic looks at whole short reads only: a Close frame that came in the same
    read as other bytes, or a masked Close echoed back by the backend, is no handshake."""
    engine = make_proxy(f"ProxyPass /ws ws://127.0.0.1:{raw_echo.address[1]}/\n")
    sock, head, rest = raw_upgrade(engine.addresses[0], "/ws")
    assert status_of(head) == 101
    frame = close_frame(1000, mask=MASK)
    sock.sendall(frame)
    assert recv_exactly(sock, len(frame), initial=rest) == frame  # echoed masked: not a server's Close
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    wait_for(lambda: engine.stats["tunnels.closed"] == 1, what="tunnel closed")
    assert "closed: error: read from client: connection reset by peer" in caplog.text


def test_a_reset_without_a_close_handshake_is_still_an_error_end(make_proxy, caplog):
    with ResettingWebSocket(reset_early=True) as backend:
        engine = make_proxy(f"ProxyPass /ws ws://127.0.0.1:{backend.port}/\n")
        sock, head, rest = raw_upgrade(engine.addresses[0], "/ws")
        assert status_of(head) == 101
        sock.sendall(build_frame(1, b"hello", mask=MASK))
        # The backend's Close (no answer asked for), then its reset: the proxy passes the
        # Close on, and the tunnel ends on the reset.
        assert recv_exactly(sock, len(close_frame(1000, "server done")), initial=rest) == close_frame(1000, "server done")
        sock.settimeout(5)
        try:
            rest = sock.recv(1)
        except ConnectionResetError:
            rest = b""
        assert rest == b""
        sock.close()
        wait_for(lambda: engine.stats["tunnels.closed"] == 1, what="tunnel closed")
    wait_for(lambda: "closed: error: read from backend: connection reset by peer" in caplog.text, what="the error end")


def test_a_masked_close_echoed_back_is_no_close_handshake(make_proxy, raw_echo, caplog):
    # A raw echo sends the client's masked Close back: a server never masks (RFC 6455
    # §5.1), so that direction is not followed and no handshake is seen; the client's
    # reset then ends the tunnel as an error.
    engine = make_proxy(f"ProxyWebsocketFrameTracking On\nProxyPass /ws ws://127.0.0.1:{raw_echo.address[1]}/\n")
    sock, head, rest = raw_upgrade(engine.addresses[0], "/ws")
    assert status_of(head) == 101
    frame = close_frame(1000, mask=MASK)
    sock.sendall(frame)
    # the echo sends the masked bytes back: not a server's frame, so no handshake yet
    assert recv_exactly(sock, len(frame), initial=rest) == frame
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    wait_for(lambda: engine.stats["tunnels.closed"] == 1, what="tunnel closed")
    assert "closed: error: read from client: connection reset by peer" in caplog.text


def test_a_client_reset_after_a_real_close_handshake(make_proxy, caplog):
    """The backend initiates the close, the client answers and resets (SO_LINGER 0)."""
    got_answer = threading.Event()

    class Closer(ResettingWebSocket):
        def handle(self, conn: socket.socket) -> None:
            upgrade = read_upgrade(conn)
            if upgrade is None:
                return
            accept, buf = upgrade
            conn.sendall(switching_protocols(accept=accept) + close_frame(1001, "bye"))
            self._frame(conn, buf)
            got_answer.set()
            conn.recv(1)  # until the proxy closes

    with Closer() as backend:
        engine = make_proxy(f"ProxyWebsocketFrameTracking On\nProxyPass /ws ws://127.0.0.1:{backend.port}/\n")
        sock, head, rest = raw_upgrade(engine.addresses[0], "/ws")
        assert status_of(head) == 101
        assert recv_exactly(sock, len(close_frame(1001, "bye")), initial=rest) == close_frame(1001, "bye")
        sock.sendall(close_frame(1001, mask=MASK))
        assert got_answer.wait(5)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        wait_for(lambda: engine.stats["tunnels.closed"] == 1, what="tunnel closed")
    assert "closed: client reset after the close handshake" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- R102: an upgrade request passed as plain HTTP -------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "why"),
    [("", "the route has no upgrade= and is not a ws:// or wss:// route"), (" upgrade=h2c", "upgrade=h2c")],
)
def test_an_upgrade_passed_as_plain_http_logs_why_at_debug(make_proxy, caplog, keys, why):
    backend = _answer(b"HTTP/1.1 200 OK")
    try:
        engine = make_proxy(f"ProxyPass / http://127.0.0.1:{backend.port}/{keys}\n")
        sock, head, _ = raw_upgrade(engine.addresses[0], "/chat")
        assert status_of(head) == 200
        sock.close()
        (record,) = [r for r in caplog.records if "passed as plain HTTP" in r.getMessage()]
        assert record.levelno == logging.DEBUG
        assert record.getMessage().startswith("Upgrade: websocket for /chat passed as plain HTTP by / (test.conf:2): ")
        assert why in record.getMessage()
        assert b"Upgrade" not in bytes(backend.received)  # forwarded without it
    finally:
        backend.close()


def test_no_debug_line_for_a_tunnel_or_a_request_without_upgrade(make_proxy, raw_echo, caplog):
    engine = make_proxy(f"ProxyPass / ws://127.0.0.1:{raw_echo.address[1]}/\n")
    sock, head, _ = raw_upgrade(engine.addresses[0], "/x")
    assert status_of(head) == 101
    sock.close()
    assert "passed as plain HTTP" not in caplog.text
