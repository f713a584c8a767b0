"""One view over every worker, and changes that reach them all (R116).

With ``--workers N`` each worker serves a private control socket; the worker that got a
status page, a scrape or a ``tunnel ctl`` request asks its siblings for their snapshots
(`gather`) and adds them up (`stats.merge`), and a balancer change it applies is then
sent to each sibling (`push`). Each sibling gets `PEER_TIMEOUT` seconds; one that does
not answer is listed as unreachable (``down``) instead of holding the answer up.

`OPS` is the table of control-socket operations (``snapshot``, ``apply`` and
``set-drain`` for siblings; ``status``, ``tunnels``, ``member``, ``balancer``, ``drain``
for ``tunnel ctl``). A new command is one more entry.

``drain`` (``tunnel ctl drain|undrain``) sets the ready handler's state in this worker
and then in each sibling, since a balancer's health check may reach any of them (R152);
a worker that restarts takes the state of a sibling (`adopt`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Mapping
from typing import Any, Optional

from ..io.loop import Wait, run_blocking
from ..protocol.balancer import BadChange
from .control import ControlError, ask
from .services import Services
from .stats import merge

__all__ = ["gather", "apply_change", "push", "adopt", "OPS", "handle", "PEER_TIMEOUT", "Change"]

#: How long one sibling may take to answer.
PEER_TIMEOUT = 2.0

#: A balancer change: ``balancer``, optional ``member`` (its URL), and the values:
#: ``flags`` ({"D": true, ...}), ``error``, ``loadfactor``, ``lbset``, ``route``,
#: ``redirect`` for the member; ``lbmethod``, ``timeout``, ``maxattempts``,
#: ``nofailover``, ``stickysession`` for the balancer.
Change = Mapping[str, Any]

_MEMBER_KEYS = ("flags", "error", "loadfactor", "lbset", "route", "redirect")
_BALANCER_KEYS = ("lbmethod", "timeout", "maxattempts", "nofailover", "stickysession")


def gather(engine: Services, timeout: float = PEER_TIMEOUT) -> Generator[Wait, None, dict[str, Any]]:
    """Every worker's snapshot, added up; ``down`` lists the siblings that did not answer."""
    snaps = [engine.snapshot()]
    down: list[dict[str, Any]] = []
    cluster = engine.cluster
    for slot in cluster.siblings():
        try:
            answer = yield from ask(cluster.peer_path(slot), {"op": "snapshot"}, time.monotonic() + timeout)
        except ControlError as exc:
            down.append({"worker": slot, "error": str(exc)})
            continue
        if answer.get("ok") and isinstance(answer.get("snapshot"), dict):
            snaps.append(answer["snapshot"])
        else:
            down.append({"worker": slot, "error": str(answer.get("error", "bad answer"))})
    merged = merge(sorted(snaps, key=lambda s: int(s["worker"])))
    merged["down"] = down
    for gone in down:
        merged["workers"].append({"worker": gone["worker"], "pid": None, "uptime": 0.0, "up": False, "error": gone["error"]})
    merged["workers"].sort(key=lambda w: int(w["worker"]))
    return merged


def apply_change(engine: Services, change: Change) -> list[str]:
    """Apply ``change`` in this process. Returns what changed.

    Raises:
        KeyError: no such balancer or member (the message names the known ones).
        BadChange: a bad value (nothing of it was applied).
    """
    name = str(change.get("balancer") or "")
    if name not in engine.config.balancers:
        known = ", ".join(sorted(engine.config.balancers)) or "none"
        raise KeyError(f"no balancer://{name} (balancers: {known})")
    state = engine.balancer(name)
    done: list[str] = []
    member_values = {k: change[k] for k in _MEMBER_KEYS if change.get(k) is not None}
    if change.get("member"):
        member = state.member_named(str(change["member"]))
        done += [f"{member.name}: {line}" for line in state.update_member(member, **member_values)]
    elif member_values:
        raise BadChange(f"{', '.join(member_values)} need a member")
    balancer_values = {k: change[k] for k in _BALANCER_KEYS if change.get(k) is not None}
    if "stickysession" in balancer_values:
        balancer_values["stickysession"] = tuple(balancer_values["stickysession"])
    done += [f"balancer://{name}: {line}" for line in state.update_balancer(**balancer_values)]
    return done


def push(engine: Services, change: Change, timeout: float = PEER_TIMEOUT) -> Generator[Wait, None, list[dict[str, Any]]]:
    """Send ``change`` (already applied here) to every sibling. One row per worker."""
    cluster = engine.cluster
    rows: list[dict[str, Any]] = [{"worker": cluster.slot, "ok": True}]
    for slot in cluster.siblings():
        try:
            answer = yield from ask(cluster.peer_path(slot), {"op": "apply", "change": dict(change)}, time.monotonic() + timeout)
        except ControlError as exc:
            rows.append({"worker": slot, "ok": False, "error": str(exc)})
            continue
        rows.append({"worker": slot, "ok": bool(answer.get("ok")), "error": answer.get("error")})
    return rows


