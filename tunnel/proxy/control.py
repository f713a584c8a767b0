"""Unix control sockets: ``tunnel ctl``'s, and the private ones worker processes use to
ask each other for their figures and to pass on balancer changes (R116, R117).

The protocol is one JSON object per connection each way: the client sends a request
line (``{"op": ...}``), the server answers one JSON line and closes. Bounded on both
sides: requests up to `MAX_REQUEST` bytes, answers up to `MAX_ANSWER`, and every step
has a deadline, so a dead or stuck sibling costs one timeout and is reported as such.

`ControlServer` serves a socket from its own thread (a connection each, at most
`MAX_CLIENTS` at once), created with mode 0600 in a directory only its user can enter,
and only answers a peer of the same user (or root), checked with ``SO_PEERCRED``.
`ask` is the client, as generator steps: on the engine's loop (a status page asking its
siblings) or through `run_blocking` (``tunnel ctl``, the control thread).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Optional

from ..io.loop import Wait, run_blocking
from ..io.steps import recv, sendall

__all__ = [
    "Cluster",
    "ControlServer",
    "ControlError",
    "ask",
    "ask_blocking",
    "check_socket",
    "default_run_dir",
    "default_control_socket",
    "private_dir",
]

log = logging.getLogger("tunnel.control")

MAX_REQUEST = 1 << 20
MAX_ANSWER = 64 << 20
MAX_CLIENTS = 8
#: How long a connection to a control socket may take, each side.
IO_TIMEOUT = 5.0

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class ControlError(Exception):
    """A control socket cannot be used (missing, wrong owner or mode, nobody listening,
    a bad answer); the message says which and where."""


@dataclass(frozen=True)
class Cluster:
    """Where this process's control sockets are, and its siblings' (``--workers N``).

    Attributes:
        control: the ``tunnel ctl`` socket this process serves ("" for none).
        peers: the directory of the workers' private sockets ("" with one process).
        slot: this worker's number (0 with one process).
        workers: how many workers there are.
        secret: the seed of the balancer-manager nonces, the same in every worker.
    """

    control: str = ""
    peers: str = ""
    slot: int = 0
    workers: int = 1
    secret: str = ""

    def peer_path(self, slot: int) -> str:
        return os.path.join(self.peers, f"worker-{slot}.sock")

    def siblings(self) -> list[int]:
        return [s for s in range(self.workers) if s != self.slot] if self.peers else []


def default_run_dir() -> str:
    """``$XDG_RUNTIME_DIR/tunnel`` when the variable names a directory, else
    ``/tmp/tunnel-<uid>``."""
    base = os.environ.get("XDG_RUNTIME_DIR", "")
    if base and os.path.isdir(base):
        return os.path.join(base, "tunnel")
    return os.path.join("/tmp", f"tunnel-{os.getuid()}")


def default_control_socket(config_file: str) -> str:
    """The control socket of an instance serving ``config_file`` when no
    ``TunnelControlSocket`` names one: ``<run dir>/<hash of the file's absolute
    path>.sock``, so ``tunnel ctl --config FILE`` finds it."""
    digest = hashlib.sha256(os.path.abspath(config_file).encode()).hexdigest()[:16]
    return os.path.join(default_run_dir(), f"{digest}.sock")


def private_dir(path: str) -> None:
    """Create ``path`` (mode 0700) or check that only this user can use it.

    Raises:
        ControlError: it is not a directory, belongs to someone else, or others may
            write into it.
    """
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.stat(path)
    except OSError as exc:
        raise ControlError(f"cannot create the run directory {path}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise ControlError(f"{path} is not a directory")
    if info.st_uid != os.getuid():
        raise ControlError(f"the run directory {path} belongs to uid {info.st_uid}, not to this user ({os.getuid()})")
    if info.st_mode & 0o022:
        raise ControlError(f"the run directory {path} is writable by others (mode {stat.S_IMODE(info.st_mode):04o}); expected 0700")


def check_socket(path: str) -> None:
    """What ``tunnel ctl`` checks before it talks to ``path``.

    Raises:
        ControlError: no such file, not a socket, owned by another user, or a mode
            that lets other users in (anything but 0600 or stricter).
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ControlError(f"no tunnel instance is running: no control socket at {path}") from None
    except OSError as exc:
        raise ControlError(f"cannot use the control socket {path}: {exc.strerror or exc}") from None
    if not stat.S_ISSOCK(info.st_mode):
        raise ControlError(f"{path} is not a unix socket")
    if info.st_uid != os.getuid():
        raise ControlError(f"the control socket {path} belongs to uid {info.st_uid}, not to this user ({os.getuid()}); refusing it")
    if info.st_mode & 0o077:
        raise ControlError(f"the control socket {path} has mode {stat.S_IMODE(info.st_mode):04o}; expected 0600; refusing it")


