"""The demo page in a real browser: Debian's headless Chromium loads the page through the
demo's http:// route and its script opens a WebSocket on the same path (the ws:// route),
sends the message given in ``?msg=`` and writes the echo into ``#log``.

``--dump-dom`` with ``--virtual-time-budget`` prints the DOM once the page is quiet (the
budget waits for the page's pending network work, the WebSocket included). Chromium runs
in its own session with a throw-away profile, and its whole process group is killed
afterwards. Skipped when no chromium is installed (``make system-deps`` installs it).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from .test_cli import read_line_matching, spawn

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


def dump_dom(url: str, workdir: Path, *extra: str, timeout: float = 30) -> str:
    """The DOM of ``url`` after the page went quiet, as headless Chromium prints it."""
    assert CHROMIUM is not None
    workdir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = workdir / "dom.html", workdir / "chromium.log"
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
        f"--user-data-dir={workdir / 'profile'}",
        "--virtual-time-budget=10000",
        *extra,
        "--dump-dom",
        url,
    ]
    # Files, not pipes: a helper process Chromium leaves behind cannot hold our reads open.
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # chromium's own group (start_new_session)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
    return out_path.read_text(errors="replace")


def page_shows(url: str, workdir: Path, expected: list[str], *extra: str) -> str:
    """Load ``url`` until the DOM holds every ``expected`` text (at most 3 tries, one
    deadline); returns the last DOM. A retry covers a browser start that was too slow
    for its virtual-time budget on a loaded machine."""
    deadline = time.monotonic() + 60
    dom = ""
    for attempt in range(3):
        left = deadline - time.monotonic()
        if left <= 5:
            break
        dom = dump_dom(url, workdir / f"try{attempt}", *extra, timeout=min(30, left))
        if all(text in dom for text in expected):
            return dom
    log = (workdir / "try0" / "chromium.log").read_text(errors="replace")[-2000:]
    raise AssertionError(f"{expected!r} not in the page's DOM:\n{dom[-3000:]}\n--- chromium stderr ---\n{log}")


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
    page_shows(
        f"https://127.0.0.1:{port}/secure/?msg={token}",
        tmp_path,
        [f"open wss://127.0.0.1:{port}/secure/", f"echo: {token}"],
        "--ignore-certificate-errors",  # the demo's certificate is self-signed
    )
