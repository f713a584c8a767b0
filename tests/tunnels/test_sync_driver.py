"""tunnels/sync_driver.py: run_sync driving a pump between real socketpairs: bytes both
ways with half-close, backpressure, the idle timeout and the hand-over time."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time

import pytest

from tests.support.waiting import wait_for
from tunnel.tunnels.pump import Pump
from tunnel.tunnels.sync_driver import run_sync

pytestmark = pytest.mark.timeout(30)


def _pair_through_pump(**kw):
    """client <-> [pump: ca, ba] <-> backend with real socketpairs and the sync driver."""
    client, ca = socket.socketpair()
    backend, ba = socket.socketpair()
    ca.setblocking(False)
    ba.setblocking(False)
    pump = Pump(ca, ba, **kw)
    thread = threading.Thread(target=run_sync, args=(pump,), daemon=True)
    thread.start()
    return client, backend, pump, thread


def test_sync_driver_moves_a_mebibyte_each_way_with_half_close():
    client, backend, pump, thread = _pair_through_pump()
    up, down = os.urandom(1 << 20), os.urandom(1 << 20)
    got = {}

    def backend_side():
        buf = bytearray()
        backend.settimeout(10)
        while True:
            chunk = backend.recv(1 << 16)
            if not chunk:
                break
            buf += chunk
        got["up"] = bytes(buf)
        backend.sendall(down)
        backend.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=backend_side)
    t.start()
    client.sendall(up)
    client.shutdown(socket.SHUT_WR)  # half-close: the other direction must still arrive
    client.settimeout(10)
    buf = bytearray()
    while True:
        chunk = client.recv(1 << 16)
        if not chunk:
            break
        buf += chunk
    t.join(10)
    thread.join(10)
    assert hashlib.sha256(got["up"]).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(buf).digest() == hashlib.sha256(down).digest()
    assert pump.done and pump.reason == "eof"
    pump.close()
    for s in (client, backend):
        s.close()


def test_slow_reader_keeps_buffer_under_high_water():
    client, backend, pump, thread = _pair_through_pump(high_water=64 * 1024)
    client.setblocking(False)
    pushed = 0
    peak = 0
    deadline = time.monotonic() + 5
    while pushed < 8 << 20 and time.monotonic() < deadline:
        try:
            pushed += client.send(b"z" * 65536)
        except BlockingIOError:
            peak = max(peak, pump.buffered)
            if pump.buffered >= 64 * 1024:
                break
    peak = max(peak, pump.buffered)
    assert peak <= 64 * 1024 + 256 * 1024  # high water plus at most one scratch chunk
    # Drain: every pushed byte arrives.
    backend.settimeout(10)
    received = 0
    client.setblocking(True)
    client.shutdown(socket.SHUT_WR)
    while True:
        chunk = backend.recv(1 << 20)
        if not chunk:
            break
        received += len(chunk)
    assert received == pushed
    backend.shutdown(socket.SHUT_WR)
    thread.join(10)
    assert pump.done
    pump.close()
    client.close()
    backend.close()


def test_idle_timeout_in_sync_driver():
    client, backend, pump, thread = _pair_through_pump()
    thread.join(0)  # started without idle timeout; use a second pump for the timeout
    a, a2 = socket.socketpair()
    b, b2 = socket.socketpair()
    a2.setblocking(False)
    b2.setblocking(False)
    p2 = Pump(a2, b2)
    assert run_sync(p2, idle_timeout=0.05) is True
    assert p2.reason == "idle timeout"
    p2.close()
    pump.abort("test over")
    client.close()
    backend.close()
    thread.join(5)
    pump.close()
    for s in (a, b):
        s.close()


def test_handover_returns_with_pump_open():
    a, a2 = socket.socketpair()
    b, b2 = socket.socketpair()
    a2.setblocking(False)
    b2.setblocking(False)
    p = Pump(a2, b2)
    assert run_sync(p, handover_at=time.monotonic() + 0.02) is False
    assert not p.done
    # The flows ran on GIL-keeping ends; the pump goes to the loop with its own sockets.
    assert p.c2b.src is a2 and p.c2b.dst is b2 and p.b2c.src is b2 and p.b2c.dst is a2
    a.sendall(b"after handover")
    assert run_sync(p, handover_at=time.monotonic() + 0.05, fresh=False) is False
    b.settimeout(2)
    assert b.recv(100) == b"after handover"
    p.abort("done")
    p.close()
    a.close()
    b.close()


def test_a_pool_thread_raises_the_switch_interval_never_lowers_it():
    """Sync tunnel threads: the GIL's forced hand-offs every 5 ms were most of the
    process's time with many threads (SWITCH_INTERVAL): the pool raises it."""
    import sys

    from tunnel.tunnels.sync_driver import SWITCH_INTERVAL, ThreadPool

    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        pool = ThreadPool(2)
        ran = threading.Event()
        pool.reserve()
        pool.run(ran.set)
        assert ran.wait(5)
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL)
        sys.setswitchinterval(1.0)
        pool.reserve()
        pool.reserve()
        pool.run(ran.set)
        pool.run(ran.set)
        assert sys.getswitchinterval() == pytest.approx(1.0)
        assert pool.shutdown(5)
    finally:
        sys.setswitchinterval(before)


