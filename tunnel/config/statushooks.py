"""The parser's hooks for the handlers tunnel serves itself (SetHandler's names,
ExtendedStatus, TunnelControlSocket), mixed into it (R110, R111, R117)."""

from __future__ import annotations

import os
from typing import Any

from .values import BadDirective, Expected, on_off

__all__ = ["LOCAL_HANDLERS", "StatusHooks", "handler_name"]

#: The handlers tunnel serves itself, by their SetHandler name. tunnel.proxy.handlers
#: holds the function of each (a test checks both lists agree).
LOCAL_HANDLERS = ("server-status", "balancer-manager", "metrics")


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


class StatusHooks:
    """ExtendedStatus and TunnelControlSocket: server-wide values (the server context)."""

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
