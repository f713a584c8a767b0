"""Access-control directives: each provider and section, AuthMerging, <Proxy URL>, and
every error with its file and line."""

from __future__ import annotations

import ipaddress
import textwrap

import pytest

from tunnel.config.model import BoolOp, Compare, Config, Const, Not, Regex, Require, RequireSection, Var
from tunnel.errors import ConfigError


def conf(text: str) -> Config:
    return Config.from_text(textwrap.dedent(text), filename="t.conf")


def root(text: str) -> RequireSection:
    rules = conf(text).scope.access
    assert rules is not None
    return rules.root


def test_no_require_anywhere_means_no_rules() -> None:
    c = conf("ProxyPass / ws://b/\n<Location /x>\nProxyWebsocketAsync On\n</Location>\n")
    assert c.scope.access is None and c.scope.proxy_access == ()
    assert all(loc.access is None for loc in c.scope.locations)


def test_require_all_ip_local_method_and_not() -> None:
    r = root(
        """\
        Require all granted
        Require all denied
        Require ip 10.0.0.0/8 192.168.1.7 10.0.0.0/255.0.0.0 10.1 172.16. 2001:db8::/32 ::1
        Require local
        Require not ip 10.9.9.9
        Require method get POST
        """
    )
    assert r.op == "any" and not r.negate and len(r.children) == 6
    granted, denied, ip, local, negated, method = r.children
    assert isinstance(granted, Require) and granted.provider == "all" and granted.granted
    assert isinstance(denied, Require) and not denied.granted
    assert isinstance(ip, Require) and [str(n) for n in ip.networks] == [
        "10.0.0.0/8",
        "192.168.1.7/32",
        "10.0.0.0/8",
        "10.1.0.0/16",
        "172.16.0.0/16",
        "2001:db8::/32",
        "::1/128",
    ]
    assert isinstance(local, Require) and local.provider == "local"
    assert isinstance(negated, Require) and negated.negate and negated.networks == (ipaddress.ip_network("10.9.9.9"),)
    assert isinstance(method, Require) and method.methods == ("GET", "POST")
    assert (granted.file, granted.line, ip.line) == ("t.conf", 1, 3)


def test_sections_nest() -> None:
    r = root(
        """\
        <RequireAll>
            Require ip 10.0.0.0/8
            <RequireNone>
                Require ip 10.1.0.0/16
            </RequireNone>
            <RequireAny>
                Require method GET
                Require local
            </RequireAny>
        </RequireAll>
        """
    )
    (all_,) = r.children
    assert isinstance(all_, RequireSection) and all_.name == "RequireAll" and all_.line == 1
    ip, none, any_ = all_.children
    assert isinstance(none, RequireSection) and none.name == "RequireNone" and none.negate and none.op == "any"
    assert isinstance(any_, RequireSection) and any_.name == "RequireAny" and len(any_.children) == 2


def test_expr_forms() -> None:
    r = root(
        """\
        Require expr "%{HTTP:Origin} == 'https://app.example'"
        Require expr %{HTTP:Origin} != 'x' && %{REQUEST_URI} =~ /^\\/chat/ || ! (%{HTTP_HOST} !~ m#a\\.b#i)
        Require expr "%{REMOTE_ADDR} -ipmatch '10.0.0.0/8' && %{QUERY_STRING} -strmatch 'k=*'"
        Require expr true
        Require expr "false || %{HTTPS} == 'on' && %{REQUEST_METHOD} = 'GET'"
        """
    )
    e1, e2, e3, e4, e5 = (c.expr for c in r.children if isinstance(c, Require))
    assert e1 == Compare("==", (Var("HTTP:Origin"),), ("https://app.example",))
    # || binds loosest, && tighter, ! tightest
    assert isinstance(e2, BoolOp) and e2.op == "||"
    assert isinstance(e2.left, BoolOp) and e2.left.op == "&&"
    assert isinstance(e2.left.right, Compare) and isinstance(e2.left.right.right, Regex)
    assert e2.left.right.right.source == "^\\/chat/"[:-1] or e2.left.right.right.pattern.search("/chat")
    assert isinstance(e2.right, Not) and isinstance(e2.right.operand, Compare) and e2.right.operand.op == "!~"
    assert isinstance(e2.right.operand.right, Regex) and e2.right.operand.right.pattern.search("A.B")
    assert isinstance(e3, BoolOp) and isinstance(e3.left, Compare) and e3.left.op == "-ipmatch"
    assert e4 == Const(True)
    assert isinstance(e5, BoolOp) and e5.op == "||" and e5.left == Const(False)


