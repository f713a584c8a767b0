"""routing: canonical paths (R5, R52), alias_match, rule order and exclusions (R1),
ProxyPassMatch (R9), upgrade= x Upgrade (R13, R16, R57), fallback (R2, R3, R15, R17),
balancer routes, <Location> settings. Pure: no sockets."""

from __future__ import annotations

import re
import textwrap
from typing import Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel.config import Scope, Target, parse
from tunnel.errors import BadRequest, ClientError, Forbidden, MethodNotAllowed, NotFound, UpgradeRequired
from tunnel.protocol.routing import alias_match, encode_path, normalize_target, route

pytestmark = pytest.mark.timeout(30)


def scope(text: str) -> Scope:
    return parse(textwrap.dedent(text), filename="r.conf").scope


# -- normalize_target ------------------------------------------------------------------------

NORMALIZED = [
    ("/", "/", ""),
    ("/a/../b", "/b", ""),
    ("/a/./b/.", "/a/b/", ""),
    ("/a/b/..", "/a/", ""),
    ("/%2e%2e/", None, BadRequest),
    ("/a/%2e%2e/x", "/x", ""),
    ("/a/%2E%2e/x", "/x", ""),
    ("/a/.%2E/x?q=%2e%2e", "/x", "q=%2e%2e"),
    ("/%7Euser/%41", "/~user/A", ""),
    ("//a///b", "/a/b", ""),
    ("/a%20b/%25/%3F", "/a b/%/?", ""),
    ("/caf%C3%A9", "/caf\xc3\xa9", ""),
    ("/a?x=1&y=%zz", "/a", "x=1&y=%zz"),
    ("/a?", "/a", ""),
    ("/a/%2fb", None, NotFound),
    ("/a/%2Fb", None, NotFound),
    ("/a%00", None, NotFound),
    ("/a%zz", None, BadRequest),
    ("/a%2", None, BadRequest),
    ("/a%zz/%2F", None, BadRequest),  # a bad escape wins over %2F, as in httpd
    ("/..", None, BadRequest),
    ("/a/../..", None, BadRequest),
    ("/a b", None, Forbidden),
    ("/a\x01b", None, Forbidden),
    ("/a?b\x7f", None, Forbidden),
    ("/a?b c", None, Forbidden),
    ("/a#frag", None, BadRequest),
    ("http://evil.example:81/chat/x?y", "/chat/x", "y"),
    ("HTTPS://evil", "/", ""),
    ("http://evil?q", "/", "q"),
    ("*", None, BadRequest),
    ("evil.example:443", None, BadRequest),
    ("ftp://x/a", None, BadRequest),
    ("", None, BadRequest),
]


@pytest.mark.parametrize("raw, path, query_or_error", NORMALIZED)
def test_normalize_target(raw: str, path: Optional[str], query_or_error: object) -> None:
    if path is None:
        with pytest.raises(query_or_error):  # type: ignore[call-overload]
            normalize_target(raw)
    else:
        assert normalize_target(raw) == (path, query_or_error)


def test_encoded_slashes_allowed_are_decoded_then_resolved() -> None:
    assert normalize_target("/a/%2Fb", allow_encoded_slashes=True) == ("/a/b", "")
    assert normalize_target("/a/b/..%2Fc", allow_encoded_slashes=True) == ("/a/c", "")
    with pytest.raises(BadRequest):
        normalize_target("/..%2F..%2Fetc", allow_encoded_slashes=True)


def test_encode_path_keeps_pchar_and_encodes_the_rest() -> None:
    assert encode_path("/a b/%/?#/~:@!$&'()*+,;=\r\n\xe9") == "/a%20b/%25/%3F%23/~:@!$&'()*+,;=%0D%0A%E9"


# -- alias_match -------------------------------------------------------------------------------

ALIAS = [
    ("/chat/x", "/chat/", 6),
    ("/chat", "/chat/", 0),
    ("/chat", "/chat", 5),
    ("/chat/x", "/chat", 5),
    ("/chatroom", "/chat", 0),  # httpd checks the last segment matched all the way
    ("/x", "/", 1),
    ("/chat/x", "//chat//", 6),
    ("/a", "/a/b", 0),
    ("/b", "/a", 0),
]


@pytest.mark.parametrize("uri, prefix, length", ALIAS)
def test_alias_match(uri: str, prefix: str, length: int) -> None:
    assert alias_match(uri, prefix) == length


# -- prefixes, order, exclusions, backend paths -----------------------------------------------

