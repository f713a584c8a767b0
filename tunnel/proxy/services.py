"""`Services`: what a client connection needs from the engine, and nothing more.

The session and failover code talk to the engine only through this protocol (asyncio's
transport/protocol split is the model), so the public `Engine` carries no hooks for
them and a test can serve a connection with any object that provides these.
"""

from __future__ import annotations

import ssl
from typing import Any, Optional, Protocol

from ..config.model import Config, Listener, ProxyRule, Scope, Target
from ..io.streams import Endpoint
from ..protocol.balancer import BalancerState
from ..tunnels.pump import Pump
from ..tunnels.strategy import Strategy
from .control import Cluster
from .probes import Probes
from .records import Exchange

__all__ = ["Services"]


class Services(Protocol):
    """The engine as a client connection sees it."""

    @property
    def config(self) -> Config:
        """The configuration the connection is served with."""
        ...

    @property
    def server_name(self) -> str:
        """The name for X-Forwarded-Server when no ServerName is set."""
        ...

    def server_ssl(self, listener: Listener) -> ssl.SSLContext:
        """The server-side TLS context of a TLS listener (SNI picks a vhost's)."""
        ...

    def backend_ssl(self, scope: Scope) -> Optional[ssl.SSLContext]:
        """The client-side TLS context for wss/https backends, None without SSLProxyEngine."""
        ...

    def strategy_for(self, scope: Scope) -> Strategy:
        """How a tunnel in ``scope`` is driven (ProxyWebsocketAsync and the host)."""
        ...

    def needs_thread(self, scope: Scope, strategy: Strategy) -> bool:
        """Whether such a tunnel needs a pool thread (reserved before the backend)."""
        ...

    def reserve_thread(self, ex: Exchange) -> None:
        """Reserve a sync pool thread. Raises ServiceUnavailable when the pool is full."""
        ...

    def release_thread(self) -> None:
        """Give back a thread reserved for a tunnel that did not start."""
        ...

    def balancer(self, name: str) -> BalancerState:
        """The runtime state of ``balancer://name``."""
        ...

    def check_worker(self, target: Target) -> None:
        """Raise ServiceUnavailable while the worker is in error state (R18)."""
        ...

    def worker_failed(self, target: Target, rule: ProxyRule) -> None:
        """A connect to the worker failed: error state for the rule's ``retry=``."""
        ...

    def new_pump(
        self,
        client: Endpoint,
        backend: Endpoint,
        *,
        to_backend: bytes,
        to_client: bytes,
        websocket: bool = False,
        close_watch: bool = False,
    ) -> Pump:
        """The pump for a tunnel whose 101 went out (with the shared buffer budget);
        ``websocket``: its frames are followed (`tunnel.protocol.frames`);
        ``close_watch``: a websocket tunnel whose frames are not followed (R98)."""
        ...

    def log_exchange(self, ex: Exchange) -> None:
        """Write the access-log entry of a finished request or tunnel."""
        ...

    @property
    def kept_headers(self) -> tuple[frozenset[str], frozenset[str]]:
        """The request and response header names (lower case) an open tunnel keeps:
        what the access-log formats read, and the 101's Upgrade."""
        ...

    def snapshot(self) -> dict[str, Any]:
        """This process's figures, live tunnels and balancers (`tunnel.proxy.stats`)."""
        ...

    def close_tunnel(self, ident: str, code: int, reason: str) -> str:
        """Close frame ``code``/``reason`` to both sides of the tunnel ``ident`` open in
        this process (``tunnel ctl close``). Raises `CloseRefused` with the reason."""
        ...

    @property
    def cluster(self) -> Cluster:
        """Where this process's control sockets and its sibling workers' are."""
        ...

    @property
    def probes(self) -> Probes:
        """Readiness (drained, stopping) and liveness (the loop's watchdog) for the
        ready and live handlers and ``tunnel ctl drain``."""
        ...

    def nonce(self, balancer: str) -> str:
        """balancer-manager's nonce of ``balancer://balancer`` (the same in every worker)."""
        ...
