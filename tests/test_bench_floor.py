"""bench/floor.py, the pure-Python floor of the benchmarks: its figures only mean
something if it relays correctly, so it is run here as its own process, both modes,
between real clients and real backends."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect

from tests.support.backends import Answering, HalfCloser
from tests.support.clients import read_head, recv_exactly, recv_until_eof, upgrade_request
from tests.support.processes import read_line_matching, stop
from tunnel.echo import EchoServer

pytestmark = pytest.mark.timeout(60)

FLOOR = Path(__file__).resolve().parent.parent / "bench" / "floor.py"


class Floor:
    def __init__(self, backend: tuple[str, int], mode: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(FLOOR), "--listen", "127.0.0.1:0", "--backend", f"{backend[0]}:{backend[1]}", "--mode", mode],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.address = ("127.0.0.1", int(read_line_matching(self.proc, r"^port (\d+)$").group(1)))

    def close(self) -> None:
        stop(self.proc)
        self.proc.stdout.close()  # type: ignore[union-attr]
        self.proc.stderr.close()  # type: ignore[union-attr]


@pytest.fixture(params=["async", "threads"])
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def floor_to(mode: str) -> Iterator[object]:
    made: list[Floor] = []

    def start(backend: tuple[str, int]) -> Floor:
        made.append(Floor(backend, mode))
        return made[-1]

    yield start
    for f in made:
        f.close()


def test_a_websocket_client_talks_to_an_echo_backend_through_it(floor_to, echo: EchoServer) -> None:
    f = floor_to(echo.address)
    for _ in range(2):  # a second tunnel too (threads: the first one's thread is reused)
        with connect(f"ws://{f.address[0]}:{f.address[1]}/", open_timeout=10) as ws:
            for text in ("hello", "x" * 70_000):
                ws.send(text)
                assert ws.recv(timeout=10) == text


def test_bytes_after_the_head_reach_the_backend_and_bulk_goes_both_ways_unchanged(floor_to, raw_echo: EchoServer) -> None:
    f = floor_to(raw_echo.address)
    payload = os.urandom(8 << 20)  # more than the socket buffers hold: short sends, EPOLLOUT
    with socket.create_connection(f.address, timeout=10) as sock:
        sock.sendall(upgrade_request() + b"early")  # one send: head and bytes after it
        head, rest = read_head(sock, timeout=10)
        assert head.startswith(b"HTTP/1.1 101")
        assert recv_exactly(sock, 5, initial=rest) == b"early"
        sender = threading.Thread(target=lambda: (sock.sendall(payload), sock.shutdown(socket.SHUT_WR)), daemon=True)
        sender.start()
        got = recv_until_eof(sock, timeout=30)  # the echo ends when our half-close has gone through
        sender.join(10)
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()


def test_each_end_of_file_is_a_half_close_the_other_way_still_flows(floor_to) -> None:
    with HalfCloser(b"from the backend") as backend:
        f = floor_to(backend.address)
        with socket.create_connection(f.address, timeout=10) as sock:
            sock.sendall(upgrade_request())
            head, rest = read_head(sock, timeout=10)
            assert head.startswith(b"HTTP/1.1 101")
            assert recv_until_eof(sock, initial=rest) == b"from the backend"  # the backend's FIN
            sock.sendall(b"after the backend ended")  # our direction is still open
            sock.shutdown(socket.SHUT_WR)
            assert backend.done.wait(10)
            assert sock.recv(1) == b""
        assert bytes(backend.got) == b"after the backend ended"


def test_an_answer_other_than_101_is_passed_on_and_the_connection_closed(floor_to) -> None:
    with Answering(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n") as backend:
        f = floor_to(backend.address)
        with socket.create_connection(f.address, timeout=10) as sock:
            sock.sendall(upgrade_request())
            assert recv_until_eof(sock) == b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"
