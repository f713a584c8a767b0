"""bench/compare.py: a quick benchmark run's ratios against the last full run.

Pure logic on two run documents shaped as bench/conftest.py writes them (no sockets).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

from bench import compare

ROOT = Path(__file__).resolve().parent.parent

RATE = {"key": "msgs_per_s", "label": "100 busy msgs/s", "unit": "msg/s", "better": "higher"}
LATENCY = {"key": "p99_us", "label": "100 busy RTT p99", "unit": "µs", "better": "lower"}
MEMORY = {"key": "kib_per_tunnel", "label": "idle memory/tunnel", "unit": "KiB", "better": "lower"}
ERRORS = {"key": "errors", "label": "errors", "unit": "", "better": "none"}

TARGETS = [
    {"name": "direct", "kind": "direct"},
    {"name": "tunnel-async", "kind": "tunnel"},
    {"name": "tunnel-sync", "kind": "tunnel"},
    {"name": "pyfloor-async", "kind": "pyfloor"},
    {"name": "nginx", "kind": "nginx"},
]


def run(
    busy: dict[str, dict[str, Any]],
    idle: Optional[dict[str, dict[str, Any]]] = None,
    *,
    mode: str = "full",
    idle_tunnels: int = 4000,
    targets: Optional[list[dict[str, str]]] = None,
) -> dict[str, Any]:
    scenarios: dict[str, Any] = {
        "c_busy_100": {"title": "(c) busy", "metrics": [RATE, LATENCY, ERRORS], "median": busy},
    }
    if idle is not None:
        scenarios["e_idle_memory"] = {"title": "(e) idle", "metrics": [MEMORY], "median": idle}
    return {
        "mode": mode,
        "started": "2026-12-01T00:00:00+00:00",
        "sizes": {"idle_tunnels": idle_tunnels, "max_tunnels": 9900, "bulk_bytes": 512 << 20},
        "targets": targets if targets is not None else TARGETS,
        "scenarios": scenarios,
    }


def busy_row(rate: float, p99: float, errors: int = 0) -> dict[str, Any]:
    return {"msgs_per_s": rate, "p99_us": p99, "errors": errors}


def find(findings: list[compare.Finding], target: str, metric: str) -> compare.Finding:
    (hit,) = [f for f in findings if f.target == target and f.metric == metric]
    return hit


# the full run: tunnel-async at 0.50x direct in rate and 4.0x in p99
FULL = run({"direct": busy_row(200_000, 1000), "tunnel-async": busy_row(100_000, 4000)})


def test_a_rate_26_percent_lower_warns_and_24_percent_does_not() -> None:
    for ratio, warned in ((0.50 * 0.74, True), (0.50 * 0.76, False)):
        # another machine: direct twice as fast; only the ratio to direct counts
        quick = run({"direct": busy_row(400_000, 1000), "tunnel-async": busy_row(400_000 * ratio, 4000)}, mode="quick")
        hit = find(compare.compare(quick, FULL), "tunnel-async", "msgs_per_s")
        assert hit.relative
        assert hit.regressed is warned, (ratio, hit.worse_by)
        assert any("tunnel-async 100 busy msgs/s" in line for line in compare.report(quick, FULL)) is warned


def test_a_latency_26_percent_higher_warns_and_24_percent_does_not() -> None:
    for p99, warned in ((4000 * 1.26, True), (4000 * 1.24, False)):
        quick = run({"direct": busy_row(200_000, 1000), "tunnel-async": busy_row(100_000, p99)}, mode="quick")
        assert find(compare.compare(quick, FULL), "tunnel-async", "p99_us").regressed is warned


def test_direction_is_respected_a_rate_up_or_a_latency_down_never_warns() -> None:
    # rate 2x the full run's ratio, latency half of it: both far better, neither a warning
    quick = run({"direct": busy_row(200_000, 1000), "tunnel-async": busy_row(200_000, 2000)}, mode="quick")
    findings = compare.compare(quick, FULL)
    assert find(findings, "tunnel-async", "msgs_per_s").worse_by == -1.0
    assert find(findings, "tunnel-async", "p99_us").worse_by == -0.5
    assert not any(f.regressed for f in findings)
    lines = compare.report(quick, FULL)
    assert lines == ["compared with the full run (2026-12-01T00:00:00+00:00, ratios to direct): "
                     "0 of 2 measures more than 25% worse"]


def test_ratio_to_direct_not_the_absolute_figure() -> None:
    # half the absolute rate on a machine where direct is half as fast: the same ratio, no warning
    quick = run({"direct": busy_row(100_000, 2000), "tunnel-async": busy_row(50_000, 8000)}, mode="quick")
    findings = compare.compare(quick, FULL)
    assert [f.regressed for f in findings] == [False, False]
    assert find(findings, "tunnel-async", "msgs_per_s").quick == 0.5


def test_measures_absent_failed_or_without_direction_are_skipped() -> None:
    quick = run(
        {
            "direct": busy_row(200_000, 1000, errors=9),
            "tunnel-async": {"msgs_per_s": 10.0, "p99_us": None, "errors": 50},  # p99 missing here
            "tunnel-sync": busy_row(1, 10**9),  # absent from the full run
            "pyfloor-async": busy_row(1, 10**9),  # not a tunnel target
            "nginx": busy_row(1, 10**9),
        },
        mode="quick",
    )
    findings = compare.compare(quick, FULL)
    assert [(f.target, f.metric) for f in findings] == [("tunnel-async", "msgs_per_s")]
    failed = run({"direct": busy_row(200_000, 1000), "tunnel-async": {"failed": "BenchError: x", "msgs_per_s": 1.0}})
    assert compare.compare(failed, FULL) == []
    assert compare.report(failed, FULL)[-1].endswith("no measure in common, nothing compared")


def test_memory_without_a_direct_figure_is_compared_as_is_and_sizes_that_differ_are_said() -> None:
    full = run({"direct": busy_row(200_000, 1000)}, {"direct": {"kib_per_tunnel": None}, "tunnel-async": {"kib_per_tunnel": 4.0}})
    for kib, warned in ((4.0 * 1.26, True), (4.0 * 1.24, False)):
        quick = run({"direct": busy_row(200_000, 1000)},
                    {"direct": {"kib_per_tunnel": None}, "tunnel-async": {"kib_per_tunnel": kib}},
                    mode="quick", idle_tunnels=1000)
        hit = find(compare.compare(quick, full), "tunnel-async", "kib_per_tunnel")
        assert not hit.relative
        assert hit.regressed is warned
        if warned:
            (line, summary) = compare.report(quick, full)
            assert "sizes differ: idle_tunnels 1,000 here, 4,000 in the full run" in line
            assert "lower is better" in line
            assert summary.startswith("compared with the full run") and "1 of 1 measures more than 25% worse" in summary
    # same sizes: no note
    same = run({"direct": busy_row(200_000, 1000)},
               {"direct": {"kib_per_tunnel": None}, "tunnel-async": {"kib_per_tunnel": 9.0}}, idle_tunnels=4000)
    assert find(compare.compare(same, full), "tunnel-async", "kib_per_tunnel").sizes == ""


def test_the_command_line_prints_the_lines_and_exits_0(tmp_path: Path) -> None:
    quick = run({"direct": busy_row(200_000, 1000), "tunnel-async": busy_row(50_000, 4000)}, mode="quick")
    (tmp_path / "q.json").write_text(json.dumps(quick))
    (tmp_path / "f.json").write_text(json.dumps(FULL))
    done = subprocess.run([sys.executable, "-m", "bench.compare", str(tmp_path / "q.json"), str(tmp_path / "f.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("warning: tunnel-async 100 busy msgs/s (c_busy_100): 0.25× direct in this run, "
                               "0.50× direct in the full run: 50% worse (higher is better)")
    assert "1 of 2 measures more than 25% worse" in lines[1]
