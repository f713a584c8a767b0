"""Backends for the tests: loopback TCP servers on ports the OS picks, closed by the test.

`Server` listens on 127.0.0.1:0, accepts in a thread of its own and hands each
connection to `Server.handle` on a thread of its own. ``close()`` (or the end of its
``with`` block) stops accepting, shuts every connection down (a handler blocked in a
recv or a send wakes up), joins every thread, and fails if one is still running or if
a handler raised anything but OSError: a backend never outlives its test, and its
mistakes are not lost in a thread.

The behaviours, each a `Server`:

* `silent`: accepts and never reads nor answers;
* `closing`: closes each connection before any answer (after reading the request, or
  at once);
* `Answering`: reads a request head, sends fixed bytes, then holds or closes;
* `Recorder`: answers an upgrade with a 101 for the token asked (a plain request with
  a 200), records every head;
* `HTTPBackend`: an HTTP/1.1 server (h11) with echo, held, bodiless and refusing paths;
* `ChatUpgrader`: a 101 to a non-WebSocket upgrade that carries a body, then echoes;
* `HalfCloser`, `Flood`, `Firehose`: a 101 and then scripted tunnel traffic.
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Optional

import h11
from wsproto.utilities import generate_accept_token

from tests.support.clients import ACCEPT, content_length, read_head, recv_exactly
from tunnel.protocol.request import FrontEnd

Handler = Callable[[socket.socket], None]


def read_upgrade(conn: socket.socket) -> Optional[tuple[str, bytearray]]:
    """Read a WebSocket upgrade request's head from ``conn``: the Sec-WebSocket-Accept
    for its key, and the bytes that came after the head; None when the peer leaves first."""
    front = FrontEnd()
    head = None
    while head is None:
        data = conn.recv(65536)
        if not data:
            return None
        front.feed(data)
        head = front.next_head()
    key = head.get("sec-websocket-key") or ""
    return generate_accept_token(key.encode()).decode(), bytearray(front.take_buffer())


def switching_protocols(token: str = "websocket", accept: Optional[str] = ACCEPT) -> bytes:
    """A backend's 101 head for ``token`` (with ``Sec-WebSocket-Accept`` when given)."""
    extra = f"Sec-WebSocket-Accept: {accept}\r\n" if accept else ""
    return f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: {token}\r\nConnection: Upgrade\r\n{extra}\r\n".encode()


