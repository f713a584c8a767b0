"""protocol/headers.py and protocol/setenv.py: each Header/RequestHeader action on a
header list as httpd's tables behave, the two response tables, value specifiers,
conditions, and SetEnvIf/SetEnv over an environment. Pure: lists in, lists out."""

from __future__ import annotations

import re

import pytest

from tests.support.sansio import conf
from tunnel.config.headermodel import HeaderOp
from tunnel.protocol.access import AccessRequest
from tunnel.protocol.headers import HeaderContext, apply_request_headers, apply_response_headers, expand, pregsub
from tunnel.protocol.setenv import EnvFacts, apply_setenv, location_setenvif, post_read_request, request_config

pytestmark = pytest.mark.timeout(30)


def ops(text: str, table: str = "request") -> tuple[HeaderOp, ...]:
    return tuple(getattr(conf(text).scope.env, table))


def ctx(env: dict[str, str] | None = None, **kw: object) -> HeaderContext:
    env = {} if env is None else env
    access = AccessRequest(remote="127.0.0.1", method=str(kw.pop("method", "GET")), env=env)
    return HeaderContext(env=env, access=access, **kw)  # type: ignore[arg-type]


def req(lines: str, headers: list[tuple[str, str]], env: dict[str, str] | None = None) -> list[tuple[str, str]]:
    return apply_request_headers(ops(lines), headers, ctx(env))


BASE = [("Host", "a"), ("X-A", "1"), ("Accept", "x"), ("x-a", "2")]


@pytest.mark.parametrize(
    "line, expected",
    [
        ("RequestHeader set X-A new", [("Host", "a"), ("X-A", "new"), ("Accept", "x")]),
        ("RequestHeader set X-New v", [*BASE, ("X-New", "v")]),
        ("RequestHeader setifempty X-A v", BASE),
        ("RequestHeader setifempty X-New v", [*BASE, ("X-New", "v")]),
        ("RequestHeader add X-A 3", [*BASE, ("X-A", "3")]),
        ("RequestHeader append X-A 3", [("Host", "a"), ("X-A", "1, 3"), ("Accept", "x"), ("x-a", "2")]),
        ("RequestHeader append X-New 3", [*BASE, ("X-New", "3")]),
        ("RequestHeader merge X-A 1", BASE),
        ("RequestHeader merge X-A 3", [("Host", "a"), ("X-A", "1, 3"), ("Accept", "x"), ("x-a", "2")]),
        ("RequestHeader merge X-A 2", [("Host", "a"), ("X-A", "1, 2"), ("Accept", "x"), ("x-a", "2")]),  # the first line only
        ("RequestHeader unset x-A", [("Host", "a"), ("Accept", "x")]),
        ("RequestHeader unset X-None", BASE),
        ("RequestHeader edit X-A ^(.)$ <$1>", [("Host", "a"), ("Accept", "x"), ("X-A", "<1>"), ("x-a", "<2>")]),
        ("RequestHeader edit X-None a b", BASE),
        ("RequestHeader note X-A seen", BASE),
    ],
)
def test_actions_as_httpd_tables(line: str, expected: list[tuple[str, str]]) -> None:
    assert req(line, list(BASE)) == expected


def test_merge_compares_whole_tokens_and_keeps_quoted_commas() -> None:
    headers = [("Cache-Control", 'private, no-cache="a, b"')]
    assert req("RequestHeader merge Cache-Control private", headers) == headers
    assert req("RequestHeader merge Cache-Control no-cache", headers) == [("Cache-Control", 'private, no-cache="a, b", no-cache')]
    assert req("RequestHeader merge Cache-Control b\"", headers)[0][1].endswith(', b"')
    assert req("RequestHeader merge Cache-Control PRIVATE", headers)[0][1].endswith(", PRIVATE")  # exact compare


