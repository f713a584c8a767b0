"""Following WebSocket frames through a byte stream, sans-IO (RFC 6455 §5.2).

`FrameFollower` is fed the bytes of one direction of a tunnel, chunk by chunk as they
are read, cut anywhere: inside a header, inside an extended length, inside a payload. It
reads only the frame headers and skips payloads by arithmetic: nothing is unmasked,
copied or decompressed (permessage-deflate frames pass as they are; RSV bits are not
looked at). It knows:

* ``frames``: frames that have passed whole;
* ``close_seen``: a whole Close frame (opcode 8) has passed in this direction;
* ``at_boundary``: the bytes fed so far end exactly between two frames, so a frame made
  by the proxy (`close_frame`, `ping_frame`) could be put into the stream here without
  cutting one. Control frames may stand between the fragments of a message (§5.4), so
  any frame boundary will do.

A feed costs a few integer operations per frame header and nothing per payload byte: a
chunk that lies wholly inside a payload is one comparison.

A stream that breaks the framing rules (a reserved opcode, a control frame that is
fragmented or longer than 125 bytes, a length with its top bit set, or, when the
direction is known, a frame masked the wrong way: §5.1 has a client mask every frame and
a server none) cannot be followed: the follower then says ``lost`` and stops reading,
for good (``at_boundary`` stays False, ``close_seen`` keeps its value). It never raises
on input.
"""

from __future__ import annotations

from typing import Optional, Union

__all__ = [
    "FrameFollower",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "build_frame",
    "close_frame",
    "ping_frame",
    "close_problem",
    "UNSENDABLE_CODES",
    "MAX_CLOSE_REASON",
]

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

#: The longest frame header: 2 bytes, an 8-byte extended length, a 4-byte mask key.
MAX_HEADER = 14
#: A control frame's payload is at most this long (§5.5).
MAX_CONTROL_PAYLOAD = 125
#: Opcodes RFC 6455 reserves (§5.2): a frame with one of them is not followed.
RESERVED_OPCODES = frozenset({3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF})

Bytes = Union[bytes, bytearray, memoryview]


def _header_length(b1: int) -> int:
    """The whole header's length, from its second byte (mask bit and length code)."""
    code = b1 & 0x7F
    return 2 + (2 if code == 126 else 8 if code == 127 else 0) + (4 if b1 & 0x80 else 0)


#: By a header's first byte: 1 when it alone breaks §5 (a reserved opcode, a
#: fragmented control frame).
_BAD_FIRST = bytes(int((b & 0x0F) in RESERVED_OPCODES or (b & 0x08 and not b & 0x80)) for b in range(256))
#: By the second byte, for each expected mask bit: 1 when it is masked the wrong way.
_BAD_SECOND = {
    -1: bytes(256),
    0: bytes(int(bool(b & 0x80)) for b in range(256)),
    0x80: bytes(int(not b & 0x80) for b in range(256)),
}
#: The fast path's tables. By the first byte: 1 for a frame the fast path may pass (a
#: valid data or Ping/Pong opcode; a Close, whose passing is recorded, takes the slow
#: path). By the second byte, for each expected mask bit: the whole frame's length when
#: the payload is under 126 bytes and the mask bit is right, else 0 (the slow path).
_FAST_FIRST = bytes(
    int((b & 0x0F) not in RESERVED_OPCODES and (b & 0x0F) != OP_CLOSE and bool(b & 0x80 or not b & 0x08)) for b in range(256)
)
_FAST_STEP = {
    mask: tuple(
        (2 + (4 if b & 0x80 else 0) + (b & 0x7F)) if (b & 0x7F) < 126 and (mask < 0 or b & 0x80 == mask) else 0
        for b in range(256)
    )
    for mask in (-1, 0, 0x80)
}


