"""A binary upgrade that keeps live tunnels (R155-R159): ``tunnel ctl upgrade`` and SIGUSR2.

httpd has nothing like it (its graceful restart re-reads the configuration in the same
binary); this is tunnel's own. The old process, on SIGUSR2:

1. starts the installed version with its own command line (``sys.executable -m tunnel
   ...``, so whatever ``tunnel`` is installed now) and one end of a unix socketpair,
   named by ``TUNNEL_UPGRADE_FD``;
2. gets its hello and passes it every listening socket with ``SCM_RIGHTS``
   (`tunnel.io.fdchannel`); the new process serves on them (binding only the Listen
   lines that are new), writes the PidFile and says it is ready. Until then nothing
   changed: a new process that fails (bad configuration, a port it cannot bind, a crash,
   no answer within `START_TIMEOUT`) leaves the old one serving, and its reason goes to
   the status file, where ``ctl upgrade`` reads it;
3. stops accepting (the sockets stay open: the new process accepts on them already, so
   no client is refused) and hands over every live plain-socket tunnel in batches: each
   stopped at a safe point, flushed as far as the kernel takes, its sockets and its
   state (`tunnel.tunnels.handover`, `tunnel.proxy.upgrade`) sent; its copies closed
   once the new process acknowledged (a batch not acknowledged runs on here);
4. closes its listeners and drains what cannot move (TLS tunnels: until they end, or
   Close 1001 at GracefulShutdownTimeout), handing over any plain tunnel a request still
   under way opens meanwhile, and exits once it holds nothing.

``--workers N`` (N > 1) cannot be upgraded this way: the supervisor refuses with a
clear reason (upgrade needs ``--workers 1``).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Optional

import click

from .._version import __version__
from ..engine import Engine
from ..io.fdchannel import Channel, ChannelClosed
from ..proxy.records import TunnelStart
from ..tunnels.handover import HandoverError
from .pidfile import PidFile

__all__ = ["Upgrader", "Inheritance", "ENV_FD", "ENV_FROM", "START_TIMEOUT"]

log = logging.getLogger("tunnel.upgrade")

#: The environment variables that tell ``tunnel serve`` it is an upgrade's new process.
ENV_FD = "TUNNEL_UPGRADE_FD"
ENV_FROM = "TUNNEL_UPGRADE_FROM"
#: How long the new process may take from its start to serving on the passed sockets.
START_TIMEOUT = 30.0
#: How long the new process may take to acknowledge a batch of tunnels.
ACK_TIMEOUT = 30.0
#: Tunnels per batch (two descriptors each, under the 253 of one SCM_RIGHTS message).
BATCH = 100

Report = Callable[..., None]


class UpgradeFailed(Exception):
    """The new process did not take over; the message says why."""


# -- the old process ---------------------------------------------------------------------


class Upgrader:
    """The old process's side of one binary upgrade (`run` from the signal thread)."""

    def __init__(self, engine: Engine, pid_file: Optional[PidFile], report: Report) -> None:
        self.engine = engine
        self.pid_file = pid_file
        self.report = report
        self.pid = 0
        self.channel: Optional[Channel] = None
        self.wake = threading.Event()
        self.moved = 0
        self.pending = 0

    def run(self) -> bool:
        """Start the new process and hand over; True once it serves (the rest of the
        hand-over goes on in a thread of its own)."""
        engine = self.engine
        try:
            self._start()
            assert self.channel is not None
            engine.in_loop(engine.upgrade_pause)
            engine.upgrade_wake = self.wake.set
        except UpgradeFailed as exc:
            self._failed(str(exc))
            return False
        if self.pid_file is not None:
            self.pid_file.released = True  # the new process's now
        try:
            self._round(first=True)
        except UpgradeFailed as exc:
            engine.in_loop(engine.upgrade_unhold)  # the batch that failed came back: it runs here
            if not self.moved:
                # Nothing moved: the new process goes, this one serves on as before.
                self._kill()
                engine.in_loop(engine.upgrade_resume)
                if self.pid_file is not None:
                    self.pid_file.released = False
                    self.pid_file.write()
                self._failed(f"the new process failed while taking over tunnels: {exc}")
                return False
            # Some moved and are the new process's now: it serves; what is left here drains.
            log.error("binary upgrade: %d tunnel(s) moved, then: %s; the rest stay here and drain", self.moved, exc)
            engine.upgrade_wake = None
        engine.in_loop(lambda: engine.upgrade_release(engine.config.graceful_shutdown_timeout))
        try:
            self._send({"op": "released", "moved": self.moved, "pending": self.pending})
        except UpgradeFailed as exc:
            log.error("binary upgrade: the new process did not hear that everything moved: %s", exc)
            return True
        log.info("binary upgrade: pid %d serves now; %d tunnel(s) moved to it (%d bytes pending carried)", self.pid, self.moved, self.pending)
        threading.Thread(target=self._rest, name="tunnel-upgrade", daemon=True).start()
        return True

    def _failed(self, reason: str) -> None:
        log.error("binary upgrade failed: %s; this process (pid %d) goes on serving", reason, os.getpid())
        self.report("upgrade-failed", reason)
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        self.engine.upgrade_wake = None

    def _start(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.set_inheritable(child.fileno(), True)
            env = {**os.environ, ENV_FD: str(child.fileno()), ENV_FROM: str(os.getpid())}
            argv = [sys.executable, "-m", "tunnel", *sys.argv[1:]]
            log.info("binary upgrade: starting %s", " ".join(argv))
            try:
                # posix_spawn: the signals this process blocks (sigwait) are not blocked there.
                self.pid = os.posix_spawn(sys.executable, argv, env, setsigmask=())
            except OSError as exc:
                raise UpgradeFailed(f"cannot start {sys.executable}: {exc.strerror or exc}") from None
        finally:
            child.close()
        self.channel = channel = Channel(parent)
        channel.settimeout(START_TIMEOUT)
        hello = self._expect("hello")
        log.info("binary upgrade: new process %d (tunnel %s) is up", self.pid, hello.get("version", "?"))
        listeners = self.engine.in_loop(self.engine.upgrade_listeners)
        self._send({"op": "listeners", "listeners": [list(key) for key, _ in listeners]}, fds=[s.fileno() for _, s in listeners])
        self._expect("ready")

    def _expect(self, op: str) -> dict[str, Any]:
        assert self.channel is not None
        try:
            message, _, fds = self.channel.recv()
        except TimeoutError:
            self._kill()
            raise UpgradeFailed(f"the new process (pid {self.pid}) did not answer within {START_TIMEOUT:g}s; killed") from None
        except (ChannelClosed, OSError, ValueError):
            raise UpgradeFailed(self._exit_reason()) from None
        for fd in fds:
            os.close(fd)
        if message.get("op") == "failed":
            self._reap(5.0)
            raise UpgradeFailed(str(message.get("error") or "the new process failed"))
        if message.get("op") != op:
            self._kill()
            raise UpgradeFailed(f"the new process said {message.get('op')!r} where {op!r} was expected; killed")
        return message

    def _send(self, message: dict[str, Any], blobs: Optional[list[bytes]] = None, fds: Optional[list[int]] = None) -> None:
        assert self.channel is not None
        try:
            self.channel.send(message, blobs or [], fds or [])
        except (ChannelClosed, OSError) as exc:
            said = self._last_words()
            raise UpgradeFailed(said or f"{exc}; {self._exit_reason()}") from None

    def _last_words(self) -> str:
        """What a new process that closed the channel said before ("failed": why)."""
        assert self.channel is not None
        try:
            self.channel.settimeout(1.0)
            message, _, fds = self.channel.recv()
        except (ChannelClosed, OSError, ValueError):
            return ""
        for fd in fds:
            os.close(fd)
        if message.get("op") == "failed":
            self._reap(5.0)
            return str(message.get("error") or "")
        return ""

    def _exit_reason(self) -> str:
        code = self._reap(5.0)
        if code is None:
            self._kill()
            return f"the new process (pid {self.pid}) closed the channel; killed"
        return f"the new process (pid {self.pid}) exited with status {code} before taking over (its error log says why)"

    def _reap(self, wait: float) -> Optional[int]:
        deadline = time.monotonic() + wait
        while True:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return -1
            if pid:
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)  # a process exiting: short, bounded

    def _kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._reap(5.0)

    def _round(self, *, first: bool) -> None:
        """Hand over what can move now (the first round: all of it, sync tunnels waited for)."""
        engine = self.engine
        deadline = time.monotonic() + 5.0
        while True:
            self.wake.clear()
            batch = engine.in_loop(lambda: engine.upgrade_take(BATCH))
            if batch:
                self._batch(batch)
                continue
            if not first or not engine.in_loop(engine.upgrade_holding) or time.monotonic() >= deadline:
                return
            self.wake.wait(0.5)  # held sync tunnels on their way back (each wakes us)

    def _batch(self, batch: list[tuple[TunnelStart, bool]]) -> None:
        from ..proxy.upgrade import freeze_tunnel

        engine = self.engine
        states: list[dict[str, Any]] = []
        blobs: list[bytes] = []
        fds: list[int] = []
        pending = 0
        for ts, sync in batch:
            state, own = freeze_tunnel(ts, sync)
            state["first_blob"], state["n_blobs"] = len(blobs), len(own)
            states.append(state)
            blobs.extend(own)
            pending += ts.pump.buffered
            fds += [ts.pump.client.fileno(), ts.pump.backend.fileno()]
        assert self.channel is not None
        try:
            self._send({"op": "tunnels", "tunnels": states}, blobs, fds)
            self.channel.settimeout(ACK_TIMEOUT)
            answer, _, extra = self.channel.recv()
            for fd in extra:
                os.close(fd)
        except (UpgradeFailed, ChannelClosed, OSError, ValueError) as exc:
            engine.in_loop(lambda: engine.upgrade_restore(batch))
            raise UpgradeFailed(str(exc)) from None
        if answer.get("op") != "ack":
            engine.in_loop(lambda: engine.upgrade_restore(batch))
            raise UpgradeFailed(str(answer.get("error") or answer))
        engine.in_loop(lambda: engine.upgrade_moved(batch))
        self.moved += len(batch)
        self.pending += pending

    def _rest(self) -> None:
        """After the first round: hand over plain tunnels that requests still under way
        open here, until the engine stops (it holds nothing any more)."""
        engine = self.engine
        try:
            while True:
                self.wake.wait(1.0)
                loop = engine.loop
                if loop is None or not loop.running:
                    return
                if engine.in_loop(engine.upgrade_movable):
                    self._round(first=False)
        except (UpgradeFailed, RuntimeError) as exc:
            log.error("binary upgrade: could not hand over a late tunnel (%s); the rest stays here", exc)
            engine.upgrade_wake = None
            try:
                engine.in_loop(engine.upgrade_unhold)
            except RuntimeError:
                pass
        finally:
            if self.channel is not None:
                self.channel.close()


