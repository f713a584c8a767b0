"""The command line: serve, demo, configtest, --version, signals. Real subprocesses."""

from __future__ import annotations

import signal
import socket

import pytest
from click.testing import CliRunner
from websockets.sync.client import connect as ws_connect

from tests.support.clients import http_get
from tests.support.processes import read_line_matching, spawn, stop
from tests.support.waiting import wait_for
from tunnel import __version__
from tunnel.cli import cli

pytestmark = pytest.mark.timeout(60)


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_serve_from_file_in_another_directory_and_sigterm_exits_zero(tmp_path, echo):
    conf = tmp_path / "tunnel.conf"
    conf.write_text(f"Listen 127.0.0.1:0\nLogLevel info\nProxyPass /chat/ ws://127.0.0.1:{echo.address[1]}/\n")
    proc = spawn("serve", "--config", str(conf), cwd=str(tmp_path))
    try:
        m = read_line_matching(proc, r"listening on 127\.0\.0\.1:(\d+)", stream="stderr")
        port = int(m.group(1))
        with ws_connect(f"ws://127.0.0.1:{port}/chat/x", open_timeout=5) as ws:
            ws.send("through the CLI")
            assert ws.recv(timeout=5) == "through the CLI"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_with_listen_and_pass_and_sigint(echo):
    proc = spawn("serve", "--listen", "127.0.0.1:0", "--pass", f"/=ws://127.0.0.1:{echo.address[1]}/", "--async", "--log-level", "info")
    try:
        port = int(read_line_matching(proc, r"listening on 127\.0\.0\.1:(\d+)", stream="stderr").group(1))
        with ws_connect(f"ws://127.0.0.1:{port}/", open_timeout=5) as ws:
            ws.send(b"bin")
            assert ws.recv(timeout=5) == b"bin"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_demo_serves_page_and_websocket_on_one_path():
    proc = spawn("demo", "--listen", "127.0.0.1:0")
    try:
        m = read_line_matching(proc, r"websocket: python -m websockets ws://127\.0\.0\.1:(\d+)/")
        port = int(m.group(1))
        status, head, body = http_get(("127.0.0.1", port), "/")
        assert status == 200 and b"tunnel demo" in body
        with ws_connect(f"ws://127.0.0.1:{port}/", open_timeout=5) as ws:
            ws.send("hello demo")
            assert ws.recv(timeout=5) == "hello demo"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_configtest_prints_routes_and_errors_name_the_line(tmp_path):
    good = tmp_path / "good.conf"
    good.write_text("Listen 127.0.0.1:8080\nProxyPass /chat/ ws://backend.test:9000/\nProxyPass /chat/ http://backend.test:9000/\n")
    result = CliRunner().invoke(cli, ["configtest", str(good)])
    assert result.exit_code == 0, result.output
    assert "/chat/" in result.output and "ws://backend.test:9000/" in result.output and "Syntax OK" in result.output
    bad = tmp_path / "bad.conf"
    bad.write_text("Listen 127.0.0.1:8080\n\nProxyWebsocketAsyncDelay soon\n")
    result = CliRunner().invoke(cli, ["configtest", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:3:" in result.output and "ProxyWebsocketAsyncDelay" in result.output
    assert "Traceback" not in result.output


def test_serve_reports_a_missing_file_cleanly(tmp_path):
    result = CliRunner().invoke(cli, ["serve", "--config", str(tmp_path / "nope.conf")])
    assert result.exit_code == 1 and "cannot read configuration" in result.output
    assert "Traceback" not in result.output


def test_serve_reports_a_busy_port_cleanly(echo):
    host, port = echo.address[:2]
    result = CliRunner().invoke(cli, ["serve", "--listen", f"{host}:{port}", "--pass", f"/=ws://{host}:{port}/"])
    assert result.exit_code == 1 and "cannot listen" in result.output


VHOST_CONF = """\
Listen 127.0.0.1:0
LogLevel debug
CustomLog {log} "%{{Host}}i %U %{{strategy}}n"
ProxyPass /g/ ws://127.0.0.1:{port}/
<VirtualHost *:*>
    ServerName v.test
    ProxyPass /chat/ ws://127.0.0.1:{port}/
    <Location /chat/off/>
        ProxyWebsocketAsync Off
    </Location>
</VirtualHost>
"""


@pytest.mark.parametrize("flag, expected", [("--async", "async"), (None, "sync")], ids=["async", "file-only"])
def test_serve_async_flag_makes_every_vhost_and_location_tunnel_async(tmp_path, echo, flag, expected):
    """--async with --config: the vhost (which does not say ProxyWebsocketAsync) and a
    <Location> in it that says Off both tunnel async; without the flag the file's Off
    (the default, and the location's) stands. Seen in the access log's %{strategy}n and
    in the debug line of each tunnel."""
    conf, log = tmp_path / "tunnel.conf", tmp_path / "access.log"
    conf.write_text(VHOST_CONF.format(log=log, port=echo.address[1]))
    proc = spawn("serve", "--config", str(conf), *([flag] if flag else []))
    try:
        port = int(read_line_matching(proc, r"listening on 127\.0\.0\.1:(\d+)", stream="stderr").group(1))
        paths = ["/chat/x", "/chat/off/y", "/g/z"]
        for path in paths:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            with ws_connect(f"ws://v.test{path}", sock=sock, open_timeout=5) as ws:
                ws.send(path)
                assert ws.recv(timeout=5) == path
            line = read_line_matching(proc, r"tunnel 127\.0\.0\.1 -> \S+: strategy (\w+) \(ProxyWebsocketAsync (\w+)", stream="stderr")
            assert line.groups() == (expected, "On" if expected == "async" else "Off"), (path, line.group(0))
        wait_for(lambda: log.exists() and len(log.read_text().splitlines()) == len(paths), what="one access-log line per tunnel")
        assert sorted(log.read_text().splitlines()) == sorted(f"v.test {path} {expected}" for path in paths)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        stop(proc)
