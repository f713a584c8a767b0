"""Reports of a benchmark run: JSON (everything), Markdown (ratios) and a PNG chart.

``python -m bench.report bench/results/latest.json`` redraws the Markdown and the chart
from a saved run.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

PEERS = ("nginx", "haproxy", "httpd")
#: (tunnel target, the pure-Python floor of the same strategy) compared in their own table.
FLOOR_PAIRS = (("tunnel-async", "pyfloor-async"), ("tunnel-sync", "pyfloor-sync"))

#: (scenario, metric) pairs drawn in the chart as ratios to the direct connection.
CHART = (
    ("a_bulk", "down_mb_s", "bulk\nbackend→client"),
    ("a_bulk", "up_mb_s", "bulk\nclient→backend"),
    ("b_pingpong_1", "msgs_per_s", "1 tunnel\nmsgs/s"),
    ("c_busy_100", "msgs_per_s", "100 busy\nmsgs/s"),
    ("d_handshake", "tunnels_per_s", "handshakes/s\nc=32"),
    ("f_active_1000", "msgs_per_s", "1000 active\nmsgs/s"),
)


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.0f}"
        return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _pct(v: Any) -> str:
    return "–" if v is None else f"{v:.0f}"


def ratio(a: Any, b: Any) -> Optional[float]:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or not b:
        return None
    return a / b


def _r(x: Optional[float]) -> str:
    return "–" if x is None else f"{x:.2f}×"


def _versus(r: Optional[float], better: str) -> str:
    """A ratio ``ours ÷ theirs`` and which side it favours, by the measure's direction."""
    if r is None:
        return "–"
    if abs(r - 1.0) < 0.005:
        return f"{r:.2f}× (even)"
    ours = r > 1.0 if better == "higher" else r < 1.0
    return f"{r:.2f}× ({'better' if ours else 'worse'})"


def _present(run: dict[str, Any]) -> list[dict[str, Any]]:
    return run["targets"]


