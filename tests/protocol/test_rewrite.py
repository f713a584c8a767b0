"""protocol/rewrite.py: the rules evaluated over requests, sans-IO."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.sansio import conf
from tunnel.config.model import Scope
from tunnel.errors import BadRequest, InternalServerError, NotFound, TunnelError, UpgradeRequired
from tunnel.protocol import routing
from tunnel.protocol.rewrite import Action, Outcome, RewriteRequest, evaluate, proxy_route, route_proxy

pytestmark = pytest.mark.timeout(30)

WS_HEADERS = (("Host", "proxy.test"), ("Upgrade", "WebSocket"), ("Connection", "keep-alive, Upgrade"))


def scope_of(text: str, vhost: int | None = None) -> Scope:
    config = conf(text)
    return config.scope if vhost is None else config.vhosts[vhost].scope


def run(text: str, target: str = "/", headers: tuple[tuple[str, str], ...] = (("Host", "proxy.test"),), **kw: object) -> Outcome:
    request = RewriteRequest("GET", target, headers, **kw)  # type: ignore[arg-type]
    return evaluate(scope_of("RewriteEngine On\n" + text), request)


RECIPE = """\
RewriteCond %{HTTP:Upgrade} websocket [NC]
RewriteCond %{HTTP:Connection} upgrade [NC]
RewriteRule ^/?(.*) "ws://127.0.0.1:8888/$1" [P,L]
"""


def test_the_recipe_proxies_a_handshake_and_leaves_a_plain_request() -> None:
    out = run(RECIPE, "/chat/room?x=1", WS_HEADERS)
    assert (out.action, out.target) == (Action.PROXY, "ws://127.0.0.1:8888/chat/room?x=1")
    assert out.rule is not None and out.rule.line == 4  # run() puts RewriteEngine On first
    assert run(RECIPE, "/chat/room").action is Action.UNCHANGED


def test_engine_off_runs_nothing() -> None:
    request = RewriteRequest("GET", "/a", (("Host", "h"),))
    assert evaluate(scope_of("RewriteRule ^ - [F]\n"), request).action is Action.UNCHANGED
    assert evaluate(scope_of("RewriteEngine Off\nRewriteRule ^ - [F]\n"), request).action is Action.UNCHANGED


def test_cond_nocase_or_and_negation() -> None:
    rules = "RewriteCond %{HTTP_HOST} ^a\\.test$ [NC,OR]\nRewriteCond %{HTTP_HOST} ^b\\.test$\nRewriteRule ^ - [F]\n"
    assert run(rules, headers=(("Host", "A.TEST"),)).action is Action.FORBIDDEN
    assert run(rules, headers=(("Host", "b.test"),)).action is Action.FORBIDDEN
    assert run(rules, headers=(("Host", "B.TEST"),)).action is Action.UNCHANGED  # no NC on the second
    negated = "RewriteCond %{HTTP:Upgrade} !^websocket$ [NC]\nRewriteRule ^/ws - [F]\n"
    assert run(negated, "/ws").action is Action.FORBIDDEN
    assert run(negated, "/ws", WS_HEADERS).action is Action.UNCHANGED
    case = "RewriteCond %{HTTP:Upgrade} ^websocket$\nRewriteRule ^ - [F]\n"
    assert run(case, "/", WS_HEADERS).action is Action.UNCHANGED  # regex without NC is case-sensitive


def test_or_chain_then_and() -> None:
    rules = (
        "RewriteCond %{REQUEST_METHOD} =POST [OR]\nRewriteCond %{REQUEST_METHOD} =PUT\n"
        "RewriteCond %{HTTPS} =on\nRewriteRule ^ - [F]\n"
    )
    scope = scope_of("RewriteEngine On\n" + rules)
    for method, https, action in [("POST", True, Action.FORBIDDEN), ("PUT", True, Action.FORBIDDEN),
                                  ("PUT", False, Action.UNCHANGED), ("GET", True, Action.UNCHANGED)]:  # fmt: skip
        assert evaluate(scope, RewriteRequest(method, "/", https=https)).action is action, (method, https)


def test_back_references_dollar_and_percent() -> None:
    rules = "RewriteCond %{HTTP_HOST} ^([a-z]+)\\.example$\nRewriteRule ^/app/(.*)$ /%1/$1 [L]\n"
    out = run(rules, "/app/x/y", (("Host", "shop.example"),))
    assert (out.action, out.target) == (Action.PATH, "/shop/x/y")
    # %N come from the last cond whose regex matched, not from a later negated one.
    rules2 = "RewriteCond %{HTTP_HOST} ^(.+)$\nRewriteCond %{HTTPS} !=on\nRewriteRule ^/(.*) /%1-$1-$9\n"
    assert run(rules2, "/p", (("Host", "h"),)).target == "/h-p-"
    # A negated rule pattern leaves no $N.
    assert run("RewriteRule !^/keep(.*) /x$1\n", "/other").target == "/x"


def test_variables() -> None:
    rules = (
        "RewriteRule ^ /%{REQUEST_METHOD}/%{HTTPS}/%{REMOTE_ADDR}/%{SERVER_PORT}/%{HTTP_USER_AGENT}"
        "/%{HTTP_COOKIE}/%{REQUEST_SCHEME}/%{QUERY_STRING} [QSD]\n"
    )
    out = run(
        rules,
        "/p?a=1",
        (("Host", "h:8443"), ("User-Agent", "ua"), ("Cookie", "c=1")),
        remote_addr="10.0.0.1",
        server_port=9999,
        https=True,
    )
    assert out.target == "/GET/on/10.0.0.1/8443/ua/c=1/https/a=1"
    assert run("RewriteRule ^ /%{THE_REQUEST}\n", "/q?z").target == "/GET%20/q?z%20HTTP/1.1"  # the ? splits it, the query is encoded
    assert run("RewriteRule ^ /%{REQUEST_URI}\n", "/a/%7Eb/./c").target == "//a/~b/c"  # decoded, normalised


def test_comparisons() -> None:
    port_8080 = (("Host", "h:8080"),)
    assert run("RewriteCond %{SERVER_PORT} -ge1000\nRewriteRule ^ - [F]\n", headers=port_8080).action is Action.FORBIDDEN
    assert run("RewriteCond %{SERVER_PORT} -lt1000\nRewriteRule ^ - [F]\n", headers=port_8080).action is Action.UNCHANGED
    assert run("RewriteCond %{HTTP_HOST} =H [NC]\nRewriteRule ^ - [F]\n", headers=(("Host", "h"),)).action is Action.FORBIDDEN
    assert run("RewriteCond %{HTTP_HOST} >m\nRewriteRule ^ - [F]\n", headers=(("Host", "z"),)).action is Action.FORBIDDEN


def test_query_handling() -> None:
    assert run("RewriteRule ^/a /b\n", "/a?x=1").target == "/b?x=1"  # kept
    assert run("RewriteRule ^/a /b?y=2\n", "/a?x=1").target == "/b?y=2"  # replaced
    assert run("RewriteRule ^/a /b?y=2 [QSA]\n", "/a?x=1").target == "/b?y=2&x=1"
    assert run("RewriteRule ^/a /b [QSD]\n", "/a?x=1").target == "/b"
    assert run("RewriteRule ^/a /b? \n", "/a?x=1").target == "/b"  # a lone ? empties it
    out = run("RewriteRule ^/(.*) ws://b/$1?t=1 [P,QSA]\n", "/a?x=1")
    assert out.target == "ws://b/a?t=1&x=1"


def test_last_end_and_order() -> None:
    rules = "RewriteRule ^/a /b {flags}\nRewriteRule ^/b /c\n"
    assert run(rules.format(flags=""), "/a").target == "/c"  # the next rule sees the rewritten path
    assert run(rules.format(flags="[L]"), "/a").target == "/b"
    assert run(rules.format(flags="[END]"), "/a").target == "/b"
    assert run("RewriteRule ^/a - [L]\nRewriteRule ^ - [F]\n", "/a").action is Action.UNCHANGED


def test_env_notes() -> None:
    out = run("RewriteRule ^/(.*) - [E=page:$1,E=who:%{REMOTE_ADDR}]\nRewriteRule ^ /%{ENV:page}\n", "/x", remote_addr="1.2.3.4")
    assert out.env == (("page", "x"), ("who", "1.2.3.4"))
    assert out.target == "/x"


def test_redirects() -> None:
    out = run("RewriteRule ^/old/(.*) /new/$1 [R=301,L]\n", "/old/a%20b?q=1", headers=(("Host", "site.test"),))
    assert (out.action, out.status, out.target) == (Action.REDIRECT, 301, "http://site.test/new/a%20b?q=1")
    ne = run("RewriteRule ^/old/(.*) /new/$1 [R,NE]\n", "/old/a%23b", headers=(("Host", "h"),), https=True)
    assert (ne.status, ne.target) == (302, "https://h/new/a#b")
    away = run("RewriteRule ^/(.*) http://elsewhere.test/$1\n", "/x")
    assert (away.action, away.status, away.target) == (Action.REDIRECT, 302, "http://elsewhere.test/x")
    # An absolute URL naming this host is reduced to its path (no redirect).
    here = run("RewriteRule ^/(.*) http://proxy.test/in/$1\n", "/x")
    assert (here.action, here.target) == (Action.PATH, "/in/x")


def test_forbidden_and_gone() -> None:
    assert run("RewriteRule ^/f - [F]\n", "/f").action is Action.FORBIDDEN
    assert run("RewriteRule ^/g - [G]\n", "/g").action is Action.GONE
    assert run("RewriteRule ^/F - [F,NC]\n", "/f").action is Action.FORBIDDEN


def test_inherit_and_vhost_versus_server() -> None:
    text = """\
        RewriteEngine On
        RewriteRule ^/main - [F]
        RewriteRule ^/both /from-main
        <VirtualHost *:80>
            {option}
            RewriteRule ^/both /from-vhost
        </VirtualHost>
        """
    request = RewriteRequest("GET", "/main")
    both = RewriteRequest("GET", "/both")
    plain = scope_of(text.format(option=""), vhost=0)
    assert evaluate(plain, request).action is Action.UNCHANGED  # no inheritance without the option
    inherit = scope_of(text.format(option="RewriteOptions Inherit"), vhost=0)
    assert evaluate(inherit, request).action is Action.FORBIDDEN
    assert evaluate(inherit, both).target == "/from-vhost"  # the vhost's own rule runs first
    before = scope_of(text.format(option="RewriteOptions InheritBefore"), vhost=0)
    assert evaluate(before, both).target == "/from-main"  # main's ran first; the vhost's no longer matches
    server = scope_of(text.format(option=""))
    assert evaluate(server, both).target == "/from-main"


def test_bad_targets() -> None:
    with pytest.raises(NotFound):
        run("RewriteRule ^ - [F]\n", "/a%2Fb")  # the path is refused as routing refuses it
    with pytest.raises(BadRequest):  # httpd: a local result not starting with / is a 400
        run("RewriteRule ^ %{HTTP:X-Path}\n", "/a", (("X-Path", "relative"),))


def test_proxy_route_builds_a_one_off_proxypass() -> None:
    config = conf("<Proxy balancer://pool>\nBalancerMember ws://m:81/\n</Proxy>\nRewriteEngine On\nRewriteRule ^ - [F]\n")
    (rule,) = config.scope.rewrite_rules
    one_off, target = proxy_route("ws://b:9/x/a b?q=1", rule, config.balancers)
    assert one_off.target is not None and str(one_off.target) == "ws://b:9/" and target == "/x/a%20b?q=1"
    decision = routing.route(Scope(rules=(one_off,)), target, "websocket")
    assert decision.tunnel and decision.backend_path == "/x/a%20b?q=1"
    plain = routing.route(Scope(rules=(one_off,)), target, None)
    assert not plain.tunnel and plain.target is not None and plain.target.scheme == "http"
    pooled, _ = proxy_route("balancer://pool/y", rule, config.balancers)
    assert (pooled.balancer, pooled.balancer_scheme) == ("pool", "ws")
    with pytest.raises(InternalServerError):
        proxy_route("balancer://none/y", rule, config.balancers)
    with pytest.raises(InternalServerError):
        proxy_route("ftp://b/", rule, config.balancers)


def test_noescape_on_a_proxy_forwards_the_raw_path() -> None:
    config = conf("RewriteEngine On\nRewriteRule ^/(.*) ws://b/$1 [P,NE]\n")
    (rule,) = config.scope.rewrite_rules
    one_off, target = proxy_route("ws://b/a%7Eb", rule, config.balancers)
    assert one_off.nocanon
    assert routing.route(Scope(rules=(one_off,)), target, "websocket").backend_path == "/a%7Eb"  # raw
    plain = conf("RewriteEngine On\nRewriteRule ^/(.*) ws://b/$1 [P]\n")
    canon, _ = proxy_route("ws://b/a%7Eb", plain.scope.rewrite_rules[0], plain.balancers)
    assert routing.route(Scope(rules=(canon,)), target, "websocket").backend_path == "/a~b"  # canonical


def test_connect_and_asterisk_are_left_to_routing() -> None:
    scope = scope_of("RewriteEngine On\nRewriteRule ^ - [F]\n")
    assert evaluate(scope, RewriteRequest("CONNECT", "example.test:443")).action is Action.UNCHANGED
    assert evaluate(scope, RewriteRequest("OPTIONS", "*")).action is Action.UNCHANGED


def test_a_query_change_alone_is_a_new_target() -> None:
    out = run("RewriteRule ^/a - [QSD]\nRewriteRule ^/z /y\n", "/a?x=1")
    assert (out.action, out.target) == (Action.PATH, "/a")
    assert run("RewriteRule ^/a - [QSD]\n", "/a").action is Action.UNCHANGED


@given(
    target=st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=30).map(lambda t: "/" + t),
    host=st.text(max_size=10),
)
@settings(max_examples=200, deadline=None)
def test_any_request_gets_an_outcome_or_a_tunnel_error(target: str, host: str) -> None:
    scope = scope_of(
        "RewriteEngine On\n"
        "RewriteCond %{HTTP_HOST} ^(.*)$\n"
        "RewriteRule ^/(a.*) /%1/$1?q [QSA]\n"
        "RewriteRule ^/(b.*) http://%{HTTP_HOST}/$1 [R]\n"
        "RewriteRule ^/(.*) ws://b/$1 [P]\n"
    )
    try:
        out = evaluate(scope, RewriteRequest("GET", target, (("Host", host),)))
    except TunnelError:
        return
    assert isinstance(out, Outcome)
    if out.action is Action.PROXY:
        assert out.rule is not None
        try:
            one_off, raw = proxy_route(out.target, out.rule, {})
        except TunnelError:
            return
        assert raw.startswith("/") and one_off.target is not None


def test_route_proxy_under_fallback_off_answers_426_without_upgrade() -> None:
    config = conf("RewriteEngine On\nProxyWebsocketFallbackToProxyHttp {}\nRewriteRule ^/(.*) ws://b/$1 [P]\n".format("Off"))
    scope = config.scope
    one_off, target = proxy_route("ws://b/x", scope.rewrite_rules[0], config.balancers)
    with pytest.raises(UpgradeRequired) as info:
        route_proxy(scope, one_off, target, "/x", None, "GET")
    assert ("Upgrade", "WebSocket") in info.value.headers
    assert route_proxy(scope, one_off, target, "/x", "websocket", "GET").tunnel
    with pytest.raises(UpgradeRequired):
        route_proxy(scope, one_off, target, "/x", "h2c", "GET")
    on = dataclasses.replace(scope, fallback_to_proxy_http=True)
    plain = route_proxy(on, one_off, target, "/x", None, "GET")
    assert not plain.tunnel and plain.target is not None and plain.target.scheme == "http"
    # The <Location> settings of the client's path apply, not those of the backend path.
    located = conf(
        "ProxyWebsocketFallbackToProxyHttp Off\n<Location /open/>\nProxyWebsocketFallbackToProxyHttp On\n</Location>\n"
    ).scope
    assert not route_proxy(located, one_off, target, "/open/x", None, "GET").tunnel


def test_server_name_and_port_follow_the_host_header() -> None:
    rule = "RewriteRule ^ /%{SERVER_NAME}/%{SERVER_PORT}\n"
    assert run(rule, "/", (("Host", "Site.Test:8080"),)).target == "/site.test/8080"
    assert run(rule, "/", (("Host", "site.test"),), https=True).target == "/site.test/443"
    assert run(rule, "/", (("Host", "[::1]:81"),)).target == "/%5B::1%5D/81"
    assert run(rule, "/", (), server_name="conf.test", server_port=8000).target == "/conf.test/8000"
    # An absolute URL naming this host and port is reduced to its path; another port redirects.
    assert run("RewriteRule ^/(.*) http://site.test:8080/in/$1\n", "/x", (("Host", "site.test:8080"),)).target == "/in/x"
    other = run("RewriteRule ^/(.*) http://site.test:9090/in/$1\n", "/x", (("Host", "site.test:8080"),))
    assert other.action is Action.REDIRECT
    assert run("RewriteRule ^/(.*) https://site.test/$1\n", "/x", (("Host", "site.test"),), https=True).target == "/x"


def test_a_dynamic_proxy_substitution_that_is_not_a_url_is_a_500() -> None:
    with pytest.raises(InternalServerError):
        run("RewriteRule ^/(.*) %{HTTP:X-To}/$1 [P]\n", "/a", (("X-To", "/local"),))
    out = run("RewriteRule ^/(.*) %{HTTP:X-To}/$1 [P]\n", "/a", (("X-To", "ws://b"),))
    assert (out.action, out.target) == (Action.PROXY, "ws://b/a")


def test_a_redirect_with_a_control_character_is_refused_not_sent() -> None:
    # [NE] leaves the decoded path as it is: CR/LF from %0d%0a would split the answer
    with pytest.raises(InternalServerError):
        run("RewriteRule ^/r/(.*) http://x.example/$1 [R,NE]\n", "/r/%0d%0aSet-Cookie:x")
    with pytest.raises(InternalServerError):  # the host part is never escaped
        run("RewriteRule ^/go/(.*) http://$1 [R]\n", "/go/a%0d%0aSet-Cookie:x")
    # escaped (no [NE]): the same input is a harmless Location
    out = run("RewriteRule ^/r/(.*) http://x.example/$1 [R]\n", "/r/%0d%0aSet-Cookie:x")
    assert out.target == "http://x.example/%0D%0ASet-Cookie:x"
    # bytes above 0x7f are %-encoded even under [NE]: a header value is ASCII
    out = run("RewriteRule ^/h http://x.example/%{HTTP:X-To} [R,NE]\n", "/h", (("Host", "p"), ("X-To", "a\x80b")))
    assert out.target == "http://x.example/a%80b"


def test_dot_matches_a_newline_as_in_httpd() -> None:
    out = run("RewriteRule ^/e/(.*)$ - [E=WHO:$1]\n", "/e/a%0ab")
    assert dict(out.env) == {"WHO": "a\nb"}
    out = run("RewriteCond %{HTTP:X} ^(.*)$\nRewriteRule ^ - [E=X:%1]\n", "/", (("Host", "p"), ("X", "a")))
    assert dict(out.env) == {"X": "a"}


def test_a_proxy_route_keeps_the_clients_path_for_access() -> None:
    scope = scope_of("RewriteEngine On\nRewriteRule ^/(.*) ws://b/app/$1 [P]\n")
    (rule,) = scope.rewrite_rules
    one_off, target = proxy_route("ws://b/app/admin", rule, {})
    decision = route_proxy(scope, one_off, target, "/x/../%61dmin", "websocket", "GET")
    assert decision.backend_path == "/app/admin" and decision.local_path == "/admin"


def test_a_proxy_url_with_dot_segments_is_forwarded_as_made() -> None:
    scope = scope_of("RewriteEngine On\nRewriteRule ^/(.*) ws://b/app/$1 [P]\n")
    (rule,) = scope.rewrite_rules
    out = evaluate(scope, RewriteRequest("GET", "/%252e%252e/admin?q=1", (("Host", "p"),)))
    one_off, target = proxy_route(out.target, rule, {})
    decision = route_proxy(scope, one_off, target, "/%252e%252e/admin?q=1", "websocket", "GET")
    assert decision.backend_path == "/app/%2e%2e/admin?q=1"  # not /admin?q=1
    plain = route_proxy(scope, one_off, "/app/a%7Eb", "/a", "websocket", "GET")
    assert plain.backend_path == "/app/a~b"  # no dot-segment: canonical as before
