"""`tunnel explain` and `Engine.explain`: the steps a request would take, with nothing
connected, and the same decisions the live proxy makes for the same bytes."""

from __future__ import annotations

import socket

import pytest
from click.testing import CliRunner

from tests.support.backends import Recorder
from tests.support.clients import KEY, read_head, status_of, upgrade_request
from tests.support.waiting import wait_for
from tunnel.cli import cli

pytestmark = pytest.mark.timeout(30)

UPGRADE = ["-H", "Upgrade: websocket", "-H", "Connection: Upgrade", "-H", f"Sec-WebSocket-Key: {KEY}", "-H", "Sec-WebSocket-Version: 13"]


def _run(tmp_path, text: str, *args: str) -> str:
    conf = tmp_path / "site.conf"
    conf.write_text(text)
    result = CliRunner().invoke(cli, ["explain", "--config", str(conf), *args])
    assert result.exit_code == 0, result.output
    return result.output


RECIPE = """\
Listen 127.0.0.1:{port}
ProxyWebsocketAsync On
RewriteEngine On
RewriteCond %{{HTTP:Upgrade}} websocket [NC]
RewriteCond %{{HTTP:Connection}} upgrade [NC]
RewriteRule ^/?(.*) "ws://127.0.0.1:{backend}/$1" [P,L]
ProxyPass / http://127.0.0.1:{backend}/
<Location /admin>
  Require ip 10.0.0.0/8
</Location>
"""


def test_the_rewrite_recipe_upgrade_is_traced_to_its_backend_and_nothing_is_connected(tmp_path):
    with Recorder("b") as backend:
        text = RECIPE.format(port=18080, backend=backend.address[1])
        out = _run(tmp_path, text, "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1", *UPGRADE)
        assert "RewriteCond at " in out and "%{HTTP:Upgrade} = 'websocket' against 'websocket' [NC]: true" in out
        assert "route: the [P] of the RewriteRule at " in out and "site.conf:6" in out
        assert "handled as an upgrade: Upgrade websocket is forwarded" in out
        assert "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1" in out
        assert "  Upgrade: websocket" in out and "  Connection: Upgrade" in out
        assert "strategy: async" in out
        assert "X-Forwarded-Host: 127.0.0.1:18080" in out  # the Host a browser would send
        assert backend.accepted == 0


def test_a_plain_request_skips_the_rule_and_takes_the_http_route(tmp_path):
    with Recorder("b") as backend:
        out = _run(tmp_path, RECIPE.format(port=18080, backend=backend.address[1]), "GET /page?x=1")
        assert "%{HTTP:Upgrade} = '' against 'websocket' [NC]: false" in out
        assert "conditions do not hold: rule skipped" in out
        assert "route: ProxyPass / at " in out and "plain HTTP" in out
        assert "  GET /page?x=1 HTTP/1.1" in out and "  Connection: close" in out
        assert "access: granted (no Require lines apply)" in out
        assert "strategy:" not in out  # no tunnel
        assert backend.accepted == 0


def test_a_refused_client_is_a_403_before_any_backend(tmp_path):
    with Recorder("b") as backend:
        out = _run(tmp_path, RECIPE.format(port=18080, backend=backend.address[1]), "GET /admin/users HTTP/1.1")
        assert "<Location /admin> at " in out
        assert "answer: 403 access denied by the server configuration" in out
        assert "would receive" not in out
        out = _run(
            tmp_path, RECIPE.format(port=18080, backend=backend.address[1]), "GET /admin/users HTTP/1.1", "--client", "10.1.2.3"
        )
        assert "access: granted" in out and "X-Forwarded-For: 10.1.2.3" in out
        assert backend.accepted == 0


def test_redirects_bad_upgrades_and_bad_requests_end_with_the_proxy_answer(tmp_path):
    text = "Listen 127.0.0.1:18080\nRewriteEngine On\nRewriteRule ^/old/(.*) /new/$1 [R=301,L]\nProxyPass /ws/ ws://127.0.0.1:9/\n"
    out = _run(tmp_path, text, "GET /old/a HTTP/1.1")
    assert "answer: 301 redirect to http://127.0.0.1:18080/new/a" in out
    out = _run(tmp_path, text, "GET /ws/x HTTP/1.1", "-H", "Upgrade: websocket", "-H", "Connection: Upgrade", "-H", "Sec-WebSocket-Version: 8")
    assert "answer: 426" in out
    out = _run(tmp_path, text, "GET /nothing HTTP/1.1")
    assert "answer: 404" in out
    out = _run(tmp_path, text, "GET /x HTTP/1.1", "-H", "Host: a", "-H", "Host: b")
    assert "answer: 400" in out


