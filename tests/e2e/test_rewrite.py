"""mod_rewrite on a live proxy with the real echo backend: the classic WebSocket recipe
(conds on Upgrade/Connection, a [P] rule to ws://, an http ProxyPass for the rest) under
both strategies, a [P] to a balancer, [R=301], [F] (the backend sees nothing) and a
path rewrite that ProxyPass routing then sees."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from tests.support.clients import http_get
from tests.support.waiting import wait_for
from tunnel.echo import EchoServer

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def other() -> Iterator[EchoServer]:
    with EchoServer("127.0.0.1", 0, page=b"page of other") as server:
        yield server


def recipe(port: int, async_on: bool) -> str:
    return f"""
ProxyWebsocketAsync {'On' if async_on else 'Off'}
RewriteEngine On
RewriteCond %{{HTTP:Upgrade}} websocket [NC]
RewriteCond %{{HTTP:Connection}} upgrade [NC]
RewriteRule ^/?(.*) "ws://127.0.0.1:{port}/$1" [P,L]
ProxyPass / http://127.0.0.1:{port}/
"""


def _ws_echo(engine, path: str = "/chat") -> None:
    sock = socket.create_connection(engine.addresses[0], timeout=5)
    with ws_connect(f"ws://proxy.test{path}", sock=sock, open_timeout=5) as ws:
        ws.send("hello through mod_rewrite")
        assert ws.recv(timeout=5) == "hello through mod_rewrite"


@pytest.mark.parametrize("async_on", [False, True], ids=["sync", "async"])
def test_classic_recipe_tunnels_websocket_and_proxies_http(make_proxy, echo, async_on):
    engine = make_proxy(recipe(echo.address[1], async_on))
    _ws_echo(engine)
    kind = "async" if async_on else "sync"
    wait_for(lambda: engine.stats[f"tunnels.{kind}"] == 1, what=f"one {kind} tunnel")
    status, head, body = http_get(engine.addresses[0], "/page")
    assert status == 200 and body  # plain GET: no Upgrade, the conds fail, ProxyPass takes it
    assert b"Upgrade" not in head


def test_proxy_to_a_balancer(make_proxy, echo, other):
    engine = make_proxy(f"""
<Proxy balancer://pool>
    BalancerMember ws://127.0.0.1:{echo.address[1]}
</Proxy>
RewriteEngine On
RewriteCond %{{HTTP:Upgrade}} websocket [NC]
RewriteRule ^/ws/(.*) balancer://pool/$1 [P]
ProxyPass / http://127.0.0.1:{other.address[1]}/
""")
    before = echo.accepted
    _ws_echo(engine, "/ws/room")
    assert echo.accepted == before + 1
    status, _, body = http_get(engine.addresses[0], "/ws/room")
    assert (status, body) == (200, b"page of other")


def test_redirect_301_with_location(make_proxy, echo):
    engine = make_proxy(f"""
RewriteEngine On
RewriteRule ^/old/(.*)$ /new/$1 [R=301,L]
ProxyPass / http://127.0.0.1:{echo.address[1]}/
""")
    before = echo.accepted
    status, head, _ = http_get(engine.addresses[0], "/old/x?q=1")
    assert status == 301
    assert b"\r\nLocation: http://t/new/x?q=1" in head
    assert echo.accepted == before


def test_forbidden_and_gone_never_reach_the_backend(make_proxy, echo):
    engine = make_proxy(f"""
RewriteEngine On
RewriteRule ^/secret - [F]
RewriteRule ^/old - [G]
ProxyPass / ws://127.0.0.1:{echo.address[1]}/
""")
    before = echo.accepted
    assert http_get(engine.addresses[0], "/secret/x")[0] == 403
    assert http_get(engine.addresses[0], "/old")[0] == 410
    sock = socket.create_connection(engine.addresses[0], timeout=5)
    with pytest.raises(InvalidStatus, match="403"), ws_connect("ws://proxy.test/secret", sock=sock, open_timeout=5):
        pass
    assert echo.accepted == before
    assert http_get(engine.addresses[0], "example.test:443", method="CONNECT")[0] == 405  # as without rewrite


def test_a_rewritten_path_is_what_proxypass_matches(make_proxy, echo, other):
    engine = make_proxy(f"""
