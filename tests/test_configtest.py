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
