"""proxy/session.py on a live engine: hostile input gets its status from the proxy and
reaches no backend; the head deadlines; routing (docs/httpd-behaviour.md, R1-R3, with
the tunnel lines): ws and http on one path, upgrade= values, fallback On and Off,
exclusions, ProxyPassMatch."""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time

import pytest

from tests.support.backends import Answering, Recorder, Server, silent, switching_protocols
from tests.support.clients import (
    KEY,
    content_length,
    http_get,
    read_head,
    recv_exactly,
    recv_until_eof,
    status_of,
    upgrade_request,
)
from tests.support.resources import fd_table, wait_fds_back
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(30)

UP = f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"


def req(line: str, headers: str = "Host: t\r\n", body: bytes = b"") -> bytes:
    return f"{line}\r\n{headers}\r\n".encode("latin-1") + body


CASES = [
    # id, request bytes, the status the proxy answers
    ("bare-cr", req("GET /app/ HTTP/1.1", "Host: t\r\nX-A: a\rb\r\n"), 400),
    ("obs-fold", req("GET /app/ HTTP/1.1", "Host: t\r\nX-A: a\r\n  folded\r\n"), 400),
    ("bare-lf", b"GET /app/ HTTP/1.1\nHost: t\n\n", 400),
    ("cl-and-te", req("POST /app/ HTTP/1.1", "Host: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"), 400),
    ("two-cl", req("POST /app/ HTTP/1.1", "Host: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n", b"abcd"), 400),
    ("bad-name", req("GET /app/ HTTP/1.1", "Host: t\r\nBad Name: x\r\n"), 400),
    ("no-host", req("GET /app/ HTTP/1.1", ""), 400),
    ("long-line", req("GET /app/" + "a" * 9000 + " HTTP/1.1"), 414),
    ("long-field", req("GET /app/ HTTP/1.1", "Host: t\r\nX-Big: " + "b" * 9000 + "\r\n"), 431),  # docs/configuration.md: limits give 431
    ("many-fields", req("GET /app/ HTTP/1.1", "Host: t\r\n" + "".join(f"X-{i}: v\r\n" for i in range(101))), 431),  # docs/configuration.md: limits give 431
    ("connect", req("CONNECT internal.test:443 HTTP/1.1", "Host: internal.test:443\r\n"), 405),
    ("dotdot", req("GET /ws/../admin HTTP/1.1", "Host: t\r\n" + UP), 404),  # resolved to /admin: no route
    ("enc-dotdot", req("GET /ws/%2e%2e/admin HTTP/1.1", "Host: t\r\n" + UP), 404),  # decoded, then resolved
    ("enc-dotdot-mixed", req("GET /ws/%2E%2e/admin HTTP/1.1", "Host: t\r\n" + UP), 404),
    ("enc-slash", req("GET /ws/a%2fb HTTP/1.1", "Host: t\r\n" + UP), 404),
    ("nul", req("GET /ws/a%00b HTTP/1.1", "Host: t\r\n" + UP), 404),  # %00 is a 404, as in httpd
    ("ctl-in-path", req("GET /ws/a\x01b HTTP/1.1", "Host: t\r\n" + UP), 400),
    ("http10-upgrade", req("GET /ws/x HTTP/1.0", "Host: t\r\n" + UP), 400),
    ("version-8", req("GET /ws/x HTTP/1.1", "Host: t\r\n" + UP.replace("Version: 13", "Version: 8")), 426),
    ("no-key", req("GET /ws/x HTTP/1.1", "Host: t\r\n" + UP.replace(f"Sec-WebSocket-Key: {KEY}\r\n", "")), 400),
    ("short-key", req("GET /ws/x HTTP/1.1", "Host: t\r\n" + UP.replace(KEY, "c2hvcnQ=")), 400),
    ("post-upgrade", req("POST /ws/x HTTP/1.1", "Host: t\r\nContent-Length: 5\r\n" + UP, b"SMUGG"), 400),
    ("host-not-a-name", req("GET /ws/x HTTP/1.1", "Host: caf\xe9\r\n" + UP), 400),
    ("host-with-space", req("GET /app/ HTTP/1.1", "Host: a b\r\n"), 400),
    ("two-hosts", req("GET /ws/x HTTP/1.1", "Host: t\r\nHost: internal.test\r\n" + UP), 400),
]


