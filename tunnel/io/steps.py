"""Generator steps that wait on the loop (see `Wait`): read some bytes, send them all,
each by a deadline (``TimeoutError`` is thrown in at it). The same code runs on the
engine's loop and, through `run_blocking`, in a host's thread.
"""

from __future__ import annotations

import ssl
from collections.abc import Generator
from typing import Optional

from .loop import Wait
from .streams import EVENT_READ, EVENT_WRITE, RECV_SIZE, WOULD_BLOCK, Endpoint
from .tls import TLSStream

__all__ = ["recv", "sendall", "tls_handshake"]


def recv(sock: Endpoint, deadline: Optional[float], size: int = RECV_SIZE) -> Generator[Wait, None, bytes]:
    """Read at least one byte (b"" at EOF) by ``deadline``; TimeoutError after it."""
    while True:
        try:
            return sock.recv(size)
        except ssl.SSLWantWriteError:
            yield Wait.write(sock, deadline)
        except WOULD_BLOCK:
            if isinstance(sock, (ssl.SSLSocket, TLSStream)) and sock.pending():
                continue
            if isinstance(sock, TLSStream) and sock.unsent and not sock.flush():
                yield Wait(sock, EVENT_READ | EVENT_WRITE, deadline)  # both, or a stall
            else:
                yield Wait.read(sock, deadline)


def sendall(sock: Endpoint, data: bytes, deadline: Optional[float]) -> Generator[Wait, None, None]:
    """Send every byte of ``data`` by ``deadline``; TimeoutError after it."""
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except ssl.SSLWantReadError:
            yield Wait.read(sock, deadline)
            continue
        except WOULD_BLOCK:
            yield Wait.write(sock, deadline)
            continue
        view = view[sent:]
    if isinstance(sock, TLSStream):
        while not sock.flush():  # ciphertext the kernel has not taken yet
            yield Wait.write(sock, deadline)


def tls_handshake(sock: TLSStream, deadline: float) -> Generator[Wait, None, None]:
    """Complete ``sock``'s TLS handshake by ``deadline``, either side.

    Raises:
        ssl.SSLError, OSError: the handshake failed (the caller words the answer).
        TimeoutError: the deadline passed first.
    """
    while True:
        try:
            sock.do_handshake()
            return
        except ssl.SSLWantReadError:
            yield Wait.read(sock, deadline)
        except ssl.SSLWantWriteError:
            yield Wait.write(sock, deadline)
