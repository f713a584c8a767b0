"""tunnels/pump.py: the pump, driven sans-IO with in-memory endpoints (scripted input,
send windows, shutdowns) and random interleavings."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel.io.streams import EVENT_READ, EVENT_WRITE
from tunnel.tunnels.pump import Budget, FlowState, Pump, new_scratch

pytestmark = pytest.mark.timeout(30)

EOF_MARK = object()


class MemEnd:
    """An in-memory endpoint: scripted input, a send window, shutdown and close flags."""

    _next_fd = 1000

    def __init__(self) -> None:
        self.inbox: deque = deque()
        self.received = bytearray()
        self.window = 0
        self.shut_wr = False
        self.closed = False
        MemEnd._next_fd += 1
        self.fd = MemEnd._next_fd

    def recv_into(self, buf) -> int:
        if not self.inbox:
            raise BlockingIOError
        item = self.inbox[0]
        if item is EOF_MARK:
            return 0
        if isinstance(item, BaseException):
            self.inbox.popleft()
            raise item
        n = min(len(buf), len(item))
        buf[:n] = item[:n]
        if n == len(item):
            self.inbox.popleft()
        else:
            self.inbox[0] = item[n:]
        return n

    def send(self, data) -> int:
        if self.shut_wr:
            raise BrokenPipeError(32, "Broken pipe")
        if self.window <= 0:
            raise BlockingIOError
        n = min(self.window, len(data))
        self.received += bytes(data[:n])
        self.window -= n
        return n

    def shutdown(self, how) -> None:
        self.shut_wr = True

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        self.closed = True


def drive(pump: Pump, scratch, rounds: int = 1000) -> None:
    """Deliver every event the pump asks for, until it makes no progress."""
    for _ in range(rounds):
        cmask, bmask = pump.interest()
        if not (cmask or bmask):
            return
        before = (pump.c2b.count, pump.b2c.count, pump.c2b.pending_len, pump.b2c.pending_len, pump.done,
                  pump.c2b.state, pump.b2c.state)
        pump.on_event(True, cmask, scratch)
        pump.on_event(False, bmask, scratch)
        after = (pump.c2b.count, pump.b2c.count, pump.c2b.pending_len, pump.b2c.pending_len, pump.done,
                 pump.c2b.state, pump.b2c.state)
        if before == after:
            return


def test_bytes_pass_through_and_half_close_each_way():
    c, b = MemEnd(), MemEnd()
    c.window = b.window = 1 << 30
    pump = Pump(c, b)
    scratch = new_scratch(1024)
    c.inbox.extend([b"hello ", b"world", EOF_MARK])
    drive(pump, scratch)
    assert bytes(b.received) == b"hello world"
    assert b.shut_wr and pump.c2b.state is FlowState.SHUT_WR
    assert not pump.done  # the other direction still flows
    b.inbox.extend([b"reply", EOF_MARK])
    drive(pump, scratch)
    assert bytes(c.received) == b"reply" and c.shut_wr
    assert pump.done and pump.reason == "eof"
    assert pump.interest() == (0, 0)


def test_early_data_is_sent_first():
    c, b = MemEnd(), MemEnd()
    c.window = b.window = 1 << 20
    pump = Pump(c, b, to_backend=b"early-c", to_client=b"early-b")
    pump.start()
    c.inbox.append(b"-later")
    drive(pump, new_scratch(64))
    assert bytes(b.received) == b"early-c-later"
    assert bytes(c.received) == b"early-b"


def test_backpressure_stops_reading_above_high_water():
    c, b = MemEnd(), MemEnd()
    pump = Pump(c, b, high_water=1000)
    scratch = new_scratch(300)
    for _ in range(20):
        c.inbox.append(b"x" * 300)
    drive(pump, scratch)
    assert 1000 <= pump.c2b.pending_len < 1000 + 300
    cmask, bmask = pump.interest()
    assert not cmask & EVENT_READ and bmask & EVENT_WRITE
    b.window = 1 << 20
    drive(pump, scratch)
    assert len(b.received) == 6000 and pump.c2b.pending is None


def test_eof_with_pending_waits_for_flush_before_shutdown():
    c, b = MemEnd(), MemEnd()
    pump = Pump(c, b)
    c.inbox.extend([b"abc", EOF_MARK])
    drive(pump, new_scratch(64))
    assert pump.c2b.state is FlowState.EOF_READ and not b.shut_wr
    b.window = 10
    drive(pump, new_scratch(64))
    assert b.received == b"abc" and b.shut_wr and pump.c2b.state is FlowState.SHUT_WR


def test_error_aborts_both_directions():
    c, b = MemEnd(), MemEnd()
    c.window = b.window = 100
    pump = Pump(c, b)
    c.inbox.append(ConnectionResetError(104, "Connection reset by peer"))
    drive(pump, new_scratch(64))
    assert pump.done and pump.reason == "error: read from client: connection reset by peer"
    assert pump.c2b.state is FlowState.CLOSED and pump.b2c.state is FlowState.CLOSED
    pump.close()
    assert c.closed and b.closed


def test_budget_pauses_reads_and_tracks_bytes():
    budget = Budget(limit=500)
    c, b = MemEnd(), MemEnd()
    pump = Pump(c, b, budget=budget)
    c.inbox.extend([b"y" * 400, b"y" * 400, b"y" * 400])
    drive(pump, new_scratch(400))
    assert budget.used == pump.buffered >= 500
    assert not pump.interest()[0] & EVENT_READ
    b.window = 1 << 20
    drive(pump, new_scratch(400))
    assert budget.used == 0 and len(b.received) == 1200


actions = st.lists(
    st.one_of(
        st.tuples(st.just("data"), st.booleans(), st.binary(min_size=1, max_size=700)),
        st.tuples(st.just("window"), st.booleans(), st.integers(min_value=0, max_value=900)),
        st.tuples(st.just("eof"), st.booleans(), st.none()),
        st.tuples(st.just("event"), st.booleans(), st.sampled_from([EVENT_READ, EVENT_WRITE, 3])),
        st.tuples(st.just("error"), st.booleans(), st.none()),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(actions, st.integers(min_value=1, max_value=2000), st.integers(min_value=16, max_value=512))
def test_random_interleavings_conserve_bytes(script, high_water, scratch_size):
    c, b = MemEnd(), MemEnd()
    pump = Pump(c, b, high_water=high_water)
    scratch = new_scratch(scratch_size)
    sent = {True: bytearray(), False: bytearray()}
    ended = {True: False, False: False}
    errored = False
    for kind, is_client, arg in script:
        end = c if is_client else b
        if kind == "data" and not ended[is_client]:
            end.inbox.append(arg)
            sent[is_client] += arg
        elif kind == "eof" and not ended[is_client]:
            end.inbox.append(EOF_MARK)
            ended[is_client] = True
        elif kind == "window":
            end.window += arg
        elif kind == "event":
            pump.on_event(is_client, arg, scratch)
        elif kind == "error" and not ended[is_client]:
            end.inbox.append(ConnectionResetError(104, "reset"))
            ended[is_client] = True
            errored = True
    c.window = b.window = 1 << 30
    drive(pump, scratch, rounds=10_000)
    if pump.done and pump.reason != "eof":
        # Aborted: what arrived is a prefix of what was sent, never reordered or invented.
        assert sent[True].startswith(b.received) and sent[False].startswith(c.received)
        assert pump.buffered == 0
        return
    assert not errored
    assert bytes(b.received) == bytes(sent[True])
    assert bytes(c.received) == bytes(sent[False])
    assert b.shut_wr == ended[True] and c.shut_wr == ended[False]
    assert pump.done == (ended[True] and ended[False])
