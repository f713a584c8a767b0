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

Made with the stream's direction (``FrameFollower(from_client=...)``, as the relay does),
the follower is strict: a header that breaks RFC 6455 (a reserved opcode, RSV2 or RSV3
set, a control frame fragmented or longer than 125 bytes, a client frame not masked or a
server frame masked) makes it ``broken`` for good: it stops reading and never reports a
boundary again, so nothing of the proxy's is put into a stream that is not WebSocket.
Made without one, it follows any garbage (meaningless counts). It never raises on input.
"""

from __future__ import annotations

from typing import Optional, Union

__all__ = ["FrameFollower", "OP_CLOSE", "OP_PING", "OP_PONG", "build_frame", "close_frame", "ping_frame"]

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

Bytes = Union[bytes, bytearray, memoryview]


def _header_length(b1: int) -> int:
    """The whole header's length, from its second byte (mask bit and length code)."""
    code = b1 & 0x7F
    return 2 + (2 if code == 126 else 8 if code == 127 else 0) + (4 if b1 & 0x80 else 0)


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

    Attributes:
        frames: frames that have passed whole.
        close_seen: a whole Close frame has passed.
    """

    __slots__ = ("frames", "close_seen", "broken", "_skip", "_head", "_in_close", "_mask_bit")

    def __init__(self, *, from_client: Optional[bool] = None) -> None:
        self.frames = 0
        self.close_seen = False
        #: a header broke RFC 6455: the stream is not WebSocket, nothing is followed.
        self.broken = False
        #: the mask bit every frame must have (0x80 from a client, 0 from a server),
        #: None when the direction is not known (not checked).
        self._mask_bit = None if from_client is None else (0x80 if from_client else 0)
        #: payload bytes of the current frame still to come (0: at a header or boundary).
        self._skip = 0
        #: the bytes of a header cut by a chunk's end (empty: none pending).
        self._head = bytearray()
        #: the frame being skipped is a Close frame.
        self._in_close = False

    @property
    def at_boundary(self) -> bool:
        """True when the bytes fed so far end between two frames."""
        return self._skip == 0 and not self._head and not self.broken

    @property
    def to_boundary(self) -> int:
        """How many bytes may be fed before the next frame boundary may be passed: 0 at
        a boundary; inside a payload, what is left of it; inside a header, the bytes the
        header still lacks (fed, they complete it: ask again). A reader that must stop
        at a boundary reads at most this much at a time."""
        if self._skip:
            return self._skip
        head = self._head
        if self.broken:
            return 1 << 30
        if not head:
            return 0
        return (_header_length(head[1]) if len(head) >= 2 else 2) - len(head)

    def _bad(self, b0: int, b1: int) -> bool:
        """The header's first two bytes break RFC 6455 (the follower is then broken)."""
        opcode = b0 & 0x0F
        bad = (
            b0 & 0x30 != 0  # RSV2, RSV3: no extension here defines them
            or 3 <= opcode <= 7
            or opcode >= 0xB
            or (opcode >= 8 and (not b0 & 0x80 or b1 & 0x7F > 125))
            or b1 & 0x80 != self._mask_bit
        )
        if bad:
            self.broken = True
            self._skip = 0
            self._head.clear()
        return bad

    def feed(self, data: Bytes) -> None:
        """The next bytes of the stream (any length, cut anywhere)."""
        if self.broken:
            return
        strict = self._mask_bit is not None
        n = len(data)
        skip = self._skip
        if skip >= n:  # the whole chunk is payload: the common case of a large frame
            self._skip = skip - n
            if skip == n and n:
                self._frame_done()
            return
        pos = skip
        if skip:
            self._skip = 0
            self._frame_done()
        head = self._head
        if head:
            # A header cut by the last chunk's end: complete it from this one.
            while True:
                need = (_header_length(head[1]) if len(head) >= 2 else 2) - len(head)
                if need == 0:
                    break
                take = data[pos : pos + need]
                head += take
                pos += len(take)
                if len(take) < need:
                    if len(head) >= 2 and self._mask_bit is not None:
                        self._bad(head[0], head[1])
                    return
            if self._mask_bit is not None and self._bad(head[0], head[1]):
                return
            self._in_close = head[0] & 0x0F == OP_CLOSE
            end = pos + _payload_length(head)
            head.clear()
            if end > n:
                self._skip = end - n
                return
            pos = end
            self._frame_done()
        while pos < n:
            if pos + 2 > n:
                head += data[pos:n]
                return
            b1 = data[pos + 1]
            if strict and self._bad(data[pos], b1):
                return
            code = b1 & 0x7F
            hlen = 2 + (2 if code == 126 else 8 if code == 127 else 0) + (4 if b1 & 0x80 else 0)
            if pos + hlen > n:
                head += data[pos:n]
                return
            if code < 126:
                length = code
            elif code == 126:
                length = (data[pos + 2] << 8) | data[pos + 3]
            else:
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
            self._in_close = data[pos] & 0x0F == OP_CLOSE
            end = pos + hlen + length
            if end > n:
                self._skip = end - n
                return
            pos = end
            self._frame_done()

    def _frame_done(self) -> None:
        self.frames += 1
        if self._in_close:
            self.close_seen = True
            self._in_close = False

    def __repr__(self) -> str:
        state = "boundary" if self.at_boundary else f"in frame ({self._skip} to skip)"
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


def ping_frame(payload: bytes = b"", *, mask: Optional[bytes] = None) -> bytes:
    """A Ping frame (its Pong echoes ``payload``)."""
    return build_frame(OP_PING, payload, mask=mask)
