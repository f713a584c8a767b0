"""The proxy end to end, for every strategy: real sockets, real backends, real clients."""

from __future__ import annotations

import hashlib
import os
import select
import socket
import threading
import time

import pytest
from websockets.sync.client import connect as ws_connect

from tests.support.backends import Answering, HalfCloser, closing, silent, switching_protocols
from tests.support.clients import (
    free_port_refused,
    raw_upgrade,
    read_head,
    recv_exactly,
    recv_until_eof,
    status_of,
    upgrade_request,
)
from tests.support.resources import fd_table, thread_count, wait_fds_back
from tests.support.strategies import STRATEGY_CONFIGS
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(60)


def ws_url(engine, path="/echo"):
    host, port = engine.addresses[0]
    return f"ws://{host}:{port}{path}"


def proxy_for(make_proxy, backend_port, strategy="async", extra=""):
    return make_proxy(
        STRATEGY_CONFIGS[strategy]
        + extra
        + f"ProxyPass / ws://127.0.0.1:{backend_port}/\n"
    )


def test_mebibyte_echo_intact(make_proxy, echo, strategy):
    engine = proxy_for(make_proxy, echo.address[1], strategy)
    payload = os.urandom(1 << 20)
    with ws_connect(ws_url(engine), max_size=None, open_timeout=5) as ws:
        for i in range(200):  # with a delay the hand-over happens mid-transfer
            ws.send(payload)
            reply = ws.recv(timeout=10)
            assert hashlib.sha256(reply).digest() == hashlib.sha256(payload).digest()
            if i >= 2 and (strategy != "async-delay" or engine.stats["tunnels.handed_over"]):
                break
        ws.send("text too")
        assert ws.recv(timeout=5) == "text too"
    wait_for(lambda: engine.stats["tunnels.closed"] == 1, what="tunnel closed")
    expected = "sync" if strategy == "sync" else "async"
    assert engine.stats[f"tunnels.{expected}"] == 1
    if strategy == "async-delay":
        assert engine.stats["tunnels.handed_over"] == 1


def test_early_data_both_ways(make_proxy, strategy):
    # The backend sends its 101 and its first frame in one packet; the client sends its
    # first bytes in the same packet as the request head.
    answer = switching_protocols() + b"backend-early"
    backend = Answering(answer)
    try:
        engine = proxy_for(make_proxy, backend.port, strategy)
        sock = socket.create_connection(engine.addresses[0], timeout=5)
        sock.sendall(upgrade_request("/x") + b"client-early")
        head, rest = read_head(sock)
        assert status_of(head) == 101
        assert recv_exactly(sock, len(b"backend-early"), initial=rest) == b"backend-early"
        conn = wait_for(lambda: backend.conns and backend.conns[0], what="backend connection")
        got = recv_exactly(conn, len(b"client-early")) if not backend.received.endswith(b"client-early") else b"client-early"
        assert got == b"client-early"
        sock.close()
    finally:
        backend.close()


def test_half_close_from_client_with_data_in_flight(make_proxy, raw_echo, strategy):
    engine = proxy_for(make_proxy, raw_echo.address[1], strategy)
    sock, head, rest = raw_upgrade(engine.addresses[0])
    assert status_of(head) == 101
    payload = os.urandom(256 * 1024)
    sender = threading.Thread(target=lambda: (sock.sendall(payload), sock.shutdown(socket.SHUT_WR)))
    sender.start()
    echoed = recv_until_eof(sock, initial=rest)
    sender.join(10)
    assert echoed == payload  # everything came back, then the backend's EOF
    sock.close()
    wait_for(lambda: engine.stats["tunnels.closed"] == 1, what="tunnel closed")
    assert engine.live_tunnels() == []


def test_half_close_from_backend_with_data_in_flight(make_proxy, strategy):
    down = os.urandom(256 * 1024)
    up = os.urandom(256 * 1024)
    with HalfCloser(down) as backend:
        engine = proxy_for(make_proxy, backend.port, strategy)
        sock, head, rest = raw_upgrade(engine.addresses[0])
        assert status_of(head) == 101
        assert recv_until_eof(sock, initial=rest) == down  # backend's EOF reached us
        sock.sendall(up)  # our direction still flows
        sock.shutdown(socket.SHUT_WR)
        assert backend.done.wait(10)
        assert bytes(backend.got) == up
        sock.close()


