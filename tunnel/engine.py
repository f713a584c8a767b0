"""The engine: one configuration, one loop (when it owns one), the sync pool, the tunnels.

``Engine`` is the library's entry point (README, "Library API"). It owns:

* the loop and its listeners when it serves (``serve_forever`` / ``running``); the host
  can then poll (``HostCapabilities(can_poll=True)``) and async tunnels are possible;
* the bounded thread pool of sync tunnels (``MaxTunnelThreads``);
* the balancers' runtime state, the worker error states (``retry=``), the access log,
  the shared buffer budget (``TunnelBufferLimit``) and the counters users read in
  ``stats``.

``handle(sock)`` adopts a client connection from any thread: with the loop running it
joins the loop; without, the calling thread does the handshake and the (sync) tunnel.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import secrets
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, Optional

from h2.errors import ErrorCodes

from .accesslog import AccessLog
from .config.model import Config, Listener, ProxyRule, ProxyTLS, Scope, Target
from .errors import ServiceUnavailable
from .io.connect import client_context, server_context
from .io.listeners import Acceptor, open_listener
from .io.loop import Loop, Task, run_blocking
from .io.names import resolve_vhost_names
from .io.streams import Endpoint, InetAddress, PeerAddress
from .protocol.balancer import Balancers, BalancerState
from .protocol.health import WorkerHealth
from .proxy import cluster as cluster_ops
from .proxy.closing import Closing
from .proxy.control import Cluster, ControlServer
from .proxy.explain import Explanation, explain
from .proxy.h2conn import H2Server
from .proxy.lifecycle import Drain, Lifecycle, bound_address, listener_key
from .proxy.probes import Probes
from .proxy.records import Exchange, H2Start, Inner, TunnelStart, kept_headers
from .proxy.running import Running
from .proxy.services import Services
from .proxy.session import serve_client
from .proxy.stats import Recorder, nonce_for, process_snapshot
from .proxy.upgrade import ListenerKey, Upgrade
from .tunnels.async_driver import AsyncTunnel
from .tunnels.handover import Parker
from .tunnels.pump import Budget, Pump, new_scratch
from .tunnels.strategy import LOOP_HOST, THREAD_HOST, HostCapabilities, Strategy, select_strategy
from .tunnels.sync_driver import PoolFull, ThreadPool, run_sync

#: The engine's counter of tunnels opened with each strategy.
_STRATEGY_KEYS = {strategy: f"tunnels.{strategy.value}" for strategy in Strategy}

__all__ = ["Engine"]

#: The GOAWAY code of a connection closed by ``stop`` (RFC 9113: NO_ERROR, graceful).
H2_SHUTDOWN = ErrorCodes.NO_ERROR

log = logging.getLogger("tunnel.engine")
errlog = logging.getLogger("tunnel.error")

#: How long ``stop`` waits for live tunnels and threads to end (W2: bounded drain).
STOP_TIMEOUT = 5.0


class Engine(Running, Lifecycle, Closing, Upgrade):
    """A WebSocket tunnel engine for one `Config`.

    Args:
        config: the configuration (``Config.from_file`` / ``Config.from_text``).
        host: force the host's capabilities (tests); by default the engine can poll
            while its own loop runs, and cannot otherwise.
        server_name: the name for X-Forwarded-Server when no ServerName is set.
        reuse_port: listen with SO_REUSEPORT (worker processes sharing ports).
        cluster: its control sockets and sibling workers (``tunnel serve`` gives it);
            by default only the ``TunnelControlSocket`` the configuration names.
    """

    def __init__(
        self,
        config: Config,
        *,
        host: Optional[HostCapabilities] = None,
        server_name: Optional[str] = None,
        reuse_port: bool = False,
        cluster: Optional[Cluster] = None,
    ) -> None:
        # <VirtualHost name:port>: the names looked up once, as httpd does at start-up (R90).
        config, unresolved = resolve_vhost_names(config)
        for warning in unresolved:
            log.warning("%s", warning)
        self.config = config
        self.cluster = cluster or Cluster(control=config.control_socket or "")
        if not self.cluster.secret:
            self.cluster = Cluster(**{**self.cluster.__dict__, "secret": secrets.token_hex(16)})
        #: requests, handshakes, tunnels and bytes for server-status, metrics, tunnel ctl.
        self.recorder = Recorder(worker=self.cluster.slot)
        self._controls: list[ControlServer] = []
        #: ready/live state and ``tunnel ctl drain`` (R150-R152).
        self.probes = Probes(config.loop_lag_limit)
        self.reuse_port = reuse_port
        self.server_name = server_name or socket.gethostname()
        self.pool = ThreadPool(config.max_tunnel_threads)
        self.balancers = Balancers(config.balancers, clock=time.monotonic, lock=threading.Lock)
        self.budget = Budget(config.buffer_limit) if config.buffer_limit else None
        self.access_log = AccessLog(config.log.custom_logs, config.log.conditions)
        #: what an open tunnel keeps of its heads (`Services.kept_headers`)
        self.kept_headers = kept_headers(self.access_log)
        #: counters: tunnels.sync, tunnels.async, tunnels.handed_over, tunnels.open, ...
        self.stats: Counter[str] = Counter()
        self._forced_host = host
        self._loop: Optional[Loop] = None
        self._thread: Optional[threading.Thread] = None
        self._scratch = new_scratch()
        self._acceptors: list[Acceptor] = []
        self._tasks: set[Task] = set()
        #: the async tunnels by their pump (a pump's tunnel found without a search)
        self._tunnels: dict[Pump, AsyncTunnel] = {}
        self._on_async_closed = self._async_closed  # made once: every async tunnel's on_close
        self._h2: set[H2Server] = set()
        self._live: dict[Pump, TunnelStart] = {}
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._start_error: Optional[BaseException] = None
        self._health = WorkerHealth(time.monotonic)
        self._services = _Services(self)
        self._ssl_contexts: dict[ProxyTLS, ssl.SSLContext] = {}
        self._server_contexts: dict[Listener, ssl.SSLContext] = {}
        self._lock = threading.Lock()
        #: the bound addresses, in Listen order (useful with port 0).
        self.addresses: list[tuple[str, int]] = []
        #: each acceptor's Listen line as configured (port 0 kept), for a graceful restart.
        self._configured: dict[Acceptor, Listener] = {}
        #: the graceful stop under way, if any (loop thread).
        self._drain: Optional[Drain] = None
        # Readable once a graceful stop has set ``close_at`` on the live pumps: the sync
        # tunnels' threads watch it in their poll (they never poll on a timer for it).
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        # A binary upgrade (R155-R159, proxy/upgrade.py): listening sockets passed by an
        # old process, the sync threads' parker, the old side's hand-over state.
        self.inherited: dict[ListenerKey, socket.socket] = {}
        self.taking_over = False  # this is a binary upgrade's new process
        self.parker = Parker()
        self.upgrade_wake: Optional[Callable[[], None]] = None
        self._moving: dict[Pump, tuple[TunnelStart, bool]] = {}
        self._parked: list[TunnelStart] = []
        self._paused: list[Acceptor] = []
        #: called on the loop thread once it serves (the listeners are bound).
        self.on_ready: Optional[Callable[[], None]] = None

    # -- capabilities and strategy -------------------------------------------------------
    @property
    def host(self) -> HostCapabilities:
        if self._forced_host is not None:
            return self._forced_host
        loop = self._loop
        return LOOP_HOST if loop is not None and loop.running else THREAD_HOST

    @property
    def loop(self) -> Optional[Loop]:
        return self._loop

    # -- TLS contexts (cached per configuration object) --------------------------------
    def _backend_ssl(self, scope: Scope) -> Optional[ssl.SSLContext]:
        tls = scope.proxy_tls
        if not tls.engine:
            return None
        with self._lock:
            ctx = self._ssl_contexts.get(tls)
            if ctx is None:
                ctx = self._ssl_contexts[tls] = client_context(tls)
        return ctx

    def _server_ssl(self, listener: Listener) -> ssl.SSLContext:
        """The server-side SSLContext of a TLS listener (SSLEngine, SSLCertificate*).

        The global SSLEngine certificate, else the first TLS vhost on the listener's port;
        other TLS vhosts are chosen by SNI (their ServerName / ServerAlias).
        """
        with self._lock:
            ctx = self._server_contexts.get(listener)
            if ctx is not None:
                return ctx
            by_name: dict[str, ssl.SSLContext] = {}
            config = self.config
            default: Optional[ssl.SSLContext] = None
            if config.tls:
                # The protocols of the host a connection without SNI reaches (R140).
                default = server_context(config.tls, config.vhost_for(listener, None)[0].protocols)
            for vhost in config.vhosts:
                if vhost.tls is None or not any(p in (0, listener.port) for _, p in vhost.addresses):
                    continue
                vctx = server_context(vhost.tls, vhost.scope.protocols)
                for name in (vhost.server_name, *vhost.aliases):
                    if name:
                        by_name.setdefault(name.lower(), vctx)
                default = default or vctx
            if default is None:
                raise ssl.SSLError(f"no certificate for TLS listener {listener.display} (SSLEngine On, SSLCertificateFile)")

            def pick(sslsock: ssl.SSLObject, name: Optional[str], _ctx: ssl.SSLContext) -> None:
                # Runs before ALPN: the chosen host's context also offers its Protocols.
                # The name is kept for the HTTP/2 connection's settings (R141).
                sslsock.sni_name = name  # type: ignore[attr-defined]
                chosen = by_name.get((name or "").lower())
                if chosen is not None:
                    sslsock.context = chosen

            default.sni_callback = pick
            self._server_contexts[listener] = default
            return default

    # -- serving -----------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Bind the listeners and run the loop in this thread until ``stop()``."""
        loop = Loop()
        try:
            for listener in self.config.listeners:
                self._acceptors.append(self._open(loop, listener))
            self.addresses = [bound_address(acc) for acc in self._acceptors]
        except BaseException as exc:
            for acc in self._acceptors:
                acc.close()
            self._acceptors.clear()
            loop.close()
            self._start_error = exc
            self._ready.set()
            raise
        try:
            self._open_controls()
        except BaseException as exc:
            self._teardown(loop)
            self._start_error = exc
            self._ready.set()
            raise
        self._loop = loop
        if self._stopping.is_set():  # a stop asked before the loop existed (a SIGTERM at start-up)
            loop.call_soon(self._shutdown_in_loop)
        loop.call_soon(self._ready.set)
        self.probes.watch(loop)
        self.close_inherited()
        if self.on_ready is not None:
            loop.call_soon(self.on_ready)
        try:
            loop.run()
        finally:
            self._teardown(loop)

    def _open(self, loop: Loop, listener: Listener) -> Acceptor:
        sock = self.inherited.pop(listener_key(listener), None)  # a binary upgrade's (R155)
        if sock is None:
            sock = open_listener(listener, reuse_port=self.reuse_port)
        try:
            port = sock.getsockname()[1]
            bound = dataclasses.replace(listener, port=port)
            acc = Acceptor(self._adopt, loop, sock, bound)
        except BaseException:
            sock.close()
            raise
        self._configured[acc] = listener
        log.info("listening on %s", bound.display)
        return acc

    def _open_controls(self) -> None:
        """The control sockets: ``tunnel ctl``'s and this worker's private one (R116)."""
        cluster = self.cluster

        def handler(request: dict[str, Any]) -> dict[str, Any]:
            return cluster_ops.handle(self._services, request)

        paths = [cluster.control] if cluster.control else []
        if cluster.peers:
            paths.append(cluster.peer_path(cluster.slot))
        for path in paths:
            self._controls.append(ControlServer(path, handler, take_over=self.taking_over))
            log.info("control socket %s", path)
        if cluster.siblings():
            source = cluster_ops.adopt(self._services)
            if source is not None:
                log.info("balancer settings taken from worker %d", source)

    def start(self) -> Engine:
        """Serve on a background thread; returns once the listeners are bound."""
        self._thread = threading.Thread(target=self._serve_quietly, name="tunnel-loop", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            self._thread.join()
            raise self._start_error
        return self

    def _serve_quietly(self) -> None:
        try:
            self.serve_forever()
        except BaseException:
            if not self._ready.is_set() or self._start_error is None:
                log.exception("engine loop failed")

    @contextlib.contextmanager
    def running(self) -> Iterator[Engine]:
        """``with engine.running():`` serve on a background thread, stop on exit."""
        self.start()
        try:
            yield self
        finally:
            self.stop()

    def request_stop(self) -> None:
        """Ask the loop to stop: safe from any thread and from a signal handler."""
        self._stopping.set()
        self.probes.stopping.set()
        loop = self._loop
        if loop is not None:  # not yet running: it runs the shutdown first thing
            loop.call_soon_threadsafe(self._shutdown_in_loop)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop accepting, end live tunnels, wait for threads (bounded). Idempotent."""
        self.request_stop()
        self._wake_sync_tunnels()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self.pool.shutdown(timeout)
        self.access_log.close()
        self.parker.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass  # closed by an earlier stop
        self._wake_r = self._wake_w = -1

    def _shutdown_in_loop(self) -> None:
        assert self._loop is not None
        for acc in self._acceptors:
            acc.close()
        self._acceptors.clear()
        for conn in list(self._h2):
            conn.close("shutdown", H2_SHUTDOWN)
        for task in list(self._tasks):
            task.cancel()
        for tunnel in list(self._tunnels.values()):
            tunnel.abort("shutdown")
        self._wake_sync_tunnels()
        self._loop.stop()

    def _wake_sync_tunnels(self) -> None:
        """Shut the sockets of live tunnels so that sync threads blocked in poll wake up
        and see the stop (they never poll on a timer just to look for it)."""
        with self._lock:
            pumps = list(self._live)
        for pump in pumps:
            for end in (pump.client, pump.backend):
                raw = getattr(end, "raw", end)
                try:
                    raw.shutdown(socket.SHUT_RDWR)
                except (OSError, ValueError):
                    pass

    def _teardown(self, loop: Loop) -> None:
        self.probes.stopping.set()
        self.probes.unwatch()
        for control in self._controls:
            control.close()
        self._controls.clear()
        for acc in self._acceptors:
            acc.close()
        self._acceptors.clear()
        for conn in list(self._h2):
            conn.close("shutdown")
        for task in list(self._tasks):
            task.cancel()
        for tunnel in list(self._tunnels.values()):
            tunnel.abort("shutdown")
        # Run callbacks queued by the aborts (hand-overs arriving late are closed there).
        self._loop = None
        loop.close()

    # -- connections -------------------------------------------------------------------
    def _adopt(self, sock: socket.socket, peer: PeerAddress, listener: Optional[Listener], leading: bytes = b"") -> None:
        """Serve an accepted client connection on the loop (loop thread only)."""
        loop = self._loop
        if loop is None or self._stopping.is_set():
            sock.close()
            return
        task = loop.spawn(serve_client(self._services, sock, peer, listener, leading), name=_TaskName("client", peer))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: Task) -> None:
        self._tasks.discard(task)
        if isinstance(task.result, TunnelStart):
            self._start_tunnel(task.result)
        elif isinstance(task.result, H2Start):
            self._start_h2(task.result)
        elif self._drain is not None:
            self._check_drained()

    def _start_h2(self, start: H2Start) -> None:
        """Serve a connection whose ALPN chose h2 (loop thread, R143)."""
        loop = self._loop
        if loop is None or self._stopping.is_set():
            start.client.close()
            return
        peer = start.peer

        def spawn(sock: socket.socket, inner: Inner) -> None:
            task = loop.spawn(serve_client(self._services, sock, peer, start.listener, b"", inner), name=_TaskName("h2 stream", peer))
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

        conn = H2Server(loop, self.config, start, spawn, self._h2.discard)
        self._h2.add(conn)
        with self._lock:
            self.stats["h2.connections"] += 1
        conn.start()

    def handle(self, sock: socket.socket, leading: bytes = b"", *, peer: Optional[PeerAddress] = None) -> None:
        """Adopt a connected client socket whose request head is not read yet.

        ``leading`` holds bytes already read from it (e.g. a head a host parsed). Callable
        from any thread. With the loop running the connection joins it and this returns
        at once; with no loop, the calling thread serves the handshake and then the tunnel
        (sync) and returns when the connection ends.
        """
        if peer is None:
            try:
                peer = sock.getpeername()
            except OSError:
                peer = ("unknown", 0)
        loop = self._loop
        if loop is not None and loop.running and not self._stopping.is_set():
            loop.call_soon_threadsafe(self._adopt, sock, peer, None, leading)
            return
        start = run_blocking(serve_client(self._services, sock, peer, None, leading))
        if isinstance(start, TunnelStart):
            self._note_start(start, Strategy.SYNC)
            run_sync(
                start.pump,
                idle_timeout=start.idle_timeout,
                stopping=self._stopping,
                send_timeout=start.scope.timeout,
                wake_fd=self._wake_r,
            )
            self._tunnel_closed(start)

    # -- tunnels -----------------------------------------------------------------------
    def explain(
        self, raw_head: bytes, *, listener: Optional[Listener] = None, peer: InetAddress = ("127.0.0.1", 40000)
    ) -> Explanation:
        """What this engine would do with one request head, step by step, without
        connecting anything (``tunnel explain``): the vhost and `<Location>` chosen,
        each rewrite rule and condition tried, the route or the refusal, the balancer
        policy, the request the backend would receive, the timeouts and the strategy."""
        return explain(self._services, raw_head, listener=listener, peer=peer)

    def live_tunnels(self) -> list[Pump]:
        """The pumps of the tunnels open now (for status pages and tests)."""
        with self._lock:
            return list(self._live)

    def snapshot(self) -> dict[str, Any]:
        """This process's figures, live tunnels and balancers (`tunnel.proxy.stats`)."""
        return process_snapshot(
            self.recorder, self.config, self.balancers, self.cluster.secret, self.pool, self.budget,
            connections=len(self._tasks), server_name=self.server_name, drained=self.probes.drained.is_set(),
        )

    def __repr__(self) -> str:
        return f"<Engine listeners={self.addresses} stats={dict(self.stats)}>"


class _TaskName:
    """A connection task's name, formatted only if a log line needs it (formatting the
    peer's address for every accepted connection cost more than the whole object)."""

    __slots__ = ("kind", "peer")

    def __init__(self, kind: str, peer: PeerAddress) -> None:
        self.kind, self.peer = kind, peer

    def __str__(self) -> str:
        return f"{self.kind} {self.peer}"


class _Services(Services):
    """The engine as a client connection sees it (`tunnel.proxy.services.Services`).

    Kept apart from `Engine` so that the public class carries none of these hooks.
    """

    __slots__ = ("_engine",)

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @property
    def config(self) -> Config:
        return self._engine.config

    @property
    def server_name(self) -> str:
        return self._engine.server_name

    def server_ssl(self, listener: Listener) -> ssl.SSLContext:
        return self._engine._server_ssl(listener)

    def backend_ssl(self, scope: Scope) -> Optional[ssl.SSLContext]:
        return self._engine._backend_ssl(scope)

    def strategy_for(self, scope: Scope) -> Strategy:
        return select_strategy(scope, self._engine.host)

    def needs_thread(self, scope: Scope, strategy: Strategy) -> bool:
        """A tunnel needs a pool thread when the engine runs a loop (a host's own
        thread with no loop runs its tunnel itself) and it is sync or has an AsyncDelay."""
        loop = self._engine.loop
        if loop is None or not loop.running:
            return False
        return strategy is Strategy.SYNC or scope.websocket_async_delay > 0

    def reserve_thread(self, ex: Exchange) -> None:
        engine = self._engine
        try:
            engine.pool.reserve()
        except PoolFull as exc:
            engine.stats["tunnels.refused_pool_full"] += 1
            errlog.error("refusing tunnel from %s: %s (MaxTunnelThreads %d)", ex.peer[0], exc, engine.pool.max_threads)
            raise ServiceUnavailable("no tunnel thread available", detail=str(exc)) from None
        except RuntimeError:
            raise ServiceUnavailable("server is shutting down") from None

    def release_thread(self) -> None:
        self._engine.pool.release()

    def balancer(self, name: str) -> BalancerState:
        return self._engine.balancers[name]

    def check_worker(self, target: Target) -> None:
        left = self._engine._health.retry_in(target)
        if left is not None:
            raise ServiceUnavailable("backend is in error state", detail=f"{target}: retry in {left:.1f}s")

    def worker_failed(self, target: Target, rule: ProxyRule) -> None:
        seconds = self._engine._health.failed(target, rule.retry)
        if seconds > 0:
            errlog.error("worker %s in error state for %.0fs (retry=)", target, seconds)

    def new_pump(
        self,
        client: Endpoint,
        backend: Endpoint,
        *,
        to_backend: bytes,
        to_client: bytes,
        websocket: bool = False,
        close_watch: bool = False,
    ) -> Pump:
        return Pump(
            client,
            backend,
            to_backend=to_backend,
            to_client=to_client,
            budget=self._engine.budget,
            websocket=websocket,
            close_watch=close_watch,
        )

    def log_exchange(self, ex: Exchange) -> None:
        self._engine._log_exchange(ex)

    @property
    def kept_headers(self) -> tuple[frozenset[str], frozenset[str]]:
        return self._engine.kept_headers

    def snapshot(self) -> dict[str, Any]:
        return self._engine.snapshot()

    def close_tunnel(self, ident: str, code: int, reason: str) -> str:
        return self._engine.close_tunnel(ident, code, reason)

    @property
    def cluster(self) -> Cluster:
        return self._engine.cluster

    @property
    def probes(self) -> Probes:
        return self._engine.probes

    def nonce(self, balancer: str) -> str:
        return nonce_for(self._engine.cluster.secret, self._engine.config.balancers[balancer])
