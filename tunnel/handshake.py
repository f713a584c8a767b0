"""The handshake, sans-IO: request heads in, decisions and bytes out.

Front side (the client): ``FrontEnd`` accumulates bytes, checks the raw head strictly
(R54: bare CR or LF, obs-fold, line and field limits) and parses it with an h11 server
connection, once. ``validate_upgrade`` applies RFC 6455 through wsproto's own request
checks plus a key check (R12), raising the ``ClientError`` to answer with.

Back side (the backend): ``backend_headers`` builds the forwarded header list (R7, R8,
R14, R51); ``BackendHandshake`` serialises the request with an h11 client connection,
reads the backend's response head, and ``check_switch`` accepts a 101 only when its
Upgrade names the forwarded token and, for WebSocket, its Sec-WebSocket-Accept is the one
computed from the client's key (R20); anything else is a 502 and never a tunnel.

Both sides hand back the bytes that followed the head: the first bytes of the tunnel.
Nothing here imports ``socket``.
"""

from __future__ import annotations

import base64
import binascii
import http
import re
from dataclasses import dataclass, field
from typing import Iterable, Optional

import h11
from wsproto.connection import ConnectionType
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError as WSRemoteProtocolError
from wsproto.utilities import generate_accept_token

from .config import Limits
from .errors import (
    BadGateway,
    BadRequest,
    HeaderFieldsTooLarge,
    MethodNotAllowed,
    UpgradeRequired,
    URITooLong,
)

__all__ = [
    "RequestHead",
    "ResponseHead",
    "FrontEnd",
    "validate_upgrade",
    "backend_headers",
    "BackendHandshake",
    "client_switch_bytes",
    "HOP_BY_HOP",
    "error_response_bytes",
]

#: Removed from every forwarded request and relayed response (R14 plus the
#: tunnel line: Proxy-Authorization is never forwarded, Proxy-Authenticate never relayed).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "proxy-connection",
        "keep-alive",
        "upgrade",
        "trailer",
        "te",
        "transfer-encoding",
        "proxy-authorization",
        "proxy-authenticate",
    }
)
#: The longest response head we read from a backend (R19: lines ≤ 8192; a head this big
#: is already suspicious).
MAX_RESPONSE_HEAD = 64 * 1024

_TOKEN_SPLIT = re.compile(r"\s*,\s*")
#: A Host value httpd's fix_hostname accepts: a name or IPv4 address of letters, digits,
#: ``-``, ``_`` and ``.``, or a bracketed IPv6 literal; an optional numeric port.
_HOST = re.compile(rb"(?:[A-Za-z0-9._-]*|\[[0-9A-Fa-f:.]+\])(?::[0-9]*)?")


@dataclass(slots=True)
class RequestHead:
    """A parsed request head. Header names keep the client's case; lookups ignore it."""

    method: str
    target: str
    http_version: str
    headers: list[tuple[str, str]]
    raw_size: int = 0  # bytes of the head on the wire (for %I)

    def get(self, name: str) -> Optional[str]:
        """The header's value, repeated lines joined with ", " (R12), or None."""
        name = name.lower()
        values = [v for k, v in self.headers if k.lower() == name]
        return ", ".join(values) if values else None

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def tokens(self, name: str) -> list[str]:
        """The comma-separated tokens of a header, lower-cased, empty ones dropped."""
        value = self.get(name)
        return [t.lower() for t in _TOKEN_SPLIT.split(value.strip())] if value else []

    @property
    def request_line(self) -> str:
        return f"{self.method} {self.target} HTTP/{self.http_version}"

    @property
    def keep_alive(self) -> bool:
        tokens = self.tokens("connection")
        if self.http_version == "1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


@dataclass(slots=True)
class ResponseHead:
    status: int
    reason: str
    http_version: str
    headers: list[tuple[str, str]] = field(default_factory=list)

    def get(self, name: str) -> Optional[str]:
        name = name.lower()
        values = [v for k, v in self.headers if k.lower() == name]
        return ", ".join(values) if values else None


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


#: RFC 9110's grammar as h11 applies it: a token (method, field name), a request target,
#: a field value (no leading or trailing blanks).
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_TARGET = rb"[\x21-\x7e]+"
_VALUE = rb"(?:[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?"
#: The request line `_simple_head` reads; anything else goes to h11.
_SIMPLE_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") (" + _TARGET + rb") HTTP/1\.1")
#: One header line as h11 reads it (name, value without the blanks around it).
_FIELD_LINE = re.compile(rb"(" + _TOKEN + rb"):[ \t]*(" + _VALUE + rb")[ \t]*")


