"""What the status pages, the metrics and ``tunnel ctl`` read: counters kept as requests
and tunnels end, and a snapshot of one process taken when asked (R111, R113).

`Recorder` is the engine's: it counts every finished request (by status), every
handshake (a request with an Upgrade header, by status), every tunnel opened (by vhost,
route and strategy) and closed (by reason class), bytes each way, and three histograms
(handshake time, time to the backend's 101, tunnel lifetime). Labels are bounded:
routes are named by the configuration line of their rule (``file:line``), close reasons
by their class ("eof", "idle timeout", "error", ...), never by a client's path.

A snapshot (`Recorder.snapshot`) is plain JSON-able data, so the snapshots of sibling
worker processes can be sent over their control sockets and added up (`merge`). Bytes of
a tunnel still open are read from its pump at snapshot time and moved into the closed
totals under the same lock that removes it from the live set, so a total never goes
back.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from .._version import __version__
from ..config.model import Balancer, Config
from ..protocol.balancer import Balancers, BalancerState
from ..tunnels.pump import Budget, Pump
from ..tunnels.sync_driver import ThreadPool
from .records import Exchange, TunnelStart

__all__ = ["Recorder", "merge", "HISTOGRAMS", "route_label", "reason_class", "balancer_view", "nonce_for", "process_snapshot"]

#: Histogram bucket bounds, seconds (Prometheus ``le``; +Inf is implied).
HANDSHAKE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LIFETIME_BUCKETS = (0.1, 1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)
#: name -> (bounds, help text)
HISTOGRAMS: Mapping[str, tuple[tuple[float, ...], str]] = {
    "handshake": (HANDSHAKE_BUCKETS, "Seconds from a handshake's request head to its 101 sent to the client"),
    "backend_upgrade": (HANDSHAKE_BUCKETS, "Seconds from the request sent to a backend to its 101 read"),
    "lifetime": (LIFETIME_BUCKETS, "Seconds a tunnel was open"),
}


def route_label(ex: Exchange) -> str:
    """The route as a bounded label: its rule's ``file:line`` ("-" when none matched)."""
    return ex.notes.get("route_at", "-")


def reason_class(reason: str) -> str:
    """A close reason without its details: "error: read from client: ..." -> "error"."""
    return (reason or "unknown").split(":", 1)[0].strip() or "unknown"


@dataclass
class _Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # one per bound, plus +Inf
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.n += 1

    def data(self) -> dict[str, Any]:
        return {"bounds": list(self.bounds), "counts": list(self.counts), "sum": self.total, "count": self.n}