@pytest.fixture
def proxied(make_proxy):
    with Recorder("WS") as ws, Recorder("HTTP") as http:
        engine = make_proxy(f"ProxyPass /ws/ ws://127.0.0.1:{ws.port}/\nProxyPass /app/ http://127.0.0.1:{http.port}/\n")
        yield engine, ws, http


@pytest.mark.parametrize("name, data, status", CASES, ids=[c[0] for c in CASES])
def test_hostile_request(proxied, caplog, name, data, status):
    caplog.set_level(logging.DEBUG)
    engine, ws, http = proxied
    started = time.monotonic()
    with socket.create_connection(engine.addresses[0], timeout=5) as sock:
        sock.sendall(data)
        head, _ = read_head(sock)
    assert status_of(head) == status, head
    assert time.monotonic() - started < 5
    assert ws.heads == [] and http.heads == [], "a refused request reached a backend"
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_absolute_form_is_routed_by_path_only(proxied):
    engine, ws, _ = proxied
    with socket.create_connection(engine.addresses[0], timeout=5) as sock:
        sock.sendall(req("GET http://evil.invalid:1/ws/x HTTP/1.1", "Host: evil.invalid:1\r\n" + UP))
        head, _ = read_head(sock)
    assert status_of(head) == 101
    assert ws.heads[0].startswith(b"GET /x HTTP/1.1")  # the backend of the route, by path


def test_path_is_re_encoded_for_the_backend(proxied):
    engine, ws, _ = proxied
    with socket.create_connection(engine.addresses[0], timeout=5) as sock:
        sock.sendall(req("GET /ws/a%20b/./c/%7Euser HTTP/1.1", "Host: t\r\n" + UP))
        head, _ = read_head(sock)
    assert status_of(head) == 101
    first = ws.heads[0].split(b"\r\n")[0]
    assert b" " not in first.split(b" ", 1)[1].rsplit(b" ", 1)[0]  # no raw space in the target
    assert b"/./" not in first


def test_dripping_client_gets_408_by_the_total_deadline(make_proxy, raw_echo):
    """Every byte of the head arrives in time, the whole head does not: at the
    RequestReadTimeout deadline the proxy answers 408 and closes (docs/httpd-behaviour.md,
    the tunnel line on timeouts)."""
    engine = make_proxy(f"RequestReadTimeout header=1\nProxyPass / ws://127.0.0.1:{raw_echo.address[1]}/\n")
    request = upgrade_request("/")
    sock = socket.create_connection(engine.addresses[0], timeout=5)
    started = time.monotonic()
    got = b""
    sent = 0
    sock.settimeout(0.1)
    while time.monotonic() - started < 5:  # one byte per 100 ms until the proxy answers
        if sent < len(request):
            try:
                sent += sock.send(request[sent : sent + 1])
            except OSError:
                sent = len(request)  # the proxy closed; its answer is still to be read
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break  # after the answer and the close (our late bytes were unread)
        got += chunk
        if not chunk or b"\r\n\r\n" in got:
            break
    took = time.monotonic() - started
    sock.close()
    assert sent < len(request), "the whole head went out before the deadline"
    assert status_of(got) == 408, got
    assert b"\r\nConnection: close\r\n" in got.partition(b"\r\n\r\n")[0] + b"\r\n"
    assert 0.9 <= took < 3, took


