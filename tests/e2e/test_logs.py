"""Access and error logs: httpd's LogFormat escapes, one line per request and per tunnel."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.backends import Answering, HTTPBackend, switching_protocols
from tests.support.clients import (
    KEY,
    free_port_refused,
    http_get,
    raw_upgrade,
    read_head,
    recv_exactly,
    recv_until_eof,
    status_of,
    upgrade_request,
)
from tests.support.strategies import STRATEGY_CONFIGS
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(30)


def read_lines(path: Path, n: int) -> list[str]:
    wait_for(lambda: path.exists() and len(path.read_text().splitlines()) >= n, what=f"{n} log lines in {path}")
    return path.read_text().splitlines()


def test_one_line_per_request_and_per_tunnel_with_byte_counts(make_proxy, raw_echo, echo, tmp_path, strategy):
    log = tmp_path / "access.log"
    engine = make_proxy(
        STRATEGY_CONFIGS[strategy]
        + 'LogFormat "%h \\"%r\\" %>s %b %I %O %D %{User-Agent}i %{to_backend}n %{to_client}n %{close_reason}n" tun\n'
        f"CustomLog {log} tun\n"
        f"ProxyPass /ws/ ws://127.0.0.1:{raw_echo.address[1]}/\n"
        f"ProxyPass /page/ http://127.0.0.1:{echo.address[1]}/\n"
    )
    status, _, body = http_get(engine.addresses[0], "/page/", headers="User-Agent: probe/1\r\n")
    assert status == 200
    (line,) = read_lines(log, 1)
    assert line.startswith('127.0.0.1 "GET /page/ HTTP/1.1" 200 ') and " probe/1 " in line

    started = time.monotonic()
    request = upgrade_request("/ws/")
    sock = socket.create_connection(engine.addresses[0], timeout=5)
    sock.sendall(request)
    head, rest = read_head(sock)
    assert status_of(head) == 101
    opened = time.monotonic()
    up = os.urandom(70_000)
    sock.sendall(up)
    assert recv_exactly(sock, len(up), initial=rest) == up  # the raw echo sends it back
    # The tunnel's life as the client can bound it: from its 101 to its own FIN, which
    # the proxy must read before it ends the tunnel and writes the line. (Up to the
    # EOF we read is no bound: the proxy may write the line before this thread sees it.)
    lived = time.monotonic() - opened
    sock.shutdown(socket.SHUT_WR)
    assert recv_until_eof(sock) == b""
    sock.close()
    lines = read_lines(log, 2)
    total = time.monotonic() - started
    assert len(lines) == 2  # one line for the tunnel, written when it ended
    fields = lines[1].split(" ")
    # %h "%r" %>s %b %I %O %D UA to_backend to_client reason
    assert fields[0] == "127.0.0.1" and fields[4] == "101", lines[1]
    b, i, o, d = (int(x) for x in fields[5:9])
    assert b == len(up)  # %b: bytes tunnelled to the client
    assert i == len(request) + len(up)  # %I: request head + tunnel bytes in, exactly
    assert o == len(head) + 4 + len(up)  # %O: 101 head + tunnel bytes out, exactly
    assert lived * 1e6 <= d <= total * 1e6  # %D: the tunnel's life, in microseconds
    assert fields[-3:] == [str(len(up)), str(len(up)), "eof"]


def test_plain_request_byte_counts_include_heads_and_bodies(make_proxy, echo, tmp_path):
    """%I: every byte the client sent for the request (head and body); %O: every byte of
    the answer (head and body) -- mod_logio's definition."""
    log = tmp_path / "access.log"
    engine = make_proxy(
        f'CustomLog {log} "%>s %b %B %I %O"\n'  # an inline format, no nickname
        f"ProxyPass / http://127.0.0.1:{echo.address[1]}/\n"
    )
    body = os.urandom(100_000)
    request = (
        b"POST /up HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
    ) + body
    with socket.create_connection(engine.addresses[0], timeout=5) as sock:
        sock.sendall(request)
        answer = recv_until_eof(sock)
    head, _, reply = answer.partition(b"\r\n\r\n")
    assert status_of(head) == 200 and reply
    (line,) = read_lines(log, 1)
    assert line.split(" ") == ["200", str(len(reply)), str(len(reply)), str(len(request)), str(len(answer))]


def test_common_and_combined_nicknames_one_line_per_request_on_keep_alive(make_proxy, echo, tmp_path):
    common, combined = tmp_path / "common.log", tmp_path / "combined.log"
    engine = make_proxy(
        f"CustomLog {common} common\nCustomLog {combined} combined\n"
        f"ProxyPass / http://127.0.0.1:{echo.address[1]}/\n"
    )
    with socket.create_connection(engine.addresses[0], timeout=5) as sock:
        for n in range(3):
            last = n == 2
            sock.sendall(
                f"GET /p{n}?q={n} HTTP/1.1\r\nHost: t\r\nUser-Agent: ua/{n}\r\nReferer: http://r.test/{n}\r\n"
                f"{'Connection: close' if last else 'X: y'}\r\n\r\n".encode()
            )
            head, rest = read_head(sock)
            assert status_of(head) == 200
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            recv_exactly(sock, length, initial=rest)
    lines = read_lines(common, 3)
    clf = r'127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "GET /p%d\?q=%d HTTP/1\.1" 200 %d'
    assert len(lines) == 3
    for n, line in enumerate(lines):
        assert re.fullmatch(clf % (n, n, length), line), line
    lines = read_lines(combined, 3)
    assert len(lines) == 3
    for n, line in enumerate(lines):
        assert re.fullmatch(clf % (n, n, length) + f' "http://r\\.test/{n}" "ua/{n}"', line), line


