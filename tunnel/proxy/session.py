"""The front end of each client connection, as a generator task on the loop.

``serve_client`` is one client connection's life (`tunnel.io.loop.Wait` steps): read a
head (one total deadline), route it, validate an upgrade, connect the backend (failing
over between balancer members while nothing has reached the client, see
`tunnel.proxy.failover`), forward the request, read the backend's head, and then either
open a tunnel (a checked 101) or relay an HTTP answer and go round for the next request
on the same connection (R48).

Every error a peer can cause arrives here as a ``TunnelError`` and is answered in one
place (``_answer_error``) with its status and reason; anything else is our bug, logged
with its traceback and answered 500. After a 101 nothing HTTP is ever written (R32).
The engine is reached only through `Services`.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import ssl
import time
from collections.abc import Generator
from typing import Optional, Union

import h11

from ..config.model import Listener, Member, Scope, Target
from ..config.scopes import tunnel_idle_timeout
from ..errors import (
    BadGateway,
    BadRequest,
    ClientError,
    ClientGone,
    GatewayTimeout,
    NotFound,
    RequestTimeout,
    TunnelError,
    UpstreamError,
)
from ..io.loop import Wait
from ..io.steps import recv, sendall, tls_handshake
from ..io.streams import INHERITS_OPTIONS, Endpoint, InetAddress, PeerAddress, tune
from ..io.tls import TLSStream
from ..protocol.backend import BackendHandshake, backend_headers, client_switch_bytes
from ..protocol.balancer import BalancerState, MemberState
from ..protocol.heads import RequestHead, ResponseHead, kept_lines
from ..protocol.request import FrontEnd
from ..protocol.responses import DROPS_CONNECTION, error_response_bytes, phrase
from ..protocol.routing import RouteResult, why_plain
from ..tunnels.wscontrol import tracks_frames
from . import envphase, handlers
from .decide import check_upgrade, decide
from .failover import connect_backend, peer_ip, read_response_head
from .forward import drain_request_body, relay_response, response_headers, send_request_body, send_to_client
from .heads import answer_head, check_declared_length, kept_upgrade, request_via
from .records import Exchange, H2Start, Inner, TunnelStart
from .remoteip import ProxyRefused, accept_proxy_header, apply_remoteip_header
from .services import Services

__all__ = ["serve_client"]

log = logging.getLogger("tunnel.server")
errlog = logging.getLogger("tunnel.error")

#: What one request leaves the connection with: a tunnel to start, or whether the
#: connection goes on to another request (True) or closes (False).
Outcome = Union[TunnelStart, bool]


def _status_line_ok(front: FrontEnd) -> bool:
    return front.conn.our_state is h11.SEND_RESPONSE


def serve_client(
    engine: Services,
    sock: socket.socket,
    peer: PeerAddress,
    listener: Optional[Listener],
    leading: bytes = b"",
    inner: Optional[Inner] = None,
) -> Generator[Wait, None, Union[TunnelStart, H2Start, None]]:
    """One client connection, as a generator task. Returns a `TunnelStart`, an
    `H2Start` (ALPN chose h2 on a TLS listener, R140), or None.

    ``inner``: ``sock`` carries one HTTP/2 stream as HTTP/1.1 (R143): no PROXY header
    or TLS handshake is looked for, the listener's TLS still counts (https), and the
    log shows the client's protocol.

    The socket is closed here unless a tunnel or an HTTP/2 connection is returned (the
    caller then owns it).
    """
    config = engine.config
    clock = time.monotonic
    limits = config.scope.limits
    front = FrontEnd(limits)
    if leading:
        front.feed(leading)
    peer = peer if isinstance(peer, tuple) else ("unix", 0)
    result: Union[TunnelStart, H2Start, None] = None
    client: Endpoint = sock  # or a TLSStream over it on a TLS listener
    connection_peer: Optional[InetAddress] = inner.connection_peer if inner is not None else None
    try:
        tune(sock, inherited=listener is not None and INHERITS_OPTIONS)
        if inner is not None:
            pass  # an HTTP/2 stream: its connection did the PROXY header and TLS
        elif listener is not None and listener.proxy_protocol and not leading:
            try:
                carried = yield from accept_proxy_header(config, sock, peer, clock() + limits.header_timeout)
            except ProxyRefused as exc:
                log.warning("PROXY protocol: connection from %s on %s closed: %s", peer_ip(peer), listener.display, exc)
                return None
            if carried is not None and carried.source is not None:
                connection_peer, peer = peer, carried.source
        if listener is not None and listener.tls and inner is None:
            try:
                client = yield from _tls_accept(engine, sock, listener, clock() + limits.header_timeout)
            except _TLSRefused as exc:
                log.info("TLS handshake with %s on %s failed: %s", peer_ip(peer), listener.display, exc)
                return None
            if isinstance(client, TLSStream) and client.selected_alpn_protocol() == "h2":
                sni = getattr(client.sslobj, "sni_name", None)
                result = H2Start(client, peer, listener, connection_peer, sni)
                return result
        while True:
            ex = Exchange(peer=peer, listener=listener, connection_peer=connection_peer, env_conf=config.scope.env)
            if inner is not None:
                ex.protocol = inner.protocol
            ex.bytes_in = len(front.buffer)
            try:
                head = yield from _read_head(client, front, clock() + limits.header_timeout, ex)
            except ClientError as exc:
                _log_client_error(ex, exc)
                yield from _answer_error(client, front, ex, exc, close=True)
                return None
            if head is None:
                return None  # clean EOF between requests
            ex.head = head
            ex.bytes_in = head.raw_size  # %I: this head; body and tunnel bytes added as they pass
            ex.start = time.time()
            ex.started = clock()
            try:
                outcome = yield from _handle(engine, client, front, head, ex)
            except ClientGone as gone:
                why = str(gone) or "left during the backend handshake"
                log.info("client %s %s; backend connection closed", peer_ip(peer), why)
                return None
            except TunnelError as exc:
                if isinstance(exc, UpstreamError):
                    errlog.error(
                        "%s %s for %s: %s%s",
                        exc.status,
                        exc.reason,
                        ex.notes.get("route", head.target),
                        _loggable(exc.detail or ""),
                        f" [backend {_loggable(ex.notes['backend'])}]" if "backend" in ex.notes else "",
                    )
                else:
                    _log_client_error(ex, exc)
                keep = yield from _answer_error(client, front, ex, exc, close=False)
                engine.log_exchange(ex)
                if not keep:
                    return None
                continue
            if isinstance(outcome, TunnelStart):
                result = outcome
                return result
            engine.log_exchange(ex)
            if not outcome:
                return None
    except GeneratorExit:
        raise
    except Exception:
        errlog.exception("internal error serving %s", peer_ip(peer))
        try:
            if _status_line_ok(front):
                client.send(error_response_bytes(500, "internal error"))
        except OSError:
            pass
        return None
    finally:
        if result is None:
            client.close()


class _TLSRefused(Exception):
    """A client's TLS handshake failed (plain HTTP on a TLS port, bad hello, timeout)."""


