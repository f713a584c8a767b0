"""The tunnel strategies the behaviour tests run under (the ``strategy`` fixture)."""

from __future__ import annotations

STRATEGY_CONFIGS = {
    "sync": "ProxyWebsocketAsync Off\n",
    "async": "ProxyWebsocketAsync On\n",
    "async-delay": "ProxyWebsocketAsync On\nProxyWebsocketAsyncDelay 30ms\n",
}
