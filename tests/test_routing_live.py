"""Routing on a live proxy (docs/httpd-behaviour.md, R1-R3, with the tunnel lines): ws and http on
one path, upgrade= values, fallback On and Off, exclusions, ProxyPassMatch, and the status
of each backend failure with its timing bound."""

from __future__ import annotations

import base64
import hashlib
import socket
import threading
import time

import pytest

from .helpers import KEY, free_port_refused, http_get, raw_upgrade, read_head, status_of, upgrade_request

pytestmark = pytest.mark.timeout(30)

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
ACCEPT = base64.b64encode(hashlib.sha1((KEY + GUID).encode()).digest()).decode()


class Recorder:
    """Answers each connection once: a 101 for the Upgrade token it was asked for (with
    the Accept for websocket), else 200 with its name; records every request head."""

    def __init__(self, name: str) -> None:
        self.name = name.encode()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.heads: list[bytes] = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head = data.split(b"\r\n\r\n")[0]
                self.heads.append(head)
                fields = {l.split(b":")[0].strip().lower(): l.split(b":", 1)[1].strip() for l in head.split(b"\r\n")[1:] if b":" in l}
                token = fields.get(b"upgrade")
                if token:
                    extra = b"Sec-WebSocket-Accept: %s\r\n" % ACCEPT.encode() if token.lower() == b"websocket" else b""
                    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: %s\r\nConnection: Upgrade\r\n%s\r\n" % (token, extra) + self.name)
                    conn.recv(1)  # hold the tunnel until the client leaves
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(self.name), self.name))
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def ws_b():
    r = Recorder("WS")
    yield r
    r.close()


@pytest.fixture
def http_b():
    r = Recorder("HTTP")
    yield r
    r.close()


