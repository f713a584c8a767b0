"""``tunnel serve --workers N``: N processes sharing the listening ports (SO_REUSEPORT).

Each worker is a forked process running its own `Engine` and loop; the kernel spreads new
connections among them (nginx's model). The parent only supervises:

* it resolves every ``Listen`` with port 0 to a real port first (binding, without
  listening, a SO_REUSEPORT socket it keeps), so all workers share the same ports;
* a worker that dies is logged and restarted (at most ``MAX_RESTARTS_PER_MINUTE``);
* SIGTERM or SIGINT to the parent stops every worker (SIGTERM), waits for them, exits 0;
  SIGWINCH stops them gracefully; SIGUSR1 and SIGHUP are checked, then passed on, and
  the parent stays up through them (R120);
* a worker whose supervisor dies (SIGKILL, a crash) stops as on SIGTERM, so no worker is
  left serving without a supervisor (HAProxy's master-worker mode does the same).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Optional

from ..config import Config, ConfigError
from ..io.listeners import open_listener
from .lifecycle import SIGNALS, action_for
from .pidfile import PidFile

__all__ = ["run_workers", "resolve_workers"]

log = logging.getLogger("tunnel.workers")

#: A worker crashing in a loop is not restarted forever.
MAX_RESTARTS_PER_MINUTE = 10
#: How long the parent waits for workers after SIGTERM before SIGKILL.
STOP_GRACE = 10.0


#: ``prctl(PR_SET_PDEATHSIG, sig)``: the kernel sends ``sig`` when the parent exits.
_PR_SET_PDEATHSIG = 1


def _stop_with_parent(parent: int) -> None:
    """In a new worker: SIGTERM when the supervisor ``parent`` exits (Linux), and exit at
    once when it already has (it may have died between ``fork`` and here)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the worker outlives a killed supervisor
        log.debug("no PR_SET_PDEATHSIG here: workers outlive a supervisor killed with SIGKILL")
    if os.getppid() != parent:
        log.warning("worker %d: the supervisor %d is gone; stopping", os.getpid(), parent)
        os._exit(1)


def resolve_workers(value: str) -> int:
    """``auto`` → the number of cores, else a positive integer."""
    if value == "auto":
        return max(1, os.cpu_count() or 1)
    n = int(value)
    if n < 1:
        raise ValueError("workers must be at least 1")
    return n


def _pin_ports(config: Config) -> tuple[Config, list[socket.socket]]:
    """Give every port-0 listener a real port, held by an unlistened REUSEPORT socket."""
    held: list[socket.socket] = []
    listeners = []
    for lst in config.listeners:
        sock = open_listener(lst, reuse_port=True, listen=False)
        held.append(sock)
        port = sock.getsockname()[1]
        listeners.append(dataclasses.replace(lst, port=port))
    return config.replace(listeners=tuple(listeners)), held


def _repin(config: Config, pinned: dict[tuple[str, bool], int]) -> Config:
    """A re-read configuration with the ports the supervisor chose for ``Listen ...:0``."""
    listeners = tuple(
        dataclasses.replace(lst, port=pinned.get((lst.host, lst.tls), 0)) if lst.port == 0 else lst
        for lst in config.listeners
    )
    return config.replace(listeners=listeners)


#: What a worker runs: its configuration, how to read it again (None: no file) and its
#: slot (a restarted worker gets the slot of the one it replaces, so its control socket
#: path, ``tunnel.proxy.control.Cluster``, stays the same).
Serve = Callable[[Config, Optional[Callable[[], Config]], int], None]