def _simple_head(raw: bytes, limits: Limits) -> Optional[RequestHead]:
    """Read the common request head without h11: HTTP/1.1, no body framing, one Host,
    every line within the limits and of plain form. None for anything else, which h11
    (after `check_raw_head`) reads and judges. tests/test_handshake.py checks that what
    this returns is what h11 reads."""
    lines = raw[:-4].split(b"\r\n")
    if len(lines[0]) > limits.request_line or len(lines) - 1 > limits.fields:
        return None
    start = _SIMPLE_REQUEST_LINE.fullmatch(lines[0])
    if start is None:
        return None
    method = start.group(1).decode("ascii")
    if method == "CONNECT":
        return None
    headers = []
    hosts = 0
    field_size = limits.field_size
    for line in lines[1:]:
        m = _FIELD_LINE.fullmatch(line)
        if m is None or len(line) > field_size:
            return None
        name = m.group(1).decode("ascii")
        low = name.lower()
        if low == "host":
            if not _HOST.fullmatch(m.group(2)):
                return None
            hosts += 1
        elif low == "content-length" or low == "transfer-encoding":
            return None
        headers.append((name, m.group(2).decode("latin-1")))
    if hosts != 1:
        return None
    return RequestHead(method, start.group(2).decode("latin-1"), "1.1", headers, len(raw))


class FrontEnd:
    """The client side of one connection: finds, checks and parses request heads.

    ``feed`` bytes, then ``next_head()`` until it returns a head or None (more bytes
    needed). Bytes after the head stay in ``buffer``: a body, a pipelined request, or
    the first bytes of a tunnel. The h11 connection (``conn``) is kept for the HTTP life
    of the connection (plain proxying streams bodies through it).
    """

    def __init__(self, limits: Limits = Limits()) -> None:
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
        if hosts and not _HOST.fullmatch(hosts[0]):
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


def _key_ok(key: str) -> bool:
    try:
        return len(base64.b64decode(key.encode("ascii"), validate=True)) == 16
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return False


def validate_upgrade(head: RequestHead, token: str, *, none_mode: bool = False) -> Optional[str]:
    """Check an upgrade request for the selected ``token`` (R12 tunnel line, R16).

    A valid WebSocket request is recognised by `_websocket_ok`, which applies the same
    rules as wsproto's server handshake without building an h11 event and a handshake
    object per request (tests/test_handshake.py checks the two agree on generated
    requests). A request it refuses is run through wsproto, whose message and status
    (400, or 426 for a bad version) are the answer.

    Args:
        head: the client's request head.
        token: the Upgrade token routing selected (``websocket`` or another).
        none_mode: the route says ``upgrade=NONE``: the Upgrade and Connection checks are
            skipped, the rest of the WebSocket checks still apply.

    Returns:
        The client's Sec-WebSocket-Key for a WebSocket upgrade, else None.

    Raises:
        BadRequest: HTTP/1.0, no ``upgrade`` in Connection, or a bad WebSocket request.
        UpgradeRequired: a Sec-WebSocket-Version other than 13 (426).
    """
    if head.http_version != "1.1":
        raise BadRequest("an upgrade needs HTTP/1.1")
    if not none_mode and "upgrade" not in head.tokens("connection"):
        raise BadRequest("Connection header lacks the upgrade option")
    if token.lower() != "websocket":
        return None
    key = _websocket_ok(head)
    if key is not None:
        return key
    keys = head.get_all("sec-websocket-key")
    if len(keys) > 1:
        raise BadRequest("repeated Sec-WebSocket-Key")
    if head.get("content-length") not in (None, "0") or head.get("transfer-encoding"):
        raise BadRequest("a WebSocket handshake has no body")
    _wsproto_verdict(head)
    key = keys[0].strip() if keys else ""
    if not _key_ok(key):
        raise BadRequest("Sec-WebSocket-Key is not base64 of 16 bytes")
    if head.get("host") is None:  # pragma: no cover - h11 refuses an HTTP/1.1 head without Host
        raise BadRequest("invalid WebSocket handshake: missing or bad header 'Host'")
    raise BadRequest("invalid WebSocket handshake")  # pragma: no cover - _websocket_ok's rules are wsproto's


