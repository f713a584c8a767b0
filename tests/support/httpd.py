"""Real Apache httpd (Debian's apache2 binary) run in the foreground for one test.

`Httpd.start(prelude, fixture_text, ports)` writes a main configuration that loads the
modules the published configurations use from /usr/lib/apache2/modules (with ServerRoot
/usr/lib/apache2, so a file's own ``LoadModule ... modules/mod_x.so`` lines resolve too),
keeps the pid file, error log, mutexes and runtime files in the test's directory, then
includes the fixture; it runs ``apache2 -f MAIN -DFOREGROUND`` and waits, with a deadline,
until every port accepts a connection. httpd cannot be given port 0, so the caller picks
free ports; `start` reports a port taken in the meantime as `PortTaken` so that the caller
can pick others (a bounded retry). `stop` ends it (SIGTERM, then SIGKILL) and is safe to
call twice; use it in a ``finally``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

MODULE_DIR = Path("/usr/lib/apache2/modules")


def find_apache2() -> Optional[str]:
    for name in ("apache2", "httpd"):
        found = shutil.which(name) or (f"/usr/sbin/{name}" if os.access(f"/usr/sbin/{name}", os.X_OK) else None)
        if found and MODULE_DIR.is_dir():
            return found
    return None


APACHE2 = find_apache2()

#: Loaded for every fixture (a fixture that loads one again only gets httpd's warning).
MODULES = (
    "mpm_event", "authz_core", "authz_host", "authz_user", "authn_core", "access_compat",
    "mime", "dir", "alias", "env", "setenvif", "headers", "rewrite", "ssl", "socache_shmcb", "proxy",
    "proxy_http", "proxy_wstunnel", "proxy_balancer", "lbmethod_byrequests", "slotmem_shm",
)


class PortTaken(Exception):
    """httpd could not bind one of its ports (another process took it first)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


class Httpd:
    def __init__(self, workdir: Path) -> None:
        assert APACHE2 is not None
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.error_log = workdir / "error.log"

    def _main(self, prelude: str, fixture_text: str) -> Path:
        fixture = self.workdir / "fixture.conf"
        fixture.write_text(fixture_text)
        loads = "\n".join(f"LoadModule {m}_module {MODULE_DIR}/mod_{m}.so" for m in MODULES)
        main = self.workdir / "httpd.conf"
        main.write_text(
            f"""ServerRoot "/usr/lib/apache2"
DefaultRuntimeDir "{self.workdir}"
PidFile "{self.workdir}/httpd.pid"
ErrorLog "{self.error_log}"
LogLevel warn
Mutex file:{self.workdir} default
{loads}
User www-data
Group www-data
ServerName proxy.test
TypesConfig /etc/mime.types
StartServers 1
ServerLimit 1
ThreadsPerChild 16
MaxRequestWorkers 16
Timeout 10
{prelude}
Include "{fixture}"
"""
        )
        return main

    def configtest(self, prelude: str, fixture_text: str) -> tuple[bool, str]:
        """``apache2 -t`` on the configuration: (accepted, what httpd printed)."""
        main = self._main(prelude, fixture_text)
        done = subprocess.run([str(APACHE2), "-t", "-f", str(main)], capture_output=True, text=True, timeout=30)
        return done.returncode == 0, done.stderr + done.stdout

    def start(self, prelude: str, fixture_text: str, ports: list[int], timeout: float = 15.0) -> None:
        main = self._main(prelude, fixture_text)
        if self.error_log.exists():
            self.error_log.unlink()
        with open(self.workdir / "stderr.log", "wb") as out:
            self.proc = subprocess.Popen(
                [str(APACHE2), "-f", str(main), "-DFOREGROUND"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        waiting = list(ports)
        while waiting:
            if self.proc.poll() is not None:
                text, code = self.output(), self.proc.returncode
                self.stop()
                if "Address already in use" in text:
                    raise PortTaken(text)
                raise AssertionError(f"httpd exited with {code}:\n{text}")
            try:
                socket.create_connection(("127.0.0.1", waiting[0]), timeout=0.5).close()
                waiting.pop(0)
            except OSError:
                if time.monotonic() > deadline:
                    text = self.output()
                    self.stop()
                    raise AssertionError(f"httpd did not listen on {waiting} within {timeout}s:\n{text}") from None
                time.sleep(0.02)

    def output(self) -> str:
        parts = []
        for name in ("stderr.log", "error.log"):
            path = self.workdir / name
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            except ProcessLookupError:
                proc.wait(timeout=10)
        # httpd's children are in its process group: none may outlive the test.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
