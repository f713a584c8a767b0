"""What an open tunnel keeps of its heads: the request line and the header lines the
access-log formats read (and the 101's Upgrade), nothing else; its log line is the one
the whole heads would give, and a reload's new formats apply to tunnels opened after it."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from wsproto.utilities import generate_accept_token

from tests.support.clients import KEY, read_head, recv_until_eof, status_of, upgrade_request
from tests.support.strategies import STRATEGY_CONFIGS
from tests.support.waiting import wait_for
from tunnel.config import Config

pytestmark = pytest.mark.timeout(30)


def _lines(path: Path, n: int) -> list[str]:
    wait_for(lambda: path.exists() and len(path.read_text().splitlines()) >= n, what=f"{n} log lines in {path}")
    return path.read_text().splitlines()


def _open(engine, extra: str) -> socket.socket:
    sock = socket.create_connection(engine.addresses[0], timeout=5)
    sock.sendall(upgrade_request("/ws/", extra=extra))
    head, _ = read_head(sock)
    assert status_of(head) == 101
    return sock


def _close(sock: socket.socket) -> None:
    sock.shutdown(socket.SHUT_WR)
    assert recv_until_eof(sock) == b""
    sock.close()


def _config(raw_echo, log: Path, fmt: str, strategy: str = "async") -> str:
    return (
        STRATEGY_CONFIGS[strategy]
        + "Listen 127.0.0.1:0\n"
        + f'LogFormat "{fmt}" tun\n'
        + f"CustomLog {log} tun\n"
        + f"ProxyPass /ws/ ws://127.0.0.1:{raw_echo.address[1]}/\n"
    )


def test_an_open_tunnel_keeps_only_what_its_log_line_reads(make_proxy, raw_echo, tmp_path, strategy):
    log = tmp_path / "access.log"
    engine = make_proxy(_config(raw_echo, log, '\\"%r\\" %>s %{User-Agent}i %{x-probe}i %{Sec-WebSocket-Accept}o %{Upgrade}o', strategy))
    sock = _open(engine, "User-Agent: probe/2\r\nX-Probe: kept\r\nX-Other: dropped\r\nCookie: c=1")
    wait_for(lambda: len(engine.live_tunnels()) == 1, what="the tunnel open")
    (start,) = engine._live.values()
    ex = start.exchange
    assert ex.head is not None
    assert ex.head.request_line == "GET /ws/ HTTP/1.1"
    assert sorted(name.lower() for name, _ in ex.head.headers) == ["user-agent", "x-probe"]
    assert sorted(name.lower() for name, _ in ex.response_headers) == ["sec-websocket-accept", "upgrade"]
    _close(sock)
    (line,) = _lines(log, 1)
    accept = generate_accept_token(KEY.encode()).decode()
    assert line == f'"GET /ws/ HTTP/1.1" 101 probe/2 kept {accept} websocket', line


def test_without_an_access_log_a_tunnel_keeps_no_header_lines_but_the_upgrade(make_proxy, raw_echo):
    engine = make_proxy(STRATEGY_CONFIGS["async"] + f"ProxyPass /ws/ ws://127.0.0.1:{raw_echo.address[1]}/\n")
    sock = _open(engine, "User-Agent: probe/3")
    wait_for(lambda: len(engine.live_tunnels()) == 1, what="the tunnel open")
    (start,) = engine._live.values()
    assert start.exchange.head is not None and start.exchange.head.headers == []
    assert [name.lower() for name, _ in start.exchange.response_headers] == ["upgrade"]
    snapshot = engine.snapshot()
    assert [t["path"] for t in snapshot["tunnels"]] == ["/ws/"]  # the status pages still see the path
    _close(sock)


def test_a_reload_with_new_formats_applies_to_tunnels_opened_after_it(make_proxy, raw_echo, tmp_path):
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    engine = make_proxy(_config(raw_echo, first, "%{X-A}i"))
    sock = _open(engine, "X-A: a1\r\nX-B: b1")
    _close(sock)
    assert _lines(first, 1) == ["a1"]
    # The same Listen line: the listener keeps its socket (and its port).
    engine.reload(Config.from_text(_config(raw_echo, second, "%{X-B}i %{X-A}i"), filename="test.conf"))
    sock = _open(engine, "X-A: a2\r\nX-B: b2")
    _close(sock)
    assert _lines(second, 1) == ["b2 a2"]