def adopt(engine: Services, timeout: float = 1.0) -> Optional[int]:
    """A worker (re)starting takes the balancer settings of the first sibling that
    answers, so changes made before it started are not lost. Returns that sibling's slot,
    or None when none answered (the first start: all begin from the configuration)."""
    cluster = engine.cluster
    for slot in cluster.siblings():
        try:
            answer = run_blocking(ask(cluster.peer_path(slot), {"op": "snapshot"}, time.monotonic() + timeout))
        except ControlError:
            continue
        if (answer.get("snapshot") or {}).get("drained"):
            engine.probes.drain(True)  # drained before this worker (re)started (R152)
        views = (answer.get("snapshot") or {}).get("balancers") or {}
        for name, view in views.items():
            if name not in engine.config.balancers:
                continue
            state = engine.balancer(name)
            state.update_balancer(
                lbmethod=view["lbmethod"],
                timeout=int(view["timeout"]),
                nofailover=bool(view["nofailover"]),
                stickysession=tuple(view["stickysession"]),
            )
            for row in view["members"]:
                try:
                    member = state.member_named(row["name"])
                    state.update_member(
                        member,
                        flags={flag: flag in row["status"] for flag in "INDHRS"},
                        loadfactor=int(row["loadfactor"]),
                        lbset=int(row["lbset"]),
                        route=str(row["route"]),
                        redirect=str(row["redirect"]),
                    )
                except (KeyError, BadChange):
                    continue
        return slot
    return None


def _op_snapshot(engine: Services, request: Mapping[str, Any]) -> dict[str, Any]:
    return {"ok": True, "snapshot": engine.snapshot()}


def _op_apply(engine: Services, request: Mapping[str, Any]) -> dict[str, Any]:
    """A sibling passes on a change it applied (not pushed further)."""
    return _change(engine, request.get("change") or {}, spread=False)


def _op_status(engine: Services, request: Mapping[str, Any]) -> dict[str, Any]:
    return {"ok": True, "status": run_blocking(gather(engine))}


def _op_tunnels(engine: Services, request: Mapping[str, Any]) -> dict[str, Any]:
    merged = run_blocking(gather(engine))
    rows = merged["tunnels"]
    route = request.get("route")
    if route:
        rows = [t for t in rows if route in (t["route_at"], t["route"]) or t["route"].startswith(f"{route} (")]
    return {"ok": True, "tunnels": rows, "down": merged["down"]}


def _op_member(engine: Services, request: Mapping[str, Any]) -> dict[str, Any]:
    return _change(engine, request.get("change") or {}, spread=True)


def _op_drain(engine: Services, request: Mapping[str, Any]) -> dict[str, Any]:
    """``tunnel ctl drain|undrain``: here, then in every sibling (R152)."""
    on = request.get("drained")
    if not isinstance(on, bool):
        return {"ok": False, "error": f"drained must be true or false, got {on!r}"}
    rows: list[dict[str, Any]] = [{"worker": engine.cluster.slot, "ok": True, "changed": engine.probes.drain(on)}]
    for slot in engine.cluster.siblings():
        try:
            answer = run_blocking(ask(engine.cluster.peer_path(slot), {"op": "set-drain", "drained": on}, time.monotonic() + PEER_TIMEOUT))
        except ControlError as exc:
            rows.append({"worker": slot, "ok": False, "error": str(exc)})
            continue
        rows.append({"worker": slot, "ok": bool(answer.get("ok")), "changed": bool(answer.get("changed")), "error": answer.get("error")})
    return {"ok": True, "drained": on, "workers": rows}


def _op_set_drain(engine: Services, request: Mapping[str, Any]) -> dict[str, Any]:
    """A sibling passes on a drain or undrain (not passed further)."""
    on = request.get("drained")
    if not isinstance(on, bool):
        return {"ok": False, "error": f"drained must be true or false, got {on!r}"}
    return {"ok": True, "changed": engine.probes.drain(on)}


def _change(engine: Services, change: Mapping[str, Any], *, spread: bool) -> dict[str, Any]:
    try:
        done = apply_change(engine, change)
    except KeyError as exc:
        return {"ok": False, "error": str(exc.args[0])}
    except BadChange as exc:
        return {"ok": False, "error": str(exc)}
    workers = run_blocking(push(engine, change)) if spread else []
    return {"ok": True, "changes": done, "workers": workers}


#: Control-socket operations: name -> function(engine, request) -> answer.
OPS: dict[str, Callable[[Services, Mapping[str, Any]], dict[str, Any]]] = {
    "snapshot": _op_snapshot,
    "apply": _op_apply,
    "status": _op_status,
    "tunnels": _op_tunnels,
    "member": _op_member,
    "balancer": _op_member,
    "drain": _op_drain,
    "set-drain": _op_set_drain,
}


def handle(engine: Services, request: Mapping[str, Any]) -> dict[str, Any]:
    """Answer one control-socket request (from the control thread)."""
    op: Optional[Callable[[Services, Mapping[str, Any]], dict[str, Any]]] = OPS.get(str(request.get("op")))
    if op is None:
        return {"ok": False, "error": f"unknown operation {request.get('op')!r} (known: {', '.join(OPS)})"}
    return op(engine, request)
