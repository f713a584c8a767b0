"""Connecting to backends: name lookup off the loop, non-blocking connect, TLS.

Every function here that waits is a generator task step (see ``loop.Wait``): it yields
``Wait`` objects and gets ``TimeoutError`` thrown in at its deadline, so the same code runs
on the engine's loop and, through ``loop.run_blocking``, in a host's thread.

Failure statuses (docs/httpd-behaviour.md, R18): DNS failure 500, refused or timed out
connect 503, TLS handshake failure 502.
"""

from __future__ import annotations

import concurrent.futures
import errno
import functools
import ipaddress
import os
import socket
import ssl
import threading
import time
from collections.abc import Generator, Sequence
from typing import Optional, Union

from ..config.model import Target
from ..errors import BackendDNSError, BadGateway, GatewayTimeout, ServiceUnavailable
from .contexts import client_context, server_context
from .loop import Wait
from .steps import tls_handshake
from .streams import Endpoint, tune
from .tls import TLSStream

__all__ = ["connect", "client_context", "server_context", "HTTPD_DEFAULT_VERIFY"]

#: Added to a certificate-verification failure's log line (R93).
HTTPD_DEFAULT_VERIFY = (
    "tunnel verifies backend certificates by default, httpd does not: to do as httpd, set "
    "SSLProxyVerify none and SSLProxyCheckPeerName off (or give SSLProxyCACertificateFile the CA)"
)

#: Sockets made non-blocking at creation where the platform can.
_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)

#: One address to try, as ``getaddrinfo`` gives it: (family, type, proto, canonname,
#: address); the address is a path for a unix socket.
AddrInfo = tuple[int, int, int, str, Union[str, tuple[str, int], tuple[str, int, int, int], tuple[int, bytes]]]


