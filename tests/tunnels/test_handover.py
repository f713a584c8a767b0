"""A live tunnel frozen, its sockets sent over SCM_RIGHTS, thawed and driven on (R156,
R157): real TCP sockets and a real unix socket pair; the two "processes" are two pumps
in this one, so every byte can be compared."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from tunnel.io.fdchannel import Channel, ChannelClosed
from tunnel.protocol.frames import build_frame
from tunnel.tunnels.handover import HandoverError, Parker, freeze, movable, thaw
from tunnel.tunnels.pump import FlowState, Pump, new_scratch
from tunnel.tunnels.sync_driver import run_sync
from tunnel.tunnels.wscontrol import attach

EVENT_READ, EVENT_WRITE = 1, 2


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        a = socket.create_connection(lsock.getsockname())
        b, _ = lsock.accept()
    return a, b


def tunnel() -> tuple[socket.socket, socket.socket, Pump]:
    """client <-> [proxy client end, proxy backend end] <-> backend"""
    client, pc = tcp_pair()
    pb, backend = tcp_pair()
    for s in (pc, pb):
        s.setblocking(False)
    backend.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    pb.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)  # small buffers: the proxy backs up soon
    return client, backend, Pump(pc, pb, websocket=True, high_water=64 * 1024)


def pump_until(pump: Pump, rounds: int = 200) -> None:
    scratch = new_scratch()
    for _ in range(rounds):
        pump.on_event(True, EVENT_READ | EVENT_WRITE, scratch)
        pump.on_event(False, EVENT_READ | EVENT_WRITE, scratch)


def test_a_tunnel_moves_with_its_pending_bytes_frames_and_timers():
    client, backend, pump = tunnel()
    ctl = attach(pump, ping_interval=30.0, half_close=5.0)
    ctl.start(1000.0)
    frame = build_frame(0x2, b"a" * 50000, mask=b"\0\0\0\0")
    sent = b""
    client.setblocking(False)
    for _ in range(200):  # the backend reads nothing: bytes pile up in the proxy
        try:
            sent += frame[: client.send(frame)]
        except BlockingIOError:
            pass
        pump_until(pump, 3)
        if pump.c2b.pending_len >= pump.high_water:
            break
    assert pump.c2b.pending_len > 0
    pump.last_activity = 1234.5
    state, blobs = freeze(pump)
    assert movable(pump)
    # Over the channel, as between two processes.
    a, b = socket.socketpair()
    old_end, new_end = Channel(a), Channel(b)
    old_end.send({"op": "tunnels", "tunnels": [state]}, blobs, [pump.client.fileno(), pump.backend.fileno()])
    message, got_blobs, fds = new_end.recv()
    pump.close()  # the old copies, as once the new process acknowledged
    moved = thaw(message["tunnels"][0], got_blobs, socket.socket(fileno=fds[0]), socket.socket(fileno=fds[1]))
    for sock in (moved.client, moved.backend):
        sock.setblocking(False)
    assert moved.c2b.pending_len == pump.c2b.pending_len and moved.c2b.count == pump.c2b.count
    assert moved.last_activity == 1234.5
    assert moved.c2b.frames is not None and moved.c2b.frames.state() == pump.c2b.frames.state()
    assert moved.ctl is not None and moved.ctl.next_due == ctl.next_due and moved.ctl._silent_since == [1000.0, 1000.0]
    # Driven on: the backend reads everything the client sent, once.
    client.setblocking(True)
    client.shutdown(socket.SHUT_WR)
    received = b""
    backend.settimeout(0.05)
    for _ in range(20000):
        pump_until(moved, 2)
        try:
            chunk = backend.recv(1 << 16)
        except TimeoutError:
            continue
        if not chunk:
            break
        received += chunk
    assert received == sent
    assert moved.c2b.state is FlowState.SHUT_WR and moved.c2b.frames.at_boundary
    for s in (client, backend, a, b):
        s.close()
    moved.close()


def test_a_state_that_is_not_a_tunnels_is_refused():
    client, backend, pump = tunnel()
    state, blobs = freeze(pump)
    state["c2b"]["state"] = "sideways"
    with pytest.raises(HandoverError):
        thaw(state, blobs, pump.client, pump.backend)
    pump.close()
    client.close()
    backend.close()


def test_a_held_sync_tunnel_is_given_back_between_two_events():
    client, backend, pump = tunnel()
    parker = Parker()
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(run_sync(pump, parker=parker)), daemon=True)
    thread.start()
    client.sendall(b"\x82\x80\0\0\0\0")  # an empty masked frame: relayed by the thread
    assert backend.recv(100) == b"\x82\x80\0\0\0\0"
    pump.hold = True
    parker.begin()
    thread.join(5)
    assert result == [False] and not pump.done  # given back open, nothing closed
    client.sendall(b"more")
    backend.settimeout(0.2)
    with pytest.raises(TimeoutError):
        backend.recv(10)  # nobody drives it now
    parker.end()
    pump.hold = False
    again = threading.Thread(target=lambda: result.append(run_sync(pump, parker=parker, fresh=False, restored=True)), daemon=True)
    again.start()
    backend.settimeout(5)
    assert backend.recv(10) == b"more"
    client.close()
    backend.close()
    again.join(5)
    assert result == [False, True]
    pump.close()
    parker.close()


def test_the_channel_says_when_the_other_side_is_gone():
    a, b = socket.socketpair()
    r, w = os.pipe()
    Channel(a).send({"op": "x"}, [b"blob"], [r])
    message, blobs, fds = Channel(b).recv()
    assert message["op"] == "x" and blobs == [b"blob"] and len(fds) == 1
    os.write(w, b"!")
    assert os.read(fds[0], 1) == b"!"  # the same pipe, through the new descriptor
    for fd in (r, w, fds[0]):
        os.close(fd)
    a.close()
    with pytest.raises(ChannelClosed):
        Channel(b).recv()
    b.close()


def test_a_detached_tunnel_leaves_the_kernels_epoll_set():
    """A tunnel a binary upgrade moves: its sockets live on in the new process (SCM_RIGHTS
    shares the file description), so closing this process's copies would not take them
    out of this loop's epoll set; detach must, or their events keep waking the old loop."""
    import select as select_module
    import socket as socket_module

    from tunnel.io.loop import Loop
    from tunnel.tunnels.async_driver import AsyncTunnel
    from tunnel.tunnels.pump import Pump, new_scratch

    epoll = select_module.epoll()
    loop = Loop(epoll)
    a, a_peer = socket_module.socketpair()
    b, b_peer = socket_module.socketpair()
    for s in (a, b):
        s.setblocking(False)
    tunnel = AsyncTunnel(loop, Pump(a, b), new_scratch())
    tunnel.start()
    kept = [socket_module.socket(fileno=os.dup(s.fileno())) for s in (a, b)]  # the other process's copies
    tunnel.detach()
    for s in (a, b):
        with pytest.raises(FileNotFoundError):  # ENOENT: not in the set any more
            epoll.modify(s.fileno(), select_module.EPOLLIN)
        s.close()
    a_peer.send(b"after the hand-over")
    assert epoll.poll(0.05) == []  # nothing wakes this loop for the moved sockets
    loop.close()
    for s in (*kept, a_peer, b_peer):
        s.close()
