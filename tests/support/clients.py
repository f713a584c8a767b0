"""Raw client bytes and reads: upgrade requests, response heads, statuses, the test key."""

from __future__ import annotations

import base64
import socket

from wsproto.utilities import generate_accept_token

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
    """Read an HTTP head (up to the blank line); returns (head, bytes after it)."""
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


def content_length(head: bytes) -> int | None:
    """The Content-Length a head announces, or None."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return None


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
