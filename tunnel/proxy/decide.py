"""Where a request goes and whether it may: the decision steps a live request and
``tunnel explain`` share, in httpd's phase order.

1. URI translation: the server's (or vhost's) RewriteRules, then ProxyPass routing
   (`route`, R63);
2. access control: Require, before anything else is done for the request (`check_access`,
   R70);
3. fixups: a `<Location>`'s own RewriteRules (`per_directory`, R79), which may send the
   request to another backend ([P]), answer it (redirect, 403, 410) or start it again on
   a new path (an internal redirect: every step runs again);
4. the upgrade checks (`check_upgrade`).

Nothing here touches a socket: ``local_ip`` is asked for only when `Require local`
needs it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Optional, Union
from urllib.parse import unquote

from ..config.model import Location, Scope
from ..config.scopes import location_matches
from ..errors import Forbidden, Gone, InternalServerError, NotFound, Redirect
from ..protocol import rewrite, routing
from ..protocol.access import AccessRequest, backend_url, effective_access, is_granted
from ..protocol.heads import RequestHead
from ..protocol.routing import RouteResult
from ..protocol.upgrade import validate_upgrade
from . import aliasing, envphase
from .failover import peer_ip
from .records import Exchange
from .services import Services

__all__ = ["decide", "translate", "route", "check_access", "check_upgrade", "MAX_INTERNAL_REDIRECTS"]

#: httpd's LimitInternalRecursion default: internal redirects one request may take.
MAX_INTERNAL_REDIRECTS = 10

#: What r->filename holds for a path no ProxyPass takes (httpd's default DocumentRoot
#: as Debian builds it); a `<Location>`'s rules see it (R79).
DEFAULT_DOCUMENT_ROOT = "/var/www/html"


def check_upgrade(decision: RouteResult, head: RequestHead) -> tuple[Optional[str], Optional[str]]:
    """The Upgrade token to forward and the client's Sec-WebSocket-Key (None, None for a
    plain request).

    Raises:
        BadRequest, UpgradeRequired: the upgrade request is not valid (R12).
    """
    if not decision.tunnel:
        return None, None
    rule = decision.rule
    token = decision.upgrade_token
    # upgrade=NONE on the route, or on a balancer's first member (as routing reads it):
    # every request is a handshake, without the Upgrade/Connection checks (R16).
    upgrade = rule.upgrade if rule.upgrade is not None or rule.balancer is None else rule.balancer_upgrade
    return token, validate_upgrade(head, token or "websocket", none_mode=upgrade == ("NONE",))


def _check_path_access(
    scope: Scope, path: str, url: Optional[str], head: RequestHead, ex: Exchange, local_ip: Callable[[], str]
) -> None:
    if scope.access is None and not scope.proxy_access and all(loc.access is None for loc in scope.locations):
        return  # no Require anywhere for this host: granted
    rules = effective_access(scope, path, url)
    if rules is None:
        return
    request = AccessRequest(
        remote=peer_ip(ex.peer),
        local=local_ip(),  # a system call: only when rules are in force
        method=head.method,
        path=path,
        query=head.target.partition("?")[2],
        headers=tuple(head.headers),
        https=ex.listener is not None and ex.listener.tls,
        env=ex.notes,
    )
    if not is_granted(rules, request):
        raise Forbidden("access denied by the server configuration", detail=f"{path} -> {url}" if url else path)


def check_access(
    scope: Scope, decision: RouteResult, head: RequestHead, ex: Exchange, local_ip: Callable[[], str]
) -> None:
    """Raise Forbidden unless the access rules in force grant the request (R70).
    ``local_ip`` gives the address the client connected to (`Require local`)."""
    if scope.access is None and not scope.proxy_access and all(loc.access is None for loc in scope.locations):
        return  # no Require anywhere for this host: granted (and no URL to work out)
    _check_path_access(scope, decision.local_path, backend_url(decision), head, ex, local_ip)


def _request(engine: Services, scope: Scope, head: RequestHead, ex: Exchange) -> rewrite.RewriteRequest:
    listener = ex.listener
    return rewrite.RewriteRequest(
        head.method,
        head.target,
        head.headers,
        head.http_version,
        remote_addr=peer_ip(ex.peer),
        remote_port=ex.peer[1] if isinstance(ex.peer[1], int) else 0,
        server_port=listener.port if listener is not None else 0,
        https=listener is not None and listener.tls,
        server_name=scope.server_name or engine.server_name,
        canonical=scope.use_canonical_name,
        configured_port=scope.server_port,
        configured_scheme=scope.server_scheme,
        env=ex.notes,
    )


def _apply(
    engine: Services, scope: Scope, head: RequestHead, ex: Exchange, outcome: rewrite.Outcome
) -> Optional[RouteResult]:
    """A rewrite outcome's consequence: raised answers, a [P] route, or None (go on)."""
    ex.notes.update(outcome.env)
    rule = outcome.rule
    where = f"RewriteRule at {rule.where}" if rule is not None else ""
    if rule is not None:
        ex.notes["rewrite"] = where
    action = outcome.action
    if action is rewrite.Action.FORBIDDEN:
        raise Forbidden("forbidden", detail=where)
    if action is rewrite.Action.GONE:
        raise Gone("gone", detail=where)
    if action is rewrite.Action.REDIRECT:
        raise Redirect(outcome.status, outcome.target)
    if action is rewrite.Action.PROXY and rule is not None:
        one_off, target = rewrite.proxy_route(outcome.target, rule, engine.config.balancers)
        members = engine.config.balancers[one_off.balancer].members if one_off.balancer else ()
        tls = (one_off.target is not None and one_off.target.tls) or any(m.target.tls for m in members)
        if tls and not scope.proxy_tls.engine:
            raise InternalServerError("proxy TLS is off", detail=f"{outcome.target} needs SSLProxyEngine On ({where})")
        return rewrite.route_proxy(scope, one_off, target, head.target, head.get("upgrade"), head.method)
    return None