def test_string_interpolation() -> None:
    r = root("Require expr \"%{HTTP:Origin} == 'https://%{HTTP_HOST}'\"\n")
    (req,) = r.children
    assert isinstance(req, Require) and req.expr == Compare("==", (Var("HTTP:Origin"),), ("https://", Var("HTTP_HOST")))


def test_contexts_location_vhost_proxy() -> None:
    c = conf(
        """\
        Require all granted
        <Location /admin>
            Require all denied
        </Location>
        <LocationMatch "^/re">
            Require local
        </LocationMatch>
        <Proxy "ws://backend:8080/*">
            Require ip 127.0.0.1
            AuthMerging And
        </Proxy>
        <Proxy *>
            Require all granted
        </Proxy>
        <VirtualHost *:80>
            ServerName v.test
            Require ip 10.0.0.0/8
            AuthMerging Or
            <Proxy "balancer://x">
                BalancerMember ws://m/
            </Proxy>
            <Proxy "ws://only-v/">
                Require all denied
            </Proxy>
        </VirtualHost>
        """
    )
    assert c.scope.access is not None and c.scope.access.merging == "off"
    admin, regex = c.scope.locations
    assert admin.access is not None and admin.settings == () and admin.access.root.children[0] == Require(
        "all", text="Require all denied", file="t.conf", line=3
    )
    assert regex.is_regex and regex.access is not None
    assert [(p.pattern, p.rules.merging, p.line) for p in c.scope.proxy_access] == [
        ("ws://backend:8080/*", "and", 8),
        ("*", "off", 12),
    ]
    (v,) = c.vhosts
    # the vhost's rules are joined to the server's by AuthMerging Or
    assert v.scope.access is not None and v.scope.access.merging == "or"
    assert v.scope.access.root.op == "any" and len(v.scope.access.root.children) == 2
    assert [p.pattern for p in v.scope.proxy_access] == ["ws://backend:8080/*", "*", "ws://only-v/"]
    assert "x" in c.balancers


def test_vhost_without_require_inherits_and_off_replaces() -> None:
    c = conf(
        """\
        Require ip 10.0.0.0/8
        <VirtualHost *:80>
            ServerName a.test
        </VirtualHost>
        <VirtualHost *:80>
            ServerName b.test
            Require all granted
        </VirtualHost>
        """
    )
    a, b = c.vhosts
    assert a.scope.access == c.scope.access
    assert b.scope.access is not None and b.scope.access.root.children[0] == Require(
        "all", text="Require all granted", granted=True, file="t.conf", line=7
    )


def test_other_directives_in_proxy_url_warn() -> None:
    c = conf('<Proxy "ws://b/">\n  ProxySet timeout=1\n  Require all denied\n</Proxy>\n')
    assert c.warnings == ("t.conf:2: ProxySet is not used by tunnel in <Proxy URL>; ignored",)
    assert len(c.scope.proxy_access) == 1


def test_proxy_url_without_require_holds_nothing() -> None:
    c = conf('<Proxy "*">\n  ProxySet timeout=1\n</Proxy>\n')
    assert c.scope.proxy_access == ()