def test_a_balancer_shows_its_policy_and_the_member_a_sticky_cookie_elects(tmp_path):
    text = (
        "Listen 127.0.0.1:18080\n"
        "<Proxy balancer://nodes>\n"
        "  BalancerMember ws://127.0.0.1:9001 route=app01\n"
        "  BalancerMember ws://127.0.0.1:9002 route=app02\n"
        "  ProxySet stickysession=ROUTEID lbmethod=bybusyness\n"
        "</Proxy>\n"
        "ProxyPass /socket.io/ balancer://nodes/socket.io/\n"
    )
    out = _run(tmp_path, text, "GET /socket.io/?EIO=4 HTTP/1.1", *UPGRADE, "-H", "Cookie: ROUTEID=.app02")
    assert "balancer://nodes (defined at " in out and "lbmethod=bybusyness, stickysession=ROUTEID" in out
    assert "member ws://127.0.0.1:9001/ route=app01" in out
    assert "sticky route from the request: 'app02'" in out
    assert "would elect ws://127.0.0.1:9002/" in out
    assert "the backend (ws://127.0.0.1:9002/) would receive:" in out


def test_command_line_errors_are_clear(tmp_path):
    conf = tmp_path / "c.conf"
    conf.write_text("Listen 127.0.0.1:18080\nProxyPass / http://127.0.0.1:9/\n")
    runner = CliRunner()
    bad_header = runner.invoke(cli, ["explain", "--config", str(conf), "GET /", "-H", "nocolon"])
    assert bad_header.exit_code == 2 and "expected 'Name: value'" in bad_header.output
    bad_client = runner.invoke(cli, ["explain", "--config", str(conf), "GET /", "--client", "me"])
    assert bad_client.exit_code == 2 and "expected an IP address" in bad_client.output
    bad_listen = runner.invoke(cli, ["explain", "--config", str(conf), "GET /", "--listen", "9999"])
    assert bad_listen.exit_code == 2 and "no Listen 9999" in bad_listen.output
    missing = runner.invoke(cli, ["explain", "--config", str(tmp_path / "none.conf"), "GET /"])
    assert missing.exit_code == 1 and "cannot read configuration" in missing.output


def _live(addr: tuple, data: bytes) -> int:
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(data)
        head, _ = read_head(s)
        return status_of(head)


@pytest.mark.parametrize(
    "request_bytes",
    [
        upgrade_request("/socket.io/?EIO=4&transport=websocket"),
        upgrade_request("/chat/room", extra="Sec-WebSocket-Protocol: chat\r\nOrigin: http://app.test\r\n"),
        b"GET /page?x=1 HTTP/1.1\r\nHost: example.test\r\nAccept: */*\r\n\r\n",
        b"GET /admin/x HTTP/1.1\r\nHost: example.test\r\n\r\n",
        b"GET /old/y HTTP/1.1\r\nHost: example.test\r\n\r\n",
        upgrade_request("/chat/room", version="8"),
    ],
    ids=["rewrite-upgrade", "upgrade-with-protocol", "plain", "refused", "redirect", "bad-version"],
)
def test_explain_and_the_live_proxy_agree(make_proxy, request_bytes):
    with Recorder("b") as backend:
        port = backend.address[1]
        engine = make_proxy(
            RECIPE.format(port=0, backend=port).replace("RewriteEngine On\n", "RewriteEngine On\nRewriteRule ^/old/(.*) /new/$1 [R=302,L]\n")
        )
        explained = engine.explain(request_bytes)
        status = _live(engine.addresses[0], request_bytes)
        if explained.status:
            assert status == explained.status
            assert backend.accepted == 0
        else:
            wait_for(lambda: len(backend.heads) == 1, timeout=5)
            assert status in (101, 200)
            assert backend.heads[0].rstrip(b"\r\n").decode("latin-1") == explained.backend_request.rstrip("\r\n")
