"""Non-blocking socket reads and writes that keep the GIL, for the sync strategy's threads.

``socket.recv_into`` and ``socket.send`` release the GIL around the system call even when
the socket is non-blocking and the call cannot wait. With many sync tunnel threads, each
release hands the GIL to another thread, and getting it back means queueing behind all
of them: a ping-pong message cost three trips through that queue (after ``poll``, after
the read, after the send) and 1,000 busy threads spent most of their time switching
(docs/performance.md, "The sync strategy"). A `HeldSocket` makes the read and the send
through libc with the GIL held (``ctypes.PyDLL``): they never block (the socket is
non-blocking), so only the ``poll`` that really waits lets the GIL go.

It wraps a plain non-blocking socket with the endpoint interface the pump uses
(``recv_into``, ``send``, ``shutdown``, ``fileno``, ``close``); errors are the
``OSError`` subclasses the socket methods raise. Where libc cannot be loaded
(``held_socket`` returns the socket itself) nothing changes but the GIL's hand-offs.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
from typing import TYPE_CHECKING, Any, Optional

from .streams import PeerAddress

if TYPE_CHECKING:  # pragma: no cover
    from _typeshed import ReadableBuffer, WriteableBuffer

__all__ = ["HeldSocket", "held_socket", "pointer_to", "AVAILABLE"]

_MSG_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)


def _load() -> Optional[tuple[Any, Any]]:
    try:
        libc = ctypes.PyDLL(None, use_errno=True)  # PyDLL: the call keeps the GIL
        recv, send = libc.recv, libc.send
    except (OSError, AttributeError):  # pragma: no cover - no libc symbols (not Linux)
        return None
    # No ``argtypes``: converting each argument through them (``from_param``) was half
    # of a call's cost. The arguments are passed as what ctypes passes without them: the
    # descriptor, length and flags as C ints (every length is capped at `_MAX_CALL`,
    # below 2**31, and a 64-bit ABI widens an int argument to the register, so a
    # ``size_t`` parameter reads it whole), the buffer as a ``byref`` pointer.
    for fn in (recv, send):
        fn.restype = ctypes.c_ssize_t
    return recv, send


_FUNCS = _load()
#: Whether reads and writes can keep the GIL on this system.
AVAILABLE = _FUNCS is not None
#: The most one call reads or sends: a C int whatever the buffer (a shorter read or
#: send than asked is what the socket methods may do too).
_MAX_CALL = 1 << 30
_c_char = ctypes.c_char
_byref = ctypes.byref
_get_errno = ctypes.get_errno


def pointer_to(buffer: Any) -> Any:
    """A pointer to a writable buffer's first byte, to hand a `HeldSocket` with the
    buffer: one per sync thread's scratch, shared by its tunnels' sockets, rather than
    one made by each socket. It does not keep the buffer alive (a pointer kept with
    its export would cost 250 B more): whoever holds it holds the buffer too."""
    return ctypes.c_void_p(ctypes.addressof(_c_char.from_buffer(buffer)))


def _error(err: int) -> OSError:
    """The exception ``socket`` raises for ``err`` (BlockingIOError, ConnectionResetError...)."""
    return OSError(err, os.strerror(err))  # OSError() picks the subclass from the errno


class HeldSocket:
    """A non-blocking plain socket whose reads and sends keep the GIL (see the module)."""

    __slots__ = ("sock", "fd", "_recv", "_send", "_buf", "_ptr")

    def __init__(self, sock: socket.socket, buffer: Any = None, pointer: Any = None) -> None:
        assert _FUNCS is not None
        self.sock = sock
        self.fd = sock.fileno()
        self._recv, self._send = _FUNCS
        #: the last buffer read into and a pointer to it: a driver reads into the same
        #: scratch view again and again, whose pointer need not be made each time (and
        #: may hand both in: `pointer_to`).
        self._buf: Any = buffer
        self._ptr: Any = pointer

    def recv_into(self, buffer: WriteableBuffer, nbytes: int = 0, /) -> int:
        size = len(buffer)  # type: ignore[arg-type]
        if nbytes:
            size = min(size, nbytes)
        if size == 0:
            return 0
        if buffer is self._buf:
            ptr = self._ptr
        else:
            try:
                ptr = _byref(_c_char.from_buffer(buffer))
            except TypeError:  # a read-only buffer: let the socket say why
                return self.sock.recv_into(buffer, size)
            self._buf, self._ptr = buffer, ptr  # (the pointer keeps the buffer alive)
        if size > _MAX_CALL:
            size = _MAX_CALL
        while True:
            n: int = self._recv(self.fd, ptr, size, 0)
            if n >= 0:
                return n
            err = _get_errno()
            if err != errno.EINTR:
                raise _error(err)

    def send(self, data: ReadableBuffer, /) -> int:
        size = len(data)  # type: ignore[arg-type]
        if size == 0:
            return 0
        if isinstance(data, bytes):
            ptr: Any = data  # ctypes passes a bytes object's own buffer
        else:
            try:
                ptr = _byref(_c_char.from_buffer(data))
            except TypeError:  # read-only (a memoryview of bytes): the socket's own send
                return self.sock.send(data)
        if size > _MAX_CALL:
            size = _MAX_CALL
        while True:
            n: int = self._send(self.fd, ptr, size, _MSG_NOSIGNAL)
            if n >= 0:
                return n
            err = _get_errno()
            if err != errno.EINTR:
                raise _error(err)

    def recv(self, size: int, /) -> bytes:
        return self.sock.recv(size)

    def shutdown(self, how: int, /) -> None:
        self.sock.shutdown(how)

    def getpeername(self) -> PeerAddress:
        name: PeerAddress = self.sock.getpeername()
        return name

    def getsockname(self) -> PeerAddress:
        name: PeerAddress = self.sock.getsockname()
        return name

    def setblocking(self, flag: bool, /) -> None:
        self.sock.setblocking(flag)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def __repr__(self) -> str:
        return f"<HeldSocket {self.sock!r}>"


def held_socket(end: Any, buffer: Any = None, pointer: Any = None) -> Any:
    """``end`` as a `HeldSocket` when it is a plain socket and libc can be called, else
    ``end`` itself (TLS ends keep their own reads and writes). ``buffer`` and its
    ``pointer`` (`pointer_to`): the scratch the end will read into, if known."""
    if AVAILABLE and type(end) is socket.socket:
        return HeldSocket(end, buffer, pointer)
    return end
