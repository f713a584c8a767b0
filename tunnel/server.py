"""Listeners, accepting, and the front end of each client connection.

``serve_client`` is one client connection's life as a generator task (``loop.Wait``):
read a head (one total deadline), route it, validate an upgrade, connect the backend
(failing over between balancer members while nothing has reached the client), forward
the request, read the backend's head, and then either open a tunnel (a checked 101) or
relay an HTTP answer and go round for the next request on the same connection (R48).

Every error a peer can cause arrives here as a ``TunnelError`` and is answered in one
place (``_answer_error``) with its status and reason; anything else is our bug, logged
with its traceback and answered 500. After a 101 nothing HTTP is ever written (R32).
"""

from __future__ import annotations

import errno
import http
import logging
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generator, Optional

import h11

from . import routing
from .backend import INHERITS_OPTIONS, RECV_SIZE, WOULD_BLOCK, connect, recv, sendall, set_tcp_options, tune
from .config import Listener, Scope, Target
from .errors import (
    BadGateway,
    BadRequest,
    ClientError,
    GatewayTimeout,
    RequestTimeout,
    ServiceUnavailable,
    TunnelError,
    UpstreamError,
)
from .handshake import (
    BackendHandshake,
    FrontEnd,
    RequestHead,
    backend_headers,
    client_switch_bytes,
    error_response_bytes,
    validate_upgrade,
)
from .httpproxy import drain_request_body, relay_response, send_request_body, send_to_client
from .loop import Loop, Wait
from .tls import TLSStream

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine

__all__ = ["serve_client", "open_listener", "Acceptor", "Exchange"]

log = logging.getLogger("tunnel.server")
errlog = logging.getLogger("tunnel.error")

#: Connections accepted per wake-up of a listener (fairness with running tunnels).
ACCEPT_BATCH = 64
#: How long a listener rests after EMFILE/ENFILE before accepting again.
EMFILE_BACKOFF = 0.1
#: Listen backlog.
BACKLOG = 1024
#: Bytes of early tunnel data a client may send while the backend handshake runs.
MAX_EARLY_DATA = 256 * 1024


@dataclass
class Exchange:
    """What one request/tunnel did, for the access log and the caller."""

    peer: tuple[str, int]
    listener: Optional[Listener]
    head: Optional[RequestHead] = None
    status: int = 0
    start: float = field(default_factory=time.time)
    started: float = field(default_factory=time.monotonic)
    bytes_in: int = 0
    bytes_out: int = 0
    body_bytes: int = 0
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)
    tunnel: bool = False
    vhost: str = ""
    early_in: int = 0  # tunnel bytes that came with the client's head (to the backend)
    early_out: int = 0  # tunnel bytes that came with the backend's 101 (to the client)


@dataclass
class TunnelStart:
    """What ``serve_client`` returns when a tunnel is to be started by the caller."""

    pump: Any
    scope: Scope
    strategy: str
    exchange: Exchange
    reserved: bool  # a sync pool thread is reserved for it
    member: Any = None
    balancer: Any = None


def open_listener(listener: Listener, *, reuse_port: bool = False, listen: bool = True) -> socket.socket:
    """Bind (and listen) for one ``Listen`` line: ``SO_REUSEADDR``, non-blocking.

    ``reuse_port`` sets ``SO_REUSEPORT`` so several worker processes can each listen on
    the same port (the kernel spreads connections among them, nginx's model).
    """
    host = listener.host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and host in ("", "::"):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), listener.port))
        set_tcp_options(sock)  # inherited by every accepted connection (Linux)
        if listen:
            sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class Acceptor:
    """Accepts on one listening socket, a batch per wake-up; rests on EMFILE."""

    def __init__(self, engine: "Engine", loop: Loop, sock: socket.socket, listener: Listener) -> None:
        self.engine = engine
        self.loop = loop
        self.sock = sock
        self.listener = listener
        loop.register(sock, 1, self._on_ready)

    def _on_ready(self, mask: int) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    errlog.error("accept on %s: %s; pausing %.1fs", self.listener.display, exc.strerror, EMFILE_BACKOFF)
                    self.loop.modify(self.sock, 0)
                    self.loop.call_later(EMFILE_BACKOFF, self._resume)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                errlog.error("accept on %s failed: %s", self.listener.display, exc)
                return
            self.engine.adopt(conn, peer, self.listener)

    def _resume(self) -> None:
        if self.loop.is_registered(self.sock):
            self.loop.modify(self.sock, 1)

    def close(self) -> None:
        self.loop.unregister(self.sock)
        self.sock.close()


