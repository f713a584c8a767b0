"""The parser's mod_remoteip directives (R130, R131), mixed into it.

* ``RemoteIPProxyProtocol On|Off`` (server, vhost): the PROXY protocol on the
  listeners the context's addresses name (the main server's: every listener); a
  later vhost's setting for the same address overrides an earlier one, as httpd.
* ``RemoteIPProxyProtocolExceptions net ...``: clients that may connect to such a
  listener without a header (one list for the whole server, as httpd keeps it).
* ``RemoteIPHeader``, ``RemoteIPProxiesHeader``, ``RemoteIPInternalProxy``,
  ``RemoteIPTrustedProxy`` and their ``...List FILE`` forms (server, vhost; a vhost
  that sets none takes the main server's).
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from .model import Network
from .values import BadDirective, Expected, on_off

__all__ = ["RemoteIPHooks", "ip_network"]


def ip_network(text: str) -> Network:
    """An address, a CIDR block or an address/netmask, as mod_remoteip takes them."""
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        pass
    raise Expected("an IP address or network (10.0.0.0/8, 2001:db8::/32; host names are not resolved)", text)


class RemoteIPHooks:
    """Parser hooks for mod_remoteip. Settings land in the server's or vhost's scope."""

    file: str
    line: int
    globals: dict[str, Any]

    def in_vhost(self) -> bool:
        raise NotImplementedError

    def _set(self, setting: str, value: Any) -> None:
        raise NotImplementedError

    def vhost_addresses(self) -> tuple[tuple[str, int], ...]:
        raise NotImplementedError

    def _remoteip_proxy_protocol(self, args: list[str]) -> None:
        if len(args) != 1:
            raise BadDirective("expected On or Off")
        # (addresses or None for every listener, on?) in configuration order: later wins.
        addresses = self.vhost_addresses() if self.in_vhost() else None
        self.globals.setdefault("proxy_protocol", []).append((addresses, on_off(args[0]), self.file, self.line))

    def _remoteip_proxy_protocol_exceptions(self, args: list[str]) -> None:
        if not args:
            raise BadDirective("expected one or more networks")
        self.globals.setdefault("proxy_protocol_exceptions", []).extend(ip_network(a) for a in args)

    def _remoteip_header(self, args: list[str]) -> None:
        if len(args) != 1:
            raise BadDirective("expected a header name (X-Forwarded-For)")
        self._set("remoteip_header", args[0])

    def _remoteip_proxies_header(self, args: list[str]) -> None:
        if len(args) != 1:
            raise BadDirective("expected a header name (X-Forwarded-By)")
        self._set("remoteip_proxies_header", args[0])

    def _proxies(self, networks: list[str], internal: bool) -> None:
        if not networks:
            raise BadDirective("expected one or more addresses or networks")
        current = self._scope_setting("remoteip_proxies")
        current.extend((ip_network(n), internal) for n in networks)

    def _scope_setting(self, key: str) -> list[Any]:
        raise NotImplementedError

    def _remoteip_internal_proxy(self, args: list[str]) -> None:
        self._proxies(args, True)

    def _remoteip_trusted_proxy(self, args: list[str]) -> None:
        self._proxies(args, False)

    def _proxy_list(self, args: list[str], internal: bool) -> None:
        if len(args) != 1:
            raise BadDirective("expected a file name")
        path = args[0]
        if not os.path.isabs(path):
            path = os.path.join(os.path.dirname(os.path.abspath(self.file)) if os.path.isfile(self.file) else os.getcwd(), path)
        try:
            with open(path, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise BadDirective(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
        words = [w for line in lines for w in line.partition("#")[0].split()]
        if not words:
            raise BadDirective(f"{path} lists no addresses")
        self._proxies(words, internal)

    def _remoteip_internal_proxy_list(self, args: list[str]) -> None:
        self._proxy_list(args, True)

    def _remoteip_trusted_proxy_list(self, args: list[str]) -> None:
        self._proxy_list(args, False)
