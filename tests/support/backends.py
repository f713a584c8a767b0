"""Backends for the tests: loopback TCP servers on ports the OS picks."""

from __future__ import annotations

import socket
import threading
from typing import Optional

from tests.support.clients import ACCEPT


class Silent:
    """A backend that accepts and never answers (or closes at once with close=True)."""

    def __init__(self, *, close: bool = False, answer: Optional[bytes] = None) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.close_at_once = close
        self.answer = answer
        self.conns: list[socket.socket] = []
        self.received = bytearray()
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.05)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            if self.answer is not None:
                conn.settimeout(2)
                try:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    self.received += data
                    conn.sendall(self.answer)
                except OSError:
                    pass
            if self.close_at_once:
                conn.close()
            else:
                self.conns.append(conn)

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        self.sock.close()
        for c in self.conns:
            c.close()


class Recorder:
    """Answers each connection once: a 101 for the Upgrade token it was asked for (with
    the Accept for websocket), else 200 with its name; records every request head."""

    def __init__(self, name: str) -> None:
        self.name = name.encode()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.heads: list[bytes] = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head = data.split(b"\r\n\r\n")[0]
                self.heads.append(head)
                fields = {l.split(b":")[0].strip().lower(): l.split(b":", 1)[1].strip() for l in head.split(b"\r\n")[1:] if b":" in l}
                token = fields.get(b"upgrade")
                if token:
                    extra = b"Sec-WebSocket-Accept: %s\r\n" % ACCEPT.encode() if token.lower() == b"websocket" else b""
                    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: %s\r\nConnection: Upgrade\r\n%s\r\n" % (token, extra) + self.name)
                    conn.recv(1)  # hold the tunnel until the client leaves
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(self.name), self.name))
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()


def closing_backend() -> socket.socket:
    """A listener whose connections are closed as soon as their request arrives (no head);
    closing the listener ends its accept thread."""
    lsock = socket.create_server(("127.0.0.1", 0))

    def run():
        while True:
            try:
                conn, _ = lsock.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.close()

    threading.Thread(target=run, daemon=True).start()
    return lsock
