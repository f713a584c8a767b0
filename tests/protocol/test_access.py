"""Access evaluation, sans-IO: providers, negation, sections, expressions, merging."""

from __future__ import annotations

import textwrap

import pytest

from tunnel.config.model import Config, RequireSection
from tunnel.protocol import routing
from tunnel.protocol.access import AccessRequest, Result, backend_url, effective_access, evaluate, is_granted


def conf(text: str) -> Config:
    return Config.from_text(textwrap.dedent(text), filename="t.conf")


def granted(rules_text: str, request: AccessRequest, path: str = "/", url: str | None = None) -> bool:
    c = conf("ProxyPass / ws://backend:8080/\n" + rules_text)
    return is_granted(effective_access(c.scope, path, url), request)


def req(remote: str = "127.0.0.1", **kw: object) -> AccessRequest:
    return AccessRequest(remote, **kw)  # type: ignore[arg-type]


def test_no_rules_grant() -> None:
    c = conf("ProxyPass / ws://b/\n")
    assert effective_access(c.scope, "/", "ws://b/") is None
    assert is_granted(None, req("203.0.113.9"))


def test_all() -> None:
    assert granted("Require all granted", req())
    assert not granted("Require all denied", req())


@pytest.mark.parametrize(
    ("spec", "addr", "ok"),
    [
        ("127.0.0.1", "127.0.0.1", True),
        ("127.0.0.1", "127.0.0.2", False),
        ("10.0.0.0/8", "10.200.3.4", True),
        ("10.0.0.0/8", "11.0.0.1", False),
        ("10.0.0.0/255.0.0.0", "10.9.9.9", True),
        ("10.0.0.0/255.255.0.0", "10.1.0.1", False),
        ("10.1", "10.1.200.7", True),
        ("10.1", "10.2.0.1", False),
        ("10.1.", "10.1.0.0", True),
        ("192.168.1", "192.168.1.250", True),
        ("10", "10.255.0.1", True),
        ("2001:db8::/32", "2001:db8:1::7", True),
        ("2001:db8::/32", "2001:db9::1", False),
        ("::1", "::1", True),
        ("10.0.0.0/8", "::ffff:10.1.2.3", True),  # v4-mapped peers match v4 networks
        ("10.0.0.0/8", "2001:db8::1", False),
        ("10.0.0.0/8", "unix", False),
        ("10.0.0.0/8 192.168.0.0/16", "192.168.3.3", True),
    ],
)
def test_ip(spec: str, addr: str, ok: bool) -> None:
    assert granted(f"Require ip {spec}", req(addr)) is ok


@pytest.mark.parametrize(
    ("remote", "local", "ok"),
    [
        ("127.0.0.1", "", True),
        ("127.8.9.10", "", True),
        ("::1", "", True),
        ("::ffff:127.0.0.1", "", True),
        ("192.0.2.5", "192.0.2.5", True),  # the server's own address
        ("192.0.2.5", "192.0.2.6", False),
        ("192.0.2.5", "", False),
        ("unix", "", True),
    ],
)
def test_local(remote: str, local: str, ok: bool) -> None:
    assert granted("Require local", req(remote, local=local)) is ok


def test_method() -> None:
    assert granted("Require method GET POST", req(method="GET"))
    assert not granted("Require method GET POST", req(method="PUT"))


def test_not_refuses_but_never_grants() -> None:
    rules = conf("Require all granted\n<RequireAll>\nRequire all granted\nRequire not ip 10.0.0.0/8\n</RequireAll>\n")
    assert rules.scope.access is not None
    all_ = rules.scope.access.root.children[1]
    assert isinstance(all_, RequireSection)
    (_, negated) = all_.children
    assert evaluate(negated, req("10.1.1.1")) is Result.DENIED
    assert evaluate(negated, req("192.0.2.1")) is Result.NEUTRAL  # not GRANTED
    text = "<RequireAll>\nRequire all granted\nRequire not ip 10.0.0.0/8\n</RequireAll>\n"
    assert granted(text, req("192.0.2.1"))
    assert not granted(text, req("10.1.1.1"))


def test_implicit_any_of_several_lines() -> None:
    text = "Require ip 10.0.0.0/8\nRequire ip 192.168.0.0/16\n"
    assert granted(text, req("10.0.0.1")) and granted(text, req("192.168.0.1"))
    assert not granted(text, req("172.16.0.1"))


