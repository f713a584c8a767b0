"""TLS on both legs, in both strategies: certificates made by trustme."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import ssl
import threading

import pytest
import trustme

from tunnel.echo import EchoServer

from .helpers import read_head, recv_until_eof, status_of, upgrade_request, wait_for

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


def tls_half_close(sock: ssl.SSLSocket) -> None:
    """close_notify then FIN, keeping the read side (TLS 1.3 half-close)."""
    try:
        sock._sslobj.shutdown()  # type: ignore[union-attr]
    except ssl.SSLError:
        pass
    socket.socket.shutdown(sock, socket.SHUT_WR)


def recv_all_tls(sock, initial=b"", timeout=15):
    sock.settimeout(timeout)
    buf = bytearray(initial)
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except ssl.SSLZeroReturnError:
            break
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


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
    raw = socket.create_connection(engine.addresses[0], timeout=10)
    sock = client_ctx(ca).wrap_socket(raw, server_hostname="localhost") if client_tls else raw
    sock.sendall(upgrade_request("/tls"))
    head, rest = read_head(sock)
    assert status_of(head) == 101, head
    payload = os.urandom(1 << 20)
    sender = threading.Thread(target=lambda: (sock.sendall(payload), tls_half_close(sock) if client_tls else sock.shutdown(socket.SHUT_WR)))
    sender.start()
    echoed = recv_all_tls(sock, rest) if client_tls else recv_until_eof(sock, initial=rest)
    sender.join(10)
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
    assert b"HTTP/1.1 200" not in data
    assert "TLS handshake" in caplog.text
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.levelno >= logging.ERROR]
