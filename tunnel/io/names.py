"""`<VirtualHost name:port>` addresses looked up at start-up, as httpd does (R90).

httpd resolves a vhost's host name once, when it reads the configuration, and matches
the vhost by the addresses found (vhost.c, get_addresses). A name that does not resolve
gets a warning and the vhost never matches by it. ``*``, ``_default_`` and IP literals
are kept as they are.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from collections.abc import Callable, Sequence
from typing import Any

from ..config.model import Config, VirtualHost

__all__ = ["resolve_vhost_names", "is_literal"]

_KEEP = ("*", "_default_", "")

#: (host, port) -> getaddrinfo's answer; injectable for tests of the unresolvable case.
Lookup = Callable[[str, int], Sequence[tuple[Any, ...]]]


def is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _lookup(host: str, port: int) -> Sequence[tuple[Any, ...]]:
    return socket.getaddrinfo(host, port or None, type=socket.SOCK_STREAM)


def resolve_vhost_names(config: Config, lookup: Lookup = _lookup) -> tuple[Config, list[str]]:
    """``config`` with each vhost host name replaced by its addresses.

    Returns:
        The configuration (the same object when no vhost names a host), and one
        "file:line: text" warning per name that does not resolve.
    """
    warnings: list[str] = []
    changed = False
    vhosts: list[VirtualHost] = []
    for vhost in config.vhosts:
        addresses: list[tuple[str, int]] = []
        for host, port in vhost.addresses:
            if host in _KEEP or is_literal(host):
                addresses.append((host, port))
                continue
            changed = True
            try:
                infos = lookup(host, port)
            except (OSError, UnicodeError) as exc:
                reason = getattr(exc, "strerror", None) or str(exc)
                warnings.append(
                    f"{vhost.file}:{vhost.line}: <VirtualHost {host}:{port or '*'}>: {host} does not resolve "
                    f"({reason}); this address never matches (httpd warns and ignores it too)"
                )
                continue
            for info in infos:
                ip = str(info[4][0]).split("%", 1)[0]
                if (ip, port) not in addresses:
                    addresses.append((ip, port))
        vhosts.append(dataclasses.replace(vhost, addresses=tuple(addresses)))
    if not changed:
        return config, warnings
    return config.replace(vhosts=tuple(vhosts), warnings=config.warnings + tuple(warnings)), warnings