def markdown(run: dict[str, Any]) -> str:
    targets = _present(run)
    names = [t["name"] for t in targets]
    tunnels = [t["name"] for t in targets if t["kind"] == "tunnel"]
    peers = [t["name"] for t in targets if t["kind"] in PEERS]
    out: list[str] = []
    out.append(f"# Benchmark results ({run['mode']}, {run['rounds']} interleaved round(s), medians)")
    out.append("")
    m = run.get("machine", {})
    out.append(f"Run {run.get('started', '?')} on {m.get('cores', '?')} cores, Linux {m.get('kernel', '?')}, "
               f"Python {m.get('python', '?')}. Cells: value (ratio to the direct connection).")
    for kind, why in sorted(run.get("skipped", {}).items()):
        out.append(f"- **{kind} skipped**: {why}")
    out.append("")
    out.append("| target | what |")
    out.append("|---|---|")
    for t in targets:
        out.append(f"| {t['name']} | {t['label']} |")
    out.append("")

    # 1. measured values, ratio to direct
    out.append("## Measured values (ratio to direct)")
    out.append("")
    out.append("| measure | " + " | ".join(names) + " |")
    out.append("|---|" + "---|" * len(names))
    for sc in run["scenarios"].values():
        med = sc["median"]
        for metric in sc["metrics"]:
            k = metric["key"]
            unit = f" ({metric['unit']})" if metric["unit"] else ""
            cells = []
            direct = med.get("direct", {}).get(k)
            for n in names:
                v = med.get(n, {}).get(k)
                if "failed" in med.get(n, {}) and v is None:
                    cells.append("failed")
                    continue
                r = ratio(v, direct) if n != "direct" and metric["better"] != "none" else None
                cells.append(_fmt(v) + (f" ({_r(r)})" if r is not None else ""))
            out.append(f"| {metric['label']}{unit} | " + " | ".join(cells) + " |")
    out.append("")

    # 2. CPU next to each figure
    out.append("## CPU during each measurement (% of one core: proxy / backend / load generator)")
    out.append("")
    out.append("| scenario | " + " | ".join(names) + " |")
    out.append("|---|" + "---|" * len(names))
    for key, sc in run["scenarios"].items():
        med = sc["median"]
        prefixes = ["down_", "up_"] if key == "a_bulk" else [""]
        for p in prefixes:
            cells = []
            for n in names:
                d = med.get(n, {})
                if d.get(f"{p}cpu_proxy_pct") is None:
                    cells.append("–")
                else:
                    proxy = "–" if n == "direct" else _pct(d.get(f"{p}cpu_proxy_pct"))
                    cells.append(f"{proxy} / {_pct(d.get(f'{p}cpu_backend_pct'))} / {_pct(d.get(f'{p}cpu_loadgen_pct'))}")
            label = sc["title"] + (f" {p[:-1]}" if p else "")
            out.append(f"| {label} | " + " | ".join(cells) + " |")
    out.append("")

    # 3. tunnel vs each peer
    for peer in peers:
        out.append(f"## tunnel ÷ {peer} (>1 means tunnel's figure is larger: better for rates, worse for latency/memory)")
        out.append("")
        out.append("| measure | " + " | ".join(tunnels) + " |")
        out.append("|---|" + "---|" * len(tunnels))
        for sc in run["scenarios"].values():
            med = sc["median"]
            for metric in sc["metrics"]:
                if metric["better"] == "none":
                    continue
                k = metric["key"]
                pv = med.get(peer, {}).get(k)
                out.append(f"| {metric['label']} | " + " | ".join(_r(ratio(med.get(t, {}).get(k), pv)) for t in tunnels) + " |")
        out.append("")

    # 3b. tunnel vs the pure-Python floor (bench/floor.py) of the same strategy
    pairs = [(t, f) for t, f in FLOOR_PAIRS if t in names and f in names]
    if pairs:
        out.append("## tunnel ÷ pure-Python floor (tunnel's figure ÷ the floor's; each cell says which is better)")
        out.append("")
        out.append("The floor (`bench/floor.py`) is the cheapest relay Python can be: no configuration, no "
                   "checks, no logs. \"better\"/\"worse\" is tunnel's side, by the measure's direction.")
        out.append("")
        out.append("| measure | better is | " + " | ".join(f"{t} ÷ {f}" for t, f in pairs) + " |")
        out.append("|---|---|" + "---|" * len(pairs))
        for sc in run["scenarios"].values():
            med = sc["median"]
            for metric in sc["metrics"]:
                if metric["better"] == "none":
                    continue
                k = metric["key"]
                cells = [_versus(ratio(med.get(t, {}).get(k), med.get(f, {}).get(k)), metric["better"]) for t, f in pairs]
                out.append(f"| {metric['label']} | {metric['better']} | " + " | ".join(cells) + " |")
        out.append("")

    # 4. milestones
    out.append("## Milestones")
    out.append("")
    out.append("| goal | " + " | ".join(tunnels) + " |")
    out.append("|---|" + "---|" * len(tunnels))
    for label, fn in milestones(run):
        out.append(f"| {label} | " + " | ".join(fn(t) for t in tunnels) + " |")
    out.append("")
    out.append("## Second-pass goals")
    out.append("")
    out.append("Each goal applies to the targets it names (– elsewhere); the pure-Python floor's figure for")
    out.append("the same goal is in the last column, to show what the cheapest Python relay reaches.")
    out.append("")
    floors = {"tunnel-async": "pyfloor-async", "tunnel-async-w2": "pyfloor-async", "tunnel-sync": "pyfloor-sync", "tunnel-sync-w2": "pyfloor-sync"}
    out.append("| goal | " + " | ".join(tunnels) + " | floor (async / sync) |")
    out.append("|---|" + "---|" * (len(tunnels) + 1))
    for label, fn, applies in second_pass_goals(run):
        cells = [fn(t) if t in applies else "–" for t in tunnels]
        floor_cells = sorted({floors[t] for t in applies if t in floors})
        floor = " / ".join(fn(f, mark=False) for f in floor_cells) or "–"
        out.append(f"| {label} | " + " | ".join(cells) + f" | {floor} |")
    out.append("")

    fails = {(key, n): msgs for key, sc in run["scenarios"].items() for n, msgs in sc.get("failures", {}).items()}
    if fails:
        out.append("## Failures")
        out.append("")
        for (key, n), msgs in fails.items():
            out.append(f"- {key} / {n}: {msgs[0].splitlines()[0][:300]}")
        out.append("")
    return "\n".join(out)


def _median_of(run: dict[str, Any]) -> Callable[[str, str, str], Any]:
    """``med(scenario, target, metric)``: a run's median figure, None where it has none."""
    sc = run["scenarios"]

    def med(key: str, name: str, metric: str) -> Any:
        return sc.get(key, {}).get("median", {}).get(name, {}).get(metric)

    return med