ERRORS = [
    ("Require user bob", 1, 'Require user: not supported by tunnel (tunnel does no authentication)'),
    ("Require valid-user", 1, "Require valid-user: not supported"),
    ("Require group admins", 1, "Require group: not supported"),
    ("Require env LETMEIN", 1, "Require env: not supported by tunnel (write Require expr"),
    ("Require host example.org", 1, "Require host: not supported by tunnel (needs reverse DNS"),
    ("Require forward-dns example.org", 1, "Require forward-dns: not supported"),
    ("Require ldap-group cn=x", 1, 'unknown or unsupported provider "ldap-group"'),
    ("Require", 1, "expected [not] provider"),
    ("Require not", 1, "expected [not] provider"),
    ("Require all", 1, "Require all: expected granted or denied"),
    ("Require all maybe", 1, "Require all: expected granted or denied"),
    ("Require ip", 1, "expected one or more addresses"),
    ("Require ip 10.0.0.0/33", 1, "not an IP address, network or partial address: '10.0.0.0/33'"),
    ("Require ip 300.1", 1, "not an IP address"),
    ("Require ip example.org", 1, "not an IP address"),
    ("Require local yes", 1, "Require local takes no arguments"),
    ("Require method", 1, "Require method: expected one or more method names"),
    ("\n\nRequire expr", 3, "Require expr: expected an expression"),
    ("Require expr \"%{HTTP:Origin} == \"", 1, "expected a string or %{VARIABLE}"),
    ("Require expr \"%{HTTP:Origin} 'x'\"", 1, "expected a comparison operator"),
    ("Require expr \"%{NOPE} == 'x'\"", 1, "unknown variable %{NOPE}"),
    ("Require expr \"%{REMOTE_ADDR} =~ /(/\"", 1, "bad regular expression"),
    ("Require expr \"%{REMOTE_ADDR} =~ /a/x\"", 1, "unknown regex flag"),
    ("Require expr \"%{REMOTE_ADDR} =~ /a\"", 1, "unterminated regular expression"),
    ("Require expr \"%{REMOTE_ADDR} == 'a\"", 1, "unterminated string"),
    ("Require expr \"(true\"", 1, "expected )"),
    ("Require expr \"true true\"", 1, "unexpected 'true'"),
    ("Require expr \"%{REMOTE_ADDR} -ipmatch 'nope'\"", 1, "not an IP address"),
    ("Require expr \"%{REMOTE_ADDR} -eq 5\"", 1, "expected a comparison operator"),
    ("Require expr \"true && $\"", 1, "unexpected character"),
    ("ProxyPass / ws://b/\nRequire not ip 10.0.0.1", 2, "the Require lines from t.conf:2 contain(s) only negative"),
    ("<Location /x>\nRequire not ip 10.0.0.1\n</Location>", 3, "only negative authorization directives"),
    ("<RequireAll>\nRequire not ip 10.0.0.1\n</RequireAll>", 3, "<RequireAll> (opened at t.conf:1) contain(s) only negative"),
    ("<RequireNone>\nRequire ip 10.0.0.1\n</RequireNone>", 1, "only negative"),
    ("<RequireAny>\n</RequireAny>", 2, "<RequireAny> contains no authorization directives"),
    ("<RequireAll x>\nRequire all granted\n</RequireAll>", 1, "<RequireAll>: takes no arguments"),
    ("<RequireAll>\nProxyPass /x ws://b/\n</RequireAll>", 2, "not allowed in <RequireAll|Any|None>"),
    ("<RequireAll>\nAuthMerging And\n</RequireAll>", 2, "AuthMerging: not allowed in <RequireAll|Any|None>"),
    ("AuthMerging Sometimes", 1, "AuthMerging: expected Off, And or Or"),
    ("Allow from 10.0.0.1", 1, "Allow from 10.0.0.1: httpd 2.2 access control (mod_access_compat) that restricts access is not supported: write it as Require ip"),
    ("Deny from 10.0.0.1", 1, "Deny from 10.0.0.1: httpd 2.2 access control"),
    ("Deny from all", 1, "write it as Require not ip ADDRESS... inside <RequireAll>, or Require all denied"),
    ("<Proxy>\n</Proxy>", 1, "expected a URL or balancer://name"),
    ("<Proxy *>\n    Order deny,allow\n    Deny from 10.0.0.1\n</Proxy>", 3, "Deny from 10.0.0.1: httpd 2.2 access control"),
]


