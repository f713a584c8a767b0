"""``tunnel serve`` as a subprocess: ``tunnel ctl`` over the control socket (good and bad
input), and ``--workers 2``: one scrape, one status page and one balancer change cover
both workers (R116, R117)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from tests.e2e.test_status import auto, scrape, value
from tests.e2e.test_workers import children_of
from tests.support.backends import Recorder
from tests.support.clients import raw_upgrade, recv_exactly, status_of
from tests.support.processes import read_line_matching, spawn, stop
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(90)


def ctl(conf, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunnel", "ctl", "--config", str(conf), *args],
        capture_output=True, text=True, timeout=30,
    )


@pytest.fixture
def members():
    servers = [Recorder(name) for name in "AB"]
    yield servers
    for s in servers:
        s.close()


def write_conf(tmp_path, members, raw_port) -> tuple:
    a, b = (m.address[1] for m in members)
    sock = tmp_path / "ctl.sock"
    conf = tmp_path / "tunnel.conf"
    conf.write_text(f"""\
Listen 127.0.0.1:0
TunnelControlSocket {sock}
<Proxy balancer://pool>
BalancerMember ws://127.0.0.1:{a}/
BalancerMember ws://127.0.0.1:{b}/
</Proxy>
ProxyPass /ws balancer://pool/
ProxyPass /raw ws://127.0.0.1:{raw_port}/
<Location /metrics>
SetHandler metrics
</Location>
<Location /server-status>
SetHandler server-status
</Location>
""")
    return conf, sock


def serve(conf, *extra: str) -> tuple[subprocess.Popen, int]:
    proc = spawn("serve", "--config", str(conf), "--log-level", "info", *extra)
    pattern = r"listening on 127\.0\.0\.1:(\d+) \(2 workers\)" if extra else r"listening on 127\.0\.0\.1:(\d+)"
    port = int(read_line_matching(proc, pattern, stream="stderr").group(1))
    return proc, port


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return False
    return True


def end(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(timeout=20) == 0
    finally:
        stop(proc)


def tunnel_to(port: int, path: str = "/ws/x") -> tuple:
    sock, head, rest = raw_upgrade(("127.0.0.1", port), path)
    assert status_of(head) == 101, head
    return sock, rest


def test_ctl_status_tunnels_member_and_bad_input(tmp_path, members, raw_echo):
    conf, sock_path = write_conf(tmp_path, members, raw_echo.address[1])
    missing = ctl(conf, "status")
    assert missing.returncode == 1 and "no tunnel instance is running" in missing.stderr
    proc, port = serve(conf)
    try:
        wait_for(lambda: sock_path.exists(), timeout=15, what="the control socket")
        assert oct(os.stat(sock_path).st_mode & 0o777) == "0o600"
        t1, rest = tunnel_to(port, "/raw/one")
        t1.sendall(b"12345")
        assert recv_exactly(t1, 5, initial=rest) == b"12345"
        t2, _ = tunnel_to(port)
        out = ctl(conf, "status")
        assert out.returncode == 0, out.stderr
        fields = dict(line.split(": ", 1) for line in out.stdout.splitlines()[1:] if ": " in line)
        assert fields["TunnelsOpen"] == "2" and fields["TunnelBytesToBackend"] == "5"
        table = ctl(conf, "tunnels")
        assert table.returncode == 0 and table.stdout.splitlines()[0].split()[:3] == ["ID", "CLIENT", "VHOST"]
        rows = json.loads(ctl(conf, "tunnels", "--json").stdout)
        assert {r["path"] for r in rows} == {"/raw/one", "/ws/x"}
        one = next(r for r in rows if r["path"] == "/raw/one")
        assert one["to_backend"] == 5 and one["to_client"] == 5
        only = json.loads(ctl(conf, "tunnels", "--route", one["route_at"], "--json").stdout)
        assert [r["path"] for r in only] == ["/raw/one"]
        url_a = f"ws://127.0.0.1:{members[0].address[1]}/"
        done = ctl(conf, "member", "pool", url_a, "--status", "drain", "--loadfactor", "5")
        assert done.returncode == 0, done.stderr
        assert "status: - -> N" in done.stdout and "loadfactor: 1 -> 5" in done.stdout and "worker 0: applied" in done.stdout
        for args, message in (
            (("member", "nope", url_a, "--status", "D"), "no balancer://nope"),
            (("member", "pool", "ws://127.0.0.1:1/", "--status", "D"), "has no member ws://127.0.0.1:1/"),
            (("member", "pool", url_a, "--loadfactor", "500"), "loadfactor 500 is out of range"),
            (("member", "pool", url_a, "--status", "Q"), "expected D, H, S, E, N, I, R or drain"),
            (("member", "pool", url_a), "nothing to change"),
        ):
            bad = ctl(conf, *args)
            assert bad.returncode != 0 and message in bad.stderr, (args, bad.stderr)
        os.chmod(sock_path, 0o666)
        loose = ctl(conf, "status")
        assert loose.returncode == 1 and "has mode 0666; expected 0600" in loose.stderr
        os.chmod(sock_path, 0o600)
        if os.getuid() == 0:
            os.chown(sock_path, 65534, -1)
            foreign = ctl(conf, "status")
            assert foreign.returncode == 1 and "belongs to uid 65534" in foreign.stderr
            os.chown(sock_path, 0, -1)
        t1.close()
        t2.close()
    finally:
        end(proc)
    assert not sock_path.exists()  # removed at stop


def test_two_workers_one_scrape_one_page_one_change(tmp_path, members, raw_echo):
    conf, sock_path = write_conf(tmp_path, members, raw_echo.address[1])
    proc, port = serve(conf, "--workers", "2")
    try:
        wait_for(lambda: accepts(port) and sock_path.exists(), timeout=15, what="workers listening")
        wait_for(lambda: value(scrape(("127.0.0.1", port)), "tunnel_workers", state="up") == 2, timeout=15, what="both workers answering")
        socks = []
        for i in range(12):
            s, rest = tunnel_to(port, f"/raw/{i}")
            s.sendall(b"q" * (i + 1))
            assert recv_exactly(s, i + 1, initial=rest) == b"q" * (i + 1)
            socks.append(s)
        total = sum(range(1, 13))
        pids = set()
        for _ in range(8):  # whichever worker answers, the figures are everyone's
            samples = scrape(("127.0.0.1", port))
            assert value(samples, "tunnel_tunnel_bytes_total", direction="to_backend") == total
            assert value(samples, "tunnel_tunnels_opened_total", vhost="", route=f"{conf}:8", strategy="sync") == 12
            assert value(samples, "tunnel_workers", state="up") == 2
            fields = auto(("127.0.0.1", port))
            assert fields["TunnelsOpen"] == "12" and fields["Processes"] == "2"
        rows = json.loads(ctl(conf, "tunnels", "--json").stdout)
        pids = {r["id"].split(".")[0] for r in rows}
        assert len(rows) == 12 and pids <= {"0", "1"}
        url_a = f"ws://127.0.0.1:{members[0].address[1]}/"
        done = ctl(conf, "member", "pool", url_a, "--status", "D")
        assert done.returncode == 0, done.stderr
        assert "worker 0: applied" in done.stdout and "worker 1: applied" in done.stdout
        names = set()
        for _ in range(10):
            s, rest = tunnel_to(port)
            names.add(recv_exactly(s, 1, initial=rest))
            socks.append(s)
        assert names == {b"B"}  # neither worker elects the disabled member
        # a worker restarted after a crash takes the change from its sibling
        victim = children_of(proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        read_line_matching(proc, r"exited with status -9; restarting", stream="stderr")
        read_line_matching(proc, r"balancer settings taken from worker", stream="stderr")
        for _ in range(16):
            s, rest = tunnel_to(port)
            assert recv_exactly(s, 1, initial=rest) == b"B"
            socks.append(s)
        for s in socks:
            s.close()
    finally:
        end(proc)
