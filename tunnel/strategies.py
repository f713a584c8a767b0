"""Which driver runs a tunnel: decided as httpd decides with its MPM (R35, R36).

``select_strategy`` returns ``"async"`` iff the scope says ``ProxyWebsocketAsync On`` and
the host can poll (the engine runs its own loop), else ``"sync"``. ``STRATEGIES`` maps
each name to a short description of its driver; the engine owns the drivers themselves
(``async_tunnel.AsyncTunnel`` and ``sync_tunnel.run_sync``).

``ProxyWebsocketAsyncDelay`` does not change the name: an async tunnel with a delay
starts on a sync thread and is handed to the loop when the delay passes.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import Scope

__all__ = ["HostCapabilities", "STRATEGIES", "select_strategy", "LOOP_HOST", "THREAD_HOST"]

STRATEGIES: dict[str, str] = {
    "sync": "a thread per tunnel from a bounded pool, blocking poll on its two sockets",
    "async": "both sockets on the engine's selectors loop, shared by every async tunnel",
}


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


def select_strategy(scope: Scope, host: HostCapabilities) -> str:
    """``"async"`` iff ``ProxyWebsocketAsync On`` and ``host.can_poll``, else ``"sync"``."""
    return "async" if scope.websocket_async and host.can_poll else "sync"
