"""``tunnel serve --workers N``: N processes sharing the listening ports (SO_REUSEPORT).

Each worker is a forked process running its own `Engine` and loop; the kernel spreads new
connections among them (nginx's model). The parent only supervises:

* it resolves every ``Listen`` with port 0 to a real port first (binding, without
  listening, a SO_REUSEPORT socket it keeps), so all workers share the same ports;
* a worker that dies is logged and restarted (at most ``MAX_RESTARTS_PER_MINUTE``);
* SIGTERM or SIGINT to the parent stops every worker (SIGTERM), waits for them, exits 0.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Optional

from ..config import Config, Listener
from ..io.listeners import open_listener

__all__ = ["run_workers", "resolve_workers"]

log = logging.getLogger("tunnel.workers")

#: A worker crashing in a loop is not restarted forever.
MAX_RESTARTS_PER_MINUTE = 10
#: How long the parent waits for workers after SIGTERM before SIGKILL.
STOP_GRACE = 10.0


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
        listeners.append(Listener(lst.host, port, lst.tls, lst.file, lst.line))
    return config.replace(listeners=tuple(listeners)), held


def run_workers(config: Config, n: int, serve: Callable[[Config, int], None]) -> int:
    """Fork ``n`` workers each calling ``serve(config, slot)``; supervise; return exit
    status. A restarted worker gets the slot of the one it replaces (its control socket
    path, ``tunnel.proxy.control.Cluster``, stays the same)."""
    config, held = _pin_ports(config)
    for lst in config.listeners:
        log.info("listening on %s (%d workers)", lst.display, n)
    children: dict[int, int] = {}  # pid -> slot
    restarts: list[float] = []
    stopping = False

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            status = 0
            try:
                for s in held:
                    s.close()
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                serve(config, slot)
            except BaseException:  # noqa: BLE001 - a worker must never return into the parent's code
                log.exception("worker %d failed", os.getpid())
                status = 1
            finally:
                os._exit(status)
        children[pid] = slot
        log.info("worker %d started (pid %d)", slot, pid)

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for slot in range(n):
            spawn(slot)
        deadline: Optional[float] = None
        while children:
            try:
                pid, status = os.waitpid(-1, 0 if not stopping else os.WNOHANG)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if pid == 0:  # stopping, nobody exited yet
                deadline = deadline or time.monotonic() + STOP_GRACE
                if time.monotonic() > deadline:
                    for p in list(children):
                        os.kill(p, signal.SIGKILL)
                time.sleep(0.05)  # polling children during shutdown only
                continue
            lost = children.pop(pid, None)
            if lost is None or stopping:
                continue
            code = os.waitstatus_to_exitcode(status)
            log.error("worker %d (pid %d) exited with status %d; restarting", lost, pid, code)
            now = time.monotonic()
            restarts[:] = [t for t in restarts if now - t < 60] + [now]
            if len(restarts) > MAX_RESTARTS_PER_MINUTE:
                log.critical("workers keep dying: giving up")
                on_signal(signal.SIGTERM, None)
                continue
            spawn(lost)
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)
        for sock in held:
            sock.close()
    return 0
