"""Waiting on a condition with a deadline (never a bare sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_for(cond: Callable[[], T], timeout: float = 5.0, what: str = "condition", *, interval: float = 0.005) -> T:
    """Poll ``cond`` until it returns something truthy and return it; fail with an
    AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def run_loop_until(loop: Any, cond: Callable[[], object], timeout: float = 5.0) -> None:
    """Run ``loop`` (a `tunnel.io.loop.Loop`, in this thread) until ``cond()`` holds, or
    fail once ``timeout`` seconds have passed; ``cond`` is checked from the loop itself."""
    deadline = time.monotonic() + timeout

    def check() -> None:
        if cond() or time.monotonic() > deadline:
            loop.stop()
        else:
            loop.call_later(0.001, check)

    loop.call_soon(check)
    loop.run()
    assert cond(), "condition not reached before the deadline"