#: By the second byte, for each expected mask bit: the header's length (4, or 8 with a
#: mask key) when the length code is 126 (a 16-bit length follows) and the mask bit is
#: right, else 0. By the first byte: 1 for a data frame (continuation, text, binary),
#: whose payload may be that long (a control frame's may not, §5.5).
_EXT_STEP = {
    mask: tuple((4 + (4 if b & 0x80 else 0)) if (b & 0x7F) == 126 and (mask < 0 or b & 0x80 == mask) else 0 for b in range(256))
    for mask in (-1, 0, 0x80)
}
_DATA_FIRST = bytes(int((b & 0x0F) in (OP_CONTINUATION, OP_TEXT, OP_BINARY)) for b in range(256))


#: A header's whole length by its second byte (mask bit and length code).
_HEADER_LENGTHS = bytes(2 + (2 if b & 0x7F == 126 else 8 if b & 0x7F == 127 else 0) + (4 if b & 0x80 else 0) for b in range(256))


def _breaks_rules(b0: int, b1: int, bad_second: bytes) -> bool:
    """A header's first two bytes break §5 (a long control frame too)."""
    return bool(_BAD_FIRST[b0] or bad_second[b1] or (b0 & 0x08 and b1 & 0x7F > MAX_CONTROL_PAYLOAD))


def _payload_length(head: Bytes) -> int:
    """The payload length a complete header announces."""
    code = head[1] & 0x7F
    if code == 126:
        return (head[2] << 8) | head[3]
    if code == 127:
        return int.from_bytes(head[2:10], "big")
    return code


