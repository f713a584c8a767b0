"""SetHandler ready and live, and ``tunnel ctl drain|undrain`` (R150-R152): in an engine
in this process (the loop really blocked), and in ``tunnel serve`` processes (one, and
``--workers 2``) through start, drain, undrain and graceful stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time

import pytest

from tests.e2e.test_ctl_workers import accepts, ctl
from tests.e2e.test_workers import children_of
from tests.support.backends import Recorder
from tests.support.clients import http_get, raw_upgrade, read_head, recv_exactly, recv_until_eof, status_of
from tests.support.processes import read_line_matching, spawn, stop
from tests.support.waiting import wait_for
from tunnel.config import Config

pytestmark = pytest.mark.timeout(90)

PROBES = "<Location /ready>\nSetHandler ready\n</Location>\n<Location /live>\nSetHandler live\n</Location>\n"


def probe(addr, path: str = "/ready", method: str = "GET") -> tuple[int, bytes]:
    status, _, body = http_get(addr, path, method=method)
    return status, body


def test_ready_answers_200_then_503_while_drained_then_200(make_proxy):
    engine = make_proxy(PROBES)
    addr = engine.addresses[0]
    assert probe(addr) == (200, b"ready\n")
    status, head, body = http_get(addr, "/ready", method="HEAD")
    assert status == 200 and body == b"" and b"Cache-Control: no-store" in head
    assert engine.probes.drain(True) is True
    assert probe(addr) == (503, b"draining\n")
    assert engine.probes.drain(True) is False  # already drained
    assert probe(addr, "/live")[0] == 200  # draining is not dying
    engine.probes.drain(False)
    assert probe(addr) == (200, b"ready\n")
    status, head, _ = http_get(addr, "/ready", method="POST", body=b"x=1")
    assert status == 405 and b"Allow: GET, HEAD" in head


def test_a_probe_on_a_kept_alive_connection_during_a_graceful_stop_is_503(make_proxy):
    engine = make_proxy("GracefulShutdownTimeout 5\n" + PROBES)
    addr = engine.addresses[0]
    kept = socket.create_connection(addr, timeout=5)
    kept.sendall(b"GET /ready HTTP/1.1\r\nHost: t\r\n\r\n")
    head, rest = read_head(kept)
    assert status_of(head) == 200 and recv_exactly(kept, 6, initial=rest) == b"ready\n"
    kept.sendall(b"GET /ready HTTP/1.1\r\nHost: t\r\n")  # a request under way holds the stop
    engine.graceful_stop()
    wait_for(lambda: not _connects(addr), timeout=5, what="the listener closed at once")
    kept.sendall(b"Connection: close\r\n\r\n")
    answer = recv_until_eof(kept)
    assert status_of(answer) == 503 and answer.endswith(b"stopping\n")
    kept.close()


def _connects(addr) -> bool:
    try:
        socket.create_connection(addr, timeout=2).close()
    except OSError:
        return False
    return True


def test_live_fails_while_the_loop_is_really_blocked_and_recovers(make_proxy, caplog):
    engine = make_proxy("TunnelLoopLagLimit 0.3\n" + PROBES)
    addr = engine.addresses[0]
    assert probe(addr, "/live")[0] == 200
    assert engine.probes.watchdog is not None and engine.probes.watchdog.interval == pytest.approx(0.075)
    blocked = threading.Event()

    def block() -> None:  # runs on the loop: nothing else on it moves meanwhile
        blocked.set()
        time.sleep(1.5)

    engine.loop.call_soon_threadsafe(block)
    assert blocked.wait(5)
    began = time.monotonic()
    status, body = probe(addr, "/live")  # waits in the backlog until the loop turns again
    assert time.monotonic() - began > 0.8  # it really was answered after the block
    assert status == 503 and body.startswith(b"loop lag "), body
    lag = float(body.split()[2].rstrip(b"s"))
    assert 1.0 < lag < 5.0
    assert probe(addr)[0] == 200  # readiness is not about the loop's health
    wait_for(lambda: probe(addr, "/live")[0] == 200, timeout=5, what="live again after the block")
    messages = [r.getMessage() for r in caplog.records]
    assert any("the loop has not turned for" in m for m in messages)
    assert any("the loop turns again after" in m for m in messages)


def test_a_graceful_restart_keeps_the_drain_and_takes_the_new_lag_limit(make_proxy):
    engine = make_proxy("TunnelLoopLagLimit 2\n" + PROBES)
    addr = engine.addresses[0]
    engine.probes.drain(True)
    engine.reload(Config.from_text("Listen 127.0.0.1:0\nTunnelLoopLagLimit 0.4\n" + PROBES, filename="test.conf"))
    assert engine.probes.watchdog is not None and engine.probes.watchdog.limit == 0.4
    assert probe(addr) == (503, b"draining\n")  # the state is the process's, not the file's
    assert probe(addr, "/live")[0] == 200


def test_live_without_a_loop_of_its_own_is_200(make_proxy):
    """An engine a host drives (``handle`` with no loop) has no loop to watch: the
    thread serving the probe is alive by definition."""
    engine = make_proxy(PROBES, start=False)
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"GET /live HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        engine.handle(b, peer=("127.0.0.1", 1))
        answer = recv_until_eof(a)
    assert status_of(answer) == 200 and answer.endswith(b"live\n")


# -- tunnel serve processes ------------------------------------------------------------------


def write_conf(tmp_path, backend_port: int, extra: str = ""):
    sock = tmp_path / "ctl.sock"
    conf = tmp_path / "tunnel.conf"
    conf.write_text(
        f"Listen 127.0.0.1:0\nPidFile {tmp_path}/tunnel.pid\nTunnelControlSocket {sock}\nGracefulShutdownTimeout 10\n"
        f"ProxyPass /ws ws://127.0.0.1:{backend_port}/\n{PROBES}{extra}"
    )
    return conf, sock


def serve(conf, *extra: str) -> tuple:
    proc = spawn("serve", "--config", str(conf), "--log-level", "info", *extra)
    pattern = r"listening on 127\.0\.0\.1:(\d+)"
    port = int(read_line_matching(proc, pattern, stream="stderr").group(1))
    threading.Thread(target=lambda: proc.stderr.read(), daemon=True).start()  # keep its pipe empty
    return proc, ("127.0.0.1", port)


def test_readiness_through_start_drain_undrain_and_graceful_stop(tmp_path):
    with Recorder("app") as backend:
        conf, sock = write_conf(tmp_path, backend.address[1])
        missing = ctl(conf, "drain")
        assert missing.returncode == 1 and "no tunnel instance is running" in missing.stderr
        proc, addr = serve(conf)
        try:
            wait_for(lambda: sock.exists(), timeout=15, what="the control socket")
            assert probe(addr) == (200, b"ready\n") and probe(addr, "/live")[0] == 200
            tunnel, head, _ = raw_upgrade(addr, "/ws/x")  # a live tunnel holds the graceful stop
            assert status_of(head) == 101
            out = ctl(conf, "drain")
            assert out.returncode == 0, out.stderr
            assert out.stdout.strip() == "worker 0: drained (ready answers 503)"
            assert probe(addr) == (503, b"draining\n")
            assert ctl(conf, "drain").stdout.strip().endswith("as it already was")
            status = json.loads(ctl(conf, "status", "--json").stdout)
            assert [w["drained"] for w in status["workers"]] == [True]
            raw_upgrade(addr, "/ws/y")[0].close()  # drained, it still serves whoever comes
            out = ctl(conf, "undrain", "--json")
            assert out.returncode == 0 and json.loads(out.stdout)["workers"][0]["changed"] is True
            assert probe(addr) == (200, b"ready\n")
            bad = ctl(conf, "drain", "now")
            assert bad.returncode == 2 and "unexpected extra argument" in bad.stderr.lower()
            os.kill(proc.pid, signal.SIGWINCH)
            wait_for(lambda: not accepts(addr[1]), timeout=10, what="the listener closed by the graceful stop")
            assert proc.poll() is None  # still running: the tunnel is held open
            tunnel.close()
            assert proc.wait(timeout=20) == 0
        finally:
            stop(proc)
        gone = ctl(conf, "undrain")
        assert gone.returncode == 1 and "no tunnel instance is running" in gone.stderr


def test_drain_reaches_every_worker_and_a_restarted_one_keeps_it(tmp_path):
    with Recorder("app") as backend:
        conf, sock = write_conf(tmp_path, backend.address[1])
        proc, addr = serve(conf, "--workers", "2")
        try:
            wait_for(lambda: accepts(addr[1]) and sock.exists(), timeout=15, what="workers listening")
            wait_for(lambda: len(json.loads(ctl(conf, "status", "--json").stdout)["workers"]) == 2, timeout=15, what="both workers")
            out = ctl(conf, "drain")
            assert out.returncode == 0, out.stderr
            assert out.stdout.splitlines() == ["worker 0: drained (ready answers 503)", "worker 1: drained (ready answers 503)"]
            # The kernel spreads the probes over both workers: none answers 200.
            assert {probe(addr)[0] for _ in range(30)} == {503}
            before = {w["worker"]: w["pid"] for w in json.loads(ctl(conf, "status", "--json").stdout)["workers"]}
            os.kill(before[1], signal.SIGKILL)  # a worker that dies is restarted ...

            def restarted() -> list:
                workers = json.loads(ctl(conf, "status", "--json").stdout)["workers"]
                return [w for w in workers if w["worker"] == 1 and w["up"] and w["pid"] not in (None, before[1])]

            (worker,) = wait_for(restarted, timeout=20, what="worker 1 restarted")
            assert worker["drained"] is True  # ... and takes the drain from its sibling
            assert {probe(addr)[0] for _ in range(30)} == {503}
            out = ctl(conf, "undrain")
            assert out.returncode == 0 and out.stdout.count("undrained") == 2
            assert {probe(addr)[0] for _ in range(30)} == {200}
            assert len(children_of(proc.pid)) == 2
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                assert proc.wait(timeout=20) == 0
            finally:
                stop(proc)


def test_drain_without_a_control_socket_is_a_clear_error(tmp_path):
    conf = tmp_path / "t.conf"
    conf.write_text("Listen 127.0.0.1:0\nTunnelControlSocket none\n")
    out = ctl(conf, "drain")
    assert out.returncode == 1 and "TunnelControlSocket none" in out.stderr
    broken = tmp_path / "broken.conf"
    broken.write_text("TunnelLoopLagLimit soon\n")
    out = ctl(broken, "drain")
    assert out.returncode == 1 and "broken.conf:1: TunnelLoopLagLimit" in out.stderr and "Traceback" not in out.stderr
