"""Real applications behind tunnel, configured the way their documentation says.

* python-socketio (an ASGI Socket.IO server under uvicorn) behind the Socket.IO docs'
  own httpd recipe (tests/fixtures/httpd/socketio.conf, the rewrite of upgrades to ws://
  plus the http ProxyPass): `socketio.Client` connects with long-polling, upgrades to
  WebSocket, emits and gets the answer; tunnel logs the tunnel.
* an ``Origin`` allow-list (``Require expr %{HTTP:Origin} == '...'``) in front of a
  WebSocket echo, driven by headless Chromium: a page from the allowed origin opens the
  socket and gets its echo, a page from another origin is refused and the backend never
  sees that attempt.
* jupyter_server behind the routing of JupyterHub's Apache recipe (upgrades rewritten to
  ws://, everything else through ``<Location "/"> ProxyPass``): a kernel's WebSocket
  channels execute code and a terminal (terminado) echoes a command.

Each is skipped when its package is not installed (``make test-apps`` installs them).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support.appbackend import AppBackend
from tests.support.httpd_fixtures import FIXTURES
from tests.support.waiting import wait_for
from tunnel import Config, Engine

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def engines() -> Iterator[list[Engine]]:
    started: list[Engine] = []
    yield started
    for engine in started:
        engine.stop()


def _start(engines: list[Engine], text: str, name: str) -> Engine:
    engine = Engine(Config.from_text(text, filename=name), server_name="proxy.test").start()
    engines.append(engine)
    return engine


# -- python-socketio -------------------------------------------------------------------

@pytest.fixture
def socketio_server() -> Iterator[int]:
    socketio = pytest.importorskip("socketio")
    uvicorn = pytest.importorskip("uvicorn")
    pytest.importorskip("websocket")  # socketio.Client's WebSocket transport
    sio = socketio.AsyncServer(async_mode="asgi")

    @sio.on("question")  # type: ignore[misc]
    async def question(sid: str, data: Any) -> dict[str, Any]:
        return {"answer": data, "transport": sio.transport(sid)}

    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(socketio.ASGIApp(sio), log_level="warning", lifespan="off", ws="websockets-sansio"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 10, "uvicorn to start")
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


def test_socketio_client_upgrades_to_websocket_through_the_published_recipe(socketio_server, engines) -> None:
    import socketio

    values = {"p80": "0", "b1": str(socketio_server)}
    engine = _start(engines, FIXTURES["socketio"].render(values), "socketio.conf")
    port = engine.addresses[0][1]
    client = socketio.Client(reconnection=False)
    client.connect(f"http://127.0.0.1:{port}", transports=["polling", "websocket"], wait_timeout=10)
    try:
        wait_for(lambda: client.transport() == "websocket", 10, "the client to upgrade to WebSocket")
        token = secrets.token_hex(4)
        reply = client.call("question", token, timeout=10)
        assert reply == {"answer": token, "transport": "websocket"}
        assert engine.stats["tunnels.open"] == 1  # the upgrade went through the [P] rewrite
    finally:
        client.disconnect()
    wait_for(lambda: engine.stats["tunnels.closed"] >= 1, 10, "tunnel to log the closed tunnel")


# -- Origin allow-list in Chromium -------------------------------------------------------

PAGE = """<!doctype html><html><body><pre id="log"></pre><script>
const log = (t) => { document.getElementById('log').textContent += t + '\\n'; };
const ws = new WebSocket('ws://127.0.0.1:%(proxy)d/ws/chat');
ws.onopen = () => { log('open'); ws.send('%(token)s'); };
ws.onmessage = (e) => { log('echo: ' + e.data); };
ws.onerror = () => { log('error'); };
ws.onclose = (e) => { log('closed ' + e.code); };
</script></body></html>"""


class _Pages:
    """A page server on a port of its own (its origin is http://127.0.0.1:PORT) that
    serves ``body``, set once the proxy's port is known."""

    def __init__(self) -> None:
        self.body = b""
        pages = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(pages.body)))
                self.end_headers()
                self.wfile.write(pages.body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def _log_of(dom: str) -> str:
    match = re.search(r'<pre id="log">(.*?)</pre>', dom, re.S)
    return match.group(1) if match else ""


def test_origin_allow_list_refuses_a_foreign_page_in_chromium(engines, tmp_path: Path) -> None:
    from tests.e2e.test_browser import CHROMIUM, page_shows

    if CHROMIUM is None:
        pytest.skip("no chromium (install it with `make system-deps`)")
    backend = AppBackend("echo")
    allowed, foreign = _Pages(), _Pages()
    try:
        engine = _start(engines, f"""\
Listen 127.0.0.1:0
ProxyPass /ws/ ws://127.0.0.1:{backend.port}/ws/
<Location /ws/>
    Require expr %{{HTTP:Origin}} == 'http://127.0.0.1:{allowed.port}'
</Location>
""", "origin.conf")
        proxy = engine.addresses[0][1]
        token = "allowed" + secrets.token_hex(4)
        allowed.body = (PAGE % {"proxy": proxy, "token": token}).encode()
        foreign.body = (PAGE % {"proxy": proxy, "token": "foreign"}).encode()

        dom = page_shows(f"http://127.0.0.1:{allowed.port}/", tmp_path / "allowed", [f"echo: {token}"])
        assert _log_of(dom).startswith("open\n")
        assert len(backend.seen) == 1
        assert backend.seen[0].headers.get("origin") == f"http://127.0.0.1:{allowed.port}"
        dom = page_shows(f"http://127.0.0.1:{foreign.port}/", tmp_path / "foreign", ["closed 1006"])
        log = _log_of(dom)
        assert "open" not in log and "echo:" not in log, log
        assert len(backend.seen) == 1, "the backend saw the foreign page's attempt"
    finally:
        allowed.close()
        foreign.close()
        backend.close()


# -- jupyter_server ---------------------------------------------------------------------

@pytest.fixture
def jupyter(tmp_path: Path) -> Iterator[tuple[int, str]]:
    pytest.importorskip("jupyter_server")
    pytest.importorskip("ipykernel")
    token = secrets.token_hex(16)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "cfg"), JUPYTER_DATA_DIR=str(tmp_path / "data"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"), HOME=str(tmp_path))
    with open(tmp_path / "jupyter.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter_server", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
             "--port-retries=0", "--allow-root", f"--IdentityProvider.token={token}", "--ServerApp.allow_origin=*",
             f"--ServerApp.root_dir={tmp_path}"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )

    def up() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2) as r:
                return r.status == 200
        except OSError:
            assert proc.poll() is None, (tmp_path / "jupyter.log").read_text()
            return False

    try:
        wait_for(up, 40, "jupyter_server to answer", interval=0.2)
        yield port, token
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _jupyter_routes(backend_port: int) -> str:
    """The routing of JupyterHub's published Apache recipe (tests/fixtures/httpd/
    jupyterhub.conf) on plain HTTP: upgrades rewritten to ws://, the rest proxied from
    ``<Location "/">`` with the Host kept."""
    return f"""\
Listen 127.0.0.1:0
RewriteEngine On
RewriteCond %{{HTTP:Connection}} Upgrade [NC]
RewriteCond %{{HTTP:Upgrade}} websocket [NC]
RewriteRule /(.*) ws://127.0.0.1:{backend_port}/$1 [P,L]
<Location "/">
    ProxyPreserveHost on
    ProxyPass         http://127.0.0.1:{backend_port}/
    ProxyPassReverse  http://127.0.0.1:{backend_port}/
</Location>
"""


