"""Frames of the proxy's own in a live tunnel, and the timers that send them (R120-R126).

A `Control` rides on a `Pump` (``pump.ctl``) when a tunnel needs more than moving bytes:

* ``ProxyWebsocketPingInterval``: a side that sent nothing for an interval is sent a Ping;
  if it still sends nothing for one more interval it is a dead peer: the living side
  gets Close 1001 and the tunnel ends. The Pong a peer answers with is passed on to the
  other side like any frame: RFC 6455 §5.5.3 lets an endpoint receive a Pong it did not
  ask for, and passing it costs nothing (no frame is cut out of a stream).
* ``ProxyWebsocketHalfCloseTimeout``: once one side ended its direction (its FIN was
  relayed), the other has that long to end its own before the tunnel is closed.
* a graceful stop: at a time the engine spreads over the stop's window (``pump.close_at``)
  both sides get Close 1001 "going away" and the proxy waits for their answers.
* ``tunnel ctl close ID``: a Close of the operator's code and reason to both sides
  (``close_with``; asked from another thread through ``pump.asked_close``, R161).

Frames go into a flow only where its frame follower (``Flow.frames``, RFC 6455 §5.2)
says the bytes read so far end between two frames; while one waits, that flow's reads
stop at the next boundary (``FrameFollower.to_boundary``), so it goes out there. A Close
toward the backend is masked, as a client's frames must be (§5.3). Once the proxy sent a
side a Close, the bytes that follow in that direction are read and dropped (the proxy is
that side's peer now, and nothing may follow a Close): the frame follower still reads
them, to see the peer's answering Close. The tunnel ends when both sides answered (a
Close or their FIN) and the proxy's frames are delivered, or at the close deadline.

Only the thread that drives the pump calls these methods. Drivers call ``after(now)``
after each batch of events and ``tick(now)`` once ``now >= next_due``.
"""

from __future__ import annotations

import os
from typing import Optional

from ..config.model import Scope
from ..io.streams import WOULD_BLOCK
from ..protocol.frames import close_frame, ping_frame
from .pump import READ_BUDGET, Flow, FlowState, Pump, _describe

__all__ = ["Control", "attach", "tracks_frames", "CLOSE_GOING_AWAY", "CLOSE_WAIT", "PING_PAYLOAD", "NEVER"]

#: RFC 6455 §7.4.1: the endpoint is going away (server shutdown, dead peer).
CLOSE_GOING_AWAY = 1001
#: How long the proxy waits for the answers to a Close it sent when nothing else bounds
#: it (a graceful stop's own deadline, or the ping interval for a dead peer, is shorter).
CLOSE_WAIT = 10.0
#: The payload of the proxy's pings (its Pong echoes it; nobody else looks at it).
PING_PAYLOAD = b"tunnel"
#: ``next_due`` when nothing is due.
NEVER = float("inf")

_SIDES = ("client", "backend")


