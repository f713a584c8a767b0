"""The demo page in a real browser: Debian's headless Chromium loads the page through the
demo's http:// route and its script opens a WebSocket on the same path (the ws:// route),
sends the message given in ``?msg=`` and writes the echo into ``#log``.

The test watches the page over the DevTools protocol: Chromium starts with
``--remote-debugging-port=0``, the port is read from ``DevToolsActivePort`` in its profile
(or its "DevTools listening on ws://..." stderr line), the page target comes from
``/json/list``, and ``Runtime.evaluate`` reads the page's DOM over that target's WebSocket
until every expected text is there or a real-time deadline passes. Nothing depends on
Chromium's virtual time (``--dump-dom --virtual-time-budget``), which does not wait for a
WebSocket. Chromium runs in its own session with a throw-away profile, and its whole
process group is killed afterwards. Skipped when no chromium is installed (``make
system-deps`` installs it).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import WebSocketException
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from tests.support.processes import read_line_matching, spawn

pytestmark = pytest.mark.timeout(90)


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


CHROMIUM = _find_chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH or at /usr/bin/chromium (install it with `make system-deps`)"
)

#: Polling interval while waiting on Chromium or on the page (a condition with a deadline).
POLL = 0.1
DOM_JS = "document.documentElement.outerHTML"


class _NotThere(Exception):
    """Chromium or the page did not get where the test waits for it in time."""


def _devtools_port(profile: Path, err_path: Path, proc: subprocess.Popen, deadline: float) -> int:
    """The first line of ``DevToolsActivePort`` in the profile, or the port in Chromium's
    "DevTools listening on ws://host:port/..." stderr line, whichever shows up first."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise _NotThere(f"chromium exited with status {proc.returncode}")
        try:
            active = (profile / "DevToolsActivePort").read_text()
        except OSError:
            active = ""
        if "\n" in active:  # the first line is complete
            return int(active.split("\n", 1)[0])
        listening = re.search(r"DevTools listening on ws://[^/\s]+:(\d+)/", err_path.read_text(errors="replace"))
        if listening:
            return int(listening.group(1))
        time.sleep(POLL)
    raise _NotThere("chromium did not open its DevTools port in time")


def _page_socket_url(port: int, deadline: float) -> str:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as resp:
                targets = json.load(resp)
        except (OSError, ValueError):
            targets = []
        for target in targets:
            if target.get("type") == "page" and target.get("webSocketDebuggerUrl"):
                return target["webSocketDebuggerUrl"]
        time.sleep(POLL)
    raise _NotThere("chromium showed no page target in time")


def _evaluate(cdp: ClientConnection, ident: int, expression: str, deadline: float) -> str | None:
    """Send ``Runtime.evaluate`` as message ``ident``; the string value of its answer (events
    in between skipped), or None when the page had none (e.g. mid-navigation) or time ran out."""
    cdp.send(json.dumps({
        "id": ident,
        "method": "Runtime.evaluate",
        "params": {"expression": expression, "returnByValue": True},
    }))
    while True:
        try:
            message = json.loads(cdp.recv(timeout=max(0.1, deadline - time.monotonic())))
        except TimeoutError:
            return None
        if message.get("id") == ident:
            value = message.get("result", {}).get("result", {}).get("value")
            return value if isinstance(value, str) else None


@contextlib.contextmanager
def chromium_env() -> Iterator[dict[str, str]]:
    """Chromium's environment, with a temp dir of its own that is removed afterwards: a
    killed Chromium leaves its singleton-socket directory behind in $TMPDIR. (Not under the
    test's tmp_path: the socket's path would pass the 108-byte limit.)"""
    tmp = tempfile.mkdtemp(prefix="chromium-")
    try:
        yield dict(os.environ, TMPDIR=tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def page_shows(url: str, workdir: Path, expected: list[str], *extra: str, timeout: float = 45) -> str:
    """Open ``url`` in headless Chromium and wait until its DOM holds every ``expected``
    text; returns the DOM. Fails with the last DOM and Chromium's stderr after ``timeout``."""
    assert CHROMIUM is not None
    workdir.mkdir(parents=True, exist_ok=True)
    profile, err_path = workdir / "profile", workdir / "chromium.log"
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",
        "--remote-allow-origins=*",
        *extra,
        url,
    ]
    deadline = time.monotonic() + timeout
    dom, problem = "", f"{expected!r} not in the page's DOM after {timeout:.0f}s"
    # stderr to a file, not a pipe: a helper process Chromium leaves behind cannot block us.
    with open(err_path, "wb") as err, chromium_env() as env:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
        try:
            port = _devtools_port(profile, err_path, proc, deadline)
            with ws_connect(_page_socket_url(port, deadline), max_size=None, open_timeout=10) as cdp:
                ident = 0
                while time.monotonic() < deadline:
                    ident += 1
                    dom = _evaluate(cdp, ident, DOM_JS, deadline) or dom
                    if all(text in dom for text in expected):
                        return dom
                    time.sleep(POLL)
        except (_NotThere, OSError, WebSocketException) as exc:
            problem = f"waiting for {expected!r}: {type(exc).__name__}: {exc}"
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # chromium's own group (start_new_session)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
    log = err_path.read_text(errors="replace")[-2000:]
    raise AssertionError(f"{problem}:\n{dom[-3000:]}\n--- chromium stderr ---\n{log}")


@pytest.fixture
def demo_tls_off() -> Iterator[int]:
    proc = spawn("demo", "--listen", "127.0.0.1:0")
    try:
        yield int(read_line_matching(proc, r"browser: +http://127\.0\.0\.1:(\d+)/").group(1))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def demo_tls_on() -> Iterator[int]:
    proc = spawn("demo", "--tls", "--listen", "127.0.0.1:0")
    try:
        yield int(read_line_matching(proc, r"browser: +https://127\.0\.0\.1:(\d+)/").group(1))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@needs_chromium
def test_demo_page_echoes_through_a_websocket_on_its_own_path(demo_tls_off, tmp_path):
    port = demo_tls_off
    token = "browser" + secrets.token_hex(6)
    dom = page_shows(
        f"http://127.0.0.1:{port}/rooms/42?msg={token}",
        tmp_path,
        # The script opened its WebSocket on the page's own path and got the echo back.
        [f"open ws://127.0.0.1:{port}/rooms/42", f"echo: {token}"],
    )
    assert "<h1>tunnel demo</h1>" in dom
    assert not re.search(r"(?m)^error$", dom)


@needs_chromium
def test_demo_page_over_tls_uses_wss_on_its_own_path(demo_tls_on, tmp_path):
    port = demo_tls_on
    token = "tls" + secrets.token_hex(6)
    dom = page_shows(
        f"https://127.0.0.1:{port}/secure/?msg={token}",
        tmp_path,
        [f"open wss://127.0.0.1:{port}/secure/", f"echo: {token}"],
        "--ignore-certificate-errors",  # the demo's certificate is self-signed
    )
    assert "<h1>tunnel demo</h1>" in dom
    assert not re.search(r"(?m)^error$", dom)