def _api(port: int, token: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method, data=json.dumps(body or {}).encode() if method == "POST" else None,
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=20) as resp:
        return json.loads(resp.read() or b"null")


def test_jupyter_kernel_channels_and_terminal_through_tunnel(jupyter, engines) -> None:
    from websockets.sync.client import connect as ws_connect

    backend_port, token = jupyter
    engine = _start(engines, _jupyter_routes(backend_port), "jupyter.conf")
    port = engine.addresses[0][1]
    origin = f"http://127.0.0.1:{port}"

    kernel = _api(port, token, "POST", "/api/kernels", {"name": "python3"})
    try:
        with ws_connect(f"ws://127.0.0.1:{port}/api/kernels/{kernel['id']}/channels?token={token}",
                        origin=origin, open_timeout=20, max_size=None) as ws:
            msg_id = uuid.uuid4().hex
            ws.send(json.dumps({
                "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "t", "session": uuid.uuid4().hex,
                           "version": "5.3", "date": ""},
                "parent_header": {}, "metadata": {}, "channel": "shell",
                "content": {"code": "print(6 * 7)", "silent": False, "store_history": False, "user_expressions": {},
                            "allow_stdin": False, "stop_on_error": True},
            }))
            deadline = time.monotonic() + 30
            printed = ""
            while time.monotonic() < deadline and "42" not in printed:
                reply = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
                if reply.get("parent_header", {}).get("msg_id") == msg_id and reply["msg_type"] == "stream":
                    printed += reply["content"]["text"]
            assert "42" in printed
    finally:
        _api(port, token, "DELETE", f"/api/kernels/{kernel['id']}")

    pytest.importorskip("terminado")
    term = _api(port, token, "POST", "/api/terminals")
    try:
        with ws_connect(f"ws://127.0.0.1:{port}/terminals/websocket/{term['name']}?token={token}",
                        origin=origin, open_timeout=20) as ws:
            marker = secrets.token_hex(4)
            ws.send(json.dumps(["stdin", f"echo tunnel-{marker}-$((6*7))\r"]))
            deadline = time.monotonic() + 20
            seen = ""
            while time.monotonic() < deadline and f"tunnel-{marker}-42" not in seen:
                frame = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
                if frame[0] == "stdout":
                    seen += frame[1]
            assert f"tunnel-{marker}-42" in seen
    finally:
        _api(port, token, "DELETE", f"/api/terminals/{term['name']}")
    assert engine.stats["tunnels.closed"] + engine.stats["tunnels.open"] >= 2
