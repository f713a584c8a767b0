"""Balancers.reconfigured: a graceful restart keeps the state of the members that stay (R123)."""

from __future__ import annotations

from tests.support.clocks import FakeClock
from tests.support.sansio import conf
from tunnel.protocol.balancer import Balancers


def balancers_of(members: str, clock: FakeClock) -> Balancers:
    return Balancers(conf(f"<Proxy balancer://c>\n{members}</Proxy>\nProxyPass / balancer://c/\n").balancers, clock=clock)


def test_members_that_stay_keep_their_state_new_ones_start_fresh():
    clock = FakeClock()
    old = balancers_of("BalancerMember ws://a:1\nBalancerMember ws://b:1\n", clock)
    state = old["c"]
    a, b = state.members
    state.acquire(a)
    state.add_traffic(a, 10, 20)
    state.mark_error(b)
    new_config = conf(
        "<Proxy balancer://c>\nBalancerMember ws://n:1\nBalancerMember ws://a:1 loadfactor=3\n</Proxy>\n"
        "<Proxy balancer://d>\nBalancerMember ws://d:1\n</Proxy>\nProxyPass / balancer://c/\nProxyPass /d balancer://d/\n"
    ).balancers
    new = old.reconfigured(new_config)
    assert new["c"] is state  # the same state object: live tunnels release into it
    n, kept = state.members
    assert kept is a and kept.index == 1 and kept.loadfactor == 3
    assert (kept.busy, kept.transferred, kept.read) == (1, 10, 20)
    assert n.busy == 0 and n.name == "ws://n:1/"
    assert sorted(new) == ["c", "d"]
    state.release(a)  # a tunnel opened before the restart ends
    assert kept.busy == 0
    state.release(b)  # one on a removed member: harmless
    assert state.pick().name in ("ws://n:1/", "ws://a:1/")
