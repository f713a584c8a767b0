"""tunnel: a WebSocket reverse proxy and tunnel engine, httpd's mod_proxy_wstunnel in Python.

A connection's life, one module a line (imports only go down this list's layers):

    io/listeners.py         accepts on the listeners, a batch per wake-up
    proxy/session.py        one client connection as a generator task on io/loop.py
    protocol/request.py     sans-IO: request heads (fast path, or h11 with strict checks)
    protocol/rewrite.py     mod_rewrite's rules, before routing ([P], [R], [F], [G])
    protocol/routing.py     ProxyPass / ProxyPassMatch matching, upgrade=, fallback
    protocol/access.py      Require: granted or 403, before any backend is contacted
    protocol/upgrade.py     upgrade checks (wsproto's rules, the key)
    proxy/failover.py       a plain worker (health: protocol/health.py) or a balancer
                            member (protocol/balancer.py, protocol/lbmethods.py)
                            with failover
    io/connect.py           name lookup off the loop, non-blocking connect, TLS (io/tls.py)
    protocol/backend.py     the forwarded request, the backend's 101 and its Accept check
    proxy/forward.py        plain HTTP forwarding and relayed non-101 answers, with h11
    proxy/heads.py          ProxyVia, LimitRequestBody's declared length, and the
                            answer's maps (protocol/reverse.py: ProxyPassReverse and
                            the cookie maps; protocol/via.py) and kept Upgrade
    tunnels/strategy.py     sync or async, as httpd decides with its MPM
    tunnels/pump.py         bytes both ways, backpressure, half-close (never waits);
                            protocol/frames.py follows a WebSocket tunnel's frames
    tunnels/sync_driver.py  a pool thread polls a tunnel's two sockets and drives the pump
    tunnels/async_driver.py the tunnel's sockets on the loop, driving the same pump
    engine.py               owns loop, pool, balancers, logs: Engine(config).serve_forever()

Around them: errors.py and accesslog.py (the bottom layer), config/ (model, lexer,
values, directives, parser, access, loghooks, rewrite, build, checks, scopes),
protocol/heads.py and responses.py, io/addresses.py, io/streams.py and io/steps.py, proxy/records.py and services.py, configtest.py, cli/ (main, demo,
workers), echo.py (the demo backend, outside the engine's imports). docs/architecture.md
draws the layers.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from ._version import __version__
from .config import Config
from .errors import ClientGone, ConfigError, TunnelError
from .tunnels.api import relay_sockets
from .tunnels.strategy import HostCapabilities, Strategy

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine

    relay = relay_sockets  # deprecated: what __getattr__ gives for "relay"


def __getattr__(name: str) -> object:
    # Engine pulls in the whole I/O stack: imported on first use, so that
    # `import tunnel.config` (configtest, the pure modules' tests) stays light.
    if name == "Engine":
        from .engine import Engine

        return Engine
    if name == "relay":
        warnings.warn(
            "tunnel.relay is deprecated; use tunnel.relay_sockets (same arguments)",
            DeprecationWarning,
            stacklevel=2,
        )
        return relay_sockets
    raise AttributeError(f"module 'tunnel' has no attribute {name!r}")


__all__ = [
    "Engine",
    "Config",
    "ConfigError",
    "TunnelError",
    "ClientGone",
    "HostCapabilities",
    "Strategy",
    "relay_sockets",
    "__version__",
]
