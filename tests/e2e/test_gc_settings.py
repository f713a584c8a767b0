"""``tunnel serve`` and the cyclic collector: a larger generation-0 threshold, the
long-lived objects frozen once the engine is built (in the supervisor before the fork
and in each worker), unfrozen by a reload so the old configuration can be collected;
serving, restarts and reloads go on as before."""

from __future__ import annotations

import os
import re
import signal

import pytest
from websockets.sync.client import connect as ws_connect

from tests.e2e.test_graceful import drain_stderr, write_conf
from tests.support.processes import spawn, stop
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

FROZEN = re.compile(r"gc: (\d+) objects frozen \(pid (\d+)\)")
UNFROZEN = re.compile(r"gc: (\d+) objects unfrozen \(pid (\d+)\)")
LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


def matches(lines: list[str], pattern: re.Pattern[str]) -> list[re.Match[str]]:
    return [m for m in map(pattern.search, list(lines)) if m]


def children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return sorted(int(x) for x in fh.read().split())
    except FileNotFoundError:
        return []


def echoes(port: int, path: str) -> bool:
    with ws_connect(f"ws://127.0.0.1:{port}{path}", open_timeout=5) as ws:
        ws.send(path)
        return ws.recv(timeout=5) == path


def test_serve_freezes_after_the_engine_is_built_and_a_reload_unfreezes(tmp_path, echo):
    conf = write_conf(tmp_path, f"Listen 127.0.0.1:0\nProxyPass /ws ws://127.0.0.1:{echo.address[1]}/\n")
    proc = spawn("serve", "-c", str(conf), "--log-level", "debug")
    lines = drain_stderr(proc)
    try:
        wait_for(lambda: matches(lines, FROZEN) and matches(lines, LISTENING), timeout=15, what="frozen and listening")
        assert any("gc: thresholds (10000, " in line for line in lines), lines
        (frozen,) = matches(lines, FROZEN)
        assert int(frozen.group(2)) == proc.pid
        assert int(frozen.group(1)) > 10_000  # the modules, the Config, the engine: far more than a handful
        port = int(matches(lines, LISTENING)[0].group(1))
        assert echoes(port, "/ws/before")
        conf.write_text(conf.read_text() + f"ProxyPass /new ws://127.0.0.1:{echo.address[1]}/\n")
        os.kill(proc.pid, signal.SIGUSR1)  # graceful restart: the new file is read
        wait_for(lambda: matches(lines, UNFROZEN), timeout=15, what="unfrozen by the reload")
        (unfrozen,) = matches(lines, UNFROZEN)
        # what was frozen, less what reference counting freed since (frozen objects still die)
        assert 10_000 < int(unfrozen.group(1)) <= int(frozen.group(1)) and int(unfrozen.group(2)) == proc.pid
        wait_for(lambda: echoes(port, "/new/after"), timeout=15, what="the new route served")
        os.kill(proc.pid, signal.SIGUSR1)  # a second reload: nothing frozen any more, nothing to give back
        wait_for(lambda: len(matches(lines, UNFROZEN)) == 2, timeout=15, what="the second reload")
        assert matches(lines, UNFROZEN)[1].group(1) == "0"
        assert echoes(port, "/ws/still")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        stop(proc)


def test_workers_freeze_in_the_supervisor_before_the_fork_and_in_each_worker(echo):
    proc = spawn(
        "serve", "--workers", "2", "--listen", "127.0.0.1:0", "--pass", f"/=ws://127.0.0.1:{echo.address[1]}/",
        "--log-level", "debug",
    )
    lines = drain_stderr(proc)
    try:
        wait_for(lambda: len(children_of(proc.pid)) == 2, timeout=15, what="two workers")
        workers = children_of(proc.pid)
        wait_for(lambda: len(matches(lines, FROZEN)) == 3, timeout=15, what="three freezes")
        by_pid = {int(m.group(2)): int(m.group(1)) for m in matches(lines, FROZEN)}
        assert sorted(by_pid) == sorted([proc.pid, *workers])
        for pid in workers:  # a worker's count holds what the supervisor froze, plus its engine
            assert by_pid[pid] > by_pid[proc.pid]
        port = int(matches(lines, LISTENING)[0].group(1))
        wait_for(lambda: echoes(port, "/w0"), timeout=15, what="a worker serving")
        for i in range(10):
            assert echoes(port, f"/w{i}")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        stop(proc)