@pytest.mark.parametrize("first", [None, b"GET /app/ HTTP/1.1\r\nHost: t\r\n\r\n"], ids=["new", "keep-alive"])
def test_idle_connection_is_closed_at_the_deadline_without_an_answer(make_proxy, http_b, first):
    """No byte of a head at the deadline (a new connection, or a keep-alive one between
    requests): the connection is just closed, with no 408 (docs/httpd-behaviour.md)."""
    engine = make_proxy(f"RequestReadTimeout header=1\nProxyPass /app/ http://127.0.0.1:{http_b.port}/\n")
    with socket.create_connection(engine.addresses[0], timeout=5) as sock:
        if first is not None:
            sock.sendall(first)
            head, rest = read_head(sock)
            assert status_of(head) == 200 and recv_exactly(sock, 4, initial=rest) == b"HTTP"
        started = time.monotonic()
        assert recv_until_eof(sock, timeout=5) == b""
        took = time.monotonic() - started
    assert 0.9 <= took < 3, took


@pytest.mark.parametrize(
    "answer, status",
    [
        (b"garbage garbage\r\n\r\n", 502),
        (b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\nLEAK", 502),  # no Upgrade
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nLEAK", 502),  # no Accept
    ],
    ids=["garbage", "101-no-upgrade", "101-no-accept"],
)
def test_misbehaving_backend_answers(make_proxy, answer, status):
    backend = Answering(answer)
    try:
        engine = make_proxy(f"ProxyPass / ws://127.0.0.1:{backend.port}/\n")
        with socket.create_connection(engine.addresses[0], timeout=5) as sock:
            sock.sendall(upgrade_request("/"))
            head, rest = read_head(sock)
            assert status_of(head) == status
            sock.shutdown(socket.SHUT_WR)
            assert b"LEAK" not in rest + recv_until_eof(sock)
        assert engine.stats["tunnels.open"] == 0
    finally:
        backend.close()


def test_client_leaving_during_backend_handshake_closes_the_backend_at_once(make_proxy):
    with silent() as backend:
        engine = make_proxy(f"ProxyPass / ws://127.0.0.1:{backend.port}/ timeout=20\n")
        client = socket.create_connection(engine.addresses[0], timeout=5)
        client.sendall(upgrade_request("/"))
        conn = wait_for(lambda: backend.conns and backend.conns[0], what="the backend connection")
        head, _ = read_head(conn, timeout=5)
        assert head.startswith(b"GET / HTTP/1.1\r\n"), head  # the request reached the backend
        client.close()  # the client leaves before the backend answers
        started = time.monotonic()
        assert conn.recv(4096) == b""  # the proxy closed the backend connection
        assert time.monotonic() - started < 2


def test_nothing_left_behind_after_many_hostile_connections(proxied):
    engine, _, _ = proxied
    baseline = fd_table()
    for i in range(50):
        name, data, status = CASES[i % len(CASES)]
        with socket.create_connection(engine.addresses[0], timeout=5) as sock:
            sock.sendall(data)
            head, _ = read_head(sock)
        assert status_of(head) == status, (name, head)
    wait_fds_back(baseline, timeout=10)


def test_backend_dripping_its_head_gets_504_by_the_total_deadline(make_proxy):
    """One deadline for the whole response head, whatever the drip rate (R41 tunnel line)."""
    stop = threading.Event()

    def drip(conn: socket.socket) -> None:
        conn.recv(65536)
        for byte in b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n" * 10:
            if stop.wait(0.05):  # pacing the drip, not waiting for a condition
                return
            conn.send(bytes([byte]))

    with Server(drip) as server:
        try:
            engine = make_proxy(f"ProxyPass / ws://127.0.0.1:{server.port}/ timeout=1\n")
            started = time.monotonic()
            with socket.create_connection(engine.addresses[0], timeout=10) as sock:
                sock.sendall(upgrade_request("/"))
                head, _ = read_head(sock, timeout=10)
            took = time.monotonic() - started
            assert status_of(head) == 504 and 0.9 <= took < 3, (head, took)
        finally:
            stop.set()


def test_backend_reset_mid_tunnel_closes_the_client_and_logs(make_proxy, caplog):
    ready = threading.Event()

    def reset_after_some_bytes(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(switching_protocols() + b"hello")
        ready.wait(5)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()  # RST

    with Server(reset_after_some_bytes) as server:
        try:
            engine = make_proxy(f"ProxyPass / ws://127.0.0.1:{server.port}/\n")
            with socket.create_connection(engine.addresses[0], timeout=5) as sock:
                sock.sendall(upgrade_request("/"))
                head, rest = read_head(sock)
                assert status_of(head) == 101
                ready.set()
                # What came before the reset, then an orderly end: the proxy closes the
                # client with a FIN (nothing of the client's is left unread), not a reset.
                assert recv_until_eof(sock, initial=rest) == b"hello"
            # Counted closed after its log line is written: wait for the count first.
            wait_for(lambda: engine.stats["tunnels.closed"] == 1, what="the tunnel counted closed")
            assert engine.stats["tunnels.open"] == 0
            assert "closed: error" in caplog.text, "the tunnel's end logged with its error"
        finally:
            ready.set()


@pytest.mark.parametrize("path", ["/ws/x", "/app/x"])
def test_obs_text_and_idna_hosts_pass_byte_for_byte(proxied, caplog, path):
    """Latin-1 bytes in a field value (obs-text) reach the backend as they came, on the
    tunnel and the HTTP path alike; a punycode-looking Host is just a name."""
    engine, ws, http = proxied
    with socket.create_connection(engine.addresses[0], timeout=5) as sock:
        sock.sendall(req(f"GET {path} HTTP/1.1", "Host: xn--zz\r\nX-Name: caf\xe9\r\n" + (UP if path.startswith("/ws") else "")))
        head, _ = read_head(sock)
    assert status_of(head) == (101 if path.startswith("/ws") else 200), head
    heads = ws.heads if path.startswith("/ws") else http.heads
    assert b"\r\nX-Name: caf\xe9\r\n" in heads[0] + b"\r\n"
    assert b"X-Forwarded-Host: xn--zz" in heads[0]
    assert "Traceback" not in caplog.text


# -- routing -------------------------------------------------------------------------------


@pytest.fixture
def ws_b():
    with Recorder("WS") as r:
        yield r


@pytest.fixture
def http_b():
    with Recorder("HTTP") as r:
        yield r


def upgrade(engine, path="/app/", token="websocket", with_upgrade=True):
    req = upgrade_request(path)
    if token != "websocket":
        req = req.replace(b"Upgrade: websocket", b"Upgrade: " + token.encode())
    if not with_upgrade:
        req = req.replace(b"Upgrade: websocket\r\n", b"").replace(b"Connection: Upgrade\r\n", b"")
    with socket.create_connection(engine.addresses[0], timeout=10) as sock:
        sock.sendall(req)
        head, rest = read_head(sock, timeout=10)
        status = status_of(head)
        if status == 101:
            while not rest:
                rest += sock.recv(100)
        else:
            length = content_length(head) or 0
            while len(rest) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                rest += chunk
        return status, head, rest


def test_ws_then_http_on_one_path_fallback_off(make_proxy, ws_b, http_b):
    engine = make_proxy(
        "ProxyWebsocketFallbackToProxyHttp Off\n"
        f"ProxyPass /app/ ws://127.0.0.1:{ws_b.port}/\nProxyPass /app/ http://127.0.0.1:{http_b.port}/\n"
    )
    status, _, rest = upgrade(engine)
    assert status == 101 and rest == b"WS"
    assert b"\r\nX-Forwarded-For: 127.0.0.1\r\n" in ws_b.heads[-1] + b"\r\n"  # R8 on upgrades too
    assert http_get(engine.addresses[0], "/app/x")[::2] == (200, b"HTTP")  # plain: the http route
    assert ws_b.heads[-1].startswith(b"GET / HTTP/1.1") and len(ws_b.heads) == 1


def test_ws_route_serves_plain_requests_as_http_with_fallback_on(make_proxy, ws_b, http_b):
    engine = make_proxy(f"ProxyPass /app/ ws://127.0.0.1:{ws_b.port}/\nProxyPass /app/ http://127.0.0.1:{http_b.port}/\n")
    assert upgrade(engine)[::2] == (101, b"WS")
    # R3/R17: the ws route takes every request under its path; a plain one goes as HTTP to it.
    assert http_get(engine.addresses[0], "/app/x")[::2] == (200, b"WS")
    assert b"Upgrade" not in ws_b.heads[-1]


def test_fallback_off_with_no_other_route_is_404(make_proxy, ws_b):
    engine = make_proxy(f"ProxyWebsocketFallbackToProxyHttp Off\nProxyPass /app/ ws://127.0.0.1:{ws_b.port}/\n")
    assert http_get(engine.addresses[0], "/app/x")[0] == 404
    assert ws_b.heads == []


@pytest.mark.parametrize(
    "upgrade_key, token, expected",
    [
        ("", "websocket", 101),
        ("", "WebSocket", 101),  # tokens compare ignoring case
        ("", "chat", 200),  # not allowed on a ws route by default: plain HTTP (fallback On)
        ("upgrade=chat", "chat", 101),
        ("upgrade=chat", "websocket", 200),  # a list replaces the default
        ("upgrade=chat,websocket", "websocket", 101),
        ("upgrade=chat,websocket", "chat", 101),
        ("upgrade=chat,websocket", "other", 200),
        ("upgrade=ANY", "anything", 101),
        ("upgrade=ANY", "websocket", 101),
        ("upgrade=ANY", "TLS/1.2", 200),  # ANY never means TLS/* (R57)
    ],
)
def test_upgrade_values(make_proxy, ws_b, upgrade_key, token, expected):
    engine = make_proxy(f"ProxyPass /app/ ws://127.0.0.1:{ws_b.port}/ {upgrade_key}\n")
    status, _, rest = upgrade(engine, token=token)
    assert status == expected
    if expected == 101:
        assert rest == b"WS"
        assert f"upgrade: {token}".lower().encode() in ws_b.heads[-1].lower()
    else:  # proxied as plain HTTP (fallback On): the backend never sees the Upgrade
        assert rest == b"WS"
        assert b"upgrade:" not in ws_b.heads[-1].lower()


def test_offered_list_selects_the_first_allowed_token(make_proxy, ws_b):
    """R13 tunnel line: Upgrade is a token list; the first token the route allows is
    selected and alone forwarded."""
    engine = make_proxy(f"ProxyPass /app/ ws://127.0.0.1:{ws_b.port}/ upgrade=chat\n")
    status, _, rest = upgrade(engine, token="h2c, chat, websocket")
    assert (status, rest) == (101, b"WS")
    assert b"\r\nUpgrade: chat\r\n" in ws_b.heads[-1] + b"\r\n"


def test_http_route_upgrades_only_with_an_upgrade_key(make_proxy, ws_b):
    engine = make_proxy(
        f"ProxyPass /plain/ http://127.0.0.1:{ws_b.port}/\n"
        f"ProxyPass /app/ http://127.0.0.1:{ws_b.port}/ upgrade=websocket\n"
    )
    assert upgrade(engine, path="/plain/")[::2] == (200, b"WS")  # http never upgrades by default
    assert b"upgrade:" not in ws_b.heads[-1].lower()
    assert upgrade(engine, path="/app/")[::2] == (101, b"WS")
    assert b"Upgrade: websocket" in ws_b.heads[-1]


def test_fallback_off_refuses_a_token_the_ws_route_does_not_take_with_426(make_proxy, ws_b):
    engine = make_proxy(f"ProxyWebsocketFallbackToProxyHttp Off\nProxyPass /app/ ws://127.0.0.1:{ws_b.port}/\n")
    status, head, _ = upgrade(engine, token="chat")
    assert status == 426
    assert b"upgrade: websocket" in head.lower()
    assert ws_b.heads == []


@pytest.mark.parametrize("with_upgrade", [False, True], ids=["no-upgrade-header", "upgrade-header"])
def test_upgrade_none_makes_every_request_a_handshake(make_proxy, ws_b, with_upgrade):
    engine = make_proxy(f"ProxyPass /app/ ws://127.0.0.1:{ws_b.port}/ upgrade=NONE\n")
    status, _, rest = upgrade(engine, with_upgrade=with_upgrade)
    assert status == 101 and rest == b"WS"
    assert b"Upgrade: websocket" in ws_b.heads[-1]  # the backend is asked for WebSocket


@pytest.mark.parametrize("with_upgrade", [False, True], ids=["no-upgrade-header", "upgrade-header"])
def test_upgrade_none_on_a_balancer_member_makes_every_request_a_handshake(make_proxy, ws_b, with_upgrade):
    """R16 with the key on the member: routing reads the balancer's first member, and so
    must the handshake checks (a request without Connection: upgrade was a 400)."""
    engine = make_proxy(
        f"<Proxy balancer://c>\n  BalancerMember ws://127.0.0.1:{ws_b.port} upgrade=NONE\n</Proxy>\n"
        "ProxyPass /app/ balancer://c/\n"
    )
    status, _, rest = upgrade(engine, with_upgrade=with_upgrade)
    assert status == 101 and rest == b"WS"


def test_upgrade_none_still_checks_the_websocket_handshake(make_proxy, ws_b):
    engine = make_proxy(f"ProxyPass /app/ ws://127.0.0.1:{ws_b.port}/ upgrade=NONE\n")
    status, _, _ = http_get(engine.addresses[0], "/app/x")  # no Sec-WebSocket-Key
    assert status == 400
    assert ws_b.heads == []


def test_exclusion_and_proxy_pass_match(make_proxy, ws_b, http_b):
    engine = make_proxy(
        "ProxyPass /app/static/ !\n"
        f"ProxyPassMatch ^/rooms/([0-9]+)/(\\w+)$ ws://127.0.0.1:{ws_b.port}/room/$1/u/$2\n"
        f"ProxyPass /app/ http://127.0.0.1:{http_b.port}/\n"
    )
    assert http_get(engine.addresses[0], "/app/static/x")[0] == 404  # excluded: not proxied
    assert http_get(engine.addresses[0], "/app/page")[::2] == (200, b"HTTP")
    assert upgrade(engine, path="/rooms/42/ann")[::2] == (101, b"WS")
    assert ws_b.heads[-1].startswith(b"GET /room/42/u/ann HTTP/1.1")
    assert upgrade(engine, path="/rooms/x/ann")[0] == 404  # the regex does not match


def test_proxy_pass_match_exclusion_and_whole_uri_appended(make_proxy, ws_b, http_b):
    """R1: a ProxyPassMatch URL without $n gets the whole request URI appended; a
    ProxyPassMatch ! excludes what it matches."""
    engine = make_proxy(
        "ProxyPassMatch \\.png$ !\n"
        f"ProxyPassMatch ^/api/ http://127.0.0.1:{http_b.port}/prefix\n"
        f"ProxyPass / ws://127.0.0.1:{ws_b.port}/\n"
    )
    assert http_get(engine.addresses[0], "/img/a.png")[0] == 404
    assert http_get(engine.addresses[0], "/api/v1?x=1")[::2] == (200, b"HTTP")
    assert http_b.heads[-1].startswith(b"GET /prefix/api/v1?x=1 HTTP/1.1"), http_b.heads[-1]
    assert upgrade(engine, path="/img/b.jpg")[::2] == (101, b"WS")
    assert ws_b.heads[-1].startswith(b"GET /img/b.jpg HTTP/1.1")