def upgrade(engine, path="/app/", token="websocket", with_upgrade=True):
    extra = ""
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
            length = next((int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")), 0)
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


def error_case(engine, caplog, path="/f/"):
    """An upgrade on ``path``; returns (status, reason body, seconds taken)."""
    started = time.monotonic()
    with socket.create_connection(engine.addresses[0], timeout=15) as sock:
        sock.sendall(upgrade_request(path))
        head, rest = read_head(sock, timeout=15)
        while b"\n" not in rest:
            chunk = sock.recv(1024)
            if not chunk:
                break
            rest += chunk
    return status_of(head), rest, time.monotonic() - started


def error_logged(caplog, status: int, backend: str) -> str:
    """The ERROR line for a failed handshake: it names the status, the route and the backend."""
    lines = [r.getMessage() for r in caplog.records if r.levelname == "ERROR" and r.getMessage().startswith(str(status))]
    assert lines, caplog.text
    line = lines[-1]
    assert "/f/ (test.conf:" in line and backend in line, line  # route (with where) and backend
    return line


def test_connect_refused_is_503(make_proxy, caplog):
    port = free_port_refused()
    engine = make_proxy(f"ProxyPass /f/ ws://127.0.0.1:{port}/\n")
    status, body, took = error_case(engine, caplog)
    assert status == 503 and took < 2
    assert body.startswith(b"503 ") and b"refused" in body and len(body) < 200
    error_logged(caplog, 503, f"ws://127.0.0.1:{port}/")


def filled_listener():
    """A loopback listener whose accept queue is full: further SYNs are dropped, so a
    connect hangs (a blackhole that stays on loopback). None if this kernel answers."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    fillers = []
    for _ in range(3):
        c = socket.socket()
        c.settimeout(0.2)
        try:
            c.connect(lsock.getsockname())
        except OSError:
            c.close()
            return lsock, fillers  # this one timed out: the queue is full
        fillers.append(c)
    for c in fillers:
        c.close()
    lsock.close()
    return None, []


def test_connect_timeout_is_503_after_connectiontimeout(make_proxy, caplog):
    lsock, fillers = filled_listener()
    if lsock is None:
        pytest.skip("this kernel does not drop SYNs to a full accept queue")
    try:
        port = lsock.getsockname()[1]
        engine = make_proxy(f"ProxyPass /f/ ws://127.0.0.1:{port}/ connectiontimeout=300ms timeout=5\n")
        status, body, took = error_case(engine, caplog)
        assert status == 503 and 0.25 <= took < 2, took  # connectiontimeout, not timeout=
        assert body.startswith(b"503 ") and b"timed out" in body
        error_logged(caplog, 503, f"ws://127.0.0.1:{port}/")
        # retry=: the worker is now in error, the next request gets 503 at once
        status, _, took = error_case(engine, caplog)
        assert status == 503 and took < 0.25
    finally:
        for c in fillers:
            c.close()
        lsock.close()


def test_dns_failure_is_500(make_proxy, caplog):
    engine = make_proxy("ProxyPass /f/ ws://no-such-host.invalid:9000/\n")
    status, body, took = error_case(engine, caplog)
    assert status == 500 and took < 10
    assert body.startswith(b"500 ") and b"resolved" in body and len(body) < 200
    error_logged(caplog, 500, "no-such-host.invalid")


def test_backend_head_timeout_is_504_after_timeout(make_proxy, caplog):
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (backlog), never answers
    try:
        port = silent.getsockname()[1]
        engine = make_proxy(f"ProxyPass /f/ ws://127.0.0.1:{port}/ timeout=1\n")
        status, body, took = error_case(engine, caplog)
        assert status == 504 and 0.9 <= took < 3, took
        assert body.startswith(b"504 ") and b"did not answer" in body
        error_logged(caplog, 504, f"ws://127.0.0.1:{port}/")
    finally:
        silent.close()


def closing_backend() -> socket.socket:
    """A listener whose connections are closed as soon as their request arrives (no head);
    closing the listener ends its accept thread."""
    lsock = socket.create_server(("127.0.0.1", 0))

    def run():
        while True:
            try:
                conn, _ = lsock.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.close()

    threading.Thread(target=run, daemon=True).start()
    return lsock


def test_backend_closing_before_a_head_is_502(make_proxy, caplog):
    closer = closing_backend()
    try:
        port = closer.getsockname()[1]
        engine = make_proxy(f"ProxyPass /f/ ws://127.0.0.1:{port}/\n")
        status, body, took = error_case(engine, caplog)
        assert status == 502 and took < 2
        assert body.startswith(b"502 ") and len(body) < 200
        error_logged(caplog, 502, f"ws://127.0.0.1:{port}/")
    finally:
        closer.close()


@pytest.mark.parametrize("kind", ["refused", "closes", "silent", "dns"])
def test_plain_http_route_failures_have_the_same_statuses(make_proxy, caplog, kind):
    """The failure table holds for a plain request on an http:// route as for an upgrade:
    refused 503, closed before a head 502, head timeout 504 (after timeout=), DNS 500;
    each with a short reason body and an ERROR line naming the route and the backend."""
    listener = None
    if kind == "refused":
        url, expected = f"http://127.0.0.1:{free_port_refused()}/", 503
    elif kind == "dns":
        url, expected = "http://no-such-host.invalid/", 500
    else:
        listener = closing_backend() if kind == "closes" else socket.create_server(("127.0.0.1", 0))
        url, expected = f"http://127.0.0.1:{listener.getsockname()[1]}/", 502 if kind == "closes" else 504
    try:
        engine = make_proxy(f"ProxyPass /f/ {url} timeout=1\n")
        started = time.monotonic()
        status, head, body = http_get(engine.addresses[0], "/f/page")
        took = time.monotonic() - started
        assert status == expected, head
        assert body.startswith(b"%d " % expected) and body.endswith(b"\n") and len(body) < 200, body
        if kind == "silent":
            assert 0.9 <= took < 5, took
        else:
            assert took < 2, took
        error_logged(caplog, expected, url.rstrip("/") if kind == "dns" else url)
    finally:
        if listener is not None:
            listener.close()


def test_each_address_gets_its_own_connect_timeout(make_proxy, caplog, monkeypatch):
    """R18: a backend name with two addresses, the first silent (a full accept queue),
    the second answering: the connect times out on the first after connectiontimeout=
    and the tunnel opens on the second, instead of a 503."""
    good = Recorder("GOOD")
    lsock, fillers = filled_listener()
    if lsock is None:
        pytest.skip("this kernel does not drop SYNs to a full accept queue")
    silent = lsock.getsockname()
    real_getaddrinfo = socket.getaddrinfo

    def two_addresses(host, port, *args, **kwargs):  # the name resolves to both (DNS only)
        if host == "twice.test":
            return [
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", silent),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", good.port)),
            ]
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", two_addresses)
    try:
        engine = make_proxy(f"ProxyPass /t/ ws://twice.test:{good.port}/ connectiontimeout=300ms timeout=5\n")
        started = time.monotonic()
        sock, head, rest = raw_upgrade(engine.addresses[0], "/t/x")
        took = time.monotonic() - started
        sock.close()
        assert status_of(head) == 101, head
        assert 0.25 <= took < 3, took  # one connectiontimeout spent on the silent address
        assert good.heads and b"GET /x HTTP/1.1" in good.heads[0]
    finally:
        for c in fillers:
            c.close()
        lsock.close()
        good.close()


def test_a_slow_name_lookup_stalls_no_other_tunnel(make_proxy, caplog, monkeypatch):
    """Lookups run in a resolver thread: while one backend name takes its time, another
    client's tunnel opens and echoes; then the slow one opens too. A lookup that outlives
    the connect timeout is a 500."""
    good = Recorder("GOOD")
    release = threading.Event()
    real_getaddrinfo = socket.getaddrinfo

    def slow(host, port, *args, **kwargs):
        if host in ("slow.test", "stuck.test"):
            release.wait(10)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", good.port))]
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    try:
        engine = make_proxy(
            f"ProxyPass /slow/ ws://slow.test:{good.port}/ connectiontimeout=20\n"
            f"ProxyPass /stuck/ ws://stuck.test:{good.port}/ connectiontimeout=300ms\n"
            f"ProxyPass /fast/ ws://127.0.0.1:{good.port}/\n"
        )
        addr = engine.addresses[0]
        waiting = socket.create_connection(addr, timeout=10)
        waiting.sendall(upgrade_request("/slow/a"))
        stuck = socket.create_connection(addr, timeout=10)
        stuck.sendall(upgrade_request("/stuck/b"))
        sock, head, _ = raw_upgrade(addr, "/fast/c")  # served while both lookups hang
        assert status_of(head) == 101
        sock.close()
        head, _ = read_head(stuck)
        assert status_of(head) == 500 and not release.is_set()  # its own deadline, nobody else's
        stuck.close()
        release.set()
        head, _ = read_head(waiting)
        assert status_of(head) == 101
        waiting.close()
    finally:
        release.set()
        good.close()
