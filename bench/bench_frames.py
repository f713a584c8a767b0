"""What following WebSocket frame headers costs, on real WebSocket framing (R160).

Two ``tunnel serve`` processes per strategy, the same but for
``ProxyWebsocketFrameTracking On`` / ``Off``, relay the C load generator and backend in
framing mode (``loadgen --frame F``: masked frames from the client, unmasked ones from the
backend, so both of the relay's followers read real headers). Measured in interleaved
rounds (the order of on/off alternates), medians: one tunnel's ping-pong (64-byte frames;
p50, p99), 100 busy tunnels (msgs/s), and bulk through one tunnel each way with 64 B,
1 KiB and 16 KiB frames; with each, the proxy's CPU time per message or per MB (user +
system, from /proc), which other load on the machine moves far less than the rates. Reports: ``bench/build/frames.{json,md}``. Nothing is asserted.
"""

from __future__ import annotations

import json
import statistics
from typing import Any

from .harness import BUILD, Backend, Target, TargetSpec, build, run_loadgen

#: (figure, unit, better) in report order.
FIGURES: tuple[tuple[str, str, str], ...] = (
    ("1 tunnel RTT p50", "µs", "lower"),
    ("1 tunnel RTT p99", "µs", "lower"),
    ("1 tunnel msgs/s", "msg/s", "higher"),
    ("100 busy msgs/s", "msg/s", "higher"),
    ("100 busy RTT p99", "µs", "lower"),
    *((f"bulk {d} {f}", "MB/s", "higher") for f in ("64 B", "1 KiB", "16 KiB") for d in ("down", "up")),
    ("1 tunnel proxy CPU/msg", "µs", "lower"),
    ("100 busy proxy CPU/msg", "µs", "lower"),
    *((f"bulk {d} {f} proxy CPU/MB", "µs", "lower") for f in ("64 B", "1 KiB", "16 KiB") for d in ("down", "up")),
)
FRAMES = {"64 B": 64, "1 KiB": 1024, "16 KiB": 16384}


def measure(t: Target, quick: bool) -> dict[str, float]:
    """Every figure once against the proxy ``t``, with the proxy's CPU time per message
    or per MB (less moved by other load on the machine than the rates are)."""
    warmup, duration = (0.2, 1.0) if quick else (0.5, 3.0)
    out: dict[str, float] = {}
    port = t.port
    cpu = t.cpu()
    one = run_loadgen("pingpong", port, wall=60, conns=1, frame=64, warmup=warmup, duration=duration, timeout=30)
    out["1 tunnel RTT p50"], out["1 tunnel RTT p99"], out["1 tunnel msgs/s"] = one["p50_us"], one["p99_us"], one["msgs_per_s"]
    out["1 tunnel proxy CPU/msg"] = (t.cpu() - cpu) * 1e6 / max(1, one["msgs"] * (warmup + duration) / duration)
    cpu = t.cpu()
    busy = run_loadgen("pingpong", port, wall=60, conns=100, frame=64, warmup=warmup, duration=duration, timeout=30, conc=64)
    out["100 busy msgs/s"], out["100 busy RTT p99"] = busy["msgs_per_s"], busy["p99_us"]
    out["100 busy proxy CPU/msg"] = (t.cpu() - cpu) * 1e6 / max(1, busy["msgs"] * (warmup + duration) / duration)
    for name, size in FRAMES.items():
        total = (16 if size == 64 else 64) << 20 if quick else (64 if size == 64 else 256) << 20
        for direction in ("down", "up"):
            cpu = t.cpu()
            res = run_loadgen(f"bulk-{direction}", port, wall=120, bytes=total, frame=size, timeout=90)
            out[f"bulk {direction} {name}"] = res["mb_per_s"] if not res["errors"] else float("nan")
            out[f"bulk {direction} {name} proxy CPU/MB"] = (t.cpu() - cpu) * 1e6 / (total / 1e6)
    return out


def bench_frame_tracking_cost(benchmark: Any, request: Any) -> None:
    quick = request.config.getoption("--bench-mode") == "quick"
    rounds = request.config.getoption("--bench-rounds") or (2 if quick else 5)
    build()
    strategies = ("async", "sync")
    backend = Backend(2 * len(strategies))
    targets: dict[tuple[str, str], Target] = {}
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        for strategy in strategies:
            for tracking in ("On", "Off"):
                spec = TargetSpec(
                    f"tunnel-{strategy}-frames-{tracking.lower()}", "tunnel", strategy=strategy,
                    backend_port=backend.allot(), extra=(f"ProxyWebsocketFrameTracking {tracking}",),
                )
                targets[(strategy, tracking)] = Target(spec)
                results[(strategy, tracking)] = []
        counter = [0]

        def one_round() -> None:
            order = ("On", "Off") if counter[0] % 2 == 0 else ("Off", "On")
            counter[0] += 1
            for strategy in strategies:
                for tracking in order:
                    results[(strategy, tracking)].append(measure(targets[(strategy, tracking)], quick))

        benchmark.pedantic(one_round, rounds=rounds, iterations=1)
    finally:
        for t in targets.values():
            t.stop()
        backend.stop()
    medians = {
        f"{s} {t}": {k: statistics.median(r[k] for r in runs) for k, _, _ in FIGURES} for (s, t), runs in results.items()
    }
    lines = [
        "# Frame tracking on and off, real WebSocket framing (C load generator and backend, --frame F)",
        "",
        f"{rounds} interleaved round(s), medians. Cost = how much worse On is than Off (+: worse).",
        "",
        "| figure | " + " | ".join(f"{s} On | {s} Off | {s} cost" for s in strategies) + " |",
        "|---|" + "---|---|---|" * len(strategies),
    ]
    for key, unit, better in FIGURES:
        cells = []
        for s in strategies:
            on, off = medians[f"{s} On"][key], medians[f"{s} Off"][key]
            # A figure too small to measure in a short run (CPU time rounds to 0) has no ratio.
            if better == "lower":
                cost = on / off - 1 if off else float("nan")
            else:
                cost = off / on - 1 if on else float("nan")
            cells.append(f"{on:,.1f} | {off:,.1f} | {cost * 100:+.1f}%")
        lines.append(f"| {key} ({unit}) | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    BUILD.mkdir(parents=True, exist_ok=True)
    (BUILD / "frames.md").write_text(text)
    raw = {f"{s} {t}": runs for (s, t), runs in results.items()}
    (BUILD / "frames.json").write_text(json.dumps({"medians": medians, "rounds": raw}, indent=2))
    print("\n" + text)
