"""tunnels/async_driver.py's steady path with real socketpairs on a real loop: a busy
plain tunnel asks nothing of the epoll set per message, leaves the steady path when a
send backs up (and comes back once it drains), and still half-closes; and the pump
keeps a read's tail only when it could end with a Close (R98)."""

from __future__ import annotations

import socket
import time

import pytest

from tests.io.test_loop import CountingPoller
from tests.support.waiting import run_loop_until as run_until
from tests.tunnels.test_pump import MemEnd, drive
from tunnel.io.loop import Loop
from tunnel.protocol.frames import build_frame, close_frame
from tunnel.tunnels.async_driver import AsyncTunnel
from tunnel.tunnels.pump import FlowState, Pump, new_scratch

pytestmark = pytest.mark.timeout(30)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    got = bytearray()
    sock.settimeout(5)
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        assert chunk, "EOF before the bytes came"
        got += chunk
    return bytes(got)


@pytest.fixture
def tunnel():
    poller = CountingPoller()
    loop = Loop(poller)
    c, c_peer = socket.socketpair()
    b, b_peer = socket.socketpair()
    for s in (c, b):
        s.setblocking(False)
    ended = []
    t = AsyncTunnel(loop, Pump(c, b), new_scratch(), on_close=ended.append)
    t.start()
    yield loop, poller, t, c_peer, b_peer, ended
    loop.close()
    for s in (c, b, c_peer, b_peer):
        s.close()


def test_a_busy_plain_tunnel_makes_no_epoll_calls_per_message(tunnel):
    loop, poller, t, client, backend, _ = tunnel
    assert t._steady  # plain sockets, nothing buffered: read-only interest both ways
    poller.calls.clear()
    for i in range(50):
        msg = b"m%03d" % i * 16
        client.sendall(msg)
        run_until(loop, lambda n=64 * (i + 1): t.pump.c2b.count == n)
        assert recv_exactly(backend, 64) == msg
        backend.sendall(msg[::-1])
        run_until(loop, lambda n=64 * (i + 1): t.pump.b2c.count == n)
        assert recv_exactly(client, 64) == msg[::-1]
    assert poller.calls == [] and t._steady


def test_a_backed_up_send_leaves_the_steady_path_and_returns_when_it_drains(tunnel):
    loop, poller, t, client, backend, _ = tunnel
    backend.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    blob = bytes(range(256)) * 4096  # 1 MiB: more than the socket buffers hold
    client.setblocking(False)
    sent = 0
    received = bytearray()

    def pushed() -> bool:
        nonlocal sent
        try:
            sent += client.send(blob[sent:])
        except BlockingIOError:
            pass
        return t.pump.c2b.pending is not None

    run_until(loop, pushed)
    assert not t._steady and "modify" in poller.calls  # waiting to write towards the backend
    backend.setblocking(False)

    def drained() -> bool:
        nonlocal sent
        if sent < len(blob):
            try:
                sent += client.send(blob[sent:])
            except BlockingIOError:
                pass
        try:
            while True:
                chunk = backend.recv(1 << 16)
                if not chunk:
                    break
                received.extend(chunk)
        except BlockingIOError:
            pass
        return len(received) == len(blob)

    run_until(loop, drained, timeout=15)
    assert bytes(received) == blob and t.pump.c2b.pending is None
    assert t._steady  # read-only interest again: back on the steady path
    poller.calls.clear()
    client.sendall(b"after")
    run_until(loop, lambda: t.pump.c2b.count == len(blob) + 5)
    assert recv_exactly(backend, 5) == b"after" and poller.calls == []


def test_half_close_on_the_steady_path(tunnel):
    loop, _, t, client, backend, ended = tunnel
    client.sendall(b"last words")
    client.shutdown(socket.SHUT_WR)
    run_until(loop, lambda: t.pump.c2b.state is FlowState.SHUT_WR)
    assert recv_exactly(backend, 10) == b"last words"
    backend.settimeout(5)
    assert backend.recv(10) == b""  # the EOF went on to the backend
    assert not t._steady and not ended  # the other way is still open
    backend.sendall(b"answer")
    run_until(loop, lambda: t.pump.b2c.count == 6)
    assert recv_exactly(client, 6) == b"answer"
    backend.shutdown(socket.SHUT_WR)
    run_until(loop, lambda: bool(ended))
    assert ended[0].reason == "eof" and (ended[0].c2b.count, ended[0].b2c.count) == (10, 6)


MASK = b"\x11\x22\x33\x44"


