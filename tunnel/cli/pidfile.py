"""The PidFile and the status file next to it: how ``tunnel ctl`` finds and hears an instance.

* **Where.** ``PidFile`` names the file; without it, ``tunnel.pid`` in the run directory:
  ``/run/tunnel`` when it can be made and written, else ``$XDG_RUNTIME_DIR/tunnel``,
  else ``<tmp>/tunnel-<uid>`` (`run_dir`).
* **The pid file** holds the pid of the process that takes the signals (with
  ``--workers``, the supervisor), written at start, removed at exit when it still names
  us. A file naming another live process is overwritten with a warning, as httpd does:
  the newest instance is the one ``ctl`` reaches.
* **The status file** (``<PidFile>.status``, JSON) says what became of the last signal:
  ``{"pid", "seq", "state", "error", "time"}`` with ``state`` one of ``running``,
  ``reloaded``, ``reload-failed``, ``restarted``, ``stopping``, ``upgrade-failed`` (the old
  process of a binary upgrade, still serving) and ``upgraded`` (the new one, with a
  ``detail``). ``seq`` grows by one per
  event, so ``ctl`` reads it, signals, and waits for a higher one. Written whole to a
  temporary file and renamed over, so a reader never sees half of one.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Optional

__all__ = ["run_dir", "default_pid_file", "PidFile", "Status", "read_status", "read_pid", "status_path", "alive"]

log = logging.getLogger("tunnel")

#: The run directory tried first (httpd's is under /run or /var/run too).
SYSTEM_RUN_DIR = "/run/tunnel"
PID_FILE_NAME = "tunnel.pid"


def _usable_dir(path: str) -> bool:
    try:
        os.makedirs(path, mode=0o755, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def run_dir() -> str:
    """The run directory: /run/tunnel, else $XDG_RUNTIME_DIR/tunnel, else <tmp>/tunnel-<uid>."""
    if _usable_dir(SYSTEM_RUN_DIR):
        return SYSTEM_RUN_DIR
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and _usable_dir(os.path.join(xdg, "tunnel")):
        return os.path.join(xdg, "tunnel")
    fallback = os.path.join(tempfile.gettempdir(), f"tunnel-{os.getuid()}")
    os.makedirs(fallback, mode=0o700, exist_ok=True)
    return fallback


def default_pid_file() -> str:
    return os.path.join(run_dir(), PID_FILE_NAME)


def status_path(pid_file: str) -> str:
    return pid_file + ".status"


def alive(pid: int) -> bool:
    """A process with this pid exists (and is not a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return True  # no /proc: kill(0) said it exists


def read_pid(pid_file: str) -> Optional[int]:
    """The pid in the file, or None when there is no file or no number in it."""
    try:
        with open(pid_file, encoding="ascii") as fh:
            text = fh.read().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


@dataclass(frozen=True)
class Status:
    pid: int
    seq: int
    state: str
    error: str = ""
    time: float = 0.0
    detail: str = ""


def read_status(pid_file: str) -> Optional[Status]:
    """The status file's content, or None (no file, or not one of ours)."""
    try:
        with open(status_path(pid_file), encoding="utf-8") as fh:
            data = json.load(fh)
        return Status(
            int(data["pid"]), int(data["seq"]), str(data["state"]), str(data.get("error", "")), float(data.get("time", 0)),
            str(data.get("detail", "")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


class PidFile:
    """The running instance's pid file and status file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.pid = os.getpid()
        self.seq = 0
        #: a binary upgrade's new process owns the files now: this one leaves them be.
        self.released = False

    def write(self, *, taking_over: int = 0) -> None:
        """Write our pid (over a stale or a live other one, with a warning; over
        ``taking_over``'s, a binary upgrade's old process, without one)."""
        folder = os.path.dirname(self.path) or "."
        os.makedirs(folder, exist_ok=True)
        other = read_pid(self.path)
        if other is not None and other == taking_over:
            log.info("PidFile %s: pid %d takes over from pid %d (binary upgrade)", self.path, self.pid, other)
        elif other is not None and other != self.pid:
            if alive(other):
                log.warning("PidFile %s named running process %d; overwritten (tunnel ctl now reaches this one)", self.path, other)
            else:
                log.warning("PidFile %s overwritten (process %d is gone: unclean shutdown?)", self.path, other)
        self._atomic(self.path, f"{self.pid}\n")
        previous = read_status(self.path)
        self.seq = previous.seq if previous is not None else 0
        self.report("running")

    def report(self, state: str, error: str = "", detail: str = "") -> None:
        """Record the outcome of a signal (``ctl`` waits for it)."""
        if self.released:
            return
        self.seq += 1
        record = {"pid": self.pid, "seq": self.seq, "state": state, "error": error, "time": time.time(), "detail": detail}
        try:
            self._atomic(status_path(self.path), json.dumps(record) + "\n")
        except OSError as exc:
            log.error("cannot write the status file %s: %s", status_path(self.path), exc.strerror or exc)

    def remove(self) -> None:
        """At exit: remove both files if they are still ours."""
        if self.released or read_pid(self.path) != self.pid:
            return
        for path in (self.path, status_path(self.path)):
            try:
                os.unlink(path)
            except OSError:
                pass

    @staticmethod
    def _atomic(path: str, text: str) -> None:
        folder = os.path.dirname(path) or "."
        fd, tmp = tempfile.mkstemp(prefix=".tunnel-", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