def translate(
    engine: Services, scope: Scope, head: RequestHead, ex: Exchange, trace: Optional[list[str]] = None
) -> Union[RouteResult, str]:
    """mod_rewrite's URI translation (it runs before mod_proxy's, R63): the route of a
    [P] rule, else the (rewritten) request-target ProxyPass routing is to see.
    ``trace`` gets a line per rewrite rule and condition tried (``tunnel explain``)."""
    if scope.rewrite_engine and scope.rewrite_rules:
        outcome = rewrite.evaluate(scope, _request(engine, scope, head, ex), trace)
        proxied = _apply(engine, scope, head, ex, outcome)
        if proxied is not None:
            return proxied
        if outcome.action is rewrite.Action.PATH:
            return outcome.target
    return head.target


def route(
    engine: Services, scope: Scope, head: RequestHead, ex: Exchange, trace: Optional[list[str]] = None
) -> RouteResult:
    """The route: a [P] rule's, or ProxyPass routing of the (rewritten) target.

    Raises:
        NotFound: no ProxyPass takes the path (and no rule proxies it).
    """
    routed = translate(engine, scope, head, ex, trace)
    if isinstance(routed, str):
        return routing.route(scope, routed, head.get("upgrade"), method=head.method)
    return routed


def _directory_rules(scope: Scope, path: str) -> Optional[Location]:
    """The `<Location>` whose rules run for ``path``: the last one merged (httpd's
    per-directory merge: a later matching block's rules replace an earlier one's)."""
    found: Optional[Location] = None
    for location in scope.locations:
        if location_matches(location, path):
            found = location
    return found if found is not None and found.rewrite_rules else None


