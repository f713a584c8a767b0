"""Which driver runs a tunnel: decided as httpd decides with its MPM (R35, R36).

``select_strategy`` returns `Strategy.ASYNC` iff the scope says ``ProxyWebsocketAsync On``
and the host can poll (the engine runs its own loop), else `Strategy.SYNC`. The engine
owns the drivers themselves (`tunnel.tunnels.async_driver.AsyncTunnel` and
`tunnel.tunnels.sync_driver.run_sync`).

``ProxyWebsocketAsyncDelay`` does not change the name: an async tunnel with a delay
starts on a sync thread and is handed to the loop when the delay passes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..config.model import Scope

__all__ = ["Strategy", "HostCapabilities", "select_strategy", "LOOP_HOST", "THREAD_HOST"]


class Strategy(enum.StrEnum):
    """How a tunnel is driven; the value is what logs and counters name."""

    #: A thread per tunnel from a bounded pool, blocking poll on its two sockets.
    SYNC = "sync"
    #: Both sockets on the engine's selectors loop, shared by every async tunnel.
    ASYNC = "async"


@dataclass(frozen=True)
class HostCapabilities:
    """What the host running the engine can do (httpd's AP_MPMQ_CAN_POLL).

    Attributes:
        can_poll: True when the engine runs its own loop (``tunnel serve``,
            ``Engine.serve_forever``/``running``); False when a host gives it only a
            thread and a socket (``Engine.handle`` with no loop running).
    """

    can_poll: bool


LOOP_HOST = HostCapabilities(can_poll=True)
THREAD_HOST = HostCapabilities(can_poll=False)


def select_strategy(scope: Scope, host: HostCapabilities) -> Strategy:
    """`Strategy.ASYNC` iff ``ProxyWebsocketAsync On`` and ``host.can_poll``, else SYNC."""
    return Strategy.ASYNC if scope.websocket_async and host.can_poll else Strategy.SYNC
