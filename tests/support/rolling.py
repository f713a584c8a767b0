"""A rolling replacement of N ``tunnel serve`` instances behind a real HAProxy, with
hundreds of WebSocket clients sending numbered messages through it all along.

`run_rolling` builds the whole scene and replaces each instance in turn with a `Step`
(``drain_stop_start`` here: ``ctl drain``, wait until HAProxy marks it down, graceful
stop, start again on the same port, wait until it is up; a binary upgrade is another
step with the same signature), then returns the `Figures` for the test to assert on.

* **Backend**: a ``websockets`` echo server (`WsEcho`) that records every message it
  received, so "no acknowledged message lost" is checked where the messages arrive.
* **Instances** (`Fleet`): each with its own configuration, PidFile and control socket,
  ``RemoteIPProxyProtocol On``, ``SetHandler ready`` at ``/ready``, a short
  ``GracefulShutdownTimeout``, on a fixed port HAProxy is told of, chosen below the
  kernel's ephemeral range (so that no outgoing connection can take it while its
  instance is down) with a bounded retry when a start finds it taken.
* **Clients** (`Client`): python ``websockets`` on one asyncio loop in a thread; each
  sends ``"<client>:<n>"`` with up to `WINDOW` messages unacknowledged; the echo of a
  message is its acknowledgement. On Close 1001 a client reconnects (through HAProxy)
  and sends again every message not acknowledged yet. Any other close code, an abrupt
  close, or a failed connect is recorded as an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import websockets
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed

from tests.support.haproxy import HAProxy, haproxy_balancer
from tests.support.waiting import wait_for

#: Messages a client may have sent and not seen acknowledged.
WINDOW = 4


class WsEcho:
    """A ``websockets`` echo server on its own thread and loop; ``received`` holds every
    text message it got (duplicates included), ``connections`` how many it served."""

    def __init__(self) -> None:
        self.received: set[str] = set()
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ws-echo", daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "the echo backend did not start"

    async def _echo(self, ws) -> None:
        self.connections += 1
        try:
            async for message in ws:
                self.received.add(message)
                await ws.send(message)
        except ConnectionClosed:
            pass

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            self.server = await ws_serve(self._echo, "127.0.0.1", 0, max_size=None, ping_interval=None)
            self.port = self.server.sockets[0].getsockname()[1]
            self._ready.set()
            await self.server.wait_closed()

        self.loop.run_until_complete(main())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self._thread.join(10)


# -- instances ------------------------------------------------------------------------------


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def pick_port(taken: set[int]) -> int:
    """A free loopback port below the ephemeral range (bounded tries)."""
    low = _ephemeral_low()
    lo, hi = (10000, low - 1) if low > 12000 else (1024, 65535)
    for _ in range(200):
        port = random.randint(lo, hi)
        if port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise AssertionError("no free port found in 200 tries")


@dataclass
class Instance:
    index: int
    directory: Path
    port: int
    proc: subprocess.Popen | None = None
    #: a process that is not our child (a binary upgrade's new one, from the PidFile)
    adopted: int | None = None
    stderr: list[str] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.directory / "tunnel.conf"

    @property
    def name(self) -> str:
        """Its server name in HAProxy's configuration."""
        return f"s{self.index}"


