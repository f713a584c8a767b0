"""balancer.py: member choice, tiers, error states, stickiness; pure, with a fake clock.

The expected byrequests sequences are worked out by hand from httpd's algorithm (every
usable candidate's lbstatus += loadfactor; the highest wins, the earlier on a tie; the
winner's lbstatus -= the total), not computed by the code under test.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.clocks import FakeClock
from tunnel.config import Balancer, Member, Target
from tunnel.errors import ConfigError, ServiceUnavailable
from tunnel.protocol.balancer import Balancers, BalancerState, MemberState

pytestmark = pytest.mark.timeout(30)


def member(
    host: str,
    *,
    loadfactor: int = 1,
    lbset: int = 0,
    route: str = "",
    redirect: str = "",
    retry: float = 60.0,
    status: str = "",
) -> Member:
    """A ws:// member named by its host, so picks read as host names."""
    return Member(
        Target("ws", host, 80),
        loadfactor=loadfactor,
        lbset=lbset,
        route=route,
        redirect=redirect,
        retry=retry,
        status=frozenset(status),
    )


def make(*members: Member, clock: FakeClock | None = None, **balancer_keys: object) -> BalancerState:
    balancer = Balancer("cluster", members=tuple(members), **balancer_keys)  # type: ignore[arg-type]
    return BalancerState(balancer, clock=clock or FakeClock())


def hosts(state: BalancerState, picks: int, **pick_keys: object) -> list[str]:
    return [state.pick(**pick_keys).target.host for _ in range(picks)]  # type: ignore[arg-type]


def by_host(state: BalancerState, host: str) -> MemberState:
    (found,) = [m for m in state.members if m.target.host == host]
    return found


def mark_errors(state: BalancerState, names: Iterable[str]) -> None:
    for name in names:
        state.mark_error(by_host(state, name))


# -- byrequests -------------------------------------------------------------------------


def test_byrequests_equal_loadfactors_alternate() -> None:
    # a=1 b=1 -> tie, a; a=-1. a=0 b=2 -> b; b=0. Back to the start.
    state = make(member("a"), member("b"))
    assert hosts(state, 6) == ["a", "b", "a", "b", "a", "b"]


def test_byrequests_1_2_3_is_httpds_sequence() -> None:
    # (lbstatus after += loadfactor) -> winner, then winner -= 6:
    #   1  2  3 -> c   |  2  4  0 -> b   |  3  0  3 -> a (tie with c: earlier)
    #  -2  2  6 -> c   | -1  4  3 -> b   |  0  0  6 -> c   ... all back at 0.
    state = make(member("a", loadfactor=1), member("b", loadfactor=2), member("c", loadfactor=3))
    assert hosts(state, 6) == ["c", "b", "a", "c", "b", "c"]
    assert [m.lbstatus for m in state.members] == [0, 0, 0]
    assert hosts(state, 6) == ["c", "b", "a", "c", "b", "c"]


def test_byrequests_25_75_counts_and_interleaving() -> None:
    # Same as 1:3: a=1 b=3 -> b; a=2 b=2 -> a (tie); a=-1 b=5 -> b; a=0 b=4 -> b; zeros.
    state = make(member("a", loadfactor=25), member("b", loadfactor=75))
    picks = hosts(state, 100)
    assert Counter(picks) == {"a": 25, "b": 75}
    assert "".join(picks) == "babb" * 25


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=100), min_size=1, max_size=5))
def test_byrequests_one_cycle_gives_each_its_loadfactor(loadfactors: list[int]) -> None:
    state = make(*(member(f"m{i}", loadfactor=lf) for i, lf in enumerate(loadfactors)))
    picks = Counter(hosts(state, sum(loadfactors)))
    assert picks == {f"m{i}": lf for i, lf in enumerate(loadfactors)}
    assert all(m.lbstatus == 0 for m in state.members)


def test_pick_counts_elections() -> None:
    state = make(member("a", loadfactor=1), member("b", loadfactor=2), member("c", loadfactor=3))
    hosts(state, 12)
    assert [m.elected for m in state.members] == [2, 4, 6]
    assert [row["elected"] for row in state.snapshot()] == [2, 4, 6]


