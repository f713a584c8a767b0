"""Messages with file descriptors between two processes over a unix stream socket.

A binary upgrade's old and new processes talk over one socketpair (R155). Each message
is: one marker byte carrying the descriptors (``SCM_RIGHTS``, via ``socket.send_fds``),
then an 8-byte header (the JSON's length, the blobs' total), the JSON object, then the
raw blobs (bytes too big or too binary for JSON: a tunnel's pending bytes). The receiver
reads the marker byte alone with ``recv_fds``, so the descriptors it carries are never
swallowed by a plain read, and everything else by exact lengths.

The JSON object names its blobs' lengths in ``"blobs"``. Every call is blocking, bounded
by the socket's timeout; a closed peer is `ChannelClosed`.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any, Optional

__all__ = ["Channel", "ChannelClosed", "MAX_FDS"]

#: Descriptors per message: Linux takes at most 253 (SCM_MAX_FD) in one.
MAX_FDS = 250
_HEADER = struct.Struct("!II")
#: The largest JSON part accepted (a corrupt length must not allocate gigabytes).
MAX_JSON = 64 << 20
MAX_BLOBS = 1 << 30


class ChannelClosed(ConnectionError):
    """The other process closed the channel (or died)."""


class Channel:
    """One end of the upgrade channel (a connected ``AF_UNIX`` ``SOCK_STREAM`` socket)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def settimeout(self, timeout: Optional[float]) -> None:
        self.sock.settimeout(timeout)

    def send(self, message: dict[str, Any], blobs: tuple[bytes, ...] | list[bytes] = (), fds: list[int] | tuple[int, ...] = ()) -> None:
        """Send ``message`` (a JSON object), its ``blobs`` and ``fds`` (at most `MAX_FDS`)."""
        if len(fds) > MAX_FDS:
            raise ValueError(f"at most {MAX_FDS} descriptors per message, not {len(fds)}")
        body = json.dumps({**message, "blobs": [len(b) for b in blobs]}, separators=(",", ":")).encode()
        total = sum(len(b) for b in blobs)
        try:
            if fds:
                socket.send_fds(self.sock, [b"M"], list(fds))
            else:
                self.sock.sendall(b"M")
            self.sock.sendall(_HEADER.pack(len(body), total) + body)
            for blob in blobs:
                self.sock.sendall(blob)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ChannelClosed(f"the other process closed the channel ({exc.strerror})") from None

    def recv(self) -> tuple[dict[str, Any], list[bytes], list[int]]:
        """The next message, its blobs and the descriptors that came with it (the
        caller owns them: close those it does not keep)."""
        try:
            marker, fds, _flags, _addr = socket.recv_fds(self.sock, 1, MAX_FDS + 3)
        except ConnectionResetError:
            raise ChannelClosed("the other process closed the channel") from None
        try:
            if not marker:
                raise ChannelClosed("the other process closed the channel")
            if marker != b"M":
                raise ValueError(f"not a channel message (marker {marker!r})")
            size, total = _HEADER.unpack(self._exactly(_HEADER.size))
            if size > MAX_JSON or total > MAX_BLOBS:
                raise ValueError(f"a message of {size}+{total} bytes is too big")
            message = json.loads(self._exactly(size))
            if not isinstance(message, dict):
                raise ValueError("a channel message is a JSON object")
            lengths = message.get("blobs", [])
            if sum(lengths) != total:
                raise ValueError("the blobs' lengths do not add up")
            data = self._exactly(total)
        except BaseException:
            for fd in fds:
                _close(fd)
            raise
        blobs, pos = [], 0
        for n in lengths:
            blobs.append(data[pos : pos + n])
            pos += n
        return message, blobs, list(fds)

    def _exactly(self, n: int) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            try:
                k = self.sock.recv_into(view[got:])
            except ConnectionResetError:
                k = 0
            if k == 0:
                raise ChannelClosed("the other process closed the channel in the middle of a message")
            got += k
        return bytes(buf)

    def close(self) -> None:
        self.sock.close()


def _close(fd: int) -> None:
    try:
        socket.close(fd)
    except OSError:
        pass