def _websocket_ok(head: RequestHead) -> Optional[str]:
    """The key of a valid WebSocket upgrade request, or None if anything is off.

    wsproto's server rules (GET; ``upgrade`` among the Connection tokens is checked by
    the caller; the last Sec-WebSocket-Version is ``13``; a Sec-WebSocket-Key; a Host),
    plus ours: exactly one key, base64 of 16 bytes, and no body.
    """
    if head.method != "GET":
        return None
    key = version = None
    keys = 0
    for name, value in head.headers:
        low = name.lower()
        if low == "sec-websocket-key":
            key = value
            keys += 1
        elif low == "sec-websocket-version":
            version = value
        elif low == "transfer-encoding" or (low == "content-length" and value != "0"):
            return None
    if keys != 1 or version != "13" or key is None or not _key_ok(key):
        return None
    return key


def _wsproto_verdict(head: RequestHead) -> None:
    """Run a refused request through wsproto's server handshake for its exact answer."""
    headers: list[tuple[bytes, bytes]] = []
    for name, value in head.headers:
        low = name.lower()
        if low in ("upgrade", "connection"):
            continue
        headers.append((low.encode("latin-1"), value.encode("latin-1")))
    headers.append((b"upgrade", b"websocket"))
    headers.append((b"connection", b"Upgrade"))
    try:
        request = h11.Request(
            method=head.method, target=head.target, headers=headers, http_version=head.http_version
        )
        H11Handshake(ConnectionType.SERVER)._process_connection_request(request)
    except TypeError:  # pragma: no cover - wsproto API drift
        _validate_without_wsproto(head)
    except WSRemoteProtocolError as exc:
        hint = exc.event_hint
        status = getattr(hint, "status_code", 400)
        reason = str(exc).replace("Missing header, ", "missing or bad header ")
        if status == 426:
            raise UpgradeRequired(f"unsupported Sec-WebSocket-Version {head.get('sec-websocket-version')!r}; 13 is required") from exc
        raise BadRequest(f"invalid WebSocket handshake: {reason}") from exc
    except h11.LocalProtocolError as exc:
        raise BadRequest(f"invalid WebSocket handshake: {exc}") from exc
    except UnicodeError:  # wsproto decodes Host as IDNA; the request was refused already
        pass


def _validate_without_wsproto(head: RequestHead) -> None:  # pragma: no cover - wsproto API drift
    if head.method != "GET":
        raise BadRequest("invalid WebSocket handshake: request method must be GET")
    version = head.get("sec-websocket-version")
    if version is None:
        raise BadRequest("invalid WebSocket handshake: missing Sec-WebSocket-Version")
    if version.strip() != "13":
        raise UpgradeRequired(f"unsupported Sec-WebSocket-Version {version!r}; 13 is required")
    if head.get("host") is None:
        raise BadRequest("invalid WebSocket handshake: missing Host")


def backend_headers(
    head: RequestHead,
    *,
    host: str,
    upgrade_token: Optional[str],
    client_ip: str,
    add_headers: bool = True,
    server_name: str = "",
    preserve_host: bool = False,
    keep_framing: bool = False,
) -> list[tuple[str, str]]:
    """The header list to send to the backend (R7, R8, R14, R51).

    Hop-by-hop headers and every header the client's Connection names are stripped
    first; X-Forwarded-* are added after, so a client cannot make us drop them (R51).

    Args:
        head: the client's request head.
        host: the backend's authority for ``Host`` (used unless ``preserve_host``).
        upgrade_token: the token to forward in ``Upgrade`` (tunnel), or None (plain HTTP).
        client_ip: the client's address for X-Forwarded-For.
        keep_framing: keep Content-Length / Transfer-Encoding (plain HTTP with a body;
            h11 re-frames it).
    """
    named = set(head.tokens("connection"))
    out: list[tuple[str, str]] = []
    client_host = head.get("host")
    out.append(("Host", client_host if preserve_host and client_host else host))
    for name, value in head.headers:
        low = name.lower()
        framing = keep_framing and low in ("content-length", "transfer-encoding")
        if low == "host" or (low in named and not framing):
            continue  # (a Connection naming the body's framing must not lose the body)
        if low in HOP_BY_HOP and not (keep_framing and low == "transfer-encoding"):
            continue
        if low == "content-length" and not keep_framing:
            continue
        if low == "expect":
            continue  # 100-continue is answered by the proxy's own h11 flow
        out.append((name, value))
    if add_headers:
        for name, value in (
            ("X-Forwarded-For", client_ip),
            ("X-Forwarded-Host", client_host or ""),
            ("X-Forwarded-Server", server_name),
        ):
            if not value:
                continue
            for i, (k, v) in enumerate(out):
                if k.lower() == name.lower():
                    out[i] = (k, f"{v}, {value}")
                    break
            else:
                out.append((name, value))
    if upgrade_token is not None:
        out.append(("Connection", "Upgrade"))
        out.append(("Upgrade", upgrade_token))
    return out


