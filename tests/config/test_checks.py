"""config/checks.py: the route warnings configtest prints and `Config.warnings` carries."""

from __future__ import annotations

from typing import Optional

import pytest

from tests.support.sansio import conf

pytestmark = pytest.mark.timeout(30)

WARNINGS = [
    ("ProxyPass /chat/ ws://a/\nProxyPass /chat/ http://b/", "t.conf:2: ProxyPass /chat/ http://b/ is never used: the ws route at t.conf:1"),
    ("ProxyPass /chat ws://a/\nProxyPass /chat/x http://b/", "t.conf:2: ProxyPass /chat/x http://b/ is never used"),
    ("ProxyPass / ws://b/ upgrade=ANY", "t.conf:1: upgrade=ANY on /: ANY forwards whatever the client asks"),
    ("ProxyPass / ws://b/ upgrade=NONE", "t.conf:1: upgrade=NONE on /: NONE makes every request a handshake"),
    ("<Proxy balancer://c>\nBalancerMember ws://m/ upgrade=ANY\n</Proxy>", "t.conf:2: upgrade=ANY on ws://m/"),
    ("ProxyPass /chat/ ws://a/\nProxyPass /chat/ http://a/", None),  # same backend: same effect
    ("ProxyWebsocketFallbackToProxyHttp Off\nProxyPass /chat/ ws://a/\nProxyPass /chat/ http://b/", None),
    ("ProxyPass /chat/ ws://a/\nProxyPass /other/ http://b/", None),
    ("ProxyPass /chat/ http://b/\nProxyPass /chat/ ws://a/", None),
    ("<Proxy balancer://c>\nBalancerMember ws://m/\nBalancerMember http://n/\n</Proxy>", "t.conf:2: balancer://c mixes ws:// members"),
    ("<Proxy balancer://c>\nBalancerMember ws://m/\nBalancerMember http://n/ upgrade=websocket\n</Proxy>", None),
]


@pytest.mark.parametrize("text, warning", WARNINGS)
def test_route_warnings(text: str, warning: Optional[str]) -> None:
    warnings = conf(text + "\n").warnings
    assert any(w.startswith(warning) for w in warnings) if warning else warnings == (), warnings