class FrameFollower:
    """Frame headers of one direction of a WebSocket stream, across any chunking.

    Args:
        masked: True for the client-to-server direction (every frame masked), False
            for server-to-client (none masked), None to accept either.
        from_client: the same, by the stream's direction (the relay's spelling).

    Attributes:
        frames: frames that have passed whole.
        close_seen: a whole Close frame has passed.
        lost: the stream broke the framing rules; nothing more is followed.
    """

    __slots__ = ("frames", "close_seen", "lost", "_bad_second", "_fast_step", "_ext_step", "_skip", "_head", "_in_close")

    def __init__(self, masked: Optional[bool] = None, *, from_client: Optional[bool] = None) -> None:
        if from_client is not None:
            masked = from_client  # a client masks every frame, a server none (§5.1)
        self.frames = 0
        self.close_seen = False
        self.lost = False
        mask = -1 if masked is None else 0x80 if masked else 0
        self._bad_second = _BAD_SECOND[mask]
        self._fast_step = _FAST_STEP[mask]
        self._ext_step = _EXT_STEP[mask]
        #: payload bytes of the current frame still to come (0: at a header or boundary).
        self._skip = 0
        #: the bytes of a header cut by a chunk's end (None: none pending; made only
        #: then, so that an idle tunnel's followers hold no buffer).
        self._head: Optional[bytearray] = None
        #: the frame being skipped is a Close frame.
        self._in_close = False

    @property
    def at_boundary(self) -> bool:
        """True when the bytes fed so far end between two frames."""
        return self._skip == 0 and self._head is None and not self.lost

    @property
    def broken(self) -> bool:
        """The stream broke the framing rules: nothing of the proxy's may go into it."""
        return self.lost

    @property
    def to_boundary(self) -> int:
        """How many bytes may be fed before the next frame boundary may be passed: 0 at
        a boundary; inside a payload, what is left of it; inside a header, the bytes the
        header still lacks (fed, they complete it: ask again). A reader that must stop
        at a boundary reads at most this much at a time."""
        if self.lost:
            return 1 << 30
        if self._skip:
            return self._skip
        head = self._head
        if head is None:
            return 0
        return (_header_length(head[1]) if len(head) >= 2 else 2) - len(head)

    def feed(self, data: Bytes) -> None:
        """The next bytes of the stream (any length, cut anywhere)."""
        n = len(data)
        skip = self._skip
        if skip >= n:  # the whole chunk is payload: the common case of a large frame
            self._skip = skip - n
            if skip == n and n:
                self._frame_done()
            return
        if self.lost:
            return
        pos = skip
        if skip:
            self._skip = 0
            self._frame_done()
        head = self._head
        if head is not None:
            # A header cut by the last chunk's end: complete it from this one.
            while True:
                if len(head) >= 2:
                    if _breaks_rules(head[0], head[1], self._bad_second):
                        self._lose()
                        return
                    need = _header_length(head[1]) - len(head)
                else:
                    need = 2 - len(head)
                if need == 0:
                    break
                take = data[pos : pos + need]
                head += take
                pos += len(take)
                if len(take) < need:
                    return
            self._in_close = head[0] & 0x0F == OP_CLOSE
            length = _payload_length(head)
            self._head = None
            if length >> 63:
                self._lose()
                return
            end = pos + length
            if end > n:
                self._skip = end - n
                return
            pos = end
            self._frame_done()
        # The loops below are the follower's only per-frame cost: table lookups, no calls.
        # The inner one passes the common frames (payload under 126 bytes, masked the
        # right way, not a Close); anything else is read by the rest of the outer one.
        bad_second = self._bad_second
        hlens = _HEADER_LENGTHS
        fast_first = _FAST_FIRST
        fast_step = self._fast_step
        ext_step = self._ext_step
        data_first = _DATA_FIRST
        last = n - 2
        frames = 0
        try:
            while pos < n:
                while pos <= last:
                    step = fast_step[data[pos + 1]]
                    if step:
                        if not fast_first[data[pos]] or pos + step > n:
                            break
                        pos += step
                    else:
                        # A data frame of 126 to 65535 bytes (a 16-bit length), masked
                        # the right way: read here too, without the general path's calls.
                        step = ext_step[data[pos + 1]]
                        if not step or not data_first[data[pos]] or pos + 4 > n:
                            break
                        end = pos + step + ((data[pos + 2] << 8) | data[pos + 3])
                        if end > n:
                            break
                        pos = end
                    frames += 1
                if pos >= n:
                    return
                if pos + 2 > n:
                    self._head = bytearray(data[pos:n])
                    return
                b0 = data[pos]
                b1 = data[pos + 1]
                if _BAD_FIRST[b0] or bad_second[b1]:
                    self._lose()
                    return
                code = b1 & 0x7F
                hlen = hlens[b1]
                if pos + hlen > n:
                    self._head = bytearray(data[pos:n])
                    return
                if code >= 126:
                    if b0 & 0x08:  # a control frame longer than 125 bytes
                        self._lose()
                        return
                    if code == 126:
                        code = (data[pos + 2] << 8) | data[pos + 3]
                    else:
                        code = int.from_bytes(data[pos + 2 : pos + 10], "big")
                        if code >> 63:
                            self._lose()
                            return
                end = pos + hlen + code
                if end > n:
                    self._in_close = b0 & 0x0F == OP_CLOSE
                    self._skip = end - n
                    return
                frames += 1
                if b0 & 0x0F == OP_CLOSE:
                    self.close_seen = True
                pos = end
        finally:
            self.frames += frames

    def state(self) -> dict[str, object]:
        """What the follower knows, as JSON-able data (a binary upgrade carries it to the
        new process: `restore` makes the same follower there, R156)."""
        return {
            "mask": next(m for m, table in _BAD_SECOND.items() if table is self._bad_second),
            "frames": self.frames,
            "close_seen": self.close_seen,
            "lost": self.lost,
            "skip": self._skip,
            "head": self._head.hex() if self._head is not None else None,
            "in_close": self._in_close,
        }

    @classmethod
    def restore(cls, state: dict[str, object]) -> FrameFollower:
        """The follower `state` describes, ready for the stream's next byte.

        Raises:
            ValueError: ``state`` is not one `state` made.
        """
        try:
            mask = state["mask"]
            head = state["head"]
            follower = cls()
            if mask not in _BAD_SECOND:
                raise ValueError(f"bad mask mode {mask!r}")
            follower._bad_second = _BAD_SECOND[mask]
            follower._fast_step = _FAST_STEP[mask]
            follower.frames = int(state["frames"])  # type: ignore[call-overload]
            follower.close_seen = bool(state["close_seen"])
            follower.lost = bool(state["lost"])
            follower._skip = int(state["skip"])  # type: ignore[call-overload]
            follower._head = bytearray.fromhex(head) if isinstance(head, str) else None
            follower._in_close = bool(state["in_close"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a frame follower's state: {exc}") from None
        if follower._skip < 0 or (follower._head is not None and not 0 < len(follower._head) < MAX_HEADER):
            raise ValueError("not a frame follower's state: bad skip or header")
        return follower

    def _lose(self) -> None:
        self.lost = True
        self._head = None
        self._skip = 0

    def _frame_done(self) -> None:
        self.frames += 1
        if self._in_close:
            self.close_seen = True
            self._in_close = False

    def __repr__(self) -> str:
        state = "lost" if self.lost else "boundary" if self.at_boundary else f"in frame ({self._skip} to skip)"
        return f"<FrameFollower frames={self.frames} close_seen={self.close_seen} {state}>"


def build_frame(opcode: int, payload: bytes = b"", *, mask: Optional[bytes] = None, fin: bool = True) -> bytes:
    """One frame: ``mask`` is the 4-byte key for a frame towards a server (a client's
    frames are masked, §5.3), None for a frame towards a client."""
    if not 0 <= opcode <= 0xF:
        raise ValueError(f"opcode {opcode} is not 0-15")
    if opcode >= 0x8 and len(payload) > MAX_CONTROL_PAYLOAD:
        raise ValueError(f"a control frame's payload is at most {MAX_CONTROL_PAYLOAD} bytes, not {len(payload)}")
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    mask_bit = 0x80 if mask is not None else 0
    if n < 126:
        head = bytes((first, mask_bit | n))
    elif n < 1 << 16:
        head = bytes((first, mask_bit | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, mask_bit | 127)) + n.to_bytes(8, "big")
    if mask is None:
        return head + payload
    if len(mask) != 4:
        raise ValueError("a mask key is 4 bytes")
    masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
    return head + bytes(mask) + masked


def close_frame(code: Optional[int] = 1000, reason: str = "", *, mask: Optional[bytes] = None) -> bytes:
    """A Close frame: ``code`` None for one with no body (then no reason either)."""
    if code is None:
        if reason:
            raise ValueError("a Close frame with a reason needs a code")
        return build_frame(OP_CLOSE, b"", mask=mask)
    if not 1000 <= code <= 4999:
        raise ValueError(f"close code {code} is not 1000-4999")
    return build_frame(OP_CLOSE, code.to_bytes(2, "big") + reason.encode("utf-8"), mask=mask)


#: Close codes an endpoint must not send (RFC 6455 §7.4.1): 1004 is reserved, 1005 and
#: 1006 stand for "no code" and "closed without a Close" locally, 1015 for a TLS failure.
UNSENDABLE_CODES = frozenset({1004, 1005, 1006, 1015})
#: A Close frame's reason: its payload (125 bytes) less the 2-byte code, in UTF-8 bytes.
MAX_CLOSE_REASON = MAX_CONTROL_PAYLOAD - 2


def close_problem(code: object, reason: object) -> Optional[str]:
    """Why a Close with ``code`` and ``reason`` may not be sent (None: it may): a code
    outside 1000-4999 or one of `UNSENDABLE_CODES`, a reason that is not text or is
    longer than `MAX_CLOSE_REASON` bytes of UTF-8."""
    if isinstance(code, bool) or not isinstance(code, int) or not 1000 <= code <= 4999:
        return f"close code {code!r} is not a number from 1000 to 4999"
    if code in UNSENDABLE_CODES:
        return f"close code {code} may not be sent in a Close frame (1004, 1005, 1006 and 1015 are reserved, RFC 6455 section 7.4.1)"
    if not isinstance(reason, str):
        return f"the close reason must be text, not {type(reason).__name__}"
    try:
        size = len(reason.encode("utf-8"))
    except UnicodeEncodeError:
        return "the close reason is not valid UTF-8 text"
    if size > MAX_CLOSE_REASON:
        return f"the close reason is {size} bytes of UTF-8; a Close frame holds at most {MAX_CLOSE_REASON}"
    return None


def ping_frame(payload: bytes = b"", *, mask: Optional[bytes] = None) -> bytes:
    """A Ping frame (its Pong echoes ``payload``)."""
    return build_frame(OP_PING, payload, mask=mask)
