"""The pump of one tunnel: two flows of bytes, their buffers, backpressure and half-close.

The pump decides everything about moving bytes and leaves waiting to its drivers
(``async_driver.py`` on the loop, ``sync_driver.py`` in a thread): a driver tells it
which end is ready (``on_event``) and asks it which ends it wants to hear about
(``interest``). It never waits, never sleeps and never touches a selector, so a test can
drive it with in-memory endpoints as well as with sockets.

An *endpoint* is anything with ``recv_into(buffer) -> int``, ``send(buffer) -> int``,
``shutdown(how)``, ``fileno()`` and ``close()`` that raises ``BlockingIOError`` (or
``ssl.SSLWantReadError`` / ``SSLWantWriteError``) instead of blocking: a non-blocking
socket is one, and so is a `TLSStream` (``tunnel.io.streams.Endpoint`` is the type).

Rules (docs/httpd-behaviour.md: R24-R30; docs/performance.md for the figures):

* Reads go into a scratch buffer the driver owns and shares among all its tunnels; a
  chunk is sent at once from a memoryview of it, and only what the peer did not accept
  is copied into the flow's ``pending`` bytearray. An idle flow holds no buffer.
* A bulk flow between two plain sockets that needs no look at its bytes (no TLS, no
  frame follower, no global cap, no Control) moves through a pipe with ``splice``
  instead (``splicing.py``): entered when a read fills the scratch buffer, left when
  little is queued; the pipe is empty between events (what the destination did not
  take becomes ``pending``: at most one chunk, as from a copying read), and a WebSocket
  stream's last 131 bytes are still read by copy, so the tail check below sees them.
* While a flow's pending bytes are at or above ``high_water`` its source is not read:
  memory per tunnel is bounded whatever the peers do. The same holds for a shared
  ``Budget`` across all tunnels (``TunnelBufferLimit``).
* Each readiness event reads at most ``READ_BUDGET`` chunks, so one busy tunnel cannot
  starve the others on a shared loop (R28).
* Half-close is data too: EOF from a source becomes ``shutdown(SHUT_WR)`` towards its
  destination once the flow's pending bytes are flushed; the other flow goes on.
* Any error other than would-block ends the whole tunnel (``abort``), except a reset
  from a peer once a WebSocket close handshake has passed (a Close frame each way):
  that is how many servers end every connection (R98). The reset peer's flow then
  ends as if by EOF (what it sent still reaches the other side, whose write side is
  then shut), the flow towards it is dropped, and the reason is "backend reset after
  the close handshake" (or "client ...").
* On a ``websocket`` tunnel (``websocket=True``) each flow has a `FrameFollower`
  that follows the frame headers of what it reads (no unmasking, no copy): it tells
  whether a Close frame has passed and where the frame boundaries are.

Each flow's half-close state moves by this table (``TRANSITIONS``); a missing key is a
bug reported with both names::

    OPEN      --eof-->      EOF_READ   (pending bytes still to flush)
    OPEN      --eof_flushed--> SHUT_WR (nothing pending: shut at once)
    EOF_READ  --flushed-->  SHUT_WR
    any       --error-->    CLOSED
"""

from __future__ import annotations

import mmap
from typing import Any, Optional

from ..io.streams import EVENT_READ, EVENT_WRITE, NOT_CONNECTED, WOULD_BLOCK, Endpoint, shutdown_write
from ..io.tls import TLSStream
from ..protocol.frames import FrameFollower
from .budget import CAPPED_CHUNK, Budget
from .flow import TRANSITIONS, Flow, FlowState, RelayStateError
from .flow import Event as _Event
from .splicing import close_pipe, open_pipe, splice_burst, spliceable

__all__ = [
    "Pump",
    "Flow",
    "FlowState",
    "Budget",
    "SCRATCH_SIZE",
    "HIGH_WATER",
    "READ_BUDGET",
    "new_scratch",
    "CAPPED_CHUNK",
]

