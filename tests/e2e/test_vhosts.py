"""<VirtualHost> and <Location> on a live proxy: chosen by Host, merged over the globals."""

from __future__ import annotations

import socket

import pytest
from websockets.sync.client import connect as ws_connect

from tests.support.clients import read_head, status_of, upgrade_request
from tests.support.waiting import wait_for
from tunnel.echo import EchoServer

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def backends():
    with EchoServer("127.0.0.1", 0, page=b"page of A") as a, EchoServer("127.0.0.1", 0, page=b"page of B") as b, EchoServer(
        "127.0.0.1", 0, page=b"page of G"
    ) as g:
        yield {"a": a.address[1], "b": b.address[1], "g": g.address[1]}


def config(ports) -> str:
    return f"""
ProxyWebsocketAsync Off
ProxyPass /global/ ws://127.0.0.1:{ports['g']}/
ProxyPass /global/ http://127.0.0.1:{ports['g']}/
<VirtualHost *:*>
    ServerName a.test
    ServerAlias www.a.test
    ProxyWebsocketAsync On
    ProxyPass /app/ ws://127.0.0.1:{ports['a']}/
    ProxyPass /app/ http://127.0.0.1:{ports['a']}/
</VirtualHost>
<VirtualHost *:*>
    ServerName b.test
    ProxyPass /app/ ws://127.0.0.1:{ports['b']}/
    ProxyPass /app/ http://127.0.0.1:{ports['b']}/
    <Location /loc/>
        ProxyPass ws://127.0.0.1:{ports['b']}/
    </Location>
</VirtualHost>
"""


def get(engine, host: str, path: str) -> tuple[int, bytes]:
    with socket.create_connection(engine.addresses[0], timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return status_of(head), body


def test_host_picks_the_vhost_and_globals_are_inherited(make_proxy, backends):
    engine = make_proxy(config(backends))
    assert get(engine, "a.test", "/app/") == (200, b"page of A")
    assert get(engine, "www.a.test:80", "/app/") == (200, b"page of A")  # alias, port ignored
    assert get(engine, "b.test", "/app/") == (200, b"page of B")
    assert get(engine, "unknown.test", "/app/") == (200, b"page of A")  # the first vhost is the default
    # The global ProxyPass lines apply inside every vhost (httpd merges them in).
    assert get(engine, "b.test", "/global/") == (200, b"page of G")
    assert get(engine, "a.test", "/nothing/")[0] == 404


def test_vhost_overrides_proxy_websocket_async(make_proxy, backends):
    engine = make_proxy(config(backends))
    for host, expected in (("a.test", "async"), ("b.test", "sync")):
        sock = socket.create_connection(engine.addresses[0], timeout=5)
        with ws_connect(f"ws://{host}/app/", sock=sock, open_timeout=5) as ws:
            ws.send(host)
            assert ws.recv(timeout=5) == host
        wait_for(lambda expected=expected: engine.stats[f"tunnels.{expected}"] == 1, what=f"{expected} tunnel for {host}")
    assert engine.stats["tunnels.async"] == 1 and engine.stats["tunnels.sync"] == 1


def test_location_with_one_argument_proxy_pass(make_proxy, backends):
    engine = make_proxy(config(backends))
    with socket.create_connection(engine.addresses[0], timeout=5) as sock:
        sock.sendall(upgrade_request("/loc/room", host="b.test"))
        head, _ = read_head(sock)
    assert status_of(head) == 101
    with socket.create_connection(engine.addresses[0], timeout=5) as sock:
        sock.sendall(upgrade_request("/loc/room", host="a.test"))  # only b.test has it
        head, _ = read_head(sock)
    assert status_of(head) == 404