PATHS = """\
    ProxyPass /chat/private !
    ProxyPass /chat/ ws://chat.test:9000/app/
    ProxyPass /bare ws://bare.test
    ProxyPass /noslash/ ws://ns.test/base
    ProxyPass /exact ws://exact.test/e/
    ProxyPassMatch ^/user/(\\d+)/(.*)$ ws://user.test/u/$1/s/$2
    ProxyPassMatch \\.sock$ ws://whole.test/prefix/
    ProxyPass /raw/ ws://raw.test/r/ nocanon
    ProxyPass / ws://root.test/
"""

BACKENDS = [
    ("/chat/room?id=1", "chat.test", "/app/room?id=1"),
    ("/chat/", "chat.test", "/app/"),
    ("/chat", "root.test", "/chat"),
    ("/chatroom", "root.test", "/chatroom"),
    ("/chat/private2", "chat.test", "/app/private2"),
    ("/bare", "bare.test", "/"),
    ("/bare/x/y", "bare.test", "/x/y"),
    ("/noslash/x", "ns.test", "/basex"),  # like httpd: no "/" added
    ("/exact", "exact.test", "/e/"),
    ("/exact/z", "exact.test", "/e/z"),
    ("/user/42/a%20b", "user.test", "/u/42/s/a%20b"),
    ("/user/7/", "user.test", "/u/7/s/"),
    ("/x/y.sock?q", "whole.test", "/prefix/x/y.sock?q"),
    ("/chat/a%3Fb%23c", "chat.test", "/app/a%3Fb%23c"),
    ("/chat/caf%c3%a9", "chat.test", "/app/caf%C3%A9"),
    ("/chat/%61", "chat.test", "/app/a"),
    ("/chat/x/../%2e/y", "chat.test", "/app/y"),
    ("/raw/a%2cb;p=%7e", "raw.test", "/r/a%2cb;p=%7e"),  # nocanon: raw
    ("/raw/a/%2e%2e/b", "raw.test", "/r/b"),  # nocanon with a dot-segment: canonical
    ("//raw//x", "raw.test", "/r/x"),  # raw form matches differently: canonical
    ("http://other/chat/z", "chat.test", "/app/z"),
]


@pytest.mark.parametrize("raw, host, backend_path", BACKENDS)
def test_backend_paths(raw: str, host: str, backend_path: str) -> None:
    result = route(scope(PATHS), raw, "websocket")
    assert result.target is not None
    assert (result.target.host, result.backend_path) == (host, backend_path)
    assert result.tunnel and result.upgrade_token == "websocket"


def test_exclusion_first_ends_routing_and_order_matters() -> None:
    with pytest.raises(NotFound) as info:
        route(scope(PATHS), "/chat/private/x", "websocket")
    assert info.value.status == 404 and info.value.reason == "excluded from proxying"
    late = scope("ProxyPass /chat/ ws://a/\nProxyPass /chat/private !\n")
    assert route(late, "/chat/private", "websocket").rule.line == 1


def test_no_rule_is_404_and_connect_is_405() -> None:
    with pytest.raises(NotFound):
        route(scope("ProxyPass /a ws://a/\n"), "/b", "websocket")
    with pytest.raises(MethodNotAllowed):
        route(scope("ProxyPass / ws://a/\n"), "a.test:443", None, method="CONNECT")


def test_encoded_slash_follows_allow_encoded_slashes() -> None:
    with pytest.raises(NotFound):
        route(scope("ProxyPass / ws://a/\n"), "/x%2Fy", "websocket")
    ok = route(scope("AllowEncodedSlashes NoDecode\nProxyPass / ws://a/\n"), "/x%2Fy", "websocket")
    assert ok.backend_path == "/x/y"
    raw = route(scope("AllowEncodedSlashes NoDecode\nProxyPass / ws://a/ nocanon\n"), "/x%2Fy", "websocket")
    assert raw.backend_path == "/x%2Fy"


def test_result_fields() -> None:
    s = scope("ProxyPass /a/ ws://b:81/x/\n")
    r = route(s, "/a/%7e?q", "WebSocket")
    assert (r.rule, r.scope, r.target, r.balancer, r.local_path) == (s.rules[0], s, Target("ws", "b", 81, "/x/"), None, "/a/~")


# -- upgrade= x Upgrade (R13, R16, R57) ---------------------------------------------------------

