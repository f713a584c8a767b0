"""PROXY protocol v1/v2 on plain and TLS listeners, and RemoteIPHeader, live (R130, R131):
the carried address is the client everywhere (X-Forwarded-For, Require ip, %a), a bad,
missing, truncated or untrusted header closes the connection and the backend never
sees it."""

from __future__ import annotations

import logging
import socket
import ssl

import pytest
import trustme

from tests.protocol.test_proxyproto import BAD, v2_inet4, v2_inet6
from tests.support.backends import Recorder
from tests.support.clients import read_head, status_of, upgrade_request
from tests.support.waiting import wait_for
from tunnel.config import Config, ConfigError

pytestmark = pytest.mark.timeout(60)

V1 = b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\n"
GET = b"GET /app/x HTTP/1.1\r\nHost: example.test\r\n\r\n"


def _xff(head: bytes) -> str:
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"x-forwarded-for:"):
            return line.split(b":", 1)[1].strip().decode()
    return ""


def _exchange(addr, *chunks: bytes) -> tuple[int, bytes]:
    with socket.create_connection(addr, timeout=5) as s:
        for chunk in chunks:
            s.sendall(chunk)
        head, rest = read_head(s)
        return status_of(head), head + rest


def _closed_without_answer(addr, data: bytes) -> bool:
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(data)
        try:
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        try:
            return s.recv(100) == b""
        except ConnectionResetError:
            return True


@pytest.fixture
def recorder():
    with Recorder("app") as r:
        yield r


def _proxy(make_proxy, recorder, extra: str = "", log: str = ""):
    return make_proxy(
        "RemoteIPProxyProtocol On\n"
        f"{extra}"
        f"ProxyPass /app/ http://127.0.0.1:{recorder.address[1]}/app/\n"
        f"ProxyPass /ws/ ws://127.0.0.1:{recorder.address[1]}/ws/\n"
        f"{log}"
    )


@pytest.mark.parametrize(
    "header,client",
    [(V1, "203.0.113.7"), (v2_inet4(), "203.0.113.7"), (v2_inet6(), "2001:db8::7"),
     (b"PROXY UNKNOWN\r\n", "127.0.0.1")],
    ids=["v1", "v2-inet4", "v2-inet6", "v1-unknown"],
)
def test_the_carried_address_is_the_client(make_proxy, recorder, header, client):
    engine = _proxy(make_proxy, recorder)
    status, _ = _exchange(engine.addresses[0], header + GET)  # header and request in one segment
    assert status == 200
    wait_for(lambda: recorder.heads, what="the backend's request")
    assert _xff(recorder.heads[0]) == client


def test_a_header_in_pieces_and_a_websocket_after_it(make_proxy, recorder):
    engine = _proxy(make_proxy, recorder)
    header = v2_inet4()
    with socket.create_connection(engine.addresses[0], timeout=5) as s:
        for i in range(len(V1)):
            s.sendall(V1[i : i + 1])  # one byte at a time: nothing past the line is taken
        s.sendall(upgrade_request("/ws/chat"))
        head, rest = read_head(s)
        assert status_of(head) == 101
    status, _ = _exchange(engine.addresses[0], header[:5], header[5:17], header[17:], GET)
    assert status == 200
    wait_for(lambda: len(recorder.heads) == 2)
    assert [_xff(h) for h in recorder.heads] == ["203.0.113.7", "203.0.113.7"]


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_bad_header_closes_the_connection_and_no_backend_is_contacted(make_proxy, recorder, caplog, name):
    engine = _proxy(make_proxy, recorder)
    with caplog.at_level(logging.WARNING, logger="tunnel"):
        assert _closed_without_answer(engine.addresses[0], BAD[name] + GET)
        wait_for(lambda: any("PROXY protocol" in r.getMessage() for r in caplog.records), what="the log line")
    assert recorder.accepted == 0


def test_every_truncation_closes_without_contacting_the_backend(make_proxy, recorder):
    engine = _proxy(make_proxy, recorder, extra="RequestReadTimeout header=2\n")
    for header in (V1, v2_inet4()):
        for n in range(0, len(header)):
            assert _closed_without_answer(engine.addresses[0], header[:n])
    assert recorder.accepted == 0