class Server:
    """A threaded loopback TCP server: ``handle(conn)`` runs once per connection.

    Args:
        handler: what to do with each connection (``None``: nothing, the connection is
            only held open until the server closes).
        backlog: the listen backlog.
        timeout: each accepted connection's socket timeout (``None``: blocking).
    """

    def __init__(self, handler: Optional[Handler] = None, *, backlog: int = 128, timeout: Optional[float] = 10.0) -> None:
        self._handler = handler
        self._timeout = timeout
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=backlog)
        self.sock.setblocking(False)
        self.address: tuple[str, int] = self.sock.getsockname()[:2]
        self.port = self.address[1]
        self.conns: list[socket.socket] = []  # every connection accepted, in order
        self.closing = threading.Event()
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._wake_r, self._wake_w = socket.socketpair()
        # Made here, not in the accept thread: a test that counts fds after building a
        # backend must not see the thread's selector appear later (under load it did).
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.sock, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"{self!r} accept", daemon=True)
        self._acceptor.start()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} 127.0.0.1:{self.port}>"

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def accepted(self) -> int:
        """Connections accepted so far."""
        with self._lock:
            return len(self.conns)

    def handle(self, conn: socket.socket) -> None:
        """One connection's life (runs on a thread of its own); OSError ends it quietly."""
        if self._handler is not None:
            self._handler(conn)

    def _accept_loop(self) -> None:
        with self._selector as sel:
            while True:
                for key, _ in sel.select():
                    if key.fileobj is self._wake_r:
                        return
                    try:
                        conn, _ = self.sock.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    conn.settimeout(self._timeout)
                    with self._lock:
                        if self.closing.is_set():
                            conn.close()
                            return
                        self.conns.append(conn)
                        thread = threading.Thread(target=self._serve, args=(conn,), name=f"{self!r} conn", daemon=True)
                        self._threads.append(thread)
                    thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.handle(conn)
        except OSError:
            pass  # the peer (the proxy) went away or the server is closing
        except BaseException as exc:  # noqa: BLE001 - reported by close()
            self.errors.append(exc)

    def close(self) -> None:
        """Stop accepting, shut every connection down, join every thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.closing.set()
        self._wake_w.send(b"x")
        self._acceptor.join(5)
        self.sock.close()
        with self._lock:
            conns, threads = list(self.conns), list(self._threads)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)  # wakes a handler blocked on it
            except OSError:
                pass  # closed by its handler already, or never connected
        deadline = time.monotonic() + 5
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for conn in conns:
            conn.close()
        self._wake_r.close()
        self._wake_w.close()
        stuck = [t.name for t in [self._acceptor, *threads] if t.is_alive()]
        if stuck:
            raise AssertionError(f"{self!r}: threads still running after close: {stuck}")
        if self.errors:
            raise AssertionError(f"{self!r}: a connection handler failed: {self.errors[0]!r}") from self.errors[0]


def silent() -> Server:
    """Accepts and never reads nor answers (each connection held until close)."""
    return Server()


def closing(*, read_first: bool = True) -> Server:
    """Closes each connection without an answer: after reading its request (the
    default) or at once, before a byte is read."""

    def close_it(conn: socket.socket) -> None:
        if read_first:
            conn.recv(65536)
        conn.close()

    return Server(close_it)


class Answering(Server):
    """Reads a request head, sends ``answer`` as it is, then holds the connection (or
    closes it with ``close=True``). ``received`` has every byte read, all connections."""

    def __init__(self, answer: bytes, *, close: bool = False) -> None:
        self.answer = answer
        self.close_after = close
        self.received = bytearray()
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        self.received += data  # before the answer: complete once the client has it
        conn.sendall(self.answer)
        if self.close_after:
            conn.close()


class Recorder(Server):
    """Answers each connection once: a 101 for the Upgrade token it was asked for (with
    the Accept for websocket) followed by its name, held until the client leaves; else
    a 200 with its name. Records every request head in ``heads``."""

    def __init__(self, name: str) -> None:
        self.name = name.encode()
        self.heads: list[bytes] = []
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        with conn:
            head, _ = read_head(conn)
            if not head:
                return
            self.heads.append(head)
            fields = {}
            for line in head.split(b"\r\n")[1:]:
                name, sep, value = line.partition(b":")
                if sep:
                    fields[name.strip().lower()] = value.strip()
            token = fields.get(b"upgrade")
            if token:
                accept = ACCEPT if token.lower() == b"websocket" else None
                conn.sendall(switching_protocols(token.decode("latin-1"), accept) + self.name)
                conn.recv(1)  # hold the tunnel until the client leaves
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(self.name), self.name))


class HTTPBackend(Server):
    """A thread-per-connection HTTP/1.1 server (h11) that records what it receives.

    Paths: /echo (body back; chunked reply when the request says ``X-Reply: chunked``),
    /hold (a first chunk, the rest once ``release`` is set), /403, /204, /304, anything
    else: 200 "ok". Every request head is kept in ``seen``; ``body_progress`` counts the
    body bytes of the current request received so far.
    """

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.body_progress = 0
        self.release = threading.Event()
        super().__init__()

    @property
    def connections(self) -> int:
        return self.accepted

    def close(self) -> None:
        self.release.set()  # a /hold answer finishes
        super().close()

    def handle(self, conn: socket.socket) -> None:
        h = h11.Connection(h11.SERVER)
        with conn:
            try:
                self._serve_requests(conn, h)
            except h11.ProtocolError:
                return  # the proxy broke off mid-message; nothing to answer

    def _serve_requests(self, conn: socket.socket, h: h11.Connection) -> None:
        while True:
            event = h.next_event()
            if event is h11.NEED_DATA:
                data = conn.recv(1 << 16)
                h.receive_data(data)
                if not data and h.their_state is not h11.DONE:
                    return
                continue
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return
            assert isinstance(event, h11.Request), event
            headers = {k.decode().lower(): v.decode() for k, v in event.headers}
            target = event.target.decode()
            self.seen.append((event.method.decode(), target, headers))
            if headers.get("expect", "").lower() == "100-continue":
                conn.sendall(h.send(h11.InformationalResponse(status_code=100, headers=[])))
            body = bytearray()
            while True:
                ev = h.next_event()
                if ev is h11.NEED_DATA:
                    h.receive_data(conn.recv(1 << 16))
                elif isinstance(ev, h11.Data):
                    body += ev.data
                    self.body_progress = len(body)
                else:
                    break
            self._answer(conn, h, event.method.decode(), target, headers, bytes(body))
            if h.our_state is h11.MUST_CLOSE or h.their_state is h11.MUST_CLOSE:
                return
            h.start_next_cycle()

    def _answer(self, conn: socket.socket, h: h11.Connection, method: str, target: str, headers: dict[str, str], body: bytes) -> None:
        if target.startswith("/echo"):
            if headers.get("x-reply") == "chunked":
                conn.sendall(h.send(h11.Response(status_code=200, headers=[("Transfer-Encoding", "chunked")])))
                for i in range(0, len(body), 100_000):
                    conn.sendall(h.send(h11.Data(data=body[i : i + 100_000])))
            else:
                conn.sendall(h.send(h11.Response(status_code=200, headers=[("Content-Length", str(len(body)))])))
                conn.sendall(h.send(h11.Data(data=body)))
        elif target.startswith("/hold"):
            conn.sendall(h.send(h11.Response(status_code=200, headers=[("Transfer-Encoding", "chunked")])))
            conn.sendall(h.send(h11.Data(data=b"first;")))
            self.release.wait(10)
            conn.sendall(h.send(h11.Data(data=b"rest")))
        elif target.startswith("/403"):
            text = b"forbidden here\n"
            conn.sendall(h.send(h11.Response(status_code=403, headers=[("Content-Length", str(len(text)))])))
            conn.sendall(h.send(h11.Data(data=text)))
        elif target.startswith("/204"):
            conn.sendall(h.send(h11.Response(status_code=204, headers=[])))
        elif target.startswith("/304"):
            conn.sendall(h.send(h11.Response(status_code=304, headers=[("ETag", '"v1"')])))
        else:
            conn.sendall(h.send(h11.Response(status_code=200, headers=[("Content-Length", "2")])))
            if method != "HEAD":
                conn.sendall(h.send(h11.Data(data=b"ok")))
        conn.sendall(h.send(h11.EndOfMessage()))


class ChatUpgrader(Server):
    """A backend for a non-WebSocket token: reads a head and its Content-Length body,
    answers 101 with ``Upgrade: chat``, then echoes raw bytes; records the head and the
    body."""

    def __init__(self) -> None:
        self.head = b""
        self.body = b""
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        with conn:
            head, data = read_head(conn, timeout=10)
            self.head = head
            length = content_length(head) or 0
            data = recv_exactly(conn, length, initial=data) if len(data) < length else data
            self.body, early = data[:length], data[length:]
            conn.sendall(switching_protocols("chat", accept=None) + early)
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                conn.sendall(chunk)


class HalfCloser(Server):
    """Answers the upgrade, sends ``payload``, shuts its write side, then reads the
    client until EOF into ``got`` and sets ``done``."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.got = bytearray()
        self.done = threading.Event()
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        with conn:
            read_head(conn, timeout=10)
            conn.sendall(switching_protocols())
            conn.sendall(self.payload)
            conn.shutdown(socket.SHUT_WR)
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                self.got += chunk
        self.done.set()


