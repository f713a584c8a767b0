"""TLS over a non-blocking socket through memory BIOs, with a half-close that loses nothing.

Why not ``ssl.SSLSocket``: a tunnel half-closes (R29): when one side ends, the other
gets close_notify and FIN while bytes keep flowing the other way. CPython's
``SSLSocket`` sends close_notify with ``SSL_shutdown`` and at once calls it a second
time, which *reads* the socket for the peer's close_notify; OpenSSL 3 answers an
application-data record found there with ``APPLICATION_DATA_AFTER_CLOSE_NOTIFY`` and the
connection is dead, so the bytes still coming the other way are lost. Here the TLS
engine (``ssl.SSLObject``) only ever sees the ciphertext we hand it: before close_notify
every complete record is decrypted into ``_plain`` and the second ``SSL_shutdown``
finds nothing to read.

`TLSStream` behaves like a non-blocking ``SSLSocket`` for everything the proxy does:
``recv``/``recv_into``/``send`` raise ``ssl.SSLWantReadError`` / ``SSLWantWriteError``
instead of blocking, ``pending()`` says decrypted bytes wait without the fd being
readable, ``fileno()`` is the socket's. One difference matters to callers: ``send``
accepts a chunk once it is encrypted, and ciphertext the kernel did not take waits in
``unsent`` bytes; ``flush()`` pushes it (the pump and ``backend.sendall`` do), and
``shutdown_write()`` sends close_notify then FIN after it.
"""

from __future__ import annotations

import socket
import ssl
from typing import TYPE_CHECKING, Any, Optional

from .addresses import PeerAddress

if TYPE_CHECKING:  # pragma: no cover
    from ssl import _PeerCertRetType

    from _typeshed import ReadableBuffer, WriteableBuffer


__all__ = ["TLSStream", "RAW_CHUNK", "SEND_CHUNK"]

#: Ciphertext read from the socket per call.
RAW_CHUNK = 256 * 1024
#: Plaintext encrypted per ``send`` call: bounds what can wait in ``unsent``.
SEND_CHUNK = 128 * 1024

_BLOCKED = (BlockingIOError, InterruptedError)


