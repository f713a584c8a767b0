"""A real HAProxy in front of tunnel (mode tcp, PROXY protocol), for tests that need a
real L4 balancer. Skips the test when haproxy is not installed."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    if found is None:
        pytest.skip("haproxy is not installed (make system-deps installs it)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepting(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def haproxy_tcp(tmp_path: Path, servers: list[tuple[str, int]], *, send_proxy: str = "send-proxy-v2", extra: str = "") -> Iterator[int]:
    """HAProxy in TCP mode balancing to ``servers`` with ``send_proxy``; yields its port.

    HAProxy cannot report a port it picked, so a free port is chosen and the start is
    retried (bounded) if another process took it meanwhile.
    """
    binary = haproxy_binary()
    for _attempt in range(5):
        port = _free_port()
        lines = [
            "global",
            "  maxconn 4000",
            "defaults",
            "  mode tcp",
            "  timeout connect 5s",
            "  timeout client 60s",
            "  timeout server 60s",
            "frontend front",
            f"  bind 127.0.0.1:{port}",
            "  default_backend tunnels",
            "backend tunnels",
            "  balance roundrobin",
            *extra.splitlines(),
            *(f"  server s{i} {host}:{p} {send_proxy}" for i, (host, p) in enumerate(servers)),
        ]
        conf = tmp_path / "haproxy.cfg"
        conf.write_text("\n".join(lines) + "\n")
        check = subprocess.run([binary, "-c", "-f", str(conf)], capture_output=True, text=True, timeout=20)
        assert check.returncode == 0, check.stdout + check.stderr
        proc = subprocess.Popen([binary, "-db", "-f", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None and not _accepting(port):
            time.sleep(0.02)
        if proc.poll() is not None:
            output = proc.stdout.read() if proc.stdout else ""
            if "Address already in use" in output or "cannot bind" in output:
                continue  # the port was taken between the choice and the bind: try another
            raise AssertionError(f"haproxy exited {proc.returncode}: {output}")
        try:
            assert _accepting(port), "haproxy did not start accepting in time"
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return
    raise AssertionError("haproxy could not bind a free port in 5 attempts")
