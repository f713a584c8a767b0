"""Shared test helpers: waiting on conditions, counting fds and threads, raw clients."""

from __future__ import annotations

import base64
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Optional

from wsproto.utilities import generate_accept_token


def wait_for(cond: Callable[[], object], timeout: float = 5.0, interval: float = 0.005, what: str = "condition") -> object:
    """Poll ``cond`` until it is truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def thread_count() -> int:
    return threading.active_count()


KEY = base64.b64encode(b"0123456789abcdef").decode()
ACCEPT = generate_accept_token(KEY.encode()).decode()


def upgrade_request(path: str = "/", host: str = "example.test", *, key: str = KEY, extra: str = "", version: str = "13") -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        f"Sec-WebSocket-Version: {version}",
    ]
    if extra:
        lines.extend(extra.strip("\r\n").split("\r\n"))
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_head(sock: socket.socket, timeout: float = 5.0) -> tuple[bytes, bytes]:
    """Read an HTTP response head; returns (head, bytes after it)."""
    sock.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def status_of(head: bytes) -> int:
    parts = head.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 else 0


def recv_exactly(sock: socket.socket, n: int, timeout: float = 10.0, initial: bytes = b"") -> bytes:
    sock.settimeout(timeout)
    buf = bytearray(initial)
    while len(buf) < n:
        chunk = sock.recv(min(1 << 20, n - len(buf)))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def recv_until_eof(sock: socket.socket, timeout: float = 10.0, initial: bytes = b"") -> bytes:
    sock.settimeout(timeout)
    buf = bytearray(initial)
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return bytes(buf)
        buf += chunk


def raw_upgrade(addr: tuple, path: str = "/", **kw) -> tuple[socket.socket, bytes, bytes]:
    """Connect, send an upgrade request, read the response head. Returns (sock, head, rest)."""
    sock = socket.create_connection(addr[:2], timeout=5)
    sock.sendall(upgrade_request(path, **kw))
    head, rest = read_head(sock)
    return sock, head, rest


def http_get(addr: tuple, path: str = "/", *, headers: str = "", method: str = "GET", body: bytes = b"") -> tuple[int, bytes, bytes]:
    """One HTTP/1.1 request with Connection: close. Returns (status, head, body)."""
    with socket.create_connection(addr[:2], timeout=5) as sock:
        req = f"{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{headers}"
        if body:
            req += f"Content-Length: {len(body)}\r\n"
        sock.sendall(req.encode() + b"\r\n" + body)
        data = recv_until_eof(sock)
    head, _, rest = data.partition(b"\r\n\r\n")
    return status_of(head), head, rest


def free_port_refused() -> int:
    """A loopback port nobody listens on (bound then closed)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


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