def _peer_ip(peer: Any) -> str:
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return "unix"


def _status_line_ok(front: FrontEnd) -> bool:
    return front.conn.our_state is h11.SEND_RESPONSE


def serve_client(
    engine: "Engine",
    sock: socket.socket,
    peer: Any,
    listener: Optional[Listener],
    leading: bytes = b"",
) -> Generator[Wait, None, Optional[TunnelStart]]:
    """One client connection, as a generator task. Returns a `TunnelStart` or None.

    The socket is closed here unless a tunnel is returned (the caller then owns it).
    """
    config = engine.config
    clock = time.monotonic
    limits = config.scope.limits
    front = FrontEnd(limits)
    if leading:
        front.feed(leading)
    peer = peer if isinstance(peer, tuple) else ("unix", 0)
    result: Optional[TunnelStart] = None
    try:
        tune(sock, inherited=listener is not None and INHERITS_OPTIONS)
        if listener is not None and listener.tls:
            try:
                sock = yield from _tls_accept(engine, sock, listener, clock() + limits.header_timeout)
            except _TLSRefused as exc:
                log.info("TLS handshake with %s on %s failed: %s", _peer_ip(peer), listener.display, exc)
                return None
        while True:
            ex = Exchange(peer=peer, listener=listener)
            ex.bytes_in = len(front.buffer)
            try:
                head = yield from _read_head(sock, front, clock() + limits.header_timeout, ex)
            except ClientError as exc:
                _log_client_error(ex, exc)
                yield from _answer_error(sock, front, ex, exc, close=True)
                return None
            if head is None:
                return None  # clean EOF between requests
            ex.head = head
            ex.bytes_in = head.raw_size  # %I: this head; body and tunnel bytes added as they pass
            ex.start = time.time()
            ex.started = clock()
            try:
                outcome = yield from _handle(engine, sock, front, head, ex)
            except TunnelError as exc:
                if isinstance(exc, UpstreamError):
                    errlog.error(
                        "%s %s for %s: %s%s",
                        exc.status,
                        exc.reason,
                        ex.notes.get("route", head.target),
                        exc.detail or "",
                        f" [backend {ex.notes['backend']}]" if "backend" in ex.notes else "",
                    )
                else:
                    _log_client_error(ex, exc)
                keep = yield from _answer_error(sock, front, ex, exc, close=False)
                engine.log_exchange(ex)
                if not keep:
                    return None
                continue
            if outcome is ClientGone:
                log.info("client %s left during the backend handshake; backend connection closed", _peer_ip(peer))
                return None
            if isinstance(outcome, TunnelStart):
                result = outcome
                return result
            engine.log_exchange(ex)
            if not outcome:
                return None
    except GeneratorExit:
        raise
    except Exception:
        errlog.exception("internal error serving %s", _peer_ip(peer))
        try:
            if _status_line_ok(front):
                sock.send(error_response_bytes(500, "internal error"))
        except OSError:
            pass
        return None
    finally:
        if result is None:
            sock.close()


class _TLSRefused(Exception):
    """A client's TLS handshake failed (plain HTTP on a TLS port, bad hello, timeout)."""