def test_no_header_at_all_before_the_deadline_closes(make_proxy, recorder, caplog):
    engine = _proxy(make_proxy, recorder, extra="RequestReadTimeout header=1\n")
    with caplog.at_level(logging.WARNING, logger="tunnel"), socket.create_connection(engine.addresses[0], timeout=5) as s:
        assert s.recv(10) == b""  # closed at the deadline
    assert any("before the deadline" in r.getMessage() for r in caplog.records)


def test_trusted_senders_and_exceptions(make_proxy, recorder):
    untrusted = _proxy(make_proxy, recorder, extra="RemoteIPTrustedProxy 10.0.0.0/8\n")
    assert _closed_without_answer(untrusted.addresses[0], V1 + GET)  # 127.0.0.1 may not send one
    trusted = _proxy(make_proxy, recorder, extra="RemoteIPInternalProxy 127.0.0.1\n")
    assert _exchange(trusted.addresses[0], V1 + GET)[0] == 200
    excepted = _proxy(make_proxy, recorder, extra="RemoteIPProxyProtocolExceptions 127.0.0.0/8\n")
    assert _exchange(excepted.addresses[0], GET)[0] == 200  # no header from an exception
    wait_for(lambda: len(recorder.heads) == 2)
    assert [_xff(h) for h in recorder.heads] == ["203.0.113.7", "127.0.0.1"]


def test_require_ip_and_the_log_use_the_carried_address(make_proxy, recorder, tmp_path):
    log = tmp_path / "access.log"
    engine = _proxy(
        make_proxy,
        recorder,
        extra="<Location /app/>\n  Require ip 203.0.113.0/24\n</Location>\n",
        log=f'LogFormat "%a %h %{{c}}a %>s" pp\nCustomLog {log} pp\n',
    )
    addr = engine.addresses[0]
    assert _exchange(addr, V1 + GET)[0] == 200
    other = b"PROXY TCP4 198.51.100.1 192.0.2.1 4000 443\r\n"
    assert _exchange(addr, other + GET)[0] == 403
    wait_for(lambda: log.exists() and len(log.read_text().splitlines()) == 2, what="two log lines")
    assert log.read_text().splitlines() == ["203.0.113.7 203.0.113.7 127.0.0.1 200", "198.51.100.1 198.51.100.1 127.0.0.1 403"]
    assert recorder.accepted == 1