class Control:
    """Pings, half-close timeout and proxy-made Close frames for one tunnel.

    Args:
        pump: the tunnel's pump (frame following on for pings and Close frames).
        ping_interval: ProxyWebsocketPingInterval seconds (0: no pings).
        half_close: ProxyWebsocketHalfCloseTimeout seconds (0: none).
    """

    __slots__ = (
        "pump",
        "ping_interval",
        "half_close",
        "graceful_at",
        "closing",
        "reason",
        "close_deadline",
        "next_due",
        "_queued",
        "_swallow",
        "_dead",
        "_marks",
        "_silent_since",
        "_ping_due",
        "_ping_sent",
        "_next_ping_check",
        "_half_since",
    )

    def __init__(self, pump: Pump, *, ping_interval: float = 0.0, half_close: float = 0.0) -> None:
        self.pump = pump
        # Pings need frame boundaries: none on a tunnel that is not WebSocket.
        self.ping_interval = ping_interval if pump.c2b.frames is not None else 0.0
        self.half_close = half_close
        #: when a graceful close is to start (0: none asked).
        self.graceful_at = 0.0
        #: a Close of the proxy's is out or waiting; the tunnel ends when both answered.
        self.closing = False
        #: why the tunnel ends once the close completes.
        self.reason = ""
        self.close_deadline = 0.0
        #: the earliest time ``tick`` has something to do.
        self.next_due = NEVER
        # Per flow, index 0 = client->backend (to the backend), 1 = backend->client.
        self._queued: tuple[list[bytes], list[bytes]] = ([], [])
        self._swallow = [False, False]
        # Per side, index 0 = client (the source of flow 0), 1 = backend.
        self._dead = [False, False]
        self._marks = [pump.c2b.count, pump.b2c.count]
        self._silent_since = [0.0, 0.0]
        self._ping_due = [False, False]
        self._ping_sent = [0.0, 0.0]
        self._next_ping_check = 0.0
        self._half_since = 0.0

    # -- what the pump calls -----------------------------------------------------------
    def controls(self, flow: Flow) -> bool:
        """True when ``flow``'s reads must go through `read` (a frame of the proxy's
        waits for its boundary, or its bytes are being dropped after a Close)."""
        i = 0 if flow is self.pump.c2b else 1
        return self._swallow[i] or bool(self._queued[i])

    def read(self, flow: Flow, scratch: memoryview) -> None:
        """`Pump._read` for a controlled flow: reads that stop at frame boundaries."""
        pump = self.pump
        i = 0 if flow is pump.c2b else 1
        follower = flow.frames
        assert follower is not None
        recv = flow.src.recv_into
        budget = pump.budget
        for _ in range(READ_BUDGET):
            view = scratch
            if self._queued[i] and follower.broken:
                self._queued[i].clear()  # it stopped being WebSocket: the frame never goes
            if self._queued[i]:
                if follower.at_boundary:
                    self._inject(i)
                else:
                    view = scratch[: min(len(scratch), follower.to_boundary)]
            try:
                n = recv(view)
            except WOULD_BLOCK:
                return
            except (OSError, ValueError) as exc:
                pump.abort(f"error: read from {flow.name.split('->')[0]}: {_describe(exc)}")
                return
            if n == 0:
                self._queued[i].clear()  # an ended stream takes no frame (it may end mid-frame)
                pump._eof(flow)
                return
            flow.count += n
            chunk = view[:n]
            follower.feed(chunk)
            if not self._swallow[i]:
                kept = 0
                pending = flow.pending
                if pending is not None:
                    pending += chunk
                    kept = n
                else:
                    try:
                        sent = flow.dst.send(chunk)
                    except WOULD_BLOCK:
                        sent = 0
                    except (OSError, ValueError) as exc:
                        pump.abort(f"error: send to {flow.name.split('->')[1]}: {_describe(exc)}")
                        return
                    if sent < n:
                        flow.pending = bytearray(chunk[sent:])
                        kept = n - sent
                if budget is not None and kept:
                    budget.take(kept)
                if self._queued[i] and follower.at_boundary:
                    self._inject(i)
                if flow.pending is not None and len(flow.pending) >= pump.high_water:
                    return
            if n < len(view) and flow.src_tls is None:
                return  # a short read: the kernel buffer is most likely empty
        if flow.src_tls is not None:
            pump.more = True

    def end_reason(self) -> str:
        """The pump's reason when both flows ended on their own (FINs)."""
        return self.reason if self.closing else "eof"

    # -- what the drivers call ---------------------------------------------------------
    def after(self, now: float) -> float:
        """After a batch of events: note a half-close, end a finished close. Returns
        ``next_due``."""
        pump = self.pump
        if pump.done:
            return NEVER
        if self.half_close > 0 and not self._half_since:
            c2b_open = pump.c2b.state is FlowState.OPEN
            if c2b_open != (pump.b2c.state is FlowState.OPEN):
                self._half_since = now
                self._due(now + self.half_close)
        if self.closing:
            self._check_end()
        return self.next_due

    def tick(self, now: float) -> float:
        """Do what is due at ``now``: pings, dead peers, the half-close timeout, a
        graceful close, the close deadline. Returns the new ``next_due``."""
        pump = self.pump
        self.next_due = NEVER
        if pump.done:
            return NEVER
        if pump.close_at and not self.graceful_at:
            self.graceful_at = pump.close_at
        if self.graceful_at > 0:
            if now >= self.graceful_at:
                self.graceful_at = -1.0  # done: never again
                self.going_away(now)
            else:
                self._due(self.graceful_at)
        if self.closing:
            if now >= self.close_deadline:
                pump.abort(f"{self.reason} (the close handshake did not finish in time)")
                return NEVER
            self._check_end()
            self._due(self.close_deadline)
        elif self._half_since:
            if now - self._half_since >= self.half_close:
                ended = "client" if pump.c2b.state is not FlowState.OPEN else "backend"
                other = "backend" if ended == "client" else "client"
                pump.abort(f"half-close timeout: the {other} did not end its direction {self.half_close:g}s after the {ended}")
                return NEVER
            self._due(self._half_since + self.half_close)
        if self.ping_interval > 0 and not self.closing:
            if now >= self._next_ping_check:
                self._next_ping_check = now + self.ping_interval / 4
                self._check_pings(now)
            if not self.closing:
                self._due(self._next_ping_check)
        return NEVER if _ended(pump) else self.next_due

    def start(self, now: float) -> float:
        """Arm the timers of a tunnel that starts now. Returns ``next_due``."""
        if self.ping_interval > 0:
            self._silent_since = [now, now]
            self._next_ping_check = now + self.ping_interval / 4
            self._due(self._next_ping_check)
        if self.pump.close_at:
            self.graceful_at = self.pump.close_at
            self._due(self.graceful_at)
        return self.next_due

    def schedule_close(self, when: float) -> float:
        """A graceful close at ``when`` (the engine's stop). Returns ``next_due``."""
        if not self.graceful_at:
            self.graceful_at = when
            self._due(when)
        return self.next_due

    def close_with(self, now: float, code: int, text: str) -> bool:
        """A Close frame of ``code`` and ``text`` to both sides, between frames, then the
        close handshake (``tunnel ctl close``). False when it cannot go: the tunnel is
        not followed, not WebSocket after all, or already closing (then nothing is sent)."""
        pump = self.pump
        c2b, b2c = pump.c2b.frames, pump.b2c.frames
        if self.closing or pump.done or c2b is None or b2c is None or c2b.close_seen or b2c.close_seen:
            return False
        if c2b.broken or b2c.broken:
            return False
        reason = f"closed by ctl: {code}" + (f" {text}" if text else "")
        self._close(now, to_client=True, to_backend=True, reason=reason, wait=CLOSE_WAIT, code=code, text=text)
        return True

    def going_away(self, now: float, limit: Optional[float] = None) -> None:
        """Close 1001 "going away" to both sides now (a graceful stop).

        Nothing is sent on a tunnel that is not WebSocket (it runs on until the stop's
        deadline), nor when a close handshake is already under way (it ends on its own).
        """
        pump = self.pump
        c2b, b2c = pump.c2b.frames, pump.b2c.frames
        if self.closing or pump.done or c2b is None or b2c is None or c2b.close_seen or b2c.close_seen:
            return
        if c2b.broken or b2c.broken:
            return  # not WebSocket after all: it runs on like any other tunnel
        self._close(now, to_client=True, to_backend=True, reason="graceful stop: closed with 1001", wait=limit or CLOSE_WAIT)

    # -- internals ---------------------------------------------------------------------
    def _due(self, when: float) -> None:
        if when < self.next_due:
            self.next_due = when

    def _check_pings(self, now: float) -> None:
        pump = self.pump
        interval = self.ping_interval
        for side, flow in enumerate((pump.c2b, pump.b2c)):
            if flow.count != self._marks[side] or flow.backlog:
                # Bytes came, or this side's bytes wait for the other side: a flow
                # paused by backpressure is not a silent peer.
                self._marks[side] = flow.count
                self._silent_since[side] = now
                self._ping_sent[side] = 0.0
                continue
            if flow.state is not FlowState.OPEN or _broken(pump):
                continue  # a side that ended its direction sends nothing more: no ping
            if not self._ping_sent[side]:
                if now - self._silent_since[side] >= interval:
                    self._ping_sent[side] = now
                    self._send(1 - side, ping_frame(PING_PAYLOAD, mask=_mask_key() if side == 1 else None))
            elif now - self._ping_sent[side] >= interval:
                self._dead[side] = True
        dead = self._dead
        if dead[0] and dead[1]:
            pump.abort(f"dead peer: neither side answered a ping within {interval:g}s")
        elif dead[0] or dead[1]:
            who = _SIDES[0 if dead[0] else 1]
            reason = f"dead peer: the {who} sent nothing for {interval:g}s after a ping"
            self._close(now, to_client=dead[1], to_backend=dead[0], reason=reason, wait=interval)

    def _close(
        self,
        now: float,
        *,
        to_client: bool,
        to_backend: bool,
        reason: str,
        wait: float,
        code: int = CLOSE_GOING_AWAY,
        text: str = "going away",
    ) -> None:
        self.closing = True
        self.reason = reason
        self.close_deadline = now + wait
        self._due(self.close_deadline)
        if to_backend:
            self._send(0, close_frame(code, text, mask=_mask_key()))
        else:
            self._swallow[0] = True  # the backend is dead: nothing more goes to it
        if to_client:
            self._send(1, close_frame(code, text))
        else:
            self._swallow[1] = True  # the client is dead: nothing more goes to it
        self._check_end()

    def _send(self, i: int, frame: bytes) -> None:
        """Put ``frame`` into flow ``i`` at its next frame boundary (now, if there)."""
        flow = (self.pump.c2b, self.pump.b2c)[i]
        follower = flow.frames
        if follower is None or follower.broken:
            return  # not a WebSocket stream: nothing of ours goes into it
        self._queued[i].append(frame)
        if follower.at_boundary:
            self._inject(i)

    def _inject(self, i: int) -> None:
        pump = self.pump
        flow = (pump.c2b, pump.b2c)[i]
        queued = self._queued[i]
        if flow.state not in (FlowState.OPEN, FlowState.EOF_READ):
            queued.clear()  # its destination's write side is shut: nothing more goes there
            return
        data = b"".join(queued)
        if any(frame[0] & 0x0F == 0x8 for frame in queued):
            self._swallow[i] = True  # nothing may follow a Close in this direction
        queued.clear()
        if flow.pending is None:
            flow.pending = bytearray(data)
        else:
            flow.pending += data
        if pump.budget is not None:
            pump.budget.take(len(data))

    def _check_end(self) -> None:
        """End the tunnel once both sides answered the proxy's Close and its bytes are out."""
        pump = self.pump
        for side, flow in enumerate((pump.c2b, pump.b2c)):
            follower = flow.frames
            answered = self._dead[side] or flow.state is not FlowState.OPEN or (follower is not None and follower.close_seen)
            if not answered:
                return
            toward = (pump.b2c, pump.c2b)[side]  # the flow that goes to this side
            if not self._dead[side] and (self._queued[1 - side] or toward.backlog):
                return
        pump.done = True
        pump.reason = self.reason
        for flow in (pump.c2b, pump.b2c):
            pump._drop(flow)


