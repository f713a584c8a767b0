"""Frames of the proxy's own in a live pump (R121, R124-R126): a Ping or a Close is put
between two frames, never inside one, however the frames are cut into reads.

Real sockets (socketpairs) on both ends of a `Pump`; the pump is driven by hand here
(``on_event``) so that each read takes exactly the bytes a test wrote, and the `Control`
is given its clock (``tick(now)``), so that no test sleeps. Whatever reaches an end is
read back with a strict frame parser: every frame whole, control frames short and
final, a masked frame toward the backend, nothing after a Close.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading

import pytest

from tests.support.waiting import wait_for
from tunnel.io.streams import EVENT_READ, EVENT_WRITE
from tunnel.protocol.frames import OP_CLOSE, OP_PING, build_frame
from tunnel.tunnels.pump import Pump, new_scratch
from tunnel.tunnels.sync_driver import run_sync
from tunnel.tunnels.wscontrol import CLOSE_GOING_AWAY, PING_PAYLOAD, attach

pytestmark = pytest.mark.timeout(60)

KEY = b"\x01\x02\x03\x04"


def parse(data: bytes) -> list[tuple[int, bool, bool, int, bytes]]:
    """Whole frames (opcode, fin, rsv1, mask key or 0 as int, unmasked payload); fails on
    a cut frame or a malformed control frame."""
    frames = []
    pos = 0
    while pos < len(data):
        assert len(data) - pos >= 2, f"a cut header at {pos}"
        b0, b1 = data[pos], data[pos + 1]
        length, pos = b1 & 0x7F, pos + 2
        if length == 126:
            (length,), pos = struct.unpack_from("!H", data, pos), pos + 2
        elif length == 127:
            (length,), pos = struct.unpack_from("!Q", data, pos), pos + 8
        key = b""
        if b1 & 0x80:
            key, pos = data[pos : pos + 4], pos + 4
        assert len(data) - pos >= length, f"a cut payload: {length} announced, {len(data) - pos} there"
        payload = data[pos : pos + length]
        pos += length
        if key:
            payload = bytes(b ^ key[i & 3] for i, b in enumerate(payload))
        opcode = b0 & 0x0F
        if opcode >= 8:
            assert b0 & 0x80 and length <= 125, "a control frame must be final and short"
        frames.append((opcode, bool(b0 & 0x80), bool(b0 & 0x40), int.from_bytes(key or b"\0\0\0\0", "big"), payload))
    return frames


class Rig:
    """client_app <-> [client end | Pump | backend end] <-> backend_app, all real sockets."""

    def __init__(self, *, ping_interval: float = 0.0) -> None:
        self.client_app, client_end = socket.socketpair()
        backend_end, self.backend_app = socket.socketpair()
        for s in (client_end, backend_end):
            s.setblocking(False)
        self.pump = Pump(client_end, backend_end)
        self.pump.track_frames()
        self.ctl = attach(self.pump, ping_interval=ping_interval)
        self.ctl.start(0.0)
        self.scratch = new_scratch()
        self.pump.start()

    def run(self) -> None:
        """Let the pump move everything that is there (reads and writes), until quiet."""
        for _ in range(10_000):
            moved = False
            for is_client, end in ((True, self.pump.client), (False, self.pump.backend)):
                cmask, bmask = self.pump.interest()
                mask = cmask if is_client else bmask
                ready = select.select([end] if mask & EVENT_READ else [], [end] if mask & EVENT_WRITE else [], [], 0)
                got = (EVENT_READ if ready[0] else 0) | (EVENT_WRITE if ready[1] else 0)
                if got:
                    self.pump.on_event(is_client, got, self.scratch)
                    moved = True
            self.ctl.after(0.0)
            if not moved or self.pump.done:
                return
        raise AssertionError("the pump never went quiet")

    def take(self, sock: socket.socket) -> bytes:
        """Everything that reaches ``sock``, the pump running while its buffers drain."""
        sock.setblocking(False)
        out = bytearray()
        while True:
            try:
                chunk = sock.recv(1 << 20)
            except BlockingIOError:
                before = self.pump.buffered
                self.run()
                if not before and not self.pump.buffered:
                    try:
                        chunk = sock.recv(1 << 20)
                    except BlockingIOError:
                        return bytes(out)
                continue
            if not chunk:
                return bytes(out)
            out += chunk

    def close(self) -> None:
        self.pump.abort("test over")
        self.pump.close()
        self.client_app.close()
        self.backend_app.close()


@pytest.fixture
def rig():
    made: list[Rig] = []

    def factory(**kw) -> Rig:
        made.append(Rig(**kw))
        return made[-1]

    yield factory
    for r in made:
        r.close()


FRAMES = {
    "7-bit length": build_frame(0x2, b"x" * 100),
    "16-bit length": build_frame(0x1, b"y" * 300),
    "64-bit length": build_frame(0x2, b"z" * 70_000),
    "empty": build_frame(0x2, b""),
    "deflated (RSV1)": bytes([0xC1]) + build_frame(0x1, b"\xf2\x48\xcd\xc9\xc9\x07\x00")[1:],
}


@pytest.mark.parametrize("name", sorted(FRAMES))
def test_a_ping_to_the_client_waits_for_the_frame_cut_at_every_header_byte(rig, name):
    """The backend's frame arrives cut after each of its header bytes (and one payload
    byte); the ping due then goes out only after the whole frame, before the next."""
    frame, after = FRAMES[name], build_frame(0x1, b"next")
    header_len = 2 + {126: 2, 127: 8}.get(frame[1] & 0x7F, 0)
    for cut in range(1, header_len + 2):
        r = rig(ping_interval=1.0)
        r.backend_app.sendall(frame[:cut])
        r.run()
        r.ctl.tick(1.0)  # the client has been silent an interval: a ping is due to it
        r.run()
        r.backend_app.sendall(frame[cut:] + after)
        r.run()
        got = parse(r.take(r.client_app))
        assert [f[0] for f in got] == [frame[0] & 0x0F, OP_PING, 0x1], (name, cut)
        assert got[1][4] == PING_PAYLOAD and got[1][3] == 0  # toward a client: not masked
        assert got[0][2] == bool(frame[0] & 0x40)  # RSV1 (deflate) passed as it was
        r.close()


def test_a_ping_between_the_fragments_of_a_message(rig):
    """Control frames may stand between fragments (RFC 6455 §5.4): a ping due inside the
    middle fragment goes at its end, and the message goes on whole."""
    r = rig(ping_interval=1.0)
    first, middle, last = (build_frame(0x1, b"ab", fin=False), build_frame(0x0, b"cd", fin=False), build_frame(0x0, b"ef"))
    r.backend_app.sendall(first + middle[:3])
    r.run()
    r.ctl.tick(1.0)
    r.run()
    r.backend_app.sendall(middle[3:] + last)
    r.run()
    got = parse(r.take(r.client_app))
    assert [(op, fin) for op, fin, *_ in got] == [(0x1, False), (0x0, False), (OP_PING, True), (0x0, True)]
    assert b"".join(p for op, _, _, _, p in got if op < 8) == b"abcdef"


def test_a_ping_to_the_backend_is_masked_and_its_pong_passes(rig):
    r = rig(ping_interval=1.0)
    r.client_app.sendall(build_frame(0x1, b"hello", mask=KEY))
    r.run()
    r.ctl.tick(0.5)  # the backend silent since 0 (its last byte): not yet
    r.ctl.tick(1.0)  # now an interval: ping both (the client spoke at 0 too: silent since)
    r.run()
    to_backend = parse(r.take(r.backend_app))
    assert [f[0] for f in to_backend] == [0x1, OP_PING]
    assert to_backend[1][3] != 0 and to_backend[1][4] == PING_PAYLOAD  # masked, as a client's frames
    # The backend answers: its Pong goes on to the client (an unsolicited Pong is allowed).
    r.backend_app.sendall(build_frame(0xA, PING_PAYLOAD))
    r.run()
    assert [f[0] for f in parse(r.take(r.client_app))] == [0xA]
    r.ctl.tick(2.1)
    assert not r.pump.done  # it answered: alive


def test_a_peer_that_never_answers_is_a_dead_peer_after_two_intervals(rig):
    r = rig(ping_interval=1.0)
    r.ctl.tick(1.0)  # both silent: pinged
    r.run()
    r.backend_app.sendall(build_frame(0xA, PING_PAYLOAD))  # only the backend answers
    r.run()
    r.ctl.tick(1.5)
    assert not r.ctl.closing
    r.ctl.tick(2.0)  # the client sent nothing within one more interval
    r.run()
    assert r.ctl.closing and "dead peer: the client" in r.ctl.reason
    to_backend = parse(r.take(r.backend_app))
    assert to_backend[-1][0] == OP_CLOSE and struct.unpack("!H", to_backend[-1][4][:2])[0] == CLOSE_GOING_AWAY
    r.backend_app.sendall(build_frame(OP_CLOSE, struct.pack("!H", 1001)))  # its answer
    r.run()
    assert r.pump.done and r.pump.reason.startswith("dead peer: the client sent nothing")


def test_going_away_mid_frame_then_nothing_follows_the_close(rig):
    r = rig()
    big = build_frame(0x2, os.urandom(50_000))
    r.backend_app.sendall(big[:1000])
    r.run()
    r.ctl.going_away(0.0)
    r.run()
    r.backend_app.sendall(big[1000:] + build_frame(0x1, b"after the close"))
    r.run()
    to_client = parse(r.take(r.client_app))
    assert [f[0] for f in to_client] == [0x2, OP_CLOSE]  # the frame whole, then the Close: nothing after
    assert to_client[0][4] == big[-50_000:]
    code = struct.unpack("!H", to_client[1][4][:2])[0]
    assert code == CLOSE_GOING_AWAY and to_client[1][4][2:] == b"going away"
    to_backend = parse(r.take(r.backend_app))
    assert [f[0] for f in to_backend] == [OP_CLOSE] and to_backend[0][3] != 0  # masked
    # Both answer; the proxy reads the answers and ends the tunnel.
    r.client_app.sendall(build_frame(OP_CLOSE, struct.pack("!H", 1001), mask=KEY))
    r.backend_app.sendall(build_frame(OP_CLOSE, struct.pack("!H", 1001)))
    r.run()
    assert r.pump.done and r.pump.reason == "graceful stop: closed with 1001"
    assert r.take(r.backend_app) == b""  # the client's answer is not passed on


def test_no_close_of_ours_once_a_close_handshake_is_under_way(rig):
    r = rig()
    r.client_app.sendall(build_frame(OP_CLOSE, struct.pack("!H", 1000), mask=KEY))
    r.run()
    r.ctl.going_away(0.0)
    r.run()
    assert not r.ctl.closing
    assert [f[0] for f in parse(r.take(r.backend_app))] == [OP_CLOSE]  # the client's only


def test_a_close_asked_inside_a_16_mib_frame_waits_for_its_end():
    """A 16 MiB frame streams through the sync driver in many reads; a graceful close is
    asked (as the engine does: ``pump.close_at`` and a pipe its poll watches) once the
    client has 1 MiB of it. The client gets the whole frame, then Close 1001, nothing
    after; the backend gets a masked Close."""
    client_app, client_end = socket.socketpair()
    backend_end, backend_app = socket.socketpair()
    for s in (client_end, backend_end):
        s.setblocking(False)
    wake_r, wake_w = os.pipe()
    pump = Pump(client_end, backend_end)
    pump.track_frames()
    payloads = [os.urandom(16 << 20), b"small", os.urandom(100_000)]
    stream = b"".join(build_frame(0x2, p) for p in payloads)
    to_client = bytearray()
    to_backend = bytearray()

    def backend() -> None:
        view = memoryview(stream)
        try:
            for i in range(0, len(view), 65_521):  # a prime step: cuts fall everywhere
                backend_app.sendall(view[i : i + 65_521])
        except OSError:
            return  # the proxy closed us after the close handshake: no more to send
        while chunk := backend_app.recv(1 << 16):
            to_backend.extend(chunk)
            if to_backend[:1] == b"\x88":
                backend_app.sendall(build_frame(OP_CLOSE, struct.pack("!H", 1001)))

    def client() -> None:
        asked = False
        while chunk := client_app.recv(1 << 20):
            to_client.extend(chunk)
            if not asked and len(to_client) > 1 << 20:
                asked = True
                pump.close_at = 1.0  # long past: at once
                os.write(wake_w, b"!")
            if to_client.endswith(b"going away"):
                client_app.sendall(build_frame(OP_CLOSE, struct.pack("!H", 1001), mask=KEY))

    threads = [threading.Thread(target=backend), threading.Thread(target=client)]
    for t in threads:
        t.start()
    try:
        assert run_sync(pump, wake_fd=wake_r) is True
        pump.close()
    finally:
        pump.close()
        for t in threads:
            t.join(30)
        client_app.close()
        backend_app.close()
        os.close(wake_r)
        os.close(wake_w)
    assert pump.reason == "graceful stop: closed with 1001"
    frames = parse(bytes(to_client))
    assert [f[0] for f in frames] == [0x2, OP_CLOSE]
    assert frames[0][4] == payloads[0]
    close = parse(bytes(to_backend))
    assert [f[0] for f in close] == [OP_CLOSE] and close[0][3] != 0


@pytest.mark.parametrize(
    "garbage",
    [b"abcdefgh", build_frame(0x1, b"not masked"), build_frame(0x3, b"reserved opcode", mask=KEY), bytes([0x09, 0x80]) + KEY],
    ids=["bytes", "unmasked client frame", "reserved opcode", "fragmented ping"],
)
def test_a_stream_that_is_not_websocket_never_gets_a_frame_of_ours(rig, garbage):
    """The followers are strict: once the client's bytes break RFC 6455, no Close and
    no Ping of the proxy's goes into the tunnel (it is not WebSocket after all)."""
    r = rig(ping_interval=1.0)
    r.client_app.sendall(garbage)
    r.run()
    assert r.pump.c2b.frames.broken
    r.ctl.going_away(0.0)
    r.ctl.tick(5.0)
    r.ctl.tick(10.0)
    r.run()
    assert not r.ctl.closing and not r.pump.done
    assert r.take(r.client_app) == b""
    assert r.take(r.backend_app) == garbage


