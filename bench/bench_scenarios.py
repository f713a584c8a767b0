"""The benchmark suite: one scenario per test, every target in each round.

Each test runs its scenario against the direct connection to the C echo backend, the
tunnel (async and sync, one process and ``--workers 2``) and every peer installed
(nginx, HAProxy, httpd), in interleaved rounds, and records the medians; the report
(`bench/report.py`) turns them into ratios. Nothing here asserts a number: a benchmark
only fails when it could not measure at all.
"""

from __future__ import annotations

from .conftest import Env, run_scenario
from .scenarios import SCENARIOS


def _run(benchmark, env: Env, key: str) -> None:
    medians = run_scenario(benchmark, env, SCENARIOS[key])
    # the direct connection is the reference of every ratio: it must have been measured
    assert "failed" not in medians["direct"], medians["direct"].get("failed")


def bench_a_bulk_throughput(benchmark, env):
    _run(benchmark, env, "a_bulk")


def bench_b_pingpong_one_tunnel(benchmark, env):
    _run(benchmark, env, "b_pingpong_1")


def bench_c_busy_100_tunnels(benchmark, env):
    _run(benchmark, env, "c_busy_100")


def bench_d_handshake_rate(benchmark, env):
    _run(benchmark, env, "d_handshake")


def bench_e_idle_memory(benchmark, env):
    _run(benchmark, env, "e_idle_memory")


def bench_f_active_1000_tunnels(benchmark, env):
    _run(benchmark, env, "f_active_1000")


def bench_g_max_tunnels(benchmark, env):
    _run(benchmark, env, "g_max_tunnels")
