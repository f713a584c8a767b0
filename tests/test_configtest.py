"""configtest.summary: what `tunnel configtest` prints for a valid configuration."""

from __future__ import annotations

import pytest

from tests.support.sansio import conf
from tunnel.configtest import summary

pytestmark = pytest.mark.timeout(30)


def test_summary_lists_listeners_rules_values_and_balancers() -> None:
    c = conf(
        """\
        Listen 127.0.0.1:8080
        ProxyWebsocketAsync On
        ProxyPass /x !
        ProxyPass /chat/ ws://backend.test:9000/ timeout=5
        <Location /chat/>
            ProxyWebsocketIdleTimeout 250ms
        </Location>
        <Proxy balancer://c>
            BalancerMember ws://m:1 route=r1
        </Proxy>
        ProxyPass /lb/ balancer://c/
        """
    )
    text = summary(c)
    for fragment in (
        "127.0.0.1:8080",
        "ProxyWebsocketAsync On",
        "1. ProxyPass /x ! (excluded)",
        "2. ProxyPass /chat/ -> ws://backend.test:9000/  upgrade=websocket (default) timeout=5  [t.conf:4]",
        "<Location /chat/> sets ProxyWebsocketIdleTimeout 250ms",
        "ProxyPass /lb/ -> balancer://c/",
        "balancer://c: lbmethod=byrequests",
        "ws://m:1/ loadfactor=1 lbset=0 route=r1",
    ):
        assert fragment in text, text


def test_summary_shows_where_access_rules_apply() -> None:
    c = conf(
        """\
        ProxyPass / ws://127.0.0.1:9000/
        Require ip 10.0.0.0/8
        Require local
        <Location /admin>
            Require all denied
        </Location>
        <Location /chat>
            ProxyWebsocketAsync On
            AuthMerging And
            Require expr "%{HTTP:Origin} == 'https://app.example'"
        </Location>
        <Proxy "ws://127.0.0.1:9000/*">
            <RequireAll>
                Require all granted
                Require not ip 10.6
            </RequireAll>
        </Proxy>
        <VirtualHost *:80>
            ServerName v.test
        </VirtualHost>
        """
    )
    text = summary(c)
    for fragment in (
        "  access: any of: Require ip 10.0.0.0/8; Require local\n",
        "  <Proxy ws://127.0.0.1:9000/*> access: <RequireAll> Require all granted; Require not ip 10.6 </RequireAll>  [t.conf:12]",
        "  <Location /admin> access: Require all denied  [t.conf:4]",
        "  <Location /chat> sets ProxyWebsocketAsync On  [t.conf:7]",
        "  <Location /chat> access: Require expr %{HTTP:Origin} == 'https://app.example' (AuthMerging And)  [t.conf:7]",
    ):
        assert fragment in text, text
    assert text.count("  access: any of: Require ip 10.0.0.0/8; Require local") == 2  # the vhost inherits


def test_summary_without_access_rules_has_no_access_lines() -> None:
    assert "access" not in summary(conf("ProxyPass / ws://b/\n"))


def test_summary_lists_the_rewrite_rules_of_each_scope() -> None:
    c = conf(
        """\
        RewriteEngine On
        RewriteCond %{HTTP:Upgrade} websocket [NC]
        RewriteCond %{HTTPS} !=on [OR]
        RewriteRule ^/?(.*) "ws://127.0.0.1:8888/$1" [P,L]
        ProxyPass / http://127.0.0.1:8888/
        <VirtualHost *:80>
            ServerName v.test
            RewriteOptions Inherit
            RewriteRule ^/old - [G]
        </VirtualHost>
        """
    )
    text = summary(c)
    assert "  RewriteEngine On (the rewrite rules run before the routes)" in text
    assert text.index("R1. RewriteRule") < text.index("1. ProxyPass /")
    assert "     RewriteCond %{HTTP:Upgrade} websocket [NC]  [t.conf:2]" in text
    assert "     RewriteCond %{HTTPS} !=on [OR]  [t.conf:3]" in text
    assert "  R1. RewriteRule ^/?(.*) ws://127.0.0.1:8888/$1 [P,L]  [t.conf:4]" in text
    vhost = text[text.index("v.test") :]
    assert "  R1. RewriteRule ^/old - [G]  [t.conf:9]" in vhost
    assert "  R2. RewriteRule ^/?(.*) ws://127.0.0.1:8888/$1 [P,L]  [t.conf:4]" in vhost
