"""Header, RequestHeader, SetEnv and SetEnvIf on a live proxy with real backends: what
the backend received, what the client got for a relayed answer, a 101 and the proxy's
own answers (with and without ``always``), the environment seen by mod_rewrite, the
access rules and the access log, at the moment httpd runs each of them."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
from websockets.sync.client import connect as ws_connect

from tests.support.backends import Answering, HTTPBackend, Recorder
from tests.support.clients import (
    KEY,
    free_port_refused,
    http_get,
    raw_upgrade,
    read_head,
    recv_exactly,
    recv_until_eof,
    status_of,
)
from tests.support.strategies import STRATEGY_CONFIGS
from tests.support.waiting import wait_for
from tunnel import Config

pytestmark = pytest.mark.timeout(30)


def header(head: bytes, name: str) -> list[str]:
    """Every value of ``name`` in a response or request head."""
    pattern = re.compile(rb"(?im)^" + re.escape(name.encode()) + rb":[ \t]*(.*?)[ \t]*\r?$")
    return [m.decode("latin-1") for m in pattern.findall(head)]


def request(addr: tuple, raw: str) -> tuple[int, bytes, bytes]:
    with socket.create_connection(addr[:2], timeout=5) as sock:
        sock.sendall(raw.replace("\n", "\r\n").encode() + b"\r\n")
        data = recv_until_eof(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    return status_of(head), head, body


# -- RequestHeader ---------------------------------------------------------------------------


def test_request_header_lines_reach_the_backend_of_a_plain_request_and_an_upgrade(make_proxy):
    with HTTPBackend() as plain, Recorder("ws") as ws:
        engine = make_proxy(
            f"""
RequestHeader set X-Proxy tunnel
RequestHeader set "X-Forwarded-Proto" expr=%{{REQUEST_SCHEME}}
RequestHeader set X-Real-IP %{{REMOTE_ADDR}}s
RequestHeader unset X-Secret
RequestHeader append X-List added
RequestHeader edit Cookie "session=[^;]*" "session=hidden"
RequestHeader unset X-Forwarded-For
RequestHeader set X-Only-Ws 1 "expr=%{{HTTP:Upgrade}} == 'websocket'"
ProxyPass /ws ws://127.0.0.1:{ws.address[1]}/ws
ProxyPass / http://127.0.0.1:{plain.address[1]}/
"""
        )
        extra = "X-Secret: s\r\nX-List: first\r\nCookie: a=1; session=abc\r\nX-Forwarded-For: 6.6.6.6"
        status, _, _ = http_get(engine.addresses[0], "/p", headers=extra + "\r\n")
        assert status == 200
        _, _, seen = plain.seen[-1]
        assert seen["x-proxy"] == "tunnel" and "x-secret" not in seen and seen["x-list"] == "first, added"
        assert seen["cookie"] == "a=1; session=hidden" and "x-only-ws" not in seen
        assert seen["x-forwarded-for"] == "127.0.0.1"  # the client's went; the proxy's own is added after (R81)
        assert seen["x-forwarded-proto"] == "http" and seen["x-real-ip"] == "127.0.0.1"
        sock, head, _ = raw_upgrade(engine.addresses[0], "/ws", extra=extra)
        with sock:
            assert status_of(head) == 101
        wait_for(lambda: ws.heads, what="the upgrade at the backend")
        backend_head = ws.heads[-1]
        assert header(backend_head, "X-Proxy") == ["tunnel"] and header(backend_head, "X-Secret") == []
        assert header(backend_head, "X-Only-Ws") == ["1"] and header(backend_head, "X-Forwarded-For") == ["127.0.0.1"]
        assert header(backend_head, "Upgrade") == ["websocket"]


@pytest.mark.parametrize("fallback, expected", [("On", 200), ("Off", 426)])
def test_request_header_unset_upgrade_takes_the_http_path_or_a_426(make_proxy, fallback, expected):
    """mod_proxy decides the upgrade from the headers as the fixups left them (R81)."""
    with Recorder("backend") as backend:
        engine = make_proxy(
            f"ProxyWebsocketFallbackToProxyHttp {fallback}\nRequestHeader unset Upgrade\n"
            f"ProxyPass / ws://127.0.0.1:{backend.address[1]}/\n"
        )
        sock, head, rest = raw_upgrade(engine.addresses[0], "/chat")
        with sock:
            assert status_of(head) == expected
            body = recv_exactly(sock, len(b"backend"), initial=rest) if expected == 200 else b""
        if expected == 200:
            assert body == b"backend"  # relayed as plain HTTP: no tunnel
            wait_for(lambda: backend.heads, what="the request at the backend")
            assert header(backend.heads[-1], "Upgrade") == [] and b"GET /chat HTTP/1.1" in backend.heads[-1]
        else:
            assert header(head, "Upgrade") == ["WebSocket"] and backend.heads == []


def test_request_header_set_upgrade_makes_a_tunnel(make_proxy):
    with Recorder("chat") as backend:
        engine = make_proxy(
            f'RequestHeader set Upgrade websocket "expr=%{{HTTP:X-Want}} == \'ws\'"\n'
            f"ProxyPass / http://127.0.0.1:{backend.address[1]}/ upgrade=websocket\n"
        )
        lines = f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\nX-Want: ws"
        with socket.create_connection(engine.addresses[0][:2], timeout=5) as sock:
            sock.sendall(f"GET /c HTTP/1.1\r\nHost: t\r\n{lines}\r\n\r\n".encode())
            head, _ = read_head(sock)
        assert status_of(head) == 101
        assert header(backend.heads[-1], "Upgrade") == ["websocket"]


def test_early_request_headers_run_before_setenvif_and_late_ones_after(make_proxy, echo):
    engine = make_proxy(
        f"""