@pytest.mark.parametrize("name", sorted(FRAMES))
def test_an_operators_close_waits_for_the_frame_each_way_and_carries_its_code(rig, name):
    """``tunnel ctl close`` (R161): asked with a frame cut at its header's second byte in
    both directions, the Close of the operator's code and reason follows each frame."""
    r = rig()
    frame = FRAMES[name]
    client_frame = build_frame(frame[0] & 0x0F, b"c" * 200, mask=KEY)
    r.backend_app.sendall(frame[:2])
    r.client_app.sendall(client_frame[:2])
    r.run()
    assert r.ctl.close_with(0.0, 4000, "maintenance") is True
    assert r.ctl.close_with(0.0, 4001, "again") is False  # one close at a time
    r.run()
    r.backend_app.sendall(frame[2:] + build_frame(0x1, b"after the close"))
    r.client_app.sendall(client_frame[2:])
    r.run()
    to_client = parse(r.take(r.client_app))
    assert [f[0] for f in to_client] == [frame[0] & 0x0F, OP_CLOSE]
    assert to_client[1][4] == struct.pack("!H", 4000) + b"maintenance"
    to_backend = parse(r.take(r.backend_app))
    assert [f[0] for f in to_backend] == [frame[0] & 0x0F, OP_CLOSE] and to_backend[1][3] != 0  # masked
    r.client_app.sendall(build_frame(OP_CLOSE, struct.pack("!H", 4000), mask=KEY))
    r.backend_app.sendall(build_frame(OP_CLOSE, struct.pack("!H", 4000)))
    r.run()
    assert r.pump.done and r.pump.reason == "closed by ctl: 4000 maintenance"


