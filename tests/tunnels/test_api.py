"""tunnels/api.py: relay_sockets between two socketpairs (bytes, half-close, idle
timeout, nothing left behind), and the deprecated ``tunnel.relay`` name for it."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from tests.support.clients import recv_exactly, recv_until_eof
from tests.support.resources import open_fds, thread_count
from tests.support.waiting import wait_for
from tunnel import relay_sockets as relay

pytestmark = pytest.mark.timeout(30)


def test_relay_between_socketpairs_moves_bytes_and_half_closes():
    fds = open_fds()
    threads = thread_count()
    a_user, a = socket.socketpair()
    b_user, b = socket.socketpair()
    result = {}
    t = threading.Thread(target=lambda: result.update(counts=relay(a, b)))
    t.start()
    up, down = os.urandom(300_000), os.urandom(200_000)
    a_user.sendall(up)
    a_user.shutdown(socket.SHUT_WR)
    assert recv_exactly(b_user, len(up)) == up
    assert recv_until_eof(b_user, initial=b"") == b""  # the half-close arrived
    b_user.sendall(down)
    b_user.shutdown(socket.SHUT_WR)
    assert recv_until_eof(a_user) == down
    t.join(5)
    assert result["counts"] == (len(up), len(down))
    a_user.close()
    b_user.close()
    assert open_fds() == fds
    wait_for(lambda: thread_count() <= threads, what="relay thread gone")


def test_relay_idle_timeout():
    a_user, a = socket.socketpair()
    b_user, b = socket.socketpair()
    assert relay(a, b, idle_timeout=0.05) == (0, 0)
    assert recv_until_eof(a_user) == b"" and recv_until_eof(b_user) == b""
    a_user.close()
    b_user.close()


def test_tunnel_relay_is_the_deprecated_name_of_relay_sockets():
    import tunnel

    with pytest.warns(DeprecationWarning, match=r"tunnel\.relay is deprecated; use tunnel\.relay_sockets") as caught:
        old = tunnel.relay
    assert old is tunnel.relay_sockets
    assert [w.filename for w in caught] == [__file__]  # the warning points at the caller's line
    with pytest.warns(DeprecationWarning, match=r"tunnel\.relay is deprecated"):
        from tunnel import relay as imported  # the from-import form warns too
    assert imported is tunnel.relay_sockets

    # And it relays: bytes both ways between two socketpairs, half-closes, counts.
    a_user, a = socket.socketpair()
    b_user, b = socket.socketpair()
    result = {}
    t = threading.Thread(target=lambda: result.update(counts=old(a, b)))
    t.start()
    try:
        a_user.sendall(b"through the old name")
        a_user.shutdown(socket.SHUT_WR)
        assert recv_until_eof(b_user) == b"through the old name"
        b_user.sendall(b"and back")
        b_user.shutdown(socket.SHUT_WR)
        assert recv_until_eof(a_user) == b"and back"
        t.join(5)
        assert not t.is_alive() and result["counts"] == (len(b"through the old name"), len(b"and back"))
    finally:
        a_user.close()
        b_user.close()
        t.join(5)