def _tls_accept(
    engine: "Engine", raw: socket.socket, listener: Listener, deadline: float
) -> Generator[Wait, None, TLSStream]:
    """The server side of TLS, non-blocking on the loop: one slow client stalls nobody."""
    ctx = engine.server_ssl(listener)
    sock = TLSStream(raw, ctx, server_side=True)
    while True:
        try:
            sock.do_handshake()
            return sock
        except ssl.SSLWantReadError:
            wait = Wait.read(sock, deadline)
        except ssl.SSLWantWriteError:
            wait = Wait.write(sock, deadline)
        except (ssl.SSLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or str(exc)
            raise _TLSRefused(reason) from None
        try:
            yield wait
        except TimeoutError:
            raise _TLSRefused("no complete TLS handshake before the deadline") from None


def _log_client_error(ex: Exchange, exc: TunnelError) -> None:
    target = ex.head.request_line if ex.head is not None else "(no request line)"
    log.info("client %s: %d %s [%s]", _peer_ip(ex.peer), exc.status, exc.reason, target)


def _read_head(sock: socket.socket, front: FrontEnd, deadline: float, ex: Exchange) -> Generator[Wait, None, Optional[RequestHead]]:
    while True:
        head = front.next_head()
        if head is not None:
            return head
        if front.eof:
            if front.buffer:
                raise BadRequest("connection closed in the middle of a request head")
            return None
        try:
            data = yield from recv(sock, deadline)
        except TimeoutError:
            if not front.buffer and front.conn.their_state is h11.IDLE and front.conn.our_state is h11.IDLE:
                return None  # an idle keep-alive connection: close quietly
            raise RequestTimeout("request head not received in time") from None
        except OSError:
            return None
        ex.bytes_in += len(data)
        front.feed(data)


def _phrase(status: int) -> bytes:
    """The standard reason phrase ("Not Found"), never an empty one."""
    try:
        return http.HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b"Error"


# httpd's ap_status_drops_connection(): after these answers the connection is closed;
# after any other error (404, 502, 504, ...) a keep-alive client may send another request.
DROPS_CONNECTION = frozenset({400, 408, 411, 413, 414, 417, 500, 501, 503})


def _answer_error(
    sock: socket.socket, front: FrontEnd, ex: Exchange, exc: TunnelError, *, close: bool
) -> Generator[Wait, None, bool]:
    """Answer ``exc`` with its status and reason. Returns True if the connection goes on."""
    if front.conn.our_state in (h11.SEND_BODY, h11.DONE, h11.MUST_CLOSE):
        # A response is already under way (the backend broke its body): a second status
        # line would be read as body bytes. Closing is the only signal left, as in httpd;
        # the access log keeps the status that was sent.
        return False
    ex.status = exc.status
    body = f"{exc.status} {exc.reason}\n".encode("utf-8", "replace")
    keep = (
        not close
        and exc.status not in DROPS_CONNECTION
        and ex.head is not None
        and ex.head.keep_alive
        and _status_line_ok(front)
    )
    deadline = time.monotonic() + 5.0
    try:
        if _status_line_ok(front):
            headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
            headers += exc.headers
            if not keep:
                headers.append(("Connection", "close"))
            n = yield from send_to_client(sock, front, h11.Response(status_code=exc.status, headers=headers, reason=_phrase(exc.status)), deadline)
            n += yield from send_to_client(sock, front, h11.Data(data=body), deadline)
            n += yield from send_to_client(sock, front, h11.EndOfMessage(), deadline)
        else:
            data = error_response_bytes(exc.status, exc.reason, headers=exc.headers)
            yield from sendall(sock, data, deadline)
            n = len(data)
            keep = False
        ex.bytes_out += n
        ex.body_bytes += len(body)
        if keep:
            keep = yield from drain_request_body(sock, front, deadline=time.monotonic() + 5.0)
    except (OSError, TimeoutError, h11.LocalProtocolError):
        return False
    return keep


def _handle(
    engine: "Engine", sock: socket.socket, front: FrontEnd, head: RequestHead, ex: Exchange
) -> Generator[Wait, None, Any]:
    """Route and serve one request. Returns a TunnelStart, or True to keep the
    connection for another request, False to close it."""
    clock = time.monotonic
    scope, vhost = engine.config.vhost_for(ex.listener, head.get("host"))
    ex.vhost = vhost.server_name if vhost is not None else ""
    decision = routing.route(scope, head.target, head.get("upgrade"), method=head.method)
    scope = decision.scope
    rule = decision.rule
    ex.notes["route"] = f"{rule.path} ({rule.where})"
    key: Optional[str] = None
    token = decision.upgrade_token if decision.tunnel else None
    if decision.tunnel:
        key = validate_upgrade(head, token or "websocket", none_mode=rule.upgrade == ("NONE",))
    strategy = engine.strategy_for(scope) if decision.tunnel else ""
    reserved = False
    if decision.tunnel and engine.needs_thread(scope, strategy):
        reserved = engine.reserve_thread(ex)  # raises ServiceUnavailable when full

    backend_sock: Optional[socket.socket] = None
    member = balancer = None
    try:
        try:
            backend_sock, target, member, balancer = yield from _connect_backend(engine, scope, decision, head, ex, sock, front)
        except ClientGone:
            return ClientGone
        hs = BackendHandshake(
            head.method,
            decision.backend_path,
            backend_headers(
                head,
                host=target.authority,
                upgrade_token=token,
                client_ip=_peer_ip(ex.peer),
                add_headers=scope.add_headers,
                server_name=scope.server_name or engine.server_name,
                preserve_host=scope.preserve_host,
                keep_framing=not decision.tunnel or head.method != "GET",
            )
            + ([] if decision.tunnel else [("Connection", "close")]),
            upgrade_token=token,
            client_key=key,
        )
        has_body = head.get("content-length") not in (None, "0") or head.get("transfer-encoding") is not None
        timeout = scope.head_timeout(rule)
        try:
            yield from sendall(backend_sock, hs.request_bytes(end=not has_body), clock() + timeout)
        except TimeoutError:
            raise GatewayTimeout("backend did not take the request in time") from None
        except OSError as exc:
            raise BadGateway("backend aborted while receiving the request", detail=str(exc)) from exc
        if has_body:
            sent = yield from send_request_body(sock, front, backend_sock, hs, timeout=scope.timeout, clock=clock)
            ex.bytes_in += sent.wire
        try:
            response = yield from _read_response_head(sock, front, backend_sock, hs, clock() + timeout, decision.tunnel)
        except ClientGone:
            return ClientGone
        if response.status == 101:
            hs.check_switch(response)
            data = client_switch_bytes(response, token or "websocket")
            yield from sendall(sock, data, clock() + scope.timeout)
            ex.status = 101
            ex.bytes_out += len(data)
            ex.tunnel = True
            ex.response_headers = response.headers
            early = front.take_buffer()
            ex.early_in, ex.early_out = len(early), len(hs.trailing)
            ex.bytes_in += ex.early_in
            ex.bytes_out += ex.early_out
            pump = engine.new_pump(sock, backend_sock, to_backend=early, to_client=hs.trailing)
            backend_sock = None  # the pump owns it now
            start = TunnelStart(pump, scope, strategy, ex, reserved, member, balancer)
            reserved = False
            member = None
            return start
        # Any other answer is relayed; the client connection stays HTTP (R20, R48).
        ex.status = response.status
        ex.response_headers = response.headers
        relayed = yield from relay_response(sock, front, backend_sock, hs, response, timeout=timeout, clock=clock)
        ex.body_bytes = relayed.body
        ex.bytes_out += relayed.wire  # head, framing and body (%O)
        if decision.tunnel and front.conn.their_state is h11.MIGHT_SWITCH_PROTOCOL:
            pass  # h11 resolves it on the non-101 response
        if front.conn.our_state is h11.DONE and front.conn.their_state is h11.DONE:
            return True
        if front.conn.their_state is h11.SEND_BODY:
            return (yield from drain_request_body(sock, front, deadline=clock() + scope.timeout))
        return False
    finally:
        if backend_sock is not None:
            backend_sock.close()
        if reserved:
            engine.pool.release()
        if member is not None and balancer is not None:
            balancer.release(member)


def _connect_backend(
    engine: "Engine", scope: Scope, decision: Any, head: RequestHead, ex: Exchange, client: Any, front: FrontEnd
) -> Generator[Wait, None, tuple]:
    """Connect the route's backend, or a balancer member with failover (R46).

    Raises:
        ClientGone: the client left while the balancer's ``timeout=`` wait was on.
    """
    clock = time.monotonic
    rule = decision.rule
    if decision.balancer is None:
        target: Target = decision.target
        ex.notes["backend"] = str(target)
        engine.check_worker(target, rule)
        try:
            sock = yield from connect(
                target, clock() + scope.connect_timeout(rule), ssl_context=engine.backend_ssl(scope)
            )
        except ServiceUnavailable:
            engine.worker_failed(target, rule)
            raise
        return sock, target, None, None
    balancer = engine.balancers[decision.balancer]
    query = head.target.partition("?")[2]
    sticky = balancer.sticky_route_from(query, head.get("cookie"))
    tried: set[int] = set()
    attempts = balancer.attempts_allowed() + 1
    last: Optional[TunnelError] = None
    wait_until: Optional[float] = None
    for _ in range(attempts):
        while True:
            try:
                member = balancer.pick(sticky_route=sticky, exclude=tried)
                break
            except ServiceUnavailable:
                # httpd's balancer timeout=: wait for a member to become usable (an
                # error state expiring, a busy one freeing up) before answering 503.
                wait = balancer.balancer.timeout
                if wait_until is None:
                    wait_until = clock() + wait
                if wait <= 0 or clock() >= wait_until:
                    raise
                watch = client if len(front.buffer) < MAX_EARLY_DATA else None
                try:
                    yield Wait(None, 0, min(wait_until, clock() + max(wait / 100, 0.01)), also=watch)
                except TimeoutError:
                    pass
                else:  # the client spoke or left meanwhile
                    if watch is not None and not _watch_client(client, front):
                        raise ClientGone()
        tried.add(member.index)
        mt: Target = member.member.target
        target = Target(mt.scheme, mt.host, mt.port, _join(mt.path, decision.backend_path), mt.unix_path)
        ex.notes["backend"] = str(target)
        ex.notes["balancer_member"] = str(mt)
        ctimeout = member.member.connectiontimeout or scope.connect_timeout(rule)
        balancer.acquire(member)
        try:
            sock = yield from connect(target, clock() + ctimeout, ssl_context=engine.backend_ssl(scope))
        except ServiceUnavailable as exc:
            balancer.release(member)
            balancer.mark_error(member)
            errlog.error("balancer://%s member %s failed: %s; trying another", decision.balancer, mt, exc.detail or exc.reason)
            last = exc
            continue
        except UpstreamError as exc:
            # R46: a DNS or TLS failure puts the member in error, but the request is
            # answered (500/502/504) instead of failing over.
            balancer.release(member)
            balancer.mark_error(member)
            errlog.error("balancer://%s member %s failed: %s", decision.balancer, mt, exc.detail or exc.reason)
            raise
        except BaseException:
            balancer.release(member)
            raise
        balancer.mark_ok(member)
        return sock, target, member, balancer
    raise last or ServiceUnavailable(f"no usable member in balancer://{decision.balancer}")


def _join(member_path: str, backend_path: str) -> str:
    """The member's path prefix joined with the balancer-relative backend path."""
    base = member_path.rstrip("/")
    return base + backend_path if backend_path.startswith("/") else base + "/" + backend_path


class ClientGone(Exception):
    """The client closed its connection while we waited for the backend."""


def _watch_client(client: socket.socket, front: FrontEnd) -> bool:
    """Read what the client sent meanwhile (kept as early data). False if it left."""
    if len(front.buffer) >= MAX_EARLY_DATA:
        return True  # enough buffered: stop reading (backpressure)
    try:
        data = client.recv(MAX_EARLY_DATA - len(front.buffer))
    except WOULD_BLOCK:
        return True
    except OSError:
        return False
    if not data:
        return False
    front.buffer += data
    return True


def _read_response_head(
    client: socket.socket, front: FrontEnd, backend: socket.socket, hs: BackendHandshake, deadline: float, watch_client: bool
) -> Generator[Wait, None, Any]:
    """Read the backend's response head by ``deadline`` (one total deadline, R19).

    Meanwhile the client is watched: if it leaves, the backend connection is closed at
    once (R41 tunnel line) instead of waiting for a head nobody will read.
    """
    while True:
        try:
            data = backend.recv(RECV_SIZE)
        except WOULD_BLOCK:
            also = client if watch_client and len(front.buffer) < MAX_EARLY_DATA else None
            try:
                yield Wait(backend, 1, deadline, also=also)
            except TimeoutError:
                raise GatewayTimeout("backend did not answer in time") from None
            if also is not None and not _watch_client(client, front):
                raise ClientGone()
            continue
        except OSError as exc:
            raise BadGateway("backend reset the connection before a response head", detail=str(exc)) from exc
        response = hs.feed(data)
        if response is not None:
            return response
