"""Processes, /proc measurements and the proxies under test, for the benchmark suite.

Everything here runs on loopback with ports the OS picks, every wait polls a condition
against a deadline, and every process started is stopped (its whole process group) even
when a benchmark fails.

* `build()` compiles the C load generator and backend into ``bench/build/`` with ``cc``.
* `Backend` is the C echo backend (one process, one port per proxy under test).
* `Target` is one thing the load generator talks to: ``direct`` (the backend itself),
  ``tunnel`` (``tunnel serve --config FILE [--workers N]`` as a separate process),
  ``pyfloor`` (``bench/floor.py``, the cheapest relay pure Python can be, async or
  threads), or a peer (nginx, HAProxy, Apache httpd) with a configuration written into a
  temp dir.
* `Holder` drives ``loadgen hold`` (many idle tunnels, a probe tunnel) through stdin.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BUILD = BENCH / "build"
LOADGEN = BUILD / "loadgen"
ECHO_BACKEND = BUILD / "echo_backend"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

# ----------------------------------------------------------------------------- helpers


class BenchError(RuntimeError):
    """A measurement could not be made (a process died, a deadline passed)."""


def wait_until(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.01) -> Any:
    """Poll ``cond`` until it returns something true, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    """A loopback port the OS picks (bound, read, released: the server binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_sockets(port: int) -> int:
    """How many sockets listen on 127.0.0.1:port (several with SO_REUSEPORT workers)."""
    want = f"0100007F:{port:04X}"
    count = 0
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                parts = line.split()
                if parts[1] == want and parts[3] == "0A":
                    count += 1
    except OSError:
        pass
    return count


def build(force: bool = False) -> None:
    """Compile bench/loadgen.c and bench/echo_backend.c with the system cc (when stale)."""
    BUILD.mkdir(exist_ok=True)
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise BenchError("no C compiler (cc) found: install gcc")
    for src, out in ((BENCH / "loadgen.c", LOADGEN), (BENCH / "echo_backend.c", ECHO_BACKEND)):
        if force or not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
            tmp = out.with_suffix(".tmp")
            subprocess.run([cc, "-O2", "-Wall", "-o", str(tmp), str(src), "-lm"], check=True, timeout=120)
            tmp.replace(out)


# ------------------------------------------------------------------------ /proc readings


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (workers, forked children)."""
    children = _children_map()
    tree, todo = [], [pid]
    while todo and len(tree) < 10000:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, ()))
    return tree


def rss_kib(pids: list[int]) -> int:
    """Sum of VmRSS (KiB) of the given processes."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the given processes (all their threads), seconds."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def thread_count(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            pass
    return total


# ---------------------------------------------------------------------------- processes


class Proc:
    """A child process in its own session; `stop` ends its whole process group."""

    def __init__(self, argv: list[str], *, name: str, log: Optional[Path] = None, **kw: Any) -> None:
        self.name = name
        self.argv = argv
        # The child keeps its own copy of the log's descriptor: ours closes once it started.
        with open(log, "ab") if log else contextlib.nullcontext(subprocess.DEVNULL) as out:
            self.popen = subprocess.Popen(argv, stdout=kw.pop("stdout", out), stderr=kw.pop("stderr", out),
                                          stdin=kw.pop("stdin", subprocess.DEVNULL), start_new_session=True, **kw)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        # the group may still hold workers (or the leader ignored SIGTERM): kill them
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if stream:
                stream.close()


def read_line(stream: Any, timeout: float, what: str) -> str:
    """One line from a child's pipe, or BenchError at the deadline."""
    deadline = time.monotonic() + timeout
    buf = b""
    fd = stream.fileno()
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
            if not sel.select(left):
                continue
            chunk = os.read(fd, 1)  # one byte at a time: never read past the line
            if not chunk:
                raise BenchError(f"{what}: the process ended")
            buf += chunk
    return buf.decode()


