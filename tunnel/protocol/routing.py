"""ProxyPass / ProxyPassMatch matching, ``upgrade=`` and fallback: request target in,
routing decision out. Pure: no sockets, no clock, no logging.

Rules (docs/httpd-behaviour.md: R1-R3, R5, R9, R13, R15-R17, R49-R53, R57):

* **Canonical path** (`normalize_target`, R5/R52/R53). In httpd's order: the form of the
  target (``*`` and authority-form → 400; absolute-form is routed by its path only, its
  authority never contacted, R50); a raw control character or space in the path or the
  query → 403; a bad %-escape → 400; unreserved escapes (``%2e``, ``%7E``, any case)
  decoded; runs of ``/`` merged (MergeSlashes On) and dot-segments removed, going above
  the root → 400; then the other escapes decoded, ``%2F`` (AllowEncodedSlashes Off) and
  ``%00`` → 404. The path is decoded once, one character per byte (latin-1, as the
  request line was read), and every route uses this one form.
* **Prefix match** (mod_proxy.c: alias_match, `alias_match`). Any run of ``/`` in the
  prefix matches any run in the path; other characters compare exactly; the prefix's
  last segment must end at a segment boundary. So ``/chat/`` matches ``/chat/x`` but not
  ``/chat``; ``/chat`` matches ``/chat`` and ``/chat/x`` but **not** ``/chatroom`` (httpd
  2.2+ checks "last alias path component matched all the way").
* **Order** (R1): the scope's rules in order, first match wins; an exclusion (``!``)
  matching first ends routing with 404 ("excluded from proxying": httpd would serve it
  locally, tunnel has nothing local).
* **Backend path.** ProxyPass: the target's path + the re-encoded remainder (one ``/``
  dropped when both sides have one; like httpd, none added). ProxyPassMatch (R9):
  ``$0``-``$9`` in the target path are replaced by the re-encoded groups; a target path
  with no substitution gets the whole re-encoded path appended (httpd's strcmp() rule).
  Re-encoding keeps RFC 3986 pchar and ``/``, %-encodes every other byte. The query goes
  verbatim. ``nocanon`` forwards the raw remainder instead, unless the raw path matches
  differently, or the raw form holds a dot-segment (literal or %-encoded) or a
  character that must be encoded: then the canonical form (R1 tunnel line).
* **Upgrade** (R13 tunnel line, R16, R57). The client's Upgrade value is a token list;
  tokens compare exactly, ignoring case; the first one the route allows is selected.
  Allowed: no ``upgrade=``: ``websocket`` on ws/wss targets (a balancer: its first
  member's ``upgrade=``, else its scheme), nothing on http/https; a list: its tokens;
  ANY: any token but ``TLS`` or ``TLS/*``; NONE: every request is a WebSocket
  handshake, whatever the header says.
* **No token selected** (R2, R3, R15, R17, R49). A route that is not a WebSocket route
  (http/https target) forwards the request as plain HTTP. A WebSocket route (ws/wss or a
  ws/wss balancer) under ProxyWebsocketFallbackToProxyHttp On proxies it as plain HTTP
  to the same host and port (ws→http, wss→https), so it takes every request under its
  path; under Off, a request without Upgrade skips the route (R2) and the next rule is
  tried, and one with another Upgrade gets 426 (R15).
* **Location settings** (`effective_scope`): every `<Location>` whose path matches is
  applied over the scope, in httpd's merge order, before the rules are looked at; the
  result is the scope the request runs with.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Optional

from ..config.model import Member, ProxyRule, Scope, Target
from ..config.scopes import alias_match, effective_scope
from ..errors import BadRequest, Forbidden, MethodNotAllowed, NotFound, UpgradeRequired

__all__ = [
    "RouteResult",
    "normalize_target",
    "route",
    "reselect_upgrade",
    "alias_match",
    "effective_scope",
    "encode_path",
    "relays_upgrade",
    "why_plain",
]

#: Bytes kept as they are when a decoded path is re-encoded: RFC 3986 pchar and "/".
PATH_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/")
#: Unreserved characters: their escapes are decoded before dot-segments are removed.
UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
#: Absolute-form schemes routed by path (their authority is ignored, R50).
ABSOLUTE_FORM_SCHEMES = ("http", "https", "ws", "wss")
#: The token a NONE route forwards, and the default one of a ws/wss route.
WEBSOCKET = "websocket"

_ESCAPE_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ANY_ESCAPE_RE = re.compile(r"%([0-9A-Fa-f]{2})")
_ABSOLUTE_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)")
_SUBST_RE = re.compile(r"\$([0-9])")


@dataclass(frozen=True)
class RouteResult:
    """Where a request goes.

    Attributes:
        rule: the matched rule.
        scope: the effective scope for this request (`<Location>` settings applied).
        tunnel: True when the request is to be handled as an upgrade (tunnel) request.
        upgrade_token: the token to forward in ``Upgrade:`` when tunnel is True (the
            allowed token as configured, ``websocket`` by default and for NONE; for ANY
            as the client sent it), else None.
        target: the backend (scheme mapped ws→http, wss→https for a plain request on a
            WebSocket route); None when ``balancer`` is set.
        balancer: the balancer's name, or None.
        backend_path: the re-encoded path and ``?query`` for the backend request line
            (for a balancer, relative to each member's own path).
        local_path: the normalised, decoded path that was matched (for logs).
    """

    rule: ProxyRule
    scope: Scope
    tunnel: bool
    upgrade_token: Optional[str]
    target: Optional[Target]
    balancer: Optional[str]
    backend_path: str
    local_path: str


# -- the canonical path --------------------------------------------------------------------


def _remove_dot_segments(path: str) -> str:
    """Merge runs of "/" and resolve "." and ".." segments.

    Raises:
        BadRequest: a ".." would climb above the root.
    """
    segments = path.split("/")
    out: list[str] = []
    for i, segment in enumerate(segments[1:], start=1):
        last = i == len(segments) - 1
        if segment == "..":
            if not out:
                raise BadRequest("path goes above the root")
            out.pop()
            if last:
                out.append("")
        elif segment == ".":
            if last:
                out.append("")
        elif segment or last:
            out.append(segment)
    return "/" + "/".join(out)


_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")


def normalize_target(raw_target: str, *, allow_encoded_slashes: bool = False) -> tuple[str, str]:
    """Turn a raw request-target into the path every route matches (R5, R52, R53).

    Args:
        raw_target: the request line's target, as read (latin-1).
        allow_encoded_slashes: AllowEncodedSlashes On/NoDecode: ``%2F`` is decoded to
            "/" (and dot-segments it forms resolved again) instead of refused.

    Returns:
        (decoded normalised path, raw query without "?" or "").

    Raises:
        BadRequest: ``*`` or authority-form, a fragment, a bad %-escape, a path above
            the root (400).
        Forbidden: a control character or space in the path or the query (403).
        NotFound: ``%2F`` when not allowed, ``%00`` (404).
    """
    path, query, _ = _normalize(raw_target, allow_encoded_slashes)
    return path, query


def _normalize(raw_target: str, allow_encoded_slashes: bool) -> tuple[str, str, str]:
    """`normalize_target`, plus the raw path it came from."""
    raw_path, query = _split_target(raw_target)
    if "%" not in raw_path and "/." not in raw_path and "//" not in raw_path:
        return raw_path, query, raw_path  # nothing to decode or resolve: already normal
    if _ESCAPE_RE.search(raw_path):
        raise BadRequest("bad %-escape in path")
    path = _remove_dot_segments(_decode_unreserved(raw_path))
    escapes = {m.group(1).lower() for m in _ANY_ESCAPE_RE.finditer(path)}
    if "00" in escapes:
        raise NotFound("encoded NUL in path")
    if "2f" in escapes and not allow_encoded_slashes:
        raise NotFound("encoded slash in path")
    path = _ANY_ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 16)), path)
    if "2f" in escapes:
        path = _remove_dot_segments(path)
    return path, query, raw_path


def _split_target(raw_target: str) -> tuple[str, str]:
    """The raw path and query of a request-target (checks of R5 before any decoding).

    Raises:
        BadRequest: ``*``, authority-form or another scheme, a fragment.
        Forbidden: a control character or space.
    """
    if raw_target == "*":
        raise BadRequest("asterisk-form request target")
    target = raw_target
    if not target.startswith("/"):
        absolute = _ABSOLUTE_RE.match(target)
        if absolute is None or absolute.group(1).lower() not in ABSOLUTE_FORM_SCHEMES:
            raise BadRequest("request target is not a path")
        target = target[absolute.end() :]
        if not target.startswith("/"):
            target = "/" + target
    if "#" in target:
        raise BadRequest("fragment in request target")
    if _CONTROL_OR_SPACE.search(target):
        raise Forbidden("control character or space in request target")
    raw_path, _, query = target.partition("?")
    return raw_path, query


def _decode_unreserved(raw: str) -> str:
    """Decode the escapes of unreserved characters only (``%2e`` -> ".", ``%7E`` -> "~")."""

    def unescape(m: re.Match[str]) -> str:
        char = chr(int(m.group(1), 16))
        return char if char in UNRESERVED else m.group(0)

    return _ANY_ESCAPE_RE.sub(unescape, raw)


def encode_path(path: str) -> str:
    """Re-encode a decoded path: pchar and "/" kept, every other byte %-encoded.

    Args:
        path: one character per byte (code points below 256).

    Returns:
        The path as it may stand in a request line.
    """
    if _ALL_PATH_SAFE.fullmatch(path):
        return path  # most paths: nothing to encode
    return "".join(c if c in PATH_SAFE else f"%{ord(c) & 0xFF:02X}" for c in path)


#: A path of `PATH_SAFE` characters only (`encode_path` returns it as it is).
_ALL_PATH_SAFE = re.compile("[" + re.escape("".join(sorted(PATH_SAFE))) + "]*")


# -- matching ---------------------------------------------------------------------------------


def _join(base: str, remainder: str) -> str:
    if base.endswith("/") and remainder.startswith("/"):
        return base + remainder[1:]
    return base + remainder


def _has_dot_segment(raw: str) -> bool:
    return any(segment in (".", "..") for segment in _decode_unreserved(raw).split("/"))


def _raw_ok(raw: str) -> bool:
    """May a nocanon raw path be forwarded as it is?"""
    return all(c in PATH_SAFE or c == "%" for c in raw) and not _has_dot_segment(raw)


def _substitute(template: str, match: re.Match[str], encode: bool) -> str:
    """``$0``-``$9`` in ``template`` replaced by the groups (missing ones by "")."""

    def group(m: re.Match[str]) -> str:
        n = int(m.group(1))
        value = (match.group(n) if n <= match.re.groups else None) or ""
        return encode_path(value) if encode else value

    return _SUBST_RE.sub(group, template)


def _backend_path(rule: ProxyRule, path: str, raw_path: str, length: int, match: Optional[re.Match[str]]) -> str:
    """The backend path for a matched rule, without the query.

    ``length`` is what alias_match covered of ``path`` (prefix rules); ``match`` the
    regex match (ProxyPassMatch).
    """
    base = rule.target.path if rule.target is not None else rule.balancer_path
    if match is not None:
        canonical = _substitute(base, match, encode=True)
        if canonical == base:  # no substitution: the whole path is appended (httpd)
            canonical = _join(base, encode_path(path))
        raw_match = rule.regex.search(raw_path) if rule.nocanon and rule.regex is not None else None
        if raw_match is not None:
            raw = _substitute(base, raw_match, encode=False)
            raw = _join(base, raw_path) if raw == base else raw
            if _raw_ok(raw):
                return raw
        return canonical
    if rule.nocanon:
        # httpd: the raw form is used only if the prefix covers as much of it (else
        # "mismatch": the decoded form is used).
        raw_remainder = raw_path[length:]
        if alias_match(raw_path, rule.path) == length and _raw_ok(raw_remainder):
            return _join(base, raw_remainder)
    return _join(base, encode_path(path[length:]))


# -- upgrade tokens ---------------------------------------------------------------------------


def _offered(upgrade_header: Optional[str]) -> list[str]:
    if upgrade_header is None:
        return []
    return [t.strip() for t in upgrade_header.split(",") if t.strip()]


def _is_tls(token: str) -> bool:
    return token.partition("/")[0].strip().lower() == "tls"


def _is_websocket_route(rule: ProxyRule) -> bool:
    if rule.target is not None:
        return rule.target.is_ws
    return rule.balancer_scheme in ("ws", "wss")


def _allowed(rule: ProxyRule) -> tuple[str, ...]:
    """The route's upgrade= (``("*",)``, ``("NONE",)`` or tokens); () for none."""
    upgrade = rule.upgrade
    if upgrade is None and rule.balancer is not None:
        upgrade = rule.balancer_upgrade
    if upgrade is None:
        return (WEBSOCKET,) if _is_websocket_route(rule) else ()
    return upgrade


def _select(allowed: tuple[str, ...], offered: list[str]) -> Optional[str]:
    """The first offered token the route allows, spelled as configured (ANY: as sent)."""
    for token in offered:
        if _is_tls(token):
            continue  # R57: never an in-band TLS upgrade
        if allowed == ("*",):
            return token
        for candidate in allowed:
            if candidate.lower() == token.lower():
                return candidate
    return None


def relays_upgrade(rule: ProxyRule, value: str, *, status: int, member: Optional[Member] = None) -> bool:
    """Does a relayed non-101 answer keep the backend's ``Upgrade: value`` (R101)?

    A 426 always does (RFC 9110 §15.5.22: the client needs it to know what to upgrade
    to). Any other status, as mod_proxy_http: when the worker could upgrade to that
    token, i.e. its ``upgrade=`` (a balancer member's own, else the route's) names it
    or is ANY (``*``), or, without ``upgrade=``, the value is ``websocket`` on a ws/wss
    worker. The client then gets ``Connection: Upgrade`` with it.
    """
    if status == 426:
        return True
    value = value.strip()
    if member is not None:
        keys, ws = member.upgrade, member.target.is_ws
    else:
        keys = rule.upgrade if rule.upgrade is not None or rule.balancer is None else rule.balancer_upgrade
        ws = _is_websocket_route(rule)
    if keys is None:
        return ws and value.lower() == WEBSOCKET
    return keys == ("*",) or any(k.lower() == value.lower() for k in keys)


def why_plain(rule: ProxyRule, upgrade_header: str) -> str:
    """Why a request that offers ``Upgrade: upgrade_header`` goes as plain HTTP (for
    the debug line of R102)."""
    offered = _offered(upgrade_header)
    if offered and all(_is_tls(t) for t in offered):
        return "a TLS upgrade is never tunnelled (R57)"
    allowed = _allowed(rule)
    if not allowed:
        return "the route has no upgrade= and is not a ws:// or wss:// route"
    if _is_websocket_route(rule):
        return f"no offered token is one the WebSocket route allows ({', '.join(allowed)}); ProxyWebsocketFallbackToProxyHttp On"
    return f"no offered token is in the route's upgrade={','.join(allowed)}"


def _plain_target(target: Optional[Target]) -> Optional[Target]:
    """ws→http, wss→https for a plain request on a WebSocket route (R3)."""
    if target is None or not target.is_ws:
        return target
    return dataclasses.replace(target, scheme="https" if target.tls else "http")


def _upgrade_required(rule: ProxyRule, upgrade_header: Optional[str]) -> UpgradeRequired:
    """The 426 of the wstunnel path (R15)."""
    configured = rule.upgrade or rule.balancer_upgrade or ()
    shown = ", ".join(t for t in configured if t != "*") or "WebSocket"
    return UpgradeRequired(
        "upgrade not allowed on this route",
        detail=f"Upgrade: {upgrade_header} on {rule.where}",
        headers=[("Connection", "Upgrade"), ("Upgrade", shown)],
    )


def reselect_upgrade(decision: RouteResult, upgrade_header: Optional[str]) -> RouteResult:
    """The upgrade decision taken again with the Upgrade header as RequestHeader left it
    (R81): mod_proxy reads it when it builds the backend request, after the fixups,
    while the route was chosen with the client's.

    Raises:
        UpgradeRequired: under ProxyWebsocketFallbackToProxyHttp Off, a WebSocket route
            whose Upgrade now offers nothing it allows (the wstunnel handler's 426).
    """
    rule = decision.rule
    allowed = _allowed(rule)
    if allowed == ("NONE",):
        return decision
    token = _select(allowed, _offered(upgrade_header))
    if token is not None:
        if decision.tunnel and token == decision.upgrade_token:
            return decision
        return dataclasses.replace(decision, tunnel=True, upgrade_token=token, target=rule.target)
    if not decision.tunnel:
        return decision
    if _is_websocket_route(rule) and not decision.scope.fallback_to_proxy_http:
        raise _upgrade_required(rule, upgrade_header)
    target = _plain_target(rule.target) if _is_websocket_route(rule) else rule.target
    return dataclasses.replace(decision, tunnel=False, upgrade_token=None, target=target)


# -- route -------------------------------------------------------------------------------------


def route(scope: Scope, raw_target: str, upgrade_header: Optional[str], *, method: str = "GET") -> RouteResult:
    """Pick the rule and backend for a request.

    Args:
        scope: the scope the request's vhost selected.
        raw_target: the request-target as read.
        upgrade_header: the client's Upgrade value (duplicate lines joined with ", "),
            or None when absent.
        method: the request method (CONNECT is refused: no forward proxy, R50).

    Returns:
        The decision; see `RouteResult`.

    Raises:
        MethodNotAllowed: CONNECT (405).
        BadRequest, Forbidden, NotFound: from `normalize_target`.
        NotFound: no rule takes the request, or an exclusion (``!``) matches first.
        UpgradeRequired: under ProxyWebsocketFallbackToProxyHttp Off, a WebSocket route
            matched and the Upgrade header offers nothing it allows (426 with
            ``Connection: Upgrade`` and ``Upgrade: <allowed tokens or WebSocket>``, R15).
    """
    if method.upper() == "CONNECT":
        raise MethodNotAllowed("CONNECT is not supported (no forward proxy)")
    path, query, raw_path = _normalize(raw_target, scope.limits.allow_encoded_slashes)
    effective = effective_scope(scope, path)
    offered = _offered(upgrade_header)
    suffix = f"?{query}" if query else ""
    for rule in scope.rules:
        match = rule.regex.search(path) if rule.regex is not None else None
        length = 0 if rule.is_regex else alias_match(path, rule.path)
        if not (match or length):
            continue
        if rule.exclude:
            raise NotFound("excluded from proxying", detail=f"{path} by {rule.where}")
        allowed = _allowed(rule)
        tunnel = True
        target = rule.target
        if allowed == ("NONE",):
            token: Optional[str] = WEBSOCKET
        else:
            token = _select(allowed, offered)
        if token is None:
            tunnel = False
            if _is_websocket_route(rule):
                if not effective.fallback_to_proxy_http:
                    if not offered:
                        continue  # R2: path W's check_trans veto
                    raise _upgrade_required(rule, upgrade_header)
                target = _plain_target(target)
        backend = _backend_path(rule, path, raw_path, length, match)
        return RouteResult(
            rule=rule,
            scope=effective,
            tunnel=tunnel,
            upgrade_token=token,
            target=target,
            balancer=rule.balancer,
            backend_path=backend + suffix,
            local_path=path,
        )
    raise NotFound("no route for this path", detail=path)
