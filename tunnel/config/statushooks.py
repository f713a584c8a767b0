"""The parser's hooks for the handlers tunnel serves itself (SetHandler's names,
ExtendedStatus, TunnelControlSocket, TunnelLoopLagLimit), mixed into it (R110, R111,
R117, R151)."""

from __future__ import annotations

import os
from typing import Any

from .values import BadDirective, Expected, on_off

__all__ = ["LOCAL_HANDLERS", "StatusHooks", "handler_name"]

#: The handlers tunnel serves itself, by their SetHandler name. tunnel.proxy.handlers
#: holds the function of each (a test checks both lists agree).
LOCAL_HANDLERS = ("server-status", "balancer-manager", "metrics", "ready", "live")


def handler_name(value: str) -> str:
    """A SetHandler argument: one of `LOCAL_HANDLERS` (any case, as httpd lower-cases
    it), or ``none`` ("", no handler: a `<Location>` inside another one's path turns it
    off)."""
    name = value.lower()
    if name == "none":
        return ""
    if name in LOCAL_HANDLERS:
        return name
    if name.startswith("proxy:"):
        raise BadDirective(f'"{value}": proxying through SetHandler is not supported; use ProxyPass')
    raise Expected(f"one of {', '.join(LOCAL_HANDLERS)} or none", value)


#: TunnelLoopLagLimit's bounds, in seconds.
MIN_LAG_LIMIT = 0.1
MAX_LAG_LIMIT = 3600.0


class StatusHooks:
    """ExtendedStatus, TunnelControlSocket, TunnelLoopLagLimit: server-wide values (the
    server context)."""

    globals: dict[str, Any]

    def _extended_status(self, args: list[str]) -> None:
        if len(args) != 1:
            raise BadDirective(f"expected On or Off, got {len(args)} arguments")
        self.globals["extended_status"] = on_off(args[0])

    def _tunnel_control_socket(self, args: list[str]) -> None:
        if len(args) != 1:
            raise BadDirective(f"expected a socket path or none, got {len(args)} arguments")
        path = args[0]
        if path.lower() == "none":
            self.globals["control_socket"] = ""  # no control socket
            return
        if "\0" in path or len(os.fsencode(path)) > 100:
            raise Expected("a unix socket path shorter than 100 bytes", path)
        self.globals["control_socket"] = path

    def _tunnel_loop_lag_limit(self, args: list[str]) -> None:
        """``TunnelLoopLagLimit seconds``: the loop lag above which ``SetHandler live``
        answers 503 (R151); decimals allowed."""
        if len(args) != 1:
            raise BadDirective(f"expected a number of seconds, got {len(args)} arguments")
        try:
            seconds = float(args[0])
        except ValueError:
            raise Expected(f"a number of seconds from {MIN_LAG_LIMIT:g} to {MAX_LAG_LIMIT:g}", args[0]) from None
        if not MIN_LAG_LIMIT <= seconds <= MAX_LAG_LIMIT:  # also refuses nan and inf
            raise Expected(f"a number of seconds from {MIN_LAG_LIMIT:g} to {MAX_LAG_LIMIT:g}", args[0])
        self.globals["loop_lag_limit"] = seconds
