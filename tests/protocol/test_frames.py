"""protocol/frames.py, sans-IO: the frame-header follower finds exactly the frame
boundaries a whole-stream reference parser finds, for any chunking; the frame builders
make frames wsproto reads back."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Ping, Request, TextMessage
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import FrameProtocol, Opcode

from tunnel.protocol.frames import (
    OP_CLOSE,
    OP_PING,
    FrameFollower,
    build_frame,
    close_frame,
    close_problem,
    ping_frame,
)

pytestmark = pytest.mark.timeout(60)


def reference(stream: bytes) -> list[tuple[int, int]]:
    """Each whole frame of ``stream`` as (end offset, opcode): a plain whole-buffer parser."""
    out = []
    pos = 0
    while pos + 2 <= len(stream):
        opcode = stream[pos] & 0x0F
        masked = stream[pos + 1] & 0x80
        length = stream[pos + 1] & 0x7F
        at = pos + 2
        if length == 126:
            length = int.from_bytes(stream[at : at + 2], "big")
            at += 2
        elif length == 127:
            length = int.from_bytes(stream[at : at + 8], "big")
            at += 8
        if masked:
            at += 4
        end = at + length
        if end > len(stream):
            break
        out.append((end, opcode))
        pos = end
    return out


def follow(stream: bytes, cuts: list[int]) -> list[tuple[int, int, bool, bool]]:
    """Feed ``stream`` cut at ``cuts``; after each chunk: (offset, frames, at_boundary, close_seen)."""
    f = FrameFollower()
    seen = []
    last = 0
    view = memoryview(stream)
    for cut in [*sorted(set(cuts)), len(stream)]:
        if cut < last:
            continue
        f.feed(view[last:cut])
        last = cut
        seen.append((cut, f.frames, f.at_boundary, f.close_seen))
    return seen


def expected_at(frames: list[tuple[int, int]], offset: int) -> tuple[int, bool, bool]:
    done = [(end, op) for end, op in frames if end <= offset]
    boundary = offset == 0 or any(end == offset for end, _ in frames)
    return len(done), boundary, any(op == OP_CLOSE for _, op in done)


FRAME = st.tuples(
    st.sampled_from([0x0, 0x1, 0x2, 0x8, 0x9, 0xA]),
    st.one_of(st.integers(0, 130), st.sampled_from([125, 126, 127, 65535, 65536, 70000])),
    st.booleans(),  # masked
    st.booleans(),  # fin
    st.integers(0, 7),  # RSV bits (permessage-deflate sets RSV1): never looked at
)


def make_stream(specs) -> bytes:
    out = bytearray()
    for opcode, length, masked, fin, rsv in specs:
        if opcode >= 8:
            length, fin = min(length, 125), True
        frame = bytearray(build_frame(opcode, os.urandom(length), mask=os.urandom(4) if masked else None, fin=fin))
        frame[0] |= rsv << 4
        out += frame
    return bytes(out)


@settings(max_examples=300, deadline=None)
@given(specs=st.lists(FRAME, max_size=12), data=st.data())
def test_any_chunking_finds_the_reference_boundaries(specs, data):
    stream = make_stream(specs)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=40))
    frames = reference(stream)
    assert len(frames) == len(specs)
    for offset, count, boundary, close in follow(stream, cuts):
        assert (count, boundary, close) == expected_at(frames, offset), offset


def test_every_offset_of_a_mixed_stream_with_one_byte_chunks():
    stream = make_stream([(1, 5, True, True, 0), (2, 126, False, False, 4), (0, 65536, True, True, 0), (8, 2, True, True, 0), (9, 0, False, True, 0)])
    frames = reference(stream)
    for offset, count, boundary, close in follow(stream, list(range(len(stream)))):
        assert (count, boundary, close) == expected_at(frames, offset), offset


def test_random_chunkings_with_a_fixed_seed():
    rng = random.Random(6455)
    for _ in range(200):
        specs = [
            (rng.choice([0, 1, 2, 8, 9, 10]), rng.choice([0, 1, 125, 126, 200, 65535, 65536, 100000]), rng.random() < 0.5, True, rng.randrange(8))
            for _ in range(rng.randrange(1, 8))
        ]
        stream = make_stream(specs)
        cuts = [rng.randrange(len(stream) + 1) for _ in range(rng.randrange(0, 30))]
        frames = reference(stream)
        for offset, count, boundary, close in follow(stream, cuts):
            assert (count, boundary, close) == expected_at(frames, offset)


def _wsproto_pair(extensions=False):
    client = WSConnection(ConnectionType.CLIENT)
    server = WSConnection(ConnectionType.SERVER)
    exts = [PerMessageDeflate()] if extensions else []
    server.receive_data(client.send(Request(host="t", target="/", extensions=exts)))
    request = next(server.events())
    server_exts = [PerMessageDeflate()] if extensions else []
    client.receive_data(server.send(AcceptConnection(extensions=server_exts if request.extensions else [])))
    assert isinstance(next(client.events()), AcceptConnection)
    return client, server


@pytest.mark.parametrize("deflate", [False, True])
def test_streams_wsproto_writes_both_ways(deflate):
    """Frames as a real WebSocket library writes them (masked from the client; with
    permessage-deflate, compressed payloads with RSV1): counted frame by frame, close seen."""
    client, server = _wsproto_pair(deflate)
    up = client.send(TextMessage("hello" * 50)) + client.send(BytesMessage(os.urandom(70000))) + client.send(Ping(b"p"))
    up += client.send(TextMessage("part", message_finished=False)) + client.send(TextMessage("ial"))
    up += client.send(CloseConnection(code=1000, reason="bye"))
    rng = random.Random(1)
    cuts = sorted(rng.randrange(len(up)) for _ in range(50))
    seen = follow(up, cuts)
    frames = reference(up)
    assert seen[-1][1:] == (len(frames), True, True)
    assert len(frames) == 6
    for offset, count, boundary, close in seen:
        assert (count, boundary, close) == expected_at(frames, offset)
    down = server.send(BytesMessage(os.urandom(300)))
    f = FrameFollower()
    f.feed(down)
    assert (f.frames, f.at_boundary, f.close_seen) == (1, True, False)


@pytest.mark.parametrize(
    "bad, masked",
    [
        (build_frame(0x3, b"reserved"), None),
        (build_frame(0xB, b"reserved control"), None),
        (build_frame(OP_PING, b"p", fin=False), None),  # a fragmented control frame
        (b"\x89\x7e\x00\x80" + b"x" * 128, None),  # a Ping longer than 125 bytes
        (b"\x82\x7f\x80" + bytes(7), None),  # a 64-bit length with its top bit set
        (build_frame(0x2, b"unmasked"), True),  # a client's frame must be masked
        (build_frame(0x2, b"masked", mask=b"abcd"), False),  # a server's must not
    ],
)
def test_a_stream_that_breaks_the_rules_is_lost_for_good(bad, masked):
    good = build_frame(0x1, b"fine", mask=b"abcd" if masked else None)
    for cut in range(len(bad) + 1):  # the bad header cut anywhere
        f = FrameFollower(masked=masked)
        f.feed(good)
        assert f.at_boundary and f.frames == 1 and not f.lost
        f.feed(bad[:cut])
        f.feed(bad[cut:] + close_frame(mask=b"abcd" if masked else None))
        assert f.lost and not f.at_boundary and not f.close_seen and f.frames == 1, cut


def test_the_direction_is_checked_only_when_known():
    f = FrameFollower(masked=True)
    f.feed(close_frame(mask=b"abcd"))
    assert f.close_seen and not f.lost
    g = FrameFollower(masked=False)
    g.feed(close_frame())
    assert g.close_seen and not g.lost


def test_a_close_frame_counts_only_once_whole():
    frame = close_frame(1001, "going away", mask=b"abcd")
    f = FrameFollower()
    f.feed(frame[:-1])
    assert not f.close_seen and not f.at_boundary and f.frames == 0
    f.feed(frame[-1:])
    assert f.close_seen and f.at_boundary and f.frames == 1


@pytest.mark.parametrize("mask", [None, b"\x01\x02\x03\x04"])
def test_built_control_frames_read_back_with_wsproto(mask):
    # A masked frame is what a client sends (the server side reads it), an unmasked
    # one what a server sends.
    def read(data):
        reader = FrameProtocol(client=mask is None, extensions=[])
        reader.receive_bytes(data)
        return list(reader.received_frames())

    (close,) = read(close_frame(4000, "réason", mask=mask))
    assert close.opcode is Opcode.CLOSE and close.payload == (4000, "réason")
    (ping,) = read(ping_frame(b"are you there", mask=mask))
    assert ping.opcode is Opcode.PING and ping.payload == b"are you there"


def test_frame_builder_refuses_what_the_rfc_forbids():
    with pytest.raises(ValueError, match="125"):
        ping_frame(b"x" * 126)
    with pytest.raises(ValueError, match="1000-4999"):
        close_frame(999)
    with pytest.raises(ValueError, match="4 bytes"):
        build_frame(OP_PING, b"", mask=b"abc")
    with pytest.raises(ValueError, match="needs a code"):
        close_frame(None, "why")
    assert close_frame(None) == b"\x88\x00"


@settings(max_examples=200, deadline=None)
@given(
    specs=st.lists(FRAME, max_size=10),
    from_client=st.booleans(),
    wrong_at=st.one_of(st.none(), st.integers(0, 9)),
    data=st.data(),
)
def test_a_follower_that_knows_the_direction_gives_up_at_the_first_frame_masked_the_wrong_way(specs, from_client, wrong_at, data):
    """Frames of every length (the 16-bit lengths take the fast path too), each masked as
    its direction demands, save perhaps one: the follower counts the frames before that
    one and then says lost, whatever the chunking."""
    specs = [(op, n, from_client, fin, rsv) for op, n, _, fin, rsv in specs]
    if wrong_at is not None and wrong_at < len(specs):
        op, n, masked, fin, rsv = specs[wrong_at]
        specs[wrong_at] = (op, n, not masked, fin, rsv)
    else:
        wrong_at = None
    stream = make_stream(specs)
    frames = reference(stream)
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(stream)), max_size=30))))
    f = FrameFollower(from_client=from_client)
    view, last = memoryview(stream), 0
    for cut in [*cuts, len(stream)]:
        f.feed(view[last:cut])
        last = cut
    if wrong_at is None:
        assert not f.lost and f.frames == len(frames) and f.at_boundary
    else:
        assert f.lost and f.frames == wrong_at and not f.at_boundary


@pytest.mark.parametrize(
    "code, reason, words",
    [
        (1000, "", None),
        (4999, "x" * 123, None),
        (3000, "é" * 61, None),
        (999, "", "not a number from 1000 to 4999"),
        (5000, "", "not a number from 1000 to 4999"),
        (True, "", "not a number"),
        ("1000", "", "not a number"),
        (1004, "", "may not be sent"),
        (1005, "", "may not be sent"),
        (1006, "", "may not be sent"),
        (1015, "", "may not be sent"),
        (1000, "x" * 124, "124 bytes of UTF-8; a Close frame holds at most 123"),
        (1000, "é" * 62, "124 bytes"),
        (1000, 5, "must be text"),
        (1000, "\ud800", "not valid UTF-8"),
    ],
)
def test_close_problem_names_what_may_not_be_sent(code, reason, words):
    problem = close_problem(code, reason)
    if words is None:
        assert problem is None
        assert close_frame(code, reason)[0] == 0x88  # and the frame can be built
    else:
        assert problem is not None and words in problem