def test_edit_first_match_and_every_match() -> None:
    headers = [("Cookie", "a=1; a=2")]
    assert req('RequestHeader edit Cookie "a=" "b="', headers) == [("Cookie", "b=1; a=2")]
    assert req('RequestHeader edit* Cookie "a=" "b="', headers) == [("Cookie", "b=1; b=2")]
    assert req('RequestHeader edit* Cookie "x*" "-"', [("Cookie", "ab")]) == [("Cookie", "-a-b-")]
    assert req('RequestHeader edit Cookie "(a)=(1)" "$2=$1\\$3$9"', headers) == [("Cookie", "1=a$3; a=2")]


def test_lines_run_in_order() -> None:
    assert req("RequestHeader append X v1\nRequestHeader unset X\nRequestHeader add X v2", []) == [("X", "v2")]


def test_note_stores_the_value_in_the_environment() -> None:
    env: dict[str, str] = {"gone": "x"}
    req("RequestHeader note X-A seen\nRequestHeader note X-None GONE", list(BASE), env)
    assert env == {"seen": "1"}


def test_env_and_expr_conditions() -> None:
    lines = "RequestHeader set A 1 env=on\nRequestHeader set B 1 env=!on\nRequestHeader set C 1 expr=%{REQUEST_METHOD}=='GET'\n"
    lines += "RequestHeader set D 1 \"expr=%{reqenv:ON} == 'yes'\""
    assert [k for k, _ in req(lines, [], {"ON": "yes"})] == ["A", "C", "D"]
    assert [k for k, _ in req(lines, [], {})] == ["B", "C"]


def test_early_lines_run_only_in_the_early_pass() -> None:
    lines = ops("RequestHeader set A 1 early\nRequestHeader set B 1")
    assert apply_request_headers(lines, [], ctx(), early=True) == [("A", "1")]
    assert apply_request_headers(lines, [], ctx()) == [("B", "1")]


def test_specifiers() -> None:
    env = {"Route": "app01", "multi": "a\r\nb"}
    c = ctx(env, start=10.5, now=lambda: 10.75, ssl={"HTTPS": "on", "SSL_PROTOCOL": "TLSv1.3"}, loadavg=lambda: (0.5, 1.25, 2.0))
    (op,) = ops('Header set X "%t %D %{route}e %{nope}e %{multi}e %{HTTPS}s %{SSL_CIPHER}s %l %%"', "onsuccess")
    assert expand(op.value, c) == "t=10500000 D=250000 app01 (null) a  b on (null) l=0.50/1.25/2.00 %"


def test_values_never_break_a_header_line() -> None:
    (op,) = ops('Header set X "  %{v}e  "', "onsuccess")
    assert apply_response_headers((), (op,), [], [], ctx({"v": "a\x00b\x7fc"}), []) == [("X", "a b c")]


def test_response_tables_always_first_then_onsuccess() -> None:
    conf_env = conf(
        "Header always set X-Both always\nHeader set X-Both onsuccess\nHeader always unset Server\nHeader unset X-Backend\n"
        "Header echo ^X-Req\nHeader always echo ^Trace"
    ).scope.env
    out = [("Server", "backend"), ("X-Backend", "1"), ("Content-Type", "text/plain")]
    request = [("X-Req-Id", "7"), ("Trace", "t"), ("Host", "h")]
    got = apply_response_headers(conf_env.always, conf_env.onsuccess, [], out, ctx(), request)
    # always lines edit the (empty) error table: unset Server cannot reach the backend's;
    # set in both tables sends both, as httpd does; echo always copies into the second.
    assert got == [("X-Both", "always"), ("Server", "backend"), ("Content-Type", "text/plain"), ("Trace", "t"), ("X-Both", "onsuccess"), ("X-Req-Id", "7")]
    own = apply_response_headers(conf_env.always, (), [("Upgrade", "WebSocket")], [("Content-Type", "text/plain")], ctx(), request)
    assert own == [("Upgrade", "WebSocket"), ("X-Both", "always"), ("Content-Type", "text/plain"), ("Trace", "t")]


