"""config/rewrite.py: the mod_rewrite directives, every flag and every refusal (with the
file and line of the directive)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.sansio import conf
from tunnel.config import parse
from tunnel.config.model import RewriteRule
from tunnel.errors import ConfigError

pytestmark = pytest.mark.timeout(30)


def rules(text: str) -> tuple[RewriteRule, ...]:
    return conf(text).scope.rewrite_rules


def fails(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        conf(text)
    return info.value


def test_the_classic_recipe() -> None:
    config = conf(
        """\
        RewriteEngine On
        RewriteCond %{HTTP:Upgrade} websocket [NC]
        RewriteCond %{HTTP:Connection} upgrade [NC]
        RewriteRule ^/?(.*) "ws://127.0.0.1:8888/$1" [P,L]
        ProxyPass / http://127.0.0.1:8888/
        """
    )
    assert config.scope.rewrite_engine
    (rule,) = config.scope.rewrite_rules
    assert rule.pattern == "^/?(.*)" and rule.substitution == "ws://127.0.0.1:8888/$1"
    assert rule.proxy and rule.last and (rule.file, rule.line) == ("t.conf", 4)
    assert [(c.test, c.pattern, c.nocase, c.line) for c in rule.conds] == [
        ("%{HTTP:Upgrade}", "websocket", True, 2),
        ("%{HTTP:Connection}", "upgrade", True, 3),
    ]
    assert rule.conds[0].regex is not None and rule.conds[0].regex.search("WebSocket")


def test_engine_defaults_off_and_conds_belong_to_the_next_rule_only() -> None:
    config = conf("RewriteCond %{HTTPS} on\nRewriteRule ^/a /b\nRewriteRule ^/c /d\n")
    assert not config.scope.rewrite_engine
    first, second = config.scope.rewrite_rules
    assert len(first.conds) == 1 and second.conds == ()


@pytest.mark.parametrize(
    "flags, expected",
    [
        ("[P]", {"proxy": True}),
        ("[proxy]", {"proxy": True}),
        ("[L]", {"last": True}),
        ("[last]", {"last": True}),
        ("[END]", {"end": True}),
        ("[NC]", {"nocase": True}),
        ("[nocase]", {"nocase": True}),
        ("[QSA]", {"qsa": True}),
        ("[qsappend]", {"qsa": True}),
        ("[QSD]", {"qsd": True}),
        ("[qsdiscard]", {"qsd": True}),
        ("[NE]", {"noescape": True}),
        ("[noescape]", {"noescape": True}),
        ("[PT]", {"passthrough": True}),
        ("[passthrough]", {"passthrough": True}),
        ("[R]", {"redirect": 302}),
        ("[R=301]", {"redirect": 301}),
        ("[redirect=permanent]", {"redirect": 301}),
        ("[R=seeother]", {"redirect": 303}),
        ("[R=308,L]", {"redirect": 308, "last": True}),
        ("[F]", {"forbidden": True}),
        ("[forbidden]", {"forbidden": True}),
        ("[G]", {"gone": True}),
        ("[gone]", {"gone": True}),
        ("[E=who:%{REMOTE_ADDR}]", {"env": (("who", "%{REMOTE_ADDR}"),)}),
        ("[env=a:1,E=b:2]", {"env": (("a", "1"), ("b", "2"))}),
        ("[NS]", {}),
        ("[nc,l]", {"nocase": True, "last": True}),
    ],
)
def test_rule_flags(flags: str, expected: dict[str, object]) -> None:
    substitution = "ws://b/" if "p" in flags.lower() and "pt" not in flags.lower() else "/x"
    (rule,) = rules(f"RewriteRule ^/a {substitution} {flags}\n")
    for name, value in expected.items():
        assert getattr(rule, name) == value, name


def test_nocase_compiles_the_pattern_without_case() -> None:
    (rule,) = rules("RewriteRule ^/Chat /x [NC]\n")
    assert rule.regex is not None and rule.regex.search("/CHAT")
    (neg,) = rules("RewriteRule !^/chat /x\n")
    assert neg.negate and neg.pattern == "^/chat"


@pytest.mark.parametrize(
    "pattern, kind, value, negate",
    [
        ("websocket", "regex", "websocket", False),
        ("!^$", "regex", "^$", True),
        ("=on", "=", "on", False),
        ('=""', "=", "", False),
        ("!=on", "=", "on", True),
        (">b", ">", "b", False),
        ("<b", "<", "b", False),
        (">=b", ">=", "b", False),
        ("<=b", "<=", "b", False),
        ("-eq443", "-eq", "443", False),
        ("-ge10", "-ge", "10", False),
        ("!-lt5", "-lt", "5", True),
    ],
)
def test_cond_patterns(pattern: str, kind: str, value: str, negate: bool) -> None:
    (rule,) = rules(f"RewriteCond %{{SERVER_PORT}} {pattern}\nRewriteRule ^ -\n")
    (cond,) = rule.conds
    assert (cond.kind, cond.pattern, cond.negate) == (kind, value, negate)


def test_cond_flags() -> None:
    (rule,) = rules("RewriteCond %{HTTP_HOST} a [NC,OR]\nRewriteCond %{HTTP_HOST} b [ornext,NV]\nRewriteRule ^ -\n")
    assert [(c.nocase, c.ornext) for c in rule.conds] == [(True, True), (False, True)]


@pytest.mark.parametrize(
    "variable",
    [
        "HTTP:Upgrade", "HTTP_HOST", "REQUEST_URI", "QUERY_STRING", "REQUEST_METHOD", "HTTPS", "REMOTE_ADDR",
        "SERVER_PORT", "THE_REQUEST", "HTTP_USER_AGENT", "HTTP_COOKIE", "HTTP_REFERER", "HTTP_ACCEPT", "ENV:x",
        "REQUEST_SCHEME", "SERVER_NAME", "REMOTE_PORT", "SERVER_PROTOCOL",
    ],
)  # fmt: skip
def test_known_variables(variable: str) -> None:
    (rule,) = rules(f"RewriteCond %{{{variable}}} x\nRewriteRule ^ /%{{{variable}}}\n")
    assert rule.conds[0].test == f"%{{{variable}}}"


def test_rewrite_options_inherit_in_a_vhost() -> None:
    text = """\
        RewriteEngine On
        RewriteRule ^/main /m
        <VirtualHost *:80>
            RewriteOptions {option}
            RewriteRule ^/own /o
        </VirtualHost>
        <VirtualHost *:81>
            RewriteRule ^/alone /a
        </VirtualHost>
        """
    inherit = conf(text.format(option="Inherit"))
    assert [r.pattern for r in inherit.vhosts[0].scope.rewrite_rules] == ["^/own", "^/main"]
    assert [r.pattern for r in inherit.vhosts[1].scope.rewrite_rules] == ["^/alone"]
    assert inherit.vhosts[1].scope.rewrite_engine  # the engine state is inherited (httpd 2.4)
    before = conf(text.format(option="InheritBefore"))
    assert [r.pattern for r in before.vhosts[0].scope.rewrite_rules] == ["^/main", "^/own"]
    assert [r.pattern for r in before.scope.rewrite_rules] == ["^/main"]


def test_a_vhost_can_turn_the_engine_off() -> None:
    config = conf("RewriteEngine On\n<VirtualHost *:80>\nRewriteEngine Off\n</VirtualHost>\n")
    assert config.scope.rewrite_engine and not config.vhosts[0].scope.rewrite_engine


def test_literal_tls_and_balancer_targets_are_checked_at_load() -> None:
    ok = conf(
        "SSLProxyEngine On\nRewriteRule ^/(.*) wss://b/$1 [P]\n"
        "<Proxy balancer://pool>\nBalancerMember ws://m/\n</Proxy>\nRewriteRule ^/(.*) balancer://pool/$1 [P]\n"
    )
    assert len(ok.scope.rewrite_rules) == 2
    # Dynamic schemes are checked per request.
    assert rules("RewriteRule ^/(.*) %{HTTP:X-Scheme}://b/$1 [P]\n")[0].proxy


ERRORS = [
    ("RewriteRule ^/ wss://b/ [P]", 1, "RewriteRule: [P] to wss:// needs SSLProxyEngine On"),
    ("\n<VirtualHost *:80>\nRewriteRule ^/ https://b/ [P]\n</VirtualHost>", 3, "needs SSLProxyEngine On (in <VirtualHost>"),
    ("RewriteRule ^/ balancer://nope/ [P]", 1, "RewriteRule: balancer://nope is not defined"),
    (
        "<Proxy balancer://t>\nBalancerMember wss://m/\n</Proxy>\nSSLProxyEngine Off\nRewriteRule ^/ balancer://t/ [P]",
        5,
        "RewriteRule: balancer://t has TLS members and needs SSLProxyEngine On (in the server context)",
    ),
    ("RewriteRule ^/ /x [C]", 1, 'RewriteRule: the RewriteRule flag "C" (chaining) is not supported'),
    ("RewriteRule ^/ /x [N]", 1, '"N" (re-running the rules) is not supported'),
    ("RewriteRule ^/ /x [S=2]", 1, '"S=2" (skipping rules) is not supported'),
    ("RewriteRule ^/ /x [T=text/plain]", 1, "MIME types"),
    ("RewriteRule ^/ /x [H=foo]", 1, "handlers"),
    ("RewriteRule ^/ /x [B]", 1, "escaping back-references"),
    ("RewriteRule ^/ /x [CO=a:b:c]", 1, "setting cookies"),
    ("RewriteRule ^/ /x [DPI]", 1, "per-directory path info"),
    ("RewriteRule ^/ /x [QSL]", 1, "query split"),
    ("RewriteRule ^/ /x [Bogus]", 1, 'unknown or unsupported RewriteRule flag "Bogus"'),
    ("RewriteRule ^/ /x [L=1]", 1, 'unknown or unsupported RewriteRule flag "L=1"'),
    ("RewriteRule ^/ /x [R=404]", 1, 'expected R=3xx (or permanent, temp, seeother), got "R=404"'),
    ("RewriteRule ^/ /x [R=abc]", 1, "R=3xx"),
    ("RewriteRule ^/ /x [R=3²²]", 1, "R=3xx"),  # digits to str.isdigit, not to int()
    ("RewriteRule ^/ /x [E=novalue]", 1, "E=VAR:value"),
    ("RewriteRule ^/ /x [E=!VAR]", 1, "unsetting with E=!VAR is not supported"),
    ("RewriteRule ^/ /x L", 1, 'expected [flags] as the last argument, got "L"'),
    ("RewriteRule ^/ ws://b/ [P,R]", 1, "[P] cannot be combined with [R], [F] or [G]"),
    ("RewriteRule ^/ - [P]", 1, "[P] needs a substitution URL, not -"),
    ("RewriteRule ^/ /local [P]", 1, "[P] to a ws://, wss://, http://, https:// or balancer:// URL"),
    ("RewriteRule ^/ ftp://b/ [P]", 1, "[P] to a ws://"),
    ("RewriteRule ^/ relative", 1, "-, a URL-path starting with /, or an absolute URL"),
    ("RewriteRule ^/(", 1, "RewriteRule: expected Pattern Substitution [flags]"),
    ("RewriteRule ^/( /x", 1, "RewriteRule:"),
    ("RewriteRule ^/ /x [L] extra", 1, "expected Pattern Substitution [flags]"),
    ("RewriteRule ^/ /${map:key}", 1, "RewriteMap lookups"),
    ("RewriteRule ^/ /%{NOPE}", 1, "unknown or unsupported variable %{NOPE}"),
    ("RewriteRule ^/ /%{SSL:SSL_CIPHER}", 1, "only %{HTTP:header} and %{ENV:name} lookups are supported"),
    ("RewriteCond %{REQUEST_FILENAME} -f\nRewriteRule ^ -", 1, "unknown or unsupported variable %{REQUEST_FILENAME}"),
    ("RewriteCond %{REQUEST_URI} -f\nRewriteRule ^ -", 1, "the file test -f is not supported: tunnel serves no files"),
    ("RewriteCond %{REQUEST_URI} !-d\nRewriteRule ^ -", 1, "the file test -d is not supported"),
    ("RewriteCond %{REQUEST_URI} -s\nRewriteRule ^ -", 1, "-s is not supported"),
    ("RewriteCond %{REQUEST_URI} -l\nRewriteRule ^ -", 1, "-l is not supported"),
    ("RewriteCond %{REQUEST_URI} -F\nRewriteRule ^ -", 1, "-F is not supported"),
    ("RewriteCond %{REQUEST_URI} -U\nRewriteRule ^ -", 1, "-U is not supported"),
    ("RewriteCond %{REQUEST_URI} -eq\nRewriteRule ^ -", 1, "-eq needs a value"),
    ("RewriteCond %{REQUEST_URI} -eqx\nRewriteRule ^ -", 1, 'expected an integer after -eq, got "x"'),
    ("RewriteCond %{REQUEST_URI} -zz\nRewriteRule ^ -", 1, "unknown or unsupported test -zz"),
    ("RewriteCond expr x\nRewriteRule ^ -", 1, "expr conditions are not supported"),
    ("RewriteCond %{HTTPS} on [XX]\nRewriteRule ^ -", 1, 'unknown or unsupported RewriteCond flag "XX"'),
    ("RewriteCond %{HTTPS}\nRewriteRule ^ -", 1, "RewriteCond: expected TestString CondPattern [flags]"),
    ("RewriteCond %{HTTPS} (\nRewriteRule ^ -", 1, "RewriteCond:"),
    ("RewriteRule ^ -\nRewriteCond %{HTTPS} on", 2, "RewriteCond: no RewriteRule follows it"),
    ("RewriteOptions", 1, "RewriteOptions: expected Inherit or InheritBefore"),
    ("RewriteOptions MergeBase", 1, 'unsupported option "MergeBase"'),
    ("RewriteEngine Maybe", 1, "RewriteEngine:"),
    ("<Location /x>\nRewriteCond %{HTTPS} on\n</Location>", 2, "RewriteCond: no RewriteRule follows it in its context"),
    ("<Location /x>\nRewriteOptions Inherit\n</Location>", 2, "RewriteOptions: RewriteOptions inside <Location> is not supported"),
    ("RewriteBase /x", 1, "RewriteBase: only valid in <Location>"),
    ("<Location /x>\nRewriteBase x\n</Location>", 2, 'RewriteBase: expected a URL-path starting with /, got "x"'),
]


@pytest.mark.parametrize("text, line, message", ERRORS)
def test_errors_name_the_file_and_line(text: str, line: int, message: str) -> None:
    err = fails(text + "\n")
    assert (err.file, err.line) == ("t.conf", line), str(err)
    assert message in err.message, err.message


def test_a_local_path_without_pt_is_routed_with_a_warning() -> None:
    config = conf("RewriteRule ^/a /b\nRewriteRule ^/c /d [PT]\nRewriteRule ^/e - [F]\nRewriteRule ^/f /g [R]\n")
    assert len(config.warnings) == 1 and config.warnings[0].startswith("t.conf:1: RewriteRule ^/a /b: a local path without [PT]")


REWRITE_WORDS = st.sampled_from(
    ["RewriteEngine", "RewriteCond", "RewriteRule", "RewriteOptions", "Inherit", "On", "Off", "^/(.*)", "!^/x", "/x",
     "-", "ws://b/$1", "wss://b/", "balancer://c/", "%{HTTP:Upgrade}", "%{HTTP_HOST}", "%{NOPE}", "%1", "$1", "${m:k}",
     "websocket", "=on", "-eq1", "-f", "[P,L]", "[NC,OR]", "[R=301]", "[F]", "[E=a:b]", "[QSA,QSD]", "[", "]", "(",
     "<VirtualHost", "*:80>", "</VirtualHost>", "<Location", "/l>", "</Location>", "SSLProxyEngine", '"', "\\"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(st.lists(REWRITE_WORDS, min_size=1, max_size=5).map(" ".join), max_size=8))
def test_any_rewrite_text_gives_a_config_or_an_error_on_a_directive_line(lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    try:
        parse(text, filename="fuzz.conf")
    except ConfigError as err:
        assert err.file == "fuzz.conf" and 1 <= err.line <= len(lines), str(err)
        assert lines[err.line - 1].strip(), str(err)
