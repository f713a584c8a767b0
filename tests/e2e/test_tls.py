"""TLS on both legs, in both strategies: certificates made by trustme."""

from __future__ import annotations

import hashlib
import logging
import os
import select
import socket
import ssl
import time

import pytest
import trustme

from tests.support.backends import Firehose
from tests.support.clients import read_head, recv_until_eof, status_of, upgrade_request
from tests.support.resources import fd_table, wait_fds_back
from tests.support.waiting import wait_for
from tests.support.wss import wss_connect
from tunnel.echo import EchoServer
from tunnel.io.streams import shutdown_write
from tunnel.io.tls import TLSStream

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def certs(ca, tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    proxy_cert = ca.issue_cert("localhost", "127.0.0.1")
    backend_cert = ca.issue_cert("localhost")  # no IP: wss://127.0.0.1 mismatches
    paths = {}
    for name, cert in (("proxy", proxy_cert), ("backend", backend_cert)):
        cert.private_key_and_cert_chain_pem.write_to_path(str(d / f"{name}.pem"))
        paths[name] = str(d / f"{name}.pem")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    paths["ca"] = str(d / "ca.pem")
    paths["backend_cert"] = backend_cert
    return paths


@pytest.fixture
def tls_backend(ca, certs):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certs["backend_cert"].configure_cert(ctx)
    with EchoServer("127.0.0.1", 0, raw=True, ssl_context=ctx) as server:
        yield server


def client_ctx(ca) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


def _wait(end, write: bool, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("client exchange did not finish in time")
    select.select([end], [end] if write else [], [], min(left, 0.5))


def tls_connect(addr, ctx, deadline: float) -> TLSStream:
    """A client TLS connection (the project's TLSStream: a half-close that loses nothing)."""
    end = TLSStream(socket.create_connection(addr, timeout=5), ctx, server_hostname="localhost")
    while True:
        try:
            end.do_handshake()
            return end
        except ssl.SSLWantReadError:
            _wait(end, False, deadline)
        except ssl.SSLWantWriteError:
            _wait(end, True, deadline)


def duplex(end, first: bytes, payload: bytes, deadline: float) -> bytes:
    """Send ``first`` + ``payload`` then half-close, reading all along; returns what was
    read after the response head, up to EOF (one thread: no SSL object shared)."""
    end.setblocking(False) if not isinstance(end, TLSStream) else None
    out = memoryview(first + payload)
    got = bytearray()
    buf = bytearray(1 << 16)
    shut = eof = False
    while not (eof and shut and not getattr(end, "unsent", 0)):
        progressed = False
        if out:
            try:
                n = end.send(out[: 1 << 16])
                out = out[n:]
                progressed = True
            except WOULD_BLOCK:
                pass
        elif not shut:
            shutdown_write(end)
            shut = progressed = True
        elif getattr(end, "unsent", 0):
            end.flush()
        if not eof:
            try:
                n = end.recv_into(buf)
                if n == 0:
                    eof = True
                else:
                    got += buf[:n]
                progressed = True
            except WOULD_BLOCK:
                pass
        if not progressed:
            _wait(end, bool(out) or bool(getattr(end, "unsent", 0)), deadline)
    return bytes(got)


def config_for(certs, *, client_tls: bool, backend_tls: bool, strategy: str, backend_port: int, extra: str = "") -> str:
    lines = [f"Listen 127.0.0.1:0{' https' if client_tls else ''}"]
    if client_tls:
        lines += ["SSLEngine On", f"SSLCertificateFile {certs['proxy']}"]
    lines += ["SSLProxyEngine On", f"SSLProxyCACertificateFile {certs['ca']}"]
    lines.append(f"ProxyWebsocketAsync {'On' if strategy == 'async' else 'Off'}")
    scheme = "wss://localhost" if backend_tls else "ws://127.0.0.1"
    lines.append(f"ProxyPass / {scheme}:{backend_port}/")
    return "\n".join(lines) + "\n" + extra


@pytest.mark.parametrize("strategy", ["sync", "async"])
@pytest.mark.parametrize("client_tls", [True, False], ids=["wss-client", "ws-client"])
@pytest.mark.parametrize("backend_tls", [True, False], ids=["wss-backend", "ws-backend"])
def test_every_mix_of_legs_echoes_a_mebibyte_and_half_closes(make_proxy, ca, certs, tls_backend, raw_echo, strategy, client_tls, backend_tls):
    backend = tls_backend if backend_tls else raw_echo
    engine = make_proxy(config_for(certs, client_tls=client_tls, backend_tls=backend_tls, strategy=strategy, backend_port=backend.address[1]))
    deadline = time.monotonic() + 40
    if client_tls:
        sock = tls_connect(engine.addresses[0], client_ctx(ca), deadline)
    else:
        sock = socket.create_connection(engine.addresses[0], timeout=10)
    payload = os.urandom(1 << 20)
    # The request and the first frames leave together; the echo flows back while we
    # are still sending, and our half-close must not cut it short.
    data = duplex(sock, upgrade_request("/tls"), payload, deadline)
    head, sep, echoed = data.partition(b"\r\n\r\n")
    assert sep and status_of(head) == 101, head
    assert len(echoed) == len(payload)
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
    sock.close()
    wait_for(lambda: engine.stats["tunnels.closed"] == 1, what="tunnel closed")
    assert engine.live_tunnels() == []


def test_untrusted_backend_certificate_is_502(make_proxy, certs, tls_backend, caplog):
    engine = make_proxy(f"SSLProxyEngine On\nProxyPass / wss://localhost:{tls_backend.address[1]}/\n")
    with socket.create_connection(engine.addresses[0], timeout=5) as sock:
        sock.sendall(upgrade_request())
        head, _ = read_head(sock)
    assert status_of(head) == 502
    assert "certificate" in caplog.text


def test_wrong_host_name_is_502_unless_check_peer_name_off(make_proxy, certs, tls_backend):
    port = tls_backend.address[1]
    engine = make_proxy(f"SSLProxyEngine On\nSSLProxyCACertificateFile {certs['ca']}\nProxyPass / wss://127.0.0.1:{port}/\n")
    with socket.create_connection(engine.addresses[0], timeout=5) as sock:
        sock.sendall(upgrade_request())
        head, _ = read_head(sock)
    assert status_of(head) == 502
    engine = make_proxy(
        f"SSLProxyEngine On\nSSLProxyCACertificateFile {certs['ca']}\nSSLProxyCheckPeerName Off\nProxyPass / wss://127.0.0.1:{port}/\n"
    )
    with socket.create_connection(engine.addresses[0], timeout=5) as sock:
        sock.sendall(upgrade_request())
        head, _ = read_head(sock)
    assert status_of(head) == 101


def test_stuck_tls_client_does_not_block_another(make_proxy, ca, certs, raw_echo):
    engine = make_proxy(config_for(certs, client_tls=True, backend_tls=False, strategy="async", backend_port=raw_echo.address[1]))
    stuck = socket.create_connection(engine.addresses[0], timeout=5)
    stuck.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the start of a ClientHello, then nothing
    raw = socket.create_connection(engine.addresses[0], timeout=5)
    sock = client_ctx(ca).wrap_socket(raw, server_hostname="localhost")
    sock.sendall(upgrade_request())
    head, _ = read_head(sock)
    assert status_of(head) == 101
    sock.sendall(b"ping")
    assert sock.recv(4) == b"ping"
    sock.close()
    stuck.close()


def test_plain_http_to_tls_listener_is_closed_cleanly(make_proxy, certs, raw_echo, caplog):
    caplog.set_level(logging.INFO)
    engine = make_proxy(config_for(certs, client_tls=True, backend_tls=False, strategy="async", backend_port=raw_echo.address[1]))
    with socket.create_connection(engine.addresses[0], timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = recv_until_eof(sock)
    assert data == b""  # no HTTP answer, no TLS alert: just the close (docs/httpd-behaviour.md)
    assert "TLS handshake" in caplog.text
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.fixture
def tls_ws_backend(ca, certs):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certs["backend_cert"].configure_cert(ctx)
    with EchoServer("127.0.0.1", 0, ssl_context=ctx) as server:
        yield server


def test_tls_legs_survive_the_async_delay_hand_over(make_proxy, ca, certs, tls_ws_backend):
    """wss -> tunnel -> wss with ProxyWebsocketAsyncDelay: messages cross the sync -> async
    hand-over (bytes decrypted or buffered inside the TLS streams move with the pump)."""

    text = config_for(certs, client_tls=True, backend_tls=True, strategy="async", backend_port=tls_ws_backend.address[1])
    engine = make_proxy(text + "ProxyWebsocketAsyncDelay 50ms\n")
    port = engine.addresses[0][1]
    rounds_after = 0
    with wss_connect(f"wss://localhost:{port}/", ssl=client_ctx(ca), max_size=None, open_timeout=5) as ws:
        for i in range(400):
            payload = os.urandom(64 * 1024 + i)
            ws.send(payload)
            assert ws.recv(timeout=10) == payload
            if engine.stats["tunnels.handed_over"]:
                rounds_after += 1
                if rounds_after >= 5:
                    break
    assert engine.stats["tunnels.handed_over"] == 1 and rounds_after >= 5
    wait_for(lambda: engine.stats["tunnels.closed"] == 1, what="tunnel closed")
    assert engine.live_tunnels() == []


def test_client_stalling_after_a_whole_client_hello_is_closed_at_the_deadline(make_proxy, ca, certs, raw_echo, caplog):
    """A real ClientHello, then silence (the server's reply is never answered): another
    client is served meanwhile, and the stalled one is closed once RequestReadTimeout's
    header deadline passes (the TLS handshake counts as part of reading the head)."""
    caplog.set_level(logging.INFO)
    engine = make_proxy(
        config_for(certs, client_tls=True, backend_tls=False, strategy="async", backend_port=raw_echo.address[1])
        + "RequestReadTimeout header=1\n"
    )
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    hello = client_ctx(ca).wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        hello.do_handshake()
    stalled = socket.create_connection(engine.addresses[0], timeout=10)
    stalled.sendall(outgoing.read())  # the whole ClientHello, and nothing after it
    started = time.monotonic()
    raw = socket.create_connection(engine.addresses[0], timeout=5)
    sock = client_ctx(ca).wrap_socket(raw, server_hostname="localhost")
    sock.sendall(upgrade_request())
    head, _ = read_head(sock)
    assert status_of(head) == 101
    sock.sendall(b"ping")
    assert sock.recv(4) == b"ping"
    sock.close()
    data = recv_until_eof(stalled)  # the server's flight, then the close at the deadline
    took = time.monotonic() - started
    assert data[:1] == b"\x16"  # a TLS handshake record (ServerHello) came first
    assert 0.5 < took < 5, took
    stalled.close()
    wait_for(lambda: "no complete TLS handshake before the deadline" in caplog.text, what="the log line")
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize("strategy", ["sync", "async"])
def test_tls_client_reset_with_ciphertext_unsent_ends_the_tunnel(make_proxy, ca, certs, strategy, caplog):
    """The client stops reading, the proxy's TLS leg to it holds ciphertext the kernel
    will not take, and the client resets: the tunnel ends with an error at once (no
    hang on the unsent bytes), the backend connection is closed, nothing is left open."""
    caplog.set_level(logging.INFO)
    with Firehose() as hose:
        engine = make_proxy(config_for(certs, client_tls=True, backend_tls=False, strategy=strategy, backend_port=hose.port))
        baseline = fd_table()
        raw = socket.create_connection(engine.addresses[0], timeout=5)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock = client_ctx(ca).wrap_socket(raw, server_hostname="localhost")
        sock.sendall(upgrade_request())
        head, _ = read_head(sock)
        assert status_of(head) == 101
        # Stop reading until the proxy's leg to us is stuck with ciphertext it cannot send.
        wait_for(lambda: any(getattr(p.client, "unsent", 0) or p.b2c.pending for p in engine.live_tunnels()), timeout=10, what="bytes stuck toward the client")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # RST (the SSLSocket owns the fd now)
        wait_for(lambda: engine.stats["tunnels.closed"] == 1, timeout=10, what="the tunnel to end")
        wait_fds_back(baseline, timeout=10)
        assert engine.live_tunnels() == []
        assert " closed: error: " in caplog.text and "Traceback" not in caplog.text, caplog.text
