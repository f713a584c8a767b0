"""AccessLog's files: every CustomLog target opened is closed again, also when a later
target cannot be opened or has a bad format."""

from __future__ import annotations

import gc
import warnings

import pytest

from tests.support.resources import open_fds
from tunnel.accesslog import AccessLog, Entry

pytestmark = pytest.mark.timeout(30)


def test_targets_are_written_and_closed(tmp_path):
    log = AccessLog([(str(tmp_path / "a.log"), "%h %>s"), (str(tmp_path / "b.log"), "%m")])
    log.write(Entry(remote_host="192.0.2.1", status=101, method="GET"))
    log.close()
    assert (tmp_path / "a.log").read_text() == "192.0.2.1 101\n"
    assert (tmp_path / "b.log").read_text() == "GET\n"


@pytest.mark.parametrize(
    "second",
    [
        ("missing-dir/b.log", "%h"),  # cannot be opened
        ("b.log", "%h %Q"),  # a directive httpd does not have
    ],
)
def test_a_failing_target_leaves_no_file_open(tmp_path, second):
    # Collected before the baseline too: the collect below must only find this test's
    # garbage, not close an earlier test's forgotten file and leave fewer fds than that.
    gc.collect()
    baseline = open_fds()
    path, fmt = second
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises((OSError, ValueError)):
            AccessLog([(str(tmp_path / "a.log"), "%h"), (str(tmp_path / path), fmt)])
        gc.collect()
    # Closed by AccessLog itself, not left to the garbage collector (which warns).
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert open_fds() == baseline
