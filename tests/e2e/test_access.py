"""Access control on a live proxy: refused requests get 403 before any backend is
contacted (the recording backend sees nothing), granted ones tunnel as before."""

from __future__ import annotations

import socket
import ssl

import pytest
import trustme
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from tests.support.backends import Recorder
from tests.support.clients import read_head, recv_exactly, status_of, upgrade_request
from tests.support.strategies import STRATEGY_CONFIGS
from tests.support.waiting import wait_for
from tests.support.wss import wss_connect

pytestmark = pytest.mark.timeout(30)


def ws_url(engine, path: str = "/echo") -> str:
    host, port = engine.addresses[0]
    return f"ws://{host}:{port}{path}"


DENIED_BODY = b"403 access denied by the server configuration\n"


def status_on(sock: socket.socket, request: bytes) -> tuple[int, bytes]:
    """Send ``request``, read the answer's head; returns the status and the head."""
    sock.sendall(request)
    head, rest = read_head(sock)
    status = status_of(head)
    if status == 403:  # read the whole body: the connection may serve another request
        assert recv_exactly(sock, len(DENIED_BODY), initial=rest) == DENIED_BODY
    return status, head


def switched_to(sock: socket.socket, request: bytes, name: bytes) -> bool:
    """The request got a 101 and the Recorder backend's name after it."""
    sock.sendall(request)
    head, rest = read_head(sock)
    return status_of(head) == 101 and recv_exactly(sock, len(name), initial=rest) == name


ORIGIN_RULE = "Require expr \"%{HTTP:Origin} == 'http://app.example'\"\n"


def test_origin_allow_list_with_a_websockets_client(make_proxy, echo, strategy):
    engine = make_proxy(STRATEGY_CONFIGS[strategy] + ORIGIN_RULE + f"ProxyPass / ws://127.0.0.1:{echo.address[1]}/\n")
    with ws_connect(ws_url(engine), origin="http://app.example", open_timeout=5) as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
    for origin in ("http://evil.example", None):  # another Origin, or none at all
        with pytest.raises(InvalidStatus) as info:
            ws_connect(ws_url(engine), origin=origin, open_timeout=5).close()
        assert info.value.response.status_code == 403
    wait_for(lambda: engine.stats["tunnels.closed"] == 1, what="the granted tunnel closed")
    expected = "sync" if strategy == "sync" else "async"
    assert engine.stats[f"tunnels.{expected}"] == 1


def test_refused_origin_never_reaches_the_backend_and_the_connection_stays(make_proxy, strategy, tmp_path):
    log = tmp_path / "access.log"
    with Recorder("BACKEND") as backend:
        engine = make_proxy(
            STRATEGY_CONFIGS[strategy]
            + ORIGIN_RULE
            + f'CustomLog {log} "%>s %r"\n'
            + f"ProxyPass / ws://127.0.0.1:{backend.port}/\n"
        )
        with socket.create_connection(engine.addresses[0], timeout=5) as sock:
            status, answer = status_on(sock, upgrade_request("/chat", extra="Origin: http://evil.example\r\n"))
            assert status == 403, answer
            assert b"Connection: close" not in answer
            # 403 keeps a keep-alive connection (httpd): the next request is served
            assert switched_to(sock, upgrade_request("/chat", extra="Origin: http://app.example\r\n"), b"BACKEND")
        wait_for(lambda: len(backend.heads) == 1, what="the granted request at the backend")
        assert backend.accepted == 1 and b"app.example" in backend.heads[0]
        wait_for(lambda: len(log.read_text().splitlines()) >= 1 if log.exists() else False, what="log line")
        assert log.read_text().splitlines()[0] == "403 GET /chat HTTP/1.1"


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        ("Require ip 127.0.0.1\n", 101),
        ("Require ip 127.0.0.0/8 ::1\n", 101),
        ("Require ip 10.0.0.0/8\n", 403),
        ("Require local\n", 101),
        ("<RequireAll>\nRequire all granted\nRequire not ip 127.0.0.1\n</RequireAll>\n", 403),
        ("<RequireAll>\nRequire all granted\nRequire not ip 10.1\n</RequireAll>\n", 101),
        ("Require all denied\n", 403),
    ],
)
def test_ip_rules_on_the_peer_address(make_proxy, rules, expected):
    with Recorder("BACKEND") as backend:
        engine = make_proxy(rules + f"ProxyPass / ws://127.0.0.1:{backend.port}/\n")
        with socket.create_connection(engine.addresses[0], timeout=5) as sock:
            status, _ = status_on(sock, upgrade_request("/x"))
        assert status == expected
        if expected == 403:
            assert backend.accepted == 0 and backend.heads == []
        else:
            wait_for(lambda: backend.accepted == 1, what="the backend connection")


def test_location_admin_denied_only(make_proxy, echo):
    with Recorder("BACKEND") as backend:
        engine = make_proxy(
            f"ProxyPass / ws://127.0.0.1:{backend.port}/\n<Location /admin>\n    Require all denied\n</Location>\n"
        )
        with socket.create_connection(engine.addresses[0], timeout=5) as sock:
            assert status_on(sock, upgrade_request("/admin"))[0] == 403
            assert status_on(sock, upgrade_request("/admin/deep/x"))[0] == 403
            # plain HTTP is refused the same way, and the connection still serves
            assert status_on(sock, b"GET /admin/page HTTP/1.1\r\nHost: t\r\n\r\n")[0] == 403
        assert backend.accepted == 0
        with socket.create_connection(engine.addresses[0], timeout=5) as sock:
            assert switched_to(sock, upgrade_request("/administrator"), b"BACKEND")  # not under /admin
        wait_for(lambda: backend.accepted == 1, what="the /administrator tunnel")


