"""The engine's side of a binary upgrade (R155-R159), mixed into `Engine`.

The process side (spawning the new process, the channel, the rounds) is
``tunnel.cli.upgrade``; here is what either engine does with its own state:

* **Old process.** `upgrade_listeners` names the listening sockets to pass on;
  `upgrade_pause` stops accepting on them without closing them (the new process accepts
  on the same sockets from then on, so no client is refused), `upgrade_resume` starts
  again if the new process fails. `upgrade_take` stops up to N movable tunnels (plain
  sockets both ends, not an HTTP/2 stream) at a safe point: an async tunnel leaves the
  loop between two events; a sync one is held (``pump.hold``) and its thread, woken by the
  `Parker`'s pipe, gives the pump back between two events. What each can flush is
  flushed first. `freeze_tunnel` turns one into data; once the new process has
  acknowledged a batch, `upgrade_moved` closes this process's copies of its sockets and
  forgets it (no access-log line here: the new process writes it, with the whole
  tunnel's totals); `upgrade_restore` takes a batch back if it could not go.
  `upgrade_release` closes the listeners for good and lets the tunnels that cannot move
  (TLS) drain: they run until they end, or get Close 1001 at GracefulShutdownTimeout;
  the process exits once it holds nothing.
* **New process.** Listeners named in ``inherited`` (by their Listen line's key) are
  used instead of being bound (`Engine._open`); `thaw_tunnel` rebuilds a tunnel from its
  data and `upgrade_adopt` starts a batch: counted open, in the live set and the status
  pages under its old id, on its balancer member again (busy counts stay right), driven
  by the strategy it had, with its timers as they were.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any, Optional, TypeVar

from ..config.model import Config, Listener
from ..io.listeners import Acceptor
from ..io.loop import Loop, Task
from ..protocol.balancer import Balancers
from ..protocol.heads import RequestHead
from ..tunnels.async_driver import AsyncTunnel
from ..tunnels.handover import Parker, freeze, movable, thaw
from ..tunnels.pump import Budget, FlowState, Pump
from ..tunnels.strategy import Strategy
from ..tunnels.sync_driver import PoolFull, ThreadPool
from ..tunnels.wscontrol import CLOSE_WAIT
from .control import ControlError, ControlServer
from .lifecycle import Drain, listener_key
from .records import Exchange, TunnelStart
from .stats import Recorder

__all__ = ["Upgrade", "ListenerKey", "freeze_tunnel"]

log = logging.getLogger("tunnel.upgrade")

ListenerKey = tuple[str, int, bool]
_T = TypeVar("_T")

#: How long a held sync tunnel's thread may take to give its pump back.
PARK_TIMEOUT = 5.0


def _exchange_state(ex: Exchange) -> dict[str, Any]:
    head = ex.head
    return {
        "peer": list(ex.peer),
        "listener": dataclasses.asdict(ex.listener) if ex.listener is not None else None,
        "head": [head.method, head.target, head.http_version, [list(h) for h in head.headers], head.raw_size] if head else None,
        "status": ex.status,
        "start": ex.start,
        "started": ex.started,
        "bytes_in": ex.bytes_in,
        "bytes_out": ex.bytes_out,
        "body_bytes": ex.body_bytes,
        "response_headers": [list(h) for h in ex.response_headers],
        "notes": {k: str(v) for k, v in ex.notes.items()},
        "vhost": ex.vhost,
        "early_in": ex.early_in,
        "early_out": ex.early_out,
        "connection_peer": list(ex.connection_peer) if ex.connection_peer is not None else None,
        "sent_at": ex.sent_at,
        "answered_at": ex.answered_at,
        "protocol": ex.protocol,
    }


def _exchange(state: dict[str, Any]) -> Exchange:
    head = state["head"]
    listener = state["listener"]
    cpeer = state["connection_peer"]
    return Exchange(
        peer=(state["peer"][0], int(state["peer"][1])),
        listener=Listener(**listener) if listener is not None else None,
        head=RequestHead(head[0], head[1], head[2], [(k, v) for k, v in head[3]], int(head[4])) if head else None,
        status=int(state["status"]),
        start=float(state["start"]),
        started=float(state["started"]),
        bytes_in=int(state["bytes_in"]),
        bytes_out=int(state["bytes_out"]),
        body_bytes=int(state["body_bytes"]),
        response_headers=[(k, v) for k, v in state["response_headers"]],
        notes=dict(state["notes"]),
        tunnel=True,
        vhost=str(state["vhost"]),
        early_in=int(state["early_in"]),
        early_out=int(state["early_out"]),
        connection_peer=(cpeer[0], int(cpeer[1])) if cpeer is not None else None,
        sent_at=float(state["sent_at"]),
        answered_at=float(state["answered_at"]),
        protocol=str(state["protocol"]),
    )


def freeze_tunnel(ts: TunnelStart, sync: bool) -> tuple[dict[str, Any], list[bytes]]:
    """One stopped tunnel as data: its pump, its access-log record, its settings, its
    balancer member (by name) and the strategy that drove it (``sync``)."""
    state, blobs = freeze(ts.pump)
    return {
        "pump": state,
        "exchange": _exchange_state(ts.exchange),
        "strategy": "sync" if sync else "async",
        "idle_timeout": ts.idle_timeout,
        "send_timeout": ts.scope.timeout,
        "balancer": ts.balancer.name if ts.balancer is not None else None,
        "member": ts.member.name if ts.member is not None else None,
    }, blobs


class Upgrade:
    """Both sides of a binary upgrade; the engine supplies the state and helpers below."""

    config: Config
    balancers: Balancers
    budget: Optional[Budget]
    pool: ThreadPool
    recorder: Recorder
    stats: Any
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
    _controls: list[ControlServer]
    #: the new process: listening sockets passed by the old one, by Listen key.
    inherited: dict[ListenerKey, socket.socket]
    #: stops sync tunnels at a safe point (their threads watch its pipe).
    parker: Parker
    #: the old process once a hand-over began: called when a movable tunnel may wait.
    upgrade_wake: Optional[Callable[[], None]]
    _moving: dict[Pump, tuple[TunnelStart, bool]]
    _parked: list[TunnelStart]
    _paused: list[Acceptor]

    def _start_async(self, ts: TunnelStart, *, fresh: bool, restored: bool = False) -> None:
        raise NotImplementedError

    def _run_sync(self, ts: TunnelStart, handover_at: Optional[float], restored: bool = False) -> None:
        raise NotImplementedError

    def _tunnel_closed(self, ts: TunnelStart) -> None:
        raise NotImplementedError

    def _check_drained(self) -> None:
        raise NotImplementedError

    def _drain_deadline(self) -> None:
        raise NotImplementedError

    # -- running on the loop from another thread ----------------------------------------
    def in_loop(self, fn: Callable[[], _T], timeout: float = 30.0) -> _T:
        """Run ``fn`` on the loop thread and return its result (from any other thread).

        Raises:
            RuntimeError: the loop is not running (the engine stopped).
        """
        loop = self._loop
        if loop is None or not loop.running:
            raise RuntimeError("the engine is not running")
        done: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                done.set_exception(exc)

        loop.call_soon_threadsafe(run)
        loop.wakeup()
        try:
            return done.result(timeout)
        except concurrent.futures.TimeoutError:
            frame = sys._current_frames().get(loop.thread_id or 0)
            where = "".join(traceback.format_stack(frame)) if frame is not None else "?"
            log.error("binary upgrade: the loop did not answer in %gs; it is at:\n%s", timeout, where)
            raise RuntimeError(f"the loop did not answer within {timeout:g}s") from None

    # -- old process ---------------------------------------------------------------------
    def upgrade_listeners(self) -> list[tuple[ListenerKey, socket.socket]]:
        """Loop thread: each listening socket with its Listen line's key."""
        return [(listener_key(self._configured[acc]), acc.sock) for acc in self._acceptors]

    def upgrade_pause(self) -> None:
        """Loop thread: stop accepting; the sockets stay open (the new process accepts)."""
        self._paused = list(self._acceptors)
        for acc in self._paused:
            acc.pause()

    def upgrade_resume(self) -> None:
        """Loop thread: the new process failed: accept again."""
        for acc in self._paused:
            acc.resume()
        self._paused = []
        self.upgrade_wake = None
        self.parker.end()
        self._rebind_controls()

    def _rebind_controls(self) -> None:
        """The new process took the control sockets' paths and is gone: bind them again."""
        for i, control in enumerate(self._controls):
            if control.lost:
                handler = control._handler
                control.close()
                try:
                    self._controls[i] = ControlServer(control.path, handler)
                except ControlError as exc:
                    log.error("binary upgrade: cannot bind the control socket again: %s", exc)

    def upgrade_release(self, timeout: float) -> None:
        """Loop thread: the first batch went over: close the listeners for good, and let
        what cannot move drain (Close 1001 at ``timeout``, GracefulShutdownTimeout; 0:
        until they end). The loop stops once nothing is left."""
        loop = self._loop
        assert loop is not None
        for acc in self._acceptors:
            acc.close()
        self._acceptors.clear()
        self._configured.clear()
        self._paused = []
        drain = self._drain = Drain(loop.time(), timeout)
        with self._lock:
            staying = [p for p in self._live if not movable(p)]
        if timeout > 0:
            for pump in staying:
                if pump.c2b.frames is not None:
                    tunnel = self._tunnels.get(pump)
                    if tunnel is not None:
                        tunnel.close_at(drain.deadline)
                    else:
                        pump.close_at = drain.deadline
            try:
                os.write(self._wake_w, b"!")
            except OSError:
                pass
            loop.call_at(drain.deadline + CLOSE_WAIT / 2, self._drain_deadline)
        log.info(
            "binary upgrade: listeners handed over; %d tunnel(s) that cannot move (TLS) stay here until they end%s",
            len(staying), f", Close 1001 in {timeout:g}s" if timeout > 0 else "",
        )
        self._check_drained()

    def upgrade_take(self, limit: int) -> list[tuple[TunnelStart, bool]]:
        """Loop thread: stop up to ``limit`` movable tunnels and hand them to the caller
        as (tunnel, was sync). Sync tunnels are held now and come in a later call, once
        their threads gave them back (`upgrade_holding` says some are on the way)."""
        taken: list[tuple[TunnelStart, bool]] = []
        hold = False
        while self._parked and len(taken) < limit:
            taken.append((self._parked.pop(), True))
        with self._lock:
            candidates = [(p, ts) for p, ts in self._live.items() if movable(p) and not ts.exchange.protocol]
        for pump, ts in candidates:
            if len(taken) >= limit:
                break
            tunnel = self._tunnels.pop(pump, None)
            if tunnel is not None:
                tunnel.detach()
                taken.append((ts, False))
            elif not pump.hold:
                pump.hold = True
                hold = True
        if hold:
            self.parker.begin()
        kept: list[tuple[TunnelStart, bool]] = []
        for ts, sync in taken:
            with self._lock:
                self._live.pop(ts.pump, None)
            if self._flush(ts.pump):
                ts.pump.close()
                with self._lock:
                    self._live[ts.pump] = ts  # _tunnel_closed takes it out, counted
                self._tunnel_closed(ts)
                continue
            with self._lock:
                self._moving[ts.pump] = (ts, sync)
            kept.append((ts, sync))
        return kept

    def upgrade_holding(self) -> bool:
        """Loop thread: sync tunnels were held and have not all been given back yet."""
        with self._lock:
            return bool(self._parked) or any(p.hold for p in self._live)

    def upgrade_movable(self) -> int:
        """Loop thread: how many live tunnels could still move."""
        with self._lock:
            return len(self._parked) + sum(1 for p, ts in self._live.items() if movable(p) and not ts.exchange.protocol)

    @staticmethod
    def _flush(pump: Pump) -> bool:
        """Send what the kernel takes now of each flow's pending bytes (the rest moves);
        True when that ended the tunnel."""
        for flow in (pump.c2b, pump.b2c):
            if flow.pending is not None and flow.state is not FlowState.CLOSED:
                pump._flush(flow)
        return pump.done

    def _park(self, ts: TunnelStart) -> None:
        """Loop thread: a held sync tunnel's thread gave its pump back."""
        self._parked.append(ts)
        wake = self.upgrade_wake
        if wake is not None:
            wake()

    def upgrade_moved(self, batch: list[tuple[TunnelStart, bool]]) -> None:
        """Loop thread: the new process holds these now: close our copies, forget them."""
        for ts, _sync in batch:
            pump = ts.pump
            pump.close()  # our descriptors only: the connections live on in the new process
            if ts.balancer is not None and ts.member is not None:
                ts.balancer.release(ts.member)
            with self._lock:
                self._moving.pop(pump, None)
                self.stats["tunnels.open"] -= 1
                self.stats["tunnels.moved_out"] += 1
                self.recorder.tunnel_moved(ts)
        if self._drain is not None:
            self._check_drained()

    def upgrade_restore(self, batch: list[tuple[TunnelStart, bool]]) -> None:
        """Loop thread: these could not go: drive them here again, as they were."""
        for ts, sync in batch:
            pump = ts.pump
            pump.hold = False
            with self._lock:
                self._moving.pop(pump, None)
                self._live[pump] = ts
            self._resume(ts, sync)
        if self._drain is not None:
            self._check_drained()

    def _resume(self, ts: TunnelStart, sync: bool) -> None:
        if sync:
            try:
                self.pool.reserve()
            except (PoolFull, RuntimeError):
                sync = False
            else:
                self.pool.run(lambda: self._run_sync(ts, None, restored=True))
                return
        self._start_async(ts, fresh=False, restored=True)

    def upgrade_unhold(self) -> None:
        """Loop thread: the hand-over ended early: held sync tunnels run on here."""
        with self._lock:
            for pump in self._live:
                pump.hold = False
        while self._parked:
            ts = self._parked.pop()
            self._resume(ts, True)

    # -- new process ---------------------------------------------------------------------
    def thaw_tunnel(self, state: dict[str, Any], blobs: list[bytes], client: socket.socket, backend: socket.socket) -> TunnelStart:
        """A tunnel from the data `freeze_tunnel` made (no I/O: nothing is read or sent).

        Raises:
            HandoverError: the data is not a tunnel's.
        """
        for sock in (client, backend):
            sock.setblocking(False)
        pump = thaw(state["pump"], blobs, client, backend, budget=self.budget)
        ex = _exchange(state["exchange"])
        balancer = member = None
        if state["balancer"] is not None:
            balancer = self.balancers.get(state["balancer"])
            if balancer is not None:
                member = next((m for m in balancer.members if m.name == state["member"]), None)
            if member is None:
                log.warning("binary upgrade: tunnel %s: member %s of balancer://%s is not configured any more; not counted",
                            ex.notes.get("tunnel_id", "?"), state["member"], state["balancer"])
                balancer = None
        scope = dataclasses.replace(self.config.scope, timeout=float(state["send_timeout"]))
        return TunnelStart(
            pump=pump,
            scope=scope,
            strategy=Strategy(state["strategy"]),
            exchange=ex,
            reserved=False,
            member=member,
            balancer=balancer,
            idle_timeout=float(state["idle_timeout"]),
        )

    def upgrade_adopt(self, batch: list[TunnelStart]) -> None:
        """Loop thread: start tunnels that came from the old process."""
        for ts in batch:
            if ts.balancer is not None and ts.member is not None:
                ts.balancer.acquire(ts.member)
            ident = ts.exchange.notes.get("tunnel_id", "")
            with self._lock:
                self.stats["tunnels.open"] += 1
                self.stats["tunnels.moved_in"] += 1
                self._live[ts.pump] = ts
                self.recorder.tunnel_adopted(ts, ident, ts.exchange.started)
            if ts.strategy is Strategy.SYNC:
                self._resume(ts, True)
            else:
                self._start_async(ts, fresh=False, restored=True)

    def close_inherited(self) -> None:
        """Listening sockets passed over that no Listen line took (removed from the file)."""
        for key, sock in self.inherited.items():
            log.info("binary upgrade: %s:%d is not in the configuration any more; not listening there", key[0], key[1])
            sock.close()
        self.inherited.clear()
