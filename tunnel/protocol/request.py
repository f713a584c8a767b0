"""The client side, sans-IO: find, check and parse request heads.

`FrontEnd` accumulates bytes, checks the raw head strictly (R54: bare CR or LF,
obs-fold, line and field limits) and parses it once: the common form by a fast path,
anything else with an h11 server connection, which judges it. Bytes after the head stay
buffered: a body, a pipelined request, or the first bytes of a tunnel.
"""

from __future__ import annotations

import re
from typing import Optional

import h11

from ..config.model import Limits
from ..errors import BadRequest, HeaderFieldsTooLarge, MethodNotAllowed, URITooLong
from .heads import HOST_VALUE, LINES, TARGET, TOKEN, VALUE, RequestHead, field_line

__all__ = ["FrontEnd", "check_raw_head"]


def _h11_error(exc: h11.RemoteProtocolError) -> BadRequest:
    return BadRequest(f"malformed request: {exc}")


def check_raw_head(head: bytes, limits: Limits) -> None:
    """Strict checks on a complete raw request head (ending CRLF CRLF), before h11.

    Raises:
        URITooLong: the request line is longer than ``LimitRequestLine``.
        HeaderFieldsTooLarge: a field line over ``LimitRequestFieldSize``, or more than
            ``LimitRequestFields`` fields.
        BadRequest: a bare CR or LF, an obs-folded line, a control character in a field.
    """
    lines = head[:-4].split(b"\r\n")
    if len(lines[0]) > limits.request_line:
        raise URITooLong(f"request line longer than {limits.request_line} bytes")
    if len(lines) - 1 > limits.fields:
        raise HeaderFieldsTooLarge(f"more than {limits.fields} header fields")
    for i, line in enumerate(lines):
        if b"\n" in line:
            raise BadRequest("bare LF in request head")
        if b"\r" in line:
            raise BadRequest("bare CR in request head")
        if i and len(line) > limits.field_size:
            raise HeaderFieldsTooLarge(f"header field longer than {limits.field_size} bytes")
        if i and line[:1] in (b" ", b"\t"):
            raise BadRequest("obsolete line folding in request head")
        if b"\0" in line:
            raise BadRequest("NUL in request head")