def test_without_hold_gil_the_flows_keep_the_plain_sockets():
    """A tunnel among few sync threads reads with the socket's own methods."""
    a, a2 = socket.socketpair()
    b, b2 = socket.socketpair()
    a2.setblocking(False)
    b2.setblocking(False)
    seen = []

    class Spying(Pump):
        def _read(self, flow, scratch):
            seen.append(type(flow.src).__name__)
            super()._read(flow, scratch)

    p = Spying(a2, b2)
    a.sendall(b"x")
    assert run_sync(p, handover_at=time.monotonic() + 0.2, hold_gil=False) is False
    a.sendall(b"y")
    assert run_sync(p, handover_at=time.monotonic() + 0.2) is False
    assert seen[0] == "socket" and seen[-1] == "HeldSocket"
    b.settimeout(2)
    got = b""
    while len(got) < 2:
        got += b.recv(10)
    assert got == b"xy"
    p.abort("done")
    p.close()
    a.close()
    b.close()


def _resident_pages(view: memoryview) -> int:
    """How many of ``view``'s pages are in memory (mincore(2), through libc)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    page = os.sysconf("SC_PAGE_SIZE")
    pages = (len(view) + page - 1) // page
    vec = (ctypes.c_ubyte * pages)()
    address = ctypes.addressof(ctypes.c_char.from_buffer(view))
    assert libc.mincore(address, len(view), vec) == 0, os.strerror(ctypes.get_errno())
    return sum(v & 1 for v in vec)


def test_an_idle_tunnels_thread_gives_its_scratch_pages_back(monkeypatch):
    from tunnel.tunnels import sync_driver

    monkeypatch.setattr(sync_driver, "SCRATCH_RELEASE_AFTER", 0.2)
    seen = {}

    def relay(pump):
        seen["view"] = sync_driver.thread_scratch().view
        run_sync(pump)

    client, ca = socket.socketpair()
    backend, ba = socket.socketpair()
    ca.setblocking(False)
    ba.setblocking(False)
    pump = Pump(ca, ba)
    thread = threading.Thread(target=relay, args=(pump,), daemon=True)
    thread.start()
    burst = os.urandom(200 * 1024)
    backend.sendall(burst)  # reads write many of the scratch's pages
    client.settimeout(10)
    got = bytearray()
    while len(got) < len(burst):
        got += client.recv(1 << 16)
    assert bytes(got) == burst
    wait_for(lambda: _resident_pages(seen["view"]) == 0, 5, "the scratch's pages to go back")
    client.sendall(b"after")  # a read after the release finds the scratch usable
    backend.settimeout(10)
    assert backend.recv(100) == b"after"
    client.close()
    backend.close()
    thread.join(10)
    assert pump.done
    pump.close()


def test_a_pool_thread_logs_a_deep_failure_with_its_traceback(caplog):
    """A pool thread has a small stack (TUNNEL_STACK_SIZE): a recursion through C
    frames as deep as the interpreter allows ends in RecursionError, not a crash, and
    is logged with its traceback; the pool goes on."""
    import json
    import logging

    from tunnel.tunnels.sync_driver import ThreadPool

    def deep():
        # through C (json's encoder calls default(), which recurses): C stack per level
        return json.dumps(object(), default=lambda _: deep())

    pool = ThreadPool(1)
    ran = threading.Event()
    with caplog.at_level(logging.ERROR, logger="tunnel.sync"):
        pool.reserve()
        pool.run(deep)
        wait_for(lambda: any(r.exc_info for r in caplog.records), 10, "the failure logged")
        wait_for(lambda: pool.busy == 0, 5, "the pool thread free again")  # (just after the log)
        pool.reserve()  # the thread is free again, and alive
        pool.run(ran.set)
        assert ran.wait(5)
        assert pool.threads == 1  # the same thread ran it: the failure did not end it
    record = next(r for r in caplog.records if r.exc_info)
    assert record.getMessage() == "sync tunnel thread failed"
    text = logging.Formatter().formatException(record.exc_info)
    assert record.exc_info[0] is RecursionError and text.count("in deep") >= 100
    assert pool.shutdown(5)


def test_a_pool_thread_that_logged_leaves_no_thread_record_behind():
    """Pool threads are bare threads: one that logs gets a dummy record in `threading`,
    which must go when the thread ends (Python 3.11 keeps it otherwise: a slow leak and
    phantom entries in threading.enumerate())."""
    import logging

    from tunnel.tunnels.sync_driver import ThreadPool

    def dummies() -> int:
        return sum(isinstance(t, threading._DummyThread) for t in threading.enumerate())

    before = dummies()
    pool = ThreadPool(4)
    logged = threading.Semaphore(0)

    def work() -> None:
        logging.getLogger("tunnel.test").warning("from a pool thread")  # asks for the thread's name
        assert threading.current_thread().name.startswith("Dummy")
        logged.release()

    for _ in range(4):
        pool.reserve()
        pool.run(work)
    for _ in range(4):
        assert logged.acquire(timeout=5)
    assert dummies() >= before + 1  # the records exist while the threads live
    assert pool.shutdown(5)
    wait_for(lambda: dummies() == before, 5, "the ended threads' records gone")
