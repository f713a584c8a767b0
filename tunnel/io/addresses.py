"""Socket address types, shared by the streams and the TLS leg."""

from __future__ import annotations

from typing import Union

__all__ = ["InetAddress", "PeerAddress"]

#: An IP socket address as ``getpeername``/``getsockname`` give it: (host, port) for
#: IPv4, (host, port, flowinfo, scope_id) for IPv6.
InetAddress = Union[tuple[str, int], tuple[str, int, int, int]]
#: A peer's address: an IP address, or a unix socket's path (often "").
PeerAddress = Union[InetAddress, str]