def run_workers(
    config: Config,
    n: int,
    serve: Serve,
    *,
    loader: Optional[Callable[[], Config]] = None,
    pid_file: Optional[PidFile] = None,
    graceful_term: bool = False,
) -> int:
    """Fork ``n`` workers each calling ``serve(config, reload, slot)``; supervise; return exit status.

    The supervisor takes httpd's signals (`tunnel.cli.lifecycle.SIGNALS`) with
    ``sigwait`` and passes each on to every worker: a stop or graceful stop ends the
    workers (those left at the deadline are killed); a graceful restart or restart is
    checked here first (an error is reported, nothing is passed on) and the supervisor
    stays up through it, its workers re-reading the file themselves.
    """
    first = config
    config, held = _pin_ports(config)
    pinned = {(lst.host, lst.tls): new.port for lst, new in zip(first.listeners, config.listeners, strict=True) if lst.port == 0}
    reload = (lambda: _repin(loader(), pinned)) if loader is not None else None
    for lst in config.listeners:
        log.info("listening on %s (%d workers)", lst.display, n)
    children: dict[int, int] = {}  # pid -> slot
    restarts: list[float] = []
    stopping = False
    deadline: Optional[float] = None
    wanted = {signal.SIGCHLD, *SIGNALS}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, wanted)

    supervisor = os.getpid()

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            status = 0
            try:
                _stop_with_parent(supervisor)
                for s in held:
                    s.close()
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
                serve(config, reload, slot)
            except BaseException:  # noqa: BLE001 - a worker must never return into the parent's code
                log.exception("worker %d failed", os.getpid())
                status = 1
            finally:
                os._exit(status)
        children[pid] = slot
        log.info("worker %d started (pid %d)", slot, pid)

    def tell_all(signum: int) -> None:
        for pid in list(children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def report(state: str, error: str = "") -> None:
        if pid_file is not None:
            pid_file.report(state, error)

    try:
        if pid_file is not None:
            pid_file.write()
        for slot in range(n):
            spawn(slot)
        while children:
            if deadline is None:
                signum: Optional[int] = signal.sigwait(wanted)
            else:
                info = signal.sigtimedwait(wanted, max(0.0, deadline - time.monotonic()))
                signum = info.si_signo if info is not None else None
            if signum is None:  # the stop's deadline: whoever is left is killed
                log.error("workers still running at the stop deadline: killing %s", sorted(children))
                tell_all(signal.SIGKILL)
                deadline = None
            elif signum == signal.SIGCHLD:
                restarted = _reap(children, stopping, restarts)
                for slot in restarted:
                    if slot < 0:
                        stopping = True
                        report("stopping")
                        tell_all(signal.SIGTERM)
                        deadline = time.monotonic() + STOP_GRACE
                        break
                    spawn(slot)
            else:
                action = action_for(signum, graceful_term)
                if action in ("stop", "graceful-stop"):
                    now_stop = action == "stop" or stopping
                    stopping = True
                    report("stopping")
                    tell_all(signal.SIGTERM if now_stop else signal.SIGWINCH)
                    timeout = config.graceful_shutdown_timeout
                    grace = STOP_GRACE if now_stop else (timeout + STOP_GRACE if timeout > 0 else None)
                    deadline = None if grace is None else time.monotonic() + grace
                elif action == "upgrade":
                    log.error("SIGUSR2: a binary upgrade needs --workers 1 (this instance runs %d workers); refused", n)
                    report("upgrade-failed", f"a binary upgrade needs --workers 1; this instance runs {n} workers (use a rolling restart)")
                elif not stopping:
                    config = _check_reload(signum, action, reload, config, report, tell_all)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        for sock in held:
            sock.close()
        if pid_file is not None:
            pid_file.remove()
    return 0


def _reap(children: dict[int, int], stopping: bool, restarts: list[float]) -> list[int]:
    """Reap the exited workers; the slots to start again (-1: give up, stop all)."""
    again: list[int] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return again
        if pid == 0:
            return again
        lost = children.pop(pid, None)
        if lost is None or stopping:
            continue
        code = os.waitstatus_to_exitcode(status)
        log.error("worker %d (pid %d) exited with status %d; restarting", lost, pid, code)
        now = time.monotonic()
        restarts[:] = [t for t in restarts if now - t < 60] + [now]
        if len(restarts) > MAX_RESTARTS_PER_MINUTE:
            log.critical("workers keep dying: giving up")
            return [-1]
        again.append(lost)


def _check_reload(
    signum: int,
    action: str,
    reload: Optional[Callable[[], Config]],
    config: Config,
    report: Callable[..., None],
    tell_all: Callable[[int], None],
) -> Config:
    """A graceful restart or restart: check the file here, then pass the signal on."""
    name = signal.Signals(signum).name
    what = "graceful restart" if action == "graceful" else "restart"
    if reload is None:
        log.error("%s: %s asked, but there is no configuration file to read again; ignored", name, what)
        report("reload-failed", "no configuration file to read again (serve was started without --config)")
        return config
    try:
        new = reload()
    except ConfigError as exc:
        log.error("%s: %s failed: %s; the workers keep the previous configuration", name, what, exc)
        report("reload-failed", str(exc))
        return config
    tell_all(signum)
    log.info("%s: %s passed to the workers", name, what)
    report("reloaded" if action == "graceful" else "restarted")
    return new  # what a worker started from now on runs
