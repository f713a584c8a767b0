"""A scheduled call of `tunnel.io.loop.Loop` (`Timer`): its handle, kept in the loop's heap."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["Timer"]


class _Owner(Protocol):
    """The loop a timer belongs to, as the timer sees it: the count of cancelled timers
    still in its heap (it compacts the heap when too many are)."""

    _cancelled_timers: int


class Timer:
    """A handle on a scheduled call. ``cancel()`` is idempotent."""

    __slots__ = ("when", "callback", "args", "cancelled", "_loop")

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple[object, ...], loop: _Owner) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False
        self._loop = loop

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self._loop._cancelled_timers += 1

    def __lt__(self, other: Timer) -> bool:
        return self.when < other.when

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled else f"at {self.when:.3f}"
        return f"<Timer {getattr(self.callback, '__qualname__', self.callback)} {state}>"
