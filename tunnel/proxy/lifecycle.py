"""The engine's graceful stop and graceful restart (R120-R123), mixed into `Engine`.

Kept apart from ``engine.py`` so that each stays readable; everything here runs on the
engine's own state (its loop, acceptors, live pumps and async tunnels) and is reached
through `Engine.graceful_stop` and `Engine.reload`.

* **Graceful stop.** Listeners close at once. Every live WebSocket tunnel is given a
  time, spread evenly over the first half of the timeout (over `DEFAULT_WINDOW` with no
  timeout), at which both its sides get Close 1001 "going away" between two frames
  (`tunnel.tunnels.wscontrol`); async tunnels are told on the loop, sync ones through
  ``pump.close_at`` and a pipe their poll watches. Tunnels that are not WebSocket run on.
  The loop stops once no tunnel and no request is left, or at the deadline, when the
  rest are closed.
* **Graceful restart.** The new configuration is checked by the caller; here it takes
  effect for new connections while live tunnels keep theirs. A listener in both
  configurations (same address, port and TLS) keeps its socket, so no client is ever
  refused; removed ones close, new ones open (a failure there changes nothing).
  Balancers present in both keep their runtime state, reconfigured in place.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import ssl
import threading
from typing import Optional

from ..accesslog import AccessLog
from ..config.model import Config, Listener, ProxyTLS
from ..io.listeners import Acceptor
from ..io.loop import Loop, Task
from ..protocol.balancer import Balancers
from ..tunnels.async_driver import AsyncTunnel
from ..tunnels.pump import Budget, Pump
from ..tunnels.sync_driver import ThreadPool
from .probes import Probes
from .records import TunnelStart, kept_headers

__all__ = ["Lifecycle", "Drain", "DEFAULT_WINDOW", "listener_key", "bound_address"]

log = logging.getLogger("tunnel.engine")

#: The window over which a graceful stop with no timeout spreads its Close frames.
DEFAULT_WINDOW = 10.0


class Drain:
    """One graceful stop: when it began, its window and deadline (R122).

    Args:
        now: when it began (the loop's clock).
        timeout: GracefulShutdownTimeout seconds, 0 for no limit.
    """

    __slots__ = ("began", "timeout", "window", "deadline")

    def __init__(self, now: float, timeout: float) -> None:
        self.began = now
        self.timeout = timeout
        #: the Close frames are spread over the first half of the timeout.
        self.window = timeout / 2 if timeout > 0 else DEFAULT_WINDOW
        #: when the tunnels still open are closed (infinite: never).
        self.deadline = now + timeout if timeout > 0 else float("inf")

    def times(self, n: int) -> list[float]:
        """``n`` times spread evenly over the window, the first at once: the i-th of
        ``n`` at ``began + window * i / n``."""
        return [self.began + self.window * i / n for i in range(n)]


def listener_key(listener: Listener) -> tuple[str, int, bool]:
    """What makes two Listen lines the same socket: address, port (0 as written), TLS."""
    return listener.host, listener.port, listener.tls


class Lifecycle:
    """Graceful stop and restart; the engine supplies the state and helpers below."""

    config: Config
    balancers: Balancers
    budget: Optional[Budget]
    access_log: AccessLog
    kept_headers: tuple[frozenset[str], frozenset[str]]
    pool: ThreadPool
    addresses: list[tuple[str, int]]
    _loop: Optional[Loop]
    _lock: threading.Lock
    _acceptors: list[Acceptor]
    _configured: dict[Acceptor, Listener]
    _drain: Optional[Drain]
    _live: dict[Pump, TunnelStart]
    _tunnels: dict[Pump, AsyncTunnel]
    _tasks: set[Task]
    _stopping: threading.Event
    _wake_w: int
    _ssl_contexts: dict[ProxyTLS, ssl.SSLContext]
    _server_contexts: dict[Listener, ssl.SSLContext]
    probes: Probes

    def request_stop(self) -> None:
        raise NotImplementedError

    def _shutdown_in_loop(self) -> None:
        raise NotImplementedError

    def _wake_sync_tunnels(self) -> None:
        raise NotImplementedError

    def _open(self, loop: Loop, listener: Listener) -> Acceptor:
        raise NotImplementedError

    # -- graceful stop ------------------------------------------------------------------
    def graceful_stop(self, timeout: Optional[float] = None) -> None:
        """Stop gracefully: listeners close at once, every WebSocket tunnel gets Close
        1001 at a time spread over the first half of ``timeout`` (GracefulShutdownTimeout
        when None; 0 = no limit, spread over 10 s), the loop stops once every tunnel and
        request has ended, or at ``timeout`` with the rest closed. From any thread."""
        loop = self._loop
        if timeout is None:
            timeout = self.config.graceful_shutdown_timeout
        if loop is None or not loop.running:
            self.request_stop()
            return
        loop.call_soon_threadsafe(self._begin_drain, timeout)
        loop.wakeup()

    def _begin_drain(self, timeout: float) -> None:
        loop = self._loop
        if loop is None or self._drain is not None or self._stopping.is_set():
            return
        self.probes.stopping.set()  # a probe on a kept-alive connection: 503 (R150)
        for acc in self._acceptors:
            acc.close()
        self._acceptors.clear()
        self._configured.clear()
        drain = self._drain = Drain(loop.time(), timeout)
        with self._lock:
            pumps = list(self._live)
        websockets = [p for p in pumps if p.c2b.frames is not None]
        log.info(
            "graceful stop: %d WebSocket tunnel(s) get Close 1001 over %.1fs, %d other(s) run on; deadline %s",
            len(websockets), drain.window, len(pumps) - len(websockets), f"{timeout:g}s" if timeout > 0 else "none",
        )
        for pump, when in zip(websockets, drain.times(len(websockets)), strict=True):
            tunnel = self._tunnels.get(pump)
            if tunnel is not None:
                tunnel.close_at(when)
            else:
                pump.close_at = when  # its sync thread reads it when the pipe wakes it
        try:
            os.write(self._wake_w, b"!")
        except OSError:
            pass
        if timeout > 0:
            loop.call_at(drain.deadline, self._drain_deadline)
        self._check_drained()

    def _drain_deadline(self) -> None:
        with self._lock:
            left = len(self._live)
        if left or self._tasks:
            log.info("graceful stop: deadline reached; closing %d tunnel(s) and %d connection(s)", left, len(self._tasks))
        self._shutdown_in_loop()

    def _check_drained(self) -> None:
        """Loop thread: the end of a graceful stop, once nothing is left."""
        if self._drain is None or self._stopping.is_set():
            return
        with self._lock:
            busy = bool(self._live)
        if not busy and not self._tasks:
            log.info("graceful stop: every tunnel and request has ended")
            self._shutdown_in_loop()

    def reload(self, config: Config, *, close_tunnels: bool = False) -> None:
        """A graceful restart with ``config``: new connections get it, live tunnels go
        on with theirs (sockets, buffers, timers, balancer member); listeners in both
        configurations keep their sockets, removed ones close, new ones open; balancer
        members that stay keep their state. ``close_tunnels``: a plain restart, which
        ends every live tunnel too. From any thread; returns once applied.

        Raises:
            OSError: a new listener cannot be opened (nothing was changed).
            ConfigError: a balancer is wrong (nothing was changed).
        """
        loop = self._loop
        if loop is None or not loop.running or loop.thread_id == threading.get_ident():
            self._reload_now(config, close_tunnels)
            return
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def apply() -> None:
            try:
                self._reload_now(config, close_tunnels)
            except BaseException as exc:
                done.set_exception(exc)
            else:
                done.set_result(None)

        loop.call_soon_threadsafe(apply)
        loop.wakeup()
        done.result()

    def _reload_now(self, config: Config, close_tunnels: bool) -> None:
        balancers = self.balancers.reconfigured(config.balancers)  # raises before any change
        loop = self._loop
        acceptors: list[Acceptor] = []
        if loop is not None and loop.running and self._drain is None and not self._stopping.is_set():
            old = {listener_key(self._configured[acc]): acc for acc in self._acceptors}
            opened: list[Acceptor] = []
            try:
                for listener in config.listeners:
                    kept = old.pop(listener_key(listener), None)
                    if kept is None:
                        kept = self._open(loop, listener)
                        opened.append(kept)
                    else:
                        port = kept.listener.port
                        kept.listener = dataclasses.replace(listener, port=port)
                        self._configured[kept] = listener
                    acceptors.append(kept)
            except BaseException:
                for acc in opened:
                    self._configured.pop(acc, None)
                    acc.close()
                raise
            for acc in old.values():
                log.info("graceful restart: no longer listening on %s", acc.listener.display)
                self._configured.pop(acc, None)
                acc.close()
            self._acceptors = acceptors
            self.addresses = [bound_address(acc) for acc in acceptors]
        with self._lock:
            self.config = config
            self.balancers = balancers
            self._ssl_contexts.clear()
            self._server_contexts.clear()
        self.pool.max_threads = config.max_tunnel_threads
        self.probes.set_lag_limit(config.loop_lag_limit)
        if config.buffer_limit and self.budget is not None:
            self.budget.limit = config.buffer_limit
        elif config.buffer_limit:
            self.budget = Budget(config.buffer_limit)
        elif self.budget is not None:
            self.budget.limit = 0  # live tunnels still count into it; nothing pauses
        old_log, self.access_log = self.access_log, AccessLog(config.log.custom_logs, config.log.conditions)
        old_log.close()
        # Tunnels opened from now on keep what the new formats read (one open already
        # kept what the old ones did).
        self.kept_headers = kept_headers(self.access_log)
        if close_tunnels:
            for tunnel in list(self._tunnels.values()):
                tunnel.abort("restart")
            self._wake_sync_tunnels()


def bound_address(acc: Acceptor) -> tuple[str, int]:
    addr = acc.sock.getsockname()
    return addr[0], addr[1]
