"""loop.py with real socketpairs: registration, timers, call_soon_threadsafe, tasks."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from tests.support.waiting import run_loop_until as _run_until
from tests.support.waiting import wait_for
from tunnel.io.loop import Loop, Wait, run_blocking
from tunnel.io.streams import EVENT_READ, EVENT_WRITE

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
    a.close()
    b.close()


def test_modify_is_noop_when_unchanged(loop):
    a, b = socket.socketpair()
    loop.register(a, EVENT_WRITE, lambda m: None)
    loop.modify(a, EVENT_WRITE)
    loop.modify(a, 0)
    loop.modify(a, EVENT_READ | EVENT_WRITE)
    assert loop.is_registered(a)
    loop.unregister(a)
    assert not loop.is_registered(a)
    a.close()
    b.close()


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
    wait_for(lambda: loop.running, what="the loop running in its thread")
    loop.call_soon_threadsafe(done.set)
    assert done.wait(5)
    loop.stop()
    thread.join(5)
    assert not thread.is_alive()


def test_no_wake_up_is_lost_when_wakers_race_the_loop(loop):
    """Threads scheduling callbacks while the loop drains its wake-up socket: every
    callback runs promptly. (A waker whose byte the loop drained after it cleared its
    pending flag left the flag set with nothing to read: every later wake-up was
    skipped and the loop slept with work queued, e.g. through an engine's stop.)"""
    t = run_in_thread(loop)
    wait_for(lambda: loop.running, what="the loop running in its thread")
    failures: list[str] = []

    def waker(name: str) -> None:
        for i in range(3000):
            done = threading.Event()
            loop.call_soon_threadsafe(done.set)
            if not done.wait(2):
                failures.append(f"{name}: callback {i} never ran")
                return

    wakers = [threading.Thread(target=waker, args=(f"waker {n}",)) for n in range(4)]
    for w in wakers:
        w.start()
    for w in wakers:
        w.join(15)
    loop.call_soon_threadsafe(loop.stop)
    t.join(5)
    assert failures == []
    assert not t.is_alive()


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
    a.close()
    b.close()


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
    a.close()
    b.close()


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
    a.close()
    b.close()


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
    a.close()
    b.close()


def test_many_cancelled_timers_are_compacted(loop):
    timers = [loop.call_later(100, lambda: None) for _ in range(500)]
    for t in timers:
        t.cancel()
    loop.call_soon(loop.stop)
    loop.run()
    assert len(loop._timers) < 500


# -- registrations carried across task steps and handed over at the end -------------------

import select  # noqa: E402


class CountingPoller:
    """The real epoll set, counting what is asked of it."""

    def __init__(self) -> None:
        self._ep = select.epoll()
        self.poll = self._ep.poll
        self.close = self._ep.close
        self.calls: list[str] = []

    def register(self, fd, events):
        self.calls.append("register")
        return self._ep.register(fd, events)

    def unregister(self, fd):
        self.calls.append("unregister")
        return self._ep.unregister(fd)

    def modify(self, fd, events):
        self.calls.append("modify")
        return self._ep.modify(fd, events)


def test_task_keeps_a_registration_across_waits_on_the_same_socket():
    sel = CountingPoller()
    loop = Loop(sel)
    a, b = socket.socketpair()
    got = []

    def gen():
        for _ in range(3):
            yield Wait.read(a, time.monotonic() + 5)
            got.append(a.recv(10))
        yield Wait.write(a, time.monotonic() + 5)  # same socket, another mask: a modify
        got.append(b"writable")

    sel.calls.clear()
    task = loop.spawn(gen())
    for chunk in (b"1", b"2", b"3"):
        b.send(chunk)
        n = len(got)
        _run_until(loop, lambda n=n: len(got) > n)
    _run_until(loop, lambda: task.done)
    assert got == [b"1", b"2", b"3", b"writable"] and task.error is None
    assert sel.calls == ["register", "modify", "unregister"]
    assert not loop.is_registered(a)
    loop.close()
    a.close()
    b.close()


def test_a_done_callback_takes_the_sockets_over_without_reregistering():
    sel = CountingPoller()
    loop = Loop(sel)
    a, b = socket.socketpair()
    events = []

    def gen():
        yield Wait.read(a, time.monotonic() + 5)
        return a

    def take_over(task):
        loop.register(task.result, EVENT_READ, lambda mask: events.append(task.result.recv(10)))

    sel.calls.clear()
    task = loop.spawn(gen())
    task.add_done_callback(take_over)
    b.send(b"x")
    _run_until(loop, lambda: task.done)
    assert sel.calls == ["register"]  # the tunnel's registration is the task's, taken over
    b.send(b"y")
    _run_until(loop, lambda: b"y" in b"".join(events))
    loop.unregister(a)
    loop.close()
    a.close()
    b.close()


def test_a_socket_closed_and_its_number_reused_is_registered_afresh(loop):
    """The step closes its registered socket and opens another that gets the same fd
    number: the kernel dropped the old registration, so the new one must be made anew."""
    a, b = socket.socketpair()
    c = d = None
    got = []

    def gen():
        nonlocal c, d
        yield Wait.read(a, time.monotonic() + 5)
        got.append(a.recv(10))
        fd = a.fileno()
        a.close()
        c, d = socket.socketpair()
        assert fd in (c.fileno(), d.fileno())  # the number is reused at once
        reuse = c if c.fileno() == fd else d
        other = d if reuse is c else c
        other.send(b"again")
        yield Wait.read(reuse, time.monotonic() + 5)
        got.append(reuse.recv(10))
        return reuse

    taken = []

    def take_over(task):  # the same mask on the same number: must still be watched
        loop.register(task.result, EVENT_READ, lambda mask: taken.append(task.result.recv(10)))

    task = loop.spawn(gen())
    task.add_done_callback(take_over)
    b.send(b"first")
    _run_until(loop, lambda: task.done)
    assert got == [b"first", b"again"] and task.error is None
    other = d if task.result is c else c
    other.send(b"third")
    _run_until(loop, lambda: taken)
    assert taken == [b"third"]
    loop.unregister(task.result)
    for s in (b, c, d):
        s.close()


def test_a_task_that_closed_its_socket_leaves_no_stale_registration(loop):
    """The task closes its registered socket and returns a new one with the same fd
    number, unwatched; the done callback registers it with the same mask. A stale entry
    would make that a no-op and the new socket would never be watched."""
    a, b = socket.socketpair()

    def gen():
        yield Wait.read(a, time.monotonic() + 5)
        fd = a.fileno()
        a.close()
        n1, n2 = socket.socketpair()
        assert fd in (n1.fileno(), n2.fileno())
        return (n1, n2) if n1.fileno() == fd else (n2, n1)

    seen = []

    def take_over(task):
        mine = task.result[0]
        loop.register(mine, EVENT_READ, lambda mask: seen.append(mine.recv(10)))

    task = loop.spawn(gen())
    task.add_done_callback(take_over)
    b.send(b"x")
    _run_until(loop, lambda: task.done)
    mine, peer = task.result
    peer.send(b"z")
    _run_until(loop, lambda: seen)
    assert seen == [b"z"]
    loop.unregister(mine)
    for s in (b, mine, peer):
        s.close()


# -- waiting for work done in another thread --------------------------------------------

import concurrent.futures  # noqa: E402


@pytest.mark.parametrize("driver", ["loop", "blocking"])
def test_wait_until_a_future_and_its_deadline(driver):
    pool = concurrent.futures.ThreadPoolExecutor(1)
    gate = threading.Event()
    results = []

    def gen():
        fut = pool.submit(lambda: gate.wait(5) and "looked up")
        try:
            yield Wait.until(fut, time.monotonic() + 0.05)
        except TimeoutError:
            results.append("timed out")
        gate.set()
        fut2 = pool.submit(lambda: "second")
        yield Wait.until(fut2, time.monotonic() + 5)
        results.append(fut2.result())
        return "done"

    try:
        if driver == "blocking":
            assert run_blocking(gen()) == "done"
        else:
            loop = Loop()
            task = loop.spawn(gen())
            _run_until(loop, lambda: task.done)
            loop.close()
            assert task.result == "done" and task.error is None
        assert results == ["timed out", "second"]  # the late first result resumed nothing
    finally:
        gate.set()
        pool.shutdown(wait=True)


def test_forget_drops_a_socket_about_to_close_without_a_system_call():
    """A tunnel's end: forgotten, then closed (closing leaves the epoll set); its number,
    reused at once, is registered afresh and its events reach the new owner only."""
    sel = CountingPoller()
    loop = Loop(sel)
    a, b = socket.socketpair()
    old = []
    loop.register(a, EVENT_READ, old.append)
    fd = a.fileno()
    sel.calls.clear()
    loop.forget(fd)
    a.close()
    assert sel.calls == [] and not loop.is_registered(fd)
    c, d = socket.socketpair()
    reuse, other = (c, d) if c.fileno() == fd else (d, c)
    assert reuse.fileno() == fd
    got = []
    loop.register(reuse, EVENT_READ, lambda mask: got.append((mask, reuse.recv(10))))
    other.send(b"new")
    _run_until(loop, lambda: bool(got))
    assert got == [(EVENT_READ, b"new")] and old == []
    loop.unregister(reuse)
    loop.close()
    for s in (b, c, d):
        s.close()


def test_a_hang_up_is_reported_within_the_interest():
    """EPOLLHUP/EPOLLERR come whatever the mask; the callback hears only what it asked
    for (as selectors reported it): a read-only watcher gets EVENT_READ."""
    loop = Loop()
    a, b = socket.socketpair()
    masks = []
    loop.register(a, EVENT_READ, lambda mask: (masks.append(mask), loop.unregister(a)))
    b.close()
    _run_until(loop, lambda: bool(masks))
    assert masks == [EVENT_READ]
    loop.close()
    a.close()


def test_wakeups_from_several_threads_are_never_lost_while_the_loop_is_idle():
    """Callbacks queued from other threads while nothing else happens each run at once:
    a wake that raced the loop's draining of its wake-up pair must not leave the loop
    asleep (it was: the flag stayed set with nothing left to read)."""
    loop = Loop()
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    stuck: list[int] = []

    def worker() -> None:
        for i in range(500):
            ran = threading.Event()
            loop.call_soon_threadsafe(ran.set)
            if not ran.wait(5):
                stuck.append(i)
                return

    workers = [threading.Thread(target=worker) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()
    assert stuck == []


def test_the_interest_table_follows_high_fds_and_refuses_unknown_ones(loop):
    a, b = socket.socketpair()
    high = os.dup2(a.fileno(), 900)  # past the table's first size: it grows
    try:
        got = []

        def on_ready(mask):
            got.append(mask)
            loop.modify(high, 0)
            loop.stop()

        loop.register(high, EVENT_READ, on_ready)
        b.sendall(b"x")
        loop.call_later(5, loop.stop)
        loop.run()
        assert got == [EVENT_READ]
        loop.modify(high, 0)  # unchanged: nothing to do, still registered
        assert loop.is_registered(high)
        loop.unregister(high)
        with pytest.raises(KeyError):
            loop.modify(high, EVENT_READ)  # no longer registered: not watched behind its back
        with pytest.raises(KeyError):
            loop.modify(high, 0)
        with pytest.raises(ValueError, match="file descriptor -1"):
            loop.register(-1, EVENT_READ, on_ready)
        loop.register(high, 0, on_ready)  # again, with no interest yet
        loop.modify(high, EVENT_READ)
        assert loop.is_registered(high)
    finally:
        loop.unregister(high)
        os.close(high)
        a.close()
        b.close()


def test_a_deadline_that_is_its_own_timer_is_armed_again_and_cancelled(loop):
    from tunnel.io.loop import Deadline

    fired = []

    class Watch(Deadline):
        __slots__ = ()
        args = ()

        @property
        def callback(self):
            return self.due

        def due(self):
            fired.append(loop.time())
            if len(fired) < 3:
                loop.schedule(self, loop.time() + 0.01)  # fired: armed again, no new object
            else:
                loop.stop()

    watch = Watch(0.0, loop, armed=False)
    watch.cancel()  # never armed: nothing to cancel, nothing counted
    assert loop._cancelled_timers == 0
    loop.schedule(watch, loop.time() + 0.01)
    loop.call_later(5, loop.stop)
    loop.run()
    assert len(fired) == 3 and fired == sorted(fired)
    assert loop._timers.count(watch) == 0  # fired the last time: out of the heap
    loop.schedule(watch, loop.time() + 0.01)
    watch.cancel()
    loop.call_later(0.05, loop.stop)
    loop.run()
    assert len(fired) == 3  # cancelled: it did not fire again
