"""mod_alias's redirects and the server's own URL. Pure: no sockets, no clock.

* **The server's name and port** (`server_name_port`, httpd's ap_get_server_name and
  ap_get_server_port, R95). UseCanonicalName Off (the default): the Host header's name
  and port, ServerName's port when the Host names none, then the scheme's default;
  without a Host, ServerName (or the machine's name). On: ServerName and its port,
  else the scheme's default port; the Host header is not looked at.
* **Self URLs** (`self_url`, ap_construct_url): ``https`` on a TLS connection, else the
  ServerName's scheme, else ``http``; the port left out when it is the scheme's default.
* **Redirects** (`find_redirect`, R94): a prefix ``Redirect`` matches as a ProxyPass
  path does (segment-aware, slash runs merged) against the decoded path; the rest of
  the path is %-encoded and appended to the target; ``RedirectMatch`` substitutes
  ``$0``-``$9`` (and ``&``) and %-encodes the result's path, keeping its query and
  fragment as written. A target without ``?`` gets the request's query. A target that
  is a path becomes a self URL.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from ..config.model import AliasRedirect, Location, Scope
from ..config.scopes import alias_match, location_matches
from .routing import encode_path

__all__ = ["Redirected", "server_name_port", "self_url", "find_redirect", "location_redirects"]

_AUTHORITY_RE = re.compile(r"(\[[^\]]*\]|[^:]*)(?::([0-9]{1,5}))?")
_SUBST_RE = re.compile(r"\\([\\$&])|\$([0-9])|&")
_URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


@dataclass(frozen=True)
class Redirected:
    """A redirect's answer: its status and Location (None for a non-3xx status)."""

    status: int
    location: Optional[str]
    rule: AliasRedirect


def server_name_port(scope: Scope, host_header: str, https: bool, fallback_name: str, local_port: int = 0) -> tuple[str, int]:
    """SERVER_NAME and SERVER_PORT for a request (module doc).

    Args:
        scope: the request's scope (ServerName, its port, UseCanonicalName).
        host_header: the Host header ("" when none).
        https: the connection is TLS.
        fallback_name: the name when no ServerName is set (the machine's).
        local_port: the listener's port, used without a Host header and ServerName port.
    """
    default = 443 if https else 80
    name = scope.server_name or fallback_name
    if scope.use_canonical_name:
        return name, scope.server_port or default
    if host_header:
        m = _AUTHORITY_RE.fullmatch(host_header.strip())
        if m is not None and m.group(1):
            return m.group(1).lower(), int(m.group(2)) if m.group(2) else scope.server_port or default
    return name, scope.server_port or local_port or default


def self_url(scope: Scope, host_header: str, https: bool, fallback_name: str, local_port: int = 0) -> str:
    """``scheme://name[:port]`` of this server for a request (ap_construct_url)."""
    scheme = "https" if https else scope.server_scheme or "http"
    name, port = server_name_port(scope, host_header, https, fallback_name, local_port)
    if ":" in name and not name.startswith("["):
        name = f"[{name}]"
    default = 443 if scheme == "https" else 80
    return f"{scheme}://{name}" if port == default else f"{scheme}://{name}:{port}"


def _substitute(template: str, match: re.Match[str]) -> str:
    """ap_pregsub: ``$N`` and ``&`` give the groups, a backslash escapes them."""

    def group(m: re.Match[str]) -> str:
        if m.group(1):
            return m.group(1)
        n = int(m.group(2)) if m.group(2) else 0
        return (match.group(n) or "") if n <= (match.re.groups or 0) else ""

    return _SUBST_RE.sub(group, template)


def _escape_url(url: str) -> str:
    """A substituted target with its path %-encoded, the query and fragment kept."""
    rest, hash_, fragment = url.partition("#")
    base, qmark, query = rest.partition("?")
    m = re.match(r"([A-Za-z][A-Za-z0-9+.-]*://[^/]*)?(.*)", base)
    assert m is not None
    return (m.group(1) or "") + encode_path(m.group(2)) + (qmark + query) + (hash_ + fragment)


def _target(rule: AliasRedirect, path: str) -> Optional[str]:
    """The rule's target for ``path``, "" for a match without URL, None for no match."""
    if rule.regex is not None:
        m = rule.regex.search(path)
        if m is None:
            return None
        return _escape_url(_substitute(rule.url, m)) if rule.url is not None else ""
    if not rule.path:  # a <Location>'s one-argument form: its path matched already
        return _escape_url(rule.url) if rule.url is not None else ""
    length = alias_match(path, rule.path)
    if not length:
        return None
    return (rule.url or "") + encode_path(path[length:]) if rule.url is not None else ""


def find_redirect(
    redirects: Sequence[AliasRedirect], path: str, query: str, base: str
) -> Optional[Redirected]:
    """The first of ``redirects`` that matches ``path``, as its answer.

    Args:
        redirects: in the order httpd tries them.
        path: the decoded, normalised path.
        query: the request's query ("" when none).
        base: `self_url`, for a target that is a path.
    """
    for rule in redirects:
        found = _target(rule, path)
        if found is None:
            continue
        if not 300 <= rule.status <= 399:
            return Redirected(rule.status, None, rule)
        if found.startswith("/"):
            found = base + found
        if not _URL_RE.match(found):
            return Redirected(500, None, rule)  # not an absolute URL or a path (httpd: 500)
        if query and "?" not in found:
            found += f"?{query}"
        return Redirected(rule.status, found, rule)
    return None


def location_redirects(locations: Sequence[Location], path: str) -> list[AliasRedirect]:
    """The redirects of the `<Location>` blocks matching ``path``, in the order httpd's
    fixup tries them: each merged block's own before those merged earlier, and the
    last one-argument form first of all."""
    own: Optional[AliasRedirect] = None
    listed: list[AliasRedirect] = []
    for location in locations:
        if not location.redirects or not location_matches(location, path):
            continue
        for rule in location.redirects:
            if not rule.path:
                own = rule
        listed = [r for r in location.redirects if r.path] + listed
    return ([own] if own is not None else []) + listed
