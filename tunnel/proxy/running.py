"""A tunnel's life after its 101, mixed into `Engine`: counted and recorded when it opens,
started with its strategy (on the loop, or on a pool thread with a possible hand-over to
the loop: the strategy rules of docs/httpd-behaviour.md), and at its end counted,
logged (the access log's entry, the INFO line) and given back to its balancer member.

The log lines keep the engine's logger names (``tunnel.engine``, ``tunnel.error``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Optional

from ..accesslog import AccessLog, Entry
from ..config.model import Config
from ..io.loop import Loop
from ..tunnels.async_driver import AsyncTunnel
from ..tunnels.handover import Parker
from ..tunnels.pump import Pump
from ..tunnels.strategy import HostCapabilities, Strategy
from ..tunnels.sync_driver import HOLD_GIL_FROM, ThreadPool, run_sync
from ..tunnels.wscontrol import attach, tracks_frames
from .closing import is_websocket as _is_websocket
from .lifecycle import Drain
from .records import Exchange, TunnelStart
from .stats import Recorder

__all__ = ["Running"]

log = logging.getLogger("tunnel.engine")
errlog = logging.getLogger("tunnel.error")

#: The engine's counter of tunnels opened with each strategy.
_STRATEGY_KEYS = {strategy: f"tunnels.{strategy.value}" for strategy in Strategy}


class Running:
    """A tunnel's start and end; the engine supplies the state below. First among the
    engine's bases: the other mixins declare these methods as stubs."""

    config: Config
    recorder: Recorder
    access_log: AccessLog
    stats: Counter[str]
    pool: ThreadPool
    parker: Parker
    upgrade_wake: Optional[Callable[[], None]]
    _lock: threading.Lock
    _live: dict[Pump, TunnelStart]
    _tunnels: dict[Pump, AsyncTunnel]
    _loop: Optional[Loop]
    _stopping: threading.Event
    _drain: Optional[Drain]
    _scratch: Any
    _wake_r: int
    _on_async_closed: Callable[[Pump], None]
    # Supplied by the other mixins (Upgrade, Lifecycle), which come after this one in
    # the engine's bases: declared here, not stubbed, so that nothing shadows them.
    _park: Callable[[TunnelStart], None]
    _check_drained: Callable[[], None]

    @property
    def host(self) -> HostCapabilities:
        raise NotImplementedError

    def _note_start(self, ts: TunnelStart, strategy: Strategy) -> None:
        pump = ts.pump
        with self._lock:
            self.stats[_STRATEGY_KEYS[strategy]] += 1
            self.stats["tunnels.open"] += 1
            self._live[pump] = ts
        notes = ts.exchange.notes
        notes["tunnel_id"] = self.recorder.tunnel_opened(ts, strategy.value)
        # The handshake's two stamps were read by the metrics just now and by nothing
        # later: an open tunnel keeps the shared 0.0 in their place, not two floats.
        ts.exchange.sent_at = ts.exchange.answered_at = 0.0
        notes["strategy"] = strategy
        scope = ts.scope
        if (
            pump.c2b.frames is None  # a pump made with websocket=True follows them already
            and _is_websocket(ts.exchange)
            and tracks_frames(scope, graceful_set=self.config.graceful_shutdown_set)
        ):
            pump.track_frames()  # frame boundaries, for a frame of the proxy's own (R121)
        if scope.websocket_ping_interval > 0 or scope.websocket_half_close_timeout > 0:
            attach(pump, ping_interval=scope.websocket_ping_interval, half_close=scope.websocket_half_close_timeout)
        if self.upgrade_wake is not None:
            self.upgrade_wake()  # a binary upgrade under way: this one may move too
        elif self._drain is not None:
            pump.close_at = time.monotonic()  # opened while stopping: going away at once
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "tunnel %s -> %s: strategy %s (ProxyWebsocketAsync %s, host can_poll %s)",
                ts.exchange.peer[0],
                ts.exchange.notes.get("backend", "?"),
                strategy,
                "On" if ts.scope.websocket_async else "Off",
                self.host.can_poll,
            )

    def _start_tunnel(self, ts: TunnelStart) -> None:
        """Start a tunnel whose 101 has gone out (loop thread)."""
        scope = ts.scope
        self._note_start(ts, ts.strategy)
        if ts.strategy is Strategy.ASYNC and not ts.reserved:
            self._start_async(ts, fresh=True)
            return
        handover_at = None
        if ts.strategy is Strategy.ASYNC:
            handover_at = time.monotonic() + scope.websocket_async_delay
        self.pool.run(lambda: self._run_sync(ts, handover_at))

    def _start_async(self, ts: TunnelStart, *, fresh: bool, restored: bool = False) -> None:
        loop = self._loop
        if ts.pump.hold and loop is not None and not self._stopping.is_set():
            self._park(ts)  # held for a binary upgrade between a sync thread and the loop
            return
        if loop is None or self._stopping.is_set():
            ts.pump.abort("shutdown")
            ts.pump.close()
            self._tunnel_closed(ts)
            return
        tunnel = AsyncTunnel(
            loop,
            ts.pump,
            self._scratch,
            idle_timeout=ts.idle_timeout,
            send_timeout=ts.scope.timeout,
            on_close=self._on_async_closed,  # one bound method for all of them
        )
        self._tunnels[ts.pump] = tunnel
        tunnel.start(fresh=fresh, restored=restored)

    def _async_closed(self, pump: Pump) -> None:
        """An async tunnel ended (loop thread): its start is found by its pump."""
        self._tunnels.pop(pump, None)
        with self._lock:
            ts = self._live[pump]
        self._tunnel_closed(ts)

    def _run_sync(self, ts: TunnelStart, handover_at: Optional[float], restored: bool = False) -> None:
        try:
            done = run_sync(
                ts.pump,
                idle_timeout=ts.idle_timeout,
                send_timeout=ts.scope.timeout,
                handover_at=handover_at,
                stopping=self._stopping,
                wake_fd=self._wake_r,
                hold_gil=self.pool.busy >= HOLD_GIL_FROM,
                fresh=not restored,
                parker=self.parker if ts.pump.c2b.src_tls is None and ts.pump.b2c.src_tls is None else None,
                restored=restored,
            )
        except BaseException:
            ts.pump.abort("error: internal")
            done = True
            errlog.exception("sync tunnel failed")
        if done:
            ts.pump.close()
            self._tunnel_closed(ts)
            return
        loop = self._loop
        if ts.pump.hold and loop is not None and loop.running:
            loop.call_soon_threadsafe(self._park, ts)  # a binary upgrade moves it (R157)
            return
        with self._lock:
            self.stats["tunnels.handed_over"] += 1
        ts.exchange.notes["strategy"] = "sync->async"
        if loop is None or not loop.running:
            ts.pump.abort("shutdown")
            ts.pump.close()
            self._tunnel_closed(ts)
            return
        loop.call_soon_threadsafe(lambda: self._start_async(ts, fresh=False))

    def _tunnel_closed(self, ts: TunnelStart) -> None:
        pump = ts.pump
        ex = ts.exchange
        if ts.balancer is not None and ts.member is not None:
            ts.balancer.add_traffic(ts.member, pump.c2b.count, pump.b2c.count)
            ts.balancer.release(ts.member)
        # The pump's counts include the early bytes that came with the heads (R99).
        ex.bytes_in += pump.c2b.count
        ex.bytes_out += pump.b2c.count
        ex.body_bytes = pump.b2c.count
        ex.notes["close_reason"] = pump.reason
        ex.notes["to_backend"] = str(pump.c2b.count)
        ex.notes["to_client"] = str(pump.b2c.count)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "tunnel %s -> %s closed: %s; %d bytes to backend, %d to client, %.3fs, %s",
                ex.peer[0],
                ex.notes.get("backend", "?"),
                pump.reason,
                pump.c2b.count,
                pump.b2c.count,
                time.monotonic() - ex.started,
                ex.notes.get("strategy", "?"),
            )
        self._log_exchange(ex)
        # Counted last: whoever sees the tunnel counted as closed (a status page, a test
        # waiting on it) also finds its log lines and its balancer counters written.
        with self._lock:
            self.stats["tunnels.open"] -= 1
            self.stats["tunnels.closed"] += 1
            self._live.pop(pump, None)
            self.recorder.tunnel_closed(ts)
        if self._drain is not None:
            loop = self._loop
            if loop is not None and loop.running:
                loop.call_soon_threadsafe(self._check_drained)

    def _log_exchange(self, ex: Exchange) -> None:
        """Write the access-log entry of a finished request or tunnel."""
        if not ex.tunnel:
            self.recorder.request_done(ex)  # a tunnel was counted when it opened and closed
        if not self.access_log.enabled:
            return
        head = ex.head
        self.access_log.write(
            Entry(
                remote_host=str(ex.peer[0]),
                peer_host=str(ex.connection_peer[0]) if ex.connection_peer is not None else "",
                request_line=(f"{head.method} {head.target} {ex.protocol}" if ex.protocol else head.request_line) if head else "-",
                method=head.method if head else "-",
                path=head.target if head else "-",
                protocol=ex.protocol or f"HTTP/{head.http_version}" if head else "-",
                status=ex.status,
                request_headers={k.lower(): v for k, v in head.headers} if head else {},
                response_headers={k.lower(): v for k, v in ex.response_headers},
                bytes_in=ex.bytes_in,
                bytes_out=ex.bytes_out,
                body_bytes=ex.body_bytes,
                start=ex.start,
                duration=time.monotonic() - ex.started,
                notes=ex.notes,
                server_port=ex.listener.port if ex.listener else 0,
                vhost=ex.vhost,
                tunnel=ex.tunnel,
            )
        )
