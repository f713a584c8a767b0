"""The global cap on bytes buffered by all tunnels (``TunnelBufferLimit``), shared by
the loop thread and every sync tunnel thread; the pump counts against it."""

from __future__ import annotations

import threading

__all__ = ["Budget", "CAPPED_CHUNK"]

#: Largest read of a flow with nothing buffered while the global cap (``Budget``) is
#: exhausted: such a flow still moves (no tunnel starves), and N tunnels add at most
#: N of these over the cap, plus one scratch for the read that crossed it.
CAPPED_CHUNK = 16 * 1024


class Budget:
    """Bytes buffered across many tunnels, against one limit (``TunnelBufferLimit``).

    Shared by the loop thread and every sync tunnel thread, so ``take`` and ``give`` are
    locked: unlocked ``+=`` from two threads can lose an update, and the count would
    drift away from the bytes really held. ``limit`` 0 means no limit.
    """

    __slots__ = ("limit", "used", "_lock")

    def __init__(self, limit: int = 0) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    @property
    def exhausted(self) -> bool:
        return self.limit > 0 and self.used >= self.limit

    def take(self, n: int) -> None:
        """``n`` more bytes are buffered."""
        with self._lock:
            self.used += n

    def give(self, n: int) -> None:
        """``n`` buffered bytes are gone (sent, or dropped with their tunnel)."""
        with self._lock:
            self.used -= n

    def reserve(self, size: int) -> int:
        """Count up to ``size`` bytes before a read that may have to keep them.

        Returns the bytes granted: what is left under the limit, but never less than
        `CAPPED_CHUNK` nor more than ``size``; the caller gives back what it did not keep.
        Counting before the read is what bounds the total when sync threads read at
        once (each would otherwise see room and read a whole scratch buffer).
        """
        with self._lock:
            grant = min(size, max(self.limit - self.used, CAPPED_CHUNK)) if self.limit > 0 else size
            self.used += grant
            return grant
