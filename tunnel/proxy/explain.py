"""What the proxy would do with one request, step by step, without connecting anything
(``tunnel explain``, `Engine.explain`).

The request goes through the session's own steps (tunnel/proxy/session.py): the same
head parser, virtual-host choice, rewrite rules, routing, access rules and upgrade
checks, and the same code builds the request the backend would receive. Where the live
path would answer with an error, the explanation ends with that status and reason.
Nothing here opens a socket: a balancer's member is the one a fresh balancer would
elect now, and ``Require local`` reads the listener's address.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

from ..config.model import Listener, Scope, Target
from ..config.scopes import location_matches
from ..errors import Redirect, TunnelError
from ..io.streams import InetAddress
from ..protocol.access import backend_url, effective_access
from ..protocol.heads import RequestHead
from ..protocol.request import FrontEnd
from ..protocol.routing import RouteResult
from .decide import check_upgrade, decide, route
from .records import Exchange
from .services import Services
from .session import _forwarded_request

__all__ = ["Explanation", "explain", "request_head"]

#: Notes the session keeps for its own logs, not request environment variables.
_INTERNAL_NOTES = frozenset({"route", "backend", "rewrite"})


@dataclass
class Explanation:
    """The steps taken (one line each) and the outcome.

    Attributes:
        lines: what was decided, in order; indented lines detail the one above.
        status: the status the client would get from the proxy itself (an error, a
            redirect), or 0 when the request would reach a backend (whose answer the
            client then gets: a 101 for an accepted upgrade).
        backend_request: the request head the backend would receive, when it would
            receive one.
    """

    lines: list[str] = field(default_factory=list)
    status: int = 0
    backend_request: str = ""

    def __str__(self) -> str:
        return "\n".join(self.lines)


def _seconds(value: Optional[float]) -> str:
    if not value:
        return "none"
    return f"{value * 1000:g} ms" if value < 1 else f"{value:g} s"


def _answer(out: Explanation, exc: TunnelError) -> Explanation:
    out.status = exc.status
    detail = f" ({exc.detail})" if getattr(exc, "detail", None) else ""
    if isinstance(exc, Redirect):
        out.lines.append(f"answer: {exc.status} redirect to {exc.location}")
    else:
        out.lines.append(f"answer: {exc.status} {exc.reason}{detail}; no backend is contacted")
    return out


def _route_lines(decision: RouteResult, ex: Exchange) -> list[str]:
    rule = decision.rule
    if ex.notes.get("rewrite") == f"RewriteRule at {rule.where}":  # a [P]: its one-off rule
        lines = [f"route: the [P] of the RewriteRule at {rule.where}, for path {decision.local_path!r}"]
    else:
        kind = "ProxyPassMatch" if rule.is_regex else "ProxyPass"
        lines = [f"route: {kind} {rule.path} at {rule.where}, for path {decision.local_path!r}"]
    if decision.tunnel:
        lines.append(f"  handled as an upgrade: Upgrade {decision.upgrade_token} is forwarded")
    else:
        lines.append("  handled as plain HTTP (one request, Connection: close to the backend)")
    if decision.balancer is not None:
        lines.append(f"  backend: balancer://{decision.balancer}, request-target {decision.backend_path}")
    else:
        lines.append(f"  backend: {decision.target}, request-target {decision.backend_path}")
    return lines


def _member(services: Services, decision: RouteResult, head: RequestHead, out: Explanation) -> Optional[Target]:
    """The target a fresh balancer would pick (and its policy), or the route's."""
    if decision.balancer is None:
        return decision.target
    config = services.config
    spec = config.balancers[decision.balancer]
    state = services.balancer(decision.balancer)
    sticky = state.sticky_route_from(head.target.partition("?")[2], head.get("cookie"))
    out.lines.append(
        f"balancer://{spec.name} (defined at {spec.file}:{spec.line}): lbmethod={spec.lbmethod}"
        + (f", stickysession={'|'.join(spec.stickysession)}" if spec.stickysession else "")
        + (", nofailover=On" if spec.nofailover else "")
        + (f", timeout={_seconds(spec.timeout)}" if spec.timeout else "")
    )
    for member in state.members:
        m = member.member
        out.lines.append(
            f"  member {member.name} route={member.route or '-'} loadfactor={member.loadfactor}"
            + (f" status={''.join(sorted(m.status))}" if m.status else "")
            + (f" lbset={m.lbset}" if m.lbset else "")
        )
    if sticky is not None:
        out.lines.append(f"  sticky route from the request: {sticky!r}")
    chosen = state.pick(sticky_route=sticky)  # raises ServiceUnavailable when none is usable
    out.lines.append(f"  would elect {chosen.name} (with every member healthy; failover may try others)")
    return chosen.target


