"""HTTP/2 streams as HTTP/1.1 exchanges, sans-IO (R143, R144, R145).

Each HTTP/2 stream becomes one ordinary HTTP/1.1 exchange that the session code serves
unchanged. `StreamBridge` holds one stream's translation: the request head (an RFC 8441
extended CONNECT becomes ``GET`` with ``Upgrade``, ``Connection: Upgrade`` and a
``Sec-WebSocket-Key`` of our own), the request body framed for HTTP/1.1, and the
HTTP/1.1 answer read back by an h11 client connection and turned into HTTP/2 headers and
data. After a checked 101 the stream carries the tunnel's bytes both ways untouched.

`FrameScanner` reads the frame headers of the client's bytes before the h2 engine does:
it bounds a header block (HEADERS plus CONTINUATION, the CVE-2024-27316 family) and
counts the frames a flood is made of (RST_STREAM for rapid reset, CVE-2023-44487;
SETTINGS, PING, PRIORITY, empty DATA and CONTINUATION) against per-connection budgets.
Clocks are passed in: nothing here reads the time.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Optional, Union

import h11

__all__ = [
    "Budget",
    "FrameScanner",
    "Flood",
    "StreamBridge",
    "Refusal",
    "Headers",
    "Head",
    "Body",
    "End",
    "Reset",
    "translate_request",
]

#: HTTP/2 header lists as the h2 engine gives and takes them.
Headers = Sequence[tuple[Union[str, bytes], Union[str, bytes]]]

#: Frame types (RFC 9113, 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

#: Fields that are about one HTTP/1.1 connection and never cross to HTTP/2 (RFC 9113, 8.2.2).
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "http2-settings"}
)


class Flood(Exception):
    """The client's frames exceed a limit; the connection ends with GOAWAY
    ENHANCE_YOUR_CALM (the message says which limit)."""


class Budget:
    """A token bucket: ``capacity`` events at once, refilled at ``rate`` per second."""

    __slots__ = ("capacity", "rate", "tokens", "stamp")

    def __init__(self, capacity: float, rate: float, now: float) -> None:
        self.capacity = capacity
        self.rate = rate
        self.tokens = capacity
        self.stamp = now

    def spend(self, now: float, amount: float = 1.0) -> bool:
        """Take ``amount``; False when the bucket is empty (the limit is exceeded)."""
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < amount:
            return False
        self.tokens -= amount
        return True


@dataclass(frozen=True)
class FloodLimits:
    """Per-connection budgets: (burst, per second) for each kind of frame counted."""

    resets: tuple[float, float] = (100.0, 20.0)
    settings: tuple[float, float] = (20.0, 2.0)
    pings: tuple[float, float] = (50.0, 5.0)
    priority: tuple[float, float] = (200.0, 50.0)
    empty: tuple[float, float] = (100.0, 20.0)  # empty DATA / CONTINUATION without an end


class FrameScanner:
    """Reads frame headers from the client's byte stream (after the preface) and
    raises `Flood` when a limit is passed; the bytes then go to the h2 engine as they
    are (it parses them again: a frame header is 9 bytes, cheap to read twice)."""

    def __init__(self, max_header_block: int, now: float, limits: FloodLimits = FloodLimits()) -> None:
        self.max_header_block = max_header_block
        self._preface = len(PREFACE)
        self._head = bytearray()  # a frame header split between reads
        self._skip = 0  # payload bytes of the current frame still to pass
        self._block = 0  # bytes of the header block in progress (0: none)
        self._budgets = {
            RST_STREAM: ("RST_STREAM (rapid reset)", Budget(*limits.resets, now)),
            SETTINGS: ("SETTINGS", Budget(*limits.settings, now)),
            PING: ("PING", Budget(*limits.pings, now)),
            PRIORITY: ("PRIORITY", Budget(*limits.priority, now)),
        }
        self._empty = Budget(*limits.empty, now)
        #: frames seen, by type (for the log line of a GOAWAY and for tests)
        self.counts: dict[int, int] = {}

    def refused(self, now: float) -> None:
        """A stream refused over the stream limit: it costs what a reset costs."""
        name, budget = self._budgets[RST_STREAM]
        if not budget.spend(now):
            raise Flood("streams over the limit opened faster than allowed")

    def feed(self, data: bytes, now: float) -> None:
        """Scan ``data``. Raises `Flood`."""
        view = memoryview(data)
        if self._preface:
            n = min(self._preface, len(view))
            self._preface -= n
            view = view[n:]
        while view:
            if self._skip:
                n = min(self._skip, len(view))
                self._skip -= n
                view = view[n:]
                continue
            need = 9 - len(self._head)
            self._head += view[:need]
            view = view[need:]
            if len(self._head) < 9:
                return
            head, self._head = bytes(self._head), bytearray()
            length = int.from_bytes(head[:3], "big")
            self._frame(head[3], head[4], length, now)
            self._skip = length

    def _frame(self, kind: int, flags: int, length: int, now: float) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if kind in (HEADERS, CONTINUATION, PUSH_PROMISE):
            if kind != CONTINUATION:
                self._block = 0
            self._block += length
            if self._block > self.max_header_block:
                raise Flood(f"header block over {self.max_header_block} bytes (HEADERS and CONTINUATION)")
            if kind == CONTINUATION and length == 0 and not flags & END_HEADERS and not self._empty.spend(now):
                raise Flood("empty CONTINUATION frames")
            if flags & END_HEADERS:
                self._block = 0
            return
        if kind == DATA and length == 0 and not flags & END_STREAM and not self._empty.spend(now):
            raise Flood("empty DATA frames")
        counted = self._budgets.get(kind)
        if counted is not None and not (kind in (SETTINGS, PING) and flags & ACK):
            name, budget = counted
            if not budget.spend(now):
                raise Flood(f"{name} frames faster than allowed")


# -- requests ------------------------------------------------------------------------------


class Refusal(Exception):
    """A stream that cannot become an HTTP/1.1 request: answered with ``status`` on the
    stream (the session never sees it), or reset with ``reset`` (an HTTP/2 error code)
    when not None."""

    def __init__(self, status: int, reason: str, *, reset: Optional[int] = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.reset = reset


def _text(value: Union[str, bytes]) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


@dataclass
class Translated:
    """A stream's request as HTTP/1.1: the h11 request event, and what it is."""

    request: h11.Request
    method: str  # as the client sent it (CONNECT for an extended CONNECT)
    path: str
    authority: str
    protocol: Optional[str]  # :protocol of an extended CONNECT
    key: Optional[str]  # the Sec-WebSocket-Key we made
    chunked: bool  # the body is sent chunked (no content-length came)


