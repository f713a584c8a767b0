"""tunnel serve --workers N: SO_REUSEPORT processes, supervision, clean stop."""

from __future__ import annotations

import os
import signal
import socket

import pytest
from websockets.sync.client import connect as ws_connect

from tests.support.processes import read_line_matching, spawn
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(60)


def children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(x) for x in fh.read().split()]
    except FileNotFoundError:
        return []


def gone(pid: int) -> bool:
    """The process has exited: no /proc entry any more, or a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] == "Z"  # the state after "(comm)"
    except FileNotFoundError:
        return True


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return False
    return True


def test_two_workers_share_the_port_restart_and_stop(echo):
    proc = spawn(
        "serve", "--workers", "2", "--listen", "127.0.0.1:0", "--pass", f"/=ws://127.0.0.1:{echo.address[1]}/", "--log-level", "info"
    )
    try:
        port = int(read_line_matching(proc, r"listening on 127\.0\.0\.1:(\d+) \(2 workers\)", stream="stderr").group(1))
        wait_for(lambda: len(children_of(proc.pid)) == 2, what="two workers")
        # The parent prints the port as soon as it holds it; the workers listen a moment later.
        wait_for(lambda: accepts(port), timeout=15, what="a worker listening")
        for i in range(20):
            with ws_connect(f"ws://127.0.0.1:{port}/w{i}", open_timeout=5) as ws:
                ws.send(f"m{i}")
                assert ws.recv(timeout=5) == f"m{i}"
        victim = children_of(proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        read_line_matching(proc, r"exited with status -9; restarting", stream="stderr")
        wait_for(lambda: len(children_of(proc.pid)) == 2 and victim not in children_of(proc.pid), what="worker restarted")
        with ws_connect(f"ws://127.0.0.1:{port}/after", open_timeout=5) as ws:
            ws.send("after restart")
            assert ws.recv(timeout=5) == "after restart"
        workers = children_of(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        for pid in workers:
            wait_for(lambda pid=pid: gone(pid), what=f"worker {pid} gone")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_workers_stop_when_the_supervisor_is_killed(echo):
    """A supervisor killed with SIGKILL leaves no worker serving on its own."""
    proc = spawn(
        "serve", "--workers", "2", "--listen", "127.0.0.1:0", "--pass", f"/=ws://127.0.0.1:{echo.address[1]}/", "--log-level", "info"
    )
    workers: list[int] = []
    try:
        port = int(read_line_matching(proc, r"listening on 127\.0\.0\.1:(\d+) \(2 workers\)", stream="stderr").group(1))
        wait_for(lambda: len(children_of(proc.pid)) == 2, what="two workers")
        wait_for(lambda: accepts(port), timeout=15, what="a worker listening")
        workers = children_of(proc.pid)
        proc.kill()
        proc.wait()
        for pid in workers:
            wait_for(lambda pid=pid: gone(pid), timeout=20, what=f"worker {pid} gone after its supervisor was killed")
        assert not accepts(port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in workers:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
