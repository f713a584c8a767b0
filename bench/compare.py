"""A quick run's figures against the last full run committed (``bench/results/latest.json``).

`make bench-quick` calls `compare` at the end and prints one warning line for every
measure of a tunnel target more than `THRESHOLD` (25%) worse than in the full run, then a
summary line. Nothing is asserted and the run's exit status never changes: a quick run is
one short round on a machine that may be busy, so a warning says "look", not "broken".

What is compared, so that two machines or two modes can be compared at all:

* each tunnel target's figure **as a ratio to the direct connection of the same run**
  (absolute rates differ between machines; the ratio to direct much less). A measure
  the direct connection has no figure for (memory per idle tunnel: there is no proxy)
  is compared as it is, in KiB per tunnel, which does not depend on the machine's speed;
* in the measure's direction: a rate ("higher" is better) is worse when it falls, a
  latency or a memory figure ("lower") when it grows. "More than 25% worse" is a rate
  below 0.75 of the full run's, or a latency/memory above 1.25 of it;
* only what both runs have: a scenario, target or measure absent from either (or failed,
  or None) is skipped, and so are measures whose direction is "none" (error counts);
* quick and full runs measure some scenarios at other sizes (bulk bytes, idle tunnels,
  tunnels held). Those are still compared (a per-tunnel or per-byte figure should not
  move much with the size), and the warning line says that the sizes differ and which.

Run by hand: ``python -m bench.compare bench/build/quick.json bench/results/latest.json``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

#: A measure more than this much worse than in the full run gets a warning line.
THRESHOLD = 0.25

#: The size fields of a run's ``sizes`` (the scenarios' `Mode`) each scenario depends on.
SIZE_FIELDS: dict[str, tuple[str, ...]] = {
    "a_bulk": ("bulk_bytes",),
    "e_idle_memory": ("idle_tunnels",),
    "g_max_tunnels": ("max_tunnels",),
}


@dataclass(frozen=True)
class Finding:
    """One measure of one target in both runs."""

    scenario: str
    target: str
    metric: str
    label: str
    better: str
    quick: float  # the figure compared: ratio to direct, or the value itself (``relative`` False)
    full: float
    relative: bool
    sizes: str  # "" when the sizes agree, else what differs

    @property
    def worse_by(self) -> float:
        """How much worse the quick figure is, as a fraction (negative: better)."""
        if self.better == "higher":
            return 1.0 - self.quick / self.full
        return self.quick / self.full - 1.0

    @property
    def regressed(self) -> bool:
        return self.worse_by > THRESHOLD

    def line(self) -> str:
        def show(v: float) -> str:
            return f"{v:.2f}× direct" if self.relative else f"{v:.3g}"
        note = f"; sizes differ: {self.sizes}" if self.sizes else ""
        return (f"warning: {self.target} {self.label} ({self.scenario}): {show(self.quick)} in this run, "
                f"{show(self.full)} in the full run: {self.worse_by:.0%} worse ({self.better} is better{note})")


def _number(v: Any) -> Optional[float]:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def _figure(median: dict[str, Any], target: str, key: str) -> tuple[Optional[float], bool]:
    """The figure compared: (ratio to direct, True), or (the value, False) when direct has none."""
    row = median.get(target, {})
    value = _number(row.get(key))
    if value is None:
        return None, False
    direct = _number(median.get("direct", {}).get(key))
    if direct is None:
        return value, False
    if direct == 0:
        return None, True
    return value / direct, True


def _size_note(scenario: str, quick: dict[str, Any], full: dict[str, Any]) -> str:
    qs, fs = quick.get("sizes", {}), full.get("sizes", {})
    diffs = [f"{f} {qs[f]:,} here, {fs[f]:,} in the full run" for f in SIZE_FIELDS.get(scenario, ())
             if f in qs and f in fs and qs[f] != fs[f]]
    return ", ".join(diffs)


def compare(quick: dict[str, Any], full: dict[str, Any]) -> list[Finding]:
    """Every measure of every tunnel target that both runs have, in the quick run's order."""
    full_targets = {t["name"] for t in full.get("targets", []) if t.get("kind") == "tunnel"}
    targets = [t["name"] for t in quick.get("targets", []) if t.get("kind") == "tunnel" and t["name"] in full_targets]
    findings: list[Finding] = []
    for key, sc in quick.get("scenarios", {}).items():
        other = full.get("scenarios", {}).get(key)
        if other is None:
            continue
        qmed, fmed = sc.get("median", {}), other.get("median", {})
        sizes = _size_note(key, quick, full)
        for metric in sc.get("metrics", []):
            better = metric.get("better")
            if better not in ("higher", "lower"):
                continue
            k = metric["key"]
            for t in targets:
                if "failed" in qmed.get(t, {}) or "failed" in fmed.get(t, {}):
                    continue
                q, q_rel = _figure(qmed, t, k)
                f, f_rel = _figure(fmed, t, k)
                if q is None or f is None or q_rel != f_rel or f == 0:
                    continue
                findings.append(Finding(key, t, k, metric.get("label", k), better, q, f, q_rel, sizes))
    return findings


def report(quick: dict[str, Any], full: dict[str, Any], full_name: str = "the full run") -> list[str]:
    """The warning lines (one per measure more than 25% worse), then one summary line."""
    findings = compare(quick, full)
    bad = [f for f in findings if f.regressed]
    lines = [f.line() for f in bad]
    when = full.get("started", "?")
    if not findings:
        lines.append(f"compared with {full_name} ({when}): no measure in common, nothing compared")
    else:
        lines.append(f"compared with {full_name} ({when}, ratios to direct): {len(bad)} of {len(findings)} "
                     f"measures more than {THRESHOLD:.0%} worse" + (" (warnings above; not a failure)" if bad else ""))
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m bench.compare QUICK.json FULL.json", file=sys.stderr)
        return 2
    quick, full = (json.loads(Path(p).read_text()) for p in argv)
    for line in report(quick, full, argv[1]):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
