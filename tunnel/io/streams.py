"""What every socket-touching module shares: the event masks, the would-block errors,
the TCP options every leg gets, and the half-close that TLS needs.

The one definition of each: the loop, the connector, the front end and both tunnel
drivers import them from here.
"""

from __future__ import annotations

import errno
import selectors
import socket
import ssl
import sys
from typing import TYPE_CHECKING, Optional, Protocol

from .addresses import InetAddress, PeerAddress
from .tls import TLSStream

if TYPE_CHECKING:  # pragma: no cover
    from _typeshed import ReadableBuffer, WriteableBuffer

__all__ = [
    "Endpoint",
    "InetAddress",
    "PeerAddress",
    "EVENT_READ",
    "EVENT_WRITE",
    "WOULD_BLOCK",
    "NOT_CONNECTED",
    "RECV_SIZE",
    "INHERITS_OPTIONS",
    "tune",
    "set_tcp_options",
    "shutdown_write",
]

#: Interest masks, as the selectors module numbers them (poll() flags are mapped from these).
EVENT_READ = selectors.EVENT_READ
EVENT_WRITE = selectors.EVENT_WRITE
#: What a non-blocking call raises when it would have to wait.
WOULD_BLOCK: tuple[type[Exception], ...] = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class Endpoint(Protocol):
    """One end of a connection as the front end and the tunnels use it: a connected
    non-blocking ``socket.socket`` or a `TLSStream` over one (asyncio's ``Transport``
    is the model: the same calls whatever is underneath)."""

    def fileno(self) -> int: ...
    def recv(self, size: int, /) -> bytes: ...
    def recv_into(self, buffer: WriteableBuffer, nbytes: int = ..., /) -> int: ...
    def send(self, data: ReadableBuffer, /) -> int: ...
    def shutdown(self, how: int, /) -> None: ...
    def close(self) -> None: ...
    def getpeername(self) -> PeerAddress: ...
    def getsockname(self) -> PeerAddress: ...
    def setblocking(self, flag: bool, /) -> None: ...


#: ``shutdown`` on a socket whose peer is gone already.
NOT_CONNECTED = errno.ENOTCONN
#: Bytes asked for per recv during handshakes (heads are small; bodies stream).
RECV_SIZE = 64 * 1024
#: TCP keepalive on every leg finds dead peers of quiet tunnels (R37 tunnel line):
#: first probe after this many idle seconds, then every KEEPALIVE_INTERVAL, 4 probes.
KEEPALIVE_IDLE = 60
KEEPALIVE_INTERVAL = 15



#: Accepted sockets inherit TCP_NODELAY and the keepalive settings from their listening
#: socket on Linux: set once on the listener (`set_tcp_options`), not per connection.
INHERITS_OPTIONS = sys.platform.startswith("linux")


def tune(sock: socket.socket, *, inherited: bool = False, family: Optional[int] = None) -> None:
    """Non-blocking, TCP_NODELAY (R27) and keepalive (R37) on a stream socket.

    ``inherited``: the options came from a listener `set_tcp_options` set up.
    ``family``: the socket's address family when the caller knows it.
    """
    if sock.gettimeout() != 0.0:
        sock.setblocking(False)
    if not inherited:
        set_tcp_options(sock, family)


#: The options `set_tcp_options` sets, in order: (level, option, value).
TCP_OPTIONS: tuple[tuple[int, int, int], ...] = (
    (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
) + (
    (
        (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE),
        (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL),
        (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4),
    )
    if hasattr(socket, "TCP_KEEPIDLE")
    else ()
)
_INET = (socket.AF_INET, socket.AF_INET6)


def set_tcp_options(sock: socket.socket, family: Optional[int] = None) -> None:
    """TCP_NODELAY and keepalive on a socket (a listener's are inherited on Linux).

    ``family``: the socket's, when the caller knows it (``sock.family`` builds an enum).
    """
    if (sock.family if family is None else family) in _INET:
        setsockopt = sock.setsockopt
        try:
            for level, option, value in TCP_OPTIONS:
                setsockopt(level, option, value)
        except OSError:
            pass


def shutdown_write(sock: Endpoint) -> None:
    """Shut the write side of ``sock``; for TLS, send close_notify first.

    A `TLSStream` (every TLS leg of a tunnel) does it without touching the bytes still
    coming the other way. A blocking ``ssl.SSLSocket`` (the echo backend, after its
    peer's EOF: nothing more can come) sends close_notify through its SSL object and
    shuts the TCP write side underneath it.
    """
    if isinstance(sock, TLSStream):
        sock.shutdown_write()
        return
    if isinstance(sock, ssl.SSLSocket) and (sslobj := getattr(sock, "_sslobj", None)) is not None:
        try:
            sslobj.shutdown()
        except (ssl.SSLError, OSError, ValueError):
            pass  # close_notify is sent before want-read; a dead peer is found on next I/O
        socket.socket.shutdown(sock, socket.SHUT_WR)
    else:
        sock.shutdown(socket.SHUT_WR)
