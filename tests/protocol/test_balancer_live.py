"""Live balancer changes (balancer-manager, tunnel ctl member; R112): sans-IO, with a
fake clock."""

from __future__ import annotations

import pytest

from tests.support.clocks import FakeClock
from tunnel.config import Balancer, Member, Target
from tunnel.protocol.balancer import BadChange, BalancerState

pytestmark = pytest.mark.timeout(30)


def member(host: str, **kw) -> Member:
    status = kw.pop("status", "")
    return Member(Target("ws", host, 80, "/"), status=frozenset(status), **kw)


def make(*members: Member, **kw) -> BalancerState:
    return BalancerState(Balancer("pool", members=members, **kw), clock=FakeClock())


def picks(state: BalancerState, n: int) -> list[str]:
    return [state.pick().target.host for _ in range(n)]


def test_disable_and_enable_a_member():
    state = make(member("a"), member("b"))
    a = state.member_named("ws://a/")
    assert state.update_member(a, flags={"D": True}) == ["status: - -> D"]
    assert picks(state, 4) == ["b"] * 4
    assert not state.usable(a)
    assert state.update_member(a, flags={"D": False}) == ["status: D -> -"]
    assert sorted(set(picks(state, 4))) == ["a", "b"]


def test_enabling_resets_byrequests_counters_as_need_reset():
    state = make(member("a"), member("b"))
    a, b = state.members
    state.update_member(a, flags={"D": True})
    picks(state, 3)
    assert b.lbstatus == 0 and a.lbstatus == 0  # b alone: it gains and loses its own loadfactor
    state.members[1].lbstatus = 7
    state.update_member(a, flags={"D": False})
    assert a.lbstatus == 0 and b.lbstatus == 0


def test_drain_is_never_elected_but_keeps_its_sticky_route():
    state = make(member("a", route="r1"), member("b", route="r2"), stickysession=("S",))
    a = state.members[0]
    state.update_member(a, flags={"N": True})
    assert picks(state, 4) == ["b"] * 4
    assert state.pick(sticky_route="r1").target.host == "a"  # a draining member keeps its sessions


def test_loadfactor_lbset_route_redirect_and_ranges():
    state = make(member("a"), member("b"))
    a, b = state.members
    assert state.update_member(a, loadfactor=3) == ["loadfactor: 1 -> 3"]
    assert picks(state, 4) == ["a", "a", "b", "a"]  # byrequests with 3:1
    state.update_member(b, lbset=1)
    assert picks(state, 3) == ["a"] * 3  # lbset 0 first: the tiers were regrouped
    assert state.update_member(a, route="x", redirect="y") == ["route: - -> x", "redirect: - -> y"]
    assert state.update_member(a, route="") == ["route: x -> -"]
    assert state.update_member(a, loadfactor=3) == []
    for bad in ({"loadfactor": 0}, {"loadfactor": 101}, {"lbset": 100}, {"flags": {"Q": True}}, {"route": "a b"}):
        with pytest.raises(BadChange):
            state.update_member(a, **bad)
    assert a.member.loadfactor == 3 and a.member.lbset == 0


def test_error_state_on_and_off():
    state = make(member("a", retry=30), member("b"))
    a = state.members[0]
    assert state.update_member(a, error=True) == ["error state: off -> on"]
    assert a.errors == 1 and picks(state, 2) == ["b", "b"]
    assert state.update_member(a, error=False) == ["error state: on -> off"]
    assert state.usable(a)


def test_balancer_settings():
    state = make(member("a"), member("b"))
    assert state.update_balancer(lbmethod="bybusyness", timeout=5, maxattempts=0, nofailover=True, stickysession=("J", "j")) == [
        "lbmethod: byrequests -> bybusyness",
        "timeout: 0.0 -> 5.0",
        "maxattempts: - -> 0",
        "nofailover: False -> True",
        "stickysession: - -> J|j",
    ]
    assert state.attempts_allowed() == 0 and state.sticky_route_from("j=x.r", None) == "r"
    with pytest.raises(BadChange, match="unknown lbmethod"):
        state.update_balancer(lbmethod="roundrobin")
    with pytest.raises(BadChange, match="out of range"):
        state.update_balancer(timeout=7201)


def test_member_named_matches_as_httpd_names_workers():
    state = make(member("a"))
    assert state.member_named("WS://A").name == "ws://a/"
    with pytest.raises(KeyError, match="has no member ws://c/"):
        state.member_named("ws://c/")