def explain(
    services: Services,
    raw_head: bytes,
    *,
    listener: Optional[Listener] = None,
    peer: InetAddress = ("127.0.0.1", 40000),
) -> Explanation:
    """Explain what the proxy would do with the request head ``raw_head``.

    Args:
        services: the engine (a configuration; nothing is started).
        raw_head: a request head as a client sends it, ending in an empty line.
        listener: the listener it arrives on (None: the configuration's first).
        peer: the client's address (``Require ip``, X-Forwarded-For, logs).
    """
    config = services.config
    if listener is None and config.listeners:
        listener = config.listeners[0]
    out = Explanation()
    if listener is not None:
        out.lines.append(f"listener: {listener.display}{' (TLS)' if listener.tls else ''} at {listener.file}:{listener.line}")
    front = FrontEnd(config.scope.limits)
    front.feed(raw_head)
    try:
        head = front.next_head()
    except TunnelError as exc:
        return _answer(out, exc)
    if head is None:
        out.lines.append("the request head is not complete (it must end with an empty line)")
        out.status = 400
        return out
    out.lines.append(f"request: {head.method} {head.target} HTTP/{head.http_version}")
    ex = Exchange(peer=peer, listener=listener)
    ex.head = head
    scope, vhost = config.vhost_for(listener, head.get("host"))
    if vhost is not None:
        out.lines.append(f"virtual host: {vhost.server_name or '(no ServerName)'} at {vhost.file}:{vhost.line}")
    else:
        out.lines.append("virtual host: none matches; the main server's configuration applies")
    trace: list[str] = []
    local = listener.host if listener is not None and listener.host else "127.0.0.1"
    try:
        decision, head = decide(services, scope, head, ex, lambda: local, trace)
    except TunnelError as exc:
        out.lines.extend(trace or ["mod_rewrite: no rules in force"])
        try:  # show where it was routed before the refusal, when it was
            routed = route(services, scope, head, Exchange(peer=peer, listener=listener))
        except TunnelError:
            pass
        else:
            _locations(out, scope, routed.local_path)
            out.lines.extend(_route_lines(routed, ex))
        return _answer(out, exc)
    out.lines.extend(trace or ["mod_rewrite: no rules in force"])
    _locations(out, scope, decision.local_path)
    out.lines.extend(_route_lines(decision, ex))
    applies = effective_access(scope, decision.local_path, backend_url(decision)) is not None
    out.lines.append("access: granted" + ("" if applies else " (no Require lines apply)"))
    scope = decision.scope
    try:
        token, key = check_upgrade(decision, head)
    except TunnelError as exc:
        return _answer(out, exc)
    if decision.tunnel:
        out.lines.append(f"upgrade checks: passed ({token})")
    try:
        target = _member(services, decision, head, out)
    except TunnelError as exc:
        return _answer(out, exc)
    assert target is not None
    hs = _forwarded_request(services, head, decision, scope, target, ex, token=token, key=key)
    request = hs.request_bytes(end=False).decode("latin-1")
    out.backend_request = request
    out.lines.append(f"the backend ({target}) would receive:")
    out.lines.extend(f"  {line}" for line in request.rstrip("\r\n").split("\r\n"))
    _timeouts(out, scope, decision)
    strategy = services.strategy_for(scope)
    if decision.tunnel:
        thread = " (a sync pool thread is reserved before the backend)" if services.needs_thread(scope, strategy) else ""
        out.lines.append(f"strategy: {strategy.value}{thread}")
    if ex.notes:
        shown = {k: v for k, v in ex.notes.items() if k not in _INTERNAL_NOTES}
        if shown:
            out.lines.append("environment: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    return out


def _locations(out: Explanation, scope: Scope, path: str) -> None:
    matched = [loc for loc in scope.locations if location_matches(loc, path)]
    if not matched:
        out.lines.append("<Location>: none matches")
    for loc in matched:
        tag = "LocationMatch" if loc.is_regex else "Location"
        out.lines.append(f"<{tag} {loc.path}> at {loc.file}:{loc.line} applies")


def _timeouts(out: Explanation, scope: Scope, decision: RouteResult) -> None:
    rule = decision.rule
    parts = [
        f"connect {_seconds(scope.connect_timeout(rule))}",
        f"backend answer {_seconds(scope.head_timeout(rule))}",
    ]
    if decision.tunnel:
        parts.append(f"tunnel idle {_seconds(scope.websocket_idle_timeout)}")
        parts.append(f"async delay {_seconds(scope.websocket_async_delay)}")
    parts.append(f"client I/O {_seconds(scope.timeout)}")
    out.lines.append("timeouts: " + ", ".join(parts))


def request_head(line: str, headers: Sequence[str]) -> bytes:
    """A request head from a request line and ``Name: value`` strings (the CLI's)."""
    words = line.split()
    if len(words) == 2:
        words.append("HTTP/1.1")  # "GET /path" is taken as HTTP/1.1
    text = " ".join(words) + "\r\n" + "".join(f"{h}\r\n" for h in headers) + "\r\n"
    return text.encode("latin-1")