def test_unknown_lbmethod_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"balancer://cluster: unknown lbmethod 'random'"):
        make(member("a"), lbmethod="random")


# -- tiers and status flags ------------------------------------------------------------


def test_higher_lbset_used_only_when_lower_set_has_no_usable_member() -> None:
    clock = FakeClock()
    state = make(
        member("a", retry=10), member("b", retry=10), member("c", lbset=1), clock=clock
    )
    assert set(hosts(state, 20)) == {"a", "b"}
    mark_errors(state, ["a"])
    assert set(hosts(state, 10)) == {"b"}
    mark_errors(state, ["b"])
    assert hosts(state, 4) == ["c"] * 4
    clock.advance(10)
    assert set(hosts(state, 4)) == {"a", "b"}


def test_lbsets_need_not_be_contiguous() -> None:
    state = make(member("late", lbset=7), member("early", lbset=3))
    assert hosts(state, 3) == ["early"] * 3
    state.mark_error(by_host(state, "early"))
    assert hosts(state, 2) == ["late"] * 2


def test_hot_standby_serves_only_when_its_set_has_nothing_else() -> None:
    state = make(member("a"), member("b"), member("h", status="H"), member("next", lbset=1))
    assert "h" not in hosts(state, 20)
    mark_errors(state, ["a", "b"])
    # The standby of set 0 comes before set 1's members.
    assert hosts(state, 3) == ["h"] * 3


def test_hot_spare_replaces_unusable_members_one_for_one() -> None:
    state = make(member("a"), member("b"), member("r1", status="R"), member("r2", status="R"))
    assert set(hosts(state, 20)) == {"a", "b"}
    mark_errors(state, ["a"])
    assert set(hosts(state, 20)) == {"b", "r1"}
    mark_errors(state, ["b"])
    assert set(hosts(state, 20)) == {"r1", "r2"}


def test_hot_spare_replaces_a_draining_member() -> None:
    state = make(member("a"), member("drain", status="N"), member("r", status="R"))
    assert set(hosts(state, 20)) == {"a", "r"}


def test_disabled_stopped_draining_never_picked() -> None:
    state = make(member("d", status="D"), member("s", status="S"), member("n", status="N"), member("ok"))
    assert hosts(state, 10) == ["ok"] * 10
    assert [state.usable(m) for m in state.members] == [False, False, True, True]


def test_no_usable_member_is_503_with_the_balancer_named() -> None:
    state = make(member("d", status="D"), member("s", status="S"), member("n", status="N"))
    with pytest.raises(ServiceUnavailable) as info:
        state.pick()
    assert info.value.status == 503
    assert info.value.reason == "no usable member in balancer://cluster"
    assert info.value.detail == "ws://d/: disabled; ws://s/: stopped; ws://n/: draining"


def test_empty_balancer_is_503() -> None:
    state = make()
    with pytest.raises(ServiceUnavailable, match=r"no usable member in balancer://cluster"):
        state.pick()
    assert state.attempts_allowed() == 0


# -- error states ----------------------------------------------------------------------


def test_error_state_lasts_retry_seconds() -> None:
    clock = FakeClock()
    state = make(member("a", retry=10), member("b"), clock=clock)
    a = by_host(state, "a")
    state.mark_error(a)
    assert not state.usable(a)
    assert hosts(state, 5) == ["b"] * 5
    row = state.snapshot()[0]
    assert row["status"] == "E" and row["usable"] is False and row["error_for"] == 10
    clock.advance(9.999)
    assert hosts(state, 2) == ["b"] * 2
    clock.advance(0.001)
    assert state.usable(a)
    assert "a" in hosts(state, 2)
    assert state.snapshot()[0]["error_for"] is None


def test_mark_error_takes_an_explicit_time() -> None:
    clock = FakeClock(now=50.0)
    state = make(member("a", retry=5), member("b"), clock=clock)
    a = by_host(state, "a")
    state.mark_error(a, now=48.0)
    assert a.error_until == 53.0
    clock.now = 53.0
    assert state.usable(a)


def test_retry_zero_is_usable_at_once() -> None:
    state = make(member("a", retry=0), member("b"))
    a = by_host(state, "a")
    state.mark_error(a)
    assert state.usable(a)
    assert state.pick(exclude=[1]) is a


