"""protocol/h11compat.py: the one reach past h11's public API, on a real h11 Connection,
and the installed h11 pinned to the releases the adapter is written for."""

from __future__ import annotations

import configparser
import re
from importlib.metadata import version
from pathlib import Path

import h11
import pytest

from tunnel.protocol.h11compat import SUPPORTED, take_trailing

pytestmark = pytest.mark.timeout(30)

FIRST = b"POST /first HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
SECOND = b"GET /second HTTP/1.1\r\nHost: h\r\nX-Pipelined: yes\r\n\r\n"


def events_until_paused(conn: h11.Connection) -> list[object]:
    events = []
    while True:
        event = conn.next_event()
        if event is h11.PAUSED or event is h11.NEED_DATA:
            return events
        events.append(event)


def test_take_trailing_returns_the_pipelined_request_and_empties_h11():
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(FIRST + SECOND)  # one segment: the first request, its body, the next
    request, data, end = events_until_paused(conn)
    assert isinstance(request, h11.Request) and request.target == b"/first"
    assert isinstance(data, h11.Data) and data.data == b"hello"
    assert isinstance(end, h11.EndOfMessage)
    assert conn.trailing_data == (bytearray(SECOND), False)  # what the adapter takes

    assert take_trailing(conn) == SECOND  # exactly the second request's bytes
    assert conn.trailing_data == (bytearray(), False)  # nothing left buffered in h11
    assert take_trailing(conn) == b""  # and nothing to take twice

    # h11 goes on as if the second request had never arrived: after the answer it needs
    # data, and the bytes given back to it are read as the next request.
    conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
    conn.send(h11.EndOfMessage())
    conn.start_next_cycle()
    assert conn.next_event() is h11.NEED_DATA
    conn.receive_data(SECOND)
    second = conn.next_event()
    assert isinstance(second, h11.Request) and second.target == b"/second"
    assert (b"x-pipelined", b"yes") in list(second.headers)


def test_take_trailing_with_nothing_buffered_changes_nothing():
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(FIRST)
    assert len(events_until_paused(conn)) == 3
    assert take_trailing(conn) == b""
    assert conn.trailing_data == (bytearray(), False)
    assert conn.their_state is h11.DONE


def _in_range(installed: str, spec: str) -> bool:
    try:
        from packaging.specifiers import SpecifierSet
    except ImportError:  # pragma: no cover - pytest brings packaging along
        release = tuple(int(p) for p in re.findall(r"\d+", installed)[:3])
        checks = {">=": lambda a, b: a >= b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b}
        for op, bound in re.findall(r"(>=|<=|<|>)\s*([\d.]+)", spec):
            if not checks[op](release, tuple(int(p) for p in bound.split("."))):
                return False
        return True
    return SpecifierSet(spec).contains(installed, prereleases=True)


def test_the_installed_h11_is_a_supported_release():
    installed = version("h11")
    assert installed == h11.__version__
    assert _in_range(installed, SUPPORTED), f"h11 {installed} is not in {SUPPORTED}: check take_trailing against it"


def test_setup_cfg_bounds_h11_as_the_adapter_says():
    setup = configparser.ConfigParser()
    setup.read(Path(__file__).resolve().parents[2] / "setup.cfg", encoding="utf-8")
    requires = [line.strip() for line in setup["options"]["install_requires"].splitlines() if line.strip()]
    (h11_line,) = [r for r in requires if re.match(r"h11\b", r)]
    assert h11_line.replace(" ", "") == "h11" + SUPPORTED.replace(" ", "")
