"""config/parser.py and build.py: every directive's value and default, every error's
file, line and text, Include, vhost merging, <Location>, balancers."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.sansio import conf
from tunnel.config import (
    Config,
    ConfigError,
    Limits,
    Listener,
    LogConfig,
    ProxyTLS,
    ServerTLS,
    Target,
    parse,
)
from tunnel.config.model import DEFAULT_MAX_TUNNEL_THREADS

pytestmark = pytest.mark.timeout(30)


def fails(text: str, filename: str = "t.conf") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(textwrap.dedent(text), filename=filename)
    return info.value


# -- defaults and happy paths ---------------------------------------------------------------


def test_empty_configuration_has_httpd_defaults() -> None:
    c = conf("")
    s = c.scope
    assert (c.listeners, c.vhosts, c.balancers, c.tls, c.warnings) == ((), (), {}, None, ())
    assert (s.websocket_async, s.websocket_async_delay, s.websocket_idle_timeout) == (False, 0.0, 0.0)
    assert (s.fallback_to_proxy_http, s.timeout, s.proxy_timeout) == (True, 60.0, None)
    assert (s.preserve_host, s.add_headers, s.server_name) == (False, True, "")
    assert s.limits == Limits() and s.proxy_tls == ProxyTLS() and c.log == LogConfig()
    assert (c.max_tunnel_threads, c.buffer_limit) == (DEFAULT_MAX_TUNNEL_THREADS, 0)


G = Callable[[Config], Any]

VALUES: list[tuple[str, G, Any]] = [
    ("Listen 8080", lambda c: (c.listeners[0].host, c.listeners[0].port), ("", 8080)),
    ("Listen 127.0.0.1:0", lambda c: (c.listeners[0].host, c.listeners[0].port, c.listeners[0].tls), ("127.0.0.1", 0, False)),
    ("Listen [::1]:8443 https", lambda c: (c.listeners[0].host, c.listeners[0].tls, c.listeners[0].display), ("::1", True, "[::1]:8443")),
    ("Listen *:80 HTTP", lambda c: (c.listeners[0].host, c.listeners[0].tls), ("", False)),
    ("ServerName Proxy.Example:443", lambda c: c.scope.server_name, "proxy.example"),
    ("Timeout 30", lambda c: c.scope.timeout, 30.0),
    ("ProxyTimeout 2.5", lambda c: (c.scope.proxy_timeout, c.scope.head_timeout()), (2.5, 2.5)),
    ("proxypreservehost on", lambda c: c.scope.preserve_host, True),
    ("ProxyAddHeaders OFF", lambda c: c.scope.add_headers, False),
    ("ProxyWebsocketAsync On", lambda c: c.scope.websocket_async, True),
    ("ProxyWebsocketAsyncDelay 250ms", lambda c: c.scope.websocket_async_delay, 0.25),
    ("ProxyWebsocketAsyncDelay 2", lambda c: c.scope.websocket_async_delay, 2.0),
    ("ProxyWebsocketIdleTimeout 0", lambda c: c.scope.websocket_idle_timeout, 0.0),
    ("ProxyWebsocketIdleTimeout 1500MS", lambda c: c.scope.websocket_idle_timeout, 1.5),
    ("ProxyWebsocketFallbackToProxyHttp Off", lambda c: c.scope.fallback_to_proxy_http, False),
    ("MaxTunnelThreads 8", lambda c: c.max_tunnel_threads, 8),
    ("TunnelBufferLimit 64K", lambda c: c.buffer_limit, 65536),
    ("TunnelBufferLimit 2m", lambda c: c.buffer_limit, 2 << 20),
    ("TunnelBufferLimit 1G", lambda c: c.buffer_limit, 1 << 30),
    ("TunnelBufferLimit 0", lambda c: c.buffer_limit, 0),
    ("LimitRequestLine 100", lambda c: c.scope.limits.request_line, 100),
    ("LimitRequestFieldSize 200", lambda c: c.scope.limits.field_size, 200),
    ("LimitRequestFields 7", lambda c: c.scope.limits.fields, 7),
    ("RequestReadTimeout header=20-40,MinRate=500 body=20", lambda c: c.scope.limits.header_timeout, 20.0),
    ("RequestReadTimeout body=5", lambda c: c.scope.limits.header_timeout, 10.0),
    ("AllowEncodedSlashes NoDecode", lambda c: c.scope.limits.allow_encoded_slashes, True),
    ("AllowEncodedSlashes on", lambda c: c.scope.limits.allow_encoded_slashes, True),
    ("AllowEncodedSlashes Off", lambda c: c.scope.limits.allow_encoded_slashes, False),
    ("SSLProxyEngine On", lambda c: c.scope.proxy_tls.engine, True),
    ("SSLProxyVerify none", lambda c: c.scope.proxy_tls.verify, False),
    ("SSLProxyCACertificateFile /ca.pem", lambda c: c.scope.proxy_tls.ca_file, "/ca.pem"),
    ("SSLProxyCheckPeerName off", lambda c: c.scope.proxy_tls.check_peer_name, False),
    ("SSLProxyMachineCertificateFile /me.pem", lambda c: c.scope.proxy_tls.machine_certificate_file, "/me.pem"),
    ("SSLEngine On\nSSLCertificateFile /c.pem", lambda c: c.tls, ServerTLS("/c.pem")),
    ("SSLEngine on\nSSLCertificateFile c\nSSLCertificateKeyFile k\nSSLProtocol -all +TLSv1.3", lambda c: c.tls, ServerTLS("c", "k", "TLSv1.3")),
    ("SSLEngine on\nSSLCertificateFile c\nSSLProtocol all -SSLv3 -TLSv1 -TLSv1.1", lambda c: c.tls.min_protocol, "TLSv1.2"),
    ("SSLEngine off\nSSLCertificateFile c", lambda c: c.tls, None),
    ("LogLevel info", lambda c: c.log.level, "info"),
    ("LogLevel trace5 proxy:debug", lambda c: c.log.level, "debug"),
    ("LogLevel proxy:trace2", lambda c: (c.log.level, len(c.warnings)), ("warn", 1)),
    ("ErrorLog /var/log/e.log", lambda c: c.log.error_log, "/var/log/e.log"),
    ("CustomLog - common", lambda c: c.log.custom_logs, (("-", '%h %l %u %t "%r" %>s %b'),)),
    ("CustomLog a.log combined", lambda c: c.log.custom_logs[0][1].endswith('"%{Referer}i" "%{User-Agent}i"'), True),
    ('CustomLog a.log "%h %>s %{close_reason}n"', lambda c: c.log.custom_logs, (("a.log", "%h %>s %{close_reason}n"),)),
    ('CustomLog a.log mine\nLogFormat "%h %D" mine', lambda c: c.log.custom_logs, (("a.log", "%h %D"),)),
    ("<VirtualHost *:80>\nCustomLog v.log common\nLogLevel debug\n</VirtualHost>", lambda c: (c.log.custom_logs[0][0], c.log.level, len(c.warnings)), ("v.log", "warn", 2)),
]


@pytest.mark.parametrize("text, get, expected", VALUES, ids=[v[0].split("\n")[0] for v in VALUES])
def test_directive_values(text: str, get: G, expected: Any) -> None:
    assert get(conf(text + "\n")) == expected


RULES: list[tuple[str, dict[str, Any]]] = [
    ("ProxyPass /chat/ ws://Backend.Test:9000/app/", {"path": "/chat/", "target": Target("ws", "backend.test", 9000, "/app/")}),
    ("ProxyPass / WS://b", {"target": Target("ws", "b", 80, "/")}),
    ("ProxyPass / http://[::1]:81/x", {"target": Target("http", "::1", 81, "/x")}),
    ("ProxyPass / unix:/run/app.sock|ws://localhost/", {"target": Target("ws", "localhost", 80, "/", "/run/app.sock")}),
    ("ProxyPass /x !", {"exclude": True, "target": None}),
    ("ProxyPass / ws://b/ upgrade=ANY", {"upgrade": ("*",)}),
    ("ProxyPass / ws://b/ upgrade=none", {"upgrade": ("NONE",)}),
    ("ProxyPass / http://b/ upgrade=WebSocket,h2c", {"upgrade": ("WebSocket", "h2c")}),
    ("ProxyPass / ws://b/ timeout=5 connectiontimeout=300ms retry=0", {"timeout": 5.0, "connectiontimeout": 0.3, "retry": 0.0}),
    ("ProxyPass / ws://b/ connectiontimeout=2 nocanon", {"connectiontimeout": 2.0, "nocanon": True, "keys": (("connectiontimeout", "2"),)}),
    ("ProxyPassMatch ^/u/(\\d+)$ ws://b/user/$1", {"is_regex": True, "target": Target("ws", "b", 80, "/user/$1")}),
    ("ProxyPassMatch \\.png$ !", {"is_regex": True, "exclude": True}),
    ('ProxyPass "/a b/" "ws://b/"', {"path": "/a b/"}),
]


@pytest.mark.parametrize("text, fields", RULES, ids=[r[0] for r in RULES])
def test_proxy_pass_forms(text: str, fields: dict[str, Any]) -> None:
    rule = conf(text + "\n").scope.rules[0]
    assert {k: getattr(rule, k) for k in fields} == fields
    assert (rule.file, rule.line) == ("t.conf", 1)
    if rule.is_regex:
        assert rule.regex is not None and rule.regex.pattern == rule.path


# -- errors: file, line, message ------------------------------------------------------------------

ERRORS: list[tuple[str, int, str]] = [
    ("\n\nProxyWebsocketAsyncDelay abc", 3, 'ProxyWebsocketAsyncDelay: expected a number with optional "ms" suffix, got "abc"'),
    ("ProxyWebsocketIdleTimeout -1", 1, 'ProxyWebsocketIdleTimeout: expected a number with optional "ms" suffix, got "-1"'),
    ("ProxyWebsocketAsync maybe", 1, 'ProxyWebsocketAsync: expected On or Off, got "maybe"'),
    ("ProxyWebsocketAsync", 1, "ProxyWebsocketAsync: expected one argument, got 0 arguments"),
    ("Frobnicate on", 1, 'unknown directive "Frobnicate"'),
    ("Timeout 0", 1, 'Timeout: expected a positive number of seconds, got "0"'),
    ("MaxTunnelThreads 0", 1, 'MaxTunnelThreads: expected an integer >= 1, got "0"'),
    ("TunnelBufferLimit 1T", 1, "TunnelBufferLimit: expected a byte count with optional K, M or G suffix"),
    ("LimitRequestFields many", 1, "LimitRequestFields: expected an integer >= 1"),
    ("RequestReadTimeout header=x", 1, "RequestReadTimeout: expected header=N[-M][,MinRate=R]"),
    ("AllowEncodedSlashes yes", 1, "AllowEncodedSlashes: expected On, Off or NoDecode"),
    ("Listen", 1, "Listen: expected [addr:]port [protocol]"),
    ("Listen 127.0.0.1:99999", 1, "Listen: expected [addr:]port or [ipv6]:port"),
    ("Listen 80 spdy", 1, 'Listen: expected http or https as the protocol, got "spdy"'),
    ("Listen 80\nListen 80", 2, "Listen: 80 is already a listener"),
    ("ServerAlias a.test", 1, "ServerAlias: not allowed in the server context"),
    ("ProxyPass /a", 1, "ProxyPass: expected PATH URL"),
    ("ProxyPass a ws://b/", 1, 'ProxyPass: expected a URL path starting with /, got "a"'),
    ("ProxyPass / ftp://b/", 1, "ProxyPass: expected a ws://, wss://, http://, https://, balancer:// or unix: URL"),
    ("ProxyPass / ws://u@b/", 1, "user information is not allowed"),
    ("ProxyPass / ws://b:0/", 1, "expected a port from 1 to 65535"),
    ("ProxyPass / ws://b/?q=1", 1, "a query or fragment is not allowed"),
    ("ProxyPass / ws://b/a b", 1, 'expected key=value, got "b"'),
    ("ProxyPass / unix:/s", 1, "expected unix:/path/to.sock|ws://host/path"),
    ("ProxyPass / unix:rel.sock|ws://x/", 1, "expected unix:/path/to.sock|ws://host/path"),
    ("ProxyPassMatch ^/(.*)$ ws://$1/", 1, "backreferences ($1) are substituted in the URL path only"),
    ("ProxyPass / ws://b/ keepalive=yes", 1, "ProxyPass: keepalive= expected On or Off, got \"yes\""),
    ("ProxyPass / ws://b/ hcmethod=GET", 1, 'ProxyPass: unknown key "hcmethod="'),
    ("ProxyPass / ws://b/ interpolate", 1, 'expected key=value, got "interpolate"'),
    ("ProxyPass / ws://b/ timeout=soon", 1, 'ProxyPass: timeout= expected a positive number of seconds, got "soon"'),
    ("ProxyPass / ws://b/ upgrade=TLS/1.2", 1, "TLS upgrades are never honoured"),
    ("ProxyPass / ws://b/ upgrade=websocket,ANY", 1, "ANY and NONE stand alone"),
    ("ProxyPass / ws://b/ upgrade=a@b", 1, "expected websocket, ANY, NONE or a comma list"),
    ("ProxyPass /x ! timeout=1", 1, "an exclusion (!) takes no keys"),
    ("ProxyPassMatch ^/(unclosed ws://b/", 1, 'ProxyPassMatch: bad regular expression "^/(unclosed"'),
    ("\nProxyPass / wss://b/", 2, "ProxyPass: wss://b/ needs SSLProxyEngine On"),
    ("ProxyPass / https://b/\nSSLProxyEngine Off", 1, "needs SSLProxyEngine On"),
    ("ProxyPass / balancer://nope/", 1, "ProxyPass: balancer://nope is not defined"),
    ("<Proxy balancer://c>\n</Proxy>\n\nProxyPass / balancer://c/", 4, "ProxyPass: balancer://c has no BalancerMember"),
    ("<Proxy balancer://c>\n</Proxy>", 1, "balancer://c has no BalancerMember"),
    ("BalancerMember ws://a/", 1, "BalancerMember: outside <Proxy balancer://...> expected balancer://name URL"),
    ("<Proxy balancer://c>\nBalancerMember ws://a/ loadfactor=101\n</Proxy>", 2, 'loadfactor= expected an integer from 1 to 100, got "101"'),
    ("<Proxy balancer://c>\nBalancerMember ws://a/ lbset=100\n</Proxy>", 2, "lbset= expected an integer from 0 to 99"),
    ("<Proxy balancer://c>\nBalancerMember ws://a/ status=+X\n</Proxy>", 2, "expected +/- followed by flags among D S I H R N"),
    ("<Proxy balancer://c>\nBalancerMember ws://a/ smax=-2\n</Proxy>", 2, 'BalancerMember: smax= expected a number >= 0, got "-2"'),
    ("<Proxy balancer://c>\nBalancerMember ws://a/ hcinterval=2\n</Proxy>", 2, 'unknown BalancerMember key "hcinterval="'),
    ("<Proxy balancer://c>\nBalancerMember balancer://d/\n</Proxy>", 2, "BalancerMember: expected a ws://, wss://, http://, https:// or unix: URL"),
    ("<Proxy balancer://c>\nBalancerMember wss://a/\n</Proxy>\nProxyPass / balancer://c/", 2, "BalancerMember: wss://a/ needs SSLProxyEngine On"),
    ("<Proxy balancer://c>\nBalancerMember ws://a/\nProxySet lbmethod=heartbeat\n</Proxy>", 3, "ProxySet: lbmethod= expected byrequests or bybusyness or bytraffic"),
    ("<Proxy balancer://c>\nBalancerMember ws://a/\nProxySet growth=4\n</Proxy>", 3, "growth is not supported"),
    ("<Proxy balancer://c>\nBalancerMember ws://a/\nProxySet stickysession=a|b|c\n</Proxy>", 3, "expected NAME or NAME|urlname"),
    ("<Proxy balancer://c>\nBalancerMember ws://a/\n</Proxy>\nProxyPass / balancer://c/ upgrade=ANY", 4, 'ProxyPass: unknown balancer key "upgrade="'),
    ("ProxySet lbmethod=byrequests", 1, "ProxySet: outside <Proxy balancer://...> expected balancer://name key=value"),
    ("ProxySet balancer://c failonstatus=5xx", 1, "failonstatus= expected a comma list of HTTP status codes"),
    ("SSLEngine On", 1, "SSLEngine On needs SSLCertificateFile"),
    ("SSLProtocol -all +SSLv3", 1, "SSLProtocol: no protocol tunnel supports is enabled"),
    ("SSLProtocol +QUIC", 1, "SSLProtocol: expected [+-]all, SSLv2, SSLv3"),
    ("SSLProxyVerify optional", 1, "SSLProxyVerify: optional is not supported: use require (verify) or none"),
    ("LogLevel loud", 1, "LogLevel: expected one of emerg alert crit error warn notice info debug trace1-8"),
    ("ErrorLog |/bin/rotatelogs", 1, "ErrorLog: piped logs and syslog are not supported"),
    ("ErrorLog syslog:local7", 1, "ErrorLog: piped logs and syslog are not supported"),
    ("LogLevel info debug", 1, "LogLevel: expected [level] [module:level ...]"),
    ("CustomLog - nickname", 1, 'CustomLog: unknown log format nickname "nickname"'),
    ("LogFormat %h", 1, 'LogFormat: expected "FORMAT" nickname'),
    ("<VirtualHost *:80>\nListen 80\n</VirtualHost>", 2, "Listen: not allowed in <VirtualHost>"),
    ("<VirtualHost *:80>\nMaxTunnelThreads 2\n</VirtualHost>", 2, "MaxTunnelThreads: not allowed in <VirtualHost>"),
    ("<Location /a>\nTimeout 5\n</Location>", 2, "Timeout: not allowed in <Location>"),
    ("<Location /a>\nProxyPass /a ws://b/\n</Location>", 2, "inside <Location> the path is the location's"),
    ("<Location /a>\nProxyPass ws://b/\nProxyPass ws://c/\n</Location>", 3, "only one ProxyPass per <Location>"),
    ("<VirtualHost *:80>\n<VirtualHost *:81>", 2, "<VirtualHost>: not allowed in <VirtualHost>"),
    ("<VirtualHost>", 1, "<VirtualHost>: expected one or more addr:port"),
    ("<VirtualHost *:eighty>", 1, "<VirtualHost>: expected addr:port"),
    ("\n<VirtualHost *:80>\nProxyPass / ws://b/", 2, "<VirtualHost> is not closed"),
    ("<VirtualHost *:80>\n</Location>", 2, "</Location> does not close <VirtualHost> (opened at t.conf:1)"),
    ("</VirtualHost>", 1, "</VirtualHost> without a matching <VirtualHost>"),
    ("<Location /a", 1, 'a section line must end with ">"'),
    ("<If \"true\">\n</If>", 1, "unknown section <If>"),
    ("\n<Directory />\nRequire all granted", 2, "<Directory> is not closed"),
    ('ProxyPass "/a ws://b/', 1, "unterminated \" quote"),
    ("Include /nonexistent/tunnel-test.conf", 1, "Include: /nonexistent/tunnel-test.conf does not exist"),
]


@pytest.mark.parametrize("text, line, message", ERRORS, ids=[f"{i}-{e[2][:40]}" for i, e in enumerate(ERRORS)])
def test_errors_name_file_line_and_expectation(text: str, line: int, message: str) -> None:
    err = fails(text + "\n", filename="t.conf")
    assert (err.file, err.line) == ("t.conf", line), str(err)
    assert message in err.message
    assert str(err).startswith(f"t.conf:{line}: ")


# -- ignored directives and sections ------------------------------------------------------------


def test_ignored_directives_and_sections_warn_and_ifmodule_contents_apply() -> None:
    c = conf(
        """\
        LoadModule proxy_module modules/mod_proxy.so
        ServerRoot /etc/httpd
        <Directory "/var/www">
            Options None
            <Files x>
            </Files>
            NotEvenADirective
        </Directory>
        <IfModule !mod_proxy.c>
            ProxyPreserveHost On
        </IfModule>
        <Proxy "*">
            Require all granted
            ProxySet timeout=5
        </Proxy>
        KeepAlive On
        """
    )
    assert c.scope.preserve_host is True
    # <Proxy URL> blocks hold access rules now (tests/config/test_access.py); their other
    # directives warn, line by line.
    assert [w.split(": ")[0] for w in c.warnings] == ["t.conf:1", "t.conf:2", "t.conf:3", "t.conf:14", "t.conf:16"]
    assert "ProxySet is not used by tunnel in <Proxy URL>; ignored" in c.warnings[3]
    assert [p.pattern for p in c.scope.proxy_access] == ["*"]
    assert "LoadModule is not used by tunnel; ignored" in c.warnings[0]
    assert "<Directory> section is not used by tunnel; skipped" in c.warnings[2]


# -- Include -------------------------------------------------------------------------------------


def test_include_relative_glob_directory_and_optional(tmp_path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "b.conf").write_text("ProxyPass /b ws://b/\n")
    (tmp_path / "conf.d" / "a.conf").write_text("\nProxyPass /a ws://a/\n")
    (tmp_path / "sites").mkdir()
    (tmp_path / "sites" / "s.conf").write_text("ProxyPass /s ws://s/\n")
    main = tmp_path / "main.conf"
    main.write_text("Include conf.d/*.conf\nIncludeOptional missing/*.conf\nIncludeOptional nope.conf\nInclude sites\n")
    c = Config.from_file(str(main))
    assert [r.path for r in c.scope.rules] == ["/a", "/b", "/s"]
    assert (c.scope.rules[0].file, c.scope.rules[0].line) == (str(tmp_path / "conf.d" / "a.conf"), 2)


INCLUDE_ERRORS = [
    ({"main.conf": "Include other.conf\n", "other.conf": "\nInclude main.conf\n"}, "other.conf", 2, "include loop"),
    ({"main.conf": "Include self.conf\n", "self.conf": "Include self.conf\n"}, "self.conf", 1, "include loop"),
    ({"main.conf": "\nInclude none/*.conf\n"}, "main.conf", 2, "no file matches"),
    ({"main.conf": "Include x.conf\n", "x.conf": "\n\nTimeout x\n"}, "x.conf", 3, 'Timeout: expected a positive number'),
    ({"main.conf": "Include x.conf\n</VirtualHost>\n", "x.conf": "<VirtualHost *:80>\n"}, "x.conf", 1, "<VirtualHost> is not closed"),
    ({"main.conf": "<VirtualHost *:80>\nInclude x.conf\n</VirtualHost>\n", "x.conf": "</VirtualHost>\n"}, "x.conf", 1, "closes a section opened in"),
    ({"main.conf": "Include bad.conf\n", "bad.conf": b"\xff\xfe"}, "main.conf", 1, "is not valid UTF-8"),
]


@pytest.mark.parametrize("files, where, line, message", INCLUDE_ERRORS)
def test_include_errors(tmp_path, files: dict[str, Any], where: str, line: int, message: str) -> None:
    for name, content in files.items():
        path = tmp_path / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    with pytest.raises(ConfigError) as info:
        Config.from_file(str(tmp_path / "main.conf"))
    assert (info.value.file, info.value.line) == (str(tmp_path / where), line), str(info.value)
    assert message in info.value.message


# -- virtual hosts ------------------------------------------------------------------------------


def test_vhost_merges_over_the_main_server_as_it_stands_at_the_end() -> None:
    c = conf(
        """\
        ProxyPass /global/ ws://g/
        ProxyTimeout 5
        <VirtualHost *:80 127.0.0.1:8080 [::1]:443 _default_:*>
            ServerName Chat.Example:80
            ServerAlias www.chat.example other.example
            ProxyTimeout 9
            ProxyPass /own/ ws://own/
        </VirtualHost>
        ProxyWebsocketIdleTimeout 30
        ProxyTimeout 7
        ServerName main.example
        """
    )
    (v,) = c.vhosts
    assert v.addresses == (("*", 80), ("127.0.0.1", 8080), ("::1", 443), ("_default_", 0))
    assert (v.server_name, v.aliases, v.line) == ("chat.example", ("www.chat.example", "other.example"), 3)
    assert v.scope.websocket_idle_timeout == 30.0  # a global line after the block still applies
    assert v.scope.proxy_timeout == 9.0 and c.scope.proxy_timeout == 7.0  # the vhost's own wins
    assert v.scope.server_name == "chat.example" and c.scope.server_name == "main.example"
    # mod_proxy appends a vhost's aliases to the main server's (merge_proxy_config)
    assert [r.path for r in v.scope.rules] == ["/global/", "/own/"]
    assert [r.path for r in c.scope.rules] == ["/global/"]
    assert c.scope_for(Listener("", 80), "www.chat.example") is v.scope


def test_vhost_tls_and_proxy_engine_scopes() -> None:
    c = conf(
        """\
        SSLCertificateFile /global.pem
        <VirtualHost *:443>
            SSLEngine On
            SSLProxyEngine On
            ProxyPass / wss://b/
        </VirtualHost>
        <VirtualHost *:80>
            ProxyPass / ws://b/
        </VirtualHost>
        """
    )
    assert c.tls is None
    assert c.vhosts[0].tls == ServerTLS("/global.pem") and c.vhosts[1].tls is None
    assert c.vhosts[0].scope.proxy_tls.engine and not c.scope.proxy_tls.engine


# -- <Location> -----------------------------------------------------------------------------------


def test_location_one_argument_proxy_pass_and_settings() -> None:
    c = conf(
        """\
        ProxyPass /other ws://o/
        <Location /chat>
            ProxyPass ws://short/
        </Location>
        <Location "/chat/room/">
            ProxyPass ws://long/ upgrade=websocket
            ProxyWebsocketIdleTimeout 5
            ProxyWebsocketFallbackToProxyHttp Off
            Require all granted
        </Location>
        <LocationMatch "^/re/">
            ProxyPass ws://re/
        </LocationMatch>
        <Location ~ "^/x">
            ProxyPassMatch ws://x/
        </Location>
        <Location /nothing>
        </Location>
        """
    )
    rules = c.scope.rules
    # The last merged block's ProxyPass wins (httpd merges <Location> and <LocationMatch>
    # in file order), so location rules are tried last block first, before the server's.
    # ProxyPass in <LocationMatch "^/re/"> is a literal prefix in httpd (no wildcards).
    assert [(r.path, r.is_regex) for r in rules] == [
        ("^/x", True), ("^/re/", False), ("/chat/room/", False), ("/chat", False), ("/other", False)
    ]
    assert rules[0].regex is not None and rules[0].regex.pattern == "^/x"
    assert rules[2].upgrade == ("websocket",) and rules[2].line == 6
    assert any("takes '^/re/' as a literal path prefix" in w for w in c.warnings)
    (loc,) = c.scope.locations
    assert (loc.path, loc.settings, loc.line) == (
        "/chat/room/", (("websocket_idle_timeout", 5.0), ("fallback_to_proxy_http", False)), 5
    )


# -- balancers ----------------------------------------------------------------------------------


def test_balancer_in_and_out_of_proxy_blocks() -> None:
    c = conf(
        """\
        SSLProxyEngine On
        <Proxy "balancer://Cluster/">
            BalancerMember ws://a:1 route=a loadfactor=3 lbset=1 retry=0 timeout=4 connectiontimeout=50ms
            BalancerMember wss://b:2/sub route=b redirect=a status=+DH-D upgrade=websocket,chat
            ProxySet lbmethod=ByBusyness stickysession=ROUTEID|routeid nofailover=On
        </Proxy>
        BalancerMember balancer://cluster http://c:3 status=+RN
        ProxySet balancer://cluster maxattempts=2 forcerecovery=off failonstatus=500,503 failontimeout=on
        ProxyPass /lb/ balancer://cluster/app/ timeout=9
        """
    )
    b = c.balancers["cluster"]
    a, bm, cm = b.members
    assert (a.target, a.route, a.loadfactor, a.lbset, a.retry, a.timeout, a.connectiontimeout, a.line) == (
        Target("ws", "a", 1), "a", 3, 1, 0.0, 4.0, 0.05, 3
    )
    assert (bm.target, bm.redirect, bm.status, bm.upgrade) == (
        Target("wss", "b", 2, "/sub"), "a", frozenset("H"), ("websocket", "chat")
    )
    assert cm.status == frozenset("RN") and cm.line == 7
    assert (b.lbmethod, b.stickysession, b.nofailover, b.maxattempts, b.forcerecovery) == (
        "bybusyness", ("ROUTEID", "routeid"), True, 2, False
    )
    assert (b.failonstatus, b.failontimeout, b.timeout, b.line) == ((500, 503), True, 9.0, 2)
    (rule,) = c.scope.rules
    assert (rule.balancer, rule.balancer_path, rule.target, rule.timeout) == ("cluster", "/app/", None, None)
    assert (rule.balancer_scheme, rule.balancer_upgrade) == ("ws", None)


def test_balancer_defined_after_its_proxy_pass() -> None:
    c = conf("ProxyPass / balancer://late/\nBalancerMember balancer://late http://m/ upgrade=h2c\n")
    assert c.scope.rules[0].balancer_scheme == "http" and c.scope.rules[0].balancer_upgrade == ("h2c",)


# -- property: a Config or a ConfigError, nothing else --------------------------------------------

WORDS = st.sampled_from(
    ["ProxyPass", "ProxyPassMatch", "Listen", "Timeout", "ProxyWebsocketAsyncDelay", "BalancerMember", "ProxySet", "SSLEngine", "<VirtualHost", "</VirtualHost>", "<Location", "</Location>", "<Proxy", "</Proxy>", "<IfModule", "</IfModule>", "<Directory", "</Directory>", ">", "/", "/chat", "ws://b/", "wss://b", "balancer://c", "unix:/s|ws://x/", "!", "\\", '"', "'", "#", "=", "upgrade=ANY", "timeout=1", "On", "Off", "10ms", "-1", "*:80", "[::1]:80", "status=+H", "LogFormat", "CustomLog", "combined", "(", "$1", "%2F", "\t"]
)
TEXT = st.lists(st.one_of(WORDS, st.text(max_size=8), st.just("\n"), st.just("\\\n")), max_size=40).map(" ".join)


#: Characters str.splitlines() breaks lines at besides "\n" (httpd and editors do not;
#: see test_only_newlines_end_lines below).
OTHER_LINE_BREAKS = frozenset("\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
FUZZ_FILE = "/nonexistent-dir/fuzz.conf"


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(TEXT, st.text(max_size=200)))
def test_any_text_gives_a_config_or_a_config_error(text: str) -> None:
    try:
        parse(text, filename=FUZZ_FILE)
    except ConfigError as err:
        assert err.file == FUZZ_FILE, str(err)
        assert err.message and str(err) == f"{FUZZ_FILE}:{err.line}: {err.message}"
        if OTHER_LINE_BREAKS.isdisjoint(text):
            # The error names a line of this file that holds a directive (or the start
            # of one continued on the next lines): never a blank line or a comment.
            lines = text.split("\n")
            assert 1 <= err.line <= len(lines), (err.line, len(lines), str(err))
            named = lines[err.line - 1].strip()
            assert named and not named.startswith("#"), (named, str(err))
        else:  # numbered as str.splitlines() numbers them (the xfail below)
            assert 1 <= err.line <= len(text.splitlines()), (err.line, str(err))


#: Lines that parse cleanly whatever follows them, with their physical line counts.
GOOD_LINES = st.sampled_from(
    [
        ("", 1),
        ("# a comment", 1),
        ("   # a comment continued \\\nNoSuchDirective swallowed by the comment", 2),
        ("Timeout 30", 1),
        ("ProxyPass /p/ ws://b/", 1),
        ("ProxyPass /c/ \\\n    ws://c/ \\\n    timeout=4", 3),
        ("LogLevel info", 1),
        ("KeepAlive On", 1),  # ignored with a warning
        ("<IfModule mod_proxy.c>\nProxyPreserveHost On\n</IfModule>", 3),
        ("<Directory /x>\n  Anything here\n</Directory>", 3),
    ]
)
#: One-line errors (from ERRORS), each named at its own line wherever it stands.
BAD_LINES = [text for text, line, _ in ERRORS if line == 1 and "\n" not in text]


@settings(max_examples=200, deadline=None)
@given(before=st.lists(GOOD_LINES, max_size=8), bad=st.sampled_from(BAD_LINES), after=st.lists(GOOD_LINES, max_size=4))
def test_an_error_names_the_line_it_is_on_after_any_lines(before: list[tuple[str, int]], bad: str, after: list[tuple[str, int]]) -> None:
    text = "".join(line + "\n" for line, _ in before) + bad + "\n" + "".join(line + "\n" for line, _ in after)
    expected = sum(n for _, n in before) + 1
    with pytest.raises(ConfigError) as info:
        parse(text, filename="t.conf")
    assert (info.value.file, info.value.line) == ("t.conf", expected), (str(info.value), text)


@pytest.mark.parametrize("separator", ["\x0c", "\x0b", "\r", "\x85", "\u2028"], ids=["ff", "vt", "cr", "nel", "ls"])
def test_only_newlines_end_lines(separator: str) -> None:
    err = fails(f"# a comment{separator}with more words\nProxyWebsocketAsync maybe\n")
    assert (err.line, err.message) == (2, 'ProxyWebsocketAsync: expected On or Off, got "maybe"'), str(err)