#: Size of the scratch buffer each driver owns: 256 KiB measured best on loopback
#: (fewer calls per byte; Python pays per call, not per byte).
SCRATCH_SIZE = 256 * 1024
#: Pending bytes at which a flow's source stops being read. One scratch-full: a
#: tunnel never buffers more than this (plus one chunk) per direction.
HIGH_WATER = 256 * 1024
#: Most reads per readiness event (fairness on a shared loop, R28).
READ_BUDGET = 8
_ROUNDS = range(READ_BUDGET)


def new_scratch(size: int = SCRATCH_SIZE) -> memoryview:
    """A scratch buffer for one driver (one loop, or one sync thread).

    Anonymous mmap rather than ``bytearray(size)``: a bytearray is zero-filled, so every
    sync thread would hold the whole 256 KiB resident even while its tunnel is idle; an
    mmap's pages exist only once a read has written them.
    """
    return memoryview(mmap.mmap(-1, size))


#: A Close frame's longest form: 2 header bytes, a 4-byte mask, 125 bytes of payload.
_LONGEST_CLOSE = 131
#: A final Close frame's first byte: a tail without it cannot end with a Close, so an
#: idle flow whose last read had none keeps no tail (``_lone_close`` is False for both).
_CLOSE_OPCODE = 0x88


def _lone_close(data: Optional[bytes], masked: bool) -> bool:
    """``data`` (the tail of a flow's last read) ends with one whole Close frame (RFC 6455
    §5.5.1), masked or not as its direction must be: a final FIN Close header whose
    length reaches exactly the end. A payload byte that looks like such a header is
    possible but rare, and would only log a reset at info instead of error."""
    if data is None:
        return False
    end = len(data)
    extra = 6 if masked else 2
    for start in range(max(0, end - _LONGEST_CLOSE), end - 1):
        if data[start] == 0x88:
            b1 = data[start + 1]
            if bool(b1 & 0x80) == masked and start + extra + (b1 & 0x7F) == end and b1 & 0x7F <= 125:
                return True
    return False


