"""The client's real address: the PROXY protocol header at the start of a connection
(R130) and the RemoteIPHeader of each request (R131).

The PROXY header is read exactly, byte for byte of the header and nothing after it,
before TLS or HTTP see the connection: a v2 header is read in two exact reads (its
fixed part tells the length); a v1 line is peeked at and then read up to its CRLF, or
a byte at a time when the line arrives in pieces. So what follows (a ClientHello, a
request head) stays in the socket for the layer that reads it.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Generator
from typing import Optional

from ..config.model import Config, Scope
from ..io.loop import Wait
from ..io.streams import WOULD_BLOCK, InetAddress
from ..protocol.heads import RequestHead
from ..protocol.proxyproto import V1_MAX, ProxyHeader, ProxyHeaderError, needed, parse
from ..protocol.remoteip import client_from_header, in_networks
from .records import Exchange

__all__ = ["ProxyRefused", "accept_proxy_header", "apply_remoteip_header"]

log = logging.getLogger("tunnel.server")


class ProxyRefused(Exception):
    """The connection must close: no, a bad or an untrusted PROXY header (the text says)."""


def _recv(sock: socket.socket, size: int, deadline: float, flags: int = 0) -> Generator[Wait, None, bytes]:
    while True:
        try:
            return sock.recv(size, flags)
        except WOULD_BLOCK:
            yield Wait.read(sock, deadline)


def _read_header(sock: socket.socket, deadline: float) -> Generator[Wait, None, bytes]:
    data = b""
    while True:
        try:
            total = needed(data) if data else None
        except ProxyHeaderError as exc:
            raise ProxyRefused(str(exc)) from None
        if total is not None and len(data) >= total:
            return data
        if total is None and len(data) >= 8 and data.startswith(b"PROXY "):
            # v1: peek at what has come, and take it up to the CRLF (or all of it
            # when the CRLF has not come yet: none of it can be past the line).
            peeked = yield from _recv(sock, V1_MAX - len(data), deadline, socket.MSG_PEEK)
            if not peeked:
                raise ProxyRefused("the connection closed inside its PROXY header")
            end = (data + peeked).find(b"\r\n", max(0, len(data) - 1))
            want = end + 2 - len(data) if end >= 0 else len(peeked)
        elif total is None:
            want = (16 if data[:1] == b"\r" else 8) - len(data)  # enough to tell v1, v2 and v2's length
        else:
            want = total - len(data)
        chunk = yield from _recv(sock, want, deadline)
        if not chunk:
            raise ProxyRefused("the connection closed inside its PROXY header" if data else "no PROXY header")
        data += chunk


def accept_proxy_header(
    config: Config, sock: socket.socket, peer: InetAddress, deadline: float
) -> Generator[Wait, None, Optional[ProxyHeader]]:
    """Read the PROXY header a listener with ``RemoteIPProxyProtocol On`` expects.

    Returns:
        The header, or None for a client in ``RemoteIPProxyProtocolExceptions``.

    Raises:
        ProxyRefused: no header, a malformed or truncated one, one from a sender that is
            not a trusted proxy, or none before the deadline.
    """
    ip = str(peer[0])
    if config.proxy_protocol_exceptions and in_networks(ip, config.proxy_protocol_exceptions):
        return None
    proxies = config.scope.remoteip_proxies
    if proxies and not in_networks(ip, [net for net, _ in proxies]):
        raise ProxyRefused(f"{ip} is not a trusted proxy (RemoteIPInternalProxy/RemoteIPTrustedProxy)")
    try:
        raw = yield from _read_header(sock, deadline)
    except TimeoutError:
        raise ProxyRefused("no complete PROXY header before the deadline") from None
    except OSError as exc:
        raise ProxyRefused(f"connection failed while reading the PROXY header: {exc.strerror or exc}") from None
    try:
        return parse(raw)
    except ProxyHeaderError as exc:
        raise ProxyRefused(str(exc)) from None


def apply_remoteip_header(scope: Scope, head: RequestHead, ex: Exchange) -> None:
    """RemoteIPHeader: take the client from the header and rewrite it (R131)."""
    name = scope.remoteip_header
    value = head.get(name)
    if value is None:
        return
    found = client_from_header(value, str(ex.peer[0]), scope.remoteip_proxies)
    if found is None:
        return
    lower = name.lower()
    headers = [(k, v) for k, v in head.headers if k.lower() != lower]
    if found.remaining is not None:
        headers.append((name, found.remaining))
    if found.proxies:
        ex.notes["remoteip-proxy-ip-list"] = found.proxies
        if scope.remoteip_proxies_header:
            drop = scope.remoteip_proxies_header.lower()
            headers = [(k, v) for k, v in headers if k.lower() != drop]
            headers.append((scope.remoteip_proxies_header, found.proxies))
    head.headers = headers  # a new list: the head's lookups index it afresh
    if ex.connection_peer is None:
        ex.connection_peer = ex.peer
    ex.peer = (found.ip, 0)  # the port is not known (httpd sets 0)
