"""On a live proxy: mod_alias redirects in httpd's hook order, vhost host names, the
mod_ssl directives as a TLS client sees them, the 502 line on a rejected backend
certificate, TraceEnable, and the -D / ignored-directive output of the command line
(R88-R97)."""

from __future__ import annotations

import datetime
import logging
import socket
import ssl

import pytest
import trustme
from click.testing import CliRunner

from tests.support.clients import read_head, recv_until_eof, status_of, upgrade_request
from tests.support.waiting import wait_for
from tunnel.cli import cli
from tunnel.echo import EchoServer

pytestmark = pytest.mark.timeout(60)


def request(addr, path: str, host: str = "proxy.test", *, method: str = "GET", extra: str = "", body: bytes = b"",
            tls: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request with Connection: close; (status, lower-cased headers, body)."""
    raw = socket.create_connection(addr[:2], timeout=5)
    sock = tls.wrap_socket(raw, server_hostname="localhost") if tls is not None else raw
    with sock:
        head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}"
        if body:
            head += f"Content-Length: {len(body)}\r\n"
        sock.sendall(head.encode() + b"\r\n" + body)
        data = recv_until_eof(sock)
    top, _, rest = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status_of(top), headers, rest


@pytest.fixture
def page():
    with EchoServer("127.0.0.1", 0, page=b"backend page") as server:
        yield server.address[1]


# -- Redirect (R94) ------------------------------------------------------------------------------


def redirect_config(port: int) -> str:
    return f"""
ProxyPass /app/ http://127.0.0.1:{port}/
ProxyPass /excluded !
Redirect /excluded http://elsewhere.test/ex
Redirect /app/ http://never.test/
Redirect permanent /old http://new.test/new
RedirectMatch 301 ^/m/(.*)$ /moved/$1
Redirect gone /gone
<Location /app/loc>
    Redirect http://loc.test/
</Location>
<Location /ws>
    Redirect seeother /ws http://ws.test/chat
</Location>
ProxyPass /ws ws://127.0.0.1:{port}/
"""


def test_server_redirects_run_only_where_no_proxypass_takes_the_path(make_proxy, page):
    addr = make_proxy(redirect_config(page)).addresses[0]
    status, headers, _ = request(addr, "/old/a%20b?x=1")
    assert (status, headers["location"]) == (301, "http://new.test/new/a%20b?x=1")
    assert request(addr, "/oldies")[0] == 404  # a prefix ends on a segment boundary
    assert request(addr, "/app/page")[:3:2] == (200, b"backend page")  # ProxyPass before mod_alias
    status, headers, _ = request(addr, "/excluded/x")  # an exclusion lets mod_alias have it
    assert (status, headers["location"]) == (302, "http://elsewhere.test/ex/x")
    status, headers, _ = request(addr, "/m/a", host="proxy.test:8080")  # a path target: this server's URL
    assert (status, headers["location"]) == (301, "http://proxy.test:8080/moved/a")
    assert request(addr, "/gone/x")[0] == 410


def test_location_redirects_win_over_proxypass_and_take_websocket_handshakes(make_proxy, page):
    addr = make_proxy(redirect_config(page)).addresses[0]
    status, headers, _ = request(addr, "/app/loc/x?q=2")
    assert (status, headers["location"]) == (302, "http://loc.test/?q=2")
    with socket.create_connection(addr, timeout=5) as sock:
        sock.sendall(upgrade_request("/ws/room", host="proxy.test"))
        head, _ = read_head(sock)
    assert status_of(head) == 303 and b"Location: http://ws.test/chat/room" in head.split(b"\r\n")


def test_use_canonical_name_on_gives_servername_in_self_urls(make_proxy, page):
    addr = make_proxy(
        "<VirtualHost *:*>\n  ServerName https://canon.test:8443\n  UseCanonicalName On\n"
        "  Redirect /r /target\n</VirtualHost>\n"
        "<VirtualHost *:*>\n  ServerName other.test\n  Redirect /r /target\n</VirtualHost>\n"
    ).addresses[0]
    assert request(addr, "/r/x", host="canon.test")[1]["location"] == "https://canon.test:8443/target/x"
    assert request(addr, "/r/x", host="other.test:81")[1]["location"] == "http://other.test:81/target/x"


def test_access_rules_run_before_a_location_redirect(make_proxy, page):
    addr = make_proxy(
        f"ProxyPass /p/ http://127.0.0.1:{page}/\n<Location /p/>\n  Require all denied\n"
        "  Redirect http://x.test/\n</Location>\n"
    ).addresses[0]
    assert request(addr, "/p/a")[0] == 403


# -- vhost host names (R90) -------------------------------------------------------------------


def test_a_vhost_named_by_host_name_matches_its_addresses(make_proxy, page, caplog):
    caplog.set_level(logging.WARNING, logger="tunnel")
    engine = make_proxy(
        f"<VirtualHost no-such-host.invalid:*>\n  ProxyPass /v/ http://127.0.0.1:{page}/\n</VirtualHost>\n"
        f"<VirtualHost localhost:*>\n  ServerName named.test\n  ProxyPass /v/ http://127.0.0.1:{page}/\n</VirtualHost>\n"
    )
    assert request(engine.addresses[0], "/v/")[:3:2] == (200, b"backend page")
    vhosts = engine.config.vhosts
    assert vhosts[0].addresses == () and ("127.0.0.1", 0) in vhosts[1].addresses
    assert "test.conf:2: <VirtualHost no-such-host.invalid:*>: no-such-host.invalid does not resolve" in caplog.text


def test_a_vhost_on_the_local_address_wins_over_wildcard_ones(make_proxy, page):
    addr = make_proxy(
        "<VirtualHost *:*>\n  ServerName wild.test\n  Redirect /w http://wild.test/\n</VirtualHost>\n"
        "<VirtualHost 127.0.0.2:*>\n  Redirect /w http://other-ip.test/\n</VirtualHost>\n"
        "<VirtualHost 127.0.0.1:*>\n  Redirect /w http://exact.test/\n</VirtualHost>\n"
    ).addresses[0]
    assert request(addr, "/w", host="wild.test")[1]["location"] == "http://exact.test/"


# -- TLS (R92, R93) ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    root = trustme.CA()
    inter = root.create_child_ca()
    leaf = inter.issue_cert("localhost", "127.0.0.1")
    files = {
        "leaf": leaf.cert_chain_pems[0], "key": leaf.private_key_pem, "chain": inter.cert_pem, "root": root.cert_pem,
    }
    paths = {}
    for name, blob in files.items():
        blob.write_to_path(str(d / f"{name}.pem"))
        paths[name] = str(d / f"{name}.pem")
    client = root.issue_cert("client.test")
    client.private_key_and_cert_chain_pem.write_to_path(str(d / "client.pem"))
    paths["client"] = str(d / "client.pem")
    return root, paths


def tls_conf(paths, extra: str, page: int) -> str:
    return (
        f"Listen 127.0.0.1:0 https\nSSLEngine on\nSSLCertificateFile {paths['leaf']}\n"
        f"SSLCertificateKeyFile {paths['key']}\n{extra}\nProxyPass / http://127.0.0.1:{page}/\n"
    )


def trusting(root) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    root.configure_trust(ctx)
    return ctx


def test_the_chain_file_is_served(make_proxy, pki, page):
    root, paths = pki
    with_chain = make_proxy(tls_conf(paths, f"SSLCertificateChainFile {paths['chain']}", page))
    assert request(with_chain.addresses[0], "/", tls=trusting(root))[:3:2] == (200, b"backend page")
    without = make_proxy(tls_conf(paths, "", page))
    with pytest.raises(ssl.SSLCertVerificationError):
        request(without.addresses[0], "/", tls=trusting(root))


def test_protocol_and_cipher_settings_are_what_a_client_gets(make_proxy, pki, page):
    root, paths = pki
    engine = make_proxy(tls_conf(
        paths,
        f"SSLCertificateChainFile {paths['chain']}\nSSLProtocol all -SSLv2 -SSLv3 -TLSv1 -TLSv1.1 -TLSv1.3\n"
        "SSLCipherSuite ECDHE-ECDSA-AES256-GCM-SHA384\nSSLHonorCipherOrder on\nSSLSessionTickets off",
        page,
    ))
    ctx = trusting(root)
    with ctx.wrap_socket(socket.create_connection(engine.addresses[0], timeout=5), server_hostname="localhost") as s:
        assert s.version() == "TLSv1.2"
        assert s.cipher()[0] == "ECDHE-ECDSA-AES256-GCM-SHA384"
    ctx13 = trusting(root)
    ctx13.minimum_version = ssl.TLSVersion.TLSv1_3
    with pytest.raises(ssl.SSLError):
        request(engine.addresses[0], "/", tls=ctx13)


def test_client_certificates_are_required_when_configured(make_proxy, pki, page, caplog):
    root, paths = pki
    engine = make_proxy(tls_conf(
        paths, f"SSLCertificateChainFile {paths['chain']}\nSSLCACertificateFile {paths['root']}\nSSLVerifyClient require",
        page,
    ))
    with_cert = trusting(root)
    with_cert.load_cert_chain(paths["client"])
    assert request(engine.addresses[0], "/", tls=with_cert)[0] == 200
    try:  # TLS 1.3: the client's handshake may end before the server refuses it
        status = request(engine.addresses[0], "/", tls=trusting(root))[0]
    except (ssl.SSLError, ConnectionError):
        status = 0
    assert status != 200
    wait_for(lambda: "PEER_DID_NOT_RETURN_A_CERTIFICATE" in caplog.text, what="the refused handshake logged")


@pytest.fixture(scope="module")
def expired_backend_pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("backend-pki")
    ca = trustme.CA()
    old = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    cert = ca.issue_cert("localhost", "127.0.0.1", not_before=old, not_after=old + datetime.timedelta(days=1))
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    return cert, str(d / "ca.pem")


def test_a_rejected_backend_certificate_logs_how_to_do_as_httpd(make_proxy, expired_backend_pki, caplog):
    cert, ca_file = expired_backend_pki
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    with EchoServer("127.0.0.1", 0, page=b"tls backend", ssl_context=ctx) as backend:
        port = backend.address[1]
        checked = make_proxy(f"SSLProxyEngine on\nSSLProxyCACertificateFile {ca_file}\nProxyPass / https://127.0.0.1:{port}/\n")
        assert request(checked.addresses[0], "/")[0] == 502
        assert "certificate has expired" in caplog.text
        assert "httpd does not: to do as httpd, set SSLProxyVerify none and SSLProxyCheckPeerName off" in caplog.text
        # SSLProxyCheckPeerExpire Off: the same chain, its dates not checked.
        lenient = make_proxy(
            f"SSLProxyEngine on\nSSLProxyCACertificateFile {ca_file}\nSSLProxyVerify require\n"
            f"SSLProxyCheckPeerExpire off\nProxyPass / https://127.0.0.1:{port}/\n"
        )
        assert request(lenient.addresses[0], "/")[:3:2] == (200, b"tls backend")


# -- TraceEnable -----------------------------------------------------------------------------


def test_trace_enable(make_proxy, page):
    off = make_proxy(f"TraceEnable Off\nProxyPass / http://127.0.0.1:{page}/\n").addresses[0]
    assert request(off, "/", method="TRACE")[0] == 405
    on = make_proxy(f"ProxyPass / http://127.0.0.1:{page}/\n").addresses[0]
    assert request(on, "/", method="TRACE", body=b"data")[0] == 413


# -- the command line (R88, R97) ----------------------------------------------------------------


def test_configtest_takes_d_names_lists_ignored_directives_and_names_undefined_variables(tmp_path, monkeypatch):
    monkeypatch.delenv("APACHE_LOG_DIR", raising=False)
    conf = tmp_path / "site.conf"
    conf.write_text(
        "Listen 127.0.0.1:8080\nServerAdmin root@localhost\n<IfDefine PROXY>\n  ProxyPass /p/ ws://127.0.0.1:9/\n"
        "</IfDefine>\nKeepAlive On\n"
    )
    result = CliRunner().invoke(cli, ["configtest", "-D", "PROXY", str(conf)])
    assert result.exit_code == 0, result.output
    assert "ProxyPass /p/ -> ws://127.0.0.1:9/" in result.output and "Syntax OK" in result.output
    assert "Ignored directives (2 lines; no effect on proxied traffic):" in result.output
    assert f"  KeepAlive: {conf}:6" in result.output and f"  ServerAdmin: {conf}:2" in result.output
    assert "ProxyPass /p/" not in CliRunner().invoke(cli, ["configtest", str(conf)]).output
    conf.write_text("Listen 127.0.0.1:8080\nErrorLog ${APACHE_LOG_DIR}/error.log\n")
    result = CliRunner().invoke(cli, ["configtest", str(conf)])
    assert result.exit_code == 1 and f"{conf}:2: ${{APACHE_LOG_DIR}} is not defined" in result.output
    monkeypatch.setenv("APACHE_LOG_DIR", str(tmp_path))
    assert CliRunner().invoke(cli, ["configtest", str(conf)]).exit_code == 0


def test_configtest_and_serve_build_the_tls_contexts(tmp_path):
    conf = tmp_path / "tls.conf"
    conf.write_text(
        f"Listen 127.0.0.1:0 https\nSSLEngine on\nSSLCertificateFile {tmp_path}/missing.pem\n"
        "ProxyPass / ws://127.0.0.1:9/\n"
    )
    for args in (["configtest", str(conf)], ["serve", "--config", str(conf)]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1, result.output
        assert f"{conf}:2: the TLS settings of this SSLEngine name no such file: SSLCertificateFile {tmp_path}/missing.pem" in result.output
        assert "Traceback" not in result.output


def test_configtest_reports_a_cipher_string_openssl_rejects(tmp_path, pki):
    _, paths = pki
    conf = tmp_path / "tls.conf"
    conf.write_text(
        f"Listen 127.0.0.1:0 https\nSSLEngine on\nSSLCertificateFile {paths['leaf']}\n"
        f"SSLCertificateKeyFile {paths['key']}\nSSLCipherSuite NO-SUCH-CIPHER\n"
    )
    result = CliRunner().invoke(cli, ["configtest", str(conf)])
    assert result.exit_code == 1 and f"{conf}:2: the TLS settings of this SSLEngine cannot be used" in result.output
