"""Graceful restart (SIGUSR1 / ``tunnel ctl graceful``) and restart (SIGHUP) of a real
``tunnel serve`` under load (R123): listeners kept, live tunnels kept, new routes served,
a broken configuration refused with its file and line."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import threading
import time

import pytest
import websockets
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from tests.e2e.test_graceful import STRATEGIES, ctl, drain_stderr, open_clients, start, write_conf, ws_backend  # noqa: F401
from tests.support.processes import read_line_matching, spawn, stop
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(90)


class Connector:
    """Connects to the port in a loop (TCP, then a WebSocket handshake) and counts refusals."""

    def __init__(self, port: int, path: str) -> None:
        self.port, self.path = port, path
        self.ok = 0
        self.refused: list[str] = []
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.running:
            try:
                with ws_connect(f"ws://127.0.0.1:{self.port}{self.path}", open_timeout=10) as ws:
                    ws.send("ping")
                    assert ws.recv(timeout=10) == "ping"
                self.ok += 1
            except (OSError, ConnectionClosed, TimeoutError) as exc:
                self.refused.append(repr(exc))

    def stop(self) -> None:
        self.running = False
        self.thread.join(20)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_graceful_restart_under_load_keeps_tunnels_and_listeners(tmp_path, ws_backend, strategy):  # noqa: F811
    base = STRATEGIES[strategy] + "Listen 127.0.0.1:0\n"
    conf = write_conf(tmp_path, base + f"ProxyPass /ws ws://127.0.0.1:{ws_backend.port}/\n")
    proc, port = start(conf)
    lines = drain_stderr(proc)
    connector = Connector(port, "/ws/loop")
    try:

        async def scenario() -> None:
            clients = await open_clients(port, 200)
            sums = [hashlib.sha256() for _ in clients]

            async def round_trip(i: int, ws, n: int) -> None:
                for k in range(n):
                    payload = os.urandom(64) + f"{i}:{k}".encode()
                    await ws.send(payload)
                    got = await ws.recv()
                    assert got == payload
                    sums[i].update(got)

            await asyncio.gather(*(round_trip(i, ws, 3) for i, ws in enumerate(clients)))
            wait_for(lambda: connector.ok > 0, timeout=20, what="the connector through")
            # The new configuration: one more route; the same Listen line.
            write_conf(tmp_path, base + f"ProxyPass /ws ws://127.0.0.1:{ws_backend.port}/\nProxyPass /new ws://127.0.0.1:{ws_backend.port}/\n")
            during = asyncio.gather(*(round_trip(i, ws, 5) for i, ws in enumerate(clients)))  # echoing while it restarts
            result = await asyncio.get_running_loop().run_in_executor(None, ctl, conf, "graceful")
            await during
            assert result.returncode == 0, result.stderr
            assert "reloaded" in result.stdout
            await asyncio.gather(*(round_trip(i, ws, 2) for i, ws in enumerate(clients)))  # the same sockets go on
            async with websockets.connect(f"ws://127.0.0.1:{port}/new/x", open_timeout=10) as ws:  # the new route
                await ws.send("new route")
                assert await ws.recv() == "new route"
            for ws in clients:
                await ws.close()

        asyncio.run(scenario())
        ok_before = connector.ok
        wait_for(lambda: connector.ok > ok_before, timeout=20, what="the connector after the restart")
    finally:
        connector.stop()
        stop(proc)
    assert connector.refused == []  # a client connecting during the restart is never refused
    assert ws_backend.errors == []
    assert any("graceful restart done" in line for line in lines)


def test_a_broken_configuration_keeps_the_old_one_and_ctl_says_why(tmp_path, ws_backend):  # noqa: F811
    conf = write_conf(tmp_path, f"Listen 127.0.0.1:0\nProxyPass /ws ws://127.0.0.1:{ws_backend.port}/\n")
    proc, port = start(conf)
    try:
        drain_stderr(proc)
        with ws_connect(f"ws://127.0.0.1:{port}/ws/live", open_timeout=10) as live:
            text = conf.read_text()
            conf.write_text(text + "ProxyPass /b ws://127.0.0.1:1/ bogus=1\n")
            result = ctl(conf, "graceful")
            assert result.returncode != 0
            assert f"{conf}:5:" in result.stderr and "bogus" in result.stderr, result.stderr
            assert "previous one still serves" in result.stderr
            live.send("still")
            assert live.recv(timeout=10) == "still"
            with ws_connect(f"ws://127.0.0.1:{port}/ws/new", open_timeout=10) as ws:  # the old one serves
                ws.send("old")
                assert ws.recv(timeout=10) == "old"
            conf.write_text(text)
            fixed = ctl(conf, "graceful")
            assert fixed.returncode == 0, fixed.stderr
        result = ctl(conf, "stop")
        assert result.returncode == 0 and "stopped" in result.stdout
        assert proc.wait(timeout=10) == 0
    finally:
        stop(proc)


def test_restart_closes_live_tunnels_and_serves_the_new_listener(tmp_path, ws_backend):  # noqa: F811
    conf = write_conf(tmp_path, f"Listen 127.0.0.1:0\nProxyPass /ws ws://127.0.0.1:{ws_backend.port}/\n")
    proc, port = start(conf)
    try:
        lines = drain_stderr(proc)
        with ws_connect(f"ws://127.0.0.1:{port}/ws/live", open_timeout=10) as live:
            live.send("hi")
            assert live.recv(timeout=10) == "hi"
            spare = socket.socket()
            spare.bind(("127.0.0.1", 0))
            new_port = spare.getsockname()[1]
            spare.close()
            conf.write_text(conf.read_text() + f"Listen 127.0.0.1:{new_port}\n")
            result = ctl(conf, "restart")
            assert result.returncode == 0 and "restarted" in result.stdout, result.stderr
            with pytest.raises(ConnectionClosed):
                live.recv(timeout=10)  # a restart closes live tunnels
        for p in (port, new_port):
            with ws_connect(f"ws://127.0.0.1:{p}/ws/after", open_timeout=10) as ws:
                ws.send("after")
                assert ws.recv(timeout=10) == "after"
        assert any("restart done" in line for line in lines)
    finally:
        stop(proc)


def test_workers_stay_up_through_a_graceful_restart(tmp_path, ws_backend):  # noqa: F811
    conf = write_conf(tmp_path, f"Listen 127.0.0.1:0\nProxyPass /ws ws://127.0.0.1:{ws_backend.port}/\n")
    proc = spawn("serve", "-c", str(conf), "--workers", "2")
    try:
        port = int(read_line_matching(proc, r"listening on 127\.0\.0\.1:(\d+) \(2 workers\)", stream="stderr").group(1))
        drain_stderr(proc)
        wait_for(lambda: _children(proc.pid) and len(_children(proc.pid)) == 2, what="two workers")
        workers = _children(proc.pid)
        wait_for(lambda: _ws_ok(port, "/ws/a"), timeout=15, what="a worker serving")
        with ws_connect(f"ws://127.0.0.1:{port}/ws/live", open_timeout=10) as live:
            conf.write_text(conf.read_text() + f"ProxyPass /new ws://127.0.0.1:{ws_backend.port}/\n")
            result = ctl(conf, "graceful")
            assert result.returncode == 0, result.stderr
            wait_for(lambda: all(_ws_ok(port, "/new/x") for _ in range(6)), timeout=15, what="every worker on the new route")
            live.send("kept")
            assert live.recv(timeout=10) == "kept"
            assert _children(proc.pid) == workers  # the same worker processes
            conf.write_text(conf.read_text() + "Nonsense here\n")
            bad = ctl(conf, "graceful")
            assert bad.returncode != 0 and f"{conf}:6:" in bad.stderr and "Nonsense" in bad.stderr
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        stop(proc)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return sorted(int(x) for x in fh.read().split())
    except FileNotFoundError:
        return []


def _ws_ok(port: int, path: str) -> bool:
    try:
        with ws_connect(f"ws://127.0.0.1:{port}{path}", open_timeout=5) as ws:
            ws.send("x")
            return ws.recv(timeout=5) == "x"
    except (OSError, ConnectionClosed, TimeoutError):
        return False
    finally:
        time.sleep(0)
