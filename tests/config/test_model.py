"""config/model.py: the scopes' timeout chains and `Config.with_websocket_async`."""

from __future__ import annotations

import pytest

from tests.support.sansio import conf
from tunnel.config import Config, Scope
from tunnel.protocol.routing import route

pytestmark = pytest.mark.timeout(30)


def test_connection_timeout_chain() -> None:
    c = conf("Timeout 9\nProxyTimeout 7\nProxyPass /a ws://b/ timeout=3\nProxyPass /b ws://b/\n")
    a, b = c.scope.rules
    assert (c.scope.connect_timeout(a), c.scope.head_timeout(a), c.scope.connect_timeout(b)) == (3.0, 3.0, 7.0)


# -- Config.with_websocket_async: what `tunnel serve --async/--sync` does to a file ------------

FORCED = """\
    ProxyPass /g/ ws://g/
    ProxyPass /loc/ ws://loc/
    ProxyPass /other/ ws://other/
    <Location /loc/>
        ProxyWebsocketAsync Off
        ProxyWebsocketIdleTimeout 5
    </Location>
    <Location /other/>
        ProxyWebsocketIdleTimeout 7
    </Location>
    <VirtualHost *:80>
        ServerName v.test
        ProxyPass /v/ ws://v/
        ProxyPass /vloc/ ws://vloc/
        <Location /vloc/>
            ProxyWebsocketAsync Off
        </Location>
    </VirtualHost>
    <VirtualHost *:81>
        ServerName w.test
        ProxyWebsocketAsync Off
    </VirtualHost>
"""


def scopes(c: Config) -> list[Scope]:
    return [c.scope, *(v.scope for v in c.vhosts)]


@pytest.mark.parametrize("on", [True, False])
def test_with_websocket_async_sets_every_scope_and_every_location_that_says(on: bool) -> None:
    # Every scope starts with the opposite: for --sync, the server context says On too.
    text = FORCED if on else "ProxyWebsocketAsync On\n" + FORCED.replace("ProxyWebsocketAsync Off", "ProxyWebsocketAsync On")
    original = conf(text)
    forced = original.with_websocket_async(on)
    # The server context, each vhost (one without a line of its own, one with the opposite).
    assert [s.websocket_async for s in scopes(forced)] == [on, on, on]
    for scope in scopes(forced):
        for loc in scope.locations:
            settings = dict(loc.settings)
            if loc.path == "/other/":  # said nothing about it: still nothing, the scope's value applies
                assert settings == {"websocket_idle_timeout": 7.0}
            else:  # it said the opposite: now it says `on`, its other settings kept
                assert settings["websocket_async"] is on
    assert dict(forced.vhosts[0].scope.locations[0].settings)["websocket_idle_timeout"] == 5.0
    # Each request's effective scope, as routing computes it, says `on` everywhere.
    for scope, path in [(forced.scope, "/loc/x"), (forced.scope, "/other/x"), (forced.vhosts[0].scope, "/vloc/x"), (forced.vhosts[0].scope, "/v/x")]:
        assert route(scope, path, "websocket").scope.websocket_async is on, path
    # Only the strategy changed; the original is untouched (frozen, replaced not mutated).
    assert [s.websocket_async for s in scopes(original)] == [not on] * 3
    assert forced.replace(scope=original.scope, vhosts=original.vhosts) == original
    assert [r.path for r in forced.vhosts[0].scope.rules] == [r.path for r in original.vhosts[0].scope.rules]
