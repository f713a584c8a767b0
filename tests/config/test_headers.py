"""config/headers.py: Header, RequestHeader, SetEnv/UnsetEnv/PassEnv, SetEnvIf and
BrowserMatch lines as read, merged and refused (with the file and line), and the log
directives that read the environment (CustomLog env=, TransferLog, LogFormat)."""

from __future__ import annotations

import pytest

from tests.support.sansio import conf
from tunnel.config.headermodel import FormatTag
from tunnel.errors import ConfigError

pytestmark = pytest.mark.timeout(30)


def fails(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        conf(text)
    return info.value


# -- Header / RequestHeader --------------------------------------------------------------


@pytest.mark.parametrize(
    "line, table, action, name, value",
    [
        ("Header set X-A v", "onsuccess", "set", "X-A", ("v",)),
        ("Header onsuccess set X-A v", "onsuccess", "set", "X-A", ("v",)),
        ("Header always set X-A v", "always", "set", "X-A", ("v",)),
        ("Header ALWAYS append X-A v", "always", "append", "X-A", ("v",)),
        ("Header add X-A: v", "onsuccess", "add", "X-A", ("v",)),
        ("Header merge Cache-Control no-cache", "onsuccess", "merge", "Cache-Control", ("no-cache",)),
        ("Header setifempty X-A v", "onsuccess", "setifempty", "X-A", ("v",)),
        ("Header unset X-A", "onsuccess", "unset", "X-A", ()),
        ("Header echo ^X-", "onsuccess", "echo", "^X-", ()),
        ("Header note X-A mynote", "onsuccess", "note", "X-A", ("mynote",)),
        ('Header edit Location ^http: "https:"', "onsuccess", "edit", "Location", ("https:",)),
        ('Header edit* Set-Cookie "(?i)secure" "Secure"', "onsuccess", "edit*", "Set-Cookie", ("Secure",)),
        ("RequestHeader set X-B w", "request", "set", "X-B", ("w",)),
        ("RequestHeader unset Cookie", "request", "unset", "Cookie", ()),
        ("RequestHeader edit Cookie a b", "request", "edit", "Cookie", ("b",)),
        ("RequestHeader SET X-B w", "request", "set", "X-B", ("w",)),
    ],
)
def test_each_action_goes_to_its_table(line: str, table: str, action: str, name: str, value: tuple[str, ...]) -> None:
    env = conf(line).scope.env
    (op,) = getattr(env, table)
    assert (op.action, op.name, op.value, op.file, op.line) == (action, name, value, "t.conf", 1)
    assert [t for t in ("request", "onsuccess", "always") if getattr(env, t)] == [table]


def test_edit_and_echo_compile_their_regex() -> None:
    (edit,) = conf('Header edit Location "^http://(.*)$" "https://$1"').scope.env.onsuccess
    assert edit.regex is not None and edit.regex.search("http://a/b").group(1) == "a/b"
    (echo,) = conf("Header echo ^X-Req").scope.env.onsuccess
    assert echo.regex is not None and echo.regex.search("X-Request-Id") and not echo.regex.search("x-request-id")


@pytest.mark.parametrize(
    "clause, var, negate",
    [("env=FOO", "FOO", False), ("env=!FOO", "FOO", True), ("ENV=foo", "foo", False)],
)
def test_env_conditions(clause: str, var: str, negate: bool) -> None:
    (op,) = conf(f"Header set X v {clause}").scope.env.onsuccess
    assert op.condition is not None and (op.condition.var, op.condition.negate, op.condition.expr) == (var, negate, None)


def test_conditions_after_unset_and_edit() -> None:
    env = conf('Header unset X env=A\nHeader edit X a b env=!B\nHeader echo ^Y expr=%{REQUEST_METHOD}=="GET"').scope.env
    unset, edit, echo = env.onsuccess
    assert unset.condition is not None and unset.condition.var == "A" and unset.value == ()
    assert edit.condition is not None and edit.condition.negate and edit.value == ("b",)
    assert echo.condition is not None and echo.condition.expr is not None


def test_expr_condition_is_parsed_once() -> None:
    (op,) = conf("""RequestHeader set X-Local 1 "expr=%{REMOTE_ADDR} -ipmatch '127.0.0.0/8'" """).scope.env.request
    assert op.condition is not None and op.condition.expr is not None and op.condition.text.startswith("expr=")


def test_a_string_expression_value() -> None:
    (op,) = conf('RequestHeader set "X-Forwarded-Proto" expr=%{REQUEST_SCHEME}').scope.env.request
    (tag,) = op.value
    assert (op.name, tag.code, tag.arg) == ("X-Forwarded-Proto", "expr", "%{REQUEST_SCHEME}") and tag.word is not None


def test_request_header_early() -> None:
    (op,) = conf("RequestHeader set X-Early 1 early").scope.env.request
    assert op.early and op.condition is None


def test_value_specifiers_compile() -> None:
    (op,) = conf('Header set X "a %t b %D %{FOO}e %{SSL_PROTOCOL}s %l 100%% \\\\ \\t end%"').scope.env.onsuccess
    assert op.value == (
        "a ", FormatTag("t"), " b ", FormatTag("D"), " ", FormatTag("e", "FOO"), " ", FormatTag("s", "SSL_PROTOCOL"),
        " ", FormatTag("l"), " 100% \\ \t end%",
    )  # fmt: skip


def test_utf8_value_goes_out_as_its_bytes() -> None:
    (op,) = conf("Header set X-Name café").scope.env.onsuccess
    assert op.value == ("café".encode().decode("latin-1"),)


@pytest.mark.parametrize(
    "line, message",
    [
        ("Header", "Header: expected [always|onsuccess ]ACTION HEADER"),
        ("Header set", "Header: expected [always|onsuccess ]ACTION HEADER"),
        ("Header always", "Header: expected [always|onsuccess ]ACTION HEADER"),
        ("Header frob X v", 'Header: unknown action "frob" (expected one of set, setifempty, add'),
        ("Header set X", "Header: set needs a value"),
        ("Header add X", "Header: add needs a value"),
        ("Header note X", "Header: note needs a value"),
        ("Header edit X ^a", "Header: edit needs a regular expression and a replacement"),
        ("Header edit* X", "Header: edit* needs a regular expression and a replacement"),
        ('Header edit X "(" b', 'Header: bad regular expression "(?s)("'),
        ("Header echo (", 'Header: bad regular expression "("'),
        ("Header set X v env=A extra", "Header: too many arguments"),
        ("Header edit X a b env=A extra", "Header: too many arguments"),
        ("Header unset X env=A env=B", "Header: unset takes a header and an optional condition only"),
        ("Header set X v always", 'Header: "always" must come first, right after Header'),
        ("Header set X v onsuccess", 'Header: "onsuccess" must come first, right after Header'),
        ("Header set X v sometimes", 'Header: unknown parameter "sometimes" (expected early, env=[!]VAR or expr=EXPRESSION)'),
        ("Header set X v env=", "Header: missing environment variable name"),
        ("Header set X v env=!", "Header: missing environment variable name"),
        ("Header set X v expr=", "Header: expr= needs an expression"),
        ("Header set X v expr=%{NOPE}==1", "Header: cannot parse expr=: unknown variable %{NOPE}"),
        ("Header set X v early", "Header: early is not supported for Header"),
        ("Header set X expr=%{NOPE}", "Header: cannot parse the value expr=%{NOPE}: unknown variable %{NOPE}"),
        ('Header set X "a %b"', "Header: %b (idle/busy workers of httpd's scoreboard) is not supported"),
        ('Header set X "a %i"', "Header: %i (idle/busy workers"),
        ('Header set X "a %q"', "Header: unrecognized header format %q"),
        ('Header set X "a %e"', "Header: %e needs a variable name"),
        ('Header set X "a %{FOO"', "Header: unterminated %{"),
        ('Header set X "a\\r\\nInjected: 1"', "Header: a \\r in a header value would split the header"),
        ("Header set Content-Length 5", "Header: Content-Length frames the message"),
        ("Header unset Transfer-Encoding", "Header: Transfer-Encoding frames the message"),
        ('Header set "Bad Name" v', 'Header: "Bad Name" is not a header name'),
        ("RequestHeader always set X v", 'RequestHeader: "always" is a condition of Header only'),
        ("RequestHeader echo ^X", "RequestHeader: echo is an action of Header only"),
        ("RequestHeader set X", "RequestHeader: set needs a value"),
        ("RequestHeader edit X a", "RequestHeader: edit needs a regular expression and a replacement"),
        ("<Location /a>\nRequestHeader set X 1 early\n</Location>", "RequestHeader: early is only allowed in the server context"),
        ("<Proxy balancer://b>\nBalancerMember ws://a:1\nHeader set X 1\n</Proxy>", "Header: not allowed in <Proxy balancer://...>"),
    ],
)
def test_header_errors_name_the_line(line: str, message: str) -> None:
    err = fails(f"Listen 80\n{line}\n")
    assert err.file == "t.conf" and err.line == 2 + line.count("\n") - (1 if "</" in line else 0)
    assert message in str(err), str(err)


# -- merging ------------------------------------------------------------------------------


def test_vhost_and_location_lines_follow_the_main_servers() -> None:
    config = conf(
        """\
        Header set A main
        RequestHeader set R main
        SetEnv V main
        SetEnvIf Remote_Addr . m=1
        <VirtualHost *:80>
        Header set A vhost
        SetEnvIf Remote_Addr . v=1
        SetEnv W vhost
        <Location /x>
        Header always set B loc
        SetEnvIf Request_URI . l=1
        </Location>
        </VirtualHost>
        """
    )
    vscope = config.vhosts[0].scope
    assert [op.value for op in vscope.env.onsuccess] == [("main",), ("vhost",)]
    assert [op.name for op in vscope.env.request] == ["R"]
    assert vscope.env.env_vars == (("V", "main"), ("W", "vhost"))
    assert [r.features for r in vscope.env.setenvif] == [(("m", "1"),), (("v", "1"),)]
    (loc,) = vscope.locations
    assert loc.path == "/x" and [op.name for op in loc.env.always] == ["B"] and loc.env.setenvif[0].special == "request_uri"
    assert [op.value for op in config.scope.env.onsuccess] == [("main",)]  # the main server keeps its own


def test_unsetenv_in_a_vhost_removes_the_main_servers_value() -> None:
    config = conf("SetEnv A 1\nSetEnv B 2\n<VirtualHost *:80>\nUnsetEnv A\n</VirtualHost>\n")
    assert config.scope.env.env_vars == (("A", "1"), ("B", "2"))
    assert config.vhosts[0].scope.env.env_vars == (("B", "2"),)


def test_unsetenv_after_setenv_in_one_context() -> None:
    env = conf("SetEnv A 1\nUnsetEnv a\nSetEnv C\n").scope.env
    assert env.env_vars == (("C", ""),) and env.env_unset == ("a",)


def test_passenv_reads_tunnels_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNNEL_TEST_PASS", "from-env")
    monkeypatch.delenv("TUNNEL_TEST_UNSET", raising=False)
    config = conf("PassEnv TUNNEL_TEST_PASS TUNNEL_TEST_UNSET\n")
    assert config.scope.env.env_vars == (("TUNNEL_TEST_PASS", "from-env"),)
    assert any("PassEnv TUNNEL_TEST_UNSET: the variable is not set" in w for w in config.warnings)


@pytest.mark.parametrize(
    "line, message",
    [
        ("SetEnv", "SetEnv: expected VARIABLE [VALUE]"),
        ("SetEnv A b c", "SetEnv: expected VARIABLE [VALUE]"),
        ("UnsetEnv", "UnsetEnv: expected one or more variable names"),
        ("PassEnv", "PassEnv: expected one or more variable names"),
    ],
)
def test_env_errors(line: str, message: str) -> None:
    err = fails(f"{line}\n")
    assert (err.file, err.line) == ("t.conf", 1) and message in str(err)


def test_setenv_with_an_equals_sign_warns() -> None:
    config = conf("SetEnv A=1\n")
    assert config.scope.env.env_vars == (("A=1", ""),)
    assert any("'=' in a variable name" in w for w in config.warnings)


# -- SetEnvIf ------------------------------------------------------------------------------


def test_setenvif_attributes_and_features() -> None:
    env = conf(
        """\
        SetEnvIf Remote_Addr ^127\\. local from=$0 !gone
        SetEnvIfNoCase User-Agent curl is_curl=yes
        SetEnvIf ^X-.*-Id$ . has_id
        BrowserMatch "^Mozilla/4" old
        BrowserMatchNoCase bot robot=1 --early
        SetEnvIf Request_URI "\\.png$" image
        """
    ).scope.env
    addr, ua, by_regex, browser, browser_nc, uri = env.setenvif
    assert (addr.special, addr.literal, addr.features) == ("remote_addr", False, (("local", "1"), ("from", "$0"), ("gone", None)))
    assert (ua.special, ua.literal, ua.regex.search("CURL/8") is not None) == ("", True, True)
    assert by_regex.name_regex is not None and by_regex.name_regex.search("X-Request-Id")
    assert (browser.attribute, browser.literal, browser.regex.search("Mozilla/4.0") is not None) == ("User-Agent", False, True)
    assert browser_nc.early and browser_nc.regex.search("GoogleBOT")
    assert (uri.special, uri.literal) == ("request_uri", False)


def test_a_plain_string_pattern_with_escapes_is_a_substring() -> None:
    (rule,) = conf("SetEnvIf Host a\\.b x=$1\n").scope.env.setenvif
    assert rule.literal and rule.regex.search("xa.by") and not rule.regex.search("axb")


def test_setenvif_features_like_httpd() -> None:
    (rule,) = conf("SetEnvIf Host . A= !B C=c A=again\n").scope.env.setenvif
    assert rule.features == (("A", "again"), ("B", None), ("C", "c"))


@pytest.mark.parametrize(
    "line, message",
    [
        ("SetEnvIf", "SetEnvIf: expected ATTRIBUTE REGEX"),
        ("SetEnvIf Host", "SetEnvIf: missing regular expression"),
        ("SetEnvIf Host x", "SetEnvIf: missing variable to set"),
        ('SetEnvIf Host "(" x', 'SetEnvIf: bad regular expression "(?s)("'),
        ('SetEnvIf "X-(" a x', "SetEnvIf: bad regular expression"),
        ("SetEnvIf Host a =x", 'SetEnvIf: "=x" names no variable'),
        ("BrowserMatch", "BrowserMatch: missing regular expression"),
        ("BrowserMatchNoCase bot", "BrowserMatchNoCase: missing variable to set"),
        ("<Location /a>\nSetEnvIf Host a x --early\n</Location>", "SetEnvIf: --early is only allowed in the server context"),
    ],
)
def test_setenvif_errors(line: str, message: str) -> None:
    err = fails(f"{line}\n")
    assert err.file == "t.conf" and err.line == (2 if line.startswith("<") else 1)
    assert message in str(err), str(err)


# -- balancer members, logs ------------------------------------------------------------------


def test_balancer_member_worker_names() -> None:
    config = conf(
        """\
        <Proxy balancer://b>
        BalancerMember http://127.0.0.1:8080
        BalancerMember WS://Node.Example:80/app route=x
        BalancerMember unix:/run/a.sock|http://localhost/
        </Proxy>
        """
    )
    assert [m.name for m in config.balancers["b"].members] == ["http://127.0.0.1:8080", "ws://node.example/app", "http://localhost/"]


def test_customlog_env_conditions() -> None:
    config = conf('CustomLog a.log common env=!dontlog\nCustomLog b.log "%h" env=ws\nCustomLog c.log "%h"\n')
    assert config.log.conditions == ("!dontlog", "ws", "")
    assert [f for f, _ in config.log.custom_logs] == ["a.log", "b.log", "c.log"]


@pytest.mark.parametrize(
    "line, message",
    [
        ("CustomLog a.log common env=", "CustomLog: missing environment variable name"),
        ("CustomLog a.log common env=!", "CustomLog: missing environment variable name"),
        ("CustomLog a.log common expr=true", "CustomLog: the condition expr=true is not supported"),
        ("CustomLog a.log common sometimes", 'CustomLog: expected env=[!]VAR after the format, got "sometimes"'),
        ("CustomLog a.log common env=a b", "CustomLog: expected FILE FORMAT|nickname [env=[!]VAR]"),
        ("TransferLog", "TransferLog: expected a file name, got 0 arguments"),
        ("TransferLog a b", "TransferLog: expected a file name, got 2 arguments"),
        ("TransferLog |cat", "TransferLog: piped logs are not supported"),
        ("LogFormat nonick\nTransferLog a.log", 'TransferLog: unknown log format nickname "nonick"'),
        ('LogFormat "%Z"\nTransferLog a.log', "TransferLog: bad log format"),
    ],
)
def test_log_errors(line: str, message: str) -> None:
    err = fails(f"{line}\n")
    assert err.file == "t.conf" and err.line == line.count("\n") + 1
    assert message in str(err), str(err)


def test_transferlog_uses_the_last_format_without_a_nickname() -> None:
    assert conf("TransferLog a.log\n").log.custom_logs == (("a.log", '%h %l %u %t "%r" %>s %b'),)
    config = conf('LogFormat "%h first"\nTransferLog a.log\nLogFormat "%h %{BALANCER_WORKER_ROUTE}e"\nCustomLog b.log "%m"\n')
    assert config.log.custom_logs == (("a.log", "%h %{BALANCER_WORKER_ROUTE}e"), ("b.log", "%m"))
    named = conf('LogFormat "%h %>s" short\nLogFormat short\nTransferLog a.log\n')
    assert named.log.custom_logs == (("a.log", "%h %>s"),)
    assert conf("LogFormat combined\nTransferLog a.log\n").log.custom_logs[0][1].endswith('"%{User-Agent}i"')


def test_logformat_without_nickname_in_a_vhost_warns() -> None:
    config = conf('<VirtualHost *:80>\nLogFormat "%h"\nTransferLog v.log\n</VirtualHost>\n')
    assert config.log.custom_logs == (("v.log", "%h"),)
    assert any("LogFormat inside <VirtualHost>" in w for w in config.warnings)
    assert any("TransferLog inside <VirtualHost>" in w for w in config.warnings)
