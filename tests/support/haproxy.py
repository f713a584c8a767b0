"""A real HAProxy in front of tunnel (mode tcp, PROXY protocol), for tests that need a
real L4 balancer. Skips the test when haproxy is not installed.

`haproxy_tcp` yields the frontend's port; `haproxy_balancer` also health-checks each
server (``option httpchk GET /ready``) and yields an `HAProxy` whose admin socket tells
how HAProxy sees each server (UP, DOWN, ...), so a test can wait until it marks one down
or up again.
"""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.waiting import wait_for


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


@dataclass
class HAProxy:
    """A running HAProxy: its frontend port, its admin socket, its process."""

    port: int
    admin: Path
    proc: subprocess.Popen

    def command(self, line: str) -> str:
        """One command on the admin socket (``show stat``, ``show servers state`` ...)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.admin))
            s.sendall(line.encode() + b"\n")
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        return out.decode()

    def states(self, backend: str = "tunnels") -> dict[str, str]:
        """Each server of ``backend`` by name: its status as HAProxy sees it (``UP``,
        ``DOWN``, ``UP 1/2`` while rising, ``MAINT`` ...)."""
        text = self.command("show stat").lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {r["svname"]: r["status"] for r in rows if r["pxname"] == backend and r["svname"] not in ("FRONTEND", "BACKEND")}

    def wait_state(self, server: str, state: str, timeout: float = 20.0) -> None:
        """Wait until HAProxy reports ``server`` exactly ``state`` (``UP`` or ``DOWN``)."""
        wait_for(lambda: self.states().get(server) == state, timeout=timeout, what=f"haproxy marking {server} {state}", interval=0.02)


def _config(port: int, servers: list[tuple[str, int]], send_proxy: str, extra: str, admin: Path | None, check: str) -> list[str]:
    return [
        "global",
        "  maxconn 4000",
        *([f"  stats socket {admin} mode 600 level admin"] if admin is not None else []),
        "defaults",
        "  mode tcp",
        "  timeout connect 5s",
        "  timeout client 60s",
        "  timeout server 60s",
        "  timeout check 2s",
        "frontend front",
        f"  bind 127.0.0.1:{port}",
        "  default_backend tunnels",
        "backend tunnels",
        "  balance roundrobin",
        *extra.splitlines(),
        *(f"  server s{i} {host}:{p} {send_proxy}{check}" for i, (host, p) in enumerate(servers)),
    ]


@contextlib.contextmanager
def _run(tmp_path: Path, servers: list[tuple[str, int]], send_proxy: str, extra: str, admin: Path | None, check: str) -> Iterator[HAProxy]:
    """Start HAProxy on a free port; a free port is chosen and the start is retried
    (bounded) if another process took it meanwhile, as HAProxy cannot report a port it
    picked."""
    binary = haproxy_binary()
    for _attempt in range(5):
        port = _free_port()
        conf = tmp_path / "haproxy.cfg"
        conf.write_text("\n".join(_config(port, servers, send_proxy, extra, admin, check)) + "\n")
        checked = subprocess.run([binary, "-c", "-f", str(conf)], capture_output=True, text=True, timeout=20)
        assert checked.returncode == 0, checked.stdout + checked.stderr
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
            yield HAProxy(port, admin or Path(), proc)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return
    raise AssertionError("haproxy could not bind a free port in 5 attempts")


@contextlib.contextmanager
def haproxy_tcp(tmp_path: Path, servers: list[tuple[str, int]], *, send_proxy: str = "send-proxy-v2", extra: str = "") -> Iterator[int]:
    """HAProxy in TCP mode balancing to ``servers`` with ``send_proxy``; yields its port."""
    with _run(tmp_path, servers, send_proxy, extra, None, "") as haproxy:
        yield haproxy.port


@contextlib.contextmanager
def haproxy_balancer(
    tmp_path: Path,
    servers: list[tuple[str, int]],
    *,
    health: str = "/ready",
    inter_ms: int = 100,
    fall: int = 1,
    rise: int = 2,
    send_proxy: str = "send-proxy-v2",
) -> Iterator[HAProxy]:
    """HAProxy in TCP mode with ``send_proxy`` to ``servers`` (named s0, s1, ...), each
    health-checked with ``GET health`` every ``inter_ms``: down after ``fall`` failed
    checks (a status other than 2xx/3xx, or no connection), up after ``rise`` good
    ones. The checks carry the PROXY header too (HAProxy sends it on checks of a
    send-proxy server). Yields the `HAProxy`, with its admin socket in ``tmp_path``."""
    extra = f"  option httpchk GET {health}\n  http-check expect status 200"
    check = f" check inter {inter_ms}ms fall {fall} rise {rise}"
    with _run(tmp_path, servers, send_proxy, extra, tmp_path / "haproxy.sock", check) as haproxy:
        yield haproxy