def _tls_accept(
    engine: Services, raw: socket.socket, listener: Listener, deadline: float
) -> Generator[Wait, None, TLSStream]:
    """The server side of TLS, non-blocking on the loop: one slow client stalls nobody."""
    ctx = engine.server_ssl(listener)
    sock = TLSStream(raw, ctx, server_side=True)
    try:
        yield from tls_handshake(sock, deadline)
    except TimeoutError:  # before OSError, its base class
        raise _TLSRefused("no complete TLS handshake before the deadline") from None
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        raise _TLSRefused(reason) from None
    return sock


def _loggable(text: str) -> str:
    """``text`` with control characters as ``\\xhh``: a detail may quote a client's
    decoded path (a [P] target, say), and CR/LF in it must not start a new log line."""
    return "".join(f"\\x{ord(c):02x}" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in text)


def _log_client_error(ex: Exchange, exc: TunnelError) -> None:
    target = ex.head.request_line if ex.head is not None else "(no request line)"
    log.info("client %s: %d %s [%s]", peer_ip(ex.peer), exc.status, exc.reason, target)


def _read_head(sock: Endpoint, front: FrontEnd, deadline: float, ex: Exchange) -> Generator[Wait, None, Optional[RequestHead]]:
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


def _answer_error(
    sock: Endpoint, front: FrontEnd, ex: Exchange, exc: TunnelError, *, close: bool
) -> Generator[Wait, None, bool]:
    """Answer ``exc`` with its status and reason. Returns True if the connection goes on."""
    if front.conn.our_state in (h11.SEND_BODY, h11.DONE, h11.MUST_CLOSE):
        # A response is already under way (the backend broke its body): a second status
        # line would be read as body bytes. Closing is the only signal left, as in httpd;
        # the access log keeps the status that was sent.
        return False
    ex.status = exc.status
    body = f"{exc.status} {exc.reason}\n".encode("utf-8", "replace")
    own = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    if ex.env_conf.always:  # Header always (R82)
        headers = envphase.error_headers(ex, sock, own, exc.headers)
    else:
        headers = own + list(exc.headers)
    ex.response_headers = list(headers)  # %{Location}o of a redirect, for one
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
            if not keep:
                headers.append(("Connection", "close"))
            wire = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]  # Header values are latin-1
            n = yield from send_to_client(sock, front, h11.Response(status_code=exc.status, headers=wire, reason=phrase(exc.status).encode("ascii")), deadline)
            n += yield from send_to_client(sock, front, h11.Data(data=body), deadline)
            n += yield from send_to_client(sock, front, h11.EndOfMessage(), deadline)
        else:
            data = error_response_bytes(exc.status, exc.reason, headers=[h for h in headers if h[0] not in ("Content-Type", "Content-Length")])
            yield from sendall(sock, data, deadline)
            n = len(data)
            keep = False
        ex.bytes_out += n
        ex.body_bytes += len(body)
        if keep:
            keep = yield from drain_request_body(sock, front, deadline=time.monotonic() + 5.0)
        elif exc.status == 413:
            # The client may still be sending the body: read (and drop) a little of it
            # before closing, so that the close does not reset the 413 away (R105).
            yield from drain_request_body(sock, front, deadline=time.monotonic() + 2.0)
    except (OSError, TimeoutError, h11.LocalProtocolError):
        return False
    return keep


