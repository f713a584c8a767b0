"""An HTTP/2 client connection on the loop: each stream served by the session code
through a socket pair (R143).

After the TLS handshake of a listener whose `Protocols` names h2 and whose ALPN chose
it, `H2Server` owns the decrypted connection. The h2 engine (sans-IO) reads and writes
its frames; each request stream gets a ``socket.socketpair()``: our end carries the
stream translated to HTTP/1.1 (`tunnel.protocol.h2bridge`), the other end is handed to
``serve_client`` as if a client had connected, so routing, rewrite, ``Require``,
timeouts, balancing, the tunnel strategy and the access log are the HTTP/1.1 ones.

Flow control is the backpressure (R145): a stream's DATA is acknowledged (and its
window reopened) only as the pair takes the bytes, so a backend that stops reading
stops the client after one window; the pair's socket buffers are small. The other way,
the pair is read only while the stream holds less than ``H2StreamMaxMemSize`` bytes for
the client and the connection's output is not backed up.

Hostile input (R146) ends with GOAWAY (floods, oversized header blocks, protocol
errors: the h2 engine's code) or RST_STREAM (a stream the connection cannot take), with
a log line each; what a stream holds is bounded by its window and the memory size.
"""

from __future__ import annotations

import functools
import logging
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Optional

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes

from ..config.model import Config, Listener, Scope
from ..io.loop import Loop, Timer
from ..io.streams import EVENT_READ, EVENT_WRITE, WOULD_BLOCK, Endpoint
from ..io.tls import TLSStream
from ..protocol.h2bridge import (
    Body,
    End,
    Flood,
    FrameScanner,
    Head,
    Refusal,
    Reset,
    StreamBridge,
    error_headers,
    translate_request,
)
from .failover import peer_ip
from .records import H2Start, Inner

__all__ = ["H2Server", "SpawnStream"]

log = logging.getLogger("tunnel.server")

#: What the connection calls to serve one stream's pair end (the engine spawns a
#: ``serve_client`` task on it).
SpawnStream = Callable[[socket.socket, Inner], None]

#: The pair's socket buffers: small, so that the proxy holds little beyond the windows.
PAIR_BUFFER = 256 * 1024
#: Bytes read from the client per recv, and at most per wake-up (fairness).
READ_CHUNK = 64 * 1024
READ_PER_WAKE = 512 * 1024
#: Output to the client above which the connection stops reading the client and the
#: pairs (a client that does not read cannot make us buffer more).
OUT_HIGH = 512 * 1024
#: The encoded header block the connection accepts (HEADERS + CONTINUATION); also
#: announced as SETTINGS_MAX_HEADER_LIST_SIZE (decoded size).
MAX_HEADER_BLOCK = 64 * 1024
#: How long a GOAWAY'd connection may take to flush before it is closed.
LINGER = 2.0


class _Stream:
    __slots__ = ("sid", "bridge", "pair", "to_pair", "acks", "client_ended", "out", "out_end", "end_sent", "pair_eof", "shut", "reset")

    def __init__(self, sid: int, bridge: StreamBridge, pair: socket.socket) -> None:
        self.sid = sid
        self.bridge = bridge
        self.pair: Optional[socket.socket] = pair
        self.to_pair = bytearray()  # bytes for the session, not written yet
        self.acks: deque[list[int]] = deque()  # [wire bytes left, flow-controlled bytes to acknowledge]
        self.client_ended = False
        self.out = bytearray()  # answer data for the client, waiting for its window
        self.out_end = False  # END_STREAM is due once ``out`` is sent
        self.end_sent = False
        self.pair_eof = False
        self.shut = False  # our pair end's write side is shut
        self.reset = False