def test_a_tls_listener_reads_the_header_before_the_handshake(make_proxy, recorder, tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    pem = tmp_path / "proxy.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
    engine = make_proxy(
        f"Listen 127.0.0.1:0 https\nSSLEngine On\nSSLCertificateFile {pem}\nRemoteIPProxyProtocol On\n"
        f"ProxyPass /app/ http://127.0.0.1:{recorder.address[1]}/app/\n"
    )
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    for header in (V1, v2_inet6()):
        raw = socket.create_connection(engine.addresses[0], timeout=5)
        raw.sendall(header)
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(GET)
            head, _ = read_head(tls)
            assert status_of(head) == 200
    wait_for(lambda: len(recorder.heads) == 2)
    assert [_xff(h) for h in recorder.heads] == ["203.0.113.7", "2001:db8::7"]


def test_remoteip_header_behind_an_http_balancer(make_proxy, recorder, tmp_path):
    log = tmp_path / "access.log"
    engine = make_proxy(
        "RemoteIPHeader X-Forwarded-For\nRemoteIPInternalProxy 127.0.0.1\nRemoteIPProxiesHeader X-Forwarded-By\n"
        "RemoteIPTrustedProxy 198.51.100.0/24\n"
        f'LogFormat "%a %{{c}}a %{{X-Forwarded-For}}i" ri\nCustomLog {log} ri\n'
        f"ProxyPass /app/ http://127.0.0.1:{recorder.address[1]}/app/\n"
    )
    status, _ = _exchange(
        engine.addresses[0], b"GET /app/x HTTP/1.1\r\nHost: e\r\nX-Forwarded-For: 10.0.0.1, 203.0.113.7, 198.51.100.4\r\n\r\n"
    )
    assert status == 200
    wait_for(lambda: recorder.heads)
    head = recorder.heads[0]
    # 127.0.0.1 (internal) -> 198.51.100.4 (trusted) -> 203.0.113.7; the private 10.0.0.1
    # behind a trusted external proxy stays, and the proxy adds the client after it.
    assert _xff(head) == "10.0.0.1, 203.0.113.7"
    assert b"X-Forwarded-By: 198.51.100.4\r\n" in head
    wait_for(lambda: log.exists() and log.read_text().strip(), what="the log line")
    assert log.read_text().strip() == "203.0.113.7 127.0.0.1 10.0.0.1"


def test_config_errors_and_addresses(tmp_path):
    with pytest.raises(ConfigError, match=r"t.conf:2: RemoteIPInternalProxy: expected an IP address or network"):
        Config.from_text("Listen 80\nRemoteIPInternalProxy proxy.example\n", filename="t.conf")
    with pytest.raises(ConfigError, match=r"t.conf:1: RemoteIPProxyProtocol: expected On or Off"):
        Config.from_text("RemoteIPProxyProtocol\n", filename="t.conf")
    with pytest.raises(ConfigError, match=r"t.conf:1: RemoteIPTrustedProxyList: cannot read"):
        Config.from_text(f"RemoteIPTrustedProxyList {tmp_path / 'none'}\n", filename="t.conf")
    with pytest.raises(ConfigError, match=r"not allowed in <Location>"):
        Config.from_text("<Location />\nRemoteIPHeader X-Real-IP\n</Location>\n", filename="t.conf")
    listed = tmp_path / "proxies.txt"
    listed.write_text("# our balancers\n10.0.0.0/8 192.0.2.1  # and one more\n")
    config = Config.from_text(
        "Listen 127.0.0.1:8080\nListen 127.0.0.1:8443\nListen 127.0.0.1:9000\n"
        "<VirtualHost *:8443>\n  RemoteIPProxyProtocol On\n</VirtualHost>\n"
        "<VirtualHost 127.0.0.1:9000>\n  RemoteIPProxyProtocol On\n</VirtualHost>\n"
        "<VirtualHost *:9000>\n  RemoteIPProxyProtocol Off\n</VirtualHost>\n"
        f"RemoteIPTrustedProxyList {listed}\n",
        filename="t.conf",
    )
    assert [li.proxy_protocol for li in config.listeners] == [False, True, False]  # the later Off wins
    assert [str(n) for n, _ in config.scope.remoteip_proxies] == ["10.0.0.0/8", "192.0.2.1/32"]
    warned = Config.from_text("Listen 8080\n<VirtualHost *:9999>\nRemoteIPProxyProtocol On\n</VirtualHost>\n", filename="t.conf")
    assert any("names no address tunnel listens on" in w for w in warned.warnings)


@pytest.mark.parametrize("send_proxy", ["send-proxy", "send-proxy-v2"])
def test_behind_a_real_haproxy(make_proxy, recorder, tmp_path, send_proxy):
    from tests.support.haproxy import haproxy_tcp

    engine = make_proxy(
        "RemoteIPProxyProtocol On\nRemoteIPInternalProxy 127.0.0.1\n"
        "<Location /app/>\n  Require ip 127.0.0.2\n</Location>\n"
        f"ProxyPass /app/ http://127.0.0.1:{recorder.address[1]}/app/\n"
        f"ProxyPass /ws/ ws://127.0.0.1:{recorder.address[1]}/ws/\n"
    )
    with haproxy_tcp(tmp_path, [engine.addresses[0]], send_proxy=send_proxy) as port:
        for source, expected in (("127.0.0.2", 200), ("127.0.0.3", 403)):
            with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as s:
                s.sendall(GET)
                head, _ = read_head(s)
                assert status_of(head) == expected
        with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.4", 0)) as s:
            s.sendall(upgrade_request("/ws/chat"))
            head, rest = read_head(s)
            assert status_of(head) == 101
    wait_for(lambda: len(recorder.heads) == 2)
    assert [_xff(h) for h in recorder.heads] == ["127.0.0.2", "127.0.0.4"]