class Recorder:
    """The counters of one engine. Thread-safe: the loop and sync threads both report."""

    def __init__(self, *, worker: int = 0) -> None:
        self._lock = threading.Lock()
        self.worker = worker
        self.started = time.time()
        self.started_mono = time.monotonic()
        self.requests: Counter[str] = Counter()  # plain HTTP requests by status
        self.handshakes: Counter[str] = Counter()  # upgrade requests by status
        self.opened: Counter[tuple[str, str, str]] = Counter()  # (vhost, route, strategy)
        self.closes: Counter[str] = Counter()  # close reason class
        self.totals: Counter[str] = Counter()  # accesses, duration_ms, http_in, http_out, tunnel_*
        self.histograms = {name: _Histogram(bounds) for name, (bounds, _) in HISTOGRAMS.items()}
        self._handshake_times = self.histograms["handshake"]
        self._upgrade_times = self.histograms["backend_upgrade"]
        self._lifetimes = self.histograms["lifetime"]
        #: the tunnels open now; each start carries its id and opening time (``ident``,
        #: ``opened``), so a live tunnel costs this table's entry and nothing more.
        self._live: dict[Pump, TunnelStart] = {}
        self._next_id = 0

    # -- reporting ---------------------------------------------------------------------
    def request_done(self, ex: Exchange) -> None:
        """A request that opened no tunnel ended (its access-log entry is written)."""
        status = str(ex.status or 0)
        with self._lock:
            self.totals["accesses"] += 1
            self.totals["duration_ms"] += int((time.monotonic() - ex.started) * 1000)
            self.totals["http_in"] += ex.bytes_in
            self.totals["http_out"] += ex.bytes_out
            if ex.head is not None and ex.head.get("upgrade") is not None:
                self.handshakes[status] += 1
            else:
                self.requests[status] += 1

    def tunnel_opened(self, ts: TunnelStart, strategy: str) -> str:
        """A tunnel's 101 went out: count it and keep it in the live set. Returns its id."""
        ex = ts.exchange
        now = time.monotonic()
        with self._lock:
            self._next_id += 1
            ident = f"{self.worker}.{self._next_id}"
            ts.ident, ts.opened = ident, now
            self._live[ts.pump] = ts
            totals = self.totals
            totals["accesses"] += 1
            self.handshakes["101"] += 1
            self.opened[(ex.vhost, ex.notes.get("route_at", "-"), strategy)] += 1  # route_label
            totals["http_in"] += ex.bytes_in - ex.early_in  # the heads; tunnel bytes below
            totals["http_out"] += ex.bytes_out - ex.early_out
            self._handshake_times.observe(now - ex.started)
            if ex.answered_at and ex.sent_at:
                self._upgrade_times.observe(max(0.0, ex.answered_at - ex.sent_at))
        return ident

    def tunnel_closed(self, ts: TunnelStart) -> None:
        """A tunnel ended: its bytes move from the live set into the totals."""
        ex, pump = ts.exchange, ts.pump
        with self._lock:
            live = self._live.pop(pump, None)
            totals = self.totals
            c2b, b2c = pump.c2b, pump.b2c
            totals["tunnel_c2b"] += ex.early_in + c2b.count
            totals["tunnel_b2c"] += ex.early_out + b2c.count
            if c2b.frames is not None and b2c.frames is not None:  # frames followed (R162)
                totals["frames_c2b"] += c2b.frames.frames
                totals["frames_b2c"] += b2c.frames.frames
            now = time.monotonic()
            totals["duration_ms"] += int((now - ex.started) * 1000)
            self.closes[reason_class(pump.reason)] += 1
            if live is not None:
                self._lifetimes.observe(now - live.opened)

    def tunnel_adopted(self, ts: TunnelStart, ident: str, opened: float) -> None:
        """A tunnel moved in from the old process of a binary upgrade: live again under
        its id, not counted as opened a second time (R158)."""
        worker, _, number = ident.partition(".")
        with self._lock:
            if worker == str(self.worker) and number.isdigit():
                self._next_id = max(self._next_id, int(number))  # our new ids come after its
            ts.ident, ts.opened = ident or f"{self.worker}.moved", opened
            self._live[ts.pump] = ts

    def tunnel_moved(self, ts: TunnelStart) -> None:
        """A tunnel went to the new process of a binary upgrade: out of the live set,
        not counted as closed (the new process counts its end)."""
        with self._lock:
            self._live.pop(ts.pump, None)
            self.closes["moved"] += 1

    def live(self) -> list[TunnelStart]:
        with self._lock:
            return list(self._live.values())

    # -- reading -----------------------------------------------------------------------
    def snapshot(self, *, extra: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
        """This process's figures and live tunnels as JSON-able data (see `merge`)."""
        now = time.monotonic()
        with self._lock:
            live = list(self._live.values())
            totals = dict(self.totals)
            tunnels = [_tunnel_row(t, now) for t in live]
            data: dict[str, Any] = {
                "worker": self.worker,
                "started": self.started,
                "uptime": now - self.started_mono,
                "requests": dict(self.requests),
                "handshakes": dict(self.handshakes),
                "opened": [[*key, n] for key, n in sorted(self.opened.items())],
                "closes": dict(self.closes),
                "histograms": {name: h.data() for name, h in self.histograms.items()},
            }
        totals["tunnel_c2b"] = totals.get("tunnel_c2b", 0) + sum(t["to_backend"] for t in tunnels)
        totals["tunnel_b2c"] = totals.get("tunnel_b2c", 0) + sum(t["to_client"] for t in tunnels)
        totals["frames_c2b"] = totals.get("frames_c2b", 0) + sum(t["frames_to_backend"] or 0 for t in tunnels)
        totals["frames_b2c"] = totals.get("frames_b2c", 0) + sum(t["frames_to_client"] or 0 for t in tunnels)
        data["totals"] = totals
        data["tunnels"] = tunnels
        data.update(extra or {})
        return data


def _tunnel_row(t: TunnelStart, now: float) -> dict[str, Any]:
    ex, pump = t.exchange, t.pump
    notes = ex.notes
    head = ex.head
    last = pump.last_activity or t.opened
    c2b, b2c = pump.c2b.frames, pump.b2c.frames
    if c2b is None or b2c is None:
        c2b = b2c = None
    return {
        "id": t.ident,
        "client": str(ex.peer[0]),
        "vhost": ex.vhost,
        "path": head.target if head is not None else "-",
        "route": notes.get("route", "-"),
        "route_at": route_label(ex),
        "rewrite": notes.get("rewrite", ""),
        "backend": notes.get("backend", "-"),
        "balancer": notes.get("balancer", ""),
        "member": notes.get("member", ""),
        "strategy": notes.get("strategy", "?"),
        "age": now - t.opened,
        "idle": max(0.0, now - last),
        "to_backend": ex.early_in + pump.c2b.count,
        "to_client": ex.early_out + pump.b2c.count,
        "buffered": pump.buffered,
        # Whole frames seen each way when the relay follows them, else None (R162).
        "frames_to_backend": c2b.frames if c2b is not None else None,
        "frames_to_client": b2c.frames if b2c is not None else None,
    }


def process_snapshot(
    recorder: Recorder,
    config: Config,
    balancers: Balancers,
    secret: str,
    pool: ThreadPool,
    budget: Optional[Budget],
    *,
    connections: int,
    server_name: str,
    drained: bool = False,
) -> dict[str, Any]:
    """An engine's snapshot: the recorder's figures and tunnels, plus the pool, the
    buffer budget, the client connections and every balancer."""
    live = recorder.live()
    return recorder.snapshot(
        extra={
            "pid": os.getpid(),
            "version": __version__,
            "config": config.source,
            "extended": config.extended_status,
            "server_name": server_name,
            "drained": drained,
            "pool": {"max": pool.max_threads, "busy": pool.busy, "threads": pool.threads},
            "buffer": {"used": budget.used if budget else sum(t.pump.buffered for t in live), "limit": config.buffer_limit},
            "connections": connections + len(live),
            "balancers": {name: balancer_view(state, nonce_for(secret, state.balancer), live) for name, state in balancers.items()},
        }
    )


def nonce_for(secret: str, balancer: Balancer) -> str:
    """balancer-manager's nonce: ``ProxySet nonce=`` when set, else a UUID-shaped value
    derived from the run's secret and the balancer's name (the same in every worker,
    new with every start, as httpd makes one per start)."""
    if balancer.nonce is not None:
        return balancer.nonce
    h = hashlib.sha256(f"{secret}:{balancer.name}".encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def balancer_view(state: BalancerState, nonce: str, live: Iterable[TunnelStart]) -> dict[str, Any]:
    """One balancer's settings and members, the bytes of its open tunnels included."""
    b = state.balancer
    members = state.snapshot()
    by_name = {m["name"]: m for m in members}
    for t in live:
        ex = t.exchange
        if t.balancer is state and ex.notes.get("member") in by_name:
            row = by_name[ex.notes["member"]]
            row["transferred"] += ex.early_in + t.pump.c2b.count
            row["read"] += ex.early_out + t.pump.b2c.count
    return {
        "name": b.name,
        "lbmethod": b.lbmethod,
        "timeout": b.timeout,
        "maxattempts": state.attempts_allowed(),
        "nofailover": b.nofailover,
        "stickysession": list(b.stickysession),
        "nonce": nonce,
        "members": members,
    }


def merge(snapshots: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Add up the snapshots of several workers: counters and histograms summed, tunnel
    lists joined, balancer members' counters summed (flags and settings are the first
    worker's: changes are pushed to all of them)."""
    out: dict[str, Any] = {
        "workers": [],
        "requests": Counter(),
        "handshakes": Counter(),
        "closes": Counter(),
        "totals": Counter(),
        "opened": Counter(),
        "tunnels": [],
        "histograms": {},
        "balancers": {},
        "pool": Counter(),
        "buffer": Counter(),
        "connections": 0,
    }
    for snap in snapshots:
        out["workers"].append(
            {"worker": snap["worker"], "pid": snap.get("pid"), "uptime": snap["uptime"], "up": True, "drained": bool(snap.get("drained"))}
        )
        for key in ("requests", "handshakes", "closes", "totals", "pool", "buffer"):
            out[key].update(snap.get(key, {}))
        for *labels, n in snap.get("opened", []):
            out["opened"][tuple(labels)] += n
        out["tunnels"].extend(snap.get("tunnels", []))
        out["connections"] += snap.get("connections", 0)
        for name, hist in snap.get("histograms", {}).items():
            have = out["histograms"].setdefault(name, {"bounds": hist["bounds"], "counts": [0] * len(hist["counts"]), "sum": 0.0, "count": 0})
            have["counts"] = [a + b for a, b in zip(have["counts"], hist["counts"], strict=True)]
            have["sum"] += hist["sum"]
            have["count"] += hist["count"]
        for name, bal in snap.get("balancers", {}).items():
            have = out["balancers"].get(name)
            if have is None:
                out["balancers"][name] = {**bal, "members": [dict(m) for m in bal["members"]]}
                continue
            for mine, theirs in zip(have["members"], bal["members"], strict=True):
                for key in ("busy", "elected", "transferred", "read", "errors"):
                    mine[key] += theirs[key]
        for key in ("started", "version", "config", "extended", "server_name"):
            if key in snap and key not in out:
                out[key] = snap[key]
    out["opened"] = [[*k, n] for k, n in sorted(out["opened"].items())]
    for key in ("requests", "handshakes", "closes", "totals", "pool", "buffer"):
        out[key] = dict(out[key])
    return out