def milestones(run: dict[str, Any]) -> list[tuple[str, Any]]:
    med = _median_of(run)

    def versus(key: str, metric: str, peer: str, goal: float, higher: bool) -> Any:
        def cell(t: str) -> str:
            r = ratio(med(key, t, metric), med(key, peer, metric))
            if r is None:
                return "no " + peer if med(key, peer, metric) is None else "–"
            ok = r >= goal if higher else r <= goal
            return f"{r:.2f}× {'✅' if ok else '❌'}"
        return cell

    def bulk(t: str) -> str:
        rs = [ratio(med("a_bulk", t, k), med("a_bulk", "haproxy", k)) for k in ("down_mb_s", "up_mb_s")]
        if any(r is None for r in rs):
            return "no haproxy" if med("a_bulk", "haproxy", "down_mb_s") is None else "–"
        ok = min(rs) >= 1.0  # type: ignore[type-var]
        return f"↓{rs[0]:.2f}× ↑{rs[1]:.2f}× {'✅' if ok else '❌'}"

    def memory(t: str) -> str:
        v = med("e_idle_memory", t, "kib_per_tunnel")
        return "–" if v is None else f"{v:.1f} KiB {'✅' if v <= 8 else '❌'}"

    def held(t: str) -> str:
        v = med("g_max_tunnels", t, "max_tunnels")
        e = med("g_max_tunnels", t, "errors")
        if v is None:
            return "–"
        top = 9900 if run.get("mode") == "full" else v + (e or 0)
        ok = v >= top and not e
        return f"{v:,} ({e or 0} err) {'✅' if ok else '❌'}"

    return [
        ("bulk throughput ≥ 1.0× HAProxy (both directions)", bulk),
        ("1 tunnel p50 ≤ 1.3× nginx", versus("b_pingpong_1", "p50_us", "nginx", 1.3, False)),
        ("100 busy msgs/s ≥ httpd", versus("c_busy_100", "msgs_per_s", "httpd", 1.0, True)),
        ("handshakes/s ≥ 0.75× httpd", versus("d_handshake", "tunnels_per_s", "httpd", 0.75, True)),
        ("idle memory ≤ 8 KiB/tunnel", memory),
        ("9,900 tunnels in one process, no error" if run.get("mode") == "full"
         else "all tunnels held, no error (quick: 2,000)", held),
    ]


def second_pass_goals(run: dict[str, Any]) -> list[tuple[str, Callable[..., str], set[str]]]:
    """The second performance pass's goals: (label, cell function, targets it applies to)."""
    med = _median_of(run)
    asyncs, syncs = {"tunnel-async", "tunnel-async-w2"}, {"tunnel-sync", "tunnel-sync-w2"}

    def judged(r: Optional[float], goal: float, higher: bool, mark: bool, unit: str = "×") -> str:
        if r is None:
            return "–"
        ok = r >= goal if higher else r <= goal
        figure = f"{r:.2f}{unit}" if unit == "×" else f"{r:,.1f}{unit}"
        return f"{figure} {'✅' if ok else '❌'}" if mark else figure

    def versus(key: str, metric: str, peer: str, goal: float, higher: bool = True) -> Callable[..., str]:
        def cell(t: str, mark: bool = True) -> str:
            return judged(ratio(med(key, t, metric), med(key, peer, metric)), goal, higher, mark)
        return cell

    def of_async(key: str, metric: str, goal: float) -> Callable[..., str]:
        def cell(t: str, mark: bool = True) -> str:
            mate = {"tunnel-sync": "tunnel-async", "tunnel-sync-w2": "tunnel-async-w2", "pyfloor-sync": "pyfloor-async"}[t]
            return judged(ratio(med(key, t, metric), med(key, mate, metric)), goal, True, mark)
        return cell

    def absolute(key: str, metric: str, goal: float, unit: str, scale: float = 1.0) -> Callable[..., str]:
        def cell(t: str, mark: bool = True) -> str:
            v = med(key, t, metric)
            return judged(None if v is None else v * scale, goal, False, mark, unit)
        return cell

    def bulk(t: str, mark: bool = True) -> str:
        down, up = (ratio(med("a_bulk", t, k), med("a_bulk", "direct", k)) for k in ("down_mb_s", "up_mb_s"))
        if down is None or up is None:
            return "–"
        figure = f"↓{down:.2f}× ↑{up:.2f}×"
        return f"{figure} {'✅' if min(down, up) >= 0.75 else '❌'}" if mark else figure

    return [
        ("handshakes/s ≥ 0.65× nginx (async, one process)", versus("d_handshake", "tunnels_per_s", "nginx", 0.65), {"tunnel-async"}),
        ("handshakes/s ≥ 0.8× nginx (async, `--workers 2`)", versus("d_handshake", "tunnels_per_s", "nginx", 0.8), {"tunnel-async-w2"}),
        ("handshakes/s ≥ 0.4× nginx (sync)", versus("d_handshake", "tunnels_per_s", "nginx", 0.4), syncs),
        ("100 busy msgs/s ≥ 1.0× nginx (async)", versus("c_busy_100", "msgs_per_s", "nginx", 1.0), asyncs),
        ("100 busy msgs/s ≥ 0.5× async (sync)", of_async("c_busy_100", "msgs_per_s", 0.5), syncs),
        ("1,000 active msgs/s ≥ 1.0× nginx (async)", versus("f_active_1000", "msgs_per_s", "nginx", 1.0), asyncs),
        ("1,000 active p99 ≤ 50 ms (sync)", absolute("f_active_1000", "p99_us", 50.0, " ms", 1e-3), syncs),
        ("1 tunnel p50 ≤ 1.0× nginx", versus("b_pingpong_1", "p50_us", "nginx", 1.0, higher=False), asyncs | syncs),
        ("1 tunnel p99 ≤ 1.15× nginx", versus("b_pingpong_1", "p99_us", "nginx", 1.15, higher=False), asyncs | syncs),
        ("idle tunnel ≤ 2.0 KiB (async)", absolute("e_idle_memory", "kib_per_tunnel", 2.0, " KiB"), asyncs),
        ("idle tunnel ≤ 10 KiB (sync)", absolute("e_idle_memory", "kib_per_tunnel", 10.0, " KiB"), syncs),
        ("bulk ≥ 0.75× direct, both ways", bulk, asyncs | syncs),
    ]


