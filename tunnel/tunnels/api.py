"""``relay_sockets(a, b)``: move bytes between two connected sockets, with the engine's pump."""

from __future__ import annotations

import socket
from typing import Optional

from .pump import Pump
from .sync_driver import run_sync

__all__ = ["relay_sockets"]


def relay_sockets(a: socket.socket, b: socket.socket, *, idle_timeout: Optional[float] = None) -> tuple[int, int]:
    """Relay bytes between two connected sockets until both directions end.

    Blocks the calling thread (the sync driver). Half-close is honoured: EOF from one
    side becomes ``shutdown(SHUT_WR)`` on the other once its bytes are delivered, and the
    other direction keeps flowing. Both sockets are closed on return.

    Args:
        a, b: connected stream sockets (made non-blocking here).
        idle_timeout: seconds with no byte moving either way before both are closed.

    Returns:
        (bytes from a to b, bytes from b to a).
    """
    a.setblocking(False)
    b.setblocking(False)
    pump = Pump(a, b)
    try:
        run_sync(pump, idle_timeout=idle_timeout or 0.0)
    finally:
        pump.abort("closed")
        pump.close()
    return pump.c2b.count, pump.b2c.count
