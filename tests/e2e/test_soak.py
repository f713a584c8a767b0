"""Soak: many tunnels with random payloads, random half-closes and aborts, both strategies.

Every intact tunnel's echo must match its payload byte for byte (sha256), and afterwards
the process's fds and busy threads are back to their baseline. The short run here is
part of `make test`; `make soak` scales it (SOAK_TUNNELS, SOAK_SECONDS).
"""

from __future__ import annotations

import hashlib
import os
import random
import selectors
import socket
import struct
import time

import pytest

from tests.support.clients import raw_upgrade, status_of
from tests.support.resources import fd_table, wait_fds_back
from tests.support.waiting import wait_for

TUNNELS = int(os.environ.get("SOAK_TUNNELS", "150"))
SECONDS = float(os.environ.get("SOAK_SECONDS", "20"))
BATCH = 50  # tunnels open at once (4 fds each in this process)

pytestmark = pytest.mark.timeout(SECONDS * 3 + 30)


class Conn:
    def __init__(self, sock: socket.socket, rest: bytes, payload: bytes, abort_at: int | None) -> None:
        self.sock = sock
        self.payload = payload
        self.sent = 0
        self.got = hashlib.sha256(rest)
        self.got_len = len(rest)
        self.abort_at = abort_at  # abort (RST) after this many bytes sent, or None
        self.shut = False
        self.done = False


def run_batch(addr, rng: random.Random, n: int, deadline: float) -> tuple[int, int]:
    """n tunnels at once; returns (intact, aborted)."""
    sel = selectors.DefaultSelector()
    conns = []
    for i in range(n):
        sock, head, rest = raw_upgrade(addr, f"/soak/{i}")
        assert status_of(head) == 101, head
        sock.setblocking(False)
        payload = rng.randbytes(rng.choice([0, 1, 100, 4096, 65536, 300_000]) + rng.randrange(100))
        abort_at = rng.randrange(len(payload) + 1) if rng.random() < 0.15 else None
        c = Conn(sock, rest, payload, abort_at)
        conns.append(c)
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
    intact = aborted = 0
    live = n
    while live:
        assert time.monotonic() < deadline, "soak batch did not finish in time"
        for key, mask in sel.select(0.5):
            c: Conn = key.data
            if c.done:
                continue
            if mask & selectors.EVENT_WRITE and not c.shut:
                if c.abort_at is not None and c.sent >= c.abort_at:
                    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sel.unregister(c.sock)
                    c.sock.close()  # RST
                    c.done = True
                    aborted += 1
                    live -= 1
                    continue
                end = len(c.payload) if c.abort_at is None else max(c.abort_at, c.sent + 1)
                try:
                    c.sent += c.sock.send(c.payload[c.sent : min(end, c.sent + 65536)])
                except BlockingIOError:
                    pass
                if c.sent >= len(c.payload) and c.abort_at is None:
                    c.sock.shutdown(socket.SHUT_WR)  # half-close: the echo must still come back
                    c.shut = True
                    sel.modify(c.sock, selectors.EVENT_READ, c)
            if mask & selectors.EVENT_READ:
                try:
                    data = c.sock.recv(1 << 18)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    data = b""
                if data:
                    c.got.update(data)
                    c.got_len += len(data)
                    continue
                assert c.abort_at is None or c.shut, "a tunnel ended before its client did"
                assert c.got_len == len(c.payload), (c.got_len, len(c.payload))
                assert c.got.digest() == hashlib.sha256(c.payload).digest()
                sel.unregister(c.sock)
                c.sock.close()
                c.done = True
                intact += 1
                live -= 1
    sel.close()
    return intact, aborted


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_soak(make_proxy, raw_echo, mode):
    engine = make_proxy(f"ProxyWebsocketAsync {'On' if mode == 'async' else 'Off'}\nProxyPass / ws://127.0.0.1:{raw_echo.address[1]}/\n")
    addr = engine.addresses[0]
    baseline_fds = fd_table()
    rng = random.Random(f"soak-{mode}")
    deadline = time.monotonic() + SECONDS * 2 + 20
    done = intact = aborted = 0
    started = time.monotonic()
    while done < TUNNELS and time.monotonic() - started < SECONDS:
        n = min(BATCH, TUNNELS - done)
        i, a = run_batch(addr, rng, n, deadline)
        intact += i
        aborted += a
        done += n
    assert intact + aborted == done and intact > 0
    wait_for(lambda: engine.stats["tunnels.closed"] == done, timeout=20, what=f"{done} tunnels closed")
    wait_fds_back(baseline_fds, timeout=10)
    assert engine.live_tunnels() == []
    # A sync pool thread frees itself just after its tunnel is counted closed.
    wait_for(lambda: engine.pool.busy == 0, what="pool threads free")
    print(f"soak {mode}: {done} tunnels, {intact} intact, {aborted} aborted, {time.monotonic() - started:.1f}s")
