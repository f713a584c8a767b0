"""Graceful stop, graceful restart, pings and half-close timeouts of a real ``tunnel serve``
process, driven by real signals and ``tunnel ctl`` (R120-R126), both strategies.

Clients are python ``websockets`` (asyncio, many in one loop) and raw sockets; the
backend is a ``websockets`` server that records every message and every protocol error
it sees, so "nothing lost" and "no protocol error" are checked where they happen.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import websockets
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed

from tests.support.backends import Server, switching_protocols
from tests.support.clients import read_head
from tests.support.processes import read_line_matching, spawn, stop
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(90)

STRATEGIES = {"sync": "ProxyWebsocketAsync Off\n", "async": "ProxyWebsocketAsync On\n"}


class WsBackend:
    """A ``websockets`` echo server on its own thread and loop; records what it got."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.close_codes: list[int | None] = []
        self.errors: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(10)

    async def _echo(self, ws) -> None:
        try:
            async for message in ws:
                if isinstance(message, str):
                    self.received.append(message)
                await ws.send(message)
        except ConnectionClosed:
            pass
        finally:
            rcvd = ws.protocol.close_rcvd
            self.close_codes.append(rcvd.code if rcvd is not None else None)
            if ws.close_code in (1002, 1007, 1009):  # protocol error, bad data, too big
                self.errors.append(f"closed with {ws.close_code}: {ws.close_reason}")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            self.server = await ws_serve(self._echo, "127.0.0.1", 0, max_size=None)
            self.port = self.server.sockets[0].getsockname()[1]
            self.ready.set()
            await self.server.wait_closed()

        self.loop.run_until_complete(main())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.thread.join(10)


@pytest.fixture
def ws_backend():
    backend = WsBackend()
    yield backend
    backend.close()


def write_conf(tmp_path: Path, body: str, name: str = "tunnel.conf") -> Path:
    path = tmp_path / name
    path.write_text(f"PidFile {tmp_path}/tunnel.pid\nLogLevel info\n{body}")
    return path


def start(conf: Path, *args: str) -> tuple[subprocess.Popen, int]:
    proc = spawn("serve", "-c", str(conf), *args)
    port = int(read_line_matching(proc, r"listening on 127\.0\.0\.1:(\d+)", stream="stderr").group(1))
    wait_for(lambda: (conf.parent / "tunnel.pid.status").exists(), timeout=15, what="the status file")
    return proc, port