def test_nesting_all_any_none() -> None:
    text = """\
        <RequireAll>
            <RequireAny>
                Require ip 10.0.0.0/8
                Require local
            </RequireAny>
            <RequireNone>
                Require ip 10.66.0.0/16
                Require method DELETE
            </RequireNone>
        </RequireAll>
        """
    assert granted(text, req("10.1.0.1"))
    assert granted(text, req("127.0.0.1"))
    assert not granted(text, req("192.0.2.1"))  # RequireAny denied
    assert not granted(text, req("10.66.0.1"))  # RequireNone: a member matched
    assert not granted(text, req("10.1.0.1", method="DELETE"))


def test_a_section_of_neutrals_is_not_granted() -> None:
    text = "<RequireAny>\nRequire all denied\n<RequireAll>\nRequire all granted\nRequire not ip 10.0.0.0/8\n</RequireAll>\n</RequireAny>\n"
    assert not granted(text, req("10.0.0.1"))
    assert granted(text, req("192.0.2.1"))


ORIGIN = (("Origin", "https://app.example"), ("Host", "proxy.example:8443"))


@pytest.mark.parametrize(
    ("expr", "ok"),
    [
        ("%{HTTP:Origin} == 'https://app.example'", True),
        ("%{HTTP:origin} == 'https://other.example'", False),
        ("%{HTTP:Origin} != 'https://other.example'", True),
        ("%{HTTP:X-Missing} == ''", True),
        ("%{HTTP:Origin} =~ /^https:\\/\\/app\\./", True),
        ("%{HTTP:Origin} =~ m#^https://APP#i", True),
        ("%{HTTP:Origin} =~ m#^https://APP#", False),
        ("%{HTTP:Origin} !~ /evil/", True),
        ("%{HTTP:Origin} -strmatch 'https://*.example'", True),
        ("%{HTTP:Origin} -strmatch 'http://*'", False),
        ("%{HTTP:Origin} -strcmatch 'HTTPS://APP.*'", True),
        ("%{REMOTE_ADDR} -ipmatch '10.0.0.0/8'", True),
        ("%{REMOTE_ADDR} -ipmatch '192.168.0.0/16'", False),
        ("%{HTTP:Origin} -ipmatch '10.0.0.0/8'", False),  # not an address: no match
        ("%{HTTP_HOST} == 'proxy.example:8443'", True),
        ("%{REQUEST_URI} == '/chat/room'", True),
        ("%{REQUEST_METHOD} == 'GET'", True),
        ("%{QUERY_STRING} == 'token=1'", True),
        ("%{HTTPS} == 'on'", True),
        ("%{HTTP:Origin} == 'https://%{HTTP:X-Missing}app.example'", True),
        ("true", True),
        ("false", False),
        ("!false", True),
        ("! %{HTTPS} == 'on'", False),
        ("true || false && false", True),  # && binds tighter than ||
        ("(true || false) && false", False),
        ("false || !(false || false) && true", True),
        ("%{HTTP:Origin} == 'https://app.example' && %{REMOTE_ADDR} -ipmatch '10.1'", True),
        ("%{HTTP:Origin} == 'x' || %{HTTP:Origin} == 'https://app.example'", True),
    ],
)
def test_expressions(expr: str, ok: bool) -> None:
    request = req("10.1.2.3", headers=ORIGIN, path="/chat/room", query="token=1", https=True)
    assert granted(f'Require expr "{expr}"', request) is ok, expr


def test_location_replaces_server_rules_by_default() -> None:
    text = "Require all granted\n<Location /admin>\nRequire all denied\n</Location>\n<Location /open>\nProxyWebsocketAsync On\n</Location>\n"
    assert granted(text, req(), path="/chat")
    assert not granted(text, req(), path="/admin/x")
    assert granted(text, req(), path="/open")  # a location without Require keeps the server's
    text = "Require all denied\n<Location /public>\nRequire all granted\n</Location>\n"
    assert granted(text, req(), path="/public")


def test_auth_merging_and_or() -> None:
    server = "Require ip 10.0.0.0/8\n"
    and_ = server + "<Location /x>\nAuthMerging And\nRequire method GET\n</Location>\n"
    assert granted(and_, req("10.0.0.1"), path="/x")
    assert not granted(and_, req("10.0.0.1", method="POST"), path="/x")
    assert not granted(and_, req("192.0.2.1"), path="/x")
    or_ = server + "<Location /x>\nAuthMerging Or\nRequire method GET\n</Location>\n"
    assert granted(or_, req("192.0.2.1"), path="/x")
    assert granted(or_, req("10.0.0.1", method="POST"), path="/x")
    assert not granted(or_, req("192.0.2.1", method="POST"), path="/x")