UPGRADE_CASES = [
    # (url + keys, Upgrade header, tunnel?, token)
    ("ws://b/", "websocket", True, "websocket"),
    ("ws://b/", "WebSocket", True, "websocket"),
    ("ws://b/", "websocket, foo", True, "websocket"),
    ("ws://b/", "foo, websocket", True, "websocket"),
    ("ws://b/", "websocketX", False, None),
    ("ws://b/", "websocket/13", False, None),
    ("ws://b/", "h2c", False, None),
    ("ws://b/", None, False, None),
    ("wss://b/", "websocket", True, "websocket"),
    ("wss://b/", None, False, None),
    ("http://b/", "websocket", False, None),
    ("http://b/", None, False, None),
    ("http://b/ upgrade=websocket", "WebSocket", True, "websocket"),
    ("http://b/ upgrade=websocket", "h2c", False, None),
    ("http://b/ upgrade=h2c,websocket", "foo, WEBSOCKET, h2c", True, "websocket"),
    ("http://b/ upgrade=H2C", "h2c", True, "H2C"),
    ("ws://b/ upgrade=chat/1", "chat/1", True, "chat/1"),
    ("ws://b/ upgrade=chat/1", "chat", False, None),
    ("ws://b/ upgrade=ANY", "h2c", True, "h2c"),
    ("ws://b/ upgrade=ANY", "Foo/2, websocket", True, "Foo/2"),
    ("ws://b/ upgrade=ANY", "TLS/1.2", False, None),
    ("ws://b/ upgrade=ANY", "tls/1.0, h2c", True, "h2c"),
    ("ws://b/ upgrade=ANY", "TLS", False, None),
    ("http://b/ upgrade=ANY", "TLS/1.2", False, None),
    ("ws://b/ upgrade=ANY", None, False, None),
    ("ws://b/ upgrade=NONE", None, True, "websocket"),
    ("ws://b/ upgrade=NONE", "h2c", True, "websocket"),
    ("http://b/ upgrade=NONE", None, True, "websocket"),
    ("ws://b/", "", False, None),
    ("ws://b/", " , ", False, None),
]


@pytest.mark.parametrize("url, header, tunnel, token", UPGRADE_CASES)
def test_upgrade_selection(url: str, header: Optional[str], tunnel: bool, token: Optional[str]) -> None:
    r = route(scope(f"SSLProxyEngine On\nProxyPass / {url}\n"), "/x", header)
    assert (r.tunnel, r.upgrade_token) == (tunnel, token)
    assert r.target is not None
    if not tunnel:  # a plain request on a ws route goes as HTTP to the same host and port (R3)
        assert r.target.scheme in ("http", "https") and r.target.host == "b"
        assert r.target.port == (443 if url.startswith("wss") else 80)


# -- fallback On / Off with ws then http on one path (R2, R3, R15, R17, R49) -------------------

WS_THEN_HTTP = """\
    ProxyWebsocketFallbackToProxyHttp {fallback}
    ProxyPass /app/ ws://ws.test:9000/
    ProxyPass /app/ http://http.test:8000/
"""

FALLBACK_CASES = [
    # (fallback, Upgrade, outcome: (host, scheme, tunnel) or an error with its status)
    ("On", "websocket", ("ws.test", "ws", True)),
    ("On", None, ("ws.test", "http", False)),
    ("On", "h2c", ("ws.test", "http", False)),
    ("Off", "websocket", ("ws.test", "ws", True)),
    ("Off", None, ("http.test", "http", False)),
    ("Off", "h2c", UpgradeRequired),
    ("Off", "TLS/1.2", UpgradeRequired),
]


@pytest.mark.parametrize("fallback, header, outcome", FALLBACK_CASES)
def test_fallback_with_ws_then_http_on_one_path(fallback: str, header: Optional[str], outcome: object) -> None:
    s = scope(WS_THEN_HTTP.format(fallback=fallback))
    if outcome is UpgradeRequired:
        with pytest.raises(UpgradeRequired) as info:
            route(s, "/app/x", header)
        assert info.value.status == 426
        assert info.value.headers == [("Connection", "Upgrade"), ("Upgrade", "WebSocket")]
        return
    r = route(s, "/app/x", header)
    assert r.target is not None and (r.target.host, r.target.scheme, r.tunnel) == outcome


def test_fallback_off_426_names_the_configured_tokens() -> None:
    s = scope("ProxyWebsocketFallbackToProxyHttp Off\nProxyPass / ws://b/ upgrade=chat,websocket\n")
    with pytest.raises(UpgradeRequired) as info:
        route(s, "/", "h2c")
    assert ("Upgrade", "chat, websocket") in info.value.headers


def test_fallback_off_without_another_route_is_404() -> None:
    with pytest.raises(NotFound):
        route(scope("ProxyWebsocketFallbackToProxyHttp Off\nProxyPass / ws://b/\n"), "/", None)


