"""One direction of a tunnel (`Flow`) and its half-close states, for `tunnel.tunnels.pump`.

Each flow's half-close state moves by ``TRANSITIONS``; a missing key is a bug reported
with both names (see the pump's module docstring for the table).
"""

from __future__ import annotations

import enum
import ssl
from typing import Optional, Union

from ..io.streams import Endpoint
from ..io.tls import TLSStream
from ..protocol.frames import FrameFollower

__all__ = ["Flow", "FlowState", "Event", "TRANSITIONS", "RelayStateError"]


class FlowState(enum.Enum):
    OPEN = "open"  # reading from the source, sending to the destination
    EOF_READ = "eof-read"  # the source ended; pending bytes still to send
    SHUT_WR = "shut-wr"  # everything sent, destination's write side shut
    CLOSED = "closed"  # ended by an error


class Event(enum.Enum):
    EOF = "eof"  # the source returned b"" with bytes still pending
    EOF_FLUSHED = "eof-flushed"  # the source returned b"" with nothing pending
    FLUSHED = "flushed"  # the last pending byte after EOF went out
    ERROR = "error"


TRANSITIONS: dict[tuple[FlowState, Event], FlowState] = {
    (FlowState.OPEN, Event.EOF): FlowState.EOF_READ,
    (FlowState.OPEN, Event.EOF_FLUSHED): FlowState.SHUT_WR,
    (FlowState.EOF_READ, Event.FLUSHED): FlowState.SHUT_WR,
    (FlowState.OPEN, Event.ERROR): FlowState.CLOSED,
    (FlowState.EOF_READ, Event.ERROR): FlowState.CLOSED,
    (FlowState.SHUT_WR, Event.ERROR): FlowState.CLOSED,
    (FlowState.CLOSED, Event.ERROR): FlowState.CLOSED,
}


class RelayStateError(RuntimeError):
    """A transition the table does not allow: a bug in the pump, never a peer's fault."""


class Flow:
    """One direction of a tunnel: bytes read from ``src`` and sent to ``dst``."""

    __slots__ = ("name", "src", "dst", "pending", "state", "count", "src_tls", "dst_tls", "frames", "last", "pipe")

    def __init__(self, name: str, src: Endpoint, dst: Endpoint) -> None:
        self.name = name
        self.src = src
        self.dst = dst
        #: bytes read from src that dst has not accepted yet (None when none).
        self.pending: Optional[bytearray] = None
        self.state = FlowState.OPEN
        #: bytes read from the source (all of them reach dst unless the tunnel aborts),
        #: the early bytes handed to the pump with the heads included.
        self.count = 0
        #: the frame follower of a websocket tunnel's flow, else None.
        self.frames: Optional[FrameFollower] = None
        #: on a websocket tunnel whose frames are not followed (``Pump.close_watch``):
        #: the last 131 bytes of the last read (room for a whole Close frame).
        self.last: Optional[bytes] = None
        #: a bulk flow's pipe (read end, write end) while it splices, else None
        #: (``tunnel.tunnels.splicing``); empty between events.
        self.pipe: Optional[tuple[int, int]] = None
        #: src when it is TLS (its engine may hold decrypted bytes: ``pending()``), else None.
        self.src_tls: Optional[Union[ssl.SSLSocket, TLSStream]] = (
            src if isinstance(src, (ssl.SSLSocket, TLSStream)) else None
        )
        #: dst when it may hold encrypted bytes of its own (``TLSStream.unsent``) to
        #: flush, else None.
        self.dst_tls: Optional[TLSStream] = dst if isinstance(dst, TLSStream) else None

    @property
    def backlog(self) -> bool:
        """Bytes of this flow not yet handed to the kernel (pending or TLS ciphertext);
        never for a CLOSED flow, whose destination is gone."""
        if self.state is FlowState.CLOSED:
            return False
        return self.pending is not None or (self.dst_tls is not None and self.dst_tls.unsent > 0)

    @property
    def pending_len(self) -> int:
        return len(self.pending) if self.pending is not None else 0

    def __repr__(self) -> str:
        return f"<Flow {self.name} {self.state.value} read={self.count} pending={self.pending_len}>"
