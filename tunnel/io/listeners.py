"""Listening sockets and accepting: a batch per wake-up, a rest on EMFILE."""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable
from typing import Optional

from ..config.model import Listener
from .loop import Loop
from .streams import EVENT_READ, PeerAddress, set_tcp_options

__all__ = ["open_listener", "Acceptor", "Adopt"]

errlog = logging.getLogger("tunnel.error")

#: Connections accepted per wake-up of a listener (fairness with running tunnels).
ACCEPT_BATCH = 64
#: How long a listener rests after EMFILE/ENFILE before accepting again.
EMFILE_BACKOFF = 0.1
#: Listen backlog.
BACKLOG = 1024

#: What an acceptor hands each accepted connection to: (socket, peer address, listener).
Adopt = Callable[[socket.socket, PeerAddress, Optional[Listener]], None]


def open_listener(listener: Listener, *, reuse_port: bool = False, listen: bool = True) -> socket.socket:
    """Bind (and listen) for one ``Listen`` line: ``SO_REUSEADDR``, non-blocking.

    ``reuse_port`` sets ``SO_REUSEPORT`` so several worker processes can each listen on
    the same port (the kernel spreads connections among them, nginx's model).
    """
    host = listener.host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and host in ("", "::"):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), listener.port))
        set_tcp_options(sock)  # inherited by every accepted connection (Linux)
        if listen:
            sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


#: Client addresses as text, one string per address however many connections come
#: from it (an open tunnel keeps its peer for the logs and the status pages). Bounded:
#: a table that fills is emptied (only sharing is lost).
_PEER_IPS: dict[str, str] = {}
_PEER_IPS_MAX = 4096


class Acceptor:
    """Accepts on one listening socket, a batch per wake-up; rests on EMFILE."""

    def __init__(self, adopt: Adopt, loop: Loop, sock: socket.socket, listener: Listener) -> None:
        self._adopt = adopt
        self.loop = loop
        self.sock = sock
        self.listener = listener
        # What an accepted socket is made with: plain ints, where ``socket.accept`` turns
        # the listener's into enums again for every connection.
        self._kind = (int(sock.family), int(sock.type), sock.proto)
        loop.register(sock, EVENT_READ, self._on_ready)

    def _on_ready(self, mask: int) -> None:
        accept: Callable[[], tuple[int, PeerAddress]] = self.sock._accept  # type: ignore[attr-defined]
        family, type_, proto = self._kind
        for _ in range(ACCEPT_BATCH):
            try:
                fd, peer = accept()
                conn = socket.socket(family, type_, proto, fd)
                if type(peer) is tuple:
                    ip = peer[0]
                    shared = _PEER_IPS.get(ip)
                    if shared is None:
                        if len(_PEER_IPS) >= _PEER_IPS_MAX:
                            _PEER_IPS.clear()
                        shared = _PEER_IPS[ip] = ip
                    peer = (shared, *peer[1:])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    errlog.error("accept on %s: %s; pausing %.1fs", self.listener.display, exc.strerror, EMFILE_BACKOFF)
                    self.loop.modify(self.sock, 0)
                    self.loop.call_later(EMFILE_BACKOFF, self._resume)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                errlog.error("accept on %s failed: %s", self.listener.display, exc)
                return
            self._adopt(conn, peer, self.listener)

    def _resume(self) -> None:
        if self.loop.is_registered(self.sock):
            self.loop.modify(self.sock, EVENT_READ)

    def pause(self) -> None:
        """Stop accepting, the socket kept open (a binary upgrade: another process
        accepts on it meanwhile, so no client is refused)."""
        if self.loop.is_registered(self.sock):
            self.loop.unregister(self.sock)

    def resume(self) -> None:
        """Accept again after `pause`."""
        if not self.loop.is_registered(self.sock):
            self.loop.register(self.sock, EVENT_READ, self._on_ready)

    def close(self) -> None:
        if self.loop.is_registered(self.sock):
            self.loop.unregister(self.sock)
        self.sock.close()
