"""A clock for code that takes one (the balancers): time moves only when the test says."""

from __future__ import annotations


class FakeClock:
    """A monotonic clock that moves only when told (``advance`` or assigning ``now``)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
