"""``tunnel ctl close ID`` against a live ``tunnel serve`` (R161), both strategies and
``--workers 2``, and the frames seen each way on server-status, ``ctl tunnels --json``
and the metrics (R162).

Clients are python ``websockets``; the backend a ``websockets`` server that records the
close code it received and any protocol error, so "both sides got the operator's Close
and nothing broke" is checked where it happens.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.e2e.test_graceful import WsBackend
from tests.e2e.test_status import parse_page, scrape, value
from tests.support.backends import Server, switching_protocols
from tests.support.clients import http_get, raw_upgrade, read_head, status_of
from tests.support.processes import read_line_matching, spawn, stop
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

STRATEGIES = {"sync": "ProxyWebsocketAsync Off\n", "async": "ProxyWebsocketAsync On\n"}


@pytest.fixture
def ws_backend():
    backend = WsBackend()
    yield backend
    backend.close()


def ctl(conf, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunnel", "ctl", "--config", str(conf), *args], capture_output=True, text=True, timeout=60
    )


def write_conf(tmp_path, backend_port: int, extra: str = "") -> tuple:
    sock = tmp_path / "ctl.sock"
    conf = tmp_path / "tunnel.conf"
    conf.write_text(f"""\
Listen 127.0.0.1:0
TunnelControlSocket {sock}
{extra}
<Location /ws>
ProxyWebsocketFrameTracking On
</Location>
ProxyPass /ws ws://127.0.0.1:{backend_port}/
ProxyPass /plain ws://127.0.0.1:{backend_port}/
<Location /server-status>
SetHandler server-status
</Location>
<Location /metrics>
SetHandler metrics
</Location>
""")
    return conf, sock


def serve(conf, *extra: str) -> tuple[subprocess.Popen, int]:
    proc = spawn("serve", "--config", str(conf), "--log-level", "info", *extra)
    pattern = r"listening on 127\.0\.0\.1:(\d+) \(2 workers\)" if extra else r"listening on 127\.0\.0\.1:(\d+)"
    port = int(read_line_matching(proc, pattern, stream="stderr").group(1))
    wait_for(lambda: (conf.parent / "ctl.sock").exists(), timeout=15, what="the control socket")
    return proc, port


def end(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(timeout=20) == 0
    finally:
        stop(proc)


def tunnels(conf) -> list[dict]:
    out = ctl(conf, "tunnels", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def tunnel_of(conf, path: str) -> dict:
    return wait_for(lambda: next((t for t in tunnels(conf) if t["path"] == path), None), timeout=15, what=f"tunnel {path}")


async def closed_by_proxy(ws) -> tuple[int | None, str | None]:
    """Wait (bounded) until the proxy's Close arrives; the close code and reason."""
    try:
        await asyncio.wait_for(ws.recv(), timeout=15)
    except ConnectionClosed:
        pass
    else:
        raise AssertionError("a message came instead of the Close")
    await asyncio.wait_for(ws.wait_closed(), timeout=15)
    return ws.close_code, ws.close_reason


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_close_sends_the_code_and_reason_to_both_sides_and_the_frames_are_counted(tmp_path, ws_backend, strategy):
    conf, _ = write_conf(tmp_path, ws_backend.port, STRATEGIES[strategy])
    proc, port = serve(conf)
    addr = ("127.0.0.1", port)

    async def main() -> tuple[int | None, str | None, dict]:
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws/one", ping_interval=None, max_size=None) as ws:
            for text in ("one", "two", "three"):
                await ws.send(text)
                assert await asyncio.wait_for(ws.recv(), 10) == text
            row = await asyncio.to_thread(tunnel_of, conf, "/ws/one")
            # The status page and the metrics see the six frames while the tunnel is open.
            page = parse_page((await asyncio.to_thread(http_get, addr, "/server-status"))[2])
            table = page.tables["tunnels"]
            cells = dict(zip(table[0], next(r for r in table[1:] if r[0] == row["id"]), strict=True))
            assert (cells["Frames to backend"], cells["Frames to client"]) == ("3", "3")
            samples = await asyncio.to_thread(scrape, addr)
            assert value(samples, "tunnel_websocket_frames_total", direction="to_backend") == 3
            assert value(samples, "tunnel_websocket_frames_total", direction="to_client") == 3
            done = await asyncio.to_thread(ctl, conf, "close", row["id"], "--code", "4000", "--reason", "maintenance")
            assert done.returncode == 0, done.stderr
            assert f"tunnel {row['id']}: Close 4000" in done.stdout
            code, reason = await closed_by_proxy(ws)
            return code, reason, row

    try:
        code, reason, row = asyncio.run(main())
        assert (code, reason) == (4000, "maintenance")
        assert row["frames_to_backend"] == 3 and row["frames_to_client"] == 3
        wait_for(lambda: 4000 in ws_backend.close_codes, timeout=15, what="the backend to get Close 4000")
        assert ws_backend.errors == []
        wait_for(lambda: not tunnels(conf), timeout=15, what="the tunnel to end")
        samples = scrape(addr)
        assert value(samples, "tunnel_tunnel_closes_total", reason="closed by ctl") == 1
        # Closed tunnels stay counted: each side's Close answer is a frame more.
        assert value(samples, "tunnel_websocket_frames_total", direction="to_backend") == 4
        assert value(samples, "tunnel_websocket_frames_total", direction="to_client") == 4
        again = ctl(conf, "close", row["id"])
        assert again.returncode == 1 and f"no open tunnel {row['id']}" in again.stderr
    finally:
        end(proc)