def _handle(
    engine: Services, sock: Endpoint, front: FrontEnd, head: RequestHead, ex: Exchange
) -> Generator[Wait, None, Outcome]:
    """Route and serve one request.

    Returns:
        A `TunnelStart`, or True to keep the connection for another request, False to
        close it.

    Raises:
        TunnelError: answered by the caller with its status.
        ClientGone: the client left while the backend was being reached.
    """
    clock = time.monotonic
    config = engine.config
    local = _local_ip(sock) if config.ip_vhosts else None  # a system call: only for IP-based vhosts (R90)
    scope, vhost = config.vhost_for(ex.listener, head.get("host"), local)
    server_scope = scope  # the server's or vhost's, no <Location> applied
    ex.vhost = vhost.server_name if vhost is not None else ""
    if scope.remoteip_header:
        apply_remoteip_header(scope, head, ex)  # first, as mod_remoteip's hook runs (R131)
    head = envphase.post_read(scope, head, ex, lambda: _local_ip(sock))  # RequestHeader early, SetEnvIf (R84)
    # Routing, access control (before the upgrade checks and any backend, R70) and the
    # <Location> rewrite rules; an internal redirect gives a new head.
    try:
        decision, head = decide(engine, scope, head, ex, lambda: _local_ip(sock))
    except NotFound:
        if not handlers.wanted(scope, head):
            raise
        # No ProxyPass takes it: a SetHandler <Location> serves it, access first (R110).
        return (yield from handlers.serve(engine, sock, front, scope, head, ex, lambda: _local_ip(sock)))
    head, decision = envphase.fixups(decision, head, ex, sock)  # SetEnv, RequestHeader (R81, R83)
    scope = decision.scope
    rule = decision.rule
    ex.notes["route"] = rule.route_name
    ex.notes["route_at"] = rule.where  # a bounded metrics label (R113)
    fields = head.index()
    offered = fields.get("upgrade")
    if offered is not None and not decision.tunnel and log.isEnabledFor(logging.DEBUG):
        log.debug("Upgrade: %s for %s passed as plain HTTP by %s: %s", _loggable(offered), _loggable(decision.local_path), ex.notes["route"], why_plain(rule, offered))
    token, key = check_upgrade(decision, head)
    check_declared_length(scope, head)  # 413 before any backend (R105)
    strategy = engine.strategy_for(scope)
    reserved = False
    if decision.tunnel and engine.needs_thread(scope, strategy):
        engine.reserve_thread(ex)  # raises ServiceUnavailable when full
        reserved = True

    backend_sock: Optional[Endpoint] = None
    member: Optional[MemberState] = None
    balancer: Optional[BalancerState] = None
    try:
        backend_sock, target, member, balancer = yield from connect_backend(engine, scope, decision, head, ex, sock, front)
        hs = _forwarded_request(engine, head, decision, scope, target, ex, token=token, key=key)
        has_body = fields.get("content-length") not in (None, "0") or "transfer-encoding" in fields
        timeout = scope.head_timeout(rule)
        try:
            yield from sendall(backend_sock, hs.request_bytes(end=not has_body), clock() + timeout)
        except TimeoutError:
            raise GatewayTimeout("backend did not take the request in time") from None
        except OSError as exc:
            raise BadGateway("backend aborted while receiving the request", detail=str(exc)) from exc
        if has_body:
            sent = yield from send_request_body(
                sock, front, backend_sock, hs, timeout=scope.timeout, clock=clock, limit=scope.limit_request_body
            )
            ex.bytes_in += sent.wire
        ex.sent_at = clock()
        response = yield from read_response_head(sock, front, backend_sock, hs, clock() + timeout, decision.tunnel)
        config_member: Optional[Member] = member.member if member is not None else None
        ex.answered_at = clock()
        if response.status == 101:
            hs.check_switch(response)
            response = answer_head(response, scope, ex, engine.config.balancers, engine.server_name)
            if ex.env_conf.always or ex.env_conf.onsuccess:  # Header (R82)
                response = dataclasses.replace(response, headers=envphase.switch_headers(ex, sock, response.headers, token or "websocket"))
            data = client_switch_bytes(response, token or "websocket")
            try:
                yield from sendall(sock, data, clock() + scope.timeout)
            except (TimeoutError, OSError):
                # Part of the 101 may be out: nothing HTTP can follow it (R32), so the
                # connection just closes, and the backend's with it.
                raise ClientGone("did not take the 101 in time or left") from None
            ex.status = 101
            ex.bytes_out += len(data)
            ex.tunnel = True
            # An open tunnel keeps of its heads only what its access-log entry and the
            # status pages will read: the request line and the header lines the log
            # formats name, and the 101's Upgrade (a WebSocket tunnel or not).
            keep_request, keep_response = engine.kept_headers
            if ex.head is not None:
                ex.head = ex.head.kept(keep_request)
            ex.response_headers = kept_lines(response.headers, keep_response)
            early = front.take_buffer()
            # The early bytes are the pump's first: counted in its flows (R99).
            ex.early_in, ex.early_out = len(early), len(hs.trailing)
            # Frame headers followed or not (R160): a websocket tunnel's, as configured.
            is_ws = (token or "websocket").lower() == "websocket"
            websocket = is_ws and tracks_frames(scope, graceful_set=engine.config.graceful_shutdown_set)
            pump = engine.new_pump(
                sock, backend_sock, to_backend=early, to_client=hs.trailing, websocket=websocket, close_watch=is_ws
            )
            backend_sock = None  # the pump owns it now
            idle = tunnel_idle_timeout(server_scope, decision.local_path, rule, config_member)
            start = TunnelStart(pump, scope, strategy, ex, reserved, member, balancer, idle_timeout=idle)
            reserved = False
            member = None
            return start
        # Any other answer is relayed; the client connection stays HTTP (R20, R48).
        kept = kept_upgrade(response, rule, config_member)
        response = answer_head(response, scope, ex, engine.config.balancers, engine.server_name)
        return (yield from _relay_answer(sock, front, backend_sock, hs, response, ex, scope, timeout, kept))
    finally:
        if backend_sock is not None:
            backend_sock.close()
        if reserved:
            engine.release_thread()
        if member is not None and balancer is not None:
            balancer.release(member)


