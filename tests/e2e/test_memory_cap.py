"""TunnelBufferLimit: a global cap on bytes buffered by all tunnels .

Twenty tunnels whose clients stop reading while their backends flood: the proxy's
buffered bytes stay near the cap (not 20 x the per-tunnel high-water mark), then the
clients read and every byte the backends sent arrives.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.support.backends import Flood
from tests.support.clients import read_head, status_of, upgrade_request
from tests.support.waiting import wait_for
from tunnel.tunnels.pump import CAPPED_CHUNK, HIGH_WATER, SCRATCH_SIZE

pytestmark = pytest.mark.timeout(60)

TUNNELS = 20
CAP = 1 << 20


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_global_cap_bounds_buffered_bytes_and_loses_nothing(make_proxy, mode):
    flood = Flood()
    try:
        engine = make_proxy(
            f"TunnelBufferLimit {CAP}\nProxyWebsocketAsync {'On' if mode == 'async' else 'Off'}\n"
            f"ProxyPass / ws://127.0.0.1:{flood.port}/\n"
        )
        clients = []
        for i in range(TUNNELS):
            sock = socket.create_connection(engine.addresses[0], timeout=10)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.sendall(upgrade_request(f"/f{i}"))
            head, rest = read_head(sock)
            assert status_of(head) == 101
            clients.append((sock, len(rest)))
        # Nobody reads: wait until the backends' totals stop growing, watching the peak.
        peak, last_total, still_since = 0, -1, time.monotonic()
        deadline = time.monotonic() + 20
        while time.monotonic() - still_since < 0.5:
            assert time.monotonic() < deadline, "the flood never stalled"
            peak = max(peak, sum(p.buffered for p in engine.live_tunnels()))
            total = sum(flood.sent)
            if total != last_total:
                last_total, still_since = total, time.monotonic()
            time.sleep(0.01)  # sampling the proxy's buffers, not waiting for a condition
        bound = CAP + SCRATCH_SIZE + TUNNELS * CAPPED_CHUNK
        assert 0 < peak <= bound, (peak, bound)
        assert peak < TUNNELS * HIGH_WATER / 2  # far below what 20 uncapped tunnels hold
        # Now the clients read: everything sent arrives, nothing is lost.
        flood.stop.set()
        for idx, (sock, got) in enumerate(clients):
            sock.settimeout(15)
            while True:
                data = sock.recv(1 << 20)
                if not data:
                    break
                got += len(data)
            clients[idx] = (sock, got)
        wait_for(lambda: len(flood.sent) == TUNNELS, what="all backends seen")
        assert sorted(g for _, g in clients) == sorted(flood.sent)
        for sock, _ in clients:
            sock.close()
        wait_for(lambda: engine.stats["tunnels.closed"] == TUNNELS, timeout=15, what="tunnels closed")
        assert engine.budget is not None and engine.budget.used == 0  # every byte accounted back
    finally:
        flood.close()
