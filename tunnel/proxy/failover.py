"""Reaching the backend for one request: a plain worker or a balancer member with
failover (R46), the balancer's ``timeout=`` wait, and reading the backend's response
head while watching that the client is still there (R41 tunnel line)."""

from __future__ import annotations

import logging
import time
from collections.abc import Generator
from typing import Optional

from ..config.model import Scope, Target
from ..errors import BadGateway, ClientGone, GatewayTimeout, ServiceUnavailable, TunnelError, UpstreamError
from ..io.connect import connect
from ..io.loop import Wait
from ..io.streams import EVENT_READ, RECV_SIZE, WOULD_BLOCK, Endpoint, PeerAddress
from ..protocol.backend import BackendHandshake
from ..protocol.balancer import BalancerState, MemberState
from ..protocol.heads import RequestHead, ResponseHead
from ..protocol.request import FrontEnd
from ..protocol.routing import RouteResult
from .records import Exchange
from .services import Services

__all__ = ["connect_backend", "read_response_head", "peer_ip", "MAX_EARLY_DATA"]

errlog = logging.getLogger("tunnel.error")

#: Bytes of early tunnel data a client may send while the backend handshake runs.
MAX_EARLY_DATA = 256 * 1024


def peer_ip(peer: PeerAddress) -> str:
    """The client's address as logs and X-Forwarded-For name it ("unix" for a unix socket)."""
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return "unix"


def connect_backend(
    engine: Services, scope: Scope, decision: RouteResult, head: RequestHead, ex: Exchange, client: Endpoint, front: FrontEnd
) -> Generator[Wait, None, tuple[Endpoint, Target, Optional[MemberState], Optional[BalancerState]]]:
    """Connect the route's backend, or a balancer member with failover (R46).

    Raises:
        ClientGone: the client left while the balancer's ``timeout=`` wait was on.
    """
    clock = time.monotonic
    rule = decision.rule
    if decision.balancer is None:
        target = decision.target
        assert target is not None  # routing: a rule has a target, a balancer, or is an exclusion
        ex.notes["backend"] = str(target)
        engine.check_worker(target)
        try:
            sock = yield from connect(
                target, clock() + scope.connect_timeout(rule), ssl_context=engine.backend_ssl(scope)
            )
        except ServiceUnavailable:
            engine.worker_failed(target, rule)
            raise
        return sock, target, None, None
    balancer = engine.balancer(decision.balancer)
    query = head.target.partition("?")[2]
    session = balancer.sticky_session_from(query, head.get("cookie"))
    sticky = session[1] if session is not None and session[1] else None
    tried: set[int] = set()
    attempts = balancer.attempts_allowed() + 1
    last: Optional[TunnelError] = None
    wait_until: Optional[float] = None
    for _ in range(attempts):
        while True:
            try:
                member, by_route = balancer.pick_routed(sticky_route=sticky, exclude=tried)
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
        ex.notes.update(balancer.environment(member, session, by_route))  # BALANCER_* (R87)
        mt: Target = member.member.target
        target = Target(mt.scheme, mt.host, mt.port, _join(mt.path, decision.backend_path), mt.unix_path)
        ex.notes["backend"] = str(target)
        ex.notes["balancer_member"] = str(mt)
        ex.notes["member"] = member.name  # %{member}n (R118)
        ex.notes["balancer"] = decision.balancer
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


def _watch_client(client: Endpoint, front: FrontEnd) -> bool:
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


def read_response_head(
    client: Endpoint, front: FrontEnd, backend: Endpoint, hs: BackendHandshake, deadline: float, watch_client: bool
) -> Generator[Wait, None, ResponseHead]:
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
                yield Wait(backend, EVENT_READ, deadline, also=also)
            except TimeoutError:
                raise GatewayTimeout("backend did not answer in time") from None
            if also is not None and not _watch_client(client, front):
                raise ClientGone() from None
            continue
        except OSError as exc:
            raise BadGateway("backend reset the connection before a response head", detail=str(exc)) from exc
        response = hs.feed(data)
        if response is not None:
            return response
