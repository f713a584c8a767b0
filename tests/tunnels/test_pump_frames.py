"""tunnels/pump.py on a websocket tunnel: the frame followers see what passes (early
bytes too), and a reset after the close handshake is a normal end (R98), driven sans-IO
with the in-memory endpoints of test_pump."""

from __future__ import annotations

import pytest

from tests.tunnels.test_pump import EOF_MARK, MemEnd, drive
from tunnel.protocol.frames import build_frame, close_frame
from tunnel.tunnels.pump import FlowState, Pump, new_scratch

pytestmark = pytest.mark.timeout(30)

MASK = b"\x11\x22\x33\x44"
RESET = ConnectionResetError(104, "Connection reset by peer")


def open_ends(window: int = 1 << 20) -> tuple[MemEnd, MemEnd]:
    c, b = MemEnd(), MemEnd()
    c.window = b.window = window
    return c, b


def test_followers_count_frames_and_early_bytes():
    c, b = open_ends()
    hello = build_frame(1, b"hi", mask=MASK)
    pump = Pump(c, b, to_backend=hello, to_client=build_frame(1, b"welcome"), websocket=True)
    assert (pump.c2b.count, pump.b2c.count) == (len(hello), 9)  # the early bytes are counted (R99)
    pump.start()
    c.inbox.append(build_frame(2, b"x" * 1000, mask=MASK)[:500])  # a frame cut in two reads
    drive(pump, new_scratch(4096))
    assert pump.c2b.frames.frames == 1 and not pump.c2b.frames.at_boundary
    c.inbox.append(build_frame(2, b"x" * 1000, mask=MASK)[500:])
    drive(pump, new_scratch(4096))
    assert pump.c2b.frames.frames == 2 and pump.c2b.frames.at_boundary
    assert pump.b2c.frames.frames == 1 and not pump.close_handshake_done


def test_a_plain_tunnel_has_no_followers():
    c, b = open_ends()
    pump = Pump(c, b)
    assert pump.c2b.frames is None and pump.b2c.frames is None and not pump.close_handshake_done


@pytest.mark.parametrize("who", ["backend", "client"])
def test_reset_after_the_close_handshake_is_a_normal_end(who):
    c, b = open_ends()
    pump = Pump(c, b, websocket=True)
    scratch = new_scratch(4096)
    c.inbox.append(close_frame(1000, mask=MASK))
    drive(pump, scratch)
    assert bytes(b.received) == close_frame(1000, mask=MASK)
    peer, other = (b, c) if who == "backend" else (c, b)
    b.inbox.append(close_frame(1000))
    drive(pump, scratch)
    assert pump.close_handshake_done and not pump.done
    peer.inbox.append(RESET)
    drive(pump, scratch)
    assert pump.done and pump.reason == f"{who} reset after the close handshake"
    assert other.shut_wr  # an orderly end towards the other side
    assert bytes(c.received) == close_frame(1000)


def test_what_the_resetting_peer_sent_still_reaches_the_other_side():
    c, b = open_ends()
    pump = Pump(c, b, websocket=True)
    scratch = new_scratch(4096)
    c.inbox.append(close_frame(1001, mask=MASK))
    drive(pump, scratch)
    c.window = 0  # the client is slow: the backend's Close waits in the pump
    b.inbox.extend([close_frame(1001, "bye"), RESET])
    drive(pump, scratch)
    assert not pump.done and pump.b2c.pending_len == len(close_frame(1001, "bye"))
    assert pump.c2b.state is FlowState.CLOSED and pump.b2c.state is FlowState.EOF_READ
    c.window = 1 << 20
    drive(pump, scratch)
    assert bytes(c.received) == close_frame(1001, "bye") and c.shut_wr
    assert pump.done and pump.reason == "backend reset after the close handshake"


def test_a_send_error_towards_the_peer_after_the_handshake_is_normal_too():
    c, b = open_ends()
    pump = Pump(c, b, websocket=True)
    scratch = new_scratch(4096)
    c.inbox.append(close_frame(mask=MASK))
    b.inbox.append(close_frame())
    drive(pump, scratch)
    b.shut_wr = True  # sending to it now fails with EPIPE
    c.inbox.append(b"late bytes")  # not WebSocket after a Close: nowhere to go
    drive(pump, scratch)
    assert pump.reason == "backend reset after the close handshake"
    b.inbox.append(EOF_MARK)
    drive(pump, scratch)
    assert pump.done and c.shut_wr


@pytest.mark.parametrize(
    "before",
    [
        [],  # no Close at all
        ["client"],  # only the client's Close: the handshake is not done
        ["backend"],
    ],
)
def test_a_reset_before_the_handshake_is_done_is_an_error(before):
    c, b = open_ends()
    pump = Pump(c, b, websocket=True)
    scratch = new_scratch(4096)
    if "client" in before:
        c.inbox.append(close_frame(mask=MASK))
    if "backend" in before:
        b.inbox.append(close_frame())
    drive(pump, scratch)
    b.inbox.append(RESET)
    drive(pump, scratch)
    assert pump.done and pump.reason == "error: read from backend: connection reset by peer"
    assert pump.c2b.state is FlowState.CLOSED and pump.b2c.state is FlowState.CLOSED


def test_a_reset_after_close_frames_on_a_plain_tunnel_is_an_error():
    c, b = open_ends()
    pump = Pump(c, b)  # not a websocket tunnel: nothing is followed
    scratch = new_scratch(4096)
    c.inbox.append(close_frame(mask=MASK))
    b.inbox.append(close_frame())
    drive(pump, scratch)
    b.inbox.append(RESET)
    drive(pump, scratch)
    assert pump.reason == "error: read from backend: connection reset by peer"
