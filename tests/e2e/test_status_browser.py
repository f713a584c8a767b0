"""server-status and balancer-manager in headless Chromium, driven over the DevTools
protocol as tests/e2e/test_browser.py drives the demo page: 50 tunnels on the page with
growing byte counts; a member disabled by clicking through httpd's form (Chromium sends
the Referer itself), new tunnels going to the others while its open one stays.

With ``TUNNEL_DOCS_IMAGES=docs/images`` the run writes the screenshots that
docs/operations.md shows.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from tests.e2e.test_browser import CHROMIUM, _devtools_port, _page_socket_url, chromium_env, needs_chromium
from tests.support.backends import Recorder
from tests.support.clients import raw_upgrade, recv_exactly, status_of
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.timeout(120), needs_chromium]

CONF = """\
<Proxy balancer://chat>
BalancerMember ws://127.0.0.1:{a}/ route=a
BalancerMember ws://127.0.0.1:{b}/ route=b
BalancerMember ws://127.0.0.1:{c}/ route=c
</Proxy>
ProxyPass /chat balancer://chat/
ProxyPass /feed ws://127.0.0.1:{raw}/
<Location /server-status>
SetHandler server-status
Require ip 127.0.0.1
</Location>
<Location /balancer-manager>
SetHandler balancer-manager
Require ip 127.0.0.1
</Location>
"""


class Browser:
    """One headless Chromium page, reached over its DevTools WebSocket."""

    def __init__(self, url: str, workdir: Path) -> None:
        assert CHROMIUM is not None
        workdir.mkdir(parents=True, exist_ok=True)
        profile, self.err_path = workdir / "profile", workdir / "chromium.log"
        cmd = [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
            "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
            "--window-size=1280,900", "--hide-scrollbars", f"--user-data-dir={profile}",
            "--remote-debugging-port=0", "--remote-allow-origins=*", url,
        ]
        self._err = open(self.err_path, "wb")  # noqa: SIM115 - closed in close()
        self._tmp = contextlib.ExitStack()
        env = self._tmp.enter_context(chromium_env())
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self._err, stdin=subprocess.DEVNULL,
                                     start_new_session=True, env=env)
        deadline = time.monotonic() + 45
        port = _devtools_port(profile, self.err_path, self.proc, deadline)
        self._stack = contextlib.ExitStack()
        self.cdp: ClientConnection = self._stack.enter_context(ws_connect(_page_socket_url(port, deadline), max_size=None, open_timeout=10))
        self.ident = 0

    def call(self, method: str, params: dict | None = None, timeout: float = 20) -> dict:
        self.ident += 1
        ident = self.ident
        self.cdp.send(json.dumps({"id": ident, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.cdp.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == ident:
                return message.get("result", {})

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return result.get("result", {}).get("value")

    def wait_js(self, expression: str, what: str, timeout: float = 30):
        return wait_for(lambda: self.js(expression), timeout=timeout, what=what, interval=0.1)

    def screenshot(self, name: str) -> None:
        target = os.environ.get("TUNNEL_DOCS_IMAGES")
        if not target:
            return
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": 1280, "height": min(size["height"], 2400), "scale": 1}
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip})["data"]
        Path(target).mkdir(parents=True, exist_ok=True)
        (Path(target) / name).write_bytes(base64.b64decode(data))

    def close(self) -> None:
        self._stack.close()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)
        self._err.close()
        self._tmp.close()


@pytest.fixture
def members():
    servers = [Recorder(name) for name in "ABC"]
    yield servers
    for s in servers:
        s.close()


def test_status_and_balancer_manager_in_chromium(make_proxy, members, raw_echo, tmp_path):
    a, b, c = (m.address[1] for m in members)
    engine = make_proxy(CONF.format(a=a, b=b, c=c, raw=raw_echo.address[1]))
    port = engine.addresses[0][1]
    feeds = []
    for i in range(50):
        sock, head, rest = raw_upgrade(("127.0.0.1", port), f"/feed/room{i}")
        assert status_of(head) == 101 and rest == b""
        sock.sendall(b"m" * (100 + i))
        assert recv_exactly(sock, 100 + i) == b"m" * (100 + i)
        feeds.append(sock)
    chats = []
    for _ in range(3):
        sock, head, rest = raw_upgrade(("127.0.0.1", port), "/chat/lobby")
        assert status_of(head) == 101
        chats.append((sock, recv_exactly(sock, 1, initial=rest)))
    assert sorted(name for _, name in chats) == [b"A", b"B", b"C"]
    browser = Browser(f"http://127.0.0.1:{port}/server-status", tmp_path / "chromium")
    try:
        browser.wait_js("document.querySelectorAll('table.tunnels tr').length === 54", "53 tunnel rows and the header")
        cell = ("(() => { const h=[...document.querySelectorAll('table.tunnels th')].map(t=>t.textContent);"
                " const r=[...document.querySelectorAll('table.tunnels tr')].find(r=>r.cells[3]&&r.cells[3].textContent==='/feed/room7');"
                " return r ? Number(r.cells[h.indexOf('To backend')].textContent) : -1; })()")
        assert browser.js(cell) == 107
        browser.screenshot("server-status.png")
        feeds[7].sendall(b"n" * 5000)
        assert recv_exactly(feeds[7], 5000) == b"n" * 5000
        browser.js("location.reload()")
        browser.wait_js(f"{cell} === 5107", "the byte count of /feed/room7 grown after a reload")

        browser.js(f"location.href = 'http://127.0.0.1:{port}/balancer-manager'")
        url_a = f"ws://127.0.0.1:{a}/"
        browser.wait_js(f"!!document.querySelector('tr[data-member=\"{url_a}\"] a')", "the manager page")
        browser.js(f"document.querySelector('tr[data-member=\"{url_a}\"] a').click()")
        browser.wait_js("!!document.getElementById('w_status_D1')", "the member's edit form")
        browser.js("document.getElementById('w_status_D1').click(); document.getElementById('submit').click()")
        status_cell = f"document.querySelector('tr[data-member=\"{url_a}\"] td.status').textContent"
        browser.wait_js(f"{status_cell} === 'Init Dis '", "member A disabled on the page")
        assert browser.js(f"document.querySelector('tr[data-member=\"{url_a}\"] td.busy').textContent") == "1"
        browser.screenshot("balancer-manager.png")
    finally:
        browser.close()
    later = []
    for _ in range(6):
        sock, head, rest = raw_upgrade(("127.0.0.1", port), "/chat/lobby")
        later.append((sock, recv_exactly(sock, 1, initial=rest)))
    assert {name for _, name in later} == {b"B", b"C"}
    open_a = next(sock for sock, name in chats if name == b"A")
    open_a.sendall(b"?")  # the tunnel to A is still open: its member answers by closing
    assert open_a.recv(1) == b""
    for sock in feeds + [s for s, _ in chats + later]:
        sock.close()
