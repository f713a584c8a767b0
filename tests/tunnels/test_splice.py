"""tunnels/splicing.py through the pump with real TCP connections on a real loop: a bulk
flow of plain sockets moves through a pipe (no copy into the process), keeps every byte
in order whatever the receiver's pace, counts them, half-closes, and releases its pipe;
a WebSocket stream's last bytes are still copied, so a Close at its end is seen (R98);
flows that need their bytes (a global cap, frame followers) never splice."""

from __future__ import annotations

import os
import socket

import pytest

from tests.support.waiting import run_loop_until as run_until
from tunnel.io.loop import Loop
from tunnel.protocol.frames import close_frame
from tunnel.tunnels import splicing
from tunnel.tunnels.async_driver import AsyncTunnel
from tunnel.tunnels.handover import freeze
from tunnel.tunnels.pump import Budget, FlowState, Pump, new_scratch

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not splicing.AVAILABLE, reason="no os.splice on this system"),
]


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        a = socket.create_connection(srv.getsockname())
        b, _ = srv.accept()
    return a, b


class Rig:
    """client_peer <-> [client | tunnel | backend] <-> backend_peer, all TCP."""

    def __init__(self, **pump_args) -> None:
        self.loop = Loop()
        self.client_peer, client = tcp_pair()
        backend, self.backend_peer = tcp_pair()
        for s in (client, backend, self.client_peer, self.backend_peer):
            s.setblocking(False)
        self.ended: list[Pump] = []
        self.pump = Pump(client, backend, **pump_args)
        self.tunnel = AsyncTunnel(self.loop, self.pump, new_scratch(), on_close=self.ended.append)
        self.tunnel.start()
        self.saw_pipe = False

    def move(self, data: bytes, *, up: bool = True, slow_until: int = 0, then_close: bool = False) -> bytes:
        """Send ``data`` one way through the tunnel; the receiver reads 4 KiB per look
        until ``slow_until`` bytes came (a slow peer), then all it can."""
        src, dst = (self.client_peer, self.backend_peer) if up else (self.backend_peer, self.client_peer)
        flow = self.pump.c2b if up else self.pump.b2c
        sent = 0
        got = bytearray()
        eof = False

        def step() -> bool:
            nonlocal sent, eof
            if sent < len(data):
                try:
                    sent += src.send(data[sent : sent + (1 << 20)])
                except BlockingIOError:
                    pass
                if sent == len(data) and then_close:
                    src.shutdown(socket.SHUT_WR)
            self.saw_pipe = self.saw_pipe or flow.pipe is not None
            try:
                while True:
                    chunk = dst.recv(4096 if len(got) < slow_until else 1 << 20)
                    if not chunk:
                        eof = True
                        break
                    got.extend(chunk)
                    if len(got) < slow_until:
                        break
            except BlockingIOError:
                pass
            return len(got) == len(data) and (eof or not then_close)

        run_until(self.loop, step, timeout=30)
        return bytes(got)

    def close(self) -> None:
        self.pump.abort("test over")
        self.pump.close()
        self.loop.close()
        for s in (self.client_peer, self.backend_peer):
            s.close()


@pytest.fixture
def rig():
    made: list[Rig] = []

    def make(**kw) -> Rig:
        made.append(Rig(**kw))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.mark.parametrize("up", [True, False])
def test_a_bulk_flow_splices_every_byte_in_order_and_releases_its_pipe(rig, up):
    r = rig()
    data = os.urandom(8 << 20)
    assert r.move(data, up=up, slow_until=1 << 20, then_close=True) == data  # a slow start: backpressure
    assert r.saw_pipe  # it went through a pipe
    flow = r.pump.c2b if up else r.pump.b2c
    assert flow.count == len(data) and flow.state is FlowState.SHUT_WR
    assert flow.pipe is None  # EOF gave the pipe back
    back = os.urandom(300_000)
    assert r.move(back, up=not up, then_close=True) == back  # the other way, still open
    run_until(r.loop, lambda: bool(r.ended))
    assert r.ended[0].reason == "eof" and splicing.live_pipes() == 0


def test_small_messages_after_a_bulk_burst_are_copied_and_the_pipe_is_released(rig):
    r = rig()
    burst = os.urandom(4 << 20)
    assert r.move(burst) == burst and r.saw_pipe
    for i in range(5):
        msg = b"small %d" % i
        assert r.move(msg) == msg
    assert r.pump.c2b.pipe is None and r.pump.c2b.count == len(burst) + 5 * 7


def test_a_websocket_stream_ending_with_a_close_still_shows_it(rig):
    """Without frame tracking the tail of the last read tells a reset after the close
    handshake from an error (R98): a spliced bulk flow copies its last bytes."""
    r = rig(close_watch=True)
    r.pump.close_watch = True  # a websocket tunnel whose frames are not followed
    assert r.move(close_frame(1000, mask=b"abcd")) == close_frame(1000, mask=b"abcd")
    payload = os.urandom((3 << 20) - 4096) + close_frame(1000)  # the Close inside the last big send
    assert r.move(payload, up=False) == payload and r.saw_pipe
    assert r.pump.b2c.last is not None and r.pump.b2c.last.endswith(close_frame(1000))
    assert r.pump.close_handshake_done


def test_the_pipe_count_is_bounded(rig, monkeypatch):
    monkeypatch.setattr(splicing, "MAX_PIPES", 0)
    r = rig()
    data = os.urandom(2 << 20)
    assert r.move(data) == data and not r.saw_pipe  # copied, as before splicing existed


def test_flows_that_need_their_bytes_never_splice(rig):
    capped = rig(budget=Budget(1 << 30))
    data = os.urandom(2 << 20)
    assert capped.move(data) == data and not capped.saw_pipe
    followed = rig(websocket=True)
    frames = b"".join(b"\x82\x7e\xff\xff" + bytes(65535) for _ in range(40))  # unmasked, from the backend
    assert followed.move(frames, up=False) == frames and not followed.saw_pipe
    assert followed.pump.b2c.frames is not None and followed.pump.b2c.frames.frames == 40


def test_a_hand_over_takes_no_pipe_along(rig):
    r = rig()
    data = os.urandom(2 << 20)
    assert r.move(data) == data
    assert r.pump.c2b.pipe is not None and splicing.live_pipes() == 1  # a bulk flow keeps it between events
    r.tunnel.detach()
    state, blobs = freeze(r.pump)
    assert r.pump.c2b.pipe is None and splicing.live_pipes() == 0
    assert state["c2b"]["count"] == len(data) and blobs == []


def test_the_splice_chunk_is_one_pipe_full():
    pipe = splicing.open_pipe()
    assert pipe is not None
    try:
        import fcntl

        assert fcntl.fcntl(pipe[1], fcntl.F_GETPIPE_SZ) >= splicing.SPLICE_CHUNK or os.geteuid() != 0
    finally:
        splicing.close_pipe(pipe)
    assert splicing.live_pipes() == 0
