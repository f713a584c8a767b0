"""The seven benchmark scenarios, each a function ``(env, target) -> metrics``.

A metrics dict holds numbers (None when a figure does not apply, e.g. the memory of a
proxy for the direct connection), ``errors``, and the CPU of the proxy (all its
processes), of the C backend and of the C load generator, in % of one core over the
measurement (`harness.Usage`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

from .harness import BenchError, Holder, Meter, Target, run_loadgen, thread_count, wait_until


@dataclass(frozen=True)
class Mode:
    """How long and how big: `QUICK` for CI, `FULL` for ``make bench``."""

    name: str
    rounds: int
    bulk_bytes: int
    warmup: float
    duration: float
    idle_tunnels: int
    max_tunnels: int
    probe_warmup: float
    probe_duration: float
    open_timeout: float  # seconds allowed to open the idle tunnels of one step (e, g)


#: CI's run: every scenario, small (1,000 idle tunnels, 2,000 held), one round.
QUICK = Mode("quick", 1, 128 << 20, 0.2, 0.8, 1000, 2000, 0.1, 0.4, 10.0)
#: ``make bench``: the full sizes, medians of 3 interleaved rounds.
FULL = Mode("full", 3, 512 << 20, 0.5, 3.0, 4000, 9900, 0.3, 2.0, 30.0)


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    better: str  # "higher" | "lower" | "none"


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    metrics: tuple[Metric, ...]
    run: Callable[..., dict[str, Any]]
    fresh: bool = False  # a new proxy process for every measurement


def _cpu(meter: Meter, loadgen_cpu: float) -> dict[str, float]:
    meter.usage.loadgen = loadgen_cpu
    return meter.usage.as_dict()


# ----------------------------------------------------------------------------- (a)


def bulk(env: Any, t: Target) -> dict[str, Any]:
    mode: Mode = env.mode
    out: dict[str, Any] = {"errors": 0}
    for direction in ("down", "up"):
        with Meter(t, env.backend) as m:
            res = run_loadgen(f"bulk-{direction}", t.port, wall=120, bytes=mode.bulk_bytes, timeout=60)
        out[f"{direction}_mb_s"] = res["mb_per_s"] if not res["errors"] else None
        out["errors"] += res["errors"]
        for k, v in _cpu(m, res["cpu_s"]).items():
            out[f"{direction}_{k}"] = v
    return out


# ------------------------------------------------------------------------ (b) (c) (f)


def _pingpong(env: Any, t: Target, conns: int) -> dict[str, Any]:
    mode: Mode = env.mode
    with Meter(t, env.backend) as m:
        res = run_loadgen("pingpong", t.port, wall=180, conns=conns, size=64, warmup=mode.warmup,
                          duration=mode.duration, timeout=60, conc=64)
    out = {k: res[k] for k in ("msgs_per_s", "p50_us", "p90_us", "p99_us")}
    out["errors"] = res["errors"] + res["open_errors"]
    out["conns"] = res["conns"]
    out.update(_cpu(m, res["cpu_s"]))
    return out


def pingpong_1(env: Any, t: Target) -> dict[str, Any]:
    return _pingpong(env, t, 1)


def busy_100(env: Any, t: Target) -> dict[str, Any]:
    return _pingpong(env, t, 100)


def active_1000(env: Any, t: Target) -> dict[str, Any]:
    return _pingpong(env, t, 1000)


# ----------------------------------------------------------------------------- (d)


def handshake(env: Any, t: Target) -> dict[str, Any]:
    mode: Mode = env.mode
    with Meter(t, env.backend) as m:
        res = run_loadgen("handshake", t.port, wall=120, conc=32, size=64, warmup=mode.warmup, duration=mode.duration)
    out = {"tunnels_per_s": res["per_s"], "errors": res["errors"], "p50_us": res["p50_us"], "p99_us": res["p99_us"]}
    out.update(_cpu(m, res["cpu_s"]))
    return out


# ----------------------------------------------------------------------------- (e)


def _stable_rss(t: Target, timeout: float = 5.0) -> int:
    """RSS once two readings 100 ms apart agree within 0.5% (bounded by ``timeout``)."""
    last = [t.rss_kib()]

    def settled() -> Optional[int]:
        time.sleep(0.1)  # the interval between two readings, not a readiness wait
        now = t.rss_kib()
        prev, last[0] = last[0], now
        return now if abs(now - prev) <= max(64, prev * 0.005) else None

    try:
        return wait_until(settled, timeout, "RSS to settle", interval=0)
    except BenchError:
        return last[0]


def idle_memory(env: Any, t: Target) -> dict[str, Any]:
    mode: Mode = env.mode
    n = mode.idle_tunnels
    if not t.spec.is_proxy:  # no proxy, no proxy memory: the direct column stays empty
        return {"kib_per_tunnel": None, "errors": 0, "tunnels": n}
    with Holder(t.port, n, timeout=mode.open_timeout) as h:
        before = _stable_rss(t)
        with Meter(t, env.backend) as m:
            opened = h.cmd(f"open {n}")
        after = _stable_rss(t)
        check = h.cmd("check")
    alive = check["alive"]
    out = {
        "kib_per_tunnel": round((after - before) / alive, 2) if alive else None,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "tunnels": alive,
        "errors": opened["errors"] + (n - alive),
        "open_per_s": round(opened["ok"] / opened["seconds"], 1) if opened["seconds"] else None,
        "threads": thread_count(t.pids()),
    }
    out.update(_cpu(m, opened["cpu_s"]))
    return out


# ----------------------------------------------------------------------------- (g)


def max_tunnels(env: Any, t: Target) -> dict[str, Any]:
    mode: Mode = env.mode
    top = mode.max_tunnels
    out: dict[str, Any] = {"open_errors": 0, "probe_errors": 0}
    with Holder(t.port, top, timeout=mode.open_timeout) as h:
        for level, key in ((10, "10"), (1000, "1000"), (top, "max")):
            opened = h.cmd(f"open {level}")
            out["open_errors"] += opened["errors"]
            if key == "max":
                out["open_per_s"] = round(opened["ok"] / opened["seconds"], 1) if opened["seconds"] else None
            with Meter(t, env.backend) as m:
                probe = h.cmd(f"probe {mode.probe_warmup} {mode.probe_duration}")
            out[f"p99_{key}_us"] = probe["p99_us"] if probe["msgs"] else None
            out[f"p50_{key}_us"] = probe["p50_us"] if probe["msgs"] else None
            out["probe_errors"] += probe["errors"]
            if key == "max":
                out.update(_cpu(m, probe["cpu_s"]))
        pinged = h.cmd(f"pingall {mode.open_timeout}")
        out["max_tunnels"] = pinged["answered"]
        # every tunnel asked for and not answering at the end, plus probe failures
        out["errors"] = top - pinged["answered"] + out["probe_errors"]
        out["rss_at_max_kib"] = t.rss_kib() if t.spec.is_proxy else None
        out["threads_at_max"] = thread_count(t.pids()) if t.spec.is_proxy else None
    return out


SCENARIOS: dict[str, Scenario] = {
    s.key: s
    for s in (
        Scenario("a_bulk", "(a) bulk throughput, one tunnel", (
            Metric("down_mb_s", "bulk backend→client", "MB/s", "higher"),
            Metric("up_mb_s", "bulk client→backend", "MB/s", "higher"),
        ), bulk),
        Scenario("b_pingpong_1", "(b) one tunnel ping-pong, 64 B", (
            Metric("p50_us", "1 tunnel RTT p50", "µs", "lower"),
            Metric("p90_us", "1 tunnel RTT p90", "µs", "lower"),
            Metric("p99_us", "1 tunnel RTT p99", "µs", "lower"),
            Metric("msgs_per_s", "1 tunnel msgs/s", "msg/s", "higher"),
        ), pingpong_1),
        Scenario("c_busy_100", "(c) 100 busy tunnels ping-pong", (
            Metric("msgs_per_s", "100 busy msgs/s", "msg/s", "higher"),
            Metric("p99_us", "100 busy RTT p99", "µs", "lower"),
        ), busy_100),
        Scenario("d_handshake", "(d) handshake + echo + close, c=32", (
            Metric("tunnels_per_s", "handshakes/s", "1/s", "higher"),
            Metric("errors", "handshake errors", "", "none"),
        ), handshake),
        Scenario("e_idle_memory", "(e) memory per idle tunnel", (
            Metric("kib_per_tunnel", "idle memory/tunnel", "KiB", "lower"),
        ), idle_memory, fresh=True),
        Scenario("f_active_1000", "(f) 1,000 active tunnels ping-pong", (
            Metric("msgs_per_s", "1000 active msgs/s", "msg/s", "higher"),
            Metric("p99_us", "1000 active RTT p99", "µs", "lower"),
        ), active_1000),
        Scenario("g_max_tunnels", "(g) tunnels held by one proxy, probe p99", (
            Metric("max_tunnels", "tunnels held (echo each at the end)", "", "higher"),
            Metric("open_per_s", "tunnels opened/s on the way to max", "1/s", "higher"),
            Metric("p99_10_us", "probe p99 @10", "µs", "lower"),
            Metric("p99_1000_us", "probe p99 @1000", "µs", "lower"),
            Metric("p99_max_us", "probe p99 @max", "µs", "lower"),
            Metric("errors", "max-tunnel errors", "", "none"),
        ), max_tunnels, fresh=True),
    )
}