def chart(run: dict[str, Any], path: Path) -> Optional[Path]:
    """Bars of ratio-to-direct per measure and target, and idle KiB/tunnel. None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    targets = [t["name"] for t in run["targets"] if t["kind"] != "direct"]
    sc = run["scenarios"]
    measures = [(k, m, label) for k, m, label in CHART if k in sc]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(15, 5.5), gridspec_kw={"width_ratios": [3.2, 1]})
    width = 0.8 / max(1, len(targets))
    colors = plt.get_cmap("tab10")
    for i, t in enumerate(targets):
        vals = []
        for key, metric, _ in measures:
            med = sc[key]["median"]
            vals.append(ratio(med.get(t, {}).get(metric), med.get("direct", {}).get(metric)) or 0.0)
        xs = [j + (i - (len(targets) - 1) / 2) * width for j in range(len(measures))]
        if t.startswith("pyfloor"):  # the floor: white bars with a hatch, apart from the proxies
            ax.bar(xs, vals, width, label=t, color="white", edgecolor=colors(i % 10), hatch="///")
        else:
            ax.bar(xs, vals, width, label=t, color=colors(i % 10))
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(measures)))
    ax.set_xticklabels([label for _, _, label in measures], fontsize=8)
    ax.set_ylabel("ratio to a direct connection (higher is better)")
    ax.set_title(f"Throughput and rates vs direct ({run['mode']}, medians of {run['rounds']} round(s))")
    ax.legend(fontsize=7, ncol=2)
    if "e_idle_memory" in sc:
        med = sc["e_idle_memory"]["median"]
        vals = [med.get(t, {}).get("kib_per_tunnel") or 0.0 for t in targets]
        floor = [t.startswith("pyfloor") for t in targets]
        ax2.bar(range(len(targets)), vals, color=["white" if f else colors(i % 10) for i, f in enumerate(floor)],
                edgecolor=[colors(i % 10) for i in range(len(targets))], hatch=None)
        for i, f in enumerate(floor):
            if f:
                ax2.patches[i].set_hatch("///")
        ax2.axhline(8.0, color="red", linestyle="--", linewidth=0.8, label="goal 8 KiB")
        ax2.set_xticks(range(len(targets)))
        ax2.set_xticklabels(targets, rotation=60, ha="right", fontsize=7)
        ax2.set_yscale("log")
        ax2.set_ylabel("KiB of proxy RSS per idle tunnel (log)")
        ax2.set_title("memory per idle tunnel")
        ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_all(run: dict[str, Any], directory: Path, name: str) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"json": directory / f"{name}.json", "md": directory / f"{name}.md"}
    paths["json"].write_text(json.dumps(run, indent=1, default=str) + "\n")
    paths["md"].write_text(markdown(run) + "\n")
    png = chart(run, directory / f"{name}.png")
    if png:
        paths["png"] = png
    return paths


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bench.report RESULTS.json", file=sys.stderr)
        return 2
    src = Path(argv[0])
    run = json.loads(src.read_text())
    paths = write_all(run, src.parent, src.stem)
    print(paths["md"].read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