class Backend:
    """The C echo backend: one process, `nports` ports of 127.0.0.1."""

    def __init__(self, nports: int) -> None:
        self.proc = Proc([str(ECHO_BACKEND), str(nports)], name="echo_backend", stdout=subprocess.PIPE)
        try:
            line = read_line(self.proc.popen.stdout, 10, "the echo backend's ports")
        except BaseException:
            self.proc.stop()
            raise
        self.ports = [int(p) for p in line.split()[1:]]
        self._next = 0

    def allot(self) -> int:
        port = self.ports[self._next]
        self._next += 1
        return port

    def cpu(self) -> float:
        return cpu_seconds([self.proc.pid])

    def stop(self) -> None:
        self.proc.stop()


def run_loadgen(mode: str, port: int, wall: float = 120.0, **opts: Any) -> dict[str, Any]:
    """Run the load generator once; its JSON result (``opts`` become ``--key value``)."""
    argv = [str(LOADGEN), mode, "--port", str(port)]
    for key, value in opts.items():
        argv += [f"--{key}", str(value)]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=wall, text=True)
    except subprocess.TimeoutExpired:
        raise BenchError(f"loadgen {mode} still running after {wall:.0f}s") from None
    if done.returncode != 0 or not done.stdout.strip():
        raise BenchError(f"loadgen {mode} failed ({done.returncode}): {done.stderr.strip()[:300]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class Holder:
    """``loadgen hold``: idle tunnels and a probe tunnel, driven by commands on stdin."""

    def __init__(self, port: int, maxconns: int, timeout: float = 60.0, conc: int = 64) -> None:
        argv = [str(LOADGEN), "hold", "--port", str(port), "--max", str(maxconns),
                "--timeout", str(timeout), "--conc", str(conc)]
        self.proc = Proc(argv, name="loadgen-hold", stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.timeout = timeout
        try:
            self.ready = json.loads(read_line(self.proc.popen.stdout, timeout + 5, "loadgen hold to start"))
        except BaseException:
            self.proc.stop()
            raise

    def cmd(self, line: str, timeout: Optional[float] = None) -> dict[str, Any]:
        assert self.proc.popen.stdin is not None
        self.proc.popen.stdin.write((line + "\n").encode())
        self.proc.popen.stdin.flush()
        return json.loads(read_line(self.proc.popen.stdout, (timeout or self.timeout) + 10, f"loadgen {line!r}"))

    def close(self) -> None:
        try:
            if self.proc.alive() and self.proc.popen.stdin:
                self.proc.popen.stdin.write(b"quit\n")
                self.proc.popen.stdin.flush()
                self.proc.popen.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.proc.stop()

    def __enter__(self) -> Holder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ------------------------------------------------------------------------------ targets


@dataclass
class TargetSpec:
    """What to run: ``direct``, ``tunnel`` (strategy, workers), ``pyfloor`` (strategy) or a
    peer (nginx, haproxy, httpd)."""

    name: str
    kind: str
    strategy: str = ""
    workers: int = 1
    backend_port: int = 0
    label: str = ""
    #: more lines for tunnel's configuration (e.g. ``ProxyWebsocketFrameTracking On``)
    extra: tuple[str, ...] = ()

    @property
    def is_proxy(self) -> bool:
        return self.kind != "direct"


PEER_BINARIES = {"nginx": "nginx", "haproxy": "haproxy", "httpd": "apache2"}
PEER_WORKERS = 2  # nginx worker_processes, HAProxy nbthread: what `auto` gives on 2 cores


def find_peer(kind: str) -> Optional[str]:
    name = PEER_BINARIES[kind]
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/local/sbin/{name}") if os.access(p, os.X_OK)), None)


def peer_version(kind: str) -> str:
    binary = find_peer(kind)
    if not binary:
        return ""
    flag = {"nginx": "-v", "haproxy": "-v", "httpd": "-v"}[kind]
    try:
        out = subprocess.run([binary, flag], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else ""


class Target:
    """A running instance of a `TargetSpec`: its port and (for proxies) its process."""

    def __init__(self, spec: TargetSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.proc: Optional[Proc] = None
        self.tmp: Optional[Path] = None
        self.port = spec.backend_port
        if spec.is_proxy:
            self._start()

    # -- measurements -------------------------------------------------------------------
    def pids(self) -> list[int]:
        return process_tree(self.proc.pid) if self.proc else []

    def rss_kib(self) -> int:
        return rss_kib(self.pids())

    def cpu(self) -> float:
        return cpu_seconds(self.pids())

    def check_alive(self) -> None:
        if self.proc and not self.proc.alive():
            raise BenchError(f"{self.name} exited with status {self.proc.popen.returncode}; log: {self.log_tail()}")

    def log_tail(self) -> str:
        if not self.tmp:
            return ""
        texts = []
        for log in sorted(self.tmp.glob("*.log")):
            try:
                texts.append(log.read_text(errors="replace")[-600:])
            except OSError:
                pass
        return " | ".join(t.strip() for t in texts if t.strip())

    # -- life -------------------------------------------------------------------------
    def _start(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-{self.name}-"))
        os.chmod(self.tmp, 0o755)
        self.port = free_port()
        argv, expect_listeners = getattr(self, f"_argv_{self.spec.kind}")()
        self.proc = Proc(argv, name=self.name, log=self.tmp / "stdio.log", cwd=str(self.tmp))
        try:
            wait_until(lambda: listening_sockets(self.port) >= expect_listeners or not self.proc.alive(),
                       30, f"{self.name} to listen on {self.port}")
            self.check_alive()
            self._wait_warm()
        except BaseException:
            self.stop()
            raise

    def _wait_warm(self) -> None:
        """Until the proxy answers upgrades end to end (its workers are up)."""
        def answers() -> bool:
            self.check_alive()
            try:
                res = run_loadgen("pingpong", self.port, wall=20, conns=4, warmup=0, duration=0.05, timeout=5)
            except BenchError:
                return False
            return res.get("open_errors", 1) == 0 and res.get("msgs", 0) > 0
        wait_until(answers, 30, f"{self.name} to relay an echo")

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
        if self.tmp and os.environ.get("BENCH_KEEP_TMP") != "1":
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- configurations -----------------------------------------------------------------
    def _argv_tunnel(self) -> tuple[list[str], int]:
        assert self.tmp is not None
        conf = self.tmp / "tunnel.conf"
        conf.write_text(
            "\n".join(
                [
                    f"Listen 127.0.0.1:{self.port}",
                    "LogLevel warn",
                    f"ErrorLog {self.tmp / 'error.log'}",
                    "Timeout 600",
                    f"ProxyWebsocketAsync {'On' if self.spec.strategy == 'async' else 'Off'}",
                    "MaxTunnelThreads 10500",
                    *self.spec.extra,
                    f"ProxyPass / ws://127.0.0.1:{self.spec.backend_port}/",
                    "",
                ]
            )
        )
        exe = Path(sys.executable).with_name("tunnel")
        argv = [str(exe), "serve", "--config", str(conf), "--workers", str(self.spec.workers)]
        return argv, self.spec.workers

    def _argv_pyfloor(self) -> tuple[list[str], int]:
        """The pure-Python floor (bench/floor.py): async is one epoll thread, sync a thread per tunnel."""
        mode = "async" if self.spec.strategy == "async" else "threads"
        return [sys.executable, str(BENCH / "floor.py"), "--listen", f"127.0.0.1:{self.port}",
                "--backend", f"127.0.0.1:{self.spec.backend_port}", "--mode", mode], 1

    def _argv_nginx(self) -> tuple[list[str], int]:
        assert self.tmp is not None
        t = self.tmp
        for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (t / d).mkdir()
        (t / "nginx.conf").write_text(f"""
daemon off;
master_process on;
worker_processes {PEER_WORKERS};
pid {t}/nginx.pid;
error_log {t}/error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 19990; }}
http {{
    access_log off;
    client_body_temp_path {t}/client_body;
    proxy_temp_path {t}/proxy;
    fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi;
    scgi_temp_path {t}/scgi;
    server {{
        listen 127.0.0.1:{self.port};
        location / {{
            proxy_pass http://127.0.0.1:{self.spec.backend_port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
    }}
}}
""")
        return [find_peer("nginx") or "nginx", "-p", str(t), "-c", str(t / "nginx.conf"), "-e", str(t / "error.log")], 1

    def _argv_haproxy(self) -> tuple[list[str], int]:
        assert self.tmp is not None
        (self.tmp / "haproxy.cfg").write_text(f"""
global
    maxconn 9980
    nbthread {PEER_WORKERS}
    pidfile {self.tmp}/haproxy.pid

defaults
    mode http
    timeout connect 5s
    timeout client 600s
    timeout server 600s
    timeout tunnel 3600s
    maxconn 9980

frontend fe
    bind 127.0.0.1:{self.port}
    default_backend be

backend be
    server s1 127.0.0.1:{self.spec.backend_port}
""")
        return [find_peer("haproxy") or "haproxy", "-db", "-f", str(self.tmp / "haproxy.cfg")], 1

    def _argv_httpd(self) -> tuple[list[str], int]:
        assert self.tmp is not None
        t = self.tmp
        mods = "/usr/lib/apache2/modules"
        user = ""
        if os.geteuid() == 0:  # httpd refuses to serve as root: its children switch user
            import pwd
            for name in ("www-data", "daemon", "nobody"):
                try:
                    pwd.getpwnam(name)
                except KeyError:
                    continue
                user = f"User {name}\nGroup {'nogroup' if name == 'nobody' else name}\n"
                break
        (t / "httpd.conf").write_text(f"""
ServerRoot "{t}"
DefaultRuntimeDir "{t}"
PidFile "{t}/httpd.pid"
Mutex file:{t} default
ScoreBoardFile "{t}/scoreboard"
ServerName 127.0.0.1
Listen 127.0.0.1:{self.port}
{user}
LoadModule mpm_event_module {mods}/mod_mpm_event.so
LoadModule authz_core_module {mods}/mod_authz_core.so
LoadModule proxy_module {mods}/mod_proxy.so
LoadModule proxy_http_module {mods}/mod_proxy_http.so
LoadModule proxy_wstunnel_module {mods}/mod_proxy_wstunnel.so
ErrorLog "{t}/error.log"
LogLevel warn
Timeout 600
KeepAlive On
# a tunnel holds a thread: room for 10,240 of them, 256 per process
StartServers 2
ServerLimit 40
ThreadLimit 256
ThreadsPerChild 256
MaxRequestWorkers 10240
MinSpareThreads 64
MaxSpareThreads 10240
MaxConnectionsPerChild 0
ProxyPass / ws://127.0.0.1:{self.spec.backend_port}/
""")
        return [find_peer("httpd") or "apache2", "-d", str(t), "-f", str(t / "httpd.conf"), "-D", "FOREGROUND"], 1


# ------------------------------------------------------------------------- measurement


@dataclass
class Usage:
    """CPU (% of one core) of the proxy, backend and load generator over a measurement."""

    wall: float = 0.0
    proxy: float = 0.0
    backend: float = 0.0
    loadgen: float = 0.0

    def as_dict(self) -> dict[str, float]:
        pct = lambda s: round(100.0 * s / self.wall, 1) if self.wall > 0 else 0.0  # noqa: E731
        return {"cpu_proxy_pct": pct(self.proxy), "cpu_backend_pct": pct(self.backend), "cpu_loadgen_pct": pct(self.loadgen)}


@dataclass
class Meter:
    """Snapshot the CPU of the proxy (all its processes) and of the backend."""

    target: Target
    backend: Backend
    usage: Usage = field(default_factory=Usage)

    def __enter__(self) -> Meter:
        self.target.check_alive()
        self._t0 = time.monotonic()
        self._p0 = self.target.cpu()
        self._b0 = self.backend.cpu()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.usage.wall = time.monotonic() - self._t0
        self.usage.proxy = self.target.cpu() - self._p0
        self.usage.backend = self.backend.cpu() - self._b0
