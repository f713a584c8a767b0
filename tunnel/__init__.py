"""tunnel: a WebSocket reverse proxy and tunnel engine, httpd's mod_proxy_wstunnel in Python.

A connection's life, one module a line:

    server.py       accepts on the listeners (a batch per wake-up) and runs each client
                    connection as a generator task on loop.py
    handshake.py    sans-IO: request head (h11 + strict checks), upgrade checks (wsproto),
                    backend request bytes, the backend's 101 and its Accept check
    routing.py      ProxyPass / ProxyPassMatch matching, upgrade=, fallback (pure)
    balancer.py     balancer:// member choice, error states, stickiness (pure)
    backend.py      non-blocking connect (ws/wss/http/https/unix), TLS, deadlines
    tls.py          TLSStream: TLS via memory BIOs, a half-close that loses nothing
    httpproxy.py    plain HTTP forwarding and relayed non-101 answers, streamed with h11
    strategies.py   sync or async, as httpd decides with its MPM
    relay.py        the pump: bytes both ways, backpressure, half-close (no waiting)
    sync_tunnel.py  a pool thread polls a tunnel's two sockets and drives the pump
    async_tunnel.py the tunnel's sockets on the loop, driving the same pump
    engine.py       ties it together: Engine(config).serve_forever() / handle(sock)
    config.py, accesslog.py, echo.py, cli.py: configuration, logs, demo backend, launcher
"""

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .config import Config
from .errors import ConfigError, TunnelError
from .strategies import HostCapabilities

# The pump module is `tunnel.relay` (tunnel/relay.py); the public name `tunnel.relay` is the
# function.  Import the module first so that the function, bound after it, is what the
# package attribute keeps (a submodule import sets the attribute only on its first load).
from . import relay as _relay_module  # noqa: F401  (tunnel.relay.Pump stays importable)
from .tunnel_api import relay

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine


def __getattr__(name: str) -> Any:
    # Engine pulls in the whole I/O stack; import them on first use so that
    # `import tunnel.config` (configtest, the pure modules' tests) stays light.
    if name == "Engine":
        from .engine import Engine

        return Engine
    raise AttributeError(f"module 'tunnel' has no attribute {name!r}")

__all__ = ["Engine", "Config", "ConfigError", "TunnelError", "HostCapabilities", "relay", "__version__"]