class H2Server:
    """Serve one HTTP/2 connection on ``loop`` until it ends; then ``on_close(self)``."""

    def __init__(self, loop: Loop, config: Config, start: H2Start, spawn: SpawnStream, on_close: Callable[[H2Server], None]) -> None:
        self.loop = loop
        self.config = config
        self.client: Endpoint = start.client
        self.peer = start.peer
        self.listener: Listener = start.listener
        self.inner = Inner("HTTP/2.0", start.connection_peer)
        self.spawn = spawn
        self.on_close = on_close
        #: the host the connection reached (SNI, else the address's first): its H2* settings
        self.scope: Scope = config.vhost_for(start.listener, start.sni_name)[0]
        scope = self.scope
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None, validate_inbound_headers=True)
        )
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: scope.h2_max_session_streams,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: scope.h2_window_size,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_BLOCK,
                h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL: int(scope.h2_websockets),
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        self.h2.decoder.max_header_list_size = MAX_HEADER_BLOCK
        self.scanner = FrameScanner(MAX_HEADER_BLOCK, time.monotonic())
        self.streams: dict[int, _Stream] = {}
        self.outbuf = bytearray()
        self.closed = False
        self.going_away = False  # we sent GOAWAY: nothing more is read
        self.refusing = False  # GOAWAY either way: no new streams
        self._fd = self.client.fileno()
        self._mask = 0
        self._timer: Optional[Timer] = None
        self.last_active = time.monotonic()
        self.stalled_since: Optional[float] = None

    # -- life ----------------------------------------------------------------------------
    def start(self) -> None:
        self.h2.initiate_connection()
        # The limit is announced in that SETTINGS frame and enforced here, per stream
        # (RST_STREAM REFUSED_STREAM, R146); the engine's own check would end the whole
        # connection. Changing its copy afterwards sends nothing.
        self.h2.local_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = 2**31 - 1
        self.h2.local_settings.acknowledge()
        # The connection window is each stream's window times the stream limit: a
        # stalled stream holds its own window, never the others' (R145).
        scope = self.scope
        extra = min(2**31 - 1, scope.h2_window_size * scope.h2_max_session_streams) - 65535
        if extra > 0:
            self.h2.increment_flow_control_window(extra)
        self.loop.register(self._fd, EVENT_READ, self._on_client)
        self._mask = EVENT_READ
        self._arm_timer()
        self._flush()
        # Bytes the TLS engine decrypted with the handshake are read now.
        if isinstance(self.client, TLSStream) and self.client.pending():
            self.loop.call_soon(self._on_client, EVENT_READ)

    def close(self, reason: str, code: Optional[ErrorCodes] = None) -> None:
        """End the connection: GOAWAY ``code`` when given, then close every stream's
        pair (their sessions see the end) and the client connection."""
        if self.closed:
            return
        if code is not None and not self.going_away:
            self.going_away = self.refusing = True
            try:
                self.h2.close_connection(code)
            except h2.exceptions.ProtocolError:
                pass
            self._flush()
        self.closed = True
        log.info("HTTP/2 connection from %s closed: %s", peer_ip(self.peer), reason)
        if self._timer is not None:
            self._timer.cancel()
        for stream in list(self.streams.values()):
            self._close_pair(stream)
        self.streams.clear()
        self.loop.unregister(self._fd)
        try:
            self.client.close()
        except OSError:
            pass
        self.on_close(self)

    def _goaway(self, code: ErrorCodes, why: str) -> None:
        """A hostile or broken peer: GOAWAY with ``code``, a log line, then close once
        the frame is out (or after a short linger)."""
        log.warning("HTTP/2 connection from %s: GOAWAY %s: %s", peer_ip(self.peer), code.name, why)
        if not self.going_away:
            self.going_away = self.refusing = True
            try:
                self.h2.close_connection(code)
            except h2.exceptions.ProtocolError:
                pass
        for stream in list(self.streams.values()):
            self._close_pair(stream)
        self.streams.clear()
        self._flush()
        if not self.outbuf and not (isinstance(self.client, TLSStream) and self.client.unsent):
            self.close(f"GOAWAY {code.name}")
        else:
            self.loop.call_later(LINGER, self.close, f"GOAWAY {code.name} (not flushed)")

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(min(self.scope.limits.header_timeout, self.scope.timeout) / 2 or 1.0, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.closed:
            return
        now = time.monotonic()
        if self.stalled_since is not None and now - self.stalled_since > self.scope.timeout:
            self.close("client did not read for Timeout seconds")
            return
        if not self.streams and now - self.last_active > self.scope.limits.header_timeout:
            self.close("idle", ErrorCodes.NO_ERROR)
            return
        self._arm_timer()

    # -- the client connection -----------------------------------------------------------
    def _on_client(self, mask: int) -> None:
        if self.closed:
            return
        if mask & EVENT_WRITE:
            self._flush()
        if mask & EVENT_READ and not self.going_away:
            self._read_client()
        if not self.closed:
            self._flush()

    def _read_client(self) -> None:
        total = 0
        while len(self.outbuf) < OUT_HIGH:
            if total >= READ_PER_WAKE:  # fairness: the rest on the next iteration
                if isinstance(self.client, TLSStream) and self.client.pending():
                    self.loop.call_soon(self._on_client, EVENT_READ)
                return
            try:
                data = self.client.recv(READ_CHUNK)
            except WOULD_BLOCK:
                if isinstance(self.client, TLSStream) and self.client.pending():
                    continue
                return
            except (OSError, ssl.SSLError) as exc:
                self.close(f"read failed: {exc}")
                return
            if not data:
                self.close("client closed the connection")
                return
            total += len(data)
            now = time.monotonic()
            self.last_active = now
            try:
                self.scanner.feed(data, now)
            except Flood as exc:
                self._goaway(ErrorCodes.ENHANCE_YOUR_CALM, str(exc))
                return
            try:
                events = self.h2.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                # The engine queued its GOAWAY (PROTOCOL_ERROR, COMPRESSION_ERROR,
                # FRAME_SIZE_ERROR, ENHANCE_YOUR_CALM for a header list too large...).
                code = getattr(exc, "error_code", ErrorCodes.PROTOCOL_ERROR)
                self.going_away = self.refusing = True  # (its GOAWAY is queued)
                self._goaway(ErrorCodes(code) if isinstance(code, int) else ErrorCodes.PROTOCOL_ERROR, str(exc) or type(exc).__name__)
                return
            for event in events:
                self._event(event)
                if self.closed:
                    return

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._request(event)
        elif isinstance(event, h2.events.DataReceived):
            self._data(event)
        elif isinstance(event, h2.events.StreamEnded):
            self._client_end(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.pop(event.stream_id or 0, None)
            if stream is not None:
                log.info("HTTP/2 %s stream %d reset by the client (%s)", peer_ip(self.peer), stream.sid, _code_name(event.error_code))
                stream.reset = True
                self._close_pair(stream)
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            sid = getattr(event, "stream_id", 0)
            targets = [self.streams[sid]] if sid and sid in self.streams else list(self.streams.values())
            for stream in targets:
                self._send_out(stream)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.refusing = True
            if not self.streams:
                self.close(f"client sent GOAWAY {_code_name(event.error_code)}")

    # -- streams: the client's side ------------------------------------------------------
    def _request(self, event: h2.events.RequestReceived) -> None:
        sid = event.stream_id or 0
        ended = event.stream_ended is not None
        headers = event.headers or []
        if self.refusing:
            self._reset(sid, ErrorCodes.REFUSED_STREAM, "connection is going away")
            return
        if len(self.streams) >= self.scope.h2_max_session_streams:
            self._reset(sid, ErrorCodes.REFUSED_STREAM, f"more than H2MaxSessionStreams {self.scope.h2_max_session_streams} streams")
            try:
                self.scanner.refused(time.monotonic())  # refusals cost like resets
            except Flood as exc:
                self._goaway(ErrorCodes.ENHANCE_YOUR_CALM, str(exc))
            return
        try:
            translated = translate_request(headers, end_stream=ended, connect_protocol=self.scope.h2_websockets)
        except Refusal as refusal:
            if refusal.reset is not None:
                self._reset(sid, ErrorCodes(refusal.reset), refusal.reason)
            else:
                self._answer(sid, refusal.status, refusal.reason)
            return
        if translated.protocol is not None:
            scope = self.config.vhost_for(self.listener, translated.authority)[0]
            if not scope.h2_websockets:  # the request's host has H2WebSockets Off (R142)
                self._answer(sid, 501, "H2WebSockets is off for this host")
                return
        ours, theirs = socket.socketpair()
        for end in (ours, theirs):
            end.setblocking(False)
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, PAIR_BUFFER)
            end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, PAIR_BUFFER)
        stream = _Stream(sid, StreamBridge(translated), ours)
        stream.client_ended = ended
        stream.to_pair += stream.bridge.head_bytes(end=ended)
        self.streams[sid] = stream
        self.loop.register(ours.fileno(), EVENT_READ | EVENT_WRITE, functools.partial(self._on_pair, stream))
        try:
            self.spawn(theirs, self.inner)
        except BaseException:
            theirs.close()
            raise

    def _data(self, event: h2.events.DataReceived) -> None:
        sid = event.stream_id or 0
        data = event.data or b""
        flow = event.flow_controlled_length or 0
        stream = self.streams.get(sid)
        if stream is None or stream.pair is None:
            if flow:
                self._ack(sid, flow)  # a stream we no longer serve: keep the connection window open
            return
        wire = stream.bridge.body_bytes(data)
        if not wire:
            self._ack(sid, flow)
            return
        stream.to_pair += wire
        stream.acks.append([len(wire), flow])
        self._write_pair(stream)
        if event.stream_ended is not None:
            self._client_end(sid)

    def _client_end(self, sid: int) -> None:
        stream = self.streams.get(sid)
        if stream is None or stream.client_ended:
            return
        stream.client_ended = True
        stream.to_pair += stream.bridge.end_bytes()
        self._write_pair(stream)

    def _ack(self, sid: int, n: int) -> None:
        try:
            self.h2.acknowledge_received_data(n, sid)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            try:
                self.h2.acknowledge_received_data(n, 0)  # the connection's share still counts
            except h2.exceptions.ProtocolError:
                pass

    def _reset(self, sid: int, code: ErrorCodes, why: str) -> None:
        log.info("HTTP/2 %s stream %d: RST_STREAM %s: %s", peer_ip(self.peer), sid, code.name, why)
        try:
            self.h2.reset_stream(sid, code)
        except h2.exceptions.ProtocolError:
            pass

    def _answer(self, sid: int, status: int, reason: str) -> None:
        """An answer of the connection's own, for a stream the session never sees."""
        log.info("HTTP/2 %s stream %d: %d %s", peer_ip(self.peer), sid, status, reason)
        body = f"{status} {reason}\n".encode()
        try:
            self.h2.send_headers(sid, error_headers(status, len(body)))
            self.h2.send_data(sid, body, end_stream=True)
        except h2.exceptions.ProtocolError:
            self._reset(sid, ErrorCodes.INTERNAL_ERROR, "answer could not be sent")

    # -- streams: the session's side -----------------------------------------------------
    def _on_pair(self, stream: _Stream, mask: int) -> None:
        if self.closed or stream.pair is None:
            return
        if mask & EVENT_WRITE:
            self._write_pair(stream)
        if mask & EVENT_READ and stream.pair is not None:
            self._read_pair(stream)
        self._flush()

    def _write_pair(self, stream: _Stream) -> None:
        pair = stream.pair
        if pair is None:
            return
        while stream.to_pair:
            try:
                sent = pair.send(stream.to_pair)
            except WOULD_BLOCK:
                break
            except OSError:
                # The session is gone (it answered and closed, or its tunnel ended).
                stream.to_pair.clear()
                if not stream.end_sent:
                    self._stream_reset(stream, ErrorCodes.CANCEL, "session closed its end")
                return
            del stream.to_pair[:sent]
            acked = 0
            while sent and stream.acks:
                entry = stream.acks[0]
                take = min(sent, entry[0])
                entry[0] -= take
                sent -= take
                if entry[0] == 0:
                    acked += entry[1]
                    stream.acks.popleft()
            if acked:
                self._ack(stream.sid, acked)
        if not stream.to_pair and stream.client_ended and stream.bridge.tunnel and not stream.shut:
            stream.shut = True  # END_STREAM is the client's half-close (R145)
            try:
                pair.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        self._want(stream)
        self._maybe_forget(stream)  # the session may have finished first

    def _read_pair(self, stream: _Stream) -> None:
        pair = stream.pair
        while pair is not None and not stream.pair_eof and self._room(stream):
            try:
                data = pair.recv(self.scope.h2_stream_max_mem_size - len(stream.out))
            except WOULD_BLOCK:
                break
            except OSError:
                data = b""
            if not data:
                stream.pair_eof = True
            for out in stream.bridge.answer(data):
                if isinstance(out, Head):
                    try:
                        self.h2.send_headers(stream.sid, out.headers, end_stream=out.end)
                    except h2.exceptions.ProtocolError:
                        self._stream_reset(stream, ErrorCodes.INTERNAL_ERROR, "answer headers refused")
                        return
                    stream.end_sent = out.end
                    if out.tunnel:
                        self._write_pair(stream)  # a client END_STREAM that came early
                elif isinstance(out, Body):
                    stream.out += out.data
                elif isinstance(out, End):
                    stream.out_end = True
                elif isinstance(out, Reset):
                    self._stream_reset(stream, ErrorCodes(out.code), out.reason)
                    return
            self._send_out(stream)
            if stream.bridge.done and not stream.bridge.tunnel and not stream.shut:
                stream.shut = True  # the answer is complete: the session may end
                try:
                    pair.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            pair = stream.pair
        self._want(stream)
        self._maybe_forget(stream)

    def _room(self, stream: _Stream) -> bool:
        return len(stream.out) < self.scope.h2_stream_max_mem_size and len(self.outbuf) < OUT_HIGH

    def _send_out(self, stream: _Stream) -> None:
        """Send what the stream holds for the client, as its windows allow."""
        if stream.reset or stream.end_sent:
            return
        sid = stream.sid
        h2c = self.h2
        while stream.out:
            try:
                window = min(h2c.local_flow_control_window(sid), h2c.max_outbound_frame_size)
            except h2.exceptions.ProtocolError:
                return
            if window <= 0:
                break
            chunk = bytes(stream.out[:window])
            del stream.out[:window]
            h2c.send_data(sid, chunk, end_stream=stream.out_end and not stream.out)
            if stream.out_end and not stream.out:
                stream.end_sent = True
        if stream.out_end and not stream.out and not stream.end_sent:
            h2c.send_data(sid, b"", end_stream=True)
            stream.end_sent = True
        if stream.end_sent and not stream.client_ended and not stream.bridge.tunnel:
            # The answer is complete before the request: the client may stop sending.
            self._reset(sid, ErrorCodes.NO_ERROR, "answer complete before the request body")
            stream.reset = True
        if stream.pair is not None and not stream.pair_eof and self._room(stream):
            self._want(stream)
        self._maybe_forget(stream)

    def _stream_reset(self, stream: _Stream, code: ErrorCodes, why: str) -> None:
        self._reset(stream.sid, code, why)
        stream.reset = True
        self._close_pair(stream)
        self.streams.pop(stream.sid, None)

    def _want(self, stream: _Stream) -> None:
        pair = stream.pair
        if pair is None:
            return
        mask = (EVENT_WRITE if stream.to_pair else 0) | (EVENT_READ if not stream.pair_eof and self._room(stream) else 0)
        self.loop.modify(pair.fileno(), mask)

    def _maybe_forget(self, stream: _Stream) -> None:
        """Drop a stream both sides have finished with."""
        if stream.reset or (stream.end_sent and stream.client_ended and stream.pair_eof and not stream.to_pair):
            self._close_pair(stream)
            self.streams.pop(stream.sid, None)
            if self.refusing and not self.streams:
                self.close("last stream done after GOAWAY")

    def _close_pair(self, stream: _Stream) -> None:
        pair, stream.pair = stream.pair, None
        if pair is not None:
            self.loop.unregister(pair.fileno())
            pair.close()

    # -- output ----------------------------------------------------------------------------
    def _flush(self) -> None:
        if self.closed:
            return
        data = self.h2.data_to_send()
        if data:
            self.outbuf += data
        client = self.client
        try:
            while self.outbuf:
                try:
                    sent = client.send(self.outbuf)
                except WOULD_BLOCK:
                    break
                del self.outbuf[:sent]
            pending = bool(self.outbuf)
            if isinstance(client, TLSStream):
                pending = not client.flush() or pending
        except (OSError, ssl.SSLError) as exc:
            self.close(f"write failed: {exc}")
            return
        if pending:
            if self.stalled_since is None:
                self.stalled_since = time.monotonic()
        else:
            self.stalled_since = None
        mask = (EVENT_WRITE if pending else 0) | (EVENT_READ if len(self.outbuf) < OUT_HIGH and not self.going_away else 0)
        if self.refusing and not pending and not self.streams:
            self.close("GOAWAY sent" if self.going_away else "client sent GOAWAY; streams done")
            return
        if mask != self._mask:
            self._mask = mask
            self.loop.modify(self._fd, mask)
            if mask & EVENT_READ and not self.going_away:
                for stream in list(self.streams.values()):
                    self._want(stream)  # pairs paused by a full output may read again


def _code_name(code: Optional[int]) -> str:
    try:
        return ErrorCodes(code or 0).name
    except ValueError:
        return str(code)