class TLSStream:
    """A TLS connection over a connected, non-blocking socket (client or server side)."""

    def __init__(
        self,
        raw: socket.socket,
        context: ssl.SSLContext,
        *,
        server_side: bool = False,
        server_hostname: Optional[str] = None,
    ) -> None:
        raw.setblocking(False)
        self.raw = raw
        self.family = raw.family
        self._in = ssl.MemoryBIO()
        self._out_bio = ssl.MemoryBIO()
        self.sslobj = context.wrap_bio(self._in, self._out_bio, server_side=server_side, server_hostname=server_hostname)
        self._out = bytearray()  # ciphertext the kernel has not accepted yet
        self._plain = bytearray()  # decrypted ahead of a close_notify (see module doc)
        self._shut_wanted = False  # close_notify queued: FIN once ``_out`` is empty
        self._shut_done = False
        self._eof = False  # the socket returned EOF

    # -- socket-like surface -------------------------------------------------------------
    def fileno(self) -> int:
        return self.raw.fileno()

    def getpeername(self) -> PeerAddress:
        peer: PeerAddress = self.raw.getpeername()
        return peer

    def getsockname(self) -> PeerAddress:
        name: PeerAddress = self.raw.getsockname()
        return name

    def setsockopt(self, *args: Any) -> None:
        self.raw.setsockopt(*args)

    def setblocking(self, flag: bool) -> None:
        if flag:
            raise ValueError("TLSStream is non-blocking only")

    def close(self) -> None:
        self.raw.close()

    def version(self) -> Optional[str]:
        return self.sslobj.version()

    def cipher(self) -> Optional[tuple[str, str, int]]:
        return self.sslobj.cipher()

    def selected_alpn_protocol(self) -> Optional[str]:
        return self.sslobj.selected_alpn_protocol()

    def getpeercert(self, binary_form: bool = False) -> _PeerCertRetType:
        return self.sslobj.getpeercert(binary_form)

    @property
    def unsent(self) -> int:
        """Ciphertext bytes waiting for the socket to accept them."""
        return len(self._out) + self._out_bio.pending

    def pending(self) -> int:
        """Bytes readable without the socket becoming readable (decrypted or buffered)."""
        return len(self._plain) + self.sslobj.pending() + self._in.pending

    def __repr__(self) -> str:
        return f"<TLSStream fd={self.raw.fileno()} unsent={self.unsent} pending={self.pending()}>"

    # -- handshake -----------------------------------------------------------------------
    def do_handshake(self) -> None:
        """One step of the handshake; raises SSLWantReadError/SSLWantWriteError to wait."""
        while True:
            try:
                self.sslobj.do_handshake()
            except ssl.SSLWantReadError:
                if not self.flush():
                    raise ssl.SSLWantWriteError("handshake output waiting") from None
                self._fill()  # raises SSLWantReadError when the socket has nothing
                continue
            if not self.flush():
                raise ssl.SSLWantWriteError("handshake output waiting")
            return

    # -- reading -------------------------------------------------------------------------
    def recv_into(self, buffer: WriteableBuffer, nbytes: int = 0) -> int:
        view = memoryview(buffer).cast("B")
        size = nbytes or len(view)
        if self._plain:
            n = min(size, len(self._plain))
            view[:n] = self._plain[:n]
            del self._plain[:n]
            return n
        while True:
            try:
                # typeshed has read() -> bytes; with a buffer it returns the count read.
                n = self.sslobj.read(size, view)  # type: ignore[assignment]
            except ssl.SSLWantReadError:
                self._fill()
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return 0  # close_notify, or EOF without it (as suppress_ragged_eofs)
            if self._out_bio.pending:  # TLS 1.3 post-handshake messages (KeyUpdate)
                self._try_flush()
            return n

    def recv(self, size: int = RAW_CHUNK) -> bytes:
        buf = bytearray(size)
        n = self.recv_into(buf, size)
        del buf[n:]
        return bytes(buf)

    def _fill(self) -> None:
        """Move ciphertext from the socket into the TLS engine (or raise to wait)."""
        if self._eof:
            raise ssl.SSLEOFError("EOF")  # recv_into turns it into 0
        try:
            data = self.raw.recv(RAW_CHUNK)
        except _BLOCKED:
            raise ssl.SSLWantReadError("socket not readable") from None
        if data:
            self._in.write(data)
        else:
            self._eof = True
            self._in.write_eof()

    # -- writing -------------------------------------------------------------------------
    def send(self, data: ReadableBuffer) -> int:
        """Encrypt up to SEND_CHUNK bytes of ``data``; returns how many were taken."""
        if self._shut_wanted:
            raise BrokenPipeError(32, "TLS write side already shut")
        if (self._out or self._out_bio.pending) and not self.flush():
            raise ssl.SSLWantWriteError("previous ciphertext not sent yet")
        view = memoryview(data).cast("B")
        if not view:
            return 0
        n = self.sslobj.write(view[:SEND_CHUNK])
        self._try_flush()
        return n

    def sendall(self, data: ReadableBuffer) -> None:  # pragma: no cover - not for non-blocking use
        raise TypeError("TLSStream is non-blocking: use send() and flush()")

    def flush(self) -> bool:
        """Send waiting ciphertext. True when nothing is left (FIN sent if it was due)."""
        if self._out_bio.pending:
            self._out += self._out_bio.read()
        out = self._out
        while out:
            try:
                sent = self.raw.send(out)
            except _BLOCKED:
                return False
            del out[:sent]
        if self._shut_wanted and not self._shut_done:
            self._shut_done = True
            self.raw.shutdown(socket.SHUT_WR)
        return True

    def _try_flush(self) -> None:
        try:
            self.flush()
        except OSError:
            pass  # the next send/recv reports the broken connection

    # -- half-close ----------------------------------------------------------------------
    def shutdown_write(self) -> None:
        """close_notify, then FIN once all ciphertext is out; reading goes on."""
        if self._shut_wanted:
            return
        # Decrypt every complete record we hold, so the second SSL_shutdown (inside
        # SSLObject.unwrap) finds no application data to choke on.
        chunk = bytearray(RAW_CHUNK)
        while True:
            try:
                # typeshed has read() -> bytes; with a buffer it returns the count read.
                n: int = self.sslobj.read(RAW_CHUNK, chunk)  # type: ignore[assignment]
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
            except ssl.SSLError:
                break
            if n == 0:
                break
            self._plain += chunk[:n]
        try:
            self.sslobj.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass  # close_notify is in the BIO; the peer's comes later (or never)
        except ssl.SSLError:
            pass  # a broken session: FIN alone still tells the peer
        self._shut_wanted = True
        self.flush()

    def shutdown(self, how: int) -> None:
        if how == socket.SHUT_WR:
            self.shutdown_write()
        else:
            self.raw.shutdown(how)
