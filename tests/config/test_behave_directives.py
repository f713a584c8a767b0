"""ProxyPassReverseCookiePath/-Domain (R103), ProxyVia (R104), LimitRequestBody (R105)
and the tunnel idle-limit precedence (R100): values, defaults, contexts, merging, and
each error with its file and line."""

from __future__ import annotations

import textwrap

import pytest

from tests.support.sansio import conf
from tunnel.config import ConfigError, parse
from tunnel.config.model import DEFAULT_LIMIT_REQUEST_BODY
from tunnel.config.scopes import effective_scope, tunnel_idle_timeout

pytestmark = pytest.mark.timeout(30)


def fails(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(textwrap.dedent(text), filename="t.conf")
    return info.value


def test_defaults_are_httpds():
    s = conf("").scope
    assert (s.cookie_paths, s.cookie_domains, s.via) == ((), (), "off")
    assert s.limit_request_body == DEFAULT_LIMIT_REQUEST_BODY == 1073741824  # 1 GiB since 2.4.54


@pytest.mark.parametrize(
    ("line", "field", "value"),
    [
        ("LimitRequestBody 0", "limit_request_body", 0),
        ("LimitRequestBody 1024", "limit_request_body", 1024),
        ("LimitRequestBody 9223372036854775807", "limit_request_body", (1 << 63) - 1),
        ("ProxyVia On", "via", "on"),
        ("ProxyVia full", "via", "full"),
        ("ProxyVia BLOCK", "via", "block"),
        ("ProxyVia Off", "via", "off"),
    ],
)
def test_values(line, field, value):
    assert getattr(conf(line).scope, field) == value


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("LimitRequestBody -1\n", 1, "LimitRequestBody: expected a non-negative integer of bytes"),
        ("\nLimitRequestBody 10K\n", 2, 'got "10K"'),
        ("LimitRequestBody 9223372036854775808\n", 1, "non-negative integer"),
        ("LimitRequestBody\n", 1, "expected one argument, got 0"),
        ("ProxyVia Maybe\n", 1, "ProxyVia: expected Off, On, Full or Block"),
        ("<Location /x>\nProxyVia On\n</Location>\n", 2, "ProxyVia: not allowed in <Location>"),
        ("ProxyPassReverseCookiePath /a\n", 1, "ProxyPassReverseCookiePath: expected INTERNAL PUBLIC [interpolate]"),
        ("ProxyPassReverseCookieDomain a b c d\n", 1, "expected INTERNAL PUBLIC"),
        ("\n\nProxyPassReverseCookieDomain internal public interpolate\n", 3, "interpolate is not supported"),
        ("ProxyPassReverseCookiePath /a /b Interpolate\n", 1, "ProxyPassInterpolateEnv is not implemented"),
        ("ProxyPassReverseCookiePath /a /b sometimes\n", 1, "expected interpolate (or nothing) as the third argument"),
        ("<Proxy balancer://b>\nBalancerMember ws://h/\nProxyPassReverseCookiePath /a /b\n</Proxy>\n", 3, "not allowed in <Proxy"),
    ],
)
def test_errors_name_file_line_and_form(text, line, fragment):
    err = fails(text)
    assert (err.file, err.line) == ("t.conf", line)
    assert fragment in str(err)
    assert str(err).startswith(f"t.conf:{line}: ")


def test_cookie_maps_merge_server_vhost_and_location_in_order():
    c = conf(
        """
        ProxyPassReverseCookiePath /int/ /pub/
        ProxyPassReverseCookieDomain backend.local example.com
        <Location /app/>
            ProxyPassReverseCookiePath /app-int/ /app/
        </Location>
        <VirtualHost *:80>
            ServerName v
            ProxyPassReverseCookieDomain v.local v.example
            ProxyPassReverseCookiePath /v-int/ /v/
        </VirtualHost>
        ProxyPassReverseCookiePath /late/ /l/
        """
    )
    main = c.scope
    assert main.cookie_paths == (("/int/", "/pub/"), ("/late/", "/l/"))
    assert main.cookie_domains == (("backend.local", "example.com"),)
    vhost = c.vhosts[0].scope
    # the main server's maps first (as it stands at the end of the file), then the vhost's
    assert vhost.cookie_paths == (("/int/", "/pub/"), ("/late/", "/l/"), ("/v-int/", "/v/"))
    assert vhost.cookie_domains == (("backend.local", "example.com"), ("v.local", "v.example"))
    # a <Location>'s maps add to its server's for requests under it, and only there
    assert effective_scope(main, "/app/x").cookie_paths == (("/int/", "/pub/"), ("/late/", "/l/"), ("/app-int/", "/app/"))
    assert effective_scope(main, "/other").cookie_paths == main.cookie_paths
    assert effective_scope(vhost, "/app/").cookie_paths[-1] == ("/app-int/", "/app/")