class ControlServer:
    """Serve ``handler`` on the unix socket ``path`` from a thread.

    Raises (from the constructor):
        ControlError: the path is in use by a live server, or cannot be bound.
    """

    def __init__(self, path: str, handler: Handler, *, name: str = "tunnel-control", take_over: bool = False) -> None:
        self.path = path
        self._handler = handler
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        self._closed = False
        self._sock = _bind(path, take_over=take_over)
        self._inode = os.stat(path).st_ino
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    @property
    def lost(self) -> bool:
        """Its path names another socket now (or none): a failed binary upgrade's."""
        try:
            return os.stat(self.path).st_ino != self._inode
        except OSError:
            return True

    def close(self) -> None:
        """Stop serving and remove the socket file (only if it is still ours)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accept
        except OSError:
            pass
        self._sock.close()
        self._thread.join(IO_TIMEOUT)
        try:
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except OSError:
            pass

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            if not self._slots.acquire(blocking=False):
                conn.close()  # busy: the client sees EOF and says so
                continue
            threading.Thread(target=self._one, args=(conn,), name="tunnel-control-client", daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(IO_TIMEOUT)
                uid = _peer_uid(conn)
                if uid not in (os.getuid(), 0):
                    log.warning("control socket %s: refused a client of uid %s", self.path, uid)
                    return
                data = b""
                while b"\n" not in data and len(data) <= MAX_REQUEST:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                try:
                    request = json.loads(data.partition(b"\n")[0] or b"null")
                    if not isinstance(request, dict):
                        raise ValueError("not a JSON object")
                except ValueError as exc:
                    answer: dict[str, Any] = {"ok": False, "error": f"bad request: {exc}"}
                else:
                    try:
                        answer = self._handler(request)
                    except Exception as exc:  # noqa: BLE001 - answered, and logged with its traceback
                        log.exception("control request %r failed", request.get("op"))
                        answer = {"ok": False, "error": f"internal error: {exc}"}
                conn.sendall(json.dumps(answer, separators=(",", ":")).encode() + b"\n")
        except OSError:
            pass
        finally:
            self._slots.release()


def _peer_uid(conn: socket.socket) -> Optional[int]:
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    return int(struct.unpack("3i", creds)[1])


def _bind(path: str, *, take_over: bool = False) -> socket.socket:
    """Bind and listen at ``path``. ``take_over``: a binary upgrade's new process
    replaces the old process's socket (the old one keeps serving on its own, unnamed)."""
    if take_over and os.path.lexists(path):
        try:
            os.unlink(path)
        except OSError as exc:
            raise ControlError(f"cannot take over the control socket {path}: {exc.strerror}") from None
    if os.path.lexists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            try:
                os.unlink(path)  # nobody listens: a stale socket from a process that died
            except OSError as exc:
                raise ControlError(f"cannot remove the stale control socket {path}: {exc.strerror}") from None
        else:
            raise ControlError(f"the control socket {path} is in use by a running instance")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # born 0600: no moment where others could connect
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise ControlError(f"cannot bind the control socket {path}: {exc.strerror or exc}") from None
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(16)
    return sock


def ask(path: str, request: dict[str, Any], deadline: float) -> Generator[Wait, None, dict[str, Any]]:
    """Send ``request`` to the control socket ``path`` and return its answer.

    Raises:
        ControlError: nobody listens, the answer is late, too long or not JSON.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        try:
            sock.connect(path)
        except BlockingIOError:
            yield Wait.write(sock, deadline)  # a full backlog: wait for room
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise ControlError(f"cannot connect to {path}: {os.strerror(err)}") from None
        except FileNotFoundError:
            raise ControlError(f"no control socket at {path}") from None
        except OSError as exc:
            raise ControlError(f"cannot connect to {path}: {exc.strerror or exc}") from None
        yield from sendall(sock, json.dumps(request, separators=(",", ":")).encode() + b"\n", deadline)
        data = bytearray()
        while True:
            chunk = yield from recv(sock, deadline, 1 << 16)
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_ANSWER:
                raise ControlError(f"the answer from {path} is longer than {MAX_ANSWER} bytes")
    except TimeoutError:
        raise ControlError(f"no answer from {path} in time") from None
    except OSError as exc:
        raise ControlError(f"the connection to {path} failed: {exc.strerror or exc}") from None
    finally:
        sock.close()
    if not data:
        raise ControlError(f"{path} closed the connection without an answer (busy or shutting down)")
    try:
        answer = json.loads(bytes(data))
    except ValueError:
        raise ControlError(f"{path} did not answer JSON") from None
    if not isinstance(answer, dict):
        raise ControlError(f"{path} did not answer a JSON object")
    return answer


def ask_blocking(path: str, request: dict[str, Any], timeout: float = IO_TIMEOUT) -> dict[str, Any]:
    """`ask` in the calling thread."""
    return run_blocking(ask(path, request, time.monotonic() + timeout))
