"""The balancer's lbmethods (balancers/mod_lbmethod_*.c), as `tunnel.protocol.balancer`
uses them.

Each candidate is offered in order to an ``is_best(candidate, best_so_far, tally)`` test,
and the last one it accepted is elected:

- ``byrequests``: the candidate's ``lbstatus`` grows by its loadfactor and the total of
  loadfactors offered is kept; the highest ``lbstatus`` wins, the earlier on a tie, and
  the winner loses the total. Loadfactors 1:2:3 give C B A C B C, then repeat.
- ``bybusyness``: the least ``busy`` wins, ties decided as byrequests (whose counters it
  keeps too). ``busy`` counts in-flight requests and open tunnels (the balancer's
  ``acquire``/``release``).
- ``bytraffic``: the least ``(transferred + read) / loadfactor`` wins, the earlier on a
  tie. **tunnel:** tunnel bytes count (the balancer's ``add_traffic``), and the ratio is
  compared exactly; httpd divides each counter by loadfactor × 100 in integers, which
  only loses precision.

Pure, like the balancer: the functions only read and update the counters they are given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Optional, Protocol

from ..config.model import Member

__all__ = ["Candidate", "Tally", "IsBest", "charge", "LBMETHODS"]


class Candidate(Protocol):
    """What an lbmethod reads and updates of a member (`balancer.MemberState` is one)."""

    member: Member
    lbstatus: int
    busy: int
    transferred: int
    read: int


class Tally:
    """What one election carries between ``is_best`` calls: the loadfactors offered."""

    __slots__ = ("total",)

    def __init__(self) -> None:
        self.total = 0


#: ``is_best(candidate, best_so_far, tally)``: True when the candidate becomes the best.
IsBest = Callable[[Candidate, Optional[Candidate], Tally], bool]


def charge(candidate: Candidate, tally: Tally) -> None:
    """byrequests' bookkeeping for one offered candidate."""
    candidate.lbstatus += candidate.member.loadfactor
    tally.total += candidate.member.loadfactor


def _is_best_byrequests(candidate: Candidate, best: Optional[Candidate], tally: Tally) -> bool:
    charge(candidate, tally)
    # Strictly greater: on a tie the member offered first stays the best.
    return best is None or candidate.lbstatus > best.lbstatus


def _is_best_bybusyness(candidate: Candidate, best: Optional[Candidate], tally: Tally) -> bool:
    charge(candidate, tally)
    if best is None or candidate.busy < best.busy:
        return True
    return candidate.busy == best.busy and candidate.lbstatus > best.lbstatus


def _is_best_bytraffic(candidate: Candidate, best: Optional[Candidate], tally: Tally) -> bool:
    if best is None:
        return True
    # traffic / loadfactor, compared by cross-multiplying: exact, no rounding.
    ours = (candidate.transferred + candidate.read) * best.member.loadfactor
    theirs = (best.transferred + best.read) * candidate.member.loadfactor
    return ours < theirs


#: The lbmethods by their ``lbmethod=`` name. bytraffic never adds to the tally, so the
#: winner's ``lbstatus -= total`` that follows every election leaves it untouched.
LBMETHODS: Mapping[str, IsBest] = {
    "byrequests": _is_best_byrequests,
    "bybusyness": _is_best_bybusyness,
    "bytraffic": _is_best_bytraffic,
}
