"""config/model.py: the scopes' timeout chains and `Config.with_websocket_async`."""

from __future__ import annotations

import pytest

from tests.support.sansio import conf

pytestmark = pytest.mark.timeout(30)


def test_connection_timeout_chain() -> None:
    c = conf("Timeout 9\nProxyTimeout 7\nProxyPass /a ws://b/ timeout=3\nProxyPass /b ws://b/\n")
    a, b = c.scope.rules
    assert (c.scope.connect_timeout(a), c.scope.head_timeout(a), c.scope.connect_timeout(b)) == (3.0, 3.0, 7.0)