class Fleet:
    """``n`` ``tunnel serve`` processes proxying ``/ws`` to ``backend_port``."""

    def __init__(self, tmp_path: Path, backend_port: int, n: int, *, grace: int, extra: str = "") -> None:
        self.backend_port = backend_port
        self.grace = grace
        self.extra = extra
        self.instances: list[Instance] = []
        taken: set[int] = set()
        for i in range(n):
            directory = tmp_path / f"i{i}"
            directory.mkdir()
            port = pick_port(taken)
            taken.add(port)
            self.instances.append(Instance(i, directory, port))

    def write_conf(self, inst: Instance) -> None:
        inst.conf.write_text(
            f"Listen 127.0.0.1:{inst.port}\n"
            f"PidFile {inst.directory}/tunnel.pid\n"
            f"TunnelControlSocket {inst.directory}/ctl.sock\n"
            f"GracefulShutdownTimeout {self.grace}\n"
            "LogLevel info\n"
            "RemoteIPProxyProtocol On\n"
            "ProxyWebsocketAsync On\n"
            f"ProxyPass /ws ws://127.0.0.1:{self.backend_port}/\n"
            "<Location /ready>\n  SetHandler ready\n</Location>\n"
            "<Location /live>\n  SetHandler live\n</Location>\n"
            f"{self.extra}"
        )

    def start(self, i: int, *, first: bool = False, attempts: int = 5) -> None:
        """Start instance ``i`` and wait until it listens. Its port is taken as it is
        (HAProxy knows it); a start that finds it in use is retried, a few times; at
        the first start (before HAProxy is configured) another port is picked."""
        inst = self.instances[i]
        for _attempt in range(attempts):
            self.write_conf(inst)
            proc = subprocess.Popen(
                [sys.executable, "-m", "tunnel", "serve", "-c", str(inst.conf)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )
            seen: list[str] = []
            deadline = time.monotonic() + 20
            assert proc.stderr is not None
            while time.monotonic() < deadline:
                line = proc.stderr.readline()
                if not line:
                    break
                seen.append(line)
                if f"listening on 127.0.0.1:{inst.port}" in line:
                    inst.proc = proc
                    inst.stderr = seen
                    threading.Thread(target=lambda p=proc, s=seen: s.extend(p.stderr), daemon=True).start()
                    wait_for(lambda: (inst.directory / "ctl.sock").exists(), timeout=15, what=f"instance {i}'s control socket")
                    return
            proc.kill()
            proc.wait()
            if any("Address already in use" in line for line in seen):
                if first:
                    inst.port = pick_port({x.port for x in self.instances})
                else:
                    time.sleep(0.2)  # whoever holds the port may let it go: a bounded retry
                continue
            raise AssertionError(f"instance {i} did not start: {''.join(seen)}")
        raise AssertionError(f"instance {i}: port {inst.port} stayed in use over {attempts} attempts")

    def ctl(self, i: int, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """``tunnel ctl --config <instance i's> args``; its exit status must be 0."""
        out = subprocess.run(
            [sys.executable, "-m", "tunnel", "ctl", "--config", str(self.instances[i].conf), *args],
            capture_output=True, text=True, timeout=timeout,
        )
        assert out.returncode == 0, f"tunnel ctl {' '.join(args)} (instance {i}) exited {out.returncode}: {out.stderr}"
        return out

    def reap(self, i: int, timeout: float) -> int:
        """Wait for instance ``i``'s process to exit; record and return its status."""
        inst = self.instances[i]
        assert inst.proc is not None
        code = inst.proc.wait(timeout=timeout)
        inst.exit_codes.append(code)
        inst.proc = None
        return code

    def adopt(self, i: int) -> int:
        """Instance ``i`` is now the process its PidFile names (a step that replaced the
        process itself, e.g. a binary upgrade); `stop_all` stops it too. Returns its pid."""
        pid = int((self.instances[i].directory / "tunnel.pid").read_text().split()[0])
        self.instances[i].adopted = pid
        return pid

    def stop_all(self) -> None:
        """Graceful stop of whatever still runs (our children's statuses recorded;
        an adopted process is waited for until it is gone); kill the rest."""
        for inst in self.instances:
            if inst.proc is not None and inst.proc.poll() is None:
                inst.proc.send_signal(signal.SIGWINCH)  # graceful stop
            if inst.adopted is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(inst.adopted, signal.SIGWINCH)
        for inst in self.instances:
            if inst.adopted is not None:
                pid, inst.adopted = inst.adopted, None
                try:
                    wait_for(lambda p=pid: not _exists(p), timeout=self.grace + 20, what=f"process {pid} gone", interval=0.05)
                except AssertionError:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    raise
        for inst in self.instances:
            if inst.proc is not None:
                try:
                    self.reap(inst.index, self.grace + 20)
                except subprocess.TimeoutExpired:
                    inst.proc.kill()
                    inst.exit_codes.append(inst.proc.wait())
                    inst.proc = None


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


# -- clients --------------------------------------------------------------------------------


@dataclass
class Client:
    """One WebSocket client's record."""

    cid: int
    sent: int = 0  # messages numbered 0 .. sent-1 were sent at least once
    acked: set[int] = field(default_factory=set)
    pending: set[int] = field(default_factory=set)  # sent, not acknowledged yet
    connects: int = 0
    reconnects: int = 0
    closes: Counter[int | None] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    connected: bool = False
    ws: object = None

    def text(self, n: int) -> str:
        return f"{self.cid}:{n}"

    def unacked(self) -> list[int]:
        return sorted(self.pending)


class Clients:
    """``n`` clients on one asyncio loop in a thread, sending every ``pace`` seconds."""

    def __init__(self, url: str, n: int, pace: float) -> None:
        self.url = url
        self.pace = pace
        self.clients = [Client(i) for i in range(n)]
        self.loop = asyncio.new_event_loop()
        self.finishing = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._thread = threading.Thread(target=self.loop.run_forever, name="ws-clients", daemon=True)
        self._thread.start()

    def _call(self, coro, timeout: float):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> None:
        async def spawn() -> None:
            self.finishing = asyncio.Event()
            self._tasks = [asyncio.get_running_loop().create_task(self._run(c)) for c in self.clients]

        self._call(spawn(), 10)

    async def _connect(self, client: Client):
        for attempt in range(50):
            try:
                ws = await websockets.connect(self.url + f"/{client.cid}", open_timeout=10, ping_interval=None, close_timeout=5)
            except (TimeoutError, OSError, websockets.InvalidHandshake, ConnectionClosed) as exc:
                client.errors.append(f"connect {attempt}: {type(exc).__name__}: {exc}")
                await asyncio.sleep(0.1)
                continue
            client.connects += 1
            return ws
        raise AssertionError(f"client {client.cid} could not connect in 50 attempts: {client.errors[-3:]}")

    async def _run(self, client: Client) -> None:
        await asyncio.sleep(random.random() * self.pace)  # spread the clients over a beat
        while True:
            ws = await self._connect(client)
            client.ws = ws
            client.connected = True
            try:
                for n in client.unacked():  # sent before a close, never acknowledged: again
                    await ws.send(client.text(n))
                await self._talk(client, ws)
                return  # finished, still connected
            except ConnectionClosed:
                client.connected = False
                rcvd = ws.protocol.close_rcvd
                code = rcvd.code if rcvd is not None else None
                client.closes[code] += 1
                if code != 1001:
                    client.errors.append(f"closed with {code}")
                client.reconnects += 1

    async def _talk(self, client: Client, ws) -> None:
        next_send = time.monotonic()
        while True:
            if self.finishing.is_set() and not client.pending:
                return
            can_send = not self.finishing.is_set() and len(client.pending) < WINDOW
            now = time.monotonic()
            if can_send and now >= next_send:
                n = client.sent
                client.sent += 1
                client.pending.add(n)
                await ws.send(client.text(n))
                next_send = now + self.pace
                continue
            try:
                # recv is cancellation-safe: a timeout loses no message
                message = await asyncio.wait_for(ws.recv(), timeout=next_send - now if can_send else 1.0)
            except TimeoutError:
                continue
            cid, _, n = str(message).partition(":")
            if int(cid) != client.cid:
                client.errors.append(f"got {message!r}, another client's message")
                continue
            client.acked.add(int(n))
            client.pending.discard(int(n))

    def acked_total(self) -> int:
        return sum(len(c.acked) for c in self.clients)

    def finish(self, timeout: float) -> None:
        """Stop sending, wait until every client has its messages acknowledged."""

        async def finish() -> None:
            self.finishing.set()
            await asyncio.wait_for(asyncio.gather(*self._tasks), timeout)

        self._call(finish(), timeout + 5)

    def close(self) -> None:
        async def close_all() -> None:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await asyncio.gather(*(c.ws.close() for c in self.clients if c.ws is not None), return_exceptions=True)

        try:
            self._call(close_all(), 20)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)


# -- the scene ------------------------------------------------------------------------------


@dataclass
class Figures:
    clients: int
    messages: int  # distinct messages sent (and, at the end, acknowledged)
    acknowledged: int
    lost: int  # acknowledged, yet the backend never received it
    unacknowledged: int
    reconnects: int
    close_codes: Counter[int | None]
    errors: list[str]
    all_connected: bool
    exit_codes: list[int]
    seconds: float
    steps: list[str]

    def summary(self) -> str:
        return (
            f"{self.clients} clients, {self.messages} messages, {self.reconnects} reconnects, lost: {self.lost}, "
            f"close codes {dict(self.close_codes)}, {self.seconds:.1f}s; " + "; ".join(self.steps)
        )


#: Replaces instance ``i`` of the fleet behind the balancer. A step that replaces the
#: process without our starting it (a binary upgrade) reaps the old one
#: (``fleet.reap``) and calls ``fleet.adopt(i)`` for the new one; the figures'
#: ``reconnects`` then tell whether any client had to come back.
Step = Callable[[Fleet, HAProxy, int], None]


def drain_stop_start(fleet: Fleet, haproxy: HAProxy, i: int) -> None:
    """``ctl drain``, HAProxy marks it down, ``ctl graceful-stop`` (Close 1001 to each of
    its clients, who reconnect elsewhere), the process exits 0, a new one starts on the
    same port, HAProxy marks it up."""
    inst = fleet.instances[i]
    out = fleet.ctl(i, "drain")
    assert "drained" in out.stdout
    haproxy.wait_state(inst.name, "DOWN")
    fleet.ctl(i, "graceful-stop", "--wait", str(fleet.grace + 15))
    assert fleet.reap(i, 10) == 0
    fleet.start(i)
    haproxy.wait_state(inst.name, "UP")


@contextlib.contextmanager
def scene(tmp_path: Path, *, instances: int, grace: int, extra: str = "") -> Iterator[tuple[WsEcho, Fleet, HAProxy]]:
    backend = WsEcho()
    fleet = Fleet(tmp_path, backend.port, instances, grace=grace, extra=extra)
    try:
        for i in range(instances):
            fleet.start(i, first=True)
        with haproxy_balancer(tmp_path, [("127.0.0.1", inst.port) for inst in fleet.instances]) as haproxy:
            for inst in fleet.instances:
                haproxy.wait_state(inst.name, "UP")
            yield backend, fleet, haproxy
    finally:
        fleet.stop_all()
        backend.close()


def run_rolling(tmp_path: Path, step: Step, *, clients: int = 300, instances: int = 3, grace: int = 3, pace: float = 0.25, extra: str = "") -> Figures:
    """The whole scene: ``clients`` clients through HAProxy to ``instances`` instances;
    once every client has had messages acknowledged, each instance in turn is replaced
    by ``step``, and after each the test waits until every client has had more
    messages acknowledged (so every one of them is working again). Then the clients
    stop sending, wait for their last acknowledgements, and the figures are taken."""
    began = time.monotonic()
    steps: list[str] = []
    with scene(tmp_path, instances=instances, grace=grace, extra=extra) as (backend, fleet, haproxy):
        crowd = Clients(f"ws://127.0.0.1:{haproxy.port}/ws", clients, pace)
        try:
            crowd.start()

            def everyone_acked_since(marks: list[int], more: int) -> bool:
                return all(len(c.acked) >= m + more for c, m in zip(crowd.clients, marks, strict=True))

            zero = [0] * clients
            wait_for(lambda: everyone_acked_since(zero, 3), timeout=30, what="every client under way", interval=0.05)
            for i in range(instances):
                t0 = time.monotonic()
                reconnects = sum(c.reconnects for c in crowd.clients)
                step(fleet, haproxy, i)
                marks = [len(c.acked) for c in crowd.clients]
                wait_for(lambda m=marks: everyone_acked_since(m, 2), timeout=30, what="every client going again", interval=0.05)
                moved = sum(c.reconnects for c in crowd.clients) - reconnects
                steps.append(f"instance {i}: {time.monotonic() - t0:.1f}s, {moved} reconnects")
            crowd.finish(timeout=30)
            all_connected = all(c.connected and c.ws is not None and c.ws.protocol.state.name == "OPEN" for c in crowd.clients)
        finally:
            crowd.close()
        fleet.stop_all()
        received = backend.received
        lost = sum(1 for c in crowd.clients for n in c.acked if c.text(n) not in received)
        codes: Counter[int | None] = Counter()
        for c in crowd.clients:
            codes.update(c.closes)
        return Figures(
            clients=clients,
            messages=sum(c.sent for c in crowd.clients),
            acknowledged=crowd.acked_total(),
            lost=lost,
            unacknowledged=sum(len(c.unacked()) for c in crowd.clients),
            reconnects=sum(c.reconnects for c in crowd.clients),
            close_codes=codes,
            errors=[f"client {c.cid}: {e}" for c in crowd.clients for e in c.errors],
            all_connected=all_connected,
            exit_codes=[code for inst in fleet.instances for code in inst.exit_codes],
            seconds=time.monotonic() - began,
            steps=steps,
        )
