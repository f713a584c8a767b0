"""The benchmark session: build the C tools, start the backend and every proxy under test,
run each scenario in interleaved rounds, and write the reports at the end.

Reports: ``bench/results/latest.{json,md,png}`` for a full run, ``bench/build/quick.*`` for
a quick one, which then compares its ratios with the last full run committed
(``bench/compare.py``: warning lines, never a failure). Run through ``make bench`` / ``make bench-quick`` (or ``python -m pytest -c bench/pytest.ini
--rootdir bench -p no:cacheprovider bench/ --bench-mode quick``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from . import compare, report
from .harness import BUILD, Backend, BenchError, Target, TargetSpec, build, find_peer, peer_version
from .scenarios import FULL, QUICK, Mode, Scenario

RESULTS_DIR = Path(__file__).resolve().parent / "results"

#: Everything the session measured, written by pytest_sessionfinish.
_RUN: dict[str, Any] = {}
#: A quick run's lines against the last full run (bench/compare.py), printed last.
_COMPARED: list[str] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tunnel-bench")
    group.addoption("--bench-mode", choices=("quick", "full"), default="quick", help="quick (CI) or full (make bench)")
    group.addoption("--bench-rounds", type=int, default=0, help="interleaved rounds (default: 1 quick, 3 full)")
    group.addoption("--bench-out", default="", help="report name in bench/results/ (default: latest or quick)")
    group.addoption("--bench-peers", choices=("auto", "none"), default="auto",
                    help="auto: nginx, HAProxy, httpd when installed; none: skip them")
    group.addoption("--bench-targets", default="", help="comma-separated subset of target names (debugging)")


class Env:
    """The running session: mode, backend, targets (persistent instances), results."""

    def __init__(self, mode: Mode, rounds: int, specs: list[TargetSpec], skipped: dict[str, str]) -> None:
        self.mode = mode
        self.rounds = rounds
        self.specs = specs
        self.skipped = skipped
        self.backend: Optional[Backend] = None
        self.running: dict[str, Target] = {}

    def target(self, spec: TargetSpec) -> Target:
        """The persistent instance of spec (restarted if it died)."""
        t = self.running.get(spec.name)
        if t is not None and t.proc is not None and not t.proc.alive():
            t.stop()
            t = None
        if t is None:
            t = self.running[spec.name] = Target(spec)
        return t

    def stop(self) -> None:
        for t in self.running.values():
            t.stop()
        self.running.clear()
        if self.backend:
            self.backend.stop()


def _specs(config: pytest.Config) -> tuple[list[TargetSpec], dict[str, str]]:
    specs = [TargetSpec("direct", "direct", label="direct (no proxy)")]
    for workers in (1, 2):
        for strategy in ("async", "sync"):
            name = f"tunnel-{strategy}" + (f"-w{workers}" if workers > 1 else "")
            label = f"tunnel {strategy}" + (f" --workers {workers}" if workers > 1 else "")
            specs.append(TargetSpec(name, "tunnel", strategy=strategy, workers=workers, label=label))
    only = [n for n in config.getoption("--bench-targets").split(",") if n]
    # the pure-Python floor (bench/floor.py): in every full run, in a quick one when named
    if config.getoption("--bench-mode") == "full" or any(n.startswith("pyfloor-") for n in only):
        specs.append(TargetSpec("pyfloor-async", "pyfloor", strategy="async",
                                label="pure-Python floor, one epoll thread (bench/floor.py)"))
        specs.append(TargetSpec("pyfloor-sync", "pyfloor", strategy="sync",
                                label="pure-Python floor, a thread per tunnel (bench/floor.py)"))
    skipped: dict[str, str] = {}
    for kind in ("nginx", "haproxy", "httpd"):
        if config.getoption("--bench-peers") == "none":
            skipped[kind] = "peers disabled (--bench-peers none)"
        elif not find_peer(kind):
            skipped[kind] = "not installed (run `make bench-peers`)"
        else:
            specs.append(TargetSpec(kind, kind, label=peer_version(kind) or kind))
    if only:
        specs = [s for s in specs if s.name in only or s.name == "direct"]
    return specs, skipped


@pytest.fixture(scope="session")
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    config = request.config
    mode = FULL if config.getoption("--bench-mode") == "full" else QUICK
    rounds = config.getoption("--bench-rounds") or mode.rounds
    build()
    specs, skipped = _specs(config)
    e = Env(mode, rounds, specs, skipped)
    _RUN.update(
        mode=mode.name,
        rounds=rounds,
        sizes={k: v for k, v in mode.__dict__.items() if k not in ("name", "rounds")},
        started=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        machine={"cores": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
        targets=[{"name": s.name, "kind": s.kind, "label": s.label, "strategy": s.strategy, "workers": s.workers}
                 for s in specs],
        skipped=skipped,
        scenarios={},
    )
    try:
        e.backend = Backend(len(specs))
        for spec in specs:
            spec.backend_port = e.backend.allot()
        yield e
    finally:
        e.stop()


def _median(values: list[Any]) -> Any:
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not nums:
        return None
    m = statistics.median(nums)
    return round(m, 2) if isinstance(m, float) else m


def run_scenario(benchmark: Any, env: Env, scenario: Scenario) -> dict[str, dict[str, Any]]:
    """Run ``scenario`` on every target in ``env.rounds`` interleaved rounds; medians."""
    per_target: dict[str, list[dict[str, Any]]] = {s.name: [] for s in env.specs}
    errors: dict[str, list[str]] = {s.name: [] for s in env.specs}
    counter = [0]

    def one_round() -> None:
        r = counter[0]
        counter[0] += 1
        order = env.specs[r % len(env.specs):] + env.specs[: r % len(env.specs)]  # rotate: spread drift
        for spec in order:
            fresh: Optional[Target] = None
            try:
                if scenario.fresh and spec.is_proxy:
                    fresh = Target(spec)
                    target = fresh
                else:
                    target = env.target(spec)
                per_target[spec.name].append(scenario.run(env, target))
            except Exception as exc:  # noqa: BLE001 - one target's failure must not stop the others
                msg = f"{type(exc).__name__}: {exc}"
                if not isinstance(exc, BenchError):
                    msg += "\n" + traceback.format_exc(limit=4)
                errors[spec.name].append(msg)
            finally:
                if fresh is not None:
                    fresh.stop()

    benchmark.pedantic(one_round, rounds=env.rounds, iterations=1, warmup_rounds=0)
    medians: dict[str, dict[str, Any]] = {}
    for name, results in per_target.items():
        keys = sorted({k for r in results for k in r})
        medians[name] = {k: _median([r.get(k) for r in results]) for k in keys}
        if errors[name]:
            medians[name]["failed"] = errors[name][0][:500]
    _RUN["scenarios"][scenario.key] = {
        "title": scenario.title,
        "metrics": [m.__dict__ for m in scenario.metrics],
        "rounds": per_target,
        "failures": {k: v for k, v in errors.items() if v},
        "median": medians,
    }
    benchmark.extra_info.update({name: {m.key: med.get(m.key) for m in scenario.metrics} for name, med in medians.items()})
    return medians


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _RUN.get("scenarios"):
        return
    _RUN["finished"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    # the full run's reports are kept (docs/performance.md); a quick run's go to build/
    full = _RUN["mode"] == "full"
    name = session.config.getoption("--bench-out") or ("latest" if full else "quick")
    paths = report.write_all(_RUN, RESULTS_DIR if full else BUILD, name)
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        tr.write_line("")
        tr.write_line(paths["md"].read_text())
        tr.write_line("reports: " + ", ".join(str(p) for p in paths.values()))
    if not full:
        _COMPARED.extend(_against_full_run(_RUN))


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The quick run's comparison with the last full run, last (after pytest-benchmark's table)."""
    if _COMPARED:
        terminalreporter.write_sep("-", "against the last full run (bench/compare.py)")
    for line in _COMPARED:
        terminalreporter.write_line(line, yellow=line.startswith("warning:"))


def _against_full_run(run: dict[str, Any]) -> list[str]:
    """A quick run's ratios against the last full run committed (warnings, never a failure)."""
    latest = RESULTS_DIR / "latest.json"
    try:
        full = json.loads(latest.read_text())
    except FileNotFoundError:
        return [f"no full run in {latest}: nothing to compare this quick run with"]
    except (OSError, ValueError) as exc:
        return [f"warning: {latest} could not be read ({exc}): nothing compared"]
    return compare.report(run, full, "bench/results/latest.json")
