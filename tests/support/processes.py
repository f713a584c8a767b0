"""``python -m tunnel`` as a subprocess, and reading the lines it prints."""

from __future__ import annotations

import re
import subprocess
import sys
import time


def spawn(*args: str, cwd: str | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tunnel", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
    )


def read_line_matching(proc: subprocess.Popen, pattern: str, stream: str = "stdout", timeout: float = 15) -> re.Match:
    """The first line of ``stream`` matching ``pattern``; kills the process and fails with
    what was seen if the stream ends or ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    pipe = getattr(proc, stream)
    seen = []
    while time.monotonic() < deadline:
        line = pipe.readline()
        if not line:
            break
        seen.append(line)
        m = re.search(pattern, line)
        if m:
            return m
    proc.kill()
    raise AssertionError(f"no line matching {pattern!r} in {seen!r}; stderr: {proc.stderr.read() if stream == 'stdout' else ''}")


def stop(proc: subprocess.Popen) -> None:
    """Kill ``proc`` if it still runs, and reap it (for ``finally`` blocks)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