def recv_n(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, f"EOF after {len(out)} of {n} bytes"
        out += chunk
    return out


def test_a_sync_tunnel_is_woken_for_an_operators_close():
    """The sync driver's `Waker`: another thread sets ``pump.asked_close`` and wakes it;
    the Close goes out at once on an idle tunnel, and the tunnel ends on the answers."""
    client_app, client_end = socket.socketpair()
    backend_end, backend_app = socket.socketpair()
    for s in (client_end, backend_end):
        s.setblocking(False)
    pump = Pump(client_end, backend_end)
    pump.track_frames()
    result: list[bool] = []
    driver = threading.Thread(target=lambda: result.append(run_sync(pump)))
    driver.start()
    try:
        wait_for(lambda: pump.waker is not None, what="the driver's waker")
        pump.asked_close = (3000, "bye")
        pump.waker.wake()
        client_app.settimeout(10)
        backend_app.settimeout(10)
        expected = struct.pack("!H", 3000) + b"bye"
        assert parse(recv_n(client_app, 2 + len(expected))) == [(OP_CLOSE, True, False, 0, expected)]
        got = parse(recv_n(backend_app, 2 + 4 + len(expected)))
        assert [f[0] for f in got] == [OP_CLOSE] and got[0][4] == expected and got[0][3] != 0
        client_app.sendall(build_frame(OP_CLOSE, expected, mask=KEY))
        backend_app.sendall(build_frame(OP_CLOSE, expected))
        driver.join(10)
        assert result == [True] and pump.reason == "closed by ctl: 3000 bye"
        assert pump.waker is None  # closed with the tunnel
    finally:
        pump.abort("test over")
        driver.join(10)
        pump.close()
        client_app.close()
        backend_app.close()