def _per_directory(
    engine: Services,
    scope: Scope,
    effective: Scope,
    location: Location,
    subject: str,
    head: RequestHead,
    ex: Exchange,
    trace: Optional[list[str]],
) -> Union[RouteResult, RequestHead, None]:
    """A `<Location>`'s rules (R79): a [P] route, the head of an internal redirect, or
    None (nothing changed). Answers (redirect, 403, 410) are raised."""
    perdir = rewrite.PerDir(
        location.rewrite_rules,
        subject,
        directory="" if location.is_regex else location.path.rstrip("/") + "/",
        base=location.rewrite_base,
        document_root=scope.document_root or DEFAULT_DOCUMENT_ROOT,
    )
    if trace is not None:
        trace.append(f"<Location {location.path}> at {location.file}:{location.line}: its RewriteRules see {subject!r}")
    outcome = rewrite.evaluate(effective, _request(engine, effective, head, ex), trace, perdir=perdir)
    proxied = _apply(engine, effective, head, ex, outcome)
    if proxied is not None:
        return proxied
    if outcome.action is not rewrite.Action.PATH:
        return None
    # An internal redirect: the request starts again on the new path (R79).
    if trace is not None:
        trace.append(f"internal redirect to {outcome.target}")
    return dataclasses.replace(head, target=outcome.target)


def _last_checks(
    engine: Services, decision: RouteResult, head: RequestHead, ex: Exchange, path: str, query: str
) -> tuple[RouteResult, RequestHead]:
    """mod_alias's fixup (`<Location>` Redirect lines, after access control, R94) and
    mod_proxy's TraceEnable check."""
    if any(loc.redirects for loc in decision.scope.locations):
        aliasing.location_redirect(decision.scope, path, query, head, ex.listener, engine.server_name)
    aliasing.check_trace(decision.scope, head)
    return decision, head


def decide(
    engine: Services,
    scope: Scope,
    head: RequestHead,
    ex: Exchange,
    local_ip: Callable[[], str],
    trace: Optional[list[str]] = None,
) -> tuple[RouteResult, RequestHead]:
    """Route the request, check access, run the `<Location>` rules, in httpd's order.

    Returns:
        The route and the request head it is for (a new one after an internal redirect).

    Raises:
        TunnelError: the answer (404, 403, a redirect, 500 after too many internal
            redirects...).
    """
    for _ in range(MAX_INTERNAL_REDIRECTS + 1):
        routed = translate(engine, scope, head, ex, trace)
        decision: Optional[RouteResult] = routed if not isinstance(routed, str) else None
        query = head.target.partition("?")[2]
        if isinstance(routed, str):
            try:
                decision = routing.route(scope, routed, head.get("upgrade"), method=head.method)
            except NotFound as not_found:
                # No ProxyPass takes the path: mod_alias's translation (R94); then, as
                # for a file httpd would serve, access control and the fixups.
                aliasing.server_redirect(scope, routed, head, ex.listener, engine.server_name)
                parts = aliasing.normalized(scope, head.target)
                if parts is None:
                    raise
                path = parts[0]
                location = _directory_rules(scope, path)
                if location is None and not any(loc.redirects for loc in scope.locations):
                    raise
                envphase.header_parser(scope, path, head, ex, local_ip)  # <Location> SetEnvIf (R84)
                _check_path_access(scope, path, None, head, ex, local_ip)
                effective = routing.effective_scope(scope, path)
                if location is not None and effective.rewrite_engine:
                    subject = (scope.document_root or DEFAULT_DOCUMENT_ROOT).rstrip("/") + path
                    done = _per_directory(engine, scope, effective, location, subject, head, ex, trace)
                    if isinstance(done, RouteResult):
                        return _last_checks(engine, done, head, ex, path, query)
                    if done is not None:
                        head = done
                        continue
                aliasing.location_redirect(scope, path, query, head, ex.listener, engine.server_name)
                raise not_found from None
        assert decision is not None
        envphase.header_parser(scope, decision.local_path, head, ex, local_ip)  # <Location> SetEnvIf (R84)
        check_access(scope, decision, head, ex, local_ip)  # before anything else (R70)
        location = _directory_rules(scope, decision.local_path)
        if location is not None and decision.scope.rewrite_engine:
            subject = "proxy:" + unquote(backend_url(decision))
            done = _per_directory(engine, scope, decision.scope, location, subject, head, ex, trace)
            if isinstance(done, RouteResult):
                decision = done
            elif done is not None:
                head = done
                continue
        return _last_checks(engine, decision, head, ex, decision.local_path, query)
    raise InternalServerError(
        "too many internal redirects", detail=f"more than {MAX_INTERNAL_REDIRECTS} (LimitInternalRecursion)"
    )