def test_concurrent_tunnels_distinct_payloads(make_proxy, echo, strategy):
    engine = proxy_for(make_proxy, echo.address[1], strategy, extra="MaxTunnelThreads 300\n")
    n = 200
    errors = []
    barrier = threading.Barrier(n, timeout=30)

    def client(i):
        try:
            payload = f"client {i} ".encode() * (i + 1)
            with ws_connect(ws_url(engine, f"/c{i}"), open_timeout=20) as ws:
                barrier.wait()
                for _ in range(3):
                    ws.send(payload)
                    assert ws.recv(timeout=20) == payload
        except Exception as exc:  # noqa: BLE001 - collected and reported below
            errors.append(f"{i}: {exc!r}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(45)
    assert errors == []
    wait_for(lambda: engine.stats["tunnels.closed"] == n, timeout=10, what="all tunnels closed")


def test_fds_and_threads_back_to_baseline_after_500_tunnels(make_proxy, echo, strategy):
    engine = proxy_for(make_proxy, echo.address[1], strategy)
    baseline_fds = fd_table()
    baseline_threads = thread_count()
    addr = engine.addresses[0]
    for i in range(500):
        sock, head, rest = raw_upgrade(addr, f"/n{i}")
        assert status_of(head) == 101, head
        sock.close()
    wait_for(lambda: engine.stats["tunnels.closed"] == 500, timeout=20, what="500 tunnels closed")
    wait_fds_back(baseline_fds, timeout=10)
    # Sync pool threads park idle for a while: count busy ones, not parked ones. A pool
    # thread frees itself just after its tunnel is counted closed, so wait for that.
    wait_for(lambda: engine.pool.busy == 0, what="pool threads free")
    # The echo backend's connection threads end just after they close their sockets
    # (the fd check above): wait for them too rather than count them at once.
    wait_for(lambda: thread_count() <= baseline_threads + engine.pool.threads, what="the connections' threads gone")


def test_backend_refused_503(make_proxy):
    engine = make_proxy(f"ProxyPass / ws://127.0.0.1:{free_port_refused()}/ retry=0\n")
    sock, head, _ = raw_upgrade(engine.addresses[0])
    assert status_of(head) == 503
    sock.close()


def test_backend_closes_without_answer_502(make_proxy):
    backend = closing(read_first=False)
    try:
        engine = make_proxy(f"ProxyPass / ws://127.0.0.1:{backend.port}/\n")
        sock, head, _ = raw_upgrade(engine.addresses[0])
        assert status_of(head) == 502
        sock.close()
    finally:
        backend.close()


def test_backend_hangs_504_after_timeout(make_proxy):
    backend = silent()
    try:
        engine = make_proxy(f"ProxyPass / ws://127.0.0.1:{backend.port}/ timeout=0.3\n")
        t0 = time.monotonic()
        sock, head, body = raw_upgrade(engine.addresses[0])
        elapsed = time.monotonic() - t0
        assert status_of(head) == 504
        assert 0.25 <= elapsed < 5
        sock.close()
    finally:
        backend.close()


def test_backend_403_relayed_and_connection_stays_http(make_proxy):
    backend = Answering(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 7\r\nContent-Type: text/plain\r\n\r\nno way\n")
    try:
        engine = make_proxy(f"ProxyPass / ws://127.0.0.1:{backend.port}/\n")
        sock, head, rest = raw_upgrade(engine.addresses[0])
        assert status_of(head) == 403
        assert recv_exactly(sock, 7, initial=rest) == b"no way\n"
        # The connection is still HTTP: the next request is parsed and answered.
        sock.sendall(upgrade_request("/again"))
        head2, _ = read_head(sock)
        assert status_of(head2) == 403
        sock.close()
    finally:
        backend.close()


def test_wrong_accept_is_502_and_no_tunnel(make_proxy):
    backend = Answering(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: bm9wZQ==\r\n\r\nSECRET"
    )
    try:
        engine = make_proxy(f"ProxyPass / ws://127.0.0.1:{backend.port}/\n")
        sock, head, rest = raw_upgrade(engine.addresses[0])
        assert status_of(head) == 502
        assert b"Connection: close" not in head  # 502 keeps the connection, as httpd does
        sock.shutdown(socket.SHUT_WR)
        assert b"SECRET" not in rest + recv_until_eof(sock)
        sock.close()
        assert engine.stats["tunnels.open"] == 0
    finally:
        backend.close()


@pytest.mark.parametrize(
    "kw, status",
    [({"key": ""}, 400), ({"version": "8"}, 426)],
)
def test_bad_client_handshakes(make_proxy, echo, kw, status):
    engine = make_proxy(f"ProxyPass / ws://127.0.0.1:{echo.address[1]}/\n")
    request = upgrade_request("/", **kw)
    if not kw.get("key", True):
        request = request.replace(b"Sec-WebSocket-Key: \r\n", b"")
    with socket.create_connection(engine.addresses[0], timeout=5) as sock:
        sock.sendall(request)
        head, _ = read_head(sock)
    assert status_of(head) == status
    if status == 426:
        assert b"Sec-WebSocket-Version: 13" in head


def test_slow_reader_keeps_proxy_buffer_bounded(make_proxy, strategy):
    # A backend that answers the upgrade and then never reads.
    answer = switching_protocols()
    backend = Answering(answer)
    try:
        engine = proxy_for(make_proxy, backend.port, strategy)
        sock, head, _ = raw_upgrade(engine.addresses[0])
        assert status_of(head) == 101
        sock.setblocking(False)
        pushed, peak = 0, 0
        stalled_since = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                pushed += sock.send(b"q" * 65536)
                stalled_since = None
            except BlockingIOError:
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > 0.3:
                    break  # every buffer on the way is full
            peak = max([peak] + [p.buffered for p in engine.live_tunnels()])
        from tunnel.tunnels.pump import HIGH_WATER, SCRATCH_SIZE

        assert 0 < peak <= HIGH_WATER + SCRATCH_SIZE
        conn = backend.conns[0]
        conn.setblocking(True)
        conn.settimeout(10)
        received = 0
        sock.setblocking(True)
        while received < pushed:
            received += len(conn.recv(1 << 20))
        assert received == pushed
        sock.close()
    finally:
        backend.close()


def test_idle_timeout_closes_and_traffic_keeps_alive(make_proxy, raw_echo, strategy):
    engine = proxy_for(make_proxy, raw_echo.address[1], strategy, extra="ProxyWebsocketIdleTimeout 300ms\n")
    busy, head, _ = raw_upgrade(engine.addresses[0])
    assert status_of(head) == 101
    idle, head, _ = raw_upgrade(engine.addresses[0])
    assert status_of(head) == 101
    idle_opened = t0 = time.monotonic()
    idle_closed_at = None
    busy.settimeout(5)
    # Traffic every 100 ms keeps `busy` open for 0.9 s (three idle limits), while `idle`,
    # silent, is closed by its timer; the loop ends once both have happened (5 s at most).
    while idle_closed_at is None or time.monotonic() - t0 < 0.9:
        assert time.monotonic() - t0 < 5, "the idle tunnel was never closed"
        busy.sendall(b"tick")
        assert recv_exactly(busy, 4) == b"tick"
        if idle_closed_at is None and select.select([idle], [], [], 0)[0]:
            assert idle.recv(1) == b""  # an orderly close, no byte before it
            idle_closed_at = time.monotonic()
        time.sleep(0.1)  # pacing the traffic, not waiting for a condition
    lived = idle_closed_at - idle_opened
    assert 0.25 <= lived < 1.5, lived  # its own 300 ms limit (timer re-armed lazily), not the test's end
    busy.sendall(b"still")
    assert recv_exactly(busy, 5) == b"still"
    busy.close()
    idle.close()


def test_full_sync_pool_answers_503(make_proxy, raw_echo, caplog):
    engine = proxy_for(make_proxy, raw_echo.address[1], "sync", extra="MaxTunnelThreads 2\n")
    held = []
    for _ in range(2):
        sock, head, _ = raw_upgrade(engine.addresses[0])
        assert status_of(head) == 101
        held.append(sock)
    sock, head, _ = raw_upgrade(engine.addresses[0])
    assert status_of(head) == 503
    assert "MaxTunnelThreads 2" in caplog.text
    sock.close()
    for s in held:
        s.close()
    wait_for(lambda: engine.pool.busy == 0, what="pool drained")
    sock, head, _ = raw_upgrade(engine.addresses[0])
    assert status_of(head) == 101
    sock.close()


def test_write_without_progress_for_timeout_ends_the_tunnel(make_proxy, strategy, caplog):
    """R37 (tunnel line): a peer that takes no byte for `Timeout` seconds while bytes wait
    for it ends the tunnel, even when the other direction is busy or idle-timeout is off."""
    answer = switching_protocols()
    backend = Answering(answer)  # answers the upgrade, then never reads
    try:
        engine = proxy_for(make_proxy, backend.port, strategy, extra="Timeout 1\n")
        sock, head, _ = raw_upgrade(engine.addresses[0])
        assert status_of(head) == 101
        sock.setblocking(False)
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < 10 and not closed:
            try:
                sock.send(b"q" * 65536)
            except BlockingIOError:
                select.select([sock], [sock], [], 0.05)
            except OSError:
                closed = True  # reset by the proxy
            try:
                closed = closed or sock.recv(65536) == b""
            except BlockingIOError:
                pass
            except OSError:
                closed = True
        took = time.monotonic() - started
        assert closed, "the stalled tunnel was not ended"
        assert 1.0 <= took < 4.0, took
        # The count is the engine's last step for a closed tunnel, after its log line:
        # wait for the count, then the line is there (the other order races).
        wait_for(lambda: engine.stats["tunnels.closed"] == 1, what="the tunnel counted closed")
        assert "send timeout: the backend took no byte for 1s" in caplog.text
    finally:
        backend.close()


def test_both_legs_have_nodelay_and_keepalive(make_proxy, raw_echo, strategy):
    """R27/R37: TCP_NODELAY and keepalive on the client leg (inherited from the listener
    on Linux) and on the backend leg."""
    engine = proxy_for(make_proxy, raw_echo.address[1], strategy)
    sock, head, _ = raw_upgrade(engine.addresses[0], "/opts")
    try:
        assert status_of(head) == 101
        pumps = wait_for(engine.live_tunnels, what="the tunnel")
        for leg in (pumps[0].client, pumps[0].backend):
            raw = getattr(leg, "raw", leg)
            assert raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            assert raw.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            if hasattr(socket, "TCP_KEEPIDLE"):
                assert raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 60
            assert raw.gettimeout() == 0.0
    finally:
        sock.close()
