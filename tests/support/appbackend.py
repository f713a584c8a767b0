"""An application-like backend for the published-configuration tests: one loopback port
that answers plain HTTP and WebSocket upgrades alike, as the applications behind those
configurations do (the same host:port serves the page and its socket), and records every
request head it receives.

* a WebSocket upgrade (``Upgrade: websocket`` with a key) gets a real RFC 6455 handshake
  (wsproto) and every text or binary message is echoed back;
* any other request gets ``200`` with the body ``NAME METHOD TARGET``; a target whose
  path ends in ``/__redirect`` gets a ``302`` whose ``Location`` points back at this
  backend (``http://127.0.0.1:PORT/landing``), so that ``ProxyPassReverse`` has something
  to rewrite.

With ``tls=`` (an ``ssl.SSLContext`` for the server side) it speaks TLS, for the
configurations whose backend is ``https://``.
"""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass, field
from typing import Optional

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Request, TextMessage

from tests.support.backends import Server
from tests.support.clients import read_head


@dataclass(frozen=True)
class Seen:
    """One request head as the backend received it."""

    backend: str
    method: str
    target: str
    headers: dict[str, str] = field(default_factory=dict)


def parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """(method, target, headers) of a request head; repeated fields joined with ", "."""
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    return method, target, headers


class AppBackend(Server):
    """See the module docstring. ``seen`` lists every request head, all connections, in
    the order they arrived."""

    def __init__(self, name: str, *, tls: Optional[ssl.SSLContext] = None) -> None:
        self.name = name
        self.tls = tls
        self.seen: list[Seen] = []
        self._seen_lock = threading.Lock()
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        if self.tls is not None:
            conn = self.tls.wrap_socket(conn, server_side=True)
        with conn:
            head, rest = read_head(conn, timeout=10)
            if not head:
                return
            method, target, headers = parse_head(head)
            with self._seen_lock:
                self.seen.append(Seen(self.name, method, target, headers))
            if "websocket" in headers.get("upgrade", "").lower() and "sec-websocket-key" in headers:
                self._echo_websocket(conn, head + b"\r\n\r\n" + rest)
                return
            if target.split("?", 1)[0].endswith("/__redirect"):
                location = f"http://127.0.0.1:{self.port}/landing"
                conn.sendall(
                    f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
                )
                return
            body = f"{self.name} {method} {target}".encode()
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                % (len(body), body)
            )

    def _echo_websocket(self, conn: socket.socket, data: bytes) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        ws.receive_data(data)
        while True:
            out = b""
            for event in ws.events():
                if isinstance(event, Request):
                    out += ws.send(AcceptConnection())
                elif isinstance(event, (TextMessage, BytesMessage)):
                    out += ws.send(type(event)(data=event.data))
                elif isinstance(event, CloseConnection):
                    conn.sendall(out + ws.send(event.response()))
                    return
            if out:
                conn.sendall(out)
            chunk = conn.recv(65536)
            if not chunk:
                return
            ws.receive_data(chunk)