def test_ignore_errors_flag_never_enters_error_state() -> None:
    state = make(member("a", status="I"), member("b"))
    a = by_host(state, "a")
    state.mark_error(a)
    assert a.error_until is None and state.usable(a)
    assert hosts(state, 4) == ["a", "b", "a", "b"]


def test_mark_ok_leaves_error_state() -> None:
    state = make(member("a"), member("b"))
    a = by_host(state, "a")
    state.mark_error(a)
    state.mark_ok(a)
    assert state.usable(a)


def test_forcerecovery_clears_errors_when_every_member_is_in_error() -> None:
    state = make(member("a"), member("b"))
    mark_errors(state, ["a", "b"])
    assert state.pick().target.host == "a"
    assert all(m.error_until is None for m in state.members)


def test_forcerecovery_waits_while_some_member_is_not_in_error() -> None:
    # A disabled member is not in error state, so httpd does not force recovery.
    state = make(member("a"), member("off", status="D"))
    mark_errors(state, ["a"])
    with pytest.raises(ServiceUnavailable):
        state.pick()


def test_forcerecovery_off_is_503() -> None:
    state = make(member("a"), member("b"), forcerecovery=False)
    mark_errors(state, ["a", "b"])
    with pytest.raises(ServiceUnavailable) as info:
        state.pick()
    assert info.value.detail == "ws://a/: in error state; ws://b/: in error state"


# -- bybusyness, bytraffic -------------------------------------------------------------


def test_bybusyness_moves_away_from_a_busy_member_and_back() -> None:
    state = make(member("a"), member("b"), lbmethod="bybusyness")
    a = by_host(state, "a")
    assert state.pick() is a  # tie on busy and lbstatus: the earlier
    state.acquire(a)
    state.acquire(a)
    assert hosts(state, 5) == ["b"] * 5
    state.release(a)
    assert hosts(state, 2) == ["b"] * 2  # still busier
    state.release(a)
    # Equal busy again; a's lbstatus grew while b was elected, so a wins the tie.
    assert state.pick() is a


def test_release_never_goes_below_zero() -> None:
    state = make(member("a"))
    a = state.members[0]
    state.release(a)
    assert a.busy == 0
    state.acquire(a)
    assert state.snapshot()[0]["busy"] == 1


def test_bytraffic_prefers_the_least_traffic_per_loadfactor() -> None:
    state = make(member("a"), member("b", loadfactor=3), lbmethod="bytraffic")
    a, b = state.members
    assert state.pick() is a  # both 0: the earlier
    state.add_traffic(a, 60, 40)  # a: 100 / 1
    assert state.pick() is b
    state.add_traffic(b, 150, 150)  # b: 300 / 3 = 100, a tie
    assert state.pick() is a
    state.add_traffic(b, 0, 3)  # b: 303 / 3 = 101
    assert state.pick() is a
    state.add_traffic(a, 2, 0)  # a: 102 / 1
    assert state.pick() is b
    assert (a.transferred, a.read, b.transferred, b.read) == (62, 40, 150, 153)
    assert all(m.lbstatus == 0 for m in state.members)


def test_add_traffic_rejects_negative_counts() -> None:
    state = make(member("a"))
    with pytest.raises(ValueError):
        state.add_traffic(state.members[0], -1, 0)


