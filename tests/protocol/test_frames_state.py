"""A frame follower's state carried to another process (binary upgrade, R156): restored at
any cut of the stream, it goes on exactly as the follower that never stopped."""

from __future__ import annotations

import json

import pytest

from tunnel.protocol.frames import FrameFollower, build_frame, close_frame

MASK = b"\x01\x02\x03\x04"


def stream(masked: bool) -> bytes:
    key = MASK if masked else None
    return b"".join(
        [
            build_frame(0x1, b"hi", mask=key),
            build_frame(0x2, b"x" * 300, mask=key),  # 16-bit length
            build_frame(0x2, b"y" * 70000, mask=key, fin=False),  # 64-bit length
            build_frame(0x9, b"ping", mask=key),
            build_frame(0x0, b"z" * 5, mask=key),
            close_frame(1000, "bye", mask=key),
        ]
    )


@pytest.mark.parametrize("masked", [True, False])
def test_restored_at_every_cut_the_follower_ends_the_same(masked):
    data = stream(masked)
    whole = FrameFollower(masked=masked)
    whole.feed(data)
    assert whole.frames == 6 and whole.close_seen and whole.at_boundary
    cuts = sorted(set(range(0, 40)) | set(range(300, 340)) | set(range(len(data) - 40, len(data) + 1)) | {1000, 50000})
    for cut in cuts:
        first = FrameFollower(masked=masked)
        first.feed(data[:cut])
        state = json.loads(json.dumps(first.state()))  # it travels as JSON
        second = FrameFollower.restore(state)
        assert (second.at_boundary, second.to_boundary, second.close_seen) == (first.at_boundary, first.to_boundary, first.close_seen)
        second.feed(data[cut:])
        assert (second.frames, second.close_seen, second.at_boundary, second.lost) == (6, True, True, False), cut


def test_the_direction_rule_moves_too():
    follower = FrameFollower(masked=True)
    restored = FrameFollower.restore(follower.state())
    restored.feed(build_frame(0x1, b"unmasked"))  # a client's frame must be masked
    assert restored.lost
    lost = FrameFollower(masked=False)
    lost.feed(build_frame(0x1, b"m", mask=MASK))
    assert FrameFollower.restore(lost.state()).lost


@pytest.mark.parametrize(
    "state",
    [{}, {"mask": 7, "frames": 0, "close_seen": False, "lost": False, "skip": 0, "head": None, "in_close": False},
     {"mask": 0, "frames": 0, "close_seen": False, "lost": False, "skip": -1, "head": None, "in_close": False},
     {"mask": 0, "frames": 0, "close_seen": False, "lost": False, "skip": 0, "head": "00" * 20, "in_close": False}],
)
def test_a_state_that_is_not_one_is_refused(state):
    with pytest.raises(ValueError):
        FrameFollower.restore(state)