#: The head `_simple_head` reads, whole: an HTTP/1.1 request line and plain header lines;
#: anything else goes to h11.
_SIMPLE_HEAD = re.compile(
    rb"(" + TOKEN + rb") (" + TARGET + rb") HTTP/1\.1\r\n((?:" + TOKEN + rb":[ \t]*" + VALUE + rb"[ \t]*\r\n)*)\r\n"
)
#: The common methods' names, one string each for every head that has them.
_METHODS = {m.encode("ascii"): m for m in ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH")}


def _simple_head(raw: bytes, limits: Limits) -> Optional[RequestHead]:
    """Read the common request head without h11: HTTP/1.1, no body framing, one Host,
    every line within the limits and of plain form. None for anything else, which h11
    (after `check_raw_head`) reads and judges. tests/protocol/test_request.py checks that what
    this returns is what h11 reads.

    One regex checks the whole head and another takes its lines apart."""
    start = _SIMPLE_HEAD.fullmatch(raw)
    if start is None:
        return None
    raw_method, raw_target, block = start.groups()
    if len(raw_method) + len(raw_target) + 10 > limits.request_line:
        return None
    fields = block[:-2].split(b"\r\n") if block else []
    if len(fields) > limits.fields:
        return None
    field_size = limits.field_size
    if len(block) > field_size and any(len(line) > field_size for line in fields):
        return None
    method = _METHODS.get(raw_method) or raw_method.decode("ascii")
    if method == "CONNECT":
        return None
    headers = []
    hosts = 0
    known = LINES
    for line in fields:
        name, low, value = known.get(line) or field_line(line)
        if low == "host":
            if not HOST_VALUE.fullmatch(line.partition(b":")[2].strip(b" \t")):
                return None
            hosts += 1
        elif low == "content-length" or low == "transfer-encoding":
            return None
        headers.append((name, value))
    if hosts != 1:
        return None
    return RequestHead(method, raw_target.decode("latin-1"), "1.1", headers, len(raw))


#: The limits of a `FrontEnd` made without any (``Limits`` is frozen: one is shared).
DEFAULT_LIMITS = Limits()


class FrontEnd:
    """The client side of one connection: finds, checks and parses request heads.

    ``feed`` bytes, then ``next_head()`` until it returns a head or None (more bytes
    needed). Bytes after the head stay in ``buffer``: a body, a pipelined request, or
    the first bytes of a tunnel. The h11 connection (``conn``) is kept for the HTTP life
    of the connection (plain proxying streams bodies through it).
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.buffer = bytearray()
        self._conn: Optional[h11.Connection] = None
        self._unseen: Optional[bytes] = None  # a head parsed by `_simple_head`, not yet shown to h11
        self.eof = False

    @property
    def conn(self) -> h11.Connection:
        """The h11 server connection, in the state the last head left it.

        A head read by the fast path is given to h11 on first use (most tunnels never
        need it: their connection stops being HTTP at the 101).
        """
        conn = self._conn
        if conn is None:
            conn = self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_head)
        if self._unseen is not None:
            raw, self._unseen = self._unseen, None
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
            conn.receive_data(raw)
            conn.next_event()  # the Request `_simple_head` read: h11 accepts what it accepts
        return conn

    @property
    def _max_head(self) -> int:
        lim = self.limits
        return lim.request_line + 2 + (lim.field_size + 2) * lim.fields + 2

    def feed(self, data: bytes) -> None:
        """Add bytes read from the client (b"" means EOF)."""
        if data:
            self.buffer += data
        else:
            self.eof = True

    def next_head(self) -> Optional[RequestHead]:
        """Parse the next request head if a whole one is buffered.

        Returns:
            The head, or None when more bytes are needed.

        Raises:
            ClientError: the head breaks a limit or HTTP's grammar (status on it).
        """
        buf = self.buffer
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            self._check_partial(buf)
            return None
        end += 4
        raw = bytes(buf[:end])
        conn = self._conn
        if self._unseen is None and (conn is None or (conn.our_state is h11.DONE and conn.their_state is h11.DONE)):
            head = _simple_head(raw, self.limits)
            if head is not None:
                del buf[:end]
                self._unseen = raw
                return head
        check_raw_head(raw, self.limits)
        del buf[:end]
        conn = self.conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        conn.receive_data(raw)
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise _h11_error(exc) from exc
        if not isinstance(event, h11.Request):  # pragma: no cover - the head is whole
            raise BadRequest("malformed request head")
        method = event.method.decode("ascii")
        if method == "CONNECT":
            raise MethodNotAllowed("CONNECT is not supported: this is a reverse proxy")
        has_te = has_cl = False
        for name, _ in event.headers:
            if name == b"transfer-encoding":
                has_te = True
            elif name == b"content-length":
                has_cl = True
        if has_te and has_cl:
            raise BadRequest("both Content-Length and Transfer-Encoding in request")
        hosts = [v for k, v in event.headers if k == b"host"]
        if len(hosts) > 1:
            raise BadRequest("more than one Host header")
        if hosts and not HOST_VALUE.fullmatch(hosts[0]):
            raise BadRequest("malformed Host header")
        return RequestHead(
            method=method,
            target=event.target.decode("latin-1"),
            http_version=event.http_version.decode("ascii"),
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers.raw_items()],
            raw_size=end,
        )

    def _check_partial(self, buf: bytearray) -> None:
        """Refuse early what can never become a valid head (no waiting for the deadline)."""
        line_end = buf.find(b"\r\n")
        if line_end < 0:
            if len(buf) > self.limits.request_line:
                raise URITooLong(f"request line longer than {self.limits.request_line} bytes")
            if b"\n" in buf:
                raise BadRequest("bare LF in request head")
        elif len(buf) > self._max_head:
            raise HeaderFieldsTooLarge("request head too large")
        else:
            lf = buf.find(b"\n")
            if lf >= 0 and (lf == 0 or buf[lf - 1] != 0x0D):
                raise BadRequest("bare LF in request head")
            if b"\n\n" in buf:
                raise BadRequest("bare LF in request head")

    def take_buffer(self) -> bytes:
        """Hand over everything buffered (the tunnel's first bytes) and empty the buffer."""
        data = bytes(self.buffer)
        self.buffer.clear()
        return data