def tracks_frames(scope: Scope, *, graceful_set: bool) -> bool:
    """Whether a ``websocket`` tunnel opened in ``scope`` follows its frames (R160).

    ``ProxyWebsocketFrameTracking On`` or ``Off`` say so; ``Auto`` turns it on for what
    is known when the tunnel opens and needs frame boundaries: pings or a half-close
    timeout in the scope, or a ``GracefulShutdownTimeout`` in the file (``graceful_set``:
    the Close 1001 of a graceful stop). A follower must read a stream from its first
    byte, so nothing decided later (``tunnel ctl close``, a graceful stop of a file
    without the directive) can turn it on for a tunnel already open.
    """
    mode = scope.websocket_frame_tracking
    if mode == "auto":
        return scope.websocket_ping_interval > 0 or scope.websocket_half_close_timeout > 0 or graceful_set
    return mode == "on"


def _broken(pump: Pump) -> bool:
    """Either direction turned out not to be WebSocket."""
    return any(f.frames is not None and f.frames.broken for f in (pump.c2b, pump.b2c))


def _ended(pump: Pump) -> bool:
    """``pump.done``, read again after calls that may end it (for the type checker)."""
    return pump.done


def _mask_key() -> bytes:
    return os.urandom(4)


def attach(pump: Pump, *, ping_interval: float = 0.0, half_close: float = 0.0) -> Control:
    """The pump's `Control`, made now if it has none (settings given only then)."""
    ctl = pump.ctl
    if ctl is None:
        ctl = pump.ctl = Control(pump, ping_interval=ping_interval, half_close=half_close)
    assert isinstance(ctl, Control)
    return ctl