# -- stickiness ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stickysession, query, cookie, route",
    [
        (("JSESSIONID",), "", "JSESSIONID=abc.node2", "node2"),
        (("JSESSIONID",), "x=1&JSESSIONID=abc.node1", "JSESSIONID=abc.node2", "node1"),
        (("ROUTEID", "routeid"), "routeid=s.n1", None, "n1"),
        (("ROUTEID", "routeid"), "ROUTEID=s.n1", "ROUTEID=t.n2", "n2"),
        (("JSESSIONID",), "", "a=b; JSESSIONID = s.n1; c=d", "n1"),
        (("JSESSIONID",), "", "a=b,JSESSIONID=s.n1,c=d", "n1"),
        (("JSESSIONID",), "JSESSIONID=abc.node1.extra", None, "node1.extra"),
        (("JSESSIONID",), "JSESSIONID=nodot", "JSESSIONID=abc.node2", None),
        (("JSESSIONID",), "JSESSIONID=", "JSESSIONID=abc.node2", "node2"),
        (("JSESSIONID",), "", "JSESSIONID=abc.", None),
        (("JSESSIONID",), "", "XJSESSIONID=abc.n1", None),
        (("JSESSIONID",), "xJSESSIONID=abc.n1", None, None),
        ((), "JSESSIONID=abc.n1", "JSESSIONID=abc.n1", None),
    ],
)
def test_sticky_route_from(
    stickysession: tuple[str, ...], query: str, cookie: str | None, route: str | None
) -> None:
    state = make(member("a"), stickysession=stickysession)
    assert state.sticky_route_from(query, cookie) == route


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60), st.one_of(st.none(), st.text(max_size=60)))
def test_sticky_route_from_any_text(query: str, cookie: str | None) -> None:
    state = make(member("a"), stickysession=("S",))
    route = state.sticky_route_from(query, cookie)
    assert route is None or (route and (route in query or (cookie is not None and route in cookie)))


def test_sticky_route_picks_its_member_every_time() -> None:
    state = make(member("a", route="n1"), member("b", route="n2"), stickysession=("S",))
    assert hosts(state, 5, sticky_route="n2") == ["b"] * 5


def test_sticky_pick_charges_byrequests_counters() -> None:
    # a=1 b=1, a chosen by route: a=-1. Then by lbmethod: a=0 b=2 -> b.
    state = make(member("a", route="n1"), member("b", route="n2"))
    assert state.pick(sticky_route="n1").target.host == "a"
    assert state.pick().target.host == "b"


def test_unknown_route_falls_back_to_lbmethod() -> None:
    state = make(member("a", route="n1"), member("b", route="n2"), nofailover=True)
    assert hosts(state, 2, sticky_route="zz") == ["a", "b"]


def test_draining_member_keeps_its_sticky_sessions() -> None:
    state = make(member("a", route="n1", status="N"), member("b", route="n2"))
    assert hosts(state, 3) == ["b"] * 3
    assert hosts(state, 3, sticky_route="n1") == ["a"] * 3


def test_sticky_prefers_a_plain_member_over_a_standby_with_the_same_route() -> None:
    state = make(member("h", route="n1", status="H"), member("a", route="n1"))
    assert state.pick(sticky_route="n1").target.host == "a"
    state.mark_error(by_host(state, "a"))
    assert state.pick(sticky_route="n1").target.host == "h"


def test_unusable_sticky_member_redirects() -> None:
    state = make(member("a", route="n1", redirect="n3"), member("b", route="n2"), member("c", route="n3"))
    state.mark_error(by_host(state, "a"))
    assert hosts(state, 3, sticky_route="n1") == ["c"] * 3


def test_unusable_sticky_member_fails_over_by_lbmethod() -> None:
    state = make(
        member("a", route="n1", redirect="n3"), member("b", route="n2"), member("c", route="n3", status="D")
    )
    state.mark_error(by_host(state, "a"))
    assert hosts(state, 3, sticky_route="n1") == ["b"] * 3


def test_unusable_sticky_member_with_nofailover_is_503() -> None:
    state = make(member("a", route="n1"), member("b", route="n2"), nofailover=True)
    state.mark_error(by_host(state, "a"))
    with pytest.raises(ServiceUnavailable) as info:
        state.pick(sticky_route="n1")
    assert info.value.reason == "no usable member in balancer://cluster"
    assert info.value.detail == "route 'n1' is unusable and nofailover is on"
    assert hosts(state, 2) == ["b"] * 2  # requests without a route still go through


def test_redirect_cycle_ends() -> None:
    state = make(
        member("a", route="n1", redirect="n2"), member("b", route="n2", redirect="n1"), member("c")
    )
    mark_errors(state, ["a", "b"])
    assert state.pick(sticky_route="n1").target.host == "c"


# -- failover --------------------------------------------------------------------------