def ctl(conf: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunnel", "ctl", "--config", str(conf), *args], capture_output=True, text=True, timeout=60)


def drain_stderr(proc: subprocess.Popen) -> list[str]:
    """Read the process's stderr on a thread (a full pipe would block its logging)."""
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
    return lines


async def open_clients(port: int, n: int, path: str = "/ws") -> list:
    sem = asyncio.Semaphore(50)

    async def one(i: int):
        async with sem:
            return await websockets.connect(f"ws://127.0.0.1:{port}{path}/{i}", open_timeout=20, ping_interval=None, max_size=None)

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def close_times(clients: list, t0_box: list[float], timeout: float) -> list[tuple[int | None, float]]:
    """Each client's close code and when (after t0_box[0]) its connection ended."""

    async def one(ws):
        try:
            await asyncio.wait_for(ws.recv(), timeout)
        except ConnectionClosed:
            pass
        await ws.wait_closed()
        rcvd = ws.protocol.close_rcvd
        return (rcvd.code if rcvd is not None else None, time.monotonic() - t0_box[0])

    return list(await asyncio.gather(*(one(ws) for ws in clients)))


def graceful_stop_round(conf: Path, port: int, proc: subprocess.Popen, backend: WsBackend, n: int, window: float):
    """n clients, each sends a message it never waits for, SIGWINCH at once: every client
    gets 1001, the closes spread over the window, the backend got every message."""

    async def scenario():
        clients = await open_clients(port, n)
        for i, ws in enumerate(clients):
            await ws.send(f"hello {i}")
            assert await ws.recv() == f"hello {i}"
        for i, ws in enumerate(clients):
            await ws.send(f"last {i}")  # sent before the stop, not waited for
        t0 = [time.monotonic()]
        await asyncio.sleep(0)
        await asyncio.get_running_loop().run_in_executor(None, wait_for, lambda: sum(m.startswith("last") for m in backend.received) == n)
        t0[0] = time.monotonic()
        os.kill(proc.pid, signal.SIGWINCH)
        return await close_times(clients, t0, window * 2 + 20)

    results = asyncio.run(scenario())
    assert proc.wait(timeout=window * 2 + 20) == 0
    codes = {code for code, _ in results}
    assert codes == {1001}, codes
    times = sorted(t for _, t in results)
    spread = times[-1] - times[0]
    # Spread evenly over the window: the first close at once, the last near its end,
    # the median near its middle.
    assert times[0] < window * 0.25
    assert window * 0.7 < spread < window + 1.5, times
    assert window * 0.3 < times[len(times) // 2] < window * 0.75, times
    assert {f"last {i}" for i in range(n)} <= set(backend.received)  # nothing sent before the stop lost
    assert set(backend.close_codes[-n:]) == {1001}
    assert backend.errors == []
    return spread


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_graceful_stop_closes_200_tunnels_with_1001_spread_over_the_window(tmp_path, ws_backend, strategy):
    conf = write_conf(
        tmp_path,
        STRATEGIES[strategy] + f"Listen 127.0.0.1:0\nGracefulShutdownTimeout 4\nProxyPass /ws ws://127.0.0.1:{ws_backend.port}/\n",
    )
    proc, port = start(conf)
    try:
        lines = drain_stderr(proc)
        spread = graceful_stop_round(conf, port, proc, ws_backend, 200, window=2.0)
        print(f"\n{strategy}: 200 closes spread over {spread:.2f}s (window 2s)")
        assert any("graceful stop: 200 WebSocket tunnel(s) get Close 1001" in line for line in lines)
        assert not (tmp_path / "tunnel.pid").exists()
    finally:
        stop(proc)


def test_graceful_stop_with_two_workers(tmp_path, ws_backend):
    conf = write_conf(tmp_path, f"Listen 127.0.0.1:0\nGracefulShutdownTimeout 2\nProxyPass /ws ws://127.0.0.1:{ws_backend.port}/\n")
    proc = spawn("serve", "-c", str(conf), "--workers", "2")
    try:
        port = int(read_line_matching(proc, r"listening on 127\.0\.0\.1:(\d+) \(2 workers\)", stream="stderr").group(1))
        drain_stderr(proc)
        wait_for(lambda: _accepts(port), timeout=15, what="a worker listening")
        graceful_stop_round(conf, port, proc, ws_backend, 60, window=1.0)
    finally:
        stop(proc)


class HoldingUpgrader(Server):
    """Answers an upgrade to a protocol other than WebSocket, then echoes raw bytes."""

    def handle(self, conn: socket.socket) -> None:
        with conn:
            read_head(conn, timeout=10)
            conn.sendall(switching_protocols("chat"))
            while chunk := conn.recv(65536):
                conn.sendall(chunk)


def test_a_tunnel_that_is_not_websocket_runs_until_the_deadline(tmp_path):
    with HoldingUpgrader() as backend:
        conf = write_conf(
            tmp_path, f"Listen 127.0.0.1:0\nGracefulShutdownTimeout 2\nProxyPass /chat ws://127.0.0.1:{backend.port}/ upgrade=chat\n"
        )
        proc, port = start(conf)
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"GET /chat HTTP/1.1\r\nHost: t\r\nUpgrade: chat\r\nConnection: Upgrade\r\n\r\n")
            head, _ = read_head(sock)
            assert b" 101 " in head
            t0 = time.monotonic()
            os.kill(proc.pid, signal.SIGWINCH)
            read_line_matching(proc, r"graceful stop: 0 WebSocket tunnel\(s\) get Close 1001 .* 1 other", stream="stderr")
            sock.sendall(b"still here")
            assert sock.recv(100) == b"still here"  # after the stop began, it runs on
            proc.wait(timeout=20)
            elapsed = time.monotonic() - t0
            assert proc.returncode == 0
            assert 1.5 < elapsed < 6, elapsed  # it ran until the 2 s deadline
            sock.settimeout(5)
            assert sock.recv(100) == b""  # then closed
            sock.close()
        finally:
            stop(proc)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return False
    return True
