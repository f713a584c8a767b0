"""accesslog.py: httpd's LogFormat escapes, the common and combined shapes, and the
escaping of client-chosen bytes (ap_escape_logitem)."""

from __future__ import annotations

import re
import time

import pytest

from tunnel.accesslog import COMBINED, COMMON, Entry, Formatter

pytestmark = pytest.mark.timeout(30)

ENTRY = Entry(
    remote_host="192.0.2.7",
    request_line='GET /chat/?room=1 HTTP/1.1',
    method="GET",
    path="/chat/?room=1",
    protocol="HTTP/1.1",
    status=101,
    request_headers={"user-agent": 'ua "quoted"', "referer": "http://ref.test/"},
    response_headers={"upgrade": "websocket"},
    bytes_in=1234,
    bytes_out=5678,
    body_bytes=4000,
    start=1700000000.25,
    duration=2.5,
    notes={"strategy": "async", "close_reason": "eof"},
    server_port=8080,
    vhost="chat.test",
    tunnel=True,
)


@pytest.mark.parametrize(
    "fmt, expected",
    [
        ("%h %a %l %u", "192.0.2.7 192.0.2.7 - -"),
        ('"%r"', '"GET /chat/?room=1 HTTP/1.1"'),
        ("%>s %s", "101 101"),
        ("%b %B", "4000 4000"),
        ("%I %O", "1234 5678"),
        ("%D", "2500000"),
        ("%T %{ms}T %{us}T %{s}T", "2 2500 2500000 2"),
        ("%U|%q|%m|%H", "/chat/|?room=1|GET|HTTP/1.1"),
        ("%p %v", "8080 chat.test"),
        ("%{User-Agent}i", 'ua \\"quoted\\"'),  # quotes escaped, as httpd does
        ("%{X-Missing}i %{Upgrade}o", "- websocket"),
        ("%{strategy}n %{close_reason}n %{nope}n", "async eof -"),
        ("100%%", "100%"),
        ("%{sec}t %{msec}t %{usec_frac}t", "1700000000 1700000000250 250000"),
        ("%{end:sec}t %{end:msec_frac}t", "1700000002 750"),
        ("%{%Y-%m-%d}t", time.strftime("%Y-%m-%d", time.localtime(1700000000.25))),
        ("%{begin:%H}t", time.strftime("%H", time.localtime(1700000000.25))),
    ],
)
def test_each_escape(fmt, expected):
    assert Formatter(fmt).format(ENTRY) == expected


@pytest.mark.parametrize(
    "value, logged",
    [
        ('a"b\\c', 'a\\"b\\\\c'),
        ("tab\there\r\n", "tab\\there\\r\\n"),  # httpd writes \t \r \n, not \x09
        ("bell\x07 del\x7f \xe9", "bell\\x07 del\\x7f \\xe9"),
    ],
    ids=["quote-backslash", "c-escapes", "hex"],
)
def test_logged_items_are_escaped_as_httpd_does(value, logged):
    """ap_escape_logitem: no client-chosen byte can forge a field or a line."""
    e = Entry(request_headers={"x-v": value}, path="/p?" + value, request_line=f"GET /{value} HTTP/1.1")
    assert Formatter("%{X-V}i").format(e) == logged
    assert Formatter("%q").format(e) == "?" + logged  # the query too
    assert Formatter("%r").format(e) == f"GET /{logged} HTTP/1.1"
    assert "\n" not in Formatter(COMBINED).format(e)


def test_common_and_combined_shapes():
    line = Formatter(COMMON).format(ENTRY)
    assert re.fullmatch(r'192\.0\.2\.7 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "GET /chat/\?room=1 HTTP/1\.1" 101 4000', line), line
    combined = Formatter(COMBINED).format(ENTRY)
    assert combined.startswith(line) and combined.endswith('"http://ref.test/" "ua \\"quoted\\""')


def test_plain_response_with_no_body_logs_a_dash():
    e = Entry(status=304, body_bytes=0, tunnel=False)
    assert Formatter("%b %B").format(e) == "- 0"


@pytest.mark.parametrize("fmt", ["%Z", "%{x}Q", "%{hours}T"])
def test_unknown_directives_are_errors(fmt):
    with pytest.raises(ValueError):
        Formatter(fmt)


def test_a_bad_log_format_is_a_configuration_error(tmp_path):
    from tunnel import Config
    from tunnel.config import ConfigError

    with pytest.raises(ConfigError) as info:
        Config.from_text(f'LogFormat "%h %Z" bad\nCustomLog {tmp_path}/a.log bad\n', filename="t.conf")
    assert "%Z" in str(info.value)


def test_json_lines_and_the_tunnel_notes():
    import json

    from tunnel.accesslog import formatter_for

    entry = Entry(**{**{f: getattr(ENTRY, f) for f in ENTRY.__slots__}, "notes": {"member": "ws://b1/", "close_reason": "eof", "other": "x"}})
    line = formatter_for("json").format(entry)
    record = json.loads(line)
    assert record["status"] == 101 and record["member"] == "ws://b1/" and record["close_reason"] == "eof"
    assert "other" not in record and record["user_agent"] == 'ua "quoted"' and record["duration_us"] == 2500000
    assert Formatter("%{member}n %{close_reason}n %{route}n").format(entry) == "ws://b1/ eof -"
