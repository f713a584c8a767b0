"""The rolling scene of test_rolling_restart.py (three instances behind a real HAProxy,
mode tcp, send-proxy-v2, health checks on /ready, 300 clients sending numbered
messages), with binary upgrades instead of restarts (R155-R159): each instance in turn
gets ``tunnel ctl upgrade``; its new process takes over the listener and every tunnel,
the old one exits 0, HAProxy never sees it down, and no client reconnects, sees a close
or loses an acknowledged message."""

from __future__ import annotations

import pytest

from tests.support.haproxy import HAProxy
from tests.support.rolling import Fleet, run_rolling

pytestmark = pytest.mark.timeout(120)


def binary_upgrade(fleet: Fleet, haproxy: HAProxy, i: int) -> None:
    inst = fleet.instances[i]
    old = inst.proc.pid if inst.proc is not None else None
    out = fleet.ctl(i, "upgrade")
    assert "upgraded" in out.stdout
    assert fleet.reap(i, 20) == 0  # it held only plain tunnels: every one moved
    new = fleet.adopt(i)
    assert new != old
    assert haproxy.states()[inst.name] == "UP"  # never down: the socket was never closed


def test_rolling_binary_upgrade_of_three_instances_behind_haproxy_no_client_reconnects(tmp_path):
    figures = run_rolling(tmp_path, binary_upgrade, clients=300, instances=3, grace=3)
    print("\nrolling binary upgrade:", figures.summary())
    assert figures.errors == []
    assert figures.lost == 0
    assert figures.unacknowledged == 0 and figures.acknowledged == figures.messages
    assert figures.reconnects == 0
    assert sum(figures.close_codes.values()) == 0
    assert figures.all_connected
    assert figures.exit_codes == [0] * 3  # each old process, after its upgrade
    assert figures.messages > 300 * 8