def _local_ip(sock: Endpoint) -> str:
    try:
        name = sock.getsockname()
    except OSError:
        return ""
    return str(name[0]) if isinstance(name, tuple) and name else ""


def _forwarded_request(
    engine: Services,
    head: RequestHead,
    decision: RouteResult,
    scope: Scope,
    target: Target,
    ex: Exchange,
    *,
    token: Optional[str],
    key: Optional[str],
) -> BackendHandshake:
    """The request to send to the backend: the routed path, the forwarded headers (R7,
    R8, R14, R51), and for a plain request ``Connection: close`` (one request each)."""
    server_name = engine.server_name
    headers = backend_headers(
        head,
        host=target.authority,
        upgrade_token=token,
        client_ip=peer_ip(ex.peer),
        add_headers=scope.add_headers,
        server_name=scope.server_name or server_name,
        preserve_host=scope.preserve_host,
        keep_framing=not decision.tunnel or head.method != "GET",
    )
    if not decision.tunnel:
        headers.append(("Connection", "close"))
    headers = request_via(headers, scope, server_name, ex)
    return BackendHandshake(head.method, decision.backend_path, headers, upgrade_token=token, client_key=key)


def _relay_answer(
    sock: Endpoint,
    front: FrontEnd,
    backend: Endpoint,
    hs: BackendHandshake,
    response: ResponseHead,
    ex: Exchange,
    scope: Scope,
    timeout: float,
    upgrade: list[tuple[str, str]],
) -> Generator[Wait, None, bool]:
    """Relay a non-101 answer (its headers already mapped: `answer_head`) to the client,
    with ``upgrade`` (`kept_upgrade`, R101) after its own headers. Returns True when the
    connection may serve another request (both sides done, or the unread request body
    drained)."""
    clock = time.monotonic
    if ex.env_conf.always or ex.env_conf.onsuccess:  # Header (R82)
        response = dataclasses.replace(response, headers=envphase.answer_headers(ex, sock, response_headers(response)))
    ex.status = response.status
    ex.response_headers = response.headers + upgrade
    relayed = yield from relay_response(
        sock, front, backend, hs, response, timeout=timeout, clock=clock, extra_headers=upgrade
    )
    ex.body_bytes = relayed.body
    ex.bytes_out += relayed.wire  # head, framing and body (%O)
    if front.conn.our_state is h11.DONE and front.conn.their_state is h11.DONE:
        return True
    if front.conn.their_state is h11.SEND_BODY:
        return (yield from drain_request_body(sock, front, deadline=clock() + scope.timeout))
    return False
