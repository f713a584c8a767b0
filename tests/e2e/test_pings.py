"""ProxyWebsocketPingInterval and ProxyWebsocketHalfCloseTimeout end to end (R124-R126),
every strategy: a peer that never answers is ended after about two intervals, one that
answers stays up, the backend (a ``websockets`` server) sees no protocol error, and a
half-closed tunnel is closed after the timeout in each direction."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest
from websockets.sync.client import connect as ws_connect

from tests.e2e.test_graceful import ws_backend  # noqa: F401
from tests.support.backends import HalfCloser, Server, switching_protocols
from tests.support.clients import raw_upgrade, read_head
from tests.support.strategies import STRATEGY_CONFIGS
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

INTERVAL = 0.25


def proxy(make_proxy, strategy: str, port: int, extra: str):
    engine = make_proxy(STRATEGY_CONFIGS[strategy] + extra + f"ProxyPass / ws://127.0.0.1:{port}/\n")
    return engine, engine.addresses[0]


def test_a_raw_client_that_never_answers_is_ended_after_two_intervals(make_proxy, ws_backend, strategy, caplog):  # noqa: F811
    engine, addr = proxy(make_proxy, strategy, ws_backend.port, f"ProxyWebsocketPingInterval {int(INTERVAL * 1000)}ms\n")
    sock, head, rest = raw_upgrade(addr, "/dead")
    assert b" 101 " in head
    t0 = time.monotonic()
    sock.settimeout(10)
    got = bytearray(rest)
    while chunk := sock.recv(4096):
        got += chunk
    elapsed = time.monotonic() - t0
    assert got[:2] == bytes((0x89, len(b"tunnel"))) and got[2:8] == b"tunnel"  # an unmasked Ping
    # Then at most the backend's Pong to the proxy's own ping of it (passed on, as any
    # frame): never a Close, the client being the dead side.
    assert got[8:] in (b"", b"\x8a\x06tunnel")
    assert 1.8 * INTERVAL <= elapsed <= 4 * INTERVAL, elapsed  # about two intervals
    sock.close()
    wait_for(lambda: engine.stats["tunnels.closed"] == 1, what="the tunnel closed")
    wait_for(lambda: 1001 in ws_backend.close_codes, what="the backend told: going away")
    assert ws_backend.errors == []
    assert any("dead peer: the client sent nothing" in r.getMessage() for r in caplog.records)


def test_a_websockets_client_that_answers_stays_up_for_ten_intervals(make_proxy, ws_backend, strategy):  # noqa: F811
    # The client's Pong must come within one interval, and the websockets client answers
    # from a thread of its own: at 50 ms a loaded machine left it unscheduled that long
    # (seen in a full run: "dead peer" after eight answered pings). The interval of the
    # other tests here leaves that margin; ten of them are still what is checked.
    engine, addr = proxy(make_proxy, strategy, ws_backend.port, f"ProxyWebsocketPingInterval {int(INTERVAL * 1000)}ms\n")
    with ws_connect(f"ws://{addr[0]}:{addr[1]}/alive", open_timeout=5, ping_interval=None) as ws:
        pump = wait_for(lambda: (engine.live_tunnels() or [None])[0], what="the tunnel")
        pong = 2 + 4 + len(b"tunnel")  # a masked Pong from the client
        wait_for(lambda: pump.c2b.count >= 10 * pong or pump.done, timeout=30, what="ten pings answered")
        assert not pump.done, f"the tunnel ended: {pump.reason}"
        ws.send("still up")
        assert ws.recv(timeout=5) == "still up"
    wait_for(lambda: engine.stats["tunnels.closed"] == 1, what="the tunnel closed")
    wait_for(lambda: ws_backend.close_codes, what="the backend's end of it")
    assert ws_backend.close_codes == [1000]  # the client's own close, nothing of the proxy's
    assert ws_backend.errors == []  # the backend took the client's Pongs (unsolicited) fine


class HoldsOpen(Server):
    """Answers the upgrade, reads the client until EOF, keeps its own direction open."""

    def __init__(self) -> None:
        self.eof = threading.Event()
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        with conn:
            read_head(conn, timeout=10)
            conn.sendall(switching_protocols())
            conn.settimeout(20)
            while conn.recv(65536):
                pass
            self.eof.set()
            self.closing.wait(20)  # its own direction held open until the test ends


def test_half_close_timeout_when_the_backend_does_not_end_its_direction(make_proxy, strategy, caplog):
    with HoldsOpen() as backend:
        engine, addr = proxy(make_proxy, strategy, backend.port, "ProxyWebsocketHalfCloseTimeout 300ms\n")
        sock, head, _ = raw_upgrade(addr, "/half")
        assert b" 101 " in head
        sock.shutdown(socket.SHUT_WR)
        t0 = time.monotonic()
        assert backend.eof.wait(5)  # the client's FIN reached the backend
        sock.settimeout(10)
        assert sock.recv(100) == b""  # then, the timeout passed, the tunnel is closed
        elapsed = time.monotonic() - t0
        assert 0.25 <= elapsed <= 2.0, elapsed
        sock.close()
        wait_for(lambda: engine.stats["tunnels.closed"] == 1, what="the tunnel closed")
        assert any("half-close timeout: the backend did not end its direction 0.3s after the client" in r.getMessage() for r in caplog.records)


def test_half_close_timeout_when_the_client_does_not_end_its_direction(make_proxy, strategy, caplog):
    with HalfCloser(b"bye") as backend:
        engine, addr = proxy(make_proxy, strategy, backend.port, "ProxyWebsocketHalfCloseTimeout 300ms\n")
        sock, head, rest = raw_upgrade(addr, "/half")
        sock.settimeout(10)
        got = bytearray(rest)
        while chunk := sock.recv(100):
            got += chunk
        t0 = time.monotonic()  # the backend's direction has ended; the client's stays open
        assert got == b"bye"
        assert backend.done.wait(10)  # the proxy closed the backend's connection
        elapsed = time.monotonic() - t0
        assert 0.2 <= elapsed <= 2.0, elapsed
        sock.close()
        wait_for(lambda: engine.stats["tunnels.closed"] == 1, what="the tunnel closed")
        assert any("half-close timeout: the client did not end its direction" in r.getMessage() for r in caplog.records)


def test_no_timeout_configured_a_half_closed_tunnel_stays(make_proxy, strategy):
    with HalfCloser(b"bye") as backend:
        engine, addr = proxy(make_proxy, strategy, backend.port, "")
        sock, head, rest = raw_upgrade(addr, "/half")
        sock.settimeout(10)
        while sock.recv(100):
            pass
        assert not backend.done.wait(0.6)  # twice the other tests' timeout: still open
        sock.sendall(b"late")
        sock.shutdown(socket.SHUT_WR)
        assert backend.done.wait(10) and backend.got == b"late"
        sock.close()


def test_ping_interval_is_read_per_location(make_proxy, ws_backend):  # noqa: F811
    engine = make_proxy(
        f"ProxyWebsocketAsync On\n<Location /pinged>\nProxyWebsocketPingInterval 100ms\n</Location>\n"
        f"ProxyPass / ws://127.0.0.1:{ws_backend.port}/\n"
    )
    addr = engine.addresses[0]
    quiet, _, _ = raw_upgrade(addr, "/quiet")
    pinged, _, _ = raw_upgrade(addr, "/pinged/x")
    pinged.settimeout(5)
    assert pinged.recv(2) == struct.pack("!BB", 0x89, 6)
    quiet.settimeout(0.3)
    with pytest.raises(TimeoutError):
        quiet.recv(2)  # no ping outside the <Location>
    for s in (quiet, pinged):
        s.close()