def test_limit_request_body_in_a_location_wins_for_its_paths():
    c = conf("LimitRequestBody 100\n<Location /up/>\nLimitRequestBody 0\n</Location>\n<VirtualHost *:80>\nLimitRequestBody 5\n</VirtualHost>\n")
    assert c.scope.limit_request_body == 100
    assert effective_scope(c.scope, "/up/file").limit_request_body == 0
    assert effective_scope(c.scope, "/down").limit_request_body == 100
    assert c.vhosts[0].scope.limit_request_body == 5


def test_proxy_via_vhost_overrides_the_server():
    c = conf("ProxyVia Full\n<VirtualHost *:80>\nProxyVia Block\n</VirtualHost>\n<VirtualHost *:81>\n</VirtualHost>\n")
    assert (c.scope.via, c.vhosts[0].scope.via, c.vhosts[1].scope.via) == ("full", "block", "full")


def _idle(text: str, path: str = "/ws/x") -> float:
    c = conf(text)
    scope = c.scope
    from tunnel.protocol.routing import route

    decision = route(scope, path, "websocket")
    return tunnel_idle_timeout(scope, decision.local_path, decision.rule)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ProxyPass /ws/ ws://b/\n", 0.0),  # nothing set: no idle limit
        ("ProxyWebsocketIdleTimeout 30\nProxyPass /ws/ ws://b/\n", 30.0),  # server-wide
        ("ProxyWebsocketIdleTimeout 30\nProxyPass /ws/ ws://b/ timeout=5\n", 5.0),  # the route's own wins
        ("ProxyPass /ws/ ws://b/ timeout=5\n", 5.0),
        # a ProxyWebsocketIdleTimeout in the route's <Location> wins over both
        ("ProxyWebsocketIdleTimeout 30\n<Location /ws/>\nProxyPass ws://b/ timeout=5\nProxyWebsocketIdleTimeout 250ms\n</Location>\n", 0.25),
        ("<Location /ws/>\nProxyWebsocketIdleTimeout 0\n</Location>\nProxyPass /ws/ ws://b/ timeout=5\n", 0.0),
        # a <Location> that does not match the request changes nothing
        ("<Location /other/>\nProxyWebsocketIdleTimeout 1\n</Location>\nProxyPass /ws/ ws://b/ timeout=5\n", 5.0),
        # two matching ones: the later in merge order (file order) wins
        ("<LocationMatch ^/ws>\nProxyWebsocketIdleTimeout 7\n</LocationMatch>\n<Location /ws/>\nProxyWebsocketIdleTimeout 3\n</Location>\nProxyPass /ws/ ws://b/\n", 3.0),
        ("<Location /ws/>\nProxyWebsocketIdleTimeout 3\n</Location>\n<LocationMatch ^/ws>\nProxyWebsocketIdleTimeout 7\n</LocationMatch>\nProxyPass /ws/ ws://b/\n", 7.0),
    ],
)
def test_idle_limit_precedence(text, expected):
    assert _idle(text) == expected


def test_a_balancer_members_timeout_is_the_workers_own():
    c = conf(
        "ProxyWebsocketIdleTimeout 30\n<Proxy balancer://b>\nBalancerMember ws://h1/ timeout=4\nBalancerMember ws://h2/\n</Proxy>\n"
        "ProxyPass /ws/ balancer://b/\n"
    )
    from tunnel.protocol.routing import route

    decision = route(c.scope, "/ws/", "websocket")
    members = c.balancers["b"].members
    assert tunnel_idle_timeout(c.scope, "/ws/", decision.rule, members[0]) == 4.0
    assert tunnel_idle_timeout(c.scope, "/ws/", decision.rule, members[1]) == 30.0