def test_locations_merge_in_order_later_wins() -> None:
    text = "<Location /a>\nRequire all denied\n</Location>\n<Location /a/b>\nRequire all granted\n</Location>\n"
    assert not granted(text, req(), path="/a/c")
    assert granted(text, req(), path="/a/b/c")
    text = "<LocationMatch ^/a>\nRequire all denied\n</LocationMatch>\n<Location /a/b>\nRequire all granted\n</Location>\n"
    # <Location> and <LocationMatch> merge together, in file order (checked against httpd).
    assert granted(text, req(), path="/a/b")
    text = "<Location /a/b>\nRequire all granted\n</Location>\n<LocationMatch ^/a>\nRequire all denied\n</LocationMatch>\n"
    assert not granted(text, req(), path="/a/b")


def test_proxy_blocks_by_backend_url_before_locations() -> None:
    text = '<Proxy "ws://backend:8080/*">\nRequire all denied\n</Proxy>\n'
    assert not granted(text, req(), url="ws://backend:8080/chat")
    assert granted(text, req(), url="ws://other:8080/chat")
    assert granted('<Proxy "ws://backend:8080/chat">\nRequire all denied\n</Proxy>\n', req(), url="ws://backend:8080/x")
    assert not granted('<Proxy "ws://backend:8080/chat">\nRequire all denied\n</Proxy>\n', req(), url="ws://backend:8080/chat/1")
    assert not granted("<Proxy *>\nRequire all denied\n</Proxy>\n", req(), url="balancer://x/")
    both = '<Proxy *>\nRequire all denied\n</Proxy>\n<Location /ok>\nRequire all granted\n</Location>\n'
    assert granted(both, req(), path="/ok", url="ws://b/")  # the location comes later
    assert not granted(both, req(), path="/no", url="ws://b/")


def test_backend_url_of_routes() -> None:
    c = conf(
        """\
        ProxyPass /chat/ ws://backend:8080/app/
        ProxyPass /plain/ http://web/
        ProxyPass /lb/ balancer://pool/
        <Proxy balancer://pool>
            BalancerMember ws://m1:9000/
        </Proxy>
        """
    )
    chat = routing.route(c.scope, "/chat/room?x=1", "websocket")
    assert backend_url(chat) == "ws://backend:8080/app/room"
    # a plain request on a ws route keeps the configured ws:// URL
    assert backend_url(routing.route(c.scope, "/chat/room", None)) == "ws://backend:8080/app/room"
    assert backend_url(routing.route(c.scope, "/plain/p", None)) == "http://web/p"
    assert backend_url(routing.route(c.scope, "/lb/x", "websocket")) == "balancer://pool/x"


def test_balancer_proxy_block_is_a_prefix_of_its_urls() -> None:
    c = conf(
        """\
        <Proxy balancer://pool>
            BalancerMember ws://m1:9000/
            Require ip 10.0.0.0/8
        </Proxy>
        ProxyPass /lb/ balancer://pool/
        ProxyPass /other/ ws://elsewhere/
        """
    )
    lb = routing.route(c.scope, "/lb/x", "websocket")
    other = routing.route(c.scope, "/other/x", "websocket")
    assert not is_granted(effective_access(c.scope, "/lb/x", backend_url(lb)), req("192.0.2.1"))
    assert is_granted(effective_access(c.scope, "/lb/x", backend_url(lb)), req("10.0.0.1"))
    assert effective_access(c.scope, "/other/x", backend_url(other)) is None


def test_proxymatch_regex_is_searched_in_the_backend_url() -> None:
    text = '<ProxyMatch "^ws://backend:8080/(admin|ops)">\nRequire all denied\n</ProxyMatch>\n'
    assert not granted(text, req(), url="ws://backend:8080/admin/x")
    assert not granted(text, req(), url="ws://backend:8080/ops")
    assert granted(text, req(), url="ws://backend:8080/chat")
    assert not granted('<Proxy ~ "/internal">\nRequire all denied\n</Proxy>\n', req(), url="ws://b/x/internal/y")


def test_expr_regex_dot_matches_a_newline_as_in_httpd() -> None:
    # a decoded %0a in the path cannot make "." stop short
    rule = 'Require expr "%{REQUEST_URI} =~ m#^/a.b$#"'
    assert granted(rule, req(path="/a\nb"))
    assert not granted('Require expr "%{REQUEST_URI} !~ m#^/a.*#"', req(path="/a\n/x"))
