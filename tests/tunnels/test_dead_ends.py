"""Ends the pump has nothing left to do with: a client that half-closes and then resets
must not keep a driver busy, nor keep the idle timer from firing (R30, R56)."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from tests.support.backends import Answering, switching_protocols
from tests.support.clients import raw_upgrade, status_of
from tests.support.strategies import STRATEGY_CONFIGS
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("strategy", ["sync", "async"])
def test_half_closed_then_reset_client_is_ended_by_the_idle_timer(make_proxy, strategy):
    backend = Answering(switching_protocols())  # answers, then holds: sends nothing more
    try:
        engine = make_proxy(
            STRATEGY_CONFIGS[strategy]
            + "ProxyWebsocketIdleTimeout 300ms\n"
            + f"ProxyPass / ws://127.0.0.1:{backend.port}/\n"
        )
        sock, head, _ = raw_upgrade(engine.addresses[0])
        assert status_of(head) == 101
        sock.shutdown(socket.SHUT_WR)  # the proxy reads EOF from the client ...
        wait_for(lambda: any(p.c2b.state.name != "OPEN" for p in engine.live_tunnels()), what="the client's EOF read")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        started = time.monotonic()
        sock.close()  # ... and then a reset on a socket it no longer reads
        # A driver that kept polling the reset socket saw an event on every turn, so
        # the idle timer never fired and the tunnel lived on.
        wait_for(lambda: engine.stats["tunnels.closed"] == 1, timeout=10, what="the idle timer to end the tunnel")
        assert time.monotonic() - started < 5
        assert engine.live_tunnels() == []
    finally:
        backend.close()
