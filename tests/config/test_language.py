"""The rest of what published httpd files carry: Define and ${VAR}, the conditional
sections, the core directives (ServerName, Protocols, HostnameLookups,
UseCanonicalName, TraceEnable, ErrorDocument), the mod_ssl directives, mod_alias's
Redirect lines, the worker keys and the ignored directives (R88-R97)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.support.sansio import conf
from tunnel.config import ConfigError, parse
from tunnel.config.corehooks import version_matches
from tunnel.configtest import ignored_summary

pytestmark = pytest.mark.timeout(30)

FIXTURES = Path(__file__).parent / "fixtures"


def fails(text: str, **kw) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(textwrap.dedent(text), filename="t.conf", **kw)
    return info.value


# -- Define, ${VAR}, <IfDefine> (R88) ------------------------------------------------------


def test_define_and_the_environment_fill_variables_when_the_line_is_read() -> None:
    c = parse(
        "Define BACKEND 127.0.0.1:9000\n"
        "ProxyPass /a ws://${BACKEND}/\n"
        "Define BACKEND 10.0.0.1:9000\n"  # a later Define changes later lines only
        "ProxyPass /b ws://${BACKEND}/\n"
        "ErrorLog ${APACHE_LOG_DIR}/error.log\n"
        "ProxyPass /c ws://${HOSTNAME_SET?=fallback.test}/\n",
        filename="t.conf",
        environ={"APACHE_LOG_DIR": "/var/log/apache2"},
    )
    a, b, c_ = c.scope.rules
    assert (a.target.host, a.target.port) == ("127.0.0.1", 9000)
    assert b.target.host == "10.0.0.1"
    assert c.log.error_log == "/var/log/apache2/error.log"
    assert c_.target.host == "fallback.test"


def test_a_defined_name_wins_over_the_environment_and_undefine_removes_it() -> None:
    c = parse("Define X from-define\nProxyPass /a ws://${X}/\nUnDefine X\nProxyPass /b ws://${X}/\n",
              filename="t.conf", environ={"X": "from-env"})
    assert [r.target.host for r in c.scope.rules] == ["from-define", "from-env"]


def test_an_undefined_variable_is_an_error_naming_it_and_how_to_define_it() -> None:
    err = fails("Listen 8080\n\nCustomLog ${APACHE_LOG_DIR}/access.log combined\n", environ={})
    assert (err.file, err.line) == ("t.conf", 3)
    assert "${APACHE_LOG_DIR} is not defined" in err.message
    assert 'Define APACHE_LOG_DIR value' in err.message and "export APACHE_LOG_DIR" in err.message


def test_a_bare_define_gives_no_value_and_a_colon_name_is_left_as_written() -> None:
    err = fails("Define FLAG\nServerName ${FLAG}\n", environ={})
    assert err.line == 2 and "Define gave it no value" in err.message
    # ${map:key} is mod_rewrite's RewriteMap syntax: left alone, and refused there by name.
    err = fails("RewriteEngine On\nRewriteRule ^/(.*) ${map:$1} [P]\n", environ={})
    assert err.line == 2 and "is not defined" not in err.message and err.message.startswith("RewriteRule:")
    assert fails("Define a:b 1\n").message == "Define: a variable name must not contain ':'"


def test_ifdefine_reads_or_skips_its_body_and_takes_command_line_defines() -> None:
    text = """\
        <IfDefine SSL>
            ProxyPass /tls ws://b/
        </IfDefine>
        <IfDefine !SSL>
            ProxyPass /plain ws://${NEVER_READ}/
        </IfDefine>
        """
    assert [r.path for r in parse(textwrap.dedent(text), defines={"SSL": None}).scope.rules] == ["/tls"]
    # Skipped bodies are not read: their undefined variables do not matter.
    assert [r.path for r in parse(textwrap.dedent(text), environ={"NEVER_READ": "x"}).scope.rules] == ["/plain"]
    from tunnel.config import Config

    assert [r.path for r in Config.from_text(textwrap.dedent(text), defines=["SSL"]).scope.rules] == ["/tls"]


def test_define_in_a_location_is_an_error_and_sections_need_their_argument() -> None:
    err = fails("<Location /a>\n  Define X 1\n</Location>\n")
    assert err.line == 2 and "Define: not allowed in <Location>" in err.message
    assert "expected one [!]name" in fails("<IfDefine>\n</IfDefine>\n").message
    assert fails("<IfDefine X>\nProxyPass /a ws://b/\n").message == "<IfDefine> is not closed"


@pytest.mark.parametrize(
    "args, expected",
    [(["2.4"], False), ([">=", "2.4"], True), (["<", "2.4"], False), (["!=", "2.2"], True), (["~", "^2\\.4"], True),
     (["/^2\\.2/"], False), ([">", "2.4.100"], False), (["=", "2.4.62"], True)],
)
def test_ifversion_compares_with_httpd_2_4(args: list[str], expected: bool) -> None:
    assert version_matches(args) is expected


def test_ifversion_and_iffile_sections(tmp_path: Path) -> None:
    (tmp_path / "present.conf").write_text("")
    main = tmp_path / "main.conf"
    main.write_text(
        "<IfVersion >= 2.4>\nProxyPass /new ws://b/\n</IfVersion>\n"
        "<IfVersion < 2.4>\nOrder allow,deny\n</IfVersion>\n"
        "<IfFile present.conf>\nProxyPass /file ws://b/\n</IfFile>\n"
        "<IfFile !present.conf>\nProxyPass /nofile ws://b/\n</IfFile>\n"
    )
    from tunnel.config import Config

    assert [r.path for r in Config.from_file(str(main)).scope.rules] == ["/new", "/file"]
    err = fails("<IfVersion >> 2.4>\n</IfVersion>\n")
    assert err.line == 1 and "operator" in err.message


# -- core directives (R91, R95) ---------------------------------------------------------------


def test_servername_keeps_scheme_and_port_and_core_directives_parse() -> None:
    c = conf(
        """\
        ServerName https://www.example.test:8443
        UseCanonicalName On
        HostnameLookups Off
        Protocols h2 http/1.1
        ProtocolsHonorOrder Off
        TraceEnable off
        """
    )
    s = c.scope
    assert (s.server_scheme, s.server_name, s.server_port) == ("https", "www.example.test", 8443)
    assert (s.use_canonical_name, s.protocols, s.protocols_honor_order, s.trace_enable) == (
        True, ("h2", "http/1.1"), False, "off")
    assert c.warnings == ()  # h2 is served on TLS listeners (R140)


@pytest.mark.parametrize(
    "line, message",
    [
        ("HostnameLookups On", "HostnameLookups: On is not supported: tunnel never looks up client host names"),
        ("HostnameLookups Double", "HostnameLookups: Double is not supported"),
        ("UseCanonicalName DNS", "UseCanonicalName: DNS is not supported"),
        ("UseCanonicalName maybe", "UseCanonicalName: expected On, Off or DNS"),
        ("Protocols h2c http/1.1", "Protocols: h2c (HTTP/2 over cleartext) is not supported"),
        ("Protocols http/1.1 spdy", 'Protocols: expected h2 or http/1.1, got "spdy"'),
        ("TraceEnable maybe", "TraceEnable: expected On, Off or Extended"),
        ("ServerName http://a b", "ServerName: expected [scheme://]name[:port], got 2 arguments"),
        ("ServerName a.test:99999", 'ServerName: expected [scheme://]host name[:port], got "a.test:99999"'),
        ("ErrorDocument 503 http://status.example/", "ErrorDocument: http://status.example/: an ErrorDocument URL"),
    ],
)
def test_core_directive_errors_name_the_line(line: str, message: str) -> None:
    err = fails(f"Listen 80\n{line}\n")
    assert (err.file, err.line) == ("t.conf", 2) and message in err.message, err.message


# -- TLS (R92, R93) ----------------------------------------------------------------------------


def test_certbots_options_file_loads_unchanged(tmp_path: Path) -> None:
    main = tmp_path / "site-le-ssl.conf"
    main.write_text(
        "Listen 443 https\n<VirtualHost *:443>\n  ServerName example.test\n  ProxyPass / ws://127.0.0.1:9000/\n"
        f"  SSLCertificateFile {tmp_path}/fullchain.pem\n  SSLCertificateKeyFile {tmp_path}/privkey.pem\n"
        f"  Include {FIXTURES}/options-ssl-apache.conf\n</VirtualHost>\n"
    )
    from tunnel.config import Config

    c = Config.from_file(str(main))
    tls = c.vhosts[0].tls
    assert tls is not None
    assert (tls.min_protocol, tls.max_protocol) == ("TLSv1.2", "TLSv1.3")
    assert tls.ciphers is not None and tls.ciphers.startswith("ECDHE-ECDSA-AES128-GCM-SHA256:")
    assert (tls.honor_cipher_order, tls.session_tickets) == (False, False)
    assert c.ignored == (("SSLOptions", f"{FIXTURES}/options-ssl-apache.conf:15"),)


def test_tls_directives_fill_the_server_and_proxy_contexts() -> None:
    c = conf(
        """\
        SSLEngine on
        SSLCertificateFile c.pem
        SSLCertificateChainFile chain.pem
        SSLCACertificateFile ca.pem
        SSLVerifyClient require
        SSLVerifyDepth 2
        SSLProtocol -all +TLSv1.2
        SSLCipherSuite SSL ECDHE-ECDSA-AES128-GCM-SHA256
        SSLCipherSuite TLSv1.3 TLS_AES_256_GCM_SHA384
        SSLOpenSSLConfCmd Curves X25519:prime256v1
        SSLOpenSSLConfCmd ECDHParameters prime256v1
        SSLOpenSSLConfCmd DHParameters dh.pem
        SSLOpenSSLConfCmd Options -SessionTicket,ServerPreference
        SSLCompression off
        SSLProxyEngine on
        SSLProxyCheckPeerCN off
        SSLProxyCheckPeerExpire off
        SSLProxyProtocol all -TLSv1 -TLSv1.1 -TLSv1.2
        SSLProxyCipherSuite ECDHE-RSA-AES128-GCM-SHA256
        """
    )
    tls = c.tls
    assert tls is not None
    assert (tls.chain_file, tls.ca_file, tls.verify_client, tls.verify_depth) == ("chain.pem", "ca.pem", "require", 2)
    assert (tls.min_protocol, tls.max_protocol, tls.ciphers) == ("TLSv1.2", "TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256")
    assert (tls.curves, tls.dh_params, tls.session_tickets, tls.honor_cipher_order) == ("prime256v1", "dh.pem", False, True)
    p = c.scope.proxy_tls
    assert (p.check_peer_cn, p.check_peer_expire, p.min_protocol, p.max_protocol, p.ciphers) == (
        False, False, "TLSv1.3", "TLSv1.3", "ECDHE-RSA-AES128-GCM-SHA256")
    text = "\n".join(c.warnings)
    assert "t.conf:5: SSLVerifyClient require: SSLVerifyDepth cannot be applied" in text
    assert "t.conf:9: SSLCipherSuite TLSv1.3 is accepted but not applied" in text
    assert "t.conf:10: SSLOpenSSLConfCmd Curves X25519:prime256v1: Python's ssl can set one curve only" in text


@pytest.mark.parametrize(
    "line, message",
    [
        ("SSLCompression On", "SSLCompression: On is not supported: TLS compression is off"),
        ("SSLVerifyClient optional_no_ca", "SSLVerifyClient: optional_no_ca is not supported"),
        ("SSLVerifyClient sometimes", 'SSLVerifyClient: expected none, optional or require, got "sometimes"'),
        ("SSLVerifyDepth deep", 'SSLVerifyDepth: expected a number, got "deep"'),
        ("SSLOpenSSLConfCmd SignatureAlgorithms RSA+SHA256", 'SSLOpenSSLConfCmd: command "SignatureAlgorithms" is not supported'),
        ("SSLOpenSSLConfCmd Options Bugs", 'SSLOpenSSLConfCmd: expected [-]option among ServerPreference'),
        ("SSLOpenSSLConfCmd MinProtocol TLSv1", "expected TLSv1.2 or TLSv1.3 (tunnel offers no older protocol)"),
        ("SSLCipherSuite TLSv1.2 HIGH", 'SSLCipherSuite: expected SSL or TLSv1.3 before the cipher string, got "TLSv1.2"'),
        ("SSLProtocol -all +TLSv1.1", "SSLProtocol: no protocol tunnel supports is enabled"),
        ("SSLProxyProtocol +QUIC", 'SSLProxyProtocol: expected [+-]all, SSLv2'),
        ("SSLProxyCheckPeerExpire maybe", 'SSLProxyCheckPeerExpire: expected On or Off, got "maybe"'),
    ],
)
def test_tls_directive_errors_name_the_line(line: str, message: str) -> None:
    err = fails(f"Listen 443\n{line}\n")
    assert (err.file, err.line) == ("t.conf", 2) and message in err.message, err.message


def test_client_verification_needs_a_ca_file() -> None:
    err = fails("SSLEngine on\nSSLCertificateFile c.pem\nSSLVerifyClient require\n")
    assert err.line == 1 and "SSLVerifyClient require needs SSLCACertificateFile" in err.message


def test_every_tls_backend_without_sslproxyverify_gets_a_warning() -> None:
    c = conf(
        """\
        SSLProxyEngine on
        ProxyPass /a wss://a.test/
        ProxyPass /p http://plain.test/
        <Proxy balancer://c>
            BalancerMember https://m1.test/
            BalancerMember http://m2.test/
        </Proxy>
        ProxyPass /c balancer://c/
        <VirtualHost *:80>
            SSLProxyVerify require
            ProxyPass /v wss://v.test/
        </VirtualHost>
        """
    )
    verify = [w for w in c.warnings if "SSLProxyVerify" in w]
    assert verify == [
        "t.conf:2: backend wss://a.test/: its certificate is verified (tunnel's default; httpd's is SSLProxyVerify "
        "none): write SSLProxyVerify require to keep that, or SSLProxyVerify none and SSLProxyCheckPeerName off "
        "to do as httpd",
        "t.conf:5: BalancerMember https://m1.test/: its certificate is verified (tunnel's default; httpd's is "
        "SSLProxyVerify none): write SSLProxyVerify require to keep that, or SSLProxyVerify none and "
        "SSLProxyCheckPeerName off to do as httpd",
    ]
    quiet = conf("SSLProxyEngine on\nSSLProxyVerify none\nProxyPass /a wss://a.test/\n")
    assert not [w for w in quiet.warnings if "SSLProxyVerify" in w]


# -- worker keys (R96) ----------------------------------------------------------------------


def test_pool_and_buffer_keys_are_accepted_and_validated_as_httpd_does() -> None:
    keys = ("flushpackets=auto flushwait=20 keepalive=On ping=500ms acquire=3000 max=20 smax=5 min=1 ttl=60 "
            "disablereuse=On enablereuse=off iobuffersize=65536 receivebuffersize=0 lbset=1 addressttl=-1 "
            "responsefieldsize=16384 timeout=7 connectiontimeout=2")
    c = conf(f"ProxyPass /a ws://b/ {keys}\n<Proxy balancer://c>\nBalancerMember ws://m/ {keys}\n</Proxy>\n")
    rule = c.scope.rules[0]
    assert (rule.timeout, rule.connectiontimeout) == (7.0, 2.0)
    assert dict(rule.keys)["ping"] == "500ms"
    member = c.balancers["c"].members[0]
    assert (member.timeout, member.lbset) == (7.0, 1)


@pytest.mark.parametrize(
    "key, message",
    [
        ("flushpackets=sometimes", 'flushpackets= expected on or off or auto, got "sometimes"'),
        ("flushwait=2000", 'flushwait= expected a number of milliseconds from 0 to 1000, got "2000"'),
        ("ping=0", "ping= expected a time of at least 1ms"),
        ("ping=soon", "ping= expected a time of at least 1ms"),
        ("acquire=0ms", "acquire= expected a time of at least 1ms"),
        ("ttl=0", 'ttl= expected a number of seconds >= 1, got "0"'),
        ("iobuffersize=100", "iobuffersize= expected a byte count >= 512, or 0 for the system default"),
        ("disablereuse=1", 'disablereuse= expected On or Off, got "1"'),
        ("lbset=100", 'lbset= expected an integer from 0 to 99, got "100"'),
    ],
)
def test_worker_key_errors_name_the_key(key: str, message: str) -> None:
    err = fails(f"Listen 80\nProxyPass /a ws://b/ {key}\n")
    assert err.line == 2 and message in err.message, err.message


# -- Redirect (R94) ---------------------------------------------------------------------------


def test_redirect_forms_are_read_as_mod_alias_reads_them() -> None:
    c = conf(
        """\
        Redirect /a http://x.test/a
        Redirect permanent /b https://x.test/b
        Redirect 303 /c /elsewhere
        Redirect gone /d
        Redirect 404 /e
        RedirectMatch ^/f/(.*)$ http://x.test/$1
        RedirectMatch 301 ^/g http://x.test/g
        RedirectPermanent /h http://x.test/h
        RedirectTemp /i http://x.test/i
        <Location /loc>
            Redirect permanent http://x.test/loc
            Redirect /loc/sub http://x.test/sub
        </Location>
        <Location /gone>
            Redirect gone
        </Location>
        """
    )
    got = [(r.path, r.url, r.status, r.regex is not None) for r in c.scope.redirects]
    assert got == [
        ("/a", "http://x.test/a", 302, False), ("/b", "https://x.test/b", 301, False), ("/c", "/elsewhere", 303, False),
        ("/d", None, 410, False), ("/e", None, 404, False), ("^/f/(.*)$", "http://x.test/$1", 302, True),
        ("^/g", "http://x.test/g", 301, True), ("/h", "http://x.test/h", 301, False), ("/i", "http://x.test/i", 302, False),
    ]
    loc, gone = c.scope.locations
    assert [(r.path, r.url, r.status) for r in loc.redirects] == [
        ("", "http://x.test/loc", 301), ("/loc/sub", "http://x.test/sub", 302)]
    assert [(r.path, r.url, r.status) for r in gone.redirects] == [("", None, 410)]
    from tunnel.configtest import summary

    shown = summary(c)
    assert "  Redirect 301 /b -> https://x.test/b (where no route takes the path)  [t.conf:2]" in shown
    assert "  RedirectMatch 302 ^/f/(.*)$ -> http://x.test/$1 (where no route takes the path)  [t.conf:6]" in shown
    assert "  <Location /loc> Redirect 301 -> http://x.test/loc  [t.conf:11]" in shown
    assert "  <Location /gone> Redirect 410  [t.conf:15]" in shown


@pytest.mark.parametrize(
    "line, message",
    [
        ("Redirect sometimes /a http://x/", "Redirect: invalid first argument (of three)"),
        ("Redirect /a", "Redirect: the URL to redirect to is missing"),
        ("Redirect /a x.test/b", 'Redirect: redirect to a non-URL "x.test/b"'),
        ("Redirect gone /a http://x/", "Redirect: a URL is not valid with status 410"),
        ("Redirect 3000 /a http://x/", 'Redirect: "3000" is not an HTTP status code'),
        ("Redirect a http://x/", 'Redirect: the URL-path must start with "/", got "a"'),
        ("RedirectMatch ^/(a http://x/", "RedirectMatch: bad regular expression"),
        ("RedirectPermanent /a", "RedirectPermanent: expected URL-path URL"),
        ("Redirect 301 /a http://x/ extra", "Redirect: expected [status] URL-path URL"),
    ],
)
def test_redirect_errors_name_the_line(line: str, message: str) -> None:
    err = fails(f"Listen 80\n{line}\n")
    assert (err.file, err.line) == ("t.conf", 2) and message in err.message, err.message


def test_vhost_redirects_come_before_the_main_servers() -> None:
    c = conf("Redirect /m http://main/\n<VirtualHost *:80>\nRedirect /v http://vhost/\n</VirtualHost>\n")
    assert [r.path for r in c.vhosts[0].scope.redirects] == ["/v", "/m"]


# -- ignored directives (R97) ------------------------------------------------------------------


def test_ignored_directives_warn_once_each_and_configtest_lists_them() -> None:
    c = conf(
        """\
        ServerRoot /etc/apache2
        Mutex file:${APACHE_LOCK_DIR} default
        PidFile ${APACHE_PID_FILE}
        User ${APACHE_RUN_USER}
        KeepAlive On
        KeepAlive Off
        EnableSendfile Off
        ErrorDocument 404 /missing.html
        """.replace("${APACHE_LOCK_DIR}", "/var/lock").replace("${APACHE_PID_FILE}", "/run/a.pid")
        .replace("${APACHE_RUN_USER}", "www-data")
    )
    assert len(c.warnings) == 7  # PidFile is a real directive (tunnel ctl finds the instance by it)
    assert c.warnings[3] == "t.conf:5: KeepAlive is not used by tunnel; ignored"
    assert c.pid_file == "/run/a.pid"
    assert ignored_summary(c).splitlines() == [
        "Ignored directives (7 lines; no effect on proxied traffic):",
        "  EnableSendfile: t.conf:7",
        "  ErrorDocument: t.conf:8",
        "  KeepAlive: t.conf:5, t.conf:6",
        "  Mutex: t.conf:2",
        "  ServerRoot: t.conf:1",
        "  User: t.conf:4",
    ]
    assert ignored_summary(conf("")) == ""
