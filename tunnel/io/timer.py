"""What `tunnel.io.loop.Loop` keeps in its timer heap: a `Deadline` (a due time that can
be cancelled, whose ``callback(*args)`` runs when it is due) and the plain `Timer` handle
``call_at`` returns. An object that is scheduled again and again (an async tunnel's idle
watch) can be its own `Deadline` and carry no separate handle (``Loop.schedule``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["Deadline", "Timer"]


class _Owner(Protocol):
    """The loop a timer belongs to, as the timer sees it: the count of cancelled timers
    still in its heap (it compacts the heap when too many are)."""

    _cancelled_timers: int


class Deadline:
    """A due time in a loop's heap. ``cancel()`` is idempotent; a deadline that fired or
    was never scheduled counts as cancelled. Subclasses say what runs: ``callback`` and
    ``args`` (attributes or properties), read when it fires."""

    __slots__ = ("when", "cancelled", "_loop")

    callback: Callable[..., Any]
    args: tuple[object, ...]

    def __init__(self, when: float, loop: _Owner, *, armed: bool = True) -> None:
        self.when = when
        self.cancelled = not armed
        self._loop = loop

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self._loop._cancelled_timers += 1

    def __lt__(self, other: Deadline) -> bool:
        return self.when < other.when


class Timer(Deadline):
    """A handle on a scheduled call."""

    __slots__ = ("callback", "args")

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple[object, ...], loop: _Owner) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False
        self._loop = loop

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled else f"at {self.when:.3f}"
        return f"<Timer {getattr(self.callback, '__qualname__', self.callback)} {state}>"
