"""loop.py with real socketpairs: registration, timers, call_soon_threadsafe, tasks."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tunnel.loop import EVENT_READ, EVENT_WRITE, Loop, Wait, run_blocking

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def loop():
    lp = Loop()
    yield lp
    lp.close()


def run_in_thread(loop: Loop) -> threading.Thread:
    t = threading.Thread(target=loop.run, daemon=True)
    t.start()
    return t


def test_reader_callback_and_modify(loop):
    a, b = socket.socketpair()
    got = []

    def on_ready(mask):
        got.append((mask, a.recv(100)))
        loop.modify(a, 0)
        loop.stop()

    loop.register(a, EVENT_READ, on_ready)
    b.send(b"hi")
    loop.run()
    assert got == [(EVENT_READ, b"hi")]
    loop.unregister(a)
    loop.unregister(a)  # idempotent
    a.close(); b.close()


def test_modify_is_noop_when_unchanged(loop):
    a, b = socket.socketpair()
    loop.register(a, EVENT_WRITE, lambda m: None)
    loop.modify(a, EVENT_WRITE)
    loop.modify(a, 0)
    loop.modify(a, EVENT_READ | EVENT_WRITE)
    assert loop.is_registered(a)
    loop.unregister(a)
    assert not loop.is_registered(a)
    a.close(); b.close()


def test_timers_fire_in_order_and_cancel(loop):
    fired = []
    loop.call_later(0.02, fired.append, 2)
    loop.call_later(0.01, fired.append, 1)
    t = loop.call_later(0.015, fired.append, "cancelled")
    t.cancel()
    t.cancel()
    loop.call_later(0.03, loop.stop)
    loop.run()
    assert fired == [1, 2]


def test_call_soon_threadsafe_wakes_the_loop(loop):
    thread = run_in_thread(loop)
    done = threading.Event()
    deadline = time.monotonic() + 5
    while not loop.running and time.monotonic() < deadline:
        time.sleep(0.001)
    loop.call_soon_threadsafe(done.set)
    assert done.wait(5)
    loop.stop()
    thread.join(5)
    assert not thread.is_alive()


def test_callback_exception_does_not_kill_loop(loop, caplog):
    seen = []
    loop.call_soon(lambda: 1 / 0)
    loop.call_soon(seen.append, "after")
    loop.call_later(0.01, loop.stop)
    loop.run()
    assert seen == ["after"]
    assert "failed" in caplog.text


def _echo_task(sock: socket.socket, deadline: float):
    while True:
        try:
            data = sock.recv(100)
            break
        except BlockingIOError:
            yield Wait.read(sock, deadline)
    sock.send(data.upper())
    return data


def test_task_waits_for_readability(loop):
    a, b = socket.socketpair()
    a.setblocking(False)
    task = loop.spawn(_echo_task(a, time.monotonic() + 5))
    task.add_done_callback(lambda t: loop.stop())
    b.send(b"ping")
    loop.run()
    assert task.result == b"ping"
    assert b.recv(10) == b"PING"
    assert not loop.is_registered(a)
    a.close(); b.close()


def test_task_deadline_throws_timeout(loop):
    a, b = socket.socketpair()
    a.setblocking(False)

    def gen():
        try:
            yield Wait.read(a, time.monotonic() + 0.02)
        except TimeoutError:
            return "timed out"
        return "read"

    task = loop.spawn(gen())
    task.add_done_callback(lambda t: loop.stop())
    loop.run()
    assert task.result == "timed out"
    a.close(); b.close()


def test_task_cancel_runs_finally(loop):
    a, b = socket.socketpair()
    a.setblocking(False)
    cleaned = []

    def gen():
        try:
            yield Wait.read(a, None)
        finally:
            cleaned.append(True)

    task = loop.spawn(gen())
    loop.call_soon(lambda: loop.call_soon(task.cancel))
    loop.call_later(0.02, loop.stop)
    loop.run()
    assert cleaned == [True] and task.done
    assert not loop.is_registered(a)
    a.close(); b.close()


def test_run_blocking_drives_the_same_generator():
    a, b = socket.socketpair()
    a.setblocking(False)
    threading.Timer(0.01, b.send, (b"x",)).start()
    assert run_blocking(_echo_task(a, time.monotonic() + 5)) == b"x"
    assert b.recv(1) == b"X"

    def gen():
        try:
            yield Wait.read(a, time.monotonic() + 0.02)
        except TimeoutError:
            return "timeout"

    assert run_blocking(gen()) == "timeout"
    a.close(); b.close()


def test_many_cancelled_timers_are_compacted(loop):
    timers = [loop.call_later(100, lambda: None) for _ in range(500)]
    for t in timers:
        t.cancel()
    loop.call_soon(loop.stop)
    loop.run()
    assert len(loop._timers) < 500
