"""io/heldio.py: a plain socket's reads and sends through libc with the GIL held, with
the socket methods' results and exceptions, over real socket pairs."""

from __future__ import annotations

import mmap
import socket

import pytest

from tunnel.io.heldio import AVAILABLE, HeldSocket, held_socket, pointer_to
from tunnel.io.tls import TLSStream

pytestmark = [pytest.mark.timeout(10), pytest.mark.skipif(not AVAILABLE, reason="no libc to call")]


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    yield HeldSocket(a), b
    a.close()
    b.close()


def test_reads_into_a_scratch_view_and_sends_every_buffer_kind(pair):
    held, peer = pair
    scratch = memoryview(mmap.mmap(-1, 4096))
    peer.sendall(b"hello")
    assert held.recv_into(scratch) == 5 and bytes(scratch[:5]) == b"hello"
    assert held.recv_into(scratch[:0]) == 0
    for data in (b"bytes", bytearray(b"array"), scratch[:5], memoryview(b"read-only")):
        n = held.send(data)
        assert n == len(data)
        assert peer.recv(100) == bytes(data)
    assert held.send(b"") == 0


def test_nothing_to_read_is_blocking_io_error(pair):
    held, _ = pair
    with pytest.raises(BlockingIOError):
        held.recv_into(bytearray(10))


def test_eof_reads_zero_and_a_reset_is_connection_reset(pair):
    held, peer = pair
    peer.shutdown(socket.SHUT_WR)
    assert held.recv_into(bytearray(10)) == 0
    a, b = socket.socketpair()
    a.setblocking(False)
    h = HeldSocket(a)
    b.close()
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        h.send(b"to nobody")
    a.close()


def test_a_full_socket_buffer_is_blocking_io_error_not_a_short_hang(pair):
    held, _ = pair
    chunk = bytearray(1 << 16)
    with pytest.raises(BlockingIOError):
        for _ in range(10_000):
            held.send(chunk)


def test_only_plain_sockets_are_wrapped(pair):
    _, peer = pair
    assert isinstance(held_socket(peer), HeldSocket)
    assert held_socket(held_socket) is held_socket  # anything else: itself
    assert not isinstance(held_socket(object.__new__(TLSStream)), HeldSocket)


def test_a_buffer_longer_than_a_c_int_reads_and_sends_in_part(pair):
    held, peer = pair
    huge = memoryview(mmap.mmap(-1, (1 << 31) + 4096))  # address space only: untouched pages
    peer.sendall(b"hello")
    assert held.recv_into(huge) == 5 and bytes(huge[:5]) == b"hello"
    n = held.send(huge)  # a partial send of what fits the socket's buffer, as socket.send
    assert 0 < n < len(huge)
    got = 0
    peer.setblocking(False)
    while got < n:
        got += len(peer.recv(1 << 20))
    assert got == n


def test_a_pointer_handed_in_with_its_buffer_is_where_reads_land(pair):
    held, peer = pair
    sock = held.sock
    scratch = memoryview(mmap.mmap(-1, 4096))
    given = HeldSocket(sock, scratch, pointer_to(scratch))
    peer.sendall(b"into the scratch")
    assert given.recv_into(scratch) == 16 and bytes(scratch[:16]) == b"into the scratch"
    other = bytearray(32)  # any other buffer: its own pointer, as before
    peer.sendall(b"elsewhere")
    assert given.recv_into(other) == 9 and bytes(other[:9]) == b"elsewhere"
