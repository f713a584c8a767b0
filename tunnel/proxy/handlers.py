"""The handlers tunnel serves itself: ``SetHandler`` in a `<Location>` (R110).

httpd's order is kept: a request any ProxyPass (or a RewriteRule [P]) takes is proxied,
whatever the `<Location>` says (mod_proxy's handler runs first); one that no rule takes,
or that a ``ProxyPass /path !`` excludes, is served by the handler its `<Location>`
names. Access control (Require, R70) is decided first, on the client's path, as for a
proxied request; then the method (405 with ``Allow``), then the handler.

`HANDLERS` is the dispatch table: the name SetHandler gives (config.statushooks's
``LOCAL_HANDLERS`` lists the same names), the methods it takes, its function. A handler
is a generator task (it may ask sibling workers over their control sockets) that gets a
`Request` and returns an `Answer`; sending it is done here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Optional

import h11

from ..config.model import Scope
from ..config.scopes import effective_scope
from ..errors import BadRequest, Forbidden, MethodNotAllowed, NotFound
from ..io.loop import Wait
from ..io.streams import Endpoint
from ..protocol.access import AccessRequest, effective_access, is_granted
from ..protocol.heads import RequestHead
from ..protocol.request import FrontEnd
from ..protocol.responses import phrase
from ..protocol.routing import normalize_target
from . import balancer_manager, metrics, status
from .failover import peer_ip
from .forward import drain_request_body, read_request_body, send_to_client
from .handler_types import Answer, Request
from .records import Exchange
from .services import Services

__all__ = ["HANDLERS", "Handler", "Request", "Answer", "wanted", "serve", "serve_ready", "serve_live"]

#: The largest form body a handler reads (balancer-manager's POST).
MAX_FORM = 64 * 1024


HandlerFn = Callable[[Request], Generator[Wait, None, Answer]]


@dataclass(frozen=True)
class Handler:
    name: str
    methods: tuple[str, ...]
    serve: HandlerFn


def _probe(status: int, why: str) -> Answer:
    return Answer(status, "text/plain; charset=utf-8", f"{why}\n".encode())


def serve_ready(req: Request) -> Generator[Wait, None, Answer]:
    """``SetHandler ready``: 200 ``ready``, or 503 ``draining`` (``tunnel ctl drain``)
    or ``stopping`` (R150)."""
    yield from ()  # a generator task, as every handler; it never waits
    return _probe(*req.engine.probes.readiness())


def serve_live(req: Request) -> Generator[Wait, None, Answer]:
    """``SetHandler live``: 200 while the loop turns within ``TunnelLoopLagLimit`` (R151)."""
    yield from ()
    return _probe(*req.engine.probes.liveness())


#: SetHandler name -> handler. A new handler is one line here and its name in
#: config.statushooks.LOCAL_HANDLERS.
HANDLERS: dict[str, Handler] = {
    h.name: h
    for h in (
        Handler("server-status", ("GET", "HEAD"), status.serve),
        Handler("balancer-manager", ("GET", "HEAD", "POST"), balancer_manager.serve),
        Handler("metrics", ("GET", "HEAD"), metrics.serve),
        Handler("ready", ("GET", "HEAD"), serve_ready),
        Handler("live", ("GET", "HEAD"), serve_live),
    )
}


def _handler_for(scope: Scope, head: RequestHead) -> tuple[Optional[Handler], str, str]:
    path, query = normalize_target(head.target, allow_encoded_slashes=scope.limits.allow_encoded_slashes)
    name = effective_scope(scope, path).handler
    return (HANDLERS[name] if name else None), path, query


def wanted(scope: Scope, head: RequestHead) -> bool:
    """Whether a SetHandler applies to this request's path (no ProxyPass took it)."""
    if not scope.handler and not any(dict(loc.settings).get("handler") for loc in scope.locations):
        return False
    try:
        handler, _, _ = _handler_for(scope, head)
    except (BadRequest, NotFound, Forbidden):
        return False
    return handler is not None


def serve(
    engine: Services, sock: Endpoint, front: FrontEnd, scope: Scope, head: RequestHead, ex: Exchange, local_ip: Callable[[], str]
) -> Generator[Wait, None, bool]:
    """Serve one request with its handler. Returns True if the connection goes on.

    Raises:
        Forbidden: the access rules refuse it (R70).
        MethodNotAllowed: a method the handler does not take.
        BadRequest: a form body too long or malformed.
    """
    handler, path, query = _handler_for(scope, head)
    assert handler is not None  # wanted() said so
    ex.notes["handler"] = handler.name
    rules = effective_access(scope, path, None)
    if rules is not None:
        request = AccessRequest(
            remote=peer_ip(ex.peer),
            local=local_ip(),
            method=head.method,
            path=path,
            query=query,
            headers=tuple(head.headers),
            https=ex.listener is not None and ex.listener.tls,
        )
        if not is_granted(rules, request):
            raise Forbidden("access denied by the server configuration", detail=f"{path} ({handler.name})")
    if head.method not in handler.methods:
        raise MethodNotAllowed(
            f"{handler.name} takes {', '.join(handler.methods)}", headers=[("Allow", ", ".join(handler.methods))]
        )
    body = b""
    if head.method == "POST":
        body, wire = yield from read_request_body(sock, front, deadline=time.monotonic() + scope.timeout, limit=MAX_FORM)
        ex.bytes_in += wire
    answer = yield from handler.serve(Request(engine, head, ex, scope, path, query, body))
    return (yield from _send(sock, front, head, ex, answer))


def _send(sock: Endpoint, front: FrontEnd, head: RequestHead, ex: Exchange, answer: Answer) -> Generator[Wait, None, bool]:
    deadline = time.monotonic() + 30.0
    headers = [
        ("Content-Type", answer.content_type),
        ("Content-Length", str(len(answer.body))),
        ("Cache-Control", "no-store"),
        *answer.headers,
    ]
    if not head.keep_alive:
        headers.append(("Connection", "close"))
    ex.status = answer.status
    ex.response_headers = headers
    try:
        n = yield from send_to_client(sock, front, h11.Response(status_code=answer.status, headers=headers, reason=phrase(answer.status).encode()), deadline)
        if head.method != "HEAD":
            n += yield from send_to_client(sock, front, h11.Data(data=answer.body), deadline)
            ex.body_bytes = len(answer.body)
        n += yield from send_to_client(sock, front, h11.EndOfMessage(), deadline)
    except (OSError, TimeoutError):
        return False
    ex.bytes_out += n
    if front.conn.their_state is h11.SEND_BODY:
        return (yield from drain_request_body(sock, front, deadline=time.monotonic() + 5.0))
    return front.conn.our_state is h11.DONE and front.conn.their_state is h11.DONE
