"""Sans-IO: the cookie maps (R103), the Via entry (R104), the Upgrade a non-101 answer
keeps (R101) and why an upgrade request goes as plain HTTP (R102)."""

from __future__ import annotations

import pytest

from tests.support.sansio import conf
from tunnel.protocol.reverse import reverse_map_cookie, reverse_map_headers
from tunnel.protocol.routing import relays_upgrade, route, why_plain
from tunnel.protocol.via import via_entry, via_request, via_response

pytestmark = pytest.mark.timeout(30)

PATHS = [("/internal/", "/public/"), ("/int", "/p")]
DOMAINS = [("backend.local", "example.com"), (".corp", ".example.org")]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("sid=1; Path=/internal/app; HttpOnly", "sid=1; Path=/public/; HttpOnly"),  # the whole value is replaced
        ("sid=1; path=/internal/", "sid=1; path=/public/"),
        ("sid=1; PATH=/intx", "sid=1; PATH=/p"),  # a prefix, not a segment: as httpd
        ("sid=1; Path=/Internal/", "sid=1; Path=/Internal/"),  # paths compare exactly
        ("sid=1; Domain=BACKEND.local.x; Secure", "sid=1; Domain=example.com; Secure"),  # domains without case
        ("sid=1; domain=.corp", "sid=1; domain=.example.org"),
        ("sid=1; Domain=other.local", "sid=1; Domain=other.local"),  # no map: kept
        ("sid=1;Path=/internal/;Domain=backend.local", "sid=1;Path=/public/;Domain=example.com"),
        ("sid=1; Domain=backend.local; Path=/int", "sid=1; Domain=example.com; Path=/p"),
        ("sid=1;  \tpath=/internal/ ; x=y", "sid=1;  \tpath=/public/; x=y"),  # blanks before kept, the value's own dropped
        ("path=/internal/; Max-Age=5", "path=/internal/; Max-Age=5"),  # the cookie's own name=value is not an attribute
        ("sid=1; Expires=Wed, 21 Oct 2037 07:28:00 GMT; Path=/int/x", "sid=1; Expires=Wed, 21 Oct 2037 07:28:00 GMT; Path=/p"),
        ("sid=1; Paths=/internal/", "sid=1; Paths=/internal/"),
        ("sid=1", "sid=1"),
    ],
)
def test_cookie_reverse_map(value, expected):
    assert reverse_map_cookie(value, PATHS, DOMAINS) == expected


def test_the_first_matching_map_wins():
    assert reverse_map_cookie("a=b; path=/internal/x", [("/internal/", "/one/"), ("/internal/x", "/two/")]) == "a=b; path=/one/"


def test_headers_map_only_set_cookie_and_the_location_family():
    headers = [
        ("Set-Cookie", "a=1; Path=/internal/"),
        ("set-cookie", "b=2; Domain=backend.local"),
        ("Cookie-Info", "Path=/internal/"),
        ("Location", "http://b/x"),
    ]
    out = reverse_map_headers(headers, (("/", "http://b/"),), base="http://p", balancers={}, cookie_paths=tuple(PATHS), cookie_domains=tuple(DOMAINS))
    assert out == [
        ("Set-Cookie", "a=1; Path=/public/"),
        ("set-cookie", "b=2; Domain=example.com"),
        ("Cookie-Info", "Path=/internal/"),
        ("Location", "http://p/x"),
    ]
    assert reverse_map_headers(headers, (), base="http://p", balancers={}) is headers


@pytest.mark.parametrize(
    ("args", "kw", "expected"),
    [
        (("1.1", "proxy.test", 8080), {"tls": False}, "1.1 proxy.test:8080"),
        (("1.1", "proxy.test", 80), {"tls": False}, "1.1 proxy.test"),
        (("1.1", "proxy.test", 443), {"tls": True}, "1.1 proxy.test"),
        (("1.1", "proxy.test", 80), {"tls": True}, "1.1 proxy.test:80"),
        (("1.0", "proxy.test", None), {"tls": False, "product": "tunnel/0.1.0"}, "1.0 proxy.test (tunnel/0.1.0)"),
    ],
)
def test_via_entry(args, kw, expected):
    assert via_entry(*args, **kw) == expected


