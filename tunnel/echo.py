"""The built-in echo backend (demo and tests): WebSocket echo on wsproto, plain HTTP on h11.

A WebSocket upgrade on any path is accepted and text/binary messages are echoed, pings
answered, the close handshake completed. A plain GET gets ``page`` (the demo page) or a
short text. ``raw=True``: after the 101 the server echoes raw bytes and, on EOF, shuts its
write side once everything is echoed (a half-close echo), for byte-exact tunnel tests.
One thread per connection keeps it simple; it is a test and demo backend.
"""

from __future__ import annotations

import argparse
import socket
import ssl
import threading
from typing import Optional

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)
from wsproto.utilities import generate_accept_token

from .io.streams import InetAddress, shutdown_write

__all__ = ["EchoServer", "main"]

RECV = 256 * 1024


class EchoServer:
    """A WebSocket/HTTP echo server on its own threads. ``start()``, ``address``, ``stop()``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        page: Optional[bytes] = None,
        ssl_context: Optional[ssl.SSLContext] = None,
        raw: bool = False,
    ) -> None:
        self.host, self.port = host, port
        self.page = page
        self.ssl_context = ssl_context
        self.raw = raw
        self.address: InetAddress = (host, port)
        self._sock: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None
        self._conns: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._stopping = False
        self.accepted = 0

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def start(self) -> EchoServer:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(1024)
        self._sock = sock
        self.address = sock.getsockname()
        self._thread = threading.Thread(target=self._accept_loop, name="echo-accept", daemon=True)
        self._thread.start()
        return self

    def __enter__(self) -> EchoServer:
        return self.start() if self._sock is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            conns, threads = list(self._conns), list(self._threads)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in threads:
            t.join(5)

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stopping:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            with self._lock:
                self._conns.add(conn)
                self._threads.add(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        sock = conn
        try:
            if self.ssl_context is not None:
                sock = self.ssl_context.wrap_socket(conn, server_side=True)
            self._http(sock)
        except (OSError, h11.ProtocolError, ValueError):
            pass
        finally:
            try:
                sock.close()
            except OSError:
                pass
            with self._lock:
                self._conns.discard(conn)
                self._threads.discard(threading.current_thread())

    def _http(self, sock: socket.socket) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = sock.recv(RECV)
                conn.receive_data(data)
                if not data and conn.their_state is h11.IDLE:
                    return
                continue
            if isinstance(event, h11.Request):
                headers = {k.lower(): v for k, v in event.headers}
                if headers.get(b"upgrade", b"").lower() == b"websocket":
                    return self._websocket(sock, event, conn)
                self._answer(sock, conn, event)
                if conn.our_state is h11.MUST_CLOSE:
                    return  # "Connection: close" (or HTTP/1.0): the close ends the exchange
            elif isinstance(event, h11.ConnectionClosed) or conn.our_state is h11.MUST_CLOSE:
                return
            elif conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()

    def _answer(self, sock: socket.socket, conn: h11.Connection, req: h11.Request) -> None:
        body = self.page if self.page is not None else b"tunnel echo backend\n"
        ctype = "text/html; charset=utf-8" if self.page is not None else "text/plain; charset=utf-8"
        while True:  # drop the request body
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                conn.receive_data(sock.recv(RECV))
                continue
            if isinstance(ev, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        out = conn.send(h11.Response(status_code=200, headers=[("Content-Type", ctype), ("Content-Length", str(len(body)))]))
        if req.method != b"HEAD":
            out += conn.send(h11.Data(data=body))
        out += conn.send(h11.EndOfMessage())
        sock.sendall(out)
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()

    def _websocket(self, sock: socket.socket, req: h11.Request, conn: h11.Connection) -> None:
        leftover, _ = conn.trailing_data
        headers = {k.lower(): v for k, v in req.headers}
        if self.raw:
            key = headers.get(b"sec-websocket-key", b"")
            sock.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + generate_accept_token(key) + b"\r\n\r\n"
            )
            if leftover:
                sock.sendall(leftover)
            while True:
                try:
                    data = sock.recv(RECV)
                except ssl.SSLZeroReturnError:
                    data = b""
                if not data:
                    shutdown_write(sock)
                    return
                sock.sendall(data)
        ws = WSConnection(ConnectionType.SERVER)
        # Replay the request head to wsproto (it parses the handshake itself).
        head = b"%s %s HTTP/1.1\r\n" % (req.method, req.target)
        head += b"".join(b"%s: %s\r\n" % (k, v) for k, v in req.headers.raw_items()) + b"\r\n"
        ws.receive_data(head + bytes(leftover))
        text: list[str] = []
        binary = bytearray()
        while True:
            for event in ws.events():
                if isinstance(event, Request):
                    sub = event.subprotocols[0] if event.subprotocols else None
                    sock.sendall(ws.send(AcceptConnection(subprotocol=sub)))
                elif isinstance(event, TextMessage):
                    text.append(event.data)
                    if event.message_finished:
                        sock.sendall(ws.send(TextMessage(data="".join(text))))
                        text.clear()
                elif isinstance(event, BytesMessage):
                    binary += event.data
                    if event.message_finished:
                        sock.sendall(ws.send(BytesMessage(data=bytes(binary))))
                        binary.clear()
                elif isinstance(event, Ping):
                    sock.sendall(ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    try:
                        sock.sendall(ws.send(event.response()))
                    except Exception:  # noqa: BLE001 - already closing
                        pass
                    return
            data = sock.recv(RECV)
            if not data:
                return
            ws.receive_data(data)


def main() -> None:
    parser = argparse.ArgumentParser(description="tunnel's built-in WebSocket echo backend")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--raw", action="store_true", help="echo raw bytes after the 101")
    args = parser.parse_args()
    server = EchoServer(args.host, args.port, raw=args.raw).start()
    print(f"echo backend on {server.address[0]}:{server.address[1]}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
