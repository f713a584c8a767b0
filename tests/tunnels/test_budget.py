"""The shared buffer budget (TunnelBufferLimit): bytes are counted before a read, so
readers in several threads cannot together overshoot the cap by a scratch buffer each."""

from __future__ import annotations

import pytest

from tunnel.tunnels.pump import CAPPED_CHUNK, SCRATCH_SIZE, Budget

pytestmark = pytest.mark.timeout(30)


def test_reserve_grants_what_is_left_and_at_least_a_capped_chunk():
    budget = Budget(1 << 20)
    assert budget.reserve(SCRATCH_SIZE) == SCRATCH_SIZE  # room for a whole read
    budget.give(SCRATCH_SIZE)
    budget.take((1 << 20) - 1000)
    assert budget.reserve(SCRATCH_SIZE) == CAPPED_CHUNK  # 1,000 left: a capped chunk still
    assert budget.exhausted


def test_concurrent_reservations_cannot_all_see_room():
    """Twenty readers reserving before any of them reads (what sync threads in their
    system calls look like): together they hold the cap plus a capped chunk each, not
    twenty scratch buffers."""
    limit = 1 << 20
    budget = Budget(limit)
    grants = [budget.reserve(SCRATCH_SIZE) for _ in range(20)]
    assert sum(grants) <= limit + 20 * CAPPED_CHUNK
    for g in grants:
        budget.give(g)
    assert budget.used == 0


def test_no_limit_grants_every_read_whole():
    budget = Budget(0)
    assert budget.reserve(SCRATCH_SIZE) == SCRATCH_SIZE
    assert not budget.exhausted