def test_proxy_block_for_one_backend_url(make_proxy, strategy):
    with Recorder("DENIED") as denied, Recorder("OPEN") as open_:
        engine = make_proxy(
            STRATEGY_CONFIGS[strategy]
            + f"ProxyPass /a/ ws://127.0.0.1:{denied.port}/\n"
            + f"ProxyPass /b/ ws://127.0.0.1:{open_.port}/\n"
            + f'<Proxy "ws://127.0.0.1:{denied.port}/*">\n    Require all denied\n</Proxy>\n'
        )
        with socket.create_connection(engine.addresses[0], timeout=5) as sock:
            assert status_on(sock, upgrade_request("/a/room"))[0] == 403
        with socket.create_connection(engine.addresses[0], timeout=5) as sock:
            assert switched_to(sock, upgrade_request("/b/room"), b"OPEN")
        assert denied.accepted == 0
        wait_for(lambda: open_.accepted == 1, what="the open backend's connection")


def test_no_rules_is_unchanged(make_proxy, echo):
    engine = make_proxy(f"ProxyPass / ws://127.0.0.1:{echo.address[1]}/\n")
    with ws_connect(ws_url(engine), origin="http://anything.example", open_timeout=5) as ws:
        ws.send("x")
        assert ws.recv(timeout=5) == "x"


def test_refusal_comes_before_upgrade_checks_and_the_thread_pool(make_proxy):
    """A refused request is a 403 even when its WebSocket handshake is invalid (the
    upgrade is validated later) and while the one sync thread is busy (a thread is
    reserved later): neither a 400 nor a 503."""
    with Recorder("BACKEND") as backend:
        engine = make_proxy(
            "ProxyWebsocketAsync Off\nMaxTunnelThreads 1\n"
            f"ProxyPass / ws://127.0.0.1:{backend.port}/\n"
            "<Location /admin>\n    Require all denied\n</Location>\n"
        )
        with socket.create_connection(engine.addresses[0], timeout=5) as busy:
            assert switched_to(busy, upgrade_request("/chat"), b"BACKEND")  # holds the only thread
            with socket.create_connection(engine.addresses[0], timeout=5) as sock:
                assert status_on(sock, upgrade_request("/admin"))[0] == 403
                assert status_on(sock, upgrade_request("/admin", key="not-base64", version="7"))[0] == 403
            with socket.create_connection(engine.addresses[0], timeout=5) as sock:
                assert status_on(sock, upgrade_request("/other"))[0] == 503  # the pool is full
        assert backend.accepted == 1


def test_vhost_rules_by_host_and_inherited_server_rules(make_proxy):
    with Recorder("BACKEND") as backend:
        engine = make_proxy(
            f"ProxyPass / ws://127.0.0.1:{backend.port}/\n"
            "Require expr \"%{QUERY_STRING} != 'blocked'\"\n"
            "<VirtualHost *:*>\n    ServerName open.test\n</VirtualHost>\n"
            "<VirtualHost *:*>\n    ServerName closed.test\n    Require all denied\n</VirtualHost>\n"
        )
        with socket.create_connection(engine.addresses[0], timeout=5) as sock:
            assert status_on(sock, upgrade_request("/x", host="closed.test"))[0] == 403
            assert status_on(sock, upgrade_request("/x?blocked", host="open.test"))[0] == 403  # the server's rule
            assert switched_to(sock, upgrade_request("/x?fine", host="open.test"), b"BACKEND")
        wait_for(lambda: backend.accepted == 1, what="the open.test tunnel")


def test_proxymatch_block_on_a_live_proxy(make_proxy):
    with Recorder("BACKEND") as backend:
        engine = make_proxy(
            f"ProxyPass / ws://127.0.0.1:{backend.port}/\n"
            '<ProxyMatch "^ws://127\\.0\\.0\\.1:[0-9]+/admin">\n    Require all denied\n</ProxyMatch>\n'
        )
        with socket.create_connection(engine.addresses[0], timeout=5) as sock:
            assert status_on(sock, upgrade_request("/admin/x"))[0] == 403
            assert switched_to(sock, upgrade_request("/chat"), b"BACKEND")
        wait_for(lambda: backend.accepted == 1, what="the /chat tunnel")


def test_https_variable_on_a_tls_listener(make_proxy, echo, tmp_path):
    ca = trustme.CA()
    cert = tmp_path / "proxy.pem"
    ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(cert))
    engine = make_proxy(
        "Listen 127.0.0.1:0\nListen 127.0.0.1:0 https\n"
        f"SSLEngine On\nSSLCertificateFile {cert}\n"
        "Require expr \"%{HTTPS} == 'on'\"\n"
        f"ProxyPass / ws://127.0.0.1:{echo.address[1]}/\n"
    )
    plain, tls = engine.addresses
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    with wss_connect(f"wss://localhost:{tls[1]}/echo", ssl=ctx, open_timeout=5) as ws:
        ws.send("over tls")
        assert ws.recv(timeout=5) == "over tls"
    with socket.create_connection(plain, timeout=5) as sock:
        assert status_on(sock, upgrade_request("/echo"))[0] == 403