class Flood(Server):
    """Answers the upgrade, then sends until ``stop`` is set, counting in ``sent`` (one
    entry per connection, in accept order) what the kernel took; then shuts its write
    side and waits for the client to be done."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.sent: list[int] = []
        super().__init__()

    def close(self) -> None:
        self.stop.set()
        super().close()

    def handle(self, conn: socket.socket) -> None:
        with self._lock:
            idx = self.conns.index(conn)
            while len(self.sent) <= idx:
                self.sent.append(0)
        with conn:
            conn.settimeout(5)
            read_head(conn, timeout=5)
            conn.sendall(switching_protocols())
            chunk = b"f" * 65536
            conn.settimeout(0.1)  # to look at ``stop`` between sends
            while not self.stop.is_set():
                try:
                    self.sent[idx] += conn.send(chunk)
                except TimeoutError:
                    continue
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(10)
            conn.recv(1)  # until the client is done


class Firehose(Server):
    """A WebSocket backend that answers the 101 (its Accept computed from the request's
    key), then writes as fast as it can until the connection breaks, the server closes
    or 20 s pass (so a proxy's leg to a client that does not read piles up bytes)."""

    def handle(self, conn: socket.socket) -> None:
        with conn:
            upgrade = read_upgrade(conn)
            if upgrade is None:
                return
            conn.sendall(switching_protocols(accept=upgrade[0]))
            chunk = os.urandom(1 << 16)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not self.closing.is_set():
                conn.sendall(chunk)