def test_via_on_requests_and_answers():
    client = [("Host", "b"), ("Via", "1.0 first"), ("Via", "1.1 second"), ("X", "y")]
    assert via_request(client, "on", "1.1 me") == [("Host", "b"), ("Via", "1.0 first"), ("Via", "1.1 second, 1.1 me"), ("X", "y")]
    assert via_request([("Host", "b")], "full", "1.1 me (p)") == [("Host", "b"), ("Via", "1.1 me (p)")]
    assert via_request(client, "block", "") == [("Host", "b"), ("X", "y")]
    assert via_request(client, "off", "1.1 me") is client
    answer = [("Via", "1.1 backend-side")]
    assert via_response(answer, "on", "1.1 me") == [("Via", "1.1 backend-side"), ("Via", "1.1 me")]
    assert via_response(answer, "block", "1.1 me") == answer  # Block strips requests only
    assert via_response(answer, "off", "1.1 me") == answer


def _rule(text: str, path: str = "/x"):
    c = conf(text)
    return route(c.scope, path, None).rule, c


@pytest.mark.parametrize(
    ("text", "value", "status", "kept"),
    [
        ("ProxyPass / http://b/\n", "websocket", 426, True),  # a 426 always keeps it
        ("ProxyPass / http://b/\n", "h2c", 426, True),
        ("ProxyPass / http://b/\n", "websocket", 200, False),  # the worker cannot upgrade
        ("ProxyPass / ws://b/\n", "websocket", 200, True),  # ws worker: WebSocket by default
        ("ProxyPass / ws://b/\n", "WebSocket", 403, True),
        ("ProxyPass / ws://b/\n", "h2c", 200, False),
        ("ProxyPass / http://b/ upgrade=h2c,chat\n", "chat", 200, True),
        ("ProxyPass / http://b/ upgrade=h2c\n", "websocket", 200, False),
        ("ProxyPass / http://b/ upgrade=ANY\n", "anything", 200, True),
        ("ProxyPass / ws://b/\n", "websocket, h2c", 200, False),  # one token, as httpd's lookup
    ],
)
def test_which_non_101_answers_keep_upgrade(text, value, status, kept):
    rule, _ = _rule(text)
    assert relays_upgrade(rule, value, status=status) is kept


def test_a_balancer_member_decides_with_its_own_upgrade():
    rule, c = _rule("<Proxy balancer://b>\nBalancerMember http://h1/ upgrade=chat\nBalancerMember ws://h2/\n</Proxy>\nProxyPass / balancer://b/\n")
    first, second = c.balancers["b"].members
    assert relays_upgrade(rule, "chat", status=200, member=first)
    assert not relays_upgrade(rule, "websocket", status=200, member=first)
    assert relays_upgrade(rule, "websocket", status=200, member=second)


@pytest.mark.parametrize(
    ("text", "offered", "fragment"),
    [
        ("ProxyPass / http://b/\n", "websocket", "no upgrade= and is not a ws:// or wss:// route"),
        ("ProxyPass / http://b/ upgrade=h2c\n", "websocket", "upgrade=h2c"),
        ("ProxyPass / ws://b/\n", "chat", "ProxyWebsocketFallbackToProxyHttp On"),
        ("ProxyPass / ws://b/\n", "TLS/1.0", "TLS upgrade"),
    ],
)
def test_why_an_upgrade_goes_as_plain_http(text, offered, fragment):
    c = conf(text)
    decision = route(c.scope, "/x", offered)
    assert not decision.tunnel
    assert fragment in why_plain(decision.rule, offered)
