"""mod_remoteip's request step, sans-IO (R131): the client behind trusted proxies, from
``RemoteIPHeader`` (X-Forwarded-For), and the header rewritten as httpd leaves it.

The header's addresses are taken from the right while the address they came from is a
trusted proxy: with no ``RemoteIPInternalProxy``/``RemoteIPTrustedProxy`` lines every
sender is a trusted external proxy; with them, only the listed ones are, and a sender
outside the lists stops the walk. An external (trusted, not internal) proxy may not
present a private or otherwise non-global address (RFC 1918, loopback, link-local;
for IPv6 anything outside 2000::/3): the walk stops there too. Addresses taken leave the
header (it is removed when none remain); the external proxies passed are recorded in
``RemoteIPProxiesHeader`` when one is named.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional, Union

from ..config.model import Network

__all__ = ["RemoteClient", "client_from_header", "in_networks"]

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

_PRIVATE_V4 = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16")
)
_GLOBAL_V6 = ipaddress.ip_network("2000::/3")


@dataclass(frozen=True)
class RemoteClient:
    """The outcome of the walk.

    Attributes:
        ip: the client's address.
        remaining: what is left of the header (None: the header is removed).
        proxies: the external proxies passed, comma-separated ("" for none).
    """

    ip: str
    remaining: Optional[str]
    proxies: str


def _address(text: str) -> Optional[IPAddress]:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # taken as IPv4, as httpd maps it
    return ip


def in_networks(ip: str, networks: Sequence[Network]) -> bool:
    address = _address(ip)
    return address is not None and any(address in net for net in networks)


def _not_global(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv4Address):
        return any(ip in net for net in _PRIVATE_V4)
    return ip not in _GLOBAL_V6


def client_from_header(
    value: str, peer: str, proxies: Sequence[tuple[Network, bool]]
) -> Optional[RemoteClient]:
    """Walk ``value`` (the RemoteIPHeader) from the right, starting at ``peer``.

    Returns:
        The new client, or None when the header changes nothing.
    """
    internal = bool(proxies)  # with lists, a listed proxy is internal unless trusted-only
    current = peer
    remote: Optional[str] = value
    taken = False
    passed: list[str] = []
    while remote is not None:
        if proxies:
            sender = _address(current)
            match = next((kind for net, kind in proxies if sender is not None and sender in net), None)
            if match is None:
                break  # the sender is not a proxy we trust
            if internal:
                internal = match  # an internal proxy may present an external one, not the reverse
        comma = remote.rfind(",")
        part, rest = (remote[comma + 1 :], remote[:comma]) if comma >= 0 else (remote, None)
        address = _address(part.strip(" "))
        if address is None or (not internal and _not_global(address)):
            break  # unparsable, private or nonsensical: left in the header
        if not internal:
            passed.append(current)
        current = str(address)
        remote = rest
        taken = True
    if not taken:
        return None
    return RemoteClient(current, remote, ", ".join(passed))