def translate_request(headers: Headers, *, end_stream: bool, connect_protocol: bool) -> Translated:
    """The HTTP/1.1 request for an HTTP/2 request header list (R143).

    ``connect_protocol``: SETTINGS_ENABLE_CONNECT_PROTOCOL was sent (H2WebSockets On).

    Raises:
        Refusal: a ``:protocol`` the connection did not offer (RST_STREAM
            PROTOCOL_ERROR, RFC 8441 3), a request h11 cannot write (400).
    """
    pseudo: dict[str, str] = {}
    fields: list[tuple[str, str]] = []
    cookies: list[str] = []
    for raw_name, raw_value in headers:
        name, value = _text(raw_name), _text(raw_value)
        if name.startswith(":"):
            pseudo[name] = value
        elif name == "cookie":
            cookies.append(value)  # HTTP/2 may split the Cookie field (RFC 9113, 8.2.3)
        elif name != "host":
            fields.append((name, value))
    method = pseudo.get(":method", "")
    authority = pseudo.get(":authority") or next((_text(v) for k, v in headers if _text(k) == "host"), "")
    path = pseudo.get(":path", "")
    protocol = pseudo.get(":protocol")
    if cookies:
        fields.append(("cookie", "; ".join(cookies)))
    key = None
    chunked = False
    if protocol is not None:
        if not connect_protocol:
            raise Refusal(400, ":protocol without SETTINGS_ENABLE_CONNECT_PROTOCOL", reset=0x1)
        out_method, target = "GET", path
        fields = [(n, v) for n, v in fields if n not in ("content-length", "sec-websocket-key")]
        fields += [("upgrade", protocol), ("connection", "Upgrade")]
        if protocol.lower() == "websocket":
            key = base64.b64encode(os.urandom(16)).decode("ascii")
            fields.append(("sec-websocket-key", key))
    elif method == "CONNECT":
        out_method, target = "CONNECT", authority  # plain CONNECT: the session refuses it
    else:
        out_method, target = method, path
        if not end_stream and not any(n == "content-length" for n, _ in fields):
            fields.append(("transfer-encoding", "chunked"))
            chunked = True
    try:
        request = h11.Request(method=out_method, target=target, headers=[("host", authority), *fields])
    except h11.LocalProtocolError as exc:
        raise Refusal(400, f"request not expressible as HTTP/1.1: {exc}") from None
    return Translated(request, method, path, authority, protocol, key, chunked)


# -- answers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Head:
    """Response headers for the client; ``end``: no data follows."""

    headers: list[tuple[str, str]]
    end: bool = False
    tunnel: bool = False  # the stream carries the tunnel's bytes from now on


