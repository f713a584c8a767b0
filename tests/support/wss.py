"""A blocking wss:// client for tests, on websockets' asyncio implementation.

Why not ``websockets.sync.client`` over TLS: its reader thread and the caller's thread
share one ``ssl.SSLSocket``. Seen here about once in 500 connections on a loaded
machine: the TLS handshake completes, the reader thread is inside ``recv`` (the server's
TLS 1.3 session tickets), and the upgrade request never leaves the client (``ss`` showed
the client had sent only its handshake bytes while the proxy waited, correctly, for a
request head). The asyncio client drives the socket from one thread, so it cannot.
Plain ws:// tests keep the sync client.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from types import TracebackType
from typing import Optional, Union

from websockets.asyncio.client import ClientConnection, connect

Message = Union[str, bytes]


class wss_connect:  # noqa: N801 - used like websockets' connect()
    """``with wss_connect(url, ssl=ctx) as ws: ws.send(...); ws.recv(timeout=...)``."""

    def __init__(self, url: str, *, ssl: ssl.SSLContext, open_timeout: float = 10, max_size: Optional[int] = 2**20) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="wss-client", daemon=True)
        self._thread.start()

        async def open_it() -> ClientConnection:
            return await connect(url, ssl=ssl, open_timeout=open_timeout, max_size=max_size)

        try:
            self._ws = self._run(open_it(), open_timeout + 5)
        except BaseException:
            self._stop()
            raise

    def _run(self, coro, timeout: float):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def send(self, message: Message) -> None:
        self._run(self._ws.send(message), 15)

    def recv(self, timeout: float = 10) -> Message:
        return self._run(asyncio.wait_for(self._ws.recv(), timeout), timeout + 5)

    def close(self) -> None:
        try:
            self._run(self._ws.close(), 15)
        finally:
            self._stop()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> wss_connect:
        return self

    def __exit__(self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        self.close()
