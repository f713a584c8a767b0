"""A client that does not take the 101 (R32): nothing HTTP may follow a 101 that is
partly out, so the connection just closes, with the backend's, and no 500 is written."""

from __future__ import annotations

import logging
import socket
import threading

import pytest

from tests.support.backends import Answering
from tests.support.clients import ACCEPT, upgrade_request

pytestmark = pytest.mark.timeout(30)


def test_a_101_the_client_does_not_take_closes_without_more_http(make_proxy, caplog):
    caplog.set_level(logging.INFO)
    big = "x" * 50_000  # more than the socket buffers below hold
    answer = (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {ACCEPT}\r\nX-Big: {big}\r\n\r\n"
    ).encode()
    backend = Answering(answer)
    try:
        engine = make_proxy(f"Timeout 1\nProxyPass / ws://127.0.0.1:{backend.port}/\n", start=False)
        client, server_side = socket.socketpair()
        with client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            server_side.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            client.sendall(upgrade_request())  # ... and then reads nothing while it is sent
            # No loop running: the calling thread serves the handshake (host-thread mode).
            served = threading.Thread(target=engine.handle, args=(server_side,), kwargs={"peer": "unix"})
            served.start()
            served.join(10)
            assert not served.is_alive(), "the handshake did not give up on the stalled client"
            client.settimeout(5)
            got = b""
            while chunk := client.recv(65536):
                got += chunk
        assert got.startswith(b"HTTP/1.1 101 ")
        assert len(got) < len(answer)  # it was cut short ...
        assert b"HTTP/1.1 5" not in got and b"internal error" not in got  # ... and nothing followed
        assert "did not take the 101" in caplog.text
        assert "Traceback" not in caplog.text
        assert engine.stats["tunnels.open"] == 0
    finally:
        backend.close()