@dataclass(frozen=True)
class Body:
    data: bytes


@dataclass(frozen=True)
class End:
    """The answer is complete: END_STREAM."""


@dataclass(frozen=True)
class Reset:
    """The answer broke off: RST_STREAM with ``code``."""

    code: int
    reason: str


Output = Union[Head, Body, End, Reset]

INTERNAL_ERROR = 0x2
#: The largest response head read back from the session (its backend's, relayed).
RESPONSE_HEAD_LIMIT = 64 * 1024
CANCEL = 0x8


def _h2_headers(status: int, headers: Iterable[tuple[bytes, bytes]], *, drop: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    out = [(":status", str(status))]
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1").lower()
        if name in _HOP_BY_HOP or name in drop:
            continue
        out.append((name, raw_value.decode("latin-1")))
    return out


def error_headers(status: int, length: int) -> list[tuple[str, str]]:
    return [(":status", str(status)), ("content-type", "text/plain; charset=utf-8"), ("content-length", str(length))]


class StreamBridge:
    """One stream's HTTP/1.1 side: bytes for the session, and its answer for the client."""

    def __init__(self, translated: Translated) -> None:
        self.request = translated
        self.tunnel = False  # a 101 came and was turned into 200
        self.done = False  # the answer is complete (or broke off)
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=RESPONSE_HEAD_LIMIT)
        self._skip_body = False  # a 2xx to a CONNECT that did not switch: body dropped

    @property
    def websocket(self) -> bool:
        return self.request.protocol is not None

    def head_bytes(self, *, end: bool) -> bytes:
        """The request head (and the end of the request when ``end``)."""
        data = self._h11.send(self.request.request) or b""
        if end or self.websocket:
            data += self._h11.send(h11.EndOfMessage()) or b""
        return data

    def body_bytes(self, data: bytes) -> bytes:
        """Request body (or, once a tunnel, its bytes) as they go to the session."""
        if self.tunnel or self.websocket:
            return data
        return self._h11.send(h11.Data(data=data)) or b""

    def end_bytes(self) -> bytes:
        """The end of the request body (the chunked terminator, or nothing)."""
        if self.websocket or self._h11.our_state is not h11.SEND_BODY:
            return b""
        try:
            return self._h11.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            return b""  # fewer bytes than Content-Length: the session answers it

    def answer(self, data: bytes) -> list[Output]:
        """What the session's bytes (b"" at EOF) mean for the client."""
        if self.tunnel:
            if not data:
                return [End()]
            return [Body(data)]
        if self.done:
            return []
        self._h11.receive_data(data)
        out: list[Output] = []
        while not self.done:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                self.done = True
                out.append(Reset(INTERNAL_ERROR, f"answer not readable as HTTP/1.1: {exc}"))
                break
            if event is h11.NEED_DATA:
                if not data:  # EOF before the answer was complete
                    self.done = True
                    out.append(Reset(INTERNAL_ERROR if self._h11.their_state is h11.SEND_RESPONSE else CANCEL, "session ended the stream early"))
                break
            if event is h11.PAUSED:
                if self._h11.their_state is h11.SWITCHED_PROTOCOL:
                    trailing, _ = self._h11.trailing_data
                    self.tunnel = True
                    if trailing:
                        out.append(Body(bytes(trailing)))
                break
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101 and self.websocket:
                    # The session checked the backend's Sec-WebSocket-Accept (R12):
                    # 200 with the backend's protocol and extensions (RFC 8441 5).
                    drop = frozenset({"sec-websocket-accept", "content-length"})
                    out.append(Head(_h2_headers(200, event.headers, drop=drop), tunnel=True))
                continue  # other 1xx (100-continue) are not relayed
            if isinstance(event, h11.Response):
                status = event.status_code
                if self.websocket and 200 <= status < 300:
                    # A plain resource ignored the upgrade: httpd answers 502 (R144).
                    self._skip_body = True
                    body = b"502 backend did not switch protocols\n"
                    out += [Head(error_headers(502, len(body))), Body(body), End()]
                    self.done = True
                    break
                bodyless = self.request.request.method == b"HEAD" or status in (204, 304)
                out.append(Head(_h2_headers(status, event.headers), end=bodyless))
                if bodyless:
                    self.done = True
                continue
            if isinstance(event, h11.Data):
                if not self._skip_body:
                    out.append(Body(bytes(event.data)))
                continue
            if isinstance(event, h11.EndOfMessage):
                self.done = True
                out.append(End())
                break
            if isinstance(event, h11.ConnectionClosed):
                self.done = True
                out.append(Reset(CANCEL, "session closed"))
                break
        return out
