"""Chromium and WebSockets over HTTP/2 (R140, R142): headless Chromium loads a page over
https:// from a listener with ``Protocols h2 http/1.1``; the page opens a WebSocket on
the same origin and writes the echo into its DOM. The proxy's access log (``%H``) shows
which protocol carried the socket: HTTP/2.0 with ``H2WebSockets on`` (Chromium reuses
the page's connection, RFC 8441), HTTP/1.1 with it off (Chromium sees no
SETTINGS_ENABLE_CONNECT_PROTOCOL and opens a connection of its own)."""

from __future__ import annotations

import secrets

import pytest

from tests.e2e.test_browser import needs_chromium, page_shows
from tests.e2e.test_h2 import ca, cert  # noqa: F401 - fixtures
from tests.support.waiting import wait_for
from tunnel.echo import EchoServer

pytestmark = pytest.mark.timeout(120)

PAGE = b"""<!doctype html><html><body><h1>h2 page</h1><pre id="log"></pre><script>
const log = (t) => { document.getElementById("log").textContent += t + "\\n"; };
const msg = new URLSearchParams(location.search).get("msg");
const ws = new WebSocket(`wss://${location.host}/ws/echo`);
ws.onopen = () => { log("open"); ws.send(msg); };
ws.onmessage = (e) => { log("echo: " + e.data); ws.close(1000); };
ws.onerror = () => log("error");
ws.onclose = (e) => log("closed " + e.code);
</script></body></html>"""


@needs_chromium
@pytest.mark.parametrize("websockets", ["on", "off"])
def test_chromium_websocket_over_h2_or_its_fallback(make_proxy, cert, tmp_path, websockets):  # noqa: F811
    log = tmp_path / "access.log"
    with EchoServer("127.0.0.1", 0, page=PAGE) as backend:
        host, port = backend.address
        engine = make_proxy(
            f"""Listen 127.0.0.1:0 https
SSLEngine On
SSLCertificateFile {cert}
Protocols h2 http/1.1
H2WebSockets {websockets}
ProxyPass /ws/ ws://{host}:{port}/
ProxyPass / http://{host}:{port}/
CustomLog {log} "%H %r %>s"
"""
        )
        token = "h2" + secrets.token_hex(6)
        proxy_port = engine.addresses[0][1]
        page_shows(
            f"https://localhost:{proxy_port}/page?msg={token}",
            tmp_path / "chromium",
            ["open", f"echo: {token}", "closed 1000"],
            "--ignore-certificate-errors",  # trustme's CA is not in Chromium's store
        )
        wait_for(lambda: log.exists() and "/ws/echo" in log.read_text(), timeout=10, what="the socket's log line")
    lines = log.read_text().splitlines()
    page = next(line for line in lines if " /page?" in line)
    socket_line = next(line for line in lines if "/ws/echo" in line)
    assert page.startswith("HTTP/2.0 GET /page?")  # the page came over HTTP/2 either way
    if websockets == "on":
        assert socket_line == "HTTP/2.0 GET /ws/echo HTTP/2.0 101"
    else:
        assert socket_line == "HTTP/1.1 GET /ws/echo HTTP/1.1 101"