def test_bad_input_is_a_clear_error_and_a_non_zero_exit(tmp_path, ws_backend):
    """Unknown IDs, codes out of range or reserved, long reasons, tunnels whose frames are
    not followed or that are not WebSocket at all, a stream that broke the framing."""
    def other_protocol(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(switching_protocols("tunnel-proto", accept=None))
        while conn.recv(4096):
            pass

    raw = Server(other_protocol)
    conf, sock_path = write_conf(tmp_path, ws_backend.port, f"ProxyPass /raw ws://127.0.0.1:{raw.address[1]}/ upgrade=tunnel-proto\n")
    proc, port = serve(conf)
    try:
        for args, words in (
            (("close", "0.999"), "no open tunnel 0.999"),
            (("close", "nonsense"), "is not a tunnel ID"),
            (("close", "7.1"), "there is no worker 7"),
            (("close", "0.1", "--code", "999"), "not a number from 1000 to 4999"),
            (("close", "0.1", "--code", "5000"), "not a number from 1000 to 4999"),
            (("close", "0.1", "--code", "1005"), "may not be sent"),
            (("close", "0.1", "--code", "1015"), "may not be sent"),
            (("close", "0.1", "--reason", "é" * 62), "124 bytes of UTF-8"),
        ):
            out = ctl(conf, *args)
            assert out.returncode != 0 and words in out.stderr, (args, out.stderr)
        # The server checks too (the control socket is not only tunnel ctl's).
        from tunnel.proxy.control import ask_blocking

        for request, words in (
            ({"op": "close", "id": "0.1", "code": 1006}, "may not be sent"),
            ({"op": "close", "id": "0.1", "code": "1000"}, "not a number"),
            ({"op": "close", "id": "0.1", "code": 1000, "reason": "x" * 124}, "at most 123"),
        ):
            answer = ask_blocking(str(sock_path), request)
            assert answer["ok"] is False and words in answer["error"], answer

        async def untracked_and_broken() -> None:
            async with websockets.connect(f"ws://127.0.0.1:{port}/plain/x", ping_interval=None) as ws:
                await ws.send("hi")
                assert await asyncio.wait_for(ws.recv(), 10) == "hi"
                row = await asyncio.to_thread(tunnel_of, conf, "/plain/x")
                assert row["frames_to_backend"] is None
                out = await asyncio.to_thread(ctl, conf, "close", row["id"])
                assert out.returncode == 1 and "frames are not followed" in out.stderr, out.stderr
                await ws.send("still open")
                assert await asyncio.wait_for(ws.recv(), 10) == "still open"

        asyncio.run(untracked_and_broken())

        # Not WebSocket: an upgrade to another protocol.
        other = socket.create_connection(("127.0.0.1", port), timeout=5)
        other.sendall(b"GET /raw/other HTTP/1.1\r\nHost: t\r\nUpgrade: tunnel-proto\r\nConnection: Upgrade\r\n\r\n")
        head, _ = read_head(other)
        assert status_of(head) == 101, head
        row = tunnel_of(conf, "/raw/other")
        out = ctl(conf, "close", row["id"])
        assert out.returncode == 1 and "not a WebSocket tunnel" in out.stderr, out.stderr
        other.close()
    finally:
        end(proc)
        raw.close()


def test_a_stream_that_breaks_the_framing_takes_no_close(tmp_path):
    """A 'websocket' tunnel whose client sends bytes that are not frames: the follower
    gives up, and ctl close says so (nothing of the proxy's goes into such a stream)."""
    got = []

    def backend(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(switching_protocols("websocket"))
        while chunk := conn.recv(4096):
            got.append(chunk)

    raw = Server(backend)
    conf, _ = write_conf(tmp_path, raw.address[1])
    proc, port = serve(conf)
    try:
        sock, head, _ = raw_upgrade(("127.0.0.1", port), "/ws/broken")
        assert status_of(head) == 101, head
        sock.sendall(b"\x83\x00not a frame")  # opcode 3 is reserved (RFC 6455 section 5.2)
        wait_for(lambda: b"".join(got) == b"\x83\x00not a frame", timeout=10, what="the bytes at the backend")
        row = tunnel_of(conf, "/ws/broken")
        out = ctl(conf, "close", row["id"])
        assert out.returncode == 1 and "stopped following WebSocket framing" in out.stderr, out.stderr
        assert b"".join(got) == b"\x83\x00not a frame"  # nothing was added to the stream
        sock.close()
    finally:
        end(proc)
        raw.close()


def test_close_reaches_the_worker_that_holds_the_tunnel(tmp_path, ws_backend):
    conf, sock_path = write_conf(tmp_path, ws_backend.port, "ProxyWebsocketAsync On\n")
    proc, port = serve(conf, "--workers", "2")
    wait_for(lambda: sock_path.exists(), timeout=15, what="the control socket")
    wait_for(lambda: value(scrape(("127.0.0.1", port)), "tunnel_workers", state="up") == 2, timeout=15, what="both workers answering")

    async def main() -> None:
        clients = []
        try:
            # SO_REUSEPORT spreads connections over the workers: open until worker 1 has one.
            for i in range(40):
                ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws/{i}", ping_interval=None)
                clients.append(ws)
                await ws.send("x")
                assert await asyncio.wait_for(ws.recv(), 10) == "x"
                rows = await asyncio.to_thread(tunnels, conf)
                if any(r["id"].startswith("1.") for r in rows) and any(r["id"].startswith("0.") for r in rows):
                    break
            rows = await asyncio.to_thread(tunnels, conf)
            by_path = {r["path"]: r for r in rows}
            for worker in ("0", "1"):
                row = next(r for r in rows if r["id"].startswith(worker + "."))
                ws = clients[int(row["path"].rsplit("/", 1)[1])]
                out = await asyncio.to_thread(ctl, conf, "close", row["id"], "--code", "4001", "--reason", f"w{worker}")
                assert out.returncode == 0, out.stderr
                assert await closed_by_proxy(ws) == (4001, f"w{worker}")
            assert len(by_path) == len(clients)
            for ws in clients:  # the others are untouched
                if ws.close_code is None:
                    await ws.send("y")
                    assert await asyncio.wait_for(ws.recv(), 10) == "y"
        finally:
            for ws in clients:
                await ws.close()

    try:
        asyncio.run(main())
        assert ws_backend.errors == []
    finally:
        end(proc)


@pytest.mark.parametrize(
    "conf, followed",
    [
        ("", False),
        ("ProxyWebsocketPingInterval 30\n", True),
        ("ProxyWebsocketHalfCloseTimeout 30\n", True),
        ("GracefulShutdownTimeout 5\n", True),
        ("ProxyWebsocketFrameTracking On\n", True),
        ("GracefulShutdownTimeout 5\n<Location /ws>\nProxyWebsocketFrameTracking Off\n</Location>\n", False),
    ],
)
def test_auto_follows_frames_where_something_configured_needs_them(make_proxy, echo, strategy, conf, followed):
    """R160, through the engine: the pump of a live tunnel has followers or not."""
    from tests.support.strategies import STRATEGY_CONFIGS

    engine = make_proxy(STRATEGY_CONFIGS[strategy] + conf + f"ProxyPass /ws ws://127.0.0.1:{echo.address[1]}/\n")
    host, port = engine.addresses[0]

    async def main() -> None:
        async with websockets.connect(f"ws://{host}:{port}/ws/x", ping_interval=None) as ws:
            await ws.send("hi")
            assert await asyncio.wait_for(ws.recv(), 10) == "hi"
            pumps = engine.live_tunnels()
            assert len(pumps) == 1
            assert (pumps[0].c2b.frames is not None, pumps[0].b2c.frames is not None) == (followed, followed)
            if followed:
                assert pumps[0].c2b.frames.frames == 1 and pumps[0].b2c.frames.frames == 1

    asyncio.run(main())