#: The one response head the tunnel path parses itself: a 101 with plain header lines.
_STATUS_101 = re.compile(rb"HTTP/1\.1 101(?: ([\t\x20-\x7e\x80-\xff]*))?")
#: Where h11 sees the end of a head (it accepts bare LF line ends).
_BLANK_LINE = re.compile(rb"\n\r?\n")
#: A request head as h11 writes it: request line, "Name: value" lines, empty line.
_REQUEST_HEAD_OUT = re.compile(
    _TOKEN + rb" " + _TARGET + rb" HTTP/1\.1\r\n(?:" + _TOKEN + rb": " + _VALUE + rb"\r\n)*\r\n"
)


def _request_head(method: str, target: str, headers: list[tuple[str, str]]) -> Optional[bytes]:
    """The request head as h11 would write it, or None if a part needs h11's judgement.

    One regex checks the whole head; the line count catches a CR LF inside a value
    (which would otherwise read as two valid lines).
    """
    lines = [f"{method} {target} HTTP/1.1"]
    lines += [f"{n}: {v}" for n, v in headers]
    try:
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    except UnicodeError:
        return None
    if data.count(b"\n") != len(lines) + 1 or not _REQUEST_HEAD_OUT.fullmatch(data):
        return None
    return data


def _wire_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """Header strings back to the bytes they were read as (latin-1: obs-text passes)."""
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]