def test_a_tail_without_a_close_byte_is_not_kept_and_the_handshake_is_still_seen():
    c, b = MemEnd(), MemEnd()
    c.window = b.window = 1 << 20
    pump = Pump(c, b, close_watch=True)
    scratch = new_scratch(4096)
    c.inbox.append(build_frame(1, b"hello", mask=MASK))
    b.inbox.append(build_frame(1, b"x" * 300))  # longer than a Close: only its tail is looked at
    drive(pump, scratch)
    assert pump.c2b.last is None and pump.b2c.last is None  # no 0x88 in either tail: nothing kept
    c.inbox.append(close_frame(1000, mask=MASK))
    b.inbox.append(b"x" * 200 + close_frame(1000))
    drive(pump, scratch)
    assert pump.c2b.last == close_frame(1000, mask=MASK)
    assert pump.b2c.last is not None and pump.b2c.last.endswith(close_frame(1000))
    assert pump.close_handshake_done
    b.inbox.append(ConnectionResetError(104, "Connection reset by peer"))
    drive(pump, scratch)
    assert pump.done and pump.reason == "backend reset after the close handshake"


def _stall_tunnel(send_timeout: float):
    loop = Loop(CountingPoller())
    c, c_peer = socket.socketpair()
    b, b_peer = socket.socketpair()
    for s in (c, b):
        s.setblocking(False)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ended: list[Pump] = []
    t = AsyncTunnel(loop, Pump(c, b), new_scratch(), send_timeout=send_timeout, on_close=ended.append)
    t.start()
    return loop, t, (c, b, c_peer, b_peer), ended


def test_an_idle_tunnel_holds_no_stall_timer_and_a_backlog_arms_one_until_it_drains():
    loop, t, socks, ended = _stall_tunnel(30.0)
    client, backend = socks[2], socks[3]
    try:
        assert t._stall_timer is None  # nothing to write: nothing to watch (R37)
        client.sendall(b"x" * 64)
        run_until(loop, lambda: t.pump.c2b.count == 64)
        assert recv_exactly(backend, 64) == b"x" * 64
        assert t._stall_timer is None  # written at once: still nothing armed
        client.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 5
        while t.pump.c2b.pending is None:
            assert time.monotonic() < deadline, "no backlog built up"
            try:
                sent += client.send(b"y" * 65536)
            except BlockingIOError:
                pass
            run_until(loop, lambda: t.pump.c2b.count > 64, timeout=2)
        armed = t._stall_timer
        assert armed is not None and not armed.cancelled  # a backlog: the watch is on
        backend.setblocking(True)
        got = 0
        while got < sent:  # the backend reads everything: the backlog drains
            got += len(backend.recv(1 << 20))
            loop.call_soon(loop.stop)
            loop.run()
        assert t.pump.c2b.pending is None
        t._check_stall()  # the armed timer's next look finds nothing to write
        assert t._stall_timer is None and not ended
    finally:
        loop.close()
        for s in socks:
            s.close()


def test_a_stall_after_a_long_idle_spell_ends_the_tunnel_within_its_send_timeout():
    loop, t, socks, ended = _stall_tunnel(0.4)
    client = socks[2]
    try:
        idle_until = time.monotonic() + 1.0  # idle for longer than the send timeout
        run_until(loop, lambda: time.monotonic() >= idle_until, timeout=3)
        assert t._stall_timer is None and not ended
        client.setblocking(False)
        start = None
        deadline = time.monotonic() + 5
        while not ended and time.monotonic() < deadline:
            try:
                client.send(b"z" * 65536)  # the backend's peer never reads
            except (BlockingIOError, OSError):
                pass
            if start is None and t.pump.c2b.pending is not None:
                start = time.monotonic()
            loop.call_later(0.01, loop.stop)
            loop.run()
        assert ended, "the stalled tunnel was not ended"
        assert start is not None
        took = time.monotonic() - start
        assert 0.3 <= took < 1.2, took  # the watch began with the backlog: about one send timeout
        assert "send timeout: the backend took no byte" in t.pump.reason
    finally:
        loop.close()
        for s in socks:
            s.close()


def test_an_idle_tunnel_is_its_own_idle_timer_and_still_ends_on_it():
    loop = Loop(CountingPoller())
    c, c_peer = socket.socketpair()
    b, b_peer = socket.socketpair()
    for s in (c, b):
        s.setblocking(False)
    ended: list[Pump] = []
    t = AsyncTunnel(loop, Pump(c, b), new_scratch(), idle_timeout=0.3, send_timeout=30, on_close=ended.append)
    try:
        t.start()
        assert loop._timers == [t]  # no Timer handle: the tunnel itself, and no stall timer
        started = time.monotonic()
        c_peer.sendall(b"a" * 10)  # activity moves the deadline: re-armed when it comes
        run_until(loop, lambda: bool(ended), timeout=5)
        assert ended == [t.pump] and t.pump.reason == "idle timeout"
        assert time.monotonic() - started >= 0.3
        assert loop._cancelled_timers == 0 and t not in loop._timers
    finally:
        loop.close()
        for s in (c, b, c_peer, b_peer):
            s.close()