RewriteEngine On
RewriteRule ^/legacy/(.*) /app/$1 [PT]
ProxyPass /app/ http://127.0.0.1:{other.address[1]}/
ProxyPass / http://127.0.0.1:{echo.address[1]}/
""")
    status, _, body = http_get(engine.addresses[0], "/legacy/x")
    assert (status, body) == (200, b"page of other")
    assert http_get(engine.addresses[0], "/other")[2] != b"page of other"


def test_a_dynamic_tls_target_without_sslproxyengine_is_a_500(make_proxy, echo):
    engine = make_proxy(f"""
RewriteEngine On
RewriteRule ^/(.*) %{{HTTP:X-Scheme}}://127.0.0.1:{echo.address[1]}/$1 [P]
""")
    before = echo.accepted
    assert http_get(engine.addresses[0], "/x", headers="X-Scheme: https\r\n")[0] == 500
    assert echo.accepted == before
    assert http_get(engine.addresses[0], "/x", headers="X-Scheme: http\r\n")[0] == 200
    assert http_get(engine.addresses[0], "/x", headers="X-Scheme: ftp\r\n")[0] == 500


def test_the_access_log_sees_rewrite_answers_and_env_notes(make_proxy, echo, tmp_path):
    log = tmp_path / "access.log"
    engine = make_proxy(f"""
CustomLog {log} "%>s %{{page}}n %{{Location}}o \\"%r\\""
RewriteEngine On
RewriteRule ^/(.*) - [E=page:$1]
RewriteRule ^/f - [F]
RewriteRule ^/r /elsewhere [R]
ProxyPass / http://127.0.0.1:{echo.address[1]}/
""")
    assert http_get(engine.addresses[0], "/f")[0] == 403
    assert http_get(engine.addresses[0], "/r")[0] == 302
    assert http_get(engine.addresses[0], "/p")[0] == 200

    def lines() -> list[str]:
        return log.read_text().splitlines() if log.exists() else []

    wait_for(lambda: len(lines()) >= 3, what="three access-log lines")
    assert lines() == ['403 f - "GET /f HTTP/1.1"', '302 r http://t/elsewhere "GET /r HTTP/1.1"', '200 p - "GET /p HTTP/1.1"']


def test_a_proxy_rule_takes_the_location_settings_of_the_client_path(make_proxy, echo):
    engine = make_proxy(f"""
ProxyWebsocketAsync Off
<Location /fast/>
    ProxyWebsocketAsync On
</Location>
RewriteEngine On
RewriteCond %{{HTTP:Upgrade}} websocket [NC]
RewriteRule ^/(.*) ws://127.0.0.1:{echo.address[1]}/elsewhere/$1 [P]
""")
    _ws_echo(engine, "/fast/x")
    wait_for(lambda: engine.stats["tunnels.async"] == 1, what="an async tunnel for /fast/")
    _ws_echo(engine, "/slow/x")
    wait_for(lambda: engine.stats["tunnels.sync"] == 1, what="a sync tunnel for /slow/")


def test_proxy_to_wss_uses_the_scope_sslproxy_settings(make_proxy, tmp_path):
    import ssl

    import trustme

    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(ctx)
    with EchoServer("127.0.0.1", 0, ssl_context=ctx) as backend:
        port = backend.address[1]
        engine = make_proxy(f"""
SSLProxyEngine On
SSLProxyCACertificateFile {ca_file}
RewriteEngine On
RewriteCond %{{HTTP:Upgrade}} websocket [NC]
RewriteRule ^/(.*) wss://localhost:{port}/$1 [P,L]
RewriteRule ^/(.*) https://localhost:{port}/$1 [P]
""")
        _ws_echo(engine, "/secure")
        status, _, body = http_get(engine.addresses[0], "/page")
        assert status == 200 and body
        # Without the CA the backend's certificate is not trusted: 502, as for ProxyPass.
        untrusted = make_proxy(f"SSLProxyEngine On\nRewriteEngine On\nRewriteRule ^/(.*) https://localhost:{port}/$1 [P]\n")
        assert http_get(untrusted.addresses[0], "/page")[0] == 502
