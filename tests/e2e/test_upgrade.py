"""Binary upgrade (``tunnel ctl upgrade``, R155-R159) of a real ``tunnel serve`` process.

The tunnels' two ends run in processes of their own (tests/support/upgrade_peers.py) so
that 1,000 tunnels (about 4,000 descriptors across the four processes) fit the fd limit:
each end streams WebSocket frames and hashes what it sends and receives, and a few
backends do not read at first, so the proxy holds bytes pending for them when it hands
over. Every hash must match at the end: no byte lost or doubled.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import trustme
import websockets
import websockets.sync.client
from websockets.exceptions import ConnectionClosed

from tests.e2e.test_graceful import WsBackend, ctl, drain_stderr, start, write_conf
from tests.support.clients import read_head, upgrade_request
from tests.support.processes import stop
from tests.support.waiting import wait_for
from tests.support.wss import wss_connect
from tunnel.cli.pidfile import alive, read_pid

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ws_backend():
    backend = WsBackend()
    yield backend
    backend.close()


class PeerProcess:
    """One upgrade_peers process: commands in, JSON lines out."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.upgrade_peers", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )

    def line(self, timeout: float = 60) -> dict:
        box: list[str] = []
        reader = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        assert box and box[0], f"no answer from peers {self.proc.args[3:]} (exit {self.proc.poll()})"
        return json.loads(box[0])

    def command(self, cmd: str) -> None:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()

    def report(self) -> dict:
        self.command("report")
        return self.line()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def tunnels_json(conf: Path) -> list[dict]:
    result = ctl(conf, "tunnels", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


class ConnectLoop:
    """Opens WebSocket tunnels one after another until stopped; every one must get 101."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.done = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        i = 0
        while not self.done.is_set():
            i += 1
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                    sock.sendall(upgrade_request(f"/ws/loop-{i}", f"127.0.0.1:{self.port}"))
                    head, _ = read_head(sock, timeout=10)
                    if not head.startswith(b"HTTP/1.1 101"):
                        self.failures.append(f"{i}: {head[:40]!r}")
                    else:
                        self.ok += 1
            except OSError as exc:
                self.failures.append(f"{i}: {exc!r}")

    def stop(self) -> None:
        self.done.set()
        self.thread.join(15)


def _wait_exit(proc: subprocess.Popen, timeout: float) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the old process {proc.pid} still runs {timeout:g}s after the upgrade") from None


def test_1000_plain_tunnels_move_mid_stream_with_pending_bytes_and_no_client_refused(tmp_path):
    """1,000 tunnels, 1 in 20 sync (pool threads), the rest async (the loop)."""
    n = 1000
    backend = PeerProcess("backend")
    port = backend.line()["port"]
    conf = write_conf(
        tmp_path,
        "Listen 127.0.0.1:0\nProxyWebsocketAsync On\nMaxTunnelThreads 500\n"
        "<Location /ws/sync/>\nProxyWebsocketAsync Off\n</Location>\n"
        f"ProxyPass /ws/ ws://127.0.0.1:{port}/ws/\n",
    )
    proc, pport = start(conf)
    lines = drain_stderr(proc)
    clients = new = None
    try:
        clients = PeerProcess("clients", str(pport), str(n), "5")
        assert clients.line(timeout=90) == {"open": n}
        rows = tunnels_json(conf)
        assert {t["strategy"] for t in rows} == {"sync", "async"}
        wait_for(lambda: sum(t["buffered"] for t in tunnels_json(conf) if t["strategy"] == "sync") > 0, timeout=20, what="bytes pending in a sync tunnel")
        wait_for(lambda: sum(t["buffered"] for t in tunnels_json(conf) if t["strategy"] == "async") > 0, timeout=20, what="bytes pending in an async tunnel")
        loop = ConnectLoop(pport)
        wait_for(lambda: loop.ok >= 3, timeout=10, what="the connect loop")
        result = ctl(conf, "upgrade")
        assert result.returncode == 0, result.stderr
        new = read_pid(str(tmp_path / "tunnel.pid"))
        assert new is not None and new != proc.pid and alive(new)
        assert f"pid {new} took over {n}" in result.stdout or f"pid {new} took over" in result.stdout
        assert _wait_exit(proc, 20) == 0  # it held only plain tunnels: all moved, it exits
        before = loop.ok
        wait_for(lambda: loop.ok >= before + 3, timeout=10, what="the connect loop after the upgrade")
        loop.stop()
        assert loop.failures == []
        moved = [m for line in lines if (m := re.search(r"took over (\d+) tunnel\(s\) with (\d+) bytes pending", line))]
        assert moved and int(moved[0].group(1)) >= n and int(moved[0].group(2)) > 0, lines[-20:]
        backend.command("go")  # the slow backends read now: their pending bytes arrive
        clients.command("stop")
        backend.command("stop")

        def settled() -> bool:
            c, b = clients.report(), backend.report()
            return all(c[p][4] == 0 and b[p][4] == 0 and c[p][0] == b[p][2] and b[p][0] == c[p][2] for p in c)

        wait_for(settled, timeout=60, what="every byte delivered both ways")
        c, b = clients.report(), backend.report()
        assert len(c) == n
        for path, (sent, sent_sha, got, got_sha, _) in c.items():
            assert (sent, sent_sha) == tuple(b[path][2:4]), f"{path}: client->backend differs"
            assert (got, got_sha) == tuple(b[path][0:2]), f"{path}: backend->client differs"
        assert sum(row[0] for p, row in c.items() if "slow" in p) >= 5 * (8 << 20) - 5 * 65536
        after = tunnels_json(conf)  # the new process lists them, with the strategy they had
        assert len(after) >= n
        assert {t["path"] for t in after if t["strategy"] == "sync"} == {p for p in c if p.startswith("/ws/sync/")}
    finally:
        print("".join([line for line in lines if "] tunnel 127" not in line][-60:]))  # shown when the test fails
        for peers in (clients, backend):
            if peers is not None:
                peers.close()
        stop(proc)
        if new is not None and alive(new):
            os.kill(new, 9)


async def _talk(port: int, n: int, backend: WsBackend):
    clients = [await websockets.connect(f"ws://127.0.0.1:{port}/ws/{i}", ping_interval=None, max_size=None, compression=None) for i in range(n)]
    for i, ws in enumerate(clients):
        await ws.send(f"before {i}")
        assert await ws.recv() == f"before {i}"
    return clients


@pytest.mark.parametrize("strategy", ["sync", "async"])
def test_websocket_tunnels_keep_their_frames_and_close_properly_in_the_new_process(tmp_path, ws_backend, strategy):
    """Frame followers move too: after the upgrade a graceful stop of the new process
    puts its Close 1001 between frames, and neither side sees a protocol error."""
    conf = write_conf(
        tmp_path,
        f"Listen 127.0.0.1:0\nProxyWebsocketAsync {'On' if strategy == 'async' else 'Off'}\n"
        f"GracefulShutdownTimeout 2\nProxyPass /ws/ ws://127.0.0.1:{ws_backend.port}/\n"
        f'CustomLog {tmp_path}/access.log "%U %>s %I %O %{{close_reason}}n"\n',
    )
    proc, port = start(conf)
    drain_stderr(proc)
    new = None

    async def scenario():
        clients = await _talk(port, 10, ws_backend)
        big = "x" * 1_000_000  # a long frame (not compressed): the hand-over lands inside it
        sends = [asyncio.ensure_future(ws.send(big)) for ws in clients]
        await asyncio.sleep(0)
        result = await asyncio.get_running_loop().run_in_executor(None, ctl, conf, "upgrade")
        assert result.returncode == 0, result.stderr
        await asyncio.gather(*sends)
        for i, ws in enumerate(clients):
            assert await ws.recv() == big
            await ws.send(f"after {i}")
            assert await ws.recv() == f"after {i}"
        newpid = read_pid(str(tmp_path / "tunnel.pid"))
        os.kill(newpid, signal.SIGWINCH)  # graceful stop of the new process
        codes = []
        for ws in clients:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 20)
            codes.append(ws.protocol.close_rcvd.code if ws.protocol.close_rcvd else None)
        return newpid, codes

    try:
        new, codes = asyncio.run(scenario())
        assert codes == [1001] * 10
        wait_for(lambda: len(ws_backend.close_codes) >= 10, timeout=20, what="the backend's closes")
        assert ws_backend.errors == []
        assert set(ws_backend.close_codes) == {1001}
        assert _wait_exit(proc, 20) == 0
        # One access-log line per tunnel, written by the new process, with the whole
        # tunnel's bytes (the million-byte message each way crossed the hand-over).
        wait_for(lambda: not alive(new), timeout=20, what="the new process's exit")
        lines = [line.split() for line in (tmp_path / "access.log").read_text().splitlines()]
        assert sorted(line[0] for line in lines) == sorted(f"/ws/{i}" for i in range(10))
        for path, status, received, sent, *reason in lines:
            assert status == "101" and int(received) > 1_000_000 and int(sent) > 1_000_000, (path, received, sent)
            assert " ".join(reason).startswith("graceful stop"), reason
    finally:
        stop(proc)
        if new is not None and alive(new):
            os.kill(new, 9)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    ca = trustme.CA()
    path = tmp_path_factory.mktemp("upgradecerts") / "proxy.pem"
    ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(path))
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return str(path), ctx


def test_tls_tunnels_stay_in_the_old_process_and_get_1001_at_the_timeout(tmp_path, ws_backend, tls_files):
    cert, ctx = tls_files
    conf = write_conf(
        tmp_path,
        f"Listen 127.0.0.1:0\nListen 127.0.0.1:0 https\nSSLEngine On\nSSLCertificateFile {cert}\n"
        f"ProxyWebsocketAsync On\nGracefulShutdownTimeout 2\nProxyPass /ws/ ws://127.0.0.1:{ws_backend.port}/\n",
    )
    proc, port = start(conf)
    lines = drain_stderr(proc)
    new = None
    try:
        wait_for(lambda: sum("listening on" in line for line in lines) >= 1, timeout=10, what="the TLS listener")
        tls_port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", next(line for line in lines if "listening on" in line)).group(1))
        with wss_connect(f"wss://localhost:{tls_port}/ws/tls", ssl=ctx) as secure, websockets.sync.client.connect(f"ws://127.0.0.1:{port}/ws/plain") as plain:
            secure.send("s1")
            assert secure.recv() == "s1"
            result = ctl(conf, "upgrade")
            assert result.returncode == 0, result.stderr
            assert "exits once its TLS tunnels end" in result.stdout
            new = read_pid(str(tmp_path / "tunnel.pid"))
            t0 = time.monotonic()
            plain.send("p2")
            assert plain.recv() == "p2"  # moved, served by the new process
            secure.send("s2")
            assert secure.recv() == "s2"  # still served by the old one
            assert proc.poll() is None
            with pytest.raises(ConnectionClosed) as closed:
                secure.recv(timeout=15)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
            assert time.monotonic() - t0 >= 1.5  # at GracefulShutdownTimeout, not at once
            assert _wait_exit(proc, 15) == 0
            plain.send("p3")
            assert plain.recv() == "p3"
        with wss_connect(f"wss://localhost:{tls_port}/ws/tls2", ssl=ctx) as again:  # the new process serves TLS too
            again.send("s3")
            assert again.recv() == "s3"
    finally:
        stop(proc)
        if new is not None and alive(new):
            os.kill(new, 9)


def _still_serves(port: int) -> None:
    with websockets.sync.client.connect(f"ws://127.0.0.1:{port}/ws/check") as ws:
        ws.send("ok?")
        assert ws.recv() == "ok?"


def test_a_new_process_that_fails_leaves_the_old_one_serving(tmp_path, ws_backend):
    body = f"Listen 127.0.0.1:0\nProxyPass /ws/ ws://127.0.0.1:{ws_backend.port}/\n"
    conf = write_conf(tmp_path, body)
    proc, port = start(conf)
    drain_stderr(proc)
    held = socket.socket()
    try:
        with websockets.sync.client.connect(f"ws://127.0.0.1:{port}/ws/live") as live:
            live.send("1")
            assert live.recv() == "1"
            # A configuration that broke since the start: the reason, with file and line.
            conf.write_text(conf.read_text() + "ProxyWebsocketIdleTimeout soon\n")
            result = ctl(conf, "upgrade")
            assert result.returncode == 1
            assert f"upgrade failed; pid {proc.pid} still serves" in result.stderr
            assert "tunnel.conf:5" in result.stderr and "ProxyWebsocketIdleTimeout" in result.stderr
            assert read_pid(str(tmp_path / "tunnel.pid")) == proc.pid
            live.send("2")
            assert live.recv() == "2"
            _still_serves(port)
            # A port the new process cannot bind.
            held.bind(("127.0.0.1", 0))
            held.listen(1)
            write_conf(tmp_path, body + f"Listen 127.0.0.1:{held.getsockname()[1]}\n")
            result = ctl(conf, "upgrade")
            assert result.returncode == 1
            assert "cannot listen" in result.stderr and "in use" in result.stderr.lower()
            assert read_pid(str(tmp_path / "tunnel.pid")) == proc.pid
            live.send("3")
            assert live.recv() == "3"
            _still_serves(port)
            # And once the file is right again, the upgrade goes through.
            write_conf(tmp_path, body)
            held.close()
            result = ctl(conf, "upgrade")
            assert result.returncode == 0, result.stderr
            live.send("4")
            assert live.recv() == "4"
            assert _wait_exit(proc, 20) == 0
        assert ctl(conf, "status").returncode == 0  # the control socket is the new process's
    finally:
        held.close()
        stop(proc)
        new = read_pid(str(tmp_path / "tunnel.pid"))
        if new is not None and new != proc.pid and alive(new):
            os.kill(new, 9)


def test_upgrade_with_several_workers_is_refused_clearly(tmp_path, ws_backend):
    conf = write_conf(tmp_path, f"Listen 127.0.0.1:0\nProxyPass /ws/ ws://127.0.0.1:{ws_backend.port}/\n")
    proc, port = start(conf, "--workers", "2")
    drain_stderr(proc)
    try:
        result = ctl(conf, "upgrade")
        assert result.returncode == 1
        assert "needs --workers 1" in result.stderr
        assert proc.poll() is None
    finally:
        stop(proc)