@pytest.mark.parametrize(("text", "line", "message"), ERRORS)
def test_errors_name_file_line_and_what(text: str, line: int, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        conf(text + "\n")
    err = info.value
    assert (err.file, err.line) == ("t.conf", line), str(err)
    assert message in err.message, err.message


def test_require_none_inside_require_all_is_fine() -> None:
    """httpd flattens a <RequireNone> inside a <RequireAll> (De Morgan): its children
    become negated members, so a positive sibling is needed, and enough."""
    r = root("<RequireAll>\nRequire all granted\n<RequireNone>\nRequire ip 10.0.0.1\n</RequireNone>\n</RequireAll>\n")
    assert len(r.children) == 1
    with pytest.raises(ConfigError, match="only negative"):
        conf("<RequireAll>\n<RequireNone>\nRequire ip 10.0.0.1\n</RequireNone>\n</RequireAll>\n")


def test_require_in_a_balancer_proxy_block_applies_to_its_urls() -> None:
    c = conf(
        """\
        <Proxy balancer://cluster>
            BalancerMember ws://m1:9000/
            Require ip 10.0.0.0/8
        </Proxy>
        ProxyPass /lb/ balancer://cluster/
        """
    )
    (block,) = c.scope.proxy_access
    assert (block.pattern, block.line) == ("balancer://cluster", 1)
    assert len(c.balancers["cluster"].members) == 1


def test_proxymatch_and_proxy_tilde_hold_regex_rules() -> None:
    c = conf(
        """\
        <ProxyMatch "^ws://[^/]+/admin">
            Require all denied
        </ProxyMatch>
        <Proxy ~ "internal$">
            Require local
        </Proxy>
        <ProxyMatch "^ws://">
            ProxySet timeout=1
        </ProxyMatch>
        """
    )
    first, second = c.scope.proxy_access
    assert first.pattern == "^ws://[^/]+/admin" and first.regex is not None and first.line == 1
    assert second.pattern == "internal$" and second.regex is not None
    assert c.warnings == ("t.conf:8: ProxySet is not used by tunnel in <Proxy URL>; ignored",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('<ProxyMatch "(">\nRequire all denied\n</ProxyMatch>', "regular expression"),
        ("<ProxyMatch>\n</ProxyMatch>", "expected a regular expression"),
    ],
)
def test_proxymatch_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        conf(text + "\n")
    assert info.value.line == 1 and message in info.value.message, info.value.message


def test_granting_compat_lines_load_with_a_warning_each() -> None:
    """The httpd 2.2 lines published WebSocket recipes carry, which grant every client."""
    c = conf("<Proxy *>\n    Order deny,allow\n    Allow from all\n    Satisfy Any\n</Proxy>\nOrder allow,deny\nAllow from All\n")
    assert [w.split(": ", 1)[0] for w in c.warnings] == ["t.conf:2", "t.conf:3", "t.conf:4", "t.conf:6", "t.conf:7"]
    assert "Allow from all grants every client" in c.warnings[1]


def test_a_limit_section_in_a_proxy_block_is_skipped_with_a_warning() -> None:
    c = conf("<Proxy *>\n    <Limit GET>\n        Require all granted\n    </Limit>\n</Proxy>\n")
    assert any(w.startswith("t.conf:2: <Limit> section is not used by tunnel; skipped") for w in c.warnings), c.warnings


@pytest.mark.parametrize("spec", ["::ffff:127.0.0.1", "::ffff:10.0.0.0/104", "::ffff:0:0/96"])
def test_ipv4_mapped_networks_are_refused_as_apr_does(spec: str) -> None:
    # they could never match: a mapped peer is compared with IPv4 networks only
    with pytest.raises(ConfigError, match="IPv4-mapped"):
        conf(f"Require ip {spec}\n")
    with pytest.raises(ConfigError, match="IPv4-mapped"):
        conf(f"Require expr \"%{{REMOTE_ADDR}} -ipmatch '{spec}'\"\n")
