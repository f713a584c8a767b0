"""Embedding the engine: Engine.handle from a host's own HTTP server thread, and from a
host's listener while the engine runs its loop."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from websockets.sync.client import connect as ws_connect

from tests.support.backends import Server
from tests.support.waiting import wait_for
from tunnel import Config, Engine

pytestmark = pytest.mark.timeout(30)


def test_threading_http_server_hands_upgrades_to_engine(echo):
    engine = Engine(Config.from_text(f"ProxyPass /ws/ ws://127.0.0.1:{echo.address[1]}/\n"))
    assert not engine.host.can_poll  # no loop: a host thread and a socket

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.headers.get("Upgrade", "").lower() != "websocket":
                body = b"plain page\n"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            # Rebuild the head the server already parsed and give socket + head away.
            fields = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())  # CRLF, as sent
            head = f"{self.requestline}\r\n{fields}\r\n".encode("latin-1")
            sock = self.connection
            self.close_connection = True
            dup = sock.dup()  # socketserver closes its own copy when we return
            engine.handle(dup, leading=head)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        port = server.server_address[1]
        with ws_connect(f"ws://127.0.0.1:{port}/ws/room", open_timeout=5) as ws:
            for msg in ("one", b"\x00two", "three" * 1000):
                ws.send(msg)
                assert ws.recv(timeout=5) == msg
        wait_for(lambda: engine.stats["tunnels.closed"] == 1, what="tunnel closed")
        assert engine.stats["tunnels.sync"] == 1 and engine.stats["tunnels.async"] == 0
    finally:
        server.shutdown()
        server.server_close()
        engine.stop()


def test_handle_joins_the_loop_when_running(echo):
    engine = Engine(Config.from_text(f"ProxyWebsocketAsync On\nProxyPass / ws://127.0.0.1:{echo.address[1]}/\n"))
    # Our own listener: each accepted raw socket (blocking, as accept() gives it) goes to
    # the engine, which joins it to its loop.
    with engine.running(), Server(engine.handle, timeout=None) as listener:
        with ws_connect(f"ws://127.0.0.1:{listener.port}/x", open_timeout=5) as ws:
            ws.send("hi")
            assert ws.recv(timeout=5) == "hi"
        wait_for(lambda: engine.stats["tunnels.closed"] == 1, what="tunnel closed")
        assert engine.stats["tunnels.async"] == 1 and listener.accepted == 1


def test_a_stop_asked_before_the_loop_runs_is_not_lost(echo):
    """``request_stop`` from another thread (a SIGTERM's handler) while the engine is still
    starting: ``serve_forever`` returns instead of serving on (a worker killed early hung)."""
    engine = Engine(Config.from_text(f"Listen 127.0.0.1:0\nProxyPass / ws://127.0.0.1:{echo.address[1]}/\n"))
    engine.request_stop()
    done = threading.Event()

    def serve() -> None:
        engine.serve_forever()
        done.set()

    threading.Thread(target=serve, daemon=True).start()
    try:
        wait_for(done.is_set, timeout=10, what="serve_forever returned after the early stop")
    finally:
        engine.stop()
