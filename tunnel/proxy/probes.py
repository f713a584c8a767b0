"""Readiness and liveness: ``SetHandler ready`` and ``SetHandler live`` (R150-R152).

* **ready** tells a balancer or an orchestrator whether to send *new* clients here: 200
  while the instance serves, 503 once ``tunnel ctl drain`` drained it (it keeps serving
  what it has and whoever still comes) or once a stop has begun; ``ctl undrain`` takes a
  drain back. A graceful stop closes the listeners at once, so a probe then cannot even
  connect, which balancers read as down as well.
* **live** tells an orchestrator whether the process still works: 200 while the loop
  turns. The handler runs on that very loop, so a loop that is stuck cannot answer at
  all (the probe times out: a failure, as it should be), but a loop that turns slowly, or
  that was stuck a moment ago and has a queue of probes waiting, would answer 200 to
  each of them. `Watchdog` closes that gap: a thread of its own posts a beat to the loop
  every `Watchdog.interval` seconds and measures how long the loop took to run it; while
  the latest lag (or the age of a beat still waiting) is above ``TunnelLoopLagLimit``,
  ``live`` answers 503 with the figure. A loop that recovered answers 200 again at the
  next beat.

`Probes` holds one engine's state (its flags are set from the control thread, the
signal thread or the loop, and only read by the handlers); the two handlers are in
`tunnel.proxy.handlers`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Optional

from ..io.loop import Loop

__all__ = ["Probes", "Watchdog"]

log = logging.getLogger("tunnel.engine")

#: The longest a watchdog waits between two beats.
MAX_INTERVAL = 1.0


class Watchdog:
    """Measure the loop's lag from a thread of its own (R151).

    Args:
        loop: the loop to watch (running, or about to run).
        limit: the lag, in seconds, above which the loop counts as stuck.
    """

    def __init__(self, loop: Loop, limit: float) -> None:
        self.loop = loop
        self.limit = limit
        #: seconds between beats: a quarter of the limit, at most `MAX_INTERVAL`.
        self.interval = min(MAX_INTERVAL, limit / 4)
        self._posted: Optional[float] = None  # when the beat under way was posted
        self._last = 0.0  # the lag of the last beat the loop ran
        self._stuck = False  # logged once per stall
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="tunnel-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(2 * MAX_INTERVAL)

    def lag(self) -> float:
        """The loop's lag now: the age of a beat it has not run yet, or the lag of the
        last one it ran, whichever is greater."""
        posted = self._posted
        waiting = time.monotonic() - posted if posted is not None else 0.0
        return max(waiting, self._last)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            posted = self._posted
            if posted is None:
                self._posted = now
                self.loop.call_soon_threadsafe(self._beat, now)
            elif now - posted > self.limit and not self._stuck:
                self._stuck = True
                log.warning("the loop has not turned for %.1fs (TunnelLoopLagLimit %gs): live answers 503", now - posted, self.limit)

    def _beat(self, posted: float) -> None:
        """Loop thread: the beat posted at ``posted`` runs now."""
        self._last = time.monotonic() - posted
        self._posted = None
        if self._stuck:
            self._stuck = False
            log.warning("the loop turns again after %.1fs", self._last)


class Probes:
    """One engine's readiness and liveness state.

    Attributes:
        drained: ``tunnel ctl drain`` took new clients away (set from any thread).
        stopping: a stop or graceful stop has begun.
        watchdog: the loop's watchdog while the engine runs its loop (None otherwise:
            a host thread serving the request is alive by definition).
    """

    def __init__(self, lag_limit: float) -> None:
        self.lag_limit = lag_limit
        self.drained = threading.Event()
        self.stopping = threading.Event()
        self.watchdog: Optional[Watchdog] = None

    def watch(self, loop: Loop) -> None:
        """Start watching ``loop`` (the engine's, as it starts serving)."""
        self.unwatch()
        self.watchdog = Watchdog(loop, self.lag_limit)
        self.watchdog.start()

    def unwatch(self) -> None:
        watchdog, self.watchdog = self.watchdog, None
        if watchdog is not None:
            watchdog.stop()

    def set_lag_limit(self, limit: float) -> None:
        """A graceful restart with another ``TunnelLoopLagLimit``."""
        self.lag_limit = limit
        watchdog = self.watchdog
        if watchdog is not None and watchdog.limit != limit:
            self.watch(watchdog.loop)

    def drain(self, on: bool) -> bool:
        """Drain (``on``) or undrain; returns whether that changed anything."""
        was = self.drained.is_set()
        if on:
            self.drained.set()
        else:
            self.drained.clear()
        if was != on:
            log.info("%s: the ready handler answers %s", "drained" if on else "undrained", 503 if on else 200)
        return was != on

    def readiness(self) -> tuple[int, str]:
        """(status, why) of the ready handler."""
        if self.stopping.is_set():
            return 503, "stopping"
        if self.drained.is_set():
            return 503, "draining"
        return 200, "ready"

    def liveness(self) -> tuple[int, str]:
        """(status, why) of the live handler."""
        watchdog = self.watchdog
        if watchdog is None:
            return 200, "live"
        lag = watchdog.lag()
        if lag > watchdog.limit:
            return 503, f"loop lag {lag:.3f}s > {watchdog.limit:g}s"
        return 200, f"live (loop lag {lag:.3f}s)"