@functools.lru_cache(maxsize=256)
def _literal(host: str, port: int) -> Optional[AddrInfo]:
    """The address of an IP-literal backend host, or None for a name (cached: the
    configured backends are few, and parsing the literal per connect costs more than
    the rest of the connect's Python)."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    return (family, socket.SOCK_STREAM, 0, "", (str(ip), port))


#: Successful lookups of backend host names are kept this long (seconds). httpd keeps a
#: worker's address for the worker's life; a short TTL follows DNS changes.
DNS_TTL = 30.0
#: Lookups run here, never on the loop thread: a slow resolver must not stall tunnels.
_RESOLVER: Optional[concurrent.futures.ThreadPoolExecutor] = None
_RESOLVER_LOCK = threading.Lock()
_dns_cache: dict[tuple[str, int], tuple[float, Sequence[AddrInfo]]] = {}


def _resolver() -> concurrent.futures.ThreadPoolExecutor:
    global _RESOLVER
    with _RESOLVER_LOCK:
        if _RESOLVER is None:
            _RESOLVER = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="tunnel-dns")
        return _RESOLVER


def _addresses(target: Target, deadline: float) -> Generator[Wait, None, Sequence[AddrInfo]]:
    """The addresses to try for ``target``: a socket path, an IP literal, or a name looked
    up in a resolver thread (cached for `DNS_TTL`) while the task waits.

    Raises:
        BackendDNSError: the name does not resolve, or not before ``deadline`` (500).
    """
    if target.unix_path:
        return [(socket.AF_UNIX, socket.SOCK_STREAM, 0, "", target.unix_path)]
    literal = _literal(target.host, target.port)
    if literal is not None:
        return [literal]
    key = (target.host, target.port)
    cached = _dns_cache.get(key)
    if cached is not None and cached[0] > time.monotonic():
        return cached[1]
    lookup = _resolver().submit(socket.getaddrinfo, target.host, target.port, type=socket.SOCK_STREAM)
    try:
        yield Wait.until(lookup, deadline)
    except TimeoutError:
        lookup.cancel()
        raise BackendDNSError(
            "backend host name could not be resolved", detail=f"{target.host}: no answer before the connect deadline"
        ) from None
    try:
        infos = lookup.result()
    except (socket.gaierror, UnicodeError) as exc:
        raise BackendDNSError(
            "backend host name could not be resolved", detail=f"{target.host}: {exc}"
        ) from exc
    if len(_dns_cache) > 1024:
        _dns_cache.clear()
    _dns_cache[key] = (time.monotonic() + DNS_TTL, infos)
    return infos


def connect(
    target: Target,
    deadline: float,
    *,
    ssl_context: Optional[ssl.SSLContext] = None,
    tls_deadline: Optional[float] = None,
) -> Generator[Wait, None, Endpoint]:
    """Open a fresh, non-blocking connection to ``target`` (never pooled, R18).

    Every address the host resolves to is tried in turn, each with the whole connect
    timeout (``deadline`` minus now, as httpd times each address): an address that
    refuses or does not answer in time moves on to the next one.

    Returns:
        The connected socket, or a `TLSStream` over it for a TLS target.

    Raises:
        BackendDNSError: the host name does not resolve (500).
        ServiceUnavailable: every address refused, or the deadline passed (503).
        BadGateway: the TLS handshake failed (502).
    """
    last_error = "no address"
    timed_out = False  # how the last address failed: no answer in time, or refused
    budget = max(0.0, deadline - time.monotonic())
    for family, type_, proto, _, address in (yield from _addresses(target, deadline)):
        sock = socket.socket(family, type_ | _NONBLOCK, proto)
        try:
            if not _NONBLOCK:
                sock.setblocking(False)
            err = sock.connect_ex(address)
            if err in (errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK):
                if _connected_now(sock):
                    err = 0
                else:
                    try:
                        yield Wait.write(sock, time.monotonic() + budget)
                    except TimeoutError:
                        last_error = f"{address}: no answer within {budget:g}s"
                        timed_out = True
                        sock.close()
                        continue
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                last_error = f"{address}: {errno.errorcode.get(err, err)} ({errno_text(err)})"
                timed_out = False
                sock.close()
                continue
            tune(sock, family=family)
            if target.tls:
                return (yield from _tls_handshake(sock, target, ssl_context, tls_deadline or deadline))
            return sock
        except BaseException:
            sock.close()
            raise
    if timed_out:
        raise ServiceUnavailable("backend connect timed out", detail=f"{target}: {last_error}")
    raise ServiceUnavailable("backend refused the connection", detail=f"{target}: {last_error}")


def _connected_now(sock: socket.socket) -> bool:
    """Whether a connect in progress has already succeeded: on loopback and on a LAN it
    usually has by the time ``connect`` returns. One ``getpeername`` answers it (a
    connected socket has a peer) where a poll and ``SO_ERROR`` took two calls, and
    costs far less than a trip through the loop; a refusal is not told apart here (no
    peer either), so it takes the loop's way and ``SO_ERROR`` names it."""
    try:
        sock.getpeername()
    except OSError:
        return False
    return True


def errno_text(err: int) -> str:
    return os.strerror(err).lower()


def _tls_handshake(
    raw: socket.socket, target: Target, ctx: Optional[ssl.SSLContext], deadline: float
) -> Generator[Wait, None, TLSStream]:
    if ctx is None:
        raise BadGateway("TLS to the backend is not configured", detail=str(target))
    sock = TLSStream(raw, ctx, server_hostname=target.host)
    try:
        yield from tls_handshake(sock, deadline)
    except TimeoutError:  # before OSError, its base class
        raise GatewayTimeout("TLS handshake with the backend timed out", detail=str(target)) from None
    except ssl.SSLCertVerificationError as exc:
        raise BadGateway(
            "backend TLS certificate rejected",
            detail=f"{target}: {exc.verify_message}; {HTTPD_DEFAULT_VERIFY}",
        ) from exc
    except (ssl.SSLError, OSError) as exc:
        raise BadGateway("TLS handshake with the backend failed", detail=f"{target}: {exc}") from exc
    return sock