def test_refused_and_failed_requests_are_logged_with_their_status(make_proxy, tmp_path):
    log = tmp_path / "access.log"
    engine = make_proxy(f'CustomLog {log} "%>s %b \\"%r\\""\nProxyPass /x/ ws://127.0.0.1:{free_port_refused()}/\n')
    assert http_get(engine.addresses[0], "/nowhere")[0] == 404
    sock, head, _ = raw_upgrade(engine.addresses[0], "/x/")
    sock.close()
    assert status_of(head) == 503
    lines = read_lines(log, 2)
    assert lines[0].startswith('404 ') and lines[0].endswith('"GET /nowhere HTTP/1.1"')
    assert lines[1].startswith('503 ') and lines[1].endswith('"GET /x/ HTTP/1.1"')
    assert int(lines[1].split()[1]) > 0  # the reason body


@pytest.mark.parametrize("level", ["info", "error"])
def test_error_log_file_and_log_level(tmp_path, level):
    """ErrorLog FILE gets the tunnel loggers at LogLevel: at info a client's 404 is there;
    at error it is not, but a backend failure is, naming the route and the backend."""
    conf = tmp_path / "t.conf"
    err = tmp_path / "error.log"
    port, dead = free_port_refused(), free_port_refused()
    conf.write_text(
        f"Listen 127.0.0.1:{port}\nErrorLog {err}\nLogLevel {level}\n"
        f"ProxyPass /dead/ ws://127.0.0.1:{dead}/\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunnel", "serve", "--config", str(conf)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        text = lambda: err.read_text() if err.exists() else ""  # noqa: E731

        def up():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return proc.poll() is not None

        wait_for(up, timeout=15, what="the proxy listening")
        assert proc.poll() is None, proc.stderr.read()
        assert http_get(("127.0.0.1", port), "/nowhere")[0] == 404
        sock, head, _ = raw_upgrade(("127.0.0.1", port), "/dead/")
        sock.close()
        assert status_of(head) == 503
        # "] 503 ": the status after the logger name (a timestamp's milliseconds can read 503).
        wait_for(lambda: "] 503 " in text(), what="the 503 in ErrorLog")
        line = next(entry for entry in text().splitlines() if "] 503 " in entry)
        assert "[ERROR]" in line and "/dead/" in line and f"ws://127.0.0.1:{dead}/" in line, line
        if level == "info":
            assert "listening on" in text() and "/nowhere" in text()
        else:
            assert "listening on" not in text() and "/nowhere" not in text()
            assert "[INFO]" not in text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert b"Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_early_data_both_ways_is_counted(make_proxy, tmp_path, strategy):
    """Bytes that ride with the heads (the client's after its request head, the backend's
    after its 101) are tunnel bytes like any other: in %I/%O, %b and the notes."""
    answer = switching_protocols() + b"backend-early"
    backend = Answering(answer)
    log = tmp_path / "access.log"
    try:
        engine = make_proxy(
            STRATEGY_CONFIGS[strategy]
            + f'CustomLog {log} "%>s %b %I %O %{{to_backend}}n %{{to_client}}n"\n'
            f"ProxyPass / ws://127.0.0.1:{backend.port}/\n"
        )
        request = upgrade_request("/x", key=KEY)
        sock = socket.create_connection(engine.addresses[0], timeout=5)
        sock.sendall(request + b"client-early")
        head, rest = read_head(sock)
        assert status_of(head) == 101
        assert recv_exactly(sock, len(b"backend-early"), initial=rest) == b"backend-early"
        conn = wait_for(lambda: backend.conns and backend.conns[0], what="backend connection")
        if not backend.received.endswith(b"client-early"):
            assert recv_exactly(conn, len(b"client-early")) == b"client-early"
        conn.close()  # the backend leaves: the tunnel ends
        assert recv_until_eof(sock) == b""
        sock.close()
        (line,) = read_lines(log, 1)
        assert line.split(" ") == [
            "101",
            str(len(b"backend-early")),
            str(len(request) + len(b"client-early")),
            str(len(head) + 4 + len(b"backend-early")),
            str(len(b"client-early")),
            str(len(b"backend-early")),
        ]
    finally:
        backend.close()


def test_pipelined_chunked_head_and_304_each_get_their_own_counts(make_proxy, tmp_path):
    """Three pipelined requests in one packet: each line counts only its own bytes (%I
    includes chunk framing), and bodiless answers log %b as "-" and %B as 0."""
    backend = HTTPBackend()
    log = tmp_path / "access.log"
    try:
        engine = make_proxy(
            f'CustomLog {log} "%>s %b %B %I %O \\"%r\\""\nProxyPass / http://127.0.0.1:{backend.port}/\n'
        )
        r1 = b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n"
        r2 = b"HEAD /h HTTP/1.1\r\nHost: a\r\n\r\n"
        r3 = b"GET /304 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        with socket.create_connection(engine.addresses[0], timeout=5) as sock:
            sock.sendall(r1 + r2 + r3)
            answers = recv_until_eof(sock)
        a1_end = answers.index(b"helloabc") + 8
        a2_end = answers.index(b"HTTP/1.1 304")
        lines = read_lines(log, 3)
        assert lines == [
            f'200 8 8 {len(r1)} {a1_end} "POST /echo HTTP/1.1"',
            f'200 - 0 {len(r2)} {a2_end - a1_end} "HEAD /h HTTP/1.1"',
            f'304 - 0 {len(r3)} {len(answers) - a2_end} "GET /304 HTTP/1.1"',
        ]
    finally:
        backend.close()
