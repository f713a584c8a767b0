"""TLSStream on real TCP sockets: a TLS half-close while the other direction still flows.

The case CPython's SSLSocket gets wrong (its unwrap reads the socket for the peer's
close_notify and OpenSSL 3 kills the session on the application data it finds there).
"""

from __future__ import annotations

import hashlib
import os
import select
import socket
import ssl
import time

import pytest
import trustme

from tunnel.io.tls import TLSStream

pytestmark = pytest.mark.timeout(30)

WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


@pytest.fixture(scope="module")
def contexts():
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return client, server


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    return a, b


def handshake(*ends: TLSStream, deadline: float) -> None:
    done = [False] * len(ends)
    while not all(done):
        assert time.monotonic() < deadline, "handshake did not finish"
        for i, end in enumerate(ends):
            if done[i]:
                continue
            try:
                end.do_handshake()
                done[i] = True
            except WOULD_BLOCK:
                pass
        select.select(list(ends), [], [], 0.05)


class Side:
    """One end's script: send ``out`` then half-close; read everything until EOF."""

    def __init__(self, end: TLSStream, out: bytes, shut_after: bool = True) -> None:
        self.end = end
        self.out = memoryview(out)
        self.got = bytearray()
        self.shut = not shut_after
        self.eof = False
        self.buf = bytearray(1 << 16)

    def step(self) -> bool:
        moved = False
        end = self.end
        if self.out:
            try:
                n = end.send(self.out[: 1 << 16])
                self.out = self.out[n:]
                moved = True
            except WOULD_BLOCK:
                pass
        elif not self.shut:
            end.shutdown_write()
            self.shut = moved = True
        elif end.unsent:
            end.flush()
        if not self.eof:
            try:
                n = end.recv_into(self.buf)
                if n == 0:
                    self.eof = True
                else:
                    self.got += self.buf[:n]
                moved = True
            except WOULD_BLOCK:
                pass
        return moved

    @property
    def finished(self) -> bool:
        return self.eof and self.shut and not self.out and not self.end.unsent


def run(*sides: Side, deadline: float) -> None:
    while not all(s.finished for s in sides):
        assert time.monotonic() < deadline, f"exchange stuck: {[(len(s.got), s.eof, s.shut) for s in sides]}"
        moved = [s.step() for s in sides]  # every side steps: no short-circuit
        if not any(moved):
            select.select([s.end for s in sides], [s.end for s in sides if s.out or s.end.unsent], [], 0.05)


def test_half_close_while_the_other_direction_streams(contexts):
    """The client half-closes first while the server is still sending 4 MiB: nothing lost."""
    client_ctx, server_ctx = contexts
    a, b = tcp_pair()
    client = TLSStream(a, client_ctx, server_hostname="localhost")
    server = TLSStream(b, server_ctx, server_side=True)
    deadline = time.monotonic() + 20
    handshake(client, server, deadline=deadline)
    up, down = os.urandom(100_000), os.urandom(4 << 20)
    c, s = Side(client, up), Side(server, down)
    # The client finishes sending (and sends close_notify) long before the server does.
    run(c, s, deadline=deadline)
    assert hashlib.sha256(s.got).digest() == hashlib.sha256(up).digest()
    assert len(c.got) == len(down) and hashlib.sha256(c.got).digest() == hashlib.sha256(down).digest()
    client.close()
    server.close()


def test_close_notify_with_records_already_buffered(contexts):
    """Records the server sent are already in the client's socket when it half-closes."""
    client_ctx, server_ctx = contexts
    a, b = tcp_pair()
    client = TLSStream(a, client_ctx, server_hostname="localhost")
    server = TLSStream(b, server_ctx, server_side=True)
    deadline = time.monotonic() + 20
    handshake(client, server, deadline=deadline)
    first = os.urandom(30_000)
    view = memoryview(first)
    while view:
        try:
            view = view[server.send(view) :]
        except WOULD_BLOCK:
            select.select([], [server], [], 0.05)
    while not server.flush():
        select.select([], [server], [], 0.05)
    # Let the ciphertext land in the client's kernel buffer (and part of it in the BIO).
    buf = bytearray(100)
    got = bytearray()
    while not got:  # a short read: most of the records stay buffered
        assert time.monotonic() < deadline
        select.select([client], [], [], 0.05)
        try:
            got += buf[: client.recv_into(buf)]
        except WOULD_BLOCK:
            pass
    # Let the rest of the ciphertext land in the client's kernel buffer.
    while len(got) + client.pending() < len(first):
        assert time.monotonic() < deadline
        select.select([client], [], [], 0.05)
        try:
            got += buf[: client.recv_into(buf, 1)]
        except WOULD_BLOCK:
            pass
    client.shutdown_write()  # records still buffered: must be kept, not discarded
    rest = Side(client, b"", shut_after=False)
    rest.got = got
    tail = os.urandom(10_000)
    srv = Side(server, tail)
    run(rest, srv, deadline=deadline)
    assert bytes(rest.got) == first + tail
    assert srv.eof and srv.got == b""  # the server saw the client's close_notify as EOF
    client.close()
    server.close()


