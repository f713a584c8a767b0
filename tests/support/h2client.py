"""An HTTP/2 client for the tests, on the `h2` library over a real TLS socket (ALPN h2).

Single-threaded: every wait reads the socket and feeds the h2 engine until a condition
holds or a deadline passes. `H2WebSocket` runs wsproto (no handshake) over one
extended-CONNECT stream's DATA frames (RFC 8441). `raw_frames` sends hand-made frames
(hyperframe) for the hostile-input tests, where h2 would refuse to write them.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Optional, TypeVar

import h2.config
import h2.connection
import h2.events
import h2.settings
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, Pong, TextMessage

T = TypeVar("T")


@dataclass
class StreamState:
    status: Optional[int] = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: Optional[int] = None
    received: int = 0  # DATA bytes received in all


class H2Client:
    """One HTTP/2 connection to ``addr`` (TLS, ALPN h2)."""

    def __init__(self, addr: tuple[str, int], ctx: ssl.SSLContext, *, server_hostname: str = "localhost", auto_ack: bool = True, settings: Optional[dict[int, int]] = None) -> None:
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection(addr, timeout=10)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle wait on small frames
        self.sock = ctx.wrap_socket(raw, server_hostname=server_hostname)
        self.alpn = self.sock.selected_alpn_protocol()
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        if settings:
            self.conn.local_settings = h2.settings.Settings(client=True, initial_values=settings)
        self.conn.initiate_connection()
        self.streams: dict[int, StreamState] = {}
        self.auto_ack = auto_ack
        self.goaway: Optional[h2.events.ConnectionTerminated] = None
        self.closed = False
        self.remote_settings: dict[int, int] = {}
        self._flush()

    # -- plumbing ---------------------------------------------------------------------------
    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def pump(self, timeout: float = 0.2) -> bool:
        """Read once (up to ``timeout``) and handle the events. False at EOF."""
        if self.closed:
            return False
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(256 * 1024)
        except (TimeoutError, ssl.SSLWantReadError, BlockingIOError):
            return True  # nothing yet (a zero timeout polls)
        except (ConnectionError, ssl.SSLError, OSError):
            self.closed = True
            return False
        if not data:
            self.closed = True
            return False
        for event in self.conn.receive_data(data):
            self._event(event)
        self._flush()
        return True

    def _event(self, event: h2.events.Event) -> None:
        sid = getattr(event, "stream_id", None)
        state = self.streams.setdefault(sid, StreamState()) if sid else None
        if isinstance(event, h2.events.ResponseReceived) and state is not None:
            state.headers = [(str(k), str(v)) for k, v in event.headers or []]
            state.status = int(dict(state.headers)[":status"])
        elif isinstance(event, h2.events.DataReceived) and state is not None:
            state.data += event.data or b""
            state.received += len(event.data or b"")
            if self.auto_ack and event.flow_controlled_length:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id or 0)
        elif isinstance(event, h2.events.StreamEnded) and state is not None:
            state.ended = True
        elif isinstance(event, h2.events.StreamReset) and state is not None:
            state.reset = int(event.error_code or 0)
            state.ended = True
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            for code, change in event.changed_settings.items():
                self.remote_settings[int(code)] = change.new_value

    def wait(self, cond: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
        deadline = time.monotonic() + timeout
        while True:
            value = cond()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"HTTP/2 client: no {what} within {timeout}s")
            if not self.pump(min(0.2, max(0.01, deadline - time.monotonic()))) and not cond():
                raise ConnectionError(f"HTTP/2 client: connection closed while waiting for {what}")

    def wait_closed(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.pump(0.2):
            if time.monotonic() > deadline:
                raise TimeoutError("HTTP/2 connection not closed in time")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> H2Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests ----------------------------------------------------------------------------
    def request(self, method: str, path: str, *, headers: Iterable[tuple[str, str]] = (), body: Optional[bytes] = None, authority: str = "localhost") -> int:
        sid = self.conn.get_next_available_stream_id()
        self.streams[sid] = StreamState()
        hdrs = [(":method", method), (":scheme", "https"), (":authority", authority), (":path", path), *headers]
        self.conn.send_headers(sid, hdrs, end_stream=body is None)
        self._flush()
        if body is not None:
            self.send_all(sid, body, end=True)
        return sid

    def connect_ws(self, path: str, *, headers: Iterable[tuple[str, str]] = (), authority: str = "localhost", protocol: str = "websocket", version: str = "13") -> int:
        """Send an RFC 8441 extended CONNECT; the stream id (wait for its status)."""
        sid = self.conn.get_next_available_stream_id()
        self.streams[sid] = StreamState()
        hdrs = [
            (":method", "CONNECT"),
            (":protocol", protocol),
            (":scheme", "https"),
            (":authority", authority),
            (":path", path),
            ("sec-websocket-version", version),
            *headers,
        ]
        self.conn.send_headers(sid, hdrs)
        self._flush()
        return sid

    def send_all(self, sid: int, data: bytes, *, end: bool = False, timeout: float = 30.0) -> None:
        """Send ``data`` as the windows allow (reading meanwhile)."""
        view = memoryview(data)
        deadline = time.monotonic() + timeout
        while view:
            window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if window <= 0:
                if time.monotonic() > deadline:
                    raise TimeoutError("flow-control window stayed closed")
                self.pump(0.1)
                continue
            self.conn.send_data(sid, bytes(view[:window]))
            view = view[window:]
            self._flush()
        if end:
            self.conn.end_stream(sid)
            self._flush()

    def response(self, sid: int, timeout: float = 10.0) -> StreamState:
        state = self.streams[sid]
        self.wait(lambda: state.status is not None or state.reset is not None, timeout, f"answer on stream {sid}")
        return state

    def complete(self, sid: int, timeout: float = 10.0) -> StreamState:
        state = self.streams[sid]
        self.wait(lambda: state.ended, timeout, f"end of stream {sid}")
        return state


class H2WebSocket:
    """A WebSocket (wsproto, client side) on one extended-CONNECT stream."""

    def __init__(self, client: H2Client, sid: int) -> None:
        self.client = client
        self.sid = sid
        self.ws = WSConnection(ConnectionType.CLIENT)
        self._consumed = 0
        self.events: list[object] = []

    def _send(self, event: object) -> None:
        self.client.send_all(self.sid, self.ws.send(event))  # type: ignore[arg-type]

    def send(self, message: str | bytes) -> None:
        self._send(TextMessage(data=message) if isinstance(message, str) else BytesMessage(data=message))

    def ping(self, payload: bytes = b"hello") -> None:
        self._send(Ping(payload=payload))

    def close(self, code: int = 1000, reason: str = "") -> None:
        self._send(CloseConnection(code=code, reason=reason))

    def end(self) -> None:
        """END_STREAM: the client's half-close, as a browser does after the closing
        handshake (the HTTP/1.1 client's FIN)."""
        self.client.conn.end_stream(self.sid)
        self.client._flush()

    def _feed(self) -> None:
        state = self.client.streams[self.sid]
        if len(state.data) > self._consumed:
            self.ws.receive_data(bytes(state.data[self._consumed:]))
            self._consumed = len(state.data)
            del state.data[:]
            self._consumed = 0
        for event in self.ws.events():
            if isinstance(event, Ping):
                self.client.send_all(self.sid, self.ws.send(event.response()))
            self.events.append(event)

    def next_event(self, timeout: float = 10.0) -> object:
        def ready() -> bool:
            self._feed()
            return bool(self.events)

        self.client.wait(ready, timeout, f"WebSocket event on stream {self.sid}")
        return self.events.pop(0)

    def recv(self, timeout: float = 30.0) -> str | bytes:
        """One whole message (fragments joined)."""
        parts: list[str | bytes] = []
        deadline = time.monotonic() + timeout
        while True:
            event = self.next_event(max(0.1, deadline - time.monotonic()))
            if isinstance(event, Message):
                parts.append(event.data)
                if event.message_finished:
                    if isinstance(parts[0], str):
                        return "".join(str(p) for p in parts)
                    return b"".join(bytes(p) for p in parts)  # type: ignore[arg-type]
            elif isinstance(event, (Pong, Ping)):
                continue
            else:
                raise AssertionError(f"expected a message, got {event!r}")


def frame_bytes(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    """One raw HTTP/2 frame (RFC 9113, 4.1)."""
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + (sid & 0x7FFFFFFF).to_bytes(4, "big") + payload


class RawH2:
    """A TLS connection (ALPN h2) that writes hand-made frames and reads the server's
    frames one by one, with nothing checked on our side: for hostile input."""

    def __init__(self, addr: tuple[str, int], ctx: ssl.SSLContext, *, server_hostname: str = "localhost") -> None:
        ctx.set_alpn_protocols(["h2"])
        self.sock = ctx.wrap_socket(socket.create_connection(addr, timeout=10), server_hostname=server_hostname)
        self.buffer = bytearray()
        self.eof = False
        self.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame_bytes(4, 0, 0))  # preface, empty SETTINGS

    def send(self, data: bytes) -> bool:
        """Send; False when the server has closed the connection already."""
        try:
            self.sock.sendall(data)
            return True
        except (ConnectionError, ssl.SSLError, OSError):
            return False

    def frames(self, timeout: float = 10.0) -> Iterable[tuple[int, int, int, bytes]]:
        """(type, flags, stream, payload) as they come, until EOF or ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            while len(self.buffer) >= 9:
                length = int.from_bytes(self.buffer[:3], "big")
                if len(self.buffer) < 9 + length:
                    break
                head, payload = bytes(self.buffer[:9]), bytes(self.buffer[9 : 9 + length])
                del self.buffer[: 9 + length]
                yield head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, payload
            if self.eof or time.monotonic() > deadline:
                return
            self.sock.settimeout(max(0.05, min(0.5, deadline - time.monotonic())))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except (ConnectionError, ssl.SSLError, OSError):
                data = b""
            if not data:
                self.eof = True
            self.buffer += data

    def goaway(self, timeout: float = 10.0) -> Optional[int]:
        """The error code of the server's GOAWAY (None if none came before EOF)."""
        for kind, _, _, payload in self.frames(timeout):
            if kind == 7:
                return int.from_bytes(payload[4:8], "big")
        return None

    def reset_of(self, sid: int, timeout: float = 10.0) -> Optional[int]:
        """The error code of the server's RST_STREAM on ``sid`` (None if none came)."""
        for kind, _, stream, payload in self.frames(timeout):
            if kind == 3 and stream == sid:
                return int.from_bytes(payload[:4], "big")
            if kind == 7:
                return None
        return None

    def close(self) -> None:
        self.sock.close()