RequestHeader set X-Early on early
RequestHeader set X-Late on
SetEnvIf X-Early ^on$ saw_early
SetEnvIf X-Late ^on$ saw_late
Header set X-Saw "%{{saw_early}}e %{{saw_late}}e"
ProxyPass / http://127.0.0.1:{echo.address[1]}/
"""
    )
    status, head, _ = http_get(engine.addresses[0], "/")
    assert status == 200 and header(head, "X-Saw") == ["1 (null)"]


# -- Header -----------------------------------------------------------------------------------

ANSWER = (
    b"HTTP/1.1 200 OK\r\nServer: backend/1\r\nX-Drop: secret\r\nLocation: http://inside/a\r\n"
    b"Set-Cookie: a=1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
)
HEADERS = """
Header set X-Plain yes
Header always set X-Always yes
Header always set X-Both always
Header set X-Both onsuccess
Header unset X-Drop
Header edit Location ^http://inside/ http://outside/
Header append Set-Cookie HttpOnly
Header echo ^X-Echo
"""


def test_header_on_a_relayed_answer(make_proxy):
    with Answering(ANSWER, close=True) as backend:
        engine = make_proxy(HEADERS + f"ProxyPass / http://127.0.0.1:{backend.address[1]}/\n")
        status, head, body = http_get(engine.addresses[0], "/", headers="X-Echo-Me: 42\r\n")
    assert (status, body) == (200, b"ok")
    assert header(head, "X-Plain") == ["yes"] and header(head, "X-Always") == ["yes"]
    assert header(head, "X-Both") == ["always", "onsuccess"]  # one in each table, both sent (httpd)
    assert header(head, "X-Drop") == [] and header(head, "Server") == ["backend/1"]
    assert header(head, "Location") == ["http://outside/a"] and header(head, "Set-Cookie") == ["a=1, HttpOnly"]
    assert header(head, "X-Echo-Me") == ["42"] and header(head, "Content-Length") == ["2"]


def test_header_on_a_relayed_error_answer(make_proxy):
    """A backend's 403 is a relayed answer like any other: every Header line applies."""
    with HTTPBackend() as backend:
        engine = make_proxy(HEADERS + f"ProxyPass / http://127.0.0.1:{backend.address[1]}/\n")
        status, head, _ = http_get(engine.addresses[0], "/403")
    assert status == 403 and header(head, "X-Plain") == ["yes"] and header(head, "X-Always") == ["yes"]


def test_header_on_the_101(make_proxy, echo, strategy):
    engine = make_proxy(
        STRATEGY_CONFIGS[strategy] + "\n" + HEADERS + "Header set Upgrade nonsense\nHeader unset Connection\n"
        f"ProxyPass / ws://127.0.0.1:{echo.address[1]}/\n"
    )
    sock, head, _ = raw_upgrade(engine.addresses[0], "/chat", extra="X-Echo-Ws: 1")
    sock.close()
    assert status_of(head) == 101
    assert header(head, "X-Plain") == ["yes"] and header(head, "X-Always") == ["yes"] and header(head, "X-Echo-Ws") == ["1"]
    assert header(head, "Upgrade") == ["websocket"] and header(head, "Connection") == ["Upgrade"]  # the switch stays whole
    with ws_connect("ws://proxy.test/chat", sock=socket.create_connection(engine.addresses[0], timeout=5), open_timeout=5) as ws:
        ws.send("through")
        assert ws.recv(timeout=5) == "through"