def test_failed_handshake_raises_ssl_error(contexts):
    _client_ctx, server_ctx = contexts
    a, b = tcp_pair()
    server = TLSStream(b, server_ctx, server_side=True)
    a.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    deadline = time.monotonic() + 5
    with pytest.raises(ssl.SSLError):
        while True:
            assert time.monotonic() < deadline
            try:
                server.do_handshake()
                break
            except WOULD_BLOCK:
                select.select([server], [], [], 0.05)
    a.close()
    server.close()


def test_a_drained_flow_asks_for_a_read_of_its_tls_source_and_the_other_read_keeps_it(contexts):
    """The pump served one event for the backend end with READ and WRITE: the write
    drained the client->backend bytes, whose TLS source (the client) still holds bytes
    no poll will report, and then the read of the backend found nothing. The request
    to read the client again (``more``) must survive that read: once it was reset there,
    and a wss client's upload could stall for good."""
    from tunnel.tunnels.pump import Pump

    client_ctx, server_ctx = contexts
    user_raw, proxy_raw = tcp_pair()
    for s in (user_raw, proxy_raw):
        s.setblocking(False)
    user = TLSStream(user_raw, client_ctx, server_hostname="localhost")
    proxy_client = TLSStream(proxy_raw, server_ctx, server_side=True)
    handshake(user, proxy_client, deadline=time.monotonic() + 10)
    backend, app = tcp_pair()
    backend.setblocking(False)
    app.setblocking(False)
    try:  # fill the backend connection (the app is not reading yet)
        while True:
            backend.send(b"f" * 65536)
    except BlockingIOError:
        pass
    pump = Pump(proxy_client, backend, high_water=1024)
    scratch = memoryview(bytearray(4096))
    try:
        view = memoryview(os.urandom(64 * 1024))  # fits in the user's socket buffers
        deadline = time.monotonic() + 10
        while view or user.unsent:
            assert time.monotonic() < deadline, "the upload did not go out"
            try:
                if view:
                    view = view[user.send(view):]
            except WOULD_BLOCK:
                pass
            if user.unsent and not user.flush():
                select.select([], [user_raw], [], 0.05)
        # The pump reads the client until bytes wait for the full backend socket (paused).
        while pump.c2b.pending is None or len(pump.c2b.pending) < 1024:
            assert time.monotonic() < deadline, "the backend socket never filled"
            select.select([proxy_raw], [], [], 0.05)
            pump.on_event(True, 1, scratch)
        assert proxy_client.pending() > 0 or select.select([proxy_raw], [], [], 0)[0]

        def drain_app() -> int:
            n = 0
            try:
                while True:
                    chunk = app.recv(1 << 20)
                    if not chunk:
                        return n
                    n += len(chunk)
            except BlockingIOError:
                return n

        # The backend reads until nothing is in flight: its socket is empty again.
        quiet = 0
        while quiet < 3:
            assert time.monotonic() < deadline
            quiet = quiet + 1 if drain_app() == 0 else 0
            select.select([app], [], [], 0.02)
        if not proxy_client.pending():
            pytest.skip("the TLS engine holds nothing back on this platform")
        pump.more = False
        pump.on_event(False, 1 | 2, scratch)  # WRITE drains c2b; READ finds nothing
        assert pump.c2b.pending is None, "the flush did not drain (socket buffers too small?)"
        assert pump.more, "the request to read the TLS client again was lost"
    finally:
        for s in (user_raw, proxy_raw, backend, app):
            s.close()