class Pump:
    """The state of one tunnel between a client and a backend endpoint.

    Args:
        client: the client's endpoint (non-blocking).
        backend: the backend's endpoint (non-blocking).
        high_water: pending bytes per flow above which its source is not read.
        to_backend: bytes already read from the client that belong to the tunnel (those
            that followed the request head) — sent first.
        to_client: bytes already read from the backend after its 101 head — sent first.
        budget: a shared `Budget`, or None.
        websocket: the tunnel carries WebSocket frames (its upgrade token is
            ``websocket``): each flow follows them with a `FrameFollower`.
    """

    __slots__ = (
        "client",
        "backend",
        "c2b",
        "b2c",
        "high_water",
        "budget",
        "done",
        "reason",
        "last_activity",
        "more",
        "_stall_mark",
        "_stall_since",
        "ctl",
        "close_at",
        "close_watch",
        "asked_close",
        "waker",
        "hold",
    )

    def __init__(
        self,
        client: Endpoint,
        backend: Endpoint,
        *,
        high_water: int = HIGH_WATER,
        to_backend: bytes = b"",
        to_client: bytes = b"",
        budget: Optional[Budget] = None,
        websocket: bool = False,
        close_watch: bool = False,
    ) -> None:
        self.client = client
        self.backend = backend
        self.c2b = Flow("client->backend", client, backend)
        self.b2c = Flow("backend->client", backend, client)
        self.high_water = high_water
        self.budget = budget
        self.done = False
        #: why the tunnel ended: "eof" (both sides finished), "idle timeout", "error: ...".
        self.reason = ""
        #: the driver stamps its clock here on every event (idle timeout).
        self.last_activity = 0.0
        #: True when a TLS source may hold bytes no poll will report (a read stopped on
        #: its budget, or a paused source's flow drained): the driver must read both
        #: ends again soon. Only set here; the driver clears it when it acts on it, so
        #: a request made while one flow is served survives the other flow's read.
        self.more = False
        self._stall_mark: tuple[int, ...] = ()
        self._stall_since = 0.0
        #: a `tunnel.tunnels.wscontrol.Control` when the tunnel sends frames of its own
        #: (pings, a graceful Close) or has a half-close timeout; None otherwise. Only
        #: the thread driving the pump touches it.
        self.ctl: Optional[Any] = None
        #: when set (a monotonic time, from any thread), the driver starts a graceful
        #: close of the tunnel then (Close 1001 to both sides: ``wscontrol``).
        self.close_at = 0.0
        #: (code, reason) of a Close the operator asked for (``tunnel ctl close``), set
        #: from another thread; the driver sends it (``wscontrol.Control.close_with``)
        #: and clears it.
        self.asked_close: Optional[tuple[int, str]] = None
        #: the sync driver's `tunnel.tunnels.sync_driver.Waker` while it polls a tunnel
        #: whose frames are followed (so another thread can wake it), else None.
        self.waker: Optional[Any] = None
        #: set (from the loop thread) when a binary upgrade is to move the tunnel: its
        #: sync thread returns it between two events (``handover.Parker``).
        self.hold = False
        #: a websocket tunnel relayed without following its frames (R160): the last
        #: short read of each flow is kept, so that a reset right after a close
        #: handshake is still seen as a normal end (R98).
        self.close_watch = close_watch and not websocket
        if websocket:
            self.c2b.frames = FrameFollower(masked=True)  # a client masks every frame
            self.b2c.frames = FrameFollower(masked=False)
        for flow, data in ((self.c2b, to_backend), (self.b2c, to_client)):
            if data:
                flow.pending = bytearray(data)
                flow.count = len(data)
                if flow.frames is not None:
                    flow.frames.feed(data)
                if budget is not None:
                    budget.take(len(data))

    def track_frames(self) -> None:
        """Follow the WebSocket frame headers of both flows from now on (a tunnel whose
        upgrade is ``websocket``), so that a frame of the proxy's own can be put between
        two frames. Call before ``start``: the early bytes are the streams' first. A
        pump made with ``websocket=True`` follows them already."""
        for flow in (self.c2b, self.b2c):
            if flow.frames is None:
                flow.frames = FrameFollower(from_client=flow is self.c2b)
                if flow.pending is not None:
                    flow.frames.feed(flow.pending)

    # -- what the driver calls ---------------------------------------------------------
    def start(self) -> None:
        """Send the bytes that came with the heads (early data, R25)."""
        for flow in (self.c2b, self.b2c):
            if flow.pending is not None:
                self._flush(flow)

    def on_event(self, is_client: bool, mask: int, scratch: memoryview) -> None:
        """An end is ready: ``is_client`` says which, ``mask`` for what."""
        if self.done:
            return
        if is_client:
            outgoing, incoming = self.c2b, self.b2c
        else:
            outgoing, incoming = self.b2c, self.c2b
        if mask & EVENT_WRITE:
            if incoming.pending is not None:
                self._flush(incoming)
            elif incoming.dst_tls is not None and incoming.dst_tls.unsent:
                self._flush_tls(incoming, incoming.dst_tls)
        if mask & EVENT_READ and not self.done and outgoing.state is FlowState.OPEN:
            self._read(outgoing, scratch)

    def interest(self) -> tuple[int, int]:
        """The events (client, backend) the driver should wait for. (0, 0) when done."""
        if self.done:
            return 0, 0
        return self._mask(self.c2b, self.b2c), self._mask(self.b2c, self.c2b)

    def abort(self, reason: str) -> None:
        """End the tunnel now (error, idle timeout, shutdown). Buffers are dropped."""
        if self.done:
            return
        for flow in (self.c2b, self.b2c):
            if flow.state is not FlowState.SHUT_WR:
                flow.state = self._move(flow.state, _Event.ERROR)
            self._drop(flow)
        self.done = True
        self.reason = reason

    def close(self) -> None:
        """Close both endpoints (idempotent). Call once the pump is done."""
        self.release_pipes()
        for end in (self.client, self.backend):
            try:
                end.close()
            except OSError:
                pass

    def check_stall(self, now: float, limit: float) -> bool:
        """R37 (tunnel line): a write that makes no progress for ``limit`` seconds ends
        the tunnel. Drivers call this now and then; True when it aborted the tunnel.

        Progress is any byte handed to the kernel in a direction that has a backlog; a
        tunnel with nothing waiting to be written is never stalled (that is idleness).
        """
        if limit <= 0 or self.done:
            return False
        c2b, b2c = self.c2b, self.b2c
        if not (c2b.backlog or b2c.backlog):
            self._stall_since = 0.0
            return False
        mark = (
            c2b.count - c2b.pending_len,
            b2c.count - b2c.pending_len,
            c2b.dst_tls.unsent if c2b.dst_tls is not None else 0,
            b2c.dst_tls.unsent if b2c.dst_tls is not None else 0,
        )
        if mark != self._stall_mark or not self._stall_since:
            self._stall_mark = mark
            self._stall_since = now
            return False
        if now - self._stall_since >= limit:
            stuck = "client" if b2c.backlog else "backend"
            self.abort(f"send timeout: the {stuck} took no byte for {limit:g}s")
            return True
        return False

    @property
    def buffered(self) -> int:
        return self.c2b.pending_len + self.b2c.pending_len

    # -- internals ---------------------------------------------------------------------
    def _mask(self, outgoing: Flow, incoming: Flow) -> int:
        mask = 0
        if outgoing.state is FlowState.OPEN and (outgoing.pending is None or len(outgoing.pending) < self.high_water):
            budget = self.budget
            if budget is None or not budget.exhausted or outgoing.pending is None:
                mask = EVENT_READ
        if incoming.pending is not None or (
            incoming.dst_tls is not None and incoming.dst_tls.unsent and incoming.state is not FlowState.CLOSED
        ):
            mask |= EVENT_WRITE
        return mask

    @staticmethod
    def _move(state: FlowState, event: _Event) -> FlowState:
        try:
            return TRANSITIONS[state, event]
        except KeyError:
            raise RelayStateError(f"no transition from {state.value} on {event.value}") from None

    def read(self, flow: Flow, scratch: memoryview) -> None:
        """Read ``flow``'s source (it is ready) and pass what comes to its destination:
        ``on_event``'s read half, for a driver that knows the flow is OPEN and the pump
        not done (the async driver's steady path)."""
        pending = flow.pending
        if pending is not None and len(pending) >= self.high_water:
            return  # paused (a poke after a hand-over, or a stale event): keep the bound
        if self.budget is not None or self.ctl is not None:
            self._read_counted(flow, scratch)
            return
        # The plain path (no global cap, no frames of the proxy's own): what every busy
        # tunnel runs per event, with its lookups bound once.
        src = flow.src  # methods called on it, not bound ahead: one call is the common case
        dst = flow.dst
        frames = flow.frames
        watch = self.close_watch
        size = len(scratch)
        high = self.high_water
        pipe = flow.pipe
        if pipe is not None and pending is None:  # a bulk flow: splice while enough is queued
            moved = splice_burst(self._fail, flow, pipe, watch, size, READ_BUDGET)
            if moved < 0:
                return
            if not moved:  # too little queued: not bulk any more
                self._unsplice(flow)
                pipe = None
            elif not watch:
                return  # more queued later is reported again (level-triggered readiness)
            # else: the stream's last bytes, left queued, are copied by one read below
        rounds = READ_BUDGET if pipe is None else 1
        while rounds:
            rounds -= 1
            try:
                n = src.recv_into(scratch)
            except WOULD_BLOCK:
                return
            except (OSError, ValueError) as exc:
                self._fail(flow.name.split("->")[0], "read from", exc)
                return
            if not n:
                self._eof(flow)
                return
            flow.count += n
            chunk = scratch[:n] if n < size else scratch
            if frames is not None:
                frames.feed(chunk)
            elif watch:  # the read's tail: a Close ends a stream
                tail = bytes(chunk) if n <= _LONGEST_CLOSE else bytes(chunk[-_LONGEST_CLOSE:])
                flow.last = tail if _CLOSE_OPCODE in tail else None  # no 0x88, no Close: keep nothing
            if pending is not None:
                pending += chunk
                if len(pending) >= high:
                    return
            else:
                try:
                    sent = dst.send(chunk)
                except WOULD_BLOCK:
                    sent = 0
                except (OSError, ValueError) as exc:
                    self._fail(flow.name.split("->")[1], "send to", exc)
                    return
                if sent < n:
                    flow.pending = pending = bytearray(chunk[sent:])
                    if n - sent >= high:
                        return
            if n < size:
                if flow.src_tls is None:
                    return  # a short read: the kernel buffer is most likely empty
            elif pipe is None and pending is None and frames is None and spliceable(flow):
                pipe = flow.pipe = open_pipe()  # the read filled the scratch: a bulk flow
        if flow.src_tls is not None:
            self.more = True

    _read = read

    @staticmethod
    def _unsplice(flow: Flow) -> None:
        pipe = flow.pipe
        if pipe is not None:
            flow.pipe = None
            close_pipe(pipe)

    def release_pipes(self) -> None:
        """Close the flows' pipes (they are empty between events): a pump about to be
        handed over or dropped. Idempotent."""
        self._unsplice(self.c2b)
        self._unsplice(self.b2c)

    def _read_counted(self, flow: Flow, scratch: memoryview) -> None:
        """`read` with a global cap (``Budget``) or a `Control` that may hold reads."""
        budget = self.budget
        if budget is not None and budget.exhausted:
            if flow.pending is not None:
                return  # over the global cap: only flows with nothing buffered may read
            scratch = scratch[:CAPPED_CHUNK]  # and only a small chunk, so N tunnels stay near the cap
        ctl = self.ctl
        if ctl is not None and ctl.controls(flow):
            ctl.read(flow, scratch)  # a frame of the proxy's waits for a boundary, or a Close went out
            return
        src_recv = flow.src.recv_into
        frames = flow.frames
        watch = self.close_watch
        for _ in _ROUNDS:
            view = scratch
            grant = kept = 0
            if budget is not None:
                grant = budget.reserve(len(scratch))
                view = scratch[:grant]
            try:
                try:
                    n = src_recv(view)
                except WOULD_BLOCK:
                    return
                except (OSError, ValueError) as exc:
                    self._fail(flow.name.split("->")[0], "read from", exc)
                    return
                if n == 0:
                    self._eof(flow)
                    return
                flow.count += n
                chunk = view[:n]
                if frames is not None:
                    frames.feed(chunk)
                elif watch:  # the read's tail: a Close ends a stream
                    tail = bytes(chunk[-_LONGEST_CLOSE:])
                    flow.last = tail if _CLOSE_OPCODE in tail else None
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
                        self._fail(flow.name.split("->")[1], "send to", exc)
                        return
                    if sent < n:
                        flow.pending = pending = bytearray(view[sent:n])
                        kept = n - sent
            finally:
                if budget is not None:
                    budget.give(grant - kept)  # what the read did not leave buffered
            if pending is not None and (len(pending) >= self.high_water or (budget is not None and budget.exhausted)):
                return
            if n < len(view) and flow.src_tls is None:
                return  # a short read: the kernel buffer is most likely empty
        if flow.src_tls is not None:
            self.more = True

    def _flush(self, flow: Flow) -> None:
        pending = flow.pending
        assert pending is not None
        try:
            sent = flow.dst.send(pending)
        except WOULD_BLOCK:
            return
        except (OSError, ValueError) as exc:
            self._fail(flow.name.split("->")[1], "send to", exc)
            return
        if self.budget is not None:
            self.budget.give(sent)
        if sent < len(pending):
            del pending[:sent]  # cheap: bytearray keeps an offset for front deletes
            return
        flow.pending = None
        if flow.state is FlowState.EOF_READ:
            self._shut(flow, _Event.FLUSHED)
        elif flow.src_tls is not None and flow.src_tls.pending():
            # The source was paused; its SSL object may hold decrypted bytes that no
            # poll will ever report: ask the driver to read again.
            self.more = True

    def _eof(self, flow: Flow) -> None:
        self._unsplice(flow)
        if flow.pending is not None:
            flow.state = self._move(flow.state, _Event.EOF)
        else:
            self._shut(flow, _Event.EOF_FLUSHED)

    def _shut(self, flow: Flow, event: _Event) -> None:
        try:
            shutdown_write(flow.dst)
        except OSError as exc:
            # ENOTCONN: the peer is already gone; the other flow finds out on its next I/O.
            if getattr(exc, "errno", None) != NOT_CONNECTED:
                self._fail(flow.name.split("->")[1], "shutdown", exc)
                return
        flow.state = self._move(flow.state, event)
        self._check_done()

    def _flush_tls(self, flow: Flow, dst: TLSStream) -> None:
        """Push a TLS destination's (``flow.dst``) waiting ciphertext (and its FIN, if due)."""
        try:
            dst.flush()
        except OSError as exc:
            self._fail(flow.name.split("->")[1], "send to", exc)
            return
        self._check_done()

    @property
    def close_handshake_done(self) -> bool:
        """A whole WebSocket Close frame has passed each way (websocket tunnels only).

        Without frame followers (``close_watch``) the tail of each flow's last read
        tells: it ends with a Close frame, masked from the client, not from the backend."""
        c, b = self.c2b.frames, self.b2c.frames
        if c is not None and b is not None:
            return c.close_seen and b.close_seen
        return self.close_watch and _lone_close(self.c2b.last, True) and _lone_close(self.b2c.last, False)

    def _fail(self, peer: str, what: str, exc: BaseException) -> None:
        """An I/O error with ``peer`` ("client" or "backend"): the end of the tunnel.

        After a close handshake it is a normal end (R98): the peer is gone, what it
        sent before still goes to the other side; else the tunnel aborts.
        """
        if not self.close_handshake_done:
            self.abort(f"error: {what} {peer}: {_describe(exc)}")
            return
        from_peer, to_peer = (self.c2b, self.b2c) if peer == "client" else (self.b2c, self.c2b)
        if not self.reason:
            self.reason = f"{peer} reset after the close handshake"
        self._drop(to_peer)  # nothing more reaches the peer
        if to_peer.state is not FlowState.CLOSED:
            to_peer.state = self._move(to_peer.state, _Event.ERROR)
        if from_peer.state is FlowState.OPEN:
            self._eof(from_peer)  # flushes what it sent, then shuts the other side's write
        else:
            self._check_done()

    def _check_done(self) -> None:
        c2b, b2c = self.c2b, self.b2c
        ended = (FlowState.SHUT_WR, FlowState.CLOSED)  # CLOSED without an abort: a reset after close
        if c2b.state in ended and b2c.state in ended and not c2b.backlog and not b2c.backlog:
            self.done = True
            self.reason = self.reason or ("eof" if self.ctl is None else self.ctl.end_reason())

    def _drop(self, flow: Flow) -> None:
        self._unsplice(flow)
        if flow.pending is not None and self.budget is not None:
            self.budget.give(len(flow.pending))
        flow.pending = None

    def __repr__(self) -> str:
        return f"<Pump {self.c2b!r} {self.b2c!r}{' done: ' + self.reason if self.done else ''}>"


def _describe(exc: BaseException) -> str:
    """A short, log-friendly cause: "connection reset by peer" rather than a repr."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__