def test_fallback_off_never_skips_http_routes() -> None:
    r = route(scope("ProxyWebsocketFallbackToProxyHttp Off\nProxyPass / http://b/ upgrade=h2c\n"), "/", "websocket")
    assert (r.tunnel, r.target.scheme if r.target else None) == (False, "http")


# -- balancers ------------------------------------------------------------------------------------

BALANCERS = """\
    <Proxy balancer://wsc>
        BalancerMember ws://a:1/
        BalancerMember http://b:2/
    </Proxy>
    <Proxy balancer://httpc>
        BalancerMember http://c:3/
    </Proxy>
    <Proxy balancer://up>
        BalancerMember http://d:4/ upgrade=websocket
    </Proxy>
    ProxyPass /ws/ balancer://wsc/base/
    ProxyPass /http/ balancer://httpc
    ProxyPass /up/ balancer://up/
    ProxyPassMatch ^/m/(.*)$ balancer://wsc/x/$1
"""

BALANCER_CASES = [
    ("/ws/a?b", "websocket", "wsc", True, "/base/a?b"),
    ("/ws/a", None, "wsc", False, "/base/a"),
    ("/http/a", "websocket", "httpc", False, "/a"),
    ("/up/a", "WebSocket", "up", True, "/a"),
    ("/up/a", None, "up", False, "/a"),
    ("/m/q%20r", "websocket", "wsc", True, "/x/q%20r"),
]


@pytest.mark.parametrize("raw, header, balancer, tunnel, backend_path", BALANCER_CASES)
def test_balancer_routes(raw: str, header: Optional[str], balancer: str, tunnel: bool, backend_path: str) -> None:
    r = route(scope(BALANCERS), raw, header)
    assert (r.balancer, r.target, r.tunnel, r.backend_path) == (balancer, None, tunnel, backend_path)


def test_balancer_ws_route_under_fallback_off_skips_plain_requests() -> None:
    s = scope("ProxyWebsocketFallbackToProxyHttp Off\n" + textwrap.dedent(BALANCERS) + "ProxyPass / http://last/\n")
    r = route(s, "/ws/a", None)
    assert r.target is not None and r.target.host == "last"


# -- <Location> settings -------------------------------------------------------------------------


def test_location_settings_apply_by_path_whichever_rule_matches() -> None:
    s = scope(
        """\
        ProxyWebsocketIdleTimeout 30
        <Location /chat/>
            ProxyPass ws://chat/
            ProxyWebsocketIdleTimeout 5
            ProxyWebsocketAsync On
        </Location>
        <Location /chat/slow/>
            ProxyWebsocketIdleTimeout 0
        </Location>
        <LocationMatch "\\.nofallback$">
            ProxyWebsocketFallbackToProxyHttp Off
        </LocationMatch>
        ProxyPass / ws://root/
        """
    )
    chat = route(s, "/chat/x", "websocket")
    assert (chat.scope.websocket_idle_timeout, chat.scope.websocket_async) == (5.0, True)
    slow = route(s, "/chat/slow/x", "websocket")
    assert (slow.scope.websocket_idle_timeout, slow.scope.websocket_async) == (0.0, True)
    other = route(s, "/other", "websocket")
    assert other.scope is s and other.scope.websocket_idle_timeout == 30.0
    with pytest.raises(NotFound):  # the location's Fallback Off: both ws routes vetoed (R2)
        route(s, "/chat/a.nofallback", None)
    assert route(s, "/chat/a.nofallback", "websocket").tunnel


# -- property: one canonical form, never an unsafe byte towards the backend (R52, R53) -------------

_SAFE_REQUEST_TARGET = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%?]*")
ROUTES = scope("ProxyPass /n/ ws://b/ nocanon\nProxyPassMatch ^/m/(.*)$ ws://b/$1\nProxyPass / ws://b/x/\n")


@settings(max_examples=300, deadline=None)
@given(raw=st.one_of(st.text(max_size=40), st.from_regex(r"\A(/|/n/|/m/)[a-z%2eEfF0/.?]{0,30}\Z")))
def test_any_target_routes_to_a_safe_path_or_a_client_error(raw: str) -> None:
    try:
        result = route(ROUTES, raw, "websocket")
    except ClientError as err:
        assert err.status in (400, 403, 404)
        return
    path = result.backend_path.partition("?")[0]
    assert _SAFE_REQUEST_TARGET.fullmatch(path), path
    assert "/../" not in path + "/" and "/./" not in path + "/"
    assert normalize_target(raw)[0] == result.local_path
