"""run_blocking, the loop's stand-in in a host's thread: a sleep that also watches a
socket (the balancer's timeout= wait watching the client) ends when that socket is
readable, as on the loop, instead of sleeping to its deadline."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tunnel.io.loop import Loop, Wait, run_blocking

pytestmark = pytest.mark.timeout(30)


def watching_sleep(sock: socket.socket, seconds: float):
    """Sleep ``seconds`` while watching ``sock``: 'woken' or 'timed out'."""
    try:
        yield Wait(None, 0, time.monotonic() + seconds, also=sock)
    except TimeoutError:
        return "timed out"
    return "woken"


def test_run_blocking_sleep_ends_when_the_watched_socket_speaks():
    a, b = socket.socketpair()
    with a, b:
        timer = threading.Timer(0.05, b.send, args=(b"x",))
        timer.start()
        started = time.monotonic()
        assert run_blocking(watching_sleep(a, 20)) == "woken"
        assert time.monotonic() - started < 5
        timer.join()


def test_run_blocking_sleep_with_a_quiet_socket_times_out():
    a, b = socket.socketpair()
    with a, b:
        assert run_blocking(watching_sleep(a, 0.05)) == "timed out"


def test_the_loop_agrees():
    a, b = socket.socketpair()
    loop = Loop()
    results: list[object] = []
    try:
        task = loop.spawn(watching_sleep(a, 20), name="watch")
        task.add_done_callback(lambda t: (results.append(t.result), loop.stop()))
        loop.call_later(0.05, b.send, b"x")
        loop.run()
    finally:
        loop.close()
        a.close()
        b.close()
    assert results == ["woken"]
