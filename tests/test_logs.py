"""Access and error logs: httpd's LogFormat escapes, one line per request and per tunnel."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from tunnel.accesslog import COMBINED, COMMON, Entry, Formatter

from .helpers import http_get, raw_upgrade, recv_exactly, recv_until_eof, status_of, wait_for

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
    start=0.0,
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
    ],
)
def test_each_escape(fmt, expected):
    assert Formatter(fmt).format(ENTRY) == expected


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


def read_lines(path, n: int) -> list[str]:
    wait_for(lambda: os.path.exists(path) and len(open(path).read().splitlines()) >= n, what=f"{n} log lines in {path}")
    return open(path).read().splitlines()


def test_one_line_per_request_and_per_tunnel_with_byte_counts(make_proxy, raw_echo, echo, tmp_path):
    log = tmp_path / "access.log"
    engine = make_proxy(
        'LogFormat "%h \\"%r\\" %>s %b %I %O %D %{User-Agent}i %{to_backend}n %{to_client}n %{close_reason}n" tun\n'
        f"CustomLog {log} tun\n"
        f"ProxyPass /ws/ ws://127.0.0.1:{raw_echo.address[1]}/\n"
        f"ProxyPass /page/ http://127.0.0.1:{echo.address[1]}/\n"
    )
    status, _, body = http_get(engine.addresses[0], "/page/", headers="User-Agent: probe/1\r\n")
    assert status == 200
    (line,) = read_lines(log, 1)
    assert line.startswith('127.0.0.1 "GET /page/ HTTP/1.1" 200 ') and " probe/1 " in line

    sock, head, rest = raw_upgrade(engine.addresses[0], "/ws/")
    assert status_of(head) == 101
    up = os.urandom(70_000)
    sock.sendall(up)
    assert recv_exactly(sock, len(up), initial=rest) == up  # the raw echo sends it back
    sock.shutdown(socket.SHUT_WR)
    assert recv_until_eof(sock) == b""
    sock.close()
    lines = read_lines(log, 2)
    fields = lines[1].split(" ")
    # %h "%r" %>s %b %I %O %D UA to_backend to_client reason
    assert fields[0] == "127.0.0.1" and fields[4] == "101", lines[1]
    b, i, o, d = (int(x) for x in fields[5:9])
    assert b == len(up)  # %b: bytes tunnelled to the client
    assert i >= len(up) + len(b"GET /ws/ HTTP/1.1\r\n")  # %I: request head + tunnel bytes in
    assert o >= len(up) + len(b"HTTP/1.1 101")  # %O: 101 head + tunnel bytes out
    assert d > 0
    assert fields[-3:] == [str(len(up)), str(len(up)), "eof"]


def test_error_log_file_and_log_level(tmp_path, raw_echo):
    conf = tmp_path / "t.conf"
    err = tmp_path / "error.log"
    conf.write_text(
        f"Listen 127.0.0.1:0\nErrorLog {err}\nLogLevel info\nProxyPass /ws/ ws://127.0.0.1:{raw_echo.address[1]}/\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunnel", "serve", "--config", str(conf)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        text = lambda: err.read_text() if err.exists() else ""  # noqa: E731
        wait_for(lambda: "listening on" in text(), timeout=15, what="listening line in ErrorLog")
        port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", text()).group(1))
        status, _, _ = http_get(("127.0.0.1", port), "/nowhere")
        assert status == 404
        wait_for(lambda: "404" in text(), what="the 404 at info level in ErrorLog")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert b"Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
