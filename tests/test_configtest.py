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