def test_exclude_skips_members_already_tried() -> None:
    state = make(member("a"), member("b"), member("c"))
    assert {state.pick(exclude=[0]).target.host for _ in range(10)} == {"b", "c"}
    assert hosts(state, 3, exclude=[0, 2]) == ["b"] * 3
    with pytest.raises(ServiceUnavailable) as info:
        state.pick(exclude=[0, 1, 2])
    assert "ws://a/: already tried" in (info.value.detail or "")


def test_exclude_lets_a_spare_step_in_and_applies_to_sticky_routes() -> None:
    state = make(member("a", route="n1"), member("r", status="R"), nofailover=True)
    assert state.pick(exclude=[0]).target.host == "r"
    with pytest.raises(ServiceUnavailable):
        state.pick(sticky_route="n1", exclude=[0])


def test_failover_loop_as_the_server_runs_it() -> None:
    clock = FakeClock()
    state = make(member("a"), member("b"), member("c"), clock=clock)
    tried: set[int] = set()
    chosen = []
    for _ in range(state.attempts_allowed() + 1):
        m = state.pick(exclude=tried)
        tried.add(m.index)
        chosen.append(m.target.host)
        state.acquire(m)
        state.release(m)
        state.mark_error(m)  # every connect fails
    assert sorted(chosen) == ["a", "b", "c"]
    assert all(not row["usable"] for row in state.snapshot())


def test_attempts_allowed() -> None:
    assert make(member("a")).attempts_allowed() == 0
    assert make(member("a"), member("b"), member("c")).attempts_allowed() == 2
    assert make(member("a"), member("b"), maxattempts=5).attempts_allowed() == 5


# -- registry and threads --------------------------------------------------------------


def test_balancers_registry() -> None:
    clock = FakeClock()
    config = {
        "one": Balancer("one", members=(member("a"),)),
        "two": Balancer("two", members=(member("b", retry=1),), lbmethod="bytraffic"),
    }
    registry = Balancers(config, clock=clock)
    assert sorted(registry) == ["one", "two"] and len(registry) == 2 and "one" in registry
    assert registry["two"].pick().target.host == "b"
    with pytest.raises(KeyError):
        registry["three"]
    two = registry["two"]
    two.mark_error(two.members[0])
    assert two.members[0].error_until == clock.now + 1


def test_snapshot_fields() -> None:
    state = make(member("a", route="n1", loadfactor=3, status="IN"))
    state.add_traffic(state.members[0], 5, 7)
    (row,) = state.snapshot()
    assert row == {
        "index": 0,
        "name": "ws://a/",
        "route": "n1",
        "redirect": "",
        "lbset": 0,
        "loadfactor": 3,
        "status": "IN",
        "usable": True,
        "busy": 0,
        "elected": 0,
        "lbstatus": 0,
        "transferred": 5,
        "read": 7,
        "errors": 0,
        "error_for": None,
    }


@pytest.mark.parametrize("lbmethod", ["byrequests", "bybusyness", "bytraffic"])
def test_threads_keep_counts_consistent(lbmethod: str) -> None:
    members = tuple(member(f"m{i}", loadfactor=i + 1) for i in range(4))
    registry = Balancers({"c": Balancer("c", members=members, lbmethod=lbmethod)}, clock=time.monotonic, lock=threading.Lock)
    state = registry["c"]
    threads_n, rounds = 8, 500
    picked: Counter[int] = Counter()
    picked_lock = threading.Lock()
    start = threading.Barrier(threads_n, timeout=10)

    def work() -> None:
        mine: Counter[int] = Counter()
        start.wait()
        for _ in range(rounds):
            m = state.pick()
            state.acquire(m)
            state.add_traffic(m, 3, 2)
            state.release(m)
            mine[m.index] += 1
        with picked_lock:
            picked.update(mine)

    threads = [threading.Thread(target=work) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not any(t.is_alive() for t in threads)
    assert sum(picked.values()) == threads_n * rounds
    for m in state.members:
        assert m.busy == 0
        assert m.elected == picked[m.index]
        assert (m.transferred, m.read) == (3 * picked[m.index], 2 * picked[m.index])
    if lbmethod == "byrequests":
        # Every election moves lbstatus by a zero-sum amount, whatever the interleaving.
        assert sum(m.lbstatus for m in state.members) == 0
