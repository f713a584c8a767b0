"""The process's resources, for "nothing is left behind" checks."""

from __future__ import annotations

import os
import threading

from tests.support.waiting import wait_for


def open_fds() -> int:
    """File descriptors open in this process now."""
    return len(os.listdir("/proc/self/fd"))


def fd_table() -> dict[int, str]:
    """This process's open file descriptors and what each one is (its /proc link)."""
    table: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            table[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass  # closed while we looked (the listing's own fd among them)
    return table


def _tcp_sockets() -> dict[str, str]:
    """socket inode -> "local -> remote state" for this process's network namespace."""
    states = {"01": "ESTABLISHED", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "0A": "LISTEN"}
    out: dict[str, str] = {}
    for path in ("/proc/net/tcp", "/proc/net/tcp6", "/proc/net/unix"):
        try:
            with open(path) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if path.endswith("unix"):
                if len(cols) >= 7:
                    out[cols[6]] = "unix " + (cols[7] if len(cols) > 7 else "(unnamed)")
                continue
            local, remote, state, inode = cols[1], cols[2], cols[3], cols[9]
            out[inode] = f"tcp {_addr(local)} -> {_addr(remote)} {states.get(state, state)}"
    return out


def _addr(hexaddr: str) -> str:
    host, port = hexaddr.split(":")
    if len(host) == 8:
        host = ".".join(str(int(host[i : i + 2], 16)) for i in (6, 4, 2, 0))
    return f"{host}:{int(port, 16)}"


def describe_fds(fds: dict[int, str]) -> str:
    """One line per fd, sockets with their addresses and TCP state (for a failure)."""
    sockets = _tcp_sockets()
    lines = []
    for fd, target in sorted(fds.items()):
        if target.startswith("socket:["):
            target = f"{target} {sockets.get(target[8:-1], '')}".rstrip()
        lines.append(f"  fd {fd}: {target}")
    return "\n".join(lines)


def fds_left_over(baseline: dict[int, str]) -> str:
    """The fds open now that were not in ``baseline`` (same number, same target), described."""
    now = fd_table()
    return describe_fds({fd: t for fd, t in now.items() if baseline.get(fd) != t})


def wait_fds_back(baseline: dict[int, str], *, extra: int = 0, timeout: float = 5.0, what: str = "fds back to the baseline") -> None:
    """Wait until no more fds are open than in ``baseline`` (a `fd_table`) plus
    ``extra``; on the deadline, fail naming the fds opened since."""
    limit = len(baseline) + extra
    try:
        wait_for(lambda: len(fd_table()) <= limit, timeout=timeout, what=f"{what} ({limit} fds)")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {len(fd_table())} open, new since the baseline:\n{fds_left_over(baseline)}") from None


def thread_count() -> int:
    """Threads alive in this process now."""
    return threading.active_count()