def parse_101(buf: bytes) -> Optional[tuple[ResponseHead, int]]:
    """A complete ``HTTP/1.1 101`` head with plain header lines at the start of ``buf``:
    the head and its length. None for anything else (more bytes needed, another status,
    an unusual line): h11 reads those."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = buf[:end].split(b"\r\n")
    status = _STATUS_101.fullmatch(lines[0])
    if status is None:
        return None
    headers = []
    for line in lines[1:]:
        m = _FIELD_LINE.fullmatch(line)
        if m is None:
            return None
        headers.append((m.group(1).decode("latin-1"), m.group(2).decode("latin-1")))
    reason = (status.group(1) or b"").decode("latin-1")
    return ResponseHead(status=101, reason=reason, http_version="1.1", headers=headers), end + 4


class BackendHandshake:
    """The backend side of one upgrade: request bytes out, response head in.

    A tunnel request without a body (every WebSocket handshake) is written directly and
    a plain 101 answer read by `parse_101`: these are most handshakes, and h11's event
    machinery costs more than the rest of a handshake together. Anything else (a body,
    another status, an unusual header line) goes through an h11 client connection,
    brought up to the same state on first use (``conn``).

    Args:
        method, target: the request line to send (target already re-encoded by routing).
        headers: from ``backend_headers``.
        upgrade_token: the forwarded Upgrade token (None: a plain HTTP request).
        client_key: the client's Sec-WebSocket-Key (for the Accept check), or None.
    """

    def __init__(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        *,
        upgrade_token: Optional[str],
        client_key: Optional[str],
    ) -> None:
        self._conn: Optional[h11.Connection] = None
        self._direct = False  # the request went out without h11
        self._buf = bytearray()  # response bytes read while direct
        self._trailing = b""
        self.upgrade_token = upgrade_token
        self.client_key = client_key
        self.method = method
        self.target = target
        self.headers = list(headers)
        self.response: Optional[ResponseHead] = None

    @property
    def conn(self) -> h11.Connection:
        """The h11 client connection, in the state the request left it."""
        if self._conn is None:
            self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD)
            if self._direct:  # the request was written without h11: replay it (output dropped)
                self._conn.send(h11.Request(method=self.method, target=self.target, headers=_wire_headers(self.headers)))
                self._conn.send(h11.EndOfMessage())
        return self._conn

    def request_bytes(self, *, end: bool = True) -> bytes:
        """The request head (and, with ``end``, the end of an empty body)."""
        if end and self.upgrade_token is not None and self._conn is None:
            data = _request_head(self.method, self.target, self.headers)
            if data is not None:
                self._direct = True
                return data
        try:
            data = self.conn.send(
                h11.Request(method=self.method, target=self.target, headers=_wire_headers(self.headers))
            )
            if end:
                data += self.conn.send(h11.EndOfMessage())
        except (h11.LocalProtocolError, UnicodeError) as exc:
            raise BadRequest(f"request cannot be forwarded: {exc}") from exc
        return data  # type: ignore[return-value]

    def feed(self, data: bytes) -> Optional[ResponseHead]:
        """Bytes from the backend (b"" = EOF). Returns its final or 101 head once whole.

        1xx heads other than 101 (100 Continue, 103) are skipped.

        Raises:
            BadGateway: the backend closed before a head, or sent a malformed one.
        """
        if self._direct and self._conn is None:
            buf = self._buf
            buf += data
            parsed = parse_101(buf)
            if parsed is not None:
                self.response, end = parsed
                self._trailing = bytes(buf[end:])
                buf.clear()
                return self.response
            if data and _BLANK_LINE.search(buf) is None and len(buf) <= MAX_RESPONSE_HEAD:
                return None  # no whole head yet (h11 would wait too)
            # Not a plain 101, or the backend closed: h11 reads it all, as it would have.
            whole = bytes(buf)
            buf.clear()
            conn = self.conn
            if whole:
                conn.receive_data(whole)
            if not data:
                conn.receive_data(b"")
        else:
            self.conn.receive_data(data)
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                if not data:
                    raise BadGateway("backend closed the connection before a response head") from exc
                if "_SWITCH_UPGRADE" in str(exc):
                    raise BadGateway("backend switched protocols without being asked") from exc
                raise BadGateway("backend sent a malformed response head", detail=str(exc)) from exc
            if event is h11.NEED_DATA:
                if not data:
                    raise BadGateway("backend closed the connection before a response head")
                return None
            if isinstance(event, h11.ConnectionClosed):
                raise BadGateway("backend closed the connection before a response head")
            if isinstance(event, h11.InformationalResponse) and event.status_code != 101:
                continue
            if isinstance(event, (h11.Response, h11.InformationalResponse)):
                self.response = ResponseHead(
                    status=event.status_code,
                    reason=event.reason.decode("latin-1"),
                    http_version=event.http_version.decode("ascii"),
                    headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers.raw_items()],
                )
                return self.response
            raise BadGateway("unexpected event from backend")  # pragma: no cover

    @property
    def trailing(self) -> bytes:
        """Bytes the backend sent after its 101 head: the tunnel's first bytes to the client."""
        if self._conn is None:
            return self._trailing
        return bytes(self._conn.trailing_data[0])

    def check_switch(self, response: ResponseHead) -> None:
        """Accept a 101 only if it switches to what we asked for (R20 tunnel line).

        Raises:
            BadGateway: a 101 nobody asked for, another protocol, or a wrong Accept.
        """
        if self.upgrade_token is None:
            raise BadGateway("backend switched protocols without being asked")
        upgrade = (response.get("upgrade") or "").strip()
        if upgrade.lower() != self.upgrade_token.lower():
            raise BadGateway(
                "backend's 101 names another protocol",
                detail=f"asked {self.upgrade_token!r}, got {upgrade or 'no Upgrade header'!r}",
            )
        if self.upgrade_token.lower() == "websocket" and self.client_key is not None:
            expected = generate_accept_token(self.client_key.encode("ascii")).decode("ascii")
            got = (response.get("sec-websocket-accept") or "").strip()
            if got != expected:
                raise BadGateway(
                    "backend's 101 has a wrong Sec-WebSocket-Accept",
                    detail=f"expected {expected!r}, got {got or 'none'!r}",
                )


def client_switch_bytes(response: ResponseHead, token: str) -> bytes:
    """The 101 to send to the client: the backend's, hop-by-hop headers cleaned, no Date
    or Server added, ``Connection: Upgrade`` and ``Upgrade`` set again (R20)."""
    reason = response.reason or "Switching Protocols"
    lines = [f"HTTP/1.1 101 {reason}"]
    for name, value in response.headers:
        if name.lower() in HOP_BY_HOP:
            continue
        lines.append(f"{name}: {value}")
    lines.append("Upgrade: " + (response.get("upgrade") or token).strip())
    lines.append("Connection: Upgrade")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def error_response_bytes(status: int, reason: str, *, headers: Iterable[tuple[str, str]] = (), close: bool = True) -> bytes:
    """A short text/plain error answer (used where no h11 state is left to send it)."""
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    body = f"{status} {phrase}: {reason}\n".encode("utf-8", "replace")
    lines = [f"HTTP/1.1 {status} {phrase}", "Content-Type: text/plain; charset=utf-8", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
