"""The Socket.IO sticky-session recipe with real python-socketio servers and clients:
two servers behind two balancers (HTTP long-polling and WebSocket members), the route
cookie set by ``Header add Set-Cookie ... env=BALANCER_ROUTE_CHANGED``. A Socket.IO
session lives on one server only, so every polling request and the WebSocket upgrade
of a client must reach the member that opened it: without the cookie the handshake
fails (the other server does not know the session id)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest

socketio = pytest.importorskip("socketio")
serving = pytest.importorskip("werkzeug.serving")

pytestmark = pytest.mark.timeout(60)


class SocketIOServer:
    """A python-socketio server (threading mode) on werkzeug: ``whoami`` answers its name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sio = socketio.Server(async_mode="threading")
        self.sio.on("whoami", lambda sid, *args: name)
        self.http = serving.make_server("127.0.0.1", 0, socketio.WSGIApp(self.sio), threaded=True)
        self.port = self.http.server_port
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.http.shutdown()
        self.thread.join(10)
        self.http.server_close()


@pytest.fixture
def nodes() -> Iterator[tuple[SocketIOServer, SocketIOServer]]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    a, b = SocketIOServer("node-a"), SocketIOServer("node-b")
    yield a, b
    a.close()
    b.close()


def recipe(a: int, b: int) -> str:
    return f"""
Header add Set-Cookie "ROUTEID=.%{{BALANCER_WORKER_ROUTE}}e; path=/" env=BALANCER_ROUTE_CHANGED
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


def test_socketio_clients_stay_on_their_member_through_the_upgrade(make_proxy, nodes):
    a, b = nodes
    engine = make_proxy(recipe(a.port, b.port))
    host, port = engine.addresses[0][:2]
    clients = []
    try:
        # Long-polling clients make many requests on one session, upgrading ones switch
        # to a WebSocket: both kinds must keep reaching the member that opened them.
        for transports in (["polling"], ["polling", "websocket"], ["polling"], ["polling", "websocket"], ["polling", "websocket"]):
            client = socketio.Client(reconnection=False)
            client.connect(f"http://{host}:{port}", transports=transports, wait_timeout=10)
            clients.append((client, transports[-1]))
        names = []
        for client, transport in clients:
            first = client.call("whoami", timeout=10)
            assert client.transport() == transport
            assert client.call("whoami", timeout=10) == first
            names.append(first)
        assert set(names) == {"node-a", "node-b"}  # the balancer spread the clients, the cookie kept each
        assert engine.stats["tunnels.sync"] + engine.stats["tunnels.async"] >= 3
    finally:
        for client, _ in clients:
            client.disconnect()
