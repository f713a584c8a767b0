"""mod_alias's redirects and TraceEnable, where httpd's hooks put them (R94).

httpd's URI translation runs mod_rewrite first, then mod_proxy (ProxyPass), then
mod_alias: a server or vhost ``Redirect`` is tried only when no ProxyPass takes the
path (none matches, or an exclusion ``!`` does), and before the access checks.
``Redirect`` lines inside `<Location>` are mod_alias's fixup, which runs for every
request after the access checks, proxied or not: they win over a ProxyPass, and a
WebSocket handshake is redirected like any request. TraceEnable is mod_proxy's check,
after both.
"""

from __future__ import annotations

from typing import Optional

from ..config.model import Listener, Scope
from ..errors import BadRequest, ConfiguredStatus, Forbidden, NotFound, Redirect
from ..protocol import alias, routing
from ..protocol.heads import RequestHead
from ..protocol.responses import phrase

__all__ = ["base_url", "server_redirect", "location_redirect", "check_trace", "normalized"]


def base_url(scope: Scope, head: RequestHead, listener: Optional[Listener], fallback_name: str) -> str:
    """This server's ``scheme://name[:port]`` for the request (UseCanonicalName, R95)."""
    https = listener is not None and listener.tls
    return alias.self_url(scope, head.get("host") or "", https, fallback_name, listener.port if listener else 0)


def normalized(scope: Scope, target: str) -> Optional[tuple[str, str]]:
    """(decoded path, query) of a request-target, or None when routing refuses it."""
    try:
        return routing.normalize_target(target, allow_encoded_slashes=scope.limits.allow_encoded_slashes)
    except (BadRequest, Forbidden, NotFound):
        return None


def _raise(found: Optional[alias.Redirected]) -> None:
    if found is None:
        return
    where = f"Redirect at {found.rule.where}"
    if found.location is not None:
        raise Redirect(found.status, found.location)
    if found.status == 500:
        raise ConfiguredStatus(500, "Internal Server Error", detail=f"{where}: the target is not a URL")
    raise ConfiguredStatus(found.status, phrase(found.status), detail=where)


def server_redirect(scope: Scope, target: str, head: RequestHead, listener: Optional[Listener], fallback_name: str) -> None:
    """Raise the answer of the first server/vhost Redirect matching ``target`` (the
    path ProxyPass did not take), if any."""
    if not scope.redirects:
        return
    parts = normalized(scope, target)
    if parts is not None:
        _raise(alias.find_redirect(scope.redirects, parts[0], parts[1], base_url(scope, head, listener, fallback_name)))


def location_redirect(
    scope: Scope, path: str, query: str, head: RequestHead, listener: Optional[Listener], fallback_name: str
) -> None:
    """Raise the answer of the `<Location>` Redirect lines matching ``path``, if any."""
    if not any(loc.redirects for loc in scope.locations):
        return
    rules = alias.location_redirects(scope.locations, path)
    if rules:
        _raise(alias.find_redirect(rules, path, query, base_url(scope, head, listener, fallback_name)))


def check_trace(scope: Scope, head: RequestHead) -> None:
    """mod_proxy's TraceEnable check: Off refuses TRACE (405); On (the default)
    refuses a TRACE with a body (413); Extended forwards it."""
    if head.method != "TRACE" or scope.trace_enable == "extended":
        return
    if scope.trace_enable == "off":
        raise ConfiguredStatus(405, "TRACE forbidden by server configuration", detail="TraceEnable Off")
    if head.get("content-length") not in (None, "0") or head.get("transfer-encoding") is not None:
        raise ConfiguredStatus(413, "TRACE with request body is not allowed", detail="TraceEnable On")