@pytest.mark.parametrize(
    "path, status",
    [("/nowhere", 404), ("/refused/", 503), ("/moved", 301), ("/ws-only", 426)],
)
def test_the_proxys_own_answers_get_only_the_always_lines(make_proxy, path, status):
    engine = make_proxy(
        HEADERS
        + "Header always unset Upgrade\nHeader always set X-Status-Env %{REDIRECT_STATUS}e\n"
        + f"ProxyPass /refused/ http://127.0.0.1:{free_port_refused()}/\n"
        + f"ProxyWebsocketFallbackToProxyHttp Off\nProxyPass /ws-only ws://127.0.0.1:{free_port_refused()}/\n"
        + "RewriteEngine On\nRewriteRule ^/moved$ http://elsewhere.test/ [R=301]\n"
    )
    got, head, _ = request(engine.addresses[0], f"GET {path} HTTP/1.1\nHost: t\nUpgrade: other\nConnection: close\n")
    assert got == status
    assert header(head, "X-Always") == ["yes"] and header(head, "X-Both") == ["always"] and header(head, "X-Plain") == []
    assert header(head, "X-Status-Env") == ["(null)"] and header(head, "Content-Type") == ["text/plain; charset=utf-8"]
    if status == 301:
        assert header(head, "Location") == ["http://elsewhere.test/"]
    if status == 426:
        assert header(head, "Upgrade") == []  # a 426's Upgrade is in err_headers_out, which the lines edit


def test_without_always_lines_errors_are_untouched(make_proxy):
    engine = make_proxy("Header set X-Plain yes\nProxyPass /x http://127.0.0.1:1/\n")
    status, head, _ = http_get(engine.addresses[0], "/nowhere")
    assert status == 404 and header(head, "X-Plain") == []


# -- the environment -----------------------------------------------------------------------------


def test_setenvif_runs_before_rewrite_and_setenv_after_access(make_proxy, echo):
    engine = make_proxy(
        f"""
SetEnvIf X-Flag ^on$ blocked
SetEnvIfNoCase User-Agent ^BadBot bot=$0
SetEnv APP demo
SetEnv late 1
RewriteEngine On
RewriteCond %{{ENV:blocked}} =1
RewriteRule ^ - [F]
Header set X-App "%{{APP}}e/%{{bot}}e" env=APP
Header set X-Bot yes env=bot
Header set X-Not-Bot yes env=!bot
<Location /admin>
    SetEnvIf X-Key ^secret$ ok
    Require expr "%{{reqenv:ok}} == '1'"
</Location>
<Location /late>
    Require expr "%{{reqenv:late}} == '1'"
</Location>
ProxyPass / http://127.0.0.1:{echo.address[1]}/
"""
    )
    addr = engine.addresses[0]
    assert http_get(addr, "/", headers="X-Flag: on\r\n")[0] == 403
    status, head, _ = http_get(addr, "/", headers="User-Agent: badbot/2\r\n")
    assert status == 200 and header(head, "X-App") == ["demo/badbot"] and header(head, "X-Bot") == ["yes"]
    status, head, _ = http_get(addr, "/")
    assert header(head, "X-App") == ["demo/(null)"] and header(head, "X-Not-Bot") == ["yes"] and header(head, "X-Bot") == []
    assert http_get(addr, "/admin")[0] == 403
    assert http_get(addr, "/admin", headers="X-Key: secret\r\n")[0] == 200
    assert http_get(addr, "/late")[0] == 403  # SetEnv runs at fixups, after the access rules


def test_environment_in_the_access_log(make_proxy, echo, tmp_path: Path):
    flagged, rest, transfer = tmp_path / "flagged.log", tmp_path / "rest.log", tmp_path / "transfer.log"
    engine = make_proxy(
        f"""
SetEnvIf X-Flag (.+) flag=$1
SetEnv APP demo
CustomLog {flagged} "%{{FLAG}}e %>s %U" env=flag
CustomLog {rest} "%{{flag}}e %U" env=!flag
LogFormat "%U %{{APP}}e %{{none}}e"
TransferLog {transfer}
ProxyPass / http://127.0.0.1:{echo.address[1]}/
"""
    )
    http_get(engine.addresses[0], "/one", headers="X-Flag: red\r\n")
    http_get(engine.addresses[0], "/two")
    wait_for(lambda: transfer.exists() and len(transfer.read_text().splitlines()) == 2, what="two transfer log lines")
    assert flagged.read_text().splitlines() == ["red 200 /one"]
    assert rest.read_text().splitlines() == ["- /two"]
    assert transfer.read_text().splitlines() == ["/one demo -", "/two demo -"]


