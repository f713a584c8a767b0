"""Bulk flows through a pipe with ``splice``: the kernel moves the bytes from one socket
to the other without copying them into the process (less of the proxy's CPU per MB on
loopback; the figures are in docs/performance.md).

Only a flow that needs no look at its bytes may splice: both ends plain sockets (no
TLS), no frame follower, no global cap, no `Control`; and only while it is a bulk flow
(a read filled the scratch buffer, and at least ``SPLICE_MIN`` bytes are queued). A
pipe costs two descriptors, so at most ``MAX_PIPES`` exist in a process: the others
copy as before. The pipe is empty between two events: what the destination did not
take is read back into the flow's ``pending`` buffer, so backpressure, the stall check,
half-close and a hand-over see nothing new.
"""

from __future__ import annotations

import fcntl
import os
import socket
import termios
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Optional

from ..io.streams import WOULD_BLOCK

if TYPE_CHECKING:  # pragma: no cover
    from .flow import Flow

__all__ = [
    "SPLICE_MIN",
    "SPLICE_CHUNK",
    "MAX_PIPES",
    "AVAILABLE",
    "open_pipe",
    "close_pipe",
    "queued",
    "drain",
    "live_pipes",
]

#: Queued bytes from which a bulk flow's read is spliced (below: copied, as always).
SPLICE_MIN = 64 * 1024
#: Most bytes one splice moves, and the pipe's size: a scratch-full (the pump's
#: ``SCRATCH_SIZE``), so what a stalled destination leaves pending is bounded as for a
#: copying read (R26: the high-water mark plus one chunk).
SPLICE_CHUNK = 256 * 1024
#: Most pipes in a process (two descriptors each): bounds what bulk flows add to the
#: descriptor count, whatever the number of tunnels.
MAX_PIPES = 64
#: ``os.splice`` exists (Linux, Python 3.10+).
AVAILABLE = hasattr(os, "splice") and hasattr(fcntl, "F_SETPIPE_SZ")
FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)

#: A Close frame's longest form (2 header bytes, a 4-byte mask, 125 of payload): what
#: a WebSocket stream's spliced read leaves to be copied.
LONGEST_CLOSE = 131

_lock = threading.Lock()
_live = 0
_FIONREAD = termios.FIONREAD
_INT = bytes(4)


def live_pipes() -> int:
    """Pipes open now (tests, and the descriptor budget)."""
    return _live


def open_pipe() -> Optional[tuple[int, int]]:
    """A non-blocking pipe (read end, write end) of ``SPLICE_CHUNK`` bytes, or None
    when splicing is unavailable, ``MAX_PIPES`` are open, or no descriptor is left."""
    global _live
    if not AVAILABLE:
        return None
    with _lock:
        if _live >= MAX_PIPES:
            return None
        _live += 1
    try:
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        with _lock:
            _live -= 1
        return None
    try:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, SPLICE_CHUNK)
    except OSError:
        pass  # the default size (64 KiB) still works, in more calls
    return r, w


def close_pipe(pipe: tuple[int, int]) -> None:
    global _live
    for fd in pipe:
        try:
            os.close(fd)
        except OSError:
            pass
    with _lock:
        _live -= 1


def queued(sock: socket.socket) -> int:
    """Bytes waiting in ``sock``'s receive queue (FIONREAD)."""
    return int.from_bytes(fcntl.ioctl(sock.fileno(), _FIONREAD, _INT), "little", signed=True)


def drain(pipe: tuple[int, int], n: int) -> bytearray:
    """The ``n`` bytes left in ``pipe`` (they are all there: nothing else reads it)."""
    out = bytearray()
    while len(out) < n:
        out += os.read(pipe[0], n - len(out))
    return out


def spliceable(flow: Flow) -> bool:
    """Both ends plain sockets: the kernel may move the flow's bytes."""
    return type(flow.src) is socket.socket and type(flow.dst) is socket.socket


def splice_burst(
    fail: Callable[[str, str, BaseException], None],
    flow: Flow,
    pipe: tuple[int, int],
    watch: bool,
    limit: int,
    rounds: int,
) -> int:
    """A bulk flow's read event through its pipe (the pump's ``read``): up to ``rounds``
    chunks of at most ``limit`` bytes (the scratch's size: the same chunks as copying
    reads, so the same bound on what is left pending), from one look at the queue.

    Returns the bytes moved (all handed to the destination); 0 when fewer than
    ``SPLICE_MIN`` are queued (the caller copies them); -1 when the read is over (an
    error, or the destination took only part: the rest is ``pending``). On a WebSocket
    stream (``watch``) the last 131 queued bytes are left for a copying read, so its
    tail is seen as on any read (R98). ``fail(peer, what, exc)`` ends the tunnel on an
    I/O error (the pump's ``_fail``)."""
    src = flow.src
    try:
        avail = queued(src)  # type: ignore[arg-type]
    except OSError:
        return 0  # the copying read reports it
    if avail < SPLICE_MIN:
        return 0
    todo = avail - LONGEST_CLOSE if watch else avail
    sfd, dfd = src.fileno(), flow.dst.fileno()
    r, w = pipe
    moved = 0
    while rounds and todo > 0:
        rounds -= 1
        try:
            n = os.splice(sfd, w, todo if todo < limit else limit, flags=FLAGS)
        except WOULD_BLOCK:
            break
        except OSError as exc:
            fail(flow.name.split("->")[0], "read from", exc)
            return -1
        if not n:
            break  # EOF: the copying read sees it
        flow.count += n
        todo -= n
        moved += n
        left = n
        try:
            while left:
                left -= os.splice(r, dfd, left, flags=FLAGS)
        except WOULD_BLOCK:
            pass
        except OSError as exc:
            fail(flow.name.split("->")[1], "send to", exc)
            return -1
        if left:
            flow.pending = drain(pipe, left)  # at most one chunk, as from a copying read
            return -1
    return moved