# -- the new process ---------------------------------------------------------------------


class Inheritance:
    """The new process's side: what the old one passes, and the tunnels it sends."""

    def __init__(self, channel: Channel, old_pid: int) -> None:
        self.channel = channel
        self.old_pid = old_pid
        self.engine: Optional[Engine] = None
        self.pid_file: Optional[PidFile] = None
        self.adopted = 0
        self.pending = 0

    @classmethod
    def from_env(cls) -> Optional[Inheritance]:
        """The hand-over channel named by the environment, or None (a plain start)."""
        fd = os.environ.pop(ENV_FD, "")
        old = os.environ.pop(ENV_FROM, "")
        if not fd:
            return None
        sock = socket.socket(fileno=int(fd))
        os.set_inheritable(sock.fileno(), False)
        inh = cls(Channel(sock), int(old or 0))
        inh.channel.settimeout(START_TIMEOUT)
        inh.channel.send({"op": "hello", "pid": os.getpid(), "version": __version__})
        return inh

    def take_listeners(self, engine: Engine) -> None:
        """Receive the old process's listening sockets into ``engine.inherited``."""
        message, _, fds = self.channel.recv()
        keys = message.get("listeners", [])
        if message.get("op") != "listeners" or len(keys) != len(fds):
            for fd in fds:
                os.close(fd)
            raise click.ClickException("binary upgrade: the old process sent no listeners")
        for key, fd in zip(keys, fds, strict=True):
            engine.inherited[(str(key[0]), int(key[1]), bool(key[2]))] = socket.socket(fileno=fd)
        engine.taking_over = True
        self.engine = engine

    def fail(self, reason: str) -> None:
        """Tell the old process why this one cannot take over (it goes on serving)."""
        try:
            self.channel.send({"op": "failed", "error": reason})
        except (ChannelClosed, OSError):
            pass

    def ready(self) -> None:
        """Loop thread, once serving: take the PidFile, tell the old process, and
        receive its tunnels from now on."""
        if self.pid_file is not None:
            self.pid_file.write(taking_over=self.old_pid)
        engine = self.engine
        assert engine is not None
        for host, port in engine.addresses:
            log.info("binary upgrade: serving on %s:%d, taken over from pid %d", host, port, self.old_pid)
        self.channel.send({"op": "ready", "pid": os.getpid()})
        threading.Thread(target=self._receive, name="tunnel-upgrade", daemon=True).start()

    def _receive(self) -> None:
        self.channel.settimeout(None)
        engine = self.engine
        assert engine is not None
        try:
            while True:
                message, blobs, fds = self.channel.recv()
                op = message.get("op")
                if op == "tunnels":
                    self._tunnels(engine, message, blobs, fds)
                elif op == "released":
                    log.info(
                        "binary upgrade: took over %d tunnel(s) with %d bytes pending from pid %d",
                        self.adopted, self.pending, self.old_pid,
                    )
                    if self.pid_file is not None:
                        self.pid_file.report("upgraded", detail=f"pid {os.getpid()} took over {self.adopted} tunnel(s) from pid {self.old_pid}")
                else:
                    for fd in fds:
                        os.close(fd)
        except (ChannelClosed, OSError, ValueError) as exc:
            if not isinstance(exc, ChannelClosed):
                log.error("binary upgrade: the channel to pid %d failed: %s", self.old_pid, exc)
        finally:
            log.info("binary upgrade: pid %d handed over everything it could (%d tunnel(s) in all)", self.old_pid, self.adopted)
            self.channel.close()

    def _tunnels(self, engine: Engine, message: dict[str, Any], blobs: list[bytes], fds: list[int]) -> None:
        states = message.get("tunnels", [])
        socks = [socket.socket(fileno=fd) for fd in fds]
        batch: list[TunnelStart] = []
        try:
            if len(socks) != 2 * len(states):
                raise HandoverError(f"{len(states)} tunnels came with {len(socks)} descriptors")
            for i, state in enumerate(states):
                first, n = int(state["first_blob"]), int(state["n_blobs"])
                batch.append(engine.thaw_tunnel(state, blobs[first : first + n], socks[2 * i], socks[2 * i + 1]))
        except (HandoverError, KeyError, TypeError, ValueError) as exc:
            for sock in socks:
                sock.close()  # our copies only: the old process keeps driving them
            self.channel.send({"op": "nack", "error": str(exc)})
            log.error("binary upgrade: refused a batch of tunnels: %s", exc)
            return
        self.channel.send({"op": "ack", "n": len(batch)})  # from here on they are ours
        self.adopted += len(batch)
        self.pending += sum(ts.pump.buffered for ts in batch)
        loop = engine.loop
        if loop is not None:
            loop.call_soon_threadsafe(lambda: engine.upgrade_adopt(batch))
            loop.wakeup()
