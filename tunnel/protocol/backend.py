"""The backend side of a handshake, sans-IO: the forwarded request, the backend's head.

`backend_headers` builds the forwarded header list (R7, R8, R14, R51);
`BackendHandshake` serialises the request, reads the backend's response head, and
`check_switch` accepts a 101 only when its Upgrade names the forwarded token and, for
WebSocket, its Sec-WebSocket-Accept is the one computed from the client's key (R20);
anything else is a 502 and never a tunnel. The bytes after the 101 head are handed back:
the tunnel's first bytes to the client.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Optional, Union

import h11
from wsproto.utilities import generate_accept_token

from ..errors import BadGateway, BadRequest
from .heads import (
    HOP_BY_HOP,
    LINES,
    MAX_RESPONSE_HEAD,
    TARGET,
    TOKEN,
    VALUE,
    RequestHead,
    ResponseHead,
    field_line,
)

__all__ = ["backend_headers", "BackendHandshake", "client_switch_bytes", "parse_101"]


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
    forwarded: Optional[dict[str, int]] = None  # X-Forwarded-* lines the client sent: where
    for name, value in head.headers:
        low = name.lower()
        if keep_framing:
            framing = low in ("content-length", "transfer-encoding")
            if low == "host" or (low in named and not framing):
                continue  # (a Connection naming the body's framing must not lose the body)
            if low in HOP_BY_HOP and low != "transfer-encoding":
                continue
        elif low in _NOT_FORWARDED or low in named:
            continue  # hop-by-hop, Host (set above), the framing, Expect (R14)
        if low == "expect":
            continue  # 100-continue is answered by the proxy's own h11 flow
        if low in _FORWARDED_LOW:
            if forwarded is None:
                forwarded = {}
            forwarded.setdefault(low, len(out))
        out.append((name, value))
    if add_headers:
        for name, low, value in (
            ("X-Forwarded-For", "x-forwarded-for", client_ip),
            ("X-Forwarded-Host", "x-forwarded-host", client_host or ""),
            ("X-Forwarded-Server", "x-forwarded-server", server_name),
        ):
            if not value:
                continue
            at = forwarded.get(low) if forwarded is not None else None
            if at is None:
                out.append((name, value))
            else:
                k, v = out[at]
                out[at] = (k, f"{v}, {value}")
    if upgrade_token is not None:
        out.append(("Connection", "Upgrade"))
        out.append(("Upgrade", upgrade_token))
    return out


#: Request headers never forwarded when the body's framing is not kept: hop-by-hop
#: ones, Host (sent as the route says), Content-Length and Expect.
_NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length", "expect"}
#: The X-Forwarded-* names a client's own lines are extended for (R51).
_FORWARDED_LOW = frozenset({"x-forwarded-for", "x-forwarded-host", "x-forwarded-server"})


#: The one response head the tunnel path parses itself: a 101 with plain header lines.
_HEAD_101 = re.compile(
    rb"HTTP/1\.1 101(?: ([\t\x20-\x7e\x80-\xff]*))?\r\n((?:" + TOKEN + rb":[ \t]*" + VALUE + rb"[ \t]*\r\n)*)\r\n"
)
#: Where h11 sees the end of a head (it accepts bare LF line ends).
_BLANK_LINE = re.compile(rb"\n\r?\n")
#: A request head as h11 writes it: request line, "Name: value" lines, empty line.
_REQUEST_HEAD_OUT = re.compile(
    TOKEN + rb" " + TARGET + rb" HTTP/1\.1\r\n(?:" + TOKEN + rb": " + VALUE + rb"\r\n)*\r\n"
)


def _request_head(method: str, target: str, headers: list[tuple[str, str]]) -> Optional[bytes]:
    """The request head as h11 would write it, or None if a part needs h11's judgement.

    One regex checks the whole head; the line count catches a CR LF inside a value
    (which would otherwise read as two valid lines).
    """
    lines = [f"{method} {target} HTTP/1.1", *map(": ".join, headers)]
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


def parse_101(buf: Union[bytes, bytearray]) -> Optional[tuple[ResponseHead, int]]:
    """A complete ``HTTP/1.1 101`` head with plain header lines at the start of ``buf``:
    the head and its length. None for anything else (more bytes needed, another status,
    an unusual line): h11 reads those."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    status = _HEAD_101.fullmatch(buf, 0, end + 4)
    if status is None:
        return None
    block = status.group(2)
    headers = []
    table: dict[str, str] = {}
    if block:
        known = LINES
        for line in block[:-2].split(b"\r\n"):
            name, low, value = known.get(line) or field_line(line)
            headers.append((name, value))
            had = table.get(low)
            table[low] = value if had is None else f"{had}, {value}"
    reason = (status.group(1) or b"").decode("latin-1")
    return ResponseHead(101, reason, "1.1", headers, (headers, table)), end + 4


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
        return data

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
    lines += [f"{name}: {value}" for name, value in response.headers if name.lower() not in HOP_BY_HOP]
    lines.append("Upgrade: " + (response.get("upgrade") or token).strip())
    lines.append("Connection: Upgrade")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