def test_pregsub() -> None:
    m = re.search(r"(a)(b)?(c)", "xac")
    assert m is not None
    assert pregsub(r"$0|$1|$2|$3|$4|\$1|\\|$", m) == "ac|a||c||$1|\\|$"


# -- SetEnvIf, SetEnv -----------------------------------------------------------------------


def facts(headers: list[tuple[str, str]] | None = None, **kw: str) -> EnvFacts:
    values = {"remote_addr": "10.1.2.3", "method": "GET", "protocol": "HTTP/1.1", "uri": "/raw/%41", **kw}
    return EnvFacts(headers=headers or [], server_addr=lambda: "127.0.0.9", **values)


def run(text: str, f: EnvFacts, env: dict[str, str] | None = None) -> dict[str, str]:
    env = {} if env is None else env
    post_read_request(conf(text).scope, f, env)
    return env


def test_setenvif_special_attributes() -> None:
    text = """\
        SetEnvIf Remote_Addr ^10\\.(\\d+) net=$1
        SetEnvIf remote_host ^10 host=1
        SetEnvIf Server_Addr 9$ server=1
        SetEnvIf Request_Method ^GET$ get
        SetEnvIf Request_Protocol 1\\.1$ h11
        SetEnvIf Request_URI ^/raw/%41$ raw
        """
    assert run(text, facts()) == {"net": "1", "host": "1", "server": "1", "get": "1", "h11": "1", "raw": "1"}


def test_setenvif_headers_env_and_name_regexes() -> None:
    headers = [("User-Agent", "Mozilla/5.0 (curl)"), ("X-Trace-Id", "a"), ("X-Span-Id", "b"), ("user-agent", "second")]
    text = """\
        BrowserMatch ^Mozilla/(\\d) moz=$1
        BrowserMatchNoCase CURL curl
        SetEnvIf ^X-.*-Id$ (.+) last_id=$1
        SetEnvIf X-Missing ^$ missing
        SetEnvIf moz ^5$ from_env
        SetEnvIfNoCase user-agent ^mozilla ua_first
        SetEnvIf User-Agent second not_second
        """
    env = run(text, facts(headers))
    assert env == {"moz": "5", "curl": "1", "last_id": "b", "missing": "1", "from_env": "1", "ua_first": "1"}


def test_setenvif_unsets_and_literal_values() -> None:
    env = run("SetEnvIf Host ab literal=$1 !Drop\nSetEnvIf Host (a) re=$1", facts([("Host", "xab")]), {"drop": "x"})
    assert env == {"literal": "$1", "re": "a"}


def test_early_lines_make_the_others_run_twice() -> None:
    text = "SetEnvIf Host . --early first\nSetEnvIf count ^1$ twice\nSetEnvIf Host . count=1\n"
    assert "twice" in run(text, facts([("Host", "h")]))  # all once, then the non-early ones again
    assert "twice" not in run(text.replace(" --early", ""), facts([("Host", "h")]))


def test_location_lines_and_merge_order() -> None:
    scope = conf(
        """\
        SetEnv S server
        Header set X server
        <Location /app>
        SetEnv L loc
        Header set X loc
        SetEnvIf Request_URI ^/app/(.*) page=$1
        </Location>
        <LocationMatch \\.png$>
        Header set Y png
        </LocationMatch>
        """
    ).scope
    conf_env, loc_rules = request_config(scope, "/app/x.png")
    assert [op.value for op in conf_env.onsuccess] == [("server",), ("loc",), ("png",)]
    assert conf_env.setenvif == () and len(loc_rules) == 1
    env = {"S": "already"}
    location_setenvif(loc_rules, facts(uri="/app/x.png"), env)
    apply_setenv(conf_env, env)
    assert env == {"S": "already", "page": "x.png", "L": "loc"}  # SetEnv never overrides a value the request has
    assert request_config(scope, "/other")[0] is scope.env
