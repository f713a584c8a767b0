"""Worker error states for backends reached without a balancer (R18).

A worker whose connect failed is in error state for its ``retry=`` seconds: requests for
it are answered 503 at once, without a connect, until the time has passed (httpd's
``PROXY_WORKER_IN_ERROR`` with ``retry``; ``retry=0`` never puts it in error). Balancer
members keep the same state per member in `tunnel.protocol.balancer.BalancerState`,
which also knows force recovery and failover.

Pure: time comes from the injected clock; the caller serialises access (one lock).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Optional

from ..config.model import DEFAULT_RETRY

__all__ = ["WorkerHealth"]


class WorkerHealth:
    """Error states of plain workers, keyed by their target.

    Args:
        clock: monotonic seconds (``time.monotonic`` in the engine, a fake in tests).
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._until: dict[Hashable, float] = {}

    def retry_in(self, worker: Hashable) -> Optional[float]:
        """Seconds left in ``worker``'s error state, or None when it is usable.

        An expired error state is cleared here: the next request tries the worker.
        """
        until = self._until.get(worker)
        if until is None:
            return None
        left = until - self._clock()
        if left > 0:
            return left
        self._until.pop(worker, None)
        return None

    def failed(self, worker: Hashable, retry: Optional[float]) -> float:
        """Put ``worker`` in error state for ``retry`` seconds (None: httpd's 60).

        Returns:
            The seconds it stays in error (0: ``retry=0``, not put in error).
        """
        seconds = DEFAULT_RETRY if retry is None else retry
        if seconds > 0:
            self._until[worker] = self._clock() + seconds
        return max(seconds, 0.0)

    def __len__(self) -> int:
        return len(self._until)
