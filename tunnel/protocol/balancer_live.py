"""Live changes to a balancer (balancer-manager's form, ``tunnel ctl member``; R112),
mixed into `tunnel.protocol.balancer.BalancerState`.

The configuration objects are frozen: a change replaces ``MemberState.member`` or
``BalancerState.balancer`` with a modified copy under the balancer's lock, so a reader
sees the old values or the new ones, never half of each. Every value is checked before
any is applied (`BadChange`). Pure, like the balancer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any, Optional, Protocol

from ..config.model import Balancer, Member
from .lbmethods import LBMETHODS, IsBest

__all__ = ["BadChange", "LiveChanges", "SETTABLE_FLAGS", "LOADFACTOR_RANGE", "LBSET_RANGE"]

#: Status flags that make a member unusable for any pick (R42): disabled, stopped.
_OFF_FLAGS = frozenset("DS")
#: Flags a live change may set or clear (balancer-manager's ``w_status_X``): ignore
#: errors, drain, disabled, hot standby, hot spare, stopped. ``E`` (error state) is set
#: and cleared through ``error=``.
SETTABLE_FLAGS = frozenset("INDHRS")
#: The ranges mod_proxy_balancer accepts from its form.
LOADFACTOR_RANGE = (1, 100)
LBSET_RANGE = (0, 99)
TIMEOUT_RANGE = (0, 7200)
MAXATTEMPTS_RANGE = (0, 99)


class BadChange(ValueError):
    """A live change names a bad value: nothing of that change was applied."""



class _Member(Protocol):
    """What a live change reads and writes of a member (`balancer.MemberState`)."""

    member: Member
    lbstatus: int
    transferred: int
    read: int
    error_until: Optional[float]
    errors: int

    @property
    def name(self) -> str: ...


class LiveChanges:
    """The live-change half of `BalancerState` (its lock, clock and members)."""

    balancer: Balancer
    members: tuple[Any, ...]
    _lock: AbstractContextManager[object]
    _clock: Callable[[], float]
    _is_best: IsBest

    @property
    def name(self) -> str:
        return self.balancer.name

    def _group_tiers(self) -> None:
        raise NotImplementedError

    @staticmethod
    def _in_error(member: Any, now: float) -> bool:
        return member.error_until is not None and now < member.error_until

    # -- live changes (balancer-manager, tunnel ctl) -------------------------------------

    def member_named(self, name: str) -> Any:
        """The member whose URL is ``name`` (httpd's worker name; scheme and host compare
        without case, a missing trailing ``/`` is allowed).

        Raises:
            KeyError: no member has that URL (the message lists the members).
        """
        wanted = _url_key(name)
        for m in self.members:
            if _url_key(m.name) == wanted:
                return m
        known = ", ".join(m.name for m in self.members)
        raise KeyError(f"balancer://{self.name} has no member {name} (members: {known})")

    def update_member(
        self,
        member: _Member,
        *,
        flags: Optional[Mapping[str, bool]] = None,
        error: Optional[bool] = None,
        loadfactor: Optional[int] = None,
        lbset: Optional[int] = None,
        route: Optional[str] = None,
        redirect: Optional[str] = None,
    ) -> list[str]:
        """Change ``member`` live (R112). Every value is checked before any is applied.

        Args:
            member: a member of this balancer.
            flags: status flags to set (True) or clear (False), among `SETTABLE_FLAGS`.
            error: True puts the member in error state for its ``retry=``, False takes it
                out (``E``).
            loadfactor: 1..100.
            lbset: 0..99.
            route, redirect: the member's ``route=`` / ``redirect=`` ("" clears it).

        Returns:
            What changed, one "name: old -> new" line per value (empty: nothing did).

        Raises:
            BadChange: a flag or a value out of range (nothing was applied).
        """
        flags = dict(flags or {})
        bad = sorted(f for f in flags if f not in SETTABLE_FLAGS)
        if bad:
            raise BadChange(f"unknown status flag {', '.join(bad)} (expected one of {''.join(sorted(SETTABLE_FLAGS))} or E)")
        _check_range("loadfactor", loadfactor, LOADFACTOR_RANGE)
        _check_range("lbset", lbset, LBSET_RANGE)
        for what, text in (("route", route), ("redirect", redirect)):
            if text is not None and any(c.isspace() or not c.isprintable() for c in text):
                raise BadChange(f"{what} {text!r} holds a blank or a control character")
        with self._lock:
            now = self._clock()
            old = member.member
            was_usable = not (old.status & _OFF_FLAGS) and not self._in_error(member, now)
            status = set(old.status)
            for flag, on in flags.items():
                (status.add if on else status.discard)(flag)
            changes: dict[str, Any] = {}
            if frozenset(status) != old.status:
                changes["status"] = frozenset(status)
            for key, value in (("loadfactor", loadfactor), ("lbset", lbset), ("route", route), ("redirect", redirect)):
                if value is not None and value != getattr(old, key):
                    changes[key] = value
            done = [f"{key}: {_shown(getattr(old, key))} -> {_shown(value)}" for key, value in changes.items()]
            if changes:
                member.member = dataclasses.replace(old, **changes)
            if error is True and "I" not in member.member.status and not self._in_error(member, now):
                member.error_until = now + member.member.retry
                member.errors += 1
                done.append("error state: off -> on")
            elif error is False and member.error_until is not None:
                member.error_until = None
                done.append("error state: on -> off")
            if "lbset" in changes:
                self._group_tiers()
            usable = not (member.member.status & _OFF_FLAGS) and not self._in_error(member, now)
            if usable and not was_usable:
                self._reset_lbmethod()
            return done

    def update_balancer(
        self,
        *,
        lbmethod: Optional[str] = None,
        timeout: Optional[int] = None,
        maxattempts: Optional[int] = None,
        nofailover: Optional[bool] = None,
        stickysession: Optional[tuple[str, ...]] = None,
    ) -> list[str]:
        """Change the balancer's own settings live (``b_lbm``, ``b_tmo``, ``b_max``,
        ``b_sforce``, ``b_ss``). Returns what changed, as `update_member`.

        Raises:
            BadChange: an unknown lbmethod or a value out of range (nothing applied).
        """
        if lbmethod is not None and lbmethod not in LBMETHODS:
            raise BadChange(f"unknown lbmethod {lbmethod!r} (expected one of {', '.join(LBMETHODS)})")
        _check_range("timeout", timeout, TIMEOUT_RANGE)
        _check_range("maxattempts", maxattempts, MAXATTEMPTS_RANGE)
        with self._lock:
            old = self.balancer
            changes: dict[str, Any] = {}
            values: tuple[tuple[str, Any], ...] = (
                ("lbmethod", lbmethod),
                ("timeout", float(timeout) if timeout is not None else None),
                ("maxattempts", maxattempts),
                ("nofailover", nofailover),
                ("stickysession", stickysession),
            )
            for key, value in values:
                if value is not None and value != getattr(old, key):
                    changes[key] = value
            if not changes:
                return []
            self.balancer = dataclasses.replace(old, **changes)
            if "lbmethod" in changes:
                self._is_best = LBMETHODS[self.balancer.lbmethod]
                self._reset_lbmethod()
            return [f"{key}: {_shown(getattr(old, key))} -> {_shown(value)}" for key, value in changes.items()]

    def _reset_lbmethod(self) -> None:
        """httpd's need_reset: the lbmethod starts over (lock held)."""
        for m in self.members:
            m.lbstatus = 0
            if self.balancer.lbmethod == "bytraffic":
                m.transferred = m.read = 0



def _check_range(what: str, value: Optional[int], bounds: tuple[int, int]) -> None:
    if value is not None and not bounds[0] <= value <= bounds[1]:
        raise BadChange(f"{what} {value} is out of range (expected {bounds[0]}..{bounds[1]})")


def _shown(value: object) -> str:
    if isinstance(value, frozenset):
        return "".join(sorted(value)) or "-"
    if isinstance(value, tuple):
        return "|".join(value) or "-"
    if value is None or value == "":
        return "-"
    return str(value)


def _url_key(url: str) -> str:
    """A member URL compared as httpd compares worker names: scheme and authority
    without case, the path as written, a trailing ``/`` optional."""
    prefix, sep, rest = url.partition("://")
    if not sep:
        return url.rstrip("/")
    authority, slash, path = rest.partition("/")
    return f"{prefix.lower()}://{authority.lower()}{slash}{path}".rstrip("/")


