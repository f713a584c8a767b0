"""A rolling restart of three ``tunnel serve`` instances behind a real HAProxy (mode
tcp, send-proxy-v2, health checks on ``/ready``), 300 WebSocket clients sending
numbered messages all along (R150, R152, R122): each instance in turn is drained
(``ctl drain``; HAProxy marks it down), stopped gracefully (``ctl graceful-stop``: Close
1001 to its clients, who reconnect through HAProxy to the others and send again what
was not acknowledged) and started again on the same port. No acknowledged message is
lost, no client sees a close code but 1001, every client ends connected, every process
exits 0. The harness (tests/support/rolling.py) takes the replacement step as an
argument, so the same scene runs with other ways of replacing an instance."""

from __future__ import annotations

import pytest

from tests.support.rolling import drain_stop_start, run_rolling

pytestmark = pytest.mark.timeout(120)


def test_rolling_restart_of_three_instances_behind_haproxy_loses_nothing(tmp_path):
    figures = run_rolling(tmp_path, drain_stop_start, clients=300, instances=3, grace=3)
    print("\nrolling restart:", figures.summary())
    assert figures.errors == []
    assert figures.lost == 0
    assert figures.unacknowledged == 0 and figures.acknowledged == figures.messages
    assert set(figures.close_codes) <= {1001}
    # Each stop closed its instance's clients with 1001 and every one of them came back.
    assert figures.reconnects == figures.close_codes[1001] >= 300
    assert figures.all_connected
    assert figures.exit_codes == [0] * 6  # each instance stopped twice: in the roll, at the end
    assert figures.messages > 300 * 8
