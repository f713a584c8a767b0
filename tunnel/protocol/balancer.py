"""balancer:// member choice, error states and stickiness, as mod_proxy_balancer does it.

Pure: no sockets, no sleeping, no threads. Time comes from an injected clock
(``time.monotonic`` in the engine), so every rule below can be tested with a fake one.

Rules (docs/httpd-behaviour.md: R42-R46; mod_proxy_balancer.c and proxy_util.c):

* **Usable.** A member is usable (httpd's ``PROXY_WORKER_IS_USABLE``) unless its status
  has ``D`` (disabled) or ``S`` (stopped), or it is in error state. ``N`` (draining) is
  usable, but only for a sticky route naming it: the lbmethod never elects it.
* **Error state.** `BalancerState.mark_error` (a connect failure) puts a member in error
  until ``clock() + retry``; from then on (``>=``, so ``retry=0`` means at once) it is
  retried. ``I`` (ignore errors) members never enter error state. `BalancerState.mark_ok`
  leaves it at once.
* **Force recovery.** At the start of each `BalancerState.pick`, when *every* member is in
  error state and ``forcerecovery`` is on (the default), all error states are cleared and
  the members tried again; with it off the pick fails with 503.
* **Sticky route first** (find_session_route). The route is the part after the first
  ``.`` of the URL parameter's value, else of the cookie's (`sticky_route_from`). The
  first usable member with that ``route=`` wins, non-standby members looked at before
  ``H`` ones; an unusable one hands over to its ``redirect=`` route (followed at most
  once per member, so redirect cycles end). No member found: with ``nofailover=On`` and
  a route that names a member, 503; otherwise the lbmethod elects one. A sticky pick
  charges byrequests' counters as httpd's default ``updatelbstatus`` does: every usable
  member gains its loadfactor and the chosen one loses the total.
* **Tiers** (proxy_balancer_get_best_worker). lbsets are tried in ascending order; the
  first that yields a member wins. Within a set, the plain members are candidates; ``R``
  hot spares join them, in configuration order, up to the number of plain members that
  are unusable (a draining plain member counts as unusable); ``H`` hot standbys are
  candidates only when neither gave a member. Draining spares and standbys are skipped.
* **lbmethods** (balancers/mod_lbmethod_*.c): each candidate is offered in order to an
  ``is_best(candidate, best_so_far)`` test, and the last one it accepted is elected.
  ``byrequests``, ``bybusyness`` and ``bytraffic`` are in `tunnel.protocol.lbmethods`.
* ``exclude`` (member indexes) makes members unusable for one pick: the caller's way to
  fail over after a connect failure (R46). An excluded plain member may be replaced by a
  hot spare, as any unusable one.

Waiting up to the balancer's ``timeout=`` for a member to come back is the caller's
business (it may pick again); this module never sleeps.

Thread safety: each `BalancerState` guards its counters with its own lock (made by the
caller's lock factory: this module starts and imports no threads), taken by every public
method, since the loop thread and sync tunnel threads share it.

**Live changes** (balancer-manager, ``tunnel ctl member``; R112): `BalancerState.update_member`
and `BalancerState.update_balancer` change a member's status flags, loadfactor, lbset,
route and redirect, or the balancer's lbmethod, timeout, maxattempts, nofailover and
stickysession, as mod_proxy_balancer's form does. The configuration objects are frozen:
a change replaces ``MemberState.member`` / ``BalancerState.balancer`` with a modified
copy under the lock, so every reader sees either the old or the new values whole. A
member that becomes usable, or a new lbmethod, resets the lbmethod's counters (httpd's
``need_reset``): ``lbstatus`` for byrequests and bybusyness, the byte counters for
bytraffic. ``busy`` is never reset: it counts the open tunnels, which a reset would
lose (httpd's bybusyness zeroes it).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Optional

from ..config.model import Balancer, Member, Target
from ..errors import ConfigError, ServiceUnavailable
from .balancer_live import SETTABLE_FLAGS, BadChange, LiveChanges
from .lbmethods import LBMETHODS, Tally, charge

__all__ = ["MemberState", "BalancerState", "Balancers", "LBMETHODS", "SETTABLE_FLAGS", "BadChange"]

Clock = Callable[[], float]
#: Makes the lock that guards one balancer's counters (``threading.Lock`` in the engine,
#: which shares balancers between the loop and tunnel threads).
LockFactory = Callable[[], AbstractContextManager[object]]

#: Status flags that make a member unusable for any pick (R42): disabled, stopped.
_OFF_FLAGS = frozenset("DS")
class MemberState:
    """The runtime state of one `Member` (httpd's shared ``proxy_worker_shared``).

    Mutated only by the owning `BalancerState`, under its lock; read it for logs.

    Attributes:
        member: the configuration.
        index: its position in the balancer (what ``pick(exclude=...)`` names).
        lbstatus: byrequests' accumulator (also kept by bybusyness).
        busy: in-flight requests plus open tunnels.
        transferred: bytes sent to the member, tunnel bytes included.
        read: bytes received from the member, tunnel bytes included.
        elected: how many times it was picked.
        error_until: in error state until this clock time; None when not in error.
    """

    __slots__ = ("member", "index", "lbstatus", "busy", "transferred", "read", "elected", "error_until", "errors")

    def __init__(self, member: Member, index: int) -> None:
        #: the member's settings: the configuration's, or a copy a live change made.
        self.member = member
        self.index = index
        self.lbstatus = 0
        self.busy = 0
        self.transferred = 0
        self.read = 0
        self.elected = 0
        self.error_until: Optional[float] = None
        #: how many times it was put in error state (connect failures).
        self.errors = 0

    @property
    def target(self) -> Target:
        """The member's backend URL."""
        return self.member.target

    @property
    def name(self) -> str:
        """The member's URL as configured, httpd's worker name."""
        return str(self.member.target)

    @property
    def route(self) -> str:
        """The member's ``route=`` ("" when none)."""
        return self.member.route

    @property
    def loadfactor(self) -> int:
        return self.member.loadfactor

    def __repr__(self) -> str:
        flags = "".join(sorted(self.member.status))
        return (
            f"<MemberState #{self.index} {self.name} flags={flags or '-'} busy={self.busy} "
            f"lbstatus={self.lbstatus} elected={self.elected} error_until={self.error_until}>"
        )


class BalancerState(LiveChanges):
    """The runtime state of one ``balancer://NAME``: its members' counters and errors.

    Args:
        balancer: the configuration.
        clock: monotonic seconds (``time.monotonic`` in the engine; a fake in tests).
        lock: the lock guarding the counters; none (single-threaded use) when not given.

    Raises:
        ConfigError: when ``balancer.lbmethod`` is not one of `LBMETHODS`.
    """

    def __init__(
        self,
        balancer: Balancer,
        *,
        clock: Clock,
        lock: Optional[AbstractContextManager[object]] = None,
    ) -> None:
        try:
            self._is_best = LBMETHODS[balancer.lbmethod]
        except KeyError:
            raise ConfigError(
                f"balancer://{balancer.name}: unknown lbmethod {balancer.lbmethod!r}"
                f" (expected one of {', '.join(LBMETHODS)})",
                file=balancer.file,
                line=balancer.line,
            ) from None
        self.balancer = balancer
        self.members: tuple[MemberState, ...] = tuple(
            MemberState(member, i) for i, member in enumerate(balancer.members)
        )
        self._clock = clock
        self._lock: AbstractContextManager[object] = lock if lock is not None else nullcontext()
        #: members grouped by lbset, the sets in ascending order, members in config order.
        self._tiers: tuple[tuple[MemberState, ...], ...] = ()
        self._group_tiers()

    def _group_tiers(self) -> None:
        by_set: dict[int, list[MemberState]] = {}
        for state in self.members:
            by_set.setdefault(state.member.lbset, []).append(state)
        self._tiers = tuple(tuple(by_set[lbset]) for lbset in sorted(by_set))

    @property
    def name(self) -> str:
        return self.balancer.name

    def __repr__(self) -> str:
        return f"<BalancerState balancer://{self.name} {self.balancer.lbmethod} members={len(self.members)}>"

    # -- choosing ----------------------------------------------------------------------

    def pick(self, *, sticky_route: Optional[str] = None, exclude: Collection[int] = ()) -> MemberState:
        """`pick_routed`'s member (see there)."""
        return self.pick_routed(sticky_route=sticky_route, exclude=exclude)[0]

    def pick_routed(self, *, sticky_route: Optional[str] = None, exclude: Collection[int] = ()) -> tuple[MemberState, bool]:
        """Choose the member for a new request or tunnel (R43-R45).

        Counts the pick in ``elected`` and in the lbmethod's counters, but not in ``busy``:
        call `acquire` once the member is really used.

        Args:
            sticky_route: the route from `sticky_route_from`, or None.
            exclude: indexes of members not to choose this time (already tried).

        Returns:
            The chosen member, and whether the sticky route chose it (False when the
            lbmethod elected it).

        Raises:
            ServiceUnavailable: no member is usable, or the sticky route's member is
                unusable and the balancer has ``nofailover=On``.
        """
        excluded = frozenset(exclude)
        with self._lock:
            self._expire_errors(self._clock())
            self._force_recovery()
            chosen: Optional[MemberState] = None
            if sticky_route:
                chosen = self._find_route(sticky_route, excluded, frozenset())
                if chosen is not None:
                    self._charge_sticky(chosen, excluded)
                elif self.balancer.nofailover and any(m.route == sticky_route for m in self.members):
                    raise ServiceUnavailable(
                        f"no usable member in balancer://{self.name}",
                        detail=f"route {sticky_route!r} is unusable and nofailover is on",
                    )
            by_route = chosen is not None
            if chosen is None:
                chosen = self._elect(excluded)
            if chosen is None:
                raise ServiceUnavailable(
                    f"no usable member in balancer://{self.name}", detail=self._why_none(excluded)
                )
            chosen.elected += 1
            return chosen, by_route

    def sticky_route_from(self, target_query: str, cookie_header: Optional[str]) -> Optional[str]:
        """The sticky route a request names, or None (find_session_route).

        ``stickysession`` gives the cookie name, then optionally the URL parameter name
        (httpd's ``COOKIE|param``; one name serves both). The URL parameter is looked for
        first and, when present with a value, decides alone; otherwise the cookie. The
        route is what follows the value's first ``.``: a value without one names no route.

        Args:
            target_query: the request target's query, without the ``?``.
            cookie_header: the Cookie header's value, or None.

        Returns:
            The route, or None when the balancer is not sticky or none is named.
        """
        session = self.sticky_session_from(target_query, cookie_header)
        return session[1] if session is not None and session[1] else None

    def sticky_session_from(self, target_query: str, cookie_header: Optional[str]) -> Optional[tuple[str, str]]:
        """The stickysession name a request used and the route after its value's first
        ``.`` ("" when nothing follows it); None when it names none (no value, or one
        without a ``.``). What BALANCER_SESSION_STICKY/ROUTE hold (R87)."""
        names = self.balancer.stickysession
        if not names or not names[0]:
            return None
        cookie_name = names[0]
        param_name = names[1] if len(names) > 1 and names[1] else cookie_name
        used = param_name
        value = _query_param(target_query, param_name)
        if value is None and cookie_header is not None:
            used, value = cookie_name, _cookie_value(cookie_header, cookie_name)
        if value is None:
            return None
        _, dot, route = value.partition(".")
        return (used, route) if dot else None

    def environment(self, member: MemberState, session: Optional[tuple[str, str]], by_route: bool) -> dict[str, str]:
        """The variables mod_proxy_balancer sets once ``member`` is chosen (R87).

        Args:
            member: the chosen member.
            session: `sticky_session_from`'s answer for the request.
            by_route: `pick_routed`'s flag: the sticky route chose the member.

        Returns:
            BALANCER_NAME (``balancer://name``), BALANCER_WORKER_NAME (the member's URL),
            BALANCER_WORKER_ROUTE (its route, "" for none); BALANCER_ROUTE_CHANGED "1"
            when the balancer is sticky and the member is not the one the request named
            (no route, an unusable one, a redirect= hand-over); BALANCER_SESSION_STICKY
            and BALANCER_SESSION_ROUTE when the request named a route.
        """
        env = {
            "BALANCER_NAME": f"balancer://{self.name}",
            "BALANCER_WORKER_NAME": member.member.name or member.name,
            "BALANCER_WORKER_ROUTE": member.route,
        }
        route = session[1] if session is not None else None
        sticky = bool(self.balancer.stickysession and self.balancer.stickysession[0])
        if sticky and (not by_route or member.route != route):
            env["BALANCER_ROUTE_CHANGED"] = "1"
        if session is not None:
            env["BALANCER_SESSION_STICKY"], env["BALANCER_SESSION_ROUTE"] = session
        return env

    # -- accounting ----------------------------------------------------------------------

    def acquire(self, member: MemberState) -> None:
        """Count a request or tunnel starting on ``member`` (``busy += 1``).

        Args:
            member: a member of this balancer.
        """
        with self._lock:
            member.busy += 1

    def release(self, member: MemberState) -> None:
        """Count a request or tunnel on ``member`` ending (``busy -= 1``, never below 0).

        Args:
            member: a member of this balancer.
        """
        with self._lock:
            # httpd's decrement also stops at zero: a spurious release must not make a
            # member look less busy than idle for the rest of the process's life.
            if member.busy > 0:
                member.busy -= 1

    def add_traffic(self, member: MemberState, sent: int, received: int) -> None:
        """Add bytes exchanged with ``member`` (bytraffic's counters).

        Args:
            member: a member of this balancer.
            sent: bytes sent to the member since the last call.
            received: bytes received from the member since the last call.

        Raises:
            ValueError: when a count is negative.
        """
        if sent < 0 or received < 0:
            raise ValueError(f"traffic cannot be negative: sent={sent} received={received}")
        with self._lock:
            member.transferred += sent
            member.read += received

    def mark_error(self, member: MemberState, *, now: Optional[float] = None) -> None:
        """Put ``member`` in error state for its ``retry=`` seconds (a connect failure).

        Members with the ``I`` (ignore errors) flag stay usable.

        Args:
            member: a member of this balancer.
            now: the time of the failure; ``clock()`` when not given.
        """
        if "I" in member.member.status:
            return
        with self._lock:
            start = self._clock() if now is None else now
            member.error_until = start + member.member.retry
            member.errors += 1

    def mark_ok(self, member: MemberState) -> None:
        """Take ``member`` out of error state (it just answered).

        Args:
            member: a member of this balancer.
        """
        with self._lock:
            member.error_until = None

    # -- queries -------------------------------------------------------------------------

    def usable(self, member: MemberState) -> bool:
        """Whether ``member`` may serve now: not disabled, stopped or in error state.

        A draining member is usable (its sticky sessions still reach it).

        Args:
            member: a member of this balancer.

        Returns:
            True when usable.
        """
        with self._lock:
            return not (member.member.status & _OFF_FLAGS) and not self._in_error(member, self._clock())

    def attempts_allowed(self) -> int:
        """How many other members a request may fail over to (``maxattempts``, R46).

        Returns:
            ``maxattempts=`` when set, else the number of members minus one (at least 0).
        """
        if self.balancer.maxattempts is not None:
            return max(0, self.balancer.maxattempts)
        return max(0, len(self.members) - 1)

    def snapshot(self) -> list[dict[str, Any]]:
        """Each member's state, for a status page or a log line.

        Returns:
            One dict per member, in configuration order, with: ``index``, ``name``,
            ``route``, ``redirect``, ``lbset``, ``loadfactor``, ``status`` (the flags in
            force, plus ``E`` while in error state), ``usable``, ``busy``, ``elected``,
            ``lbstatus``, ``transferred``, ``read``, ``errors`` and ``error_for``
            (seconds of error state left, or None).
        """
        with self._lock:
            now = self._clock()
            rows = []
            for m in self.members:
                in_error = self._in_error(m, now)
                flags = "".join(sorted(m.member.status)) + ("E" if in_error else "")
                rows.append(
                    {
                        "index": m.index,
                        "name": m.name,
                        "route": m.route,
                        "redirect": m.member.redirect,
                        "lbset": m.member.lbset,
                        "loadfactor": m.loadfactor,
                        "status": flags,
                        "usable": not in_error and not (m.member.status & _OFF_FLAGS),
                        "busy": m.busy,
                        "elected": m.elected,
                        "lbstatus": m.lbstatus,
                        "transferred": m.transferred,
                        "read": m.read,
                        "errors": m.errors,
                        "error_for": m.error_until - now if m.error_until is not None and in_error else None,
                    }
                )
            return rows

    def reconfigure(self, balancer: Balancer) -> None:
        """Take a new configuration of this balancer (a graceful restart), keeping the
        runtime state of the members that stay: a member is the same when its URL is.

        Their counters (busy, elected, lbstatus, bytes) and error states carry over;
        new members start fresh; removed ones are dropped (a tunnel still open on one
        releases it harmlessly). Each member takes its new configuration (flags,
        loadfactor, lbset, route) and place.

        Raises:
            ConfigError: the new lbmethod is unknown (nothing is changed then).
        """
        fresh = BalancerState(balancer, clock=self._clock)  # checks the lbmethod first
        with self._lock:
            by_name = {m.name: m for m in self.members}
            members = []
            for state in fresh.members:
                kept = by_name.pop(state.name, None)
                if kept is not None:
                    kept.member, kept.index = state.member, state.index
                    state = kept
                members.append(state)
            self.balancer = balancer
            self._is_best = fresh._is_best
            self.members = tuple(members)
            by_set: dict[int, list[MemberState]] = {}
            for state in self.members:
                by_set.setdefault(state.member.lbset, []).append(state)
            self._tiers = tuple(tuple(by_set[lbset]) for lbset in sorted(by_set))

    # -- internals, called with the lock held --------------------------------------------

    @staticmethod
    def _in_error(member: MemberState, now: float) -> bool:
        return member.error_until is not None and now < member.error_until

    def _expire_errors(self, now: float) -> None:
        """Clear the error states whose retry time has come (ap_proxy_retry_worker)."""
        for m in self.members:
            if m.error_until is not None and now >= m.error_until:
                m.error_until = None

    def _force_recovery(self) -> None:
        """Every member in error state and forcerecovery on: clear them all (force_recovery)."""
        if not self.balancer.forcerecovery or not self.members:
            return
        if all(m.error_until is not None for m in self.members):
            for m in self.members:
                m.error_until = None

    def _usable(self, member: MemberState, excluded: frozenset[int]) -> bool:
        """Usable for this pick; error states already expired by the caller."""
        return (
            member.index not in excluded
            and member.error_until is None
            and not (member.member.status & _OFF_FLAGS)
        )

    def _find_route(
        self, route: str, excluded: frozenset[int], redirected: frozenset[int]
    ) -> Optional[MemberState]:
        """The usable member for ``route``, following ``redirect=`` (find_route_worker).

        ``redirected`` holds the members whose redirect is being followed already, so a
        cycle of redirects ends instead of recursing forever.
        """
        for standby_pass in (False, True):
            for m in self.members:
                if ("H" in m.member.status) != standby_pass or not m.route or m.route != route:
                    continue
                if self._usable(m, excluded):
                    return m
                if m.member.redirect and m.index not in redirected:
                    found = self._find_route(m.member.redirect, excluded, redirected | {m.index})
                    if found is not None:
                        return found
        return None

    def _charge_sticky(self, chosen: MemberState, excluded: frozenset[int]) -> None:
        """byrequests' counters for a sticky pick, as httpd's default updatelbstatus."""
        tally = Tally()
        for m in self.members:
            if self._usable(m, excluded):
                charge(m, tally)
        chosen.lbstatus -= tally.total

    def _elect(self, excluded: frozenset[int]) -> Optional[MemberState]:
        """The lbmethod's choice, lbset by lbset (proxy_balancer_get_best_worker)."""
        is_best = self._is_best
        for tier in self._tiers:
            tally = Tally()
            best: Optional[MemberState] = None
            unusable = 0
            spares: list[MemberState] = []
            standbys: list[MemberState] = []
            for m in tier:
                flags = m.member.status
                spare, standby = "R" in flags, "H" in flags
                if "N" in flags:
                    # Draining: never elected. A draining plain member leaves a gap a
                    # spare may fill.
                    if not spare and not standby:
                        unusable += 1
                    continue
                usable = self._usable(m, excluded)
                if spare:
                    if usable:
                        spares.append(m)
                elif standby:
                    if usable:
                        standbys.append(m)
                elif usable:
                    if is_best(m, best, tally):
                        best = m
                else:
                    unusable += 1
            for m in spares[:unusable]:
                if is_best(m, best, tally):
                    best = m
            if best is None:
                for m in standbys:
                    if is_best(m, best, tally):
                        best = m
            if best is not None:
                best.lbstatus -= tally.total
                return best
        return None

    def _why_none(self, excluded: frozenset[int]) -> str:
        """A log detail for a failed pick: each member and why it was passed over."""
        if not self.members:
            return "the balancer has no members"
        reasons = []
        for m in self.members:
            if m.index in excluded:
                why = "already tried"
            elif m.member.status & _OFF_FLAGS:
                why = "disabled" if "D" in m.member.status else "stopped"
            elif m.error_until is not None:
                why = "in error state"
            elif "N" in m.member.status:
                why = "draining"
            else:
                why = "standby or spare not needed"
            reasons.append(f"{m.name}: {why}")
        return "; ".join(reasons)


class Balancers(Mapping[str, BalancerState]):
    """The runtime state of every configured balancer, by name (``balancer://NAME``).

    Built once from ``Config.balancers``; the mapping itself never changes, and each
    `BalancerState` has its own lock, so it may be shared by the loop and tunnel threads.

    Args:
        balancers: name (as in the URL, without ``balancer://``) to configuration.
        clock: monotonic seconds, handed to every `BalancerState`.
        lock: makes each balancer's lock (``threading.Lock`` when shared by threads).

    Raises:
        ConfigError: a balancer names an unknown lbmethod.
    """

    def __init__(self, balancers: Mapping[str, Balancer], *, clock: Clock, lock: Optional[LockFactory] = None) -> None:
        self._clock = clock
        self._lock_factory = lock
        self._states: dict[str, BalancerState] = {
            name: BalancerState(balancer, clock=clock, lock=lock() if lock is not None else None)
            for name, balancer in balancers.items()
        }

    def reconfigured(self, balancers: Mapping[str, Balancer]) -> Balancers:
        """The runtime state for a new configuration (a graceful restart): a balancer
        present in both keeps its `BalancerState` (reconfigured in place: see
        `BalancerState.reconfigure`), new ones start fresh, removed ones are dropped.

        Raises:
            ConfigError: a balancer names an unknown lbmethod (nothing is changed then).
        """
        for balancer in balancers.values():
            BalancerState(balancer, clock=self._clock)  # check every lbmethod before changing any
        new = Balancers({}, clock=self._clock, lock=self._lock_factory)
        for name, balancer in balancers.items():
            old = self._states.get(name)
            if old is not None:
                old.reconfigure(balancer)
                new._states[name] = old
            else:
                lock = self._lock_factory() if self._lock_factory is not None else None
                new._states[name] = BalancerState(balancer, clock=self._clock, lock=lock)
        return new

    def __getitem__(self, name: str) -> BalancerState:
        """The state of ``balancer://name``.

        Raises:
            KeyError: no such balancer is configured.
        """
        return self._states[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._states)

    def __len__(self) -> int:
        return len(self._states)

    def __repr__(self) -> str:
        return f"<Balancers {sorted(self._states)}>"


def _query_param(query: str, name: str) -> Optional[str]:
    """The first non-empty value of ``name`` in a query string (as written, not decoded).

    httpd searches the whole URL for ``name=`` as a substring; we match whole parameter
    names in the query only, so ``xJSESSIONID=`` does not count as ``JSESSIONID=``.
    """
    for pair in query.split("&"):
        key, eq, value = pair.partition("=")
        if eq and key == name and value:
            return value
    return None


def _cookie_value(header: str, name: str) -> Optional[str]:
    """The first non-empty value of cookie ``name`` (get_cookie_param).

    As httpd, a value ends at ``;`` or ``,`` and blanks around the name are allowed.
    """
    for piece in header.replace(",", ";").split(";"):
        key, eq, value = piece.partition("=")
        value = value.strip()
        if eq and key.strip() == name and value:
            return value
    return None