def test_a_graceful_restart_keeps_the_access_logs_env_conditions(make_proxy, echo, tmp_path: Path):
    """A re-read configuration's ``CustomLog ... env=`` conditions apply after the restart."""
    flagged, rest = tmp_path / "flagged.log", tmp_path / "rest.log"
    text = f"""Listen 127.0.0.1:0
SetEnvIf X-Flag (.+) flag=$1
CustomLog {flagged} "%{{FLAG}}e %U" env=flag
CustomLog {rest} "%U" env=!flag
ProxyPass / http://127.0.0.1:{echo.address[1]}/
"""
    engine = make_proxy(text)
    engine.reload(Config.from_text(text, filename="test.conf"))
    http_get(engine.addresses[0], "/one", headers="X-Flag: red\r\n")
    http_get(engine.addresses[0], "/two")
    wait_for(lambda: rest.exists() and len(rest.read_text().splitlines()) >= 1, what="a line in rest.log")
    wait_for(lambda: flagged.exists() and len(flagged.read_text().splitlines()) >= 1, what="a line in flagged.log")
    assert flagged.read_text().splitlines() == ["red /one"]
    assert rest.read_text().splitlines() == ["/two"]


# -- the balancer's variables ----------------------------------------------------------------------


def sticky_config(a: int, b: int, *, extra: str = "") -> str:
    return f"""
Header add Set-Cookie "ROUTEID=.%{{BALANCER_WORKER_ROUTE}}e; path=/" env=BALANCER_ROUTE_CHANGED
Header set X-Balancer "%{{BALANCER_NAME}}e %{{BALANCER_WORKER_NAME}}e %{{BALANCER_SESSION_STICKY}}e %{{BALANCER_SESSION_ROUTE}}e"
{extra}
<Proxy balancer://nodes_polling>
    BalancerMember http://127.0.0.1:{a} route=app01
    BalancerMember http://127.0.0.1:{b} route=app02
    ProxySet stickysession=ROUTEID
</Proxy>
<Proxy balancer://nodes_ws>
    BalancerMember ws://127.0.0.1:{a} route=app01
    BalancerMember ws://127.0.0.1:{b} route=app02
    ProxySet stickysession=ROUTEID
</Proxy>
RewriteEngine On
RewriteCond %{{HTTP:Upgrade}} =websocket [NC]
RewriteRule /(.*) balancer://nodes_ws/$1 [P,L]
RewriteCond %{{HTTP:Upgrade}} !=websocket [NC]
RewriteRule /(.*) balancer://nodes_polling/$1 [P,L]
"""


def test_sticky_cookie_recipe_with_polling_and_websocket(make_proxy):
    with Recorder("node-a") as a, Recorder("node-b") as b:
        engine = make_proxy(sticky_config(a.address[1], b.address[1]))
        addr = engine.addresses[0]
        status, head, body = http_get(addr, "/socket.io/?EIO=4&transport=polling")
        assert status == 200
        (cookie,) = header(head, "Set-Cookie")
        route = re.fullmatch(r"ROUTEID=\.(app0[12]); path=/", cookie).group(1)
        node, port = (b"node-a", a.address[1]) if route == "app01" else (b"node-b", b.address[1])
        assert body == node
        assert header(head, "X-Balancer") == [f"balancer://nodes_polling http://127.0.0.1:{port} (null) (null)"]
        for _ in range(4):  # byrequests alone would alternate: the cookie keeps every request on the member
            status, head, body = http_get(addr, "/socket.io/?EIO=4&transport=polling", headers=f"Cookie: io=x; ROUTEID=.{route}\r\n")
            assert (status, body) == (200, node) and header(head, "Set-Cookie") == []
            assert header(head, "X-Balancer") == [f"balancer://nodes_polling http://127.0.0.1:{port} ROUTEID {route}"]
        sock, head, rest = raw_upgrade(addr, "/socket.io/?EIO=4&transport=websocket", extra=f"Cookie: ROUTEID=.{route}")
        with sock:
            assert status_of(head) == 101 and header(head, "Set-Cookie") == []
            assert header(head, "X-Balancer") == [f"balancer://nodes_ws ws://127.0.0.1:{port} ROUTEID {route}"]
            got = rest if len(rest) >= len(node) else rest + sock.recv(64)
        assert got == node  # the WebSocket went to the same member as the polling requests


def test_a_route_to_a_dead_member_changes_and_a_new_cookie_is_set(make_proxy):
    with Recorder("node-b") as b:
        engine = make_proxy(sticky_config(free_port_refused(), b.address[1]))
        status, head, body = http_get(engine.addresses[0], "/poll", headers="Cookie: ROUTEID=.app01\r\n")
    assert (status, body) == (200, b"node-b")  # failed over from app01 (R46)
    assert header(head, "Set-Cookie") == ["ROUTEID=.app02; path=/"]
    assert header(head, "X-Balancer") == [f"balancer://nodes_polling http://127.0.0.1:{b.address[1]} ROUTEID app01"]
