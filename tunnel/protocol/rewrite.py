"""mod_rewrite's per-server rules, evaluated: a request in, an `Outcome` out. Pure.

How the rules run (docs/httpd-behaviour.md, R63-R68):

* Only when the scope has ``RewriteEngine On``; the rules are the scope's own (a vhost
  gets the main server's only under `RewriteOptions Inherit`/`InheritBefore`).
* Each rule's pattern is searched in the current URL-path: at first the request's
  decoded, normalised path (the one ProxyPass routing matches, starting with "/"), then
  whatever the rules before made of it. ``!pattern`` matches when the regex does not
  (and leaves no ``$N``). Then its conds run in order (``[OR]`` joins a cond with the
  next); all must hold. ``$N`` are the rule's groups, ``%N`` the groups of the last
  cond whose regex matched.
* A matching rule sets its ``E=`` variables, then: ``[F]`` → forbidden, ``[G]`` → gone
  (both stop); substitution ``-`` keeps the path; a path replaces it; an absolute URL
  with ``[P]`` → proxy (stops); one naming this host (the Host header or ServerName) is
  reduced to its path; any other → redirect (302, as httpd's implicit redirect).
  ``[R]`` marks the result a redirect. ``L``/``END`` stop.
* The query: a substitution with "?" replaces the request's query (``[QSA]``: the new
  one, "&", the old one); without "?" the old one stays, unless ``[QSD]``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

from ..config.model import Balancer, ProxyRule, RewriteCond, RewriteRule, Scope
from ..config.values import BadDirective, parse_url
from ..errors import BadRequest, InternalServerError, UpgradeRequired
from .routing import RouteResult, effective_scope, encode_path, normalize_target, route

__all__ = ["PerDir", "Action", "Outcome", "RewriteRequest", "evaluate", "proxy_route", "route_proxy"]

_TEMPLATE_RE = re.compile(r"\\([$%\\])|\$([0-9])|%([0-9])|%\{([^}]*)\}")
_ABSOLUTE_RE = re.compile(r"(?i)([a-z][a-z0-9+.-]*)://([^/?#]*)(.*)", re.S)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_SAFE_URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/%")


def _encode_query(query: str) -> str:
    """A query as it may stand in a request line: "%" kept, other unsafe bytes encoded."""
    return "".join(c if c in _SAFE_URL or c == "?" else f"%{ord(c) & 0xFF:02X}" for c in query)


class Action(Enum):
    UNCHANGED = "unchanged"
    PATH = "path"  # the request goes on to ProxyPass routing with a new target
    PROXY = "proxy"  # [P]: the request goes to this URL
    REDIRECT = "redirect"
    FORBIDDEN = "forbidden"
    GONE = "gone"


@dataclass(frozen=True)
class RewriteRequest:
    """What the rules may look at. ``headers`` as the client sent them."""

    method: str
    target: str
    headers: Sequence[tuple[str, str]] = ()
    http_version: str = "1.1"
    remote_addr: str = ""
    remote_port: int = 0
    server_port: int = 0
    https: bool = False
    server_name: str = ""
    #: UseCanonicalName On, ServerName's port and scheme (R95)
    canonical: bool = False
    configured_port: int = 0
    configured_scheme: str = ""

    def header(self, name: str) -> str:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values)


@dataclass(frozen=True)
class Outcome:
    """What the rules made of a request.

    Attributes:
        action: see `Action`.
        target: PATH: the new request-target (re-encoded path, ``?query``); PROXY: the
            absolute URL with its query; REDIRECT: the Location; else "".
        status: the redirect status (REDIRECT only).
        rule: the last rule that applied (None for UNCHANGED without any match).
        env: the ``E=`` variables set, in order.
    """

    action: Action
    target: str = ""
    status: int = 0
    rule: Optional[RewriteRule] = None
    env: tuple[tuple[str, str], ...] = field(default=())


@dataclass(frozen=True)
class PerDir:
    """A `<Location>`'s rules, run at httpd's fixup phase (R79).

    Attributes:
        rules: the location's RewriteRules.
        subject: what the rules see first, httpd's ``r->filename`` by then:
            ``proxy:URL`` when a ProxyPass route took the request, else the document
            root and the path.
        directory: the location's path with a trailing "/", stripped from the subject
            when it starts with it ("" for `<LocationMatch>`).
        base: RewriteBase ("" for none).
        document_root: stripped from a local result without RewriteBase.
    """

    rules: tuple[RewriteRule, ...]
    subject: str
    directory: str = ""
    base: str = ""
    document_root: str = ""


@dataclass
class _State:
    request: RewriteRequest
    uri: str  # the decoded path the request came with (REQUEST_URI)
    query: str
    env: dict[str, str]
    rule_match: Optional[re.Match[str]] = None
    cond_match: Optional[re.Match[str]] = None
    trace: Optional[list[str]] = None  # `tunnel explain`: one line per rule and cond tried

    def variable(self, name: str) -> str:
        kind, colon, arg = name.partition(":")
        req = self.request
        if colon and kind.upper() == "HTTP":
            return req.header(arg)
        if colon and kind.upper() == "ENV":
            return self.env.get(arg, "")
        upper = name.upper()
        if upper.startswith("HTTP_"):
            return req.header(upper[5:].replace("_", "-"))
        values = {
            "REQUEST_URI": self.uri,
            "QUERY_STRING": self.query,
            "REQUEST_METHOD": req.method,
            "REQUEST_SCHEME": "https" if req.https else "http",
            "HTTPS": "on" if req.https else "off",
            "REMOTE_ADDR": req.remote_addr,
            "REMOTE_PORT": str(req.remote_port),
            "SERVER_PORT": str(_server(req)[1]),
            "SERVER_NAME": _server(req)[0],
            "SERVER_PROTOCOL": f"HTTP/{req.http_version}",
            "THE_REQUEST": f"{req.method} {req.target} HTTP/{req.http_version}",
        }
        return values.get(upper, "")

    def expand(self, template: str) -> str:
        def one(m: re.Match[str]) -> str:
            if m.group(1) is not None:
                return m.group(1)
            if m.group(4) is not None:
                return self.variable(m.group(4))
            source, n = (self.rule_match, m.group(2)) if m.group(2) is not None else (self.cond_match, m.group(3))
            if source is None or int(n) > source.re.groups:
                return ""
            return source.group(int(n)) or ""

        return _TEMPLATE_RE.sub(one, template)


def _compare(cond: RewriteCond, value: str, pattern: str) -> bool:
    kind = cond.kind
    if kind.startswith("-"):
        try:
            left = int(value.strip())
        except ValueError:
            return False
        right = int(pattern)
        return {
            "-eq": left == right,
            "-ne": left != right,
            "-lt": left < right,
            "-le": left <= right,
            "-gt": left > right,
            "-ge": left >= right,
        }[kind]
    if cond.nocase:
        value, pattern = value.lower(), pattern.lower()
    return {
        "=": value == pattern,
        "<": value < pattern,
        ">": value > pattern,
        "<=": value <= pattern,
        ">=": value >= pattern,
    }[kind]


def _cond_holds(cond: RewriteCond, state: _State) -> bool:
    value = state.expand(cond.test)
    if cond.regex is not None:
        m = cond.regex.search(value)
        if m is not None and not cond.negate:
            state.cond_match = m
        ok = (m is not None) != cond.negate
    else:
        ok = _compare(cond, value, cond.pattern) != cond.negate
    if state.trace is not None:
        shown = ("!" if cond.negate else "") + (cond.pattern if cond.kind == "regex" else f"{cond.kind}{cond.pattern}")
        flags = ",".join(f for f, on in (("NC", cond.nocase), ("OR", cond.ornext)) if on)
        state.trace.append(
            f"  RewriteCond at {cond.file}:{cond.line}: {cond.test} = {value!r} against {shown!r}"
            f"{f' [{flags}]' if flags else ''}: {'true' if ok else 'false'}"
        )
    return ok


def _conds_hold(conds: Sequence[RewriteCond], state: _State) -> bool:
    i = 0
    while i < len(conds):
        cond = conds[i]
        ok = _cond_holds(cond, state)
        if cond.ornext:
            if ok:
                while i < len(conds) and conds[i].ornext:
                    i += 1  # the rest of the OR chain is not needed
            i += 1
            continue
        if not ok:
            return False
        i += 1
    return True


_AUTHORITY_RE = re.compile(r"(\[[^\]]*\]|[^:]*)(?::([0-9]{1,5}))?")


def _split_authority(authority: str, default_port: int) -> tuple[str, int]:
    m = _AUTHORITY_RE.fullmatch(authority)
    if m is None:
        return authority.lower(), default_port
    return m.group(1).lower(), int(m.group(2)) if m.group(2) else default_port


def _server(request: RewriteRequest) -> tuple[str, int]:
    """SERVER_NAME and SERVER_PORT as httpd gives them (ap_get_server_name and
    ap_get_server_port, R95): under UseCanonicalName Off (the default) the Host
    header's name and port (ServerName's port, then the scheme's default, when it names
    none); without a Host, ServerName and the listener's port; under On, ServerName and
    its port (else the scheme's default)."""
    default = 443 if request.https else 80
    if request.canonical:
        return request.server_name, request.configured_port or default
    host = request.header("host")
    if not host:
        return request.server_name, request.configured_port or request.server_port or default
    return _split_authority(host, request.configured_port or default)


def _same_host(scheme: str, authority: str, request: RewriteRequest) -> bool:
    """Does an absolute URL name this server (httpd's reduce_uri)?"""
    default = 443 if scheme.lower() in ("https", "wss") else 80
    return bool(authority) and _split_authority(authority, default) == _server(request)


def _absolute(path: str, query: str, request: RewriteRequest, escape: bool) -> str:
    scheme = "https" if request.https else request.configured_scheme or "http"
    name, port = _server(request)
    name = name or "localhost"
    if ":" in name and not name.startswith("["):
        name = f"[{name}]"
    host = name if port == (443 if scheme == "https" else 80) else f"{name}:{port}"
    shown = encode_path(path) if escape else path
    return f"{scheme}://{host}{shown}" + (f"?{_encode_query(query)}" if query else "")


def evaluate(
    scope: Scope,
    request: RewriteRequest,
    trace: Optional[list[str]] = None,
    *,
    perdir: Optional[PerDir] = None,
) -> Outcome:
    """Run the scope's rules over a request, or a `<Location>`'s with ``perdir`` (R79).

    ``trace``, when given, gets one line for each rule and condition tried and its
    outcome (``tunnel explain``).

    Raises:
        BadRequest, Forbidden, NotFound: the request-target itself is bad (as routing).
        BadRequest: a rule produced a local path that does not start with "/" (httpd:
            400).
        InternalServerError: a [P] rule whose substitution (made by variables) is not
            an absolute URL.
    """
    rules = perdir.rules if perdir is not None else scope.rewrite_rules
    if not scope.rewrite_engine or not rules:
        return Outcome(Action.UNCHANGED)
    if request.method.upper() == "CONNECT" or request.target == "*":
        return Outcome(Action.UNCHANGED)  # httpd's hook declines: no URL-path (routing answers)
    path, query = normalize_target(request.target, allow_encoded_slashes=scope.limits.allow_encoded_slashes)
    state = _State(request, path, query, {}, trace=trace)
    if perdir is not None:
        path = perdir.subject  # what httpd's r->filename holds at the fixup phase
    original_query = query
    current, changed, redirect = path, False, 0
    last: Optional[RewriteRule] = None
    directory = perdir.directory if perdir is not None else ""
    for rule in rules:
        assert rule.regex is not None
        subject = current[len(directory) :] if directory and current.startswith(directory) else current
        m = rule.regex.search(subject)
        if trace is not None:
            matched = (m is None) == rule.negate
            trace.append(
                f"RewriteRule at {rule.where}: {current!r} against {'!' if rule.negate else ''}{rule.pattern!r}"
                f" -> {rule.substitution!r}{f' {rule.flags}' if rule.flags else ''}: "
                + ("pattern matches" if matched else "pattern does not match")
            )
        if (m is None) != rule.negate:
            continue
        state.rule_match, state.cond_match = (None if rule.negate else m), None
        if not _conds_hold(rule.conds, state):
            if trace is not None:
                trace.append("  conditions do not hold: rule skipped")
            continue
        last = rule
        if trace is not None:
            trace.append("  rule applies" + (" (last: [L]/[END])" if rule.last or rule.end else ""))
        for var, value in rule.env:
            state.env[var] = state.expand(value)
        env = tuple(state.env.items())
        if rule.forbidden:
            return Outcome(Action.FORBIDDEN, rule=rule, env=env)
        if rule.gone:
            return Outcome(Action.GONE, rule=rule, env=env)
        if rule.qsd:
            query = ""
        if rule.substitution != "-":
            new = state.expand(rule.substitution)
            new, question, new_query = new.partition("?")
            if perdir is not None and not new.startswith("/") and _ABSOLUTE_RE.match(new) is None:
                new = (perdir.base or directory) + new  # per-directory: relative to RewriteBase or the directory
            if question and rule.qsa and query:
                query = f"{new_query}&{query}" if new_query else query
            elif question:
                query = new_query
            current, changed = new, True
        redirect = rule.redirect or redirect
        absolute = _ABSOLUTE_RE.match(current)
        if rule.proxy:
            if absolute is None:  # a variable made it a local path: refused at load when literal
                raise InternalServerError("bad [P] target", detail=f"{current!r} from RewriteRule at {rule.where}")
            url = current + (f"?{_encode_query(query)}" if query else "")
            return Outcome(Action.PROXY, url, rule=rule, env=env)
        if absolute is not None and not redirect and perdir is None and _same_host(absolute.group(1), absolute.group(2), request):
            current = absolute.group(3) or "/"  # this host: reduced to its path
        elif absolute is not None and not redirect:
            redirect = 302  # another host: httpd's implicit redirect
        if rule.last or rule.end:
            break
    env = tuple(state.env.items())
    if redirect:
        absolute = _ABSOLUTE_RE.match(current)
        escape = last is None or not last.noescape
        if absolute is None:
            location = _absolute(current, query, request, escape)
        else:
            rest = absolute.group(3)
            rest_path, _, _ = rest.partition("?")
            shown = "".join(c if c in _SAFE_URL else f"%{ord(c) & 0xFF:02X}" for c in rest_path) if escape else rest_path
            location = f"{absolute.group(1)}://{absolute.group(2)}{shown}" + (f"?{_encode_query(query)}" if query else "")
        if _CONTROL_RE.search(location):
            # httpd refuses to send a response header with a control character (500),
            # so CR/LF from a back-reference under [NE], or in the host part, cannot
            # split the answer.
            raise InternalServerError(
                "bad redirect target",
                detail=f"control character in {location!r} from RewriteRule at {last.where if last else '?'}",
            )
        location = "".join(c if ord(c) < 0x80 else f"%{ord(c) & 0xFF:02X}" for c in location)
        return Outcome(Action.REDIRECT, location, status=redirect, rule=last, env=env)
    if not changed and query == original_query:
        return Outcome(Action.UNCHANGED, rule=last, env=env)
    if perdir is not None:
        if current == perdir.subject and query == original_query:
            return Outcome(Action.UNCHANGED, rule=last, env=env)  # httpd: the same URL again is no redirect
        if perdir.base and directory and current.startswith(directory):
            current = perdir.base.rstrip("/") + "/" + current[len(directory) :]
        elif perdir.document_root and current.startswith(perdir.document_root.rstrip("/") + "/"):
            current = current[len(perdir.document_root.rstrip("/")) :]
    if not current.startswith("/"):
        raise BadRequest(
            "rewrite produced a bad path", detail=f"{current!r} from RewriteRule at {last.where if last else '?'}"
        )
    target = encode_path(current) + (f"?{_encode_query(query)}" if query else "")
    return Outcome(Action.PATH, target, rule=last, env=env)


def proxy_route(url: str, rule: RewriteRule, balancers: Mapping[str, Balancer]) -> tuple[ProxyRule, str]:
    """A one-off ProxyPass for a [P] target (R67): a rule on "/" whose target is the
    URL's scheme and authority, and the request-target (the URL's path and query) to
    route with it, so the request takes the same upgrade, balancer and timeout path as
    a ProxyPass route.

    Raises:
        InternalServerError: the URL is not a ws/wss/http/https/balancer URL, or names
            a balancer that does not exist.
    """
    absolute = _ABSOLUTE_RE.match(url)
    rest = absolute.group(3) if absolute is not None else ""
    path, _, query = rest.partition("?")
    path = path or "/"
    base = url[: len(url) - len(rest)] + "/" if absolute is not None else url
    try:
        parsed = parse_url(base)
    except BadDirective as exc:
        raise InternalServerError("bad [P] target", detail=f"{exc} (RewriteRule at {rule.where})") from None
    raw = encode_path(path) if any(c not in _SAFE_URL for c in path) else path
    target = raw + (f"?{query}" if query else "")
    if parsed.balancer is not None:
        balancer = balancers.get(parsed.balancer)
        if balancer is None:
            raise InternalServerError(
                "bad [P] target", detail=f"balancer://{parsed.balancer} is not defined (RewriteRule at {rule.where})"
            )
        first = balancer.members[0]
        one_off = ProxyRule(
            "/",
            balancer=parsed.balancer,
            balancer_path="/",
            balancer_scheme=first.target.scheme,
            balancer_upgrade=first.upgrade,
            nocanon=rule.noescape,
            file=rule.file,
            line=rule.line,
        )
        return one_off, target
    return ProxyRule("/", target=parsed.target, nocanon=rule.noescape, file=rule.file, line=rule.line), target


def route_proxy(
    scope: Scope, one_off: ProxyRule, raw_target: str, client_target: str, upgrade_header: Optional[str], method: str
) -> RouteResult:
    """Route a [P] request with its one-off rule (R67): the `<Location>` settings of the
    client's path apply, then ProxyPass routing decides upgrade or plain HTTP.

    Under ProxyWebsocketFallbackToProxyHttp Off a ws/wss target answers a request with
    no Upgrade header 426, as mod_proxy_wstunnel's handler does: no check_trans veto
    (R2) lets it fall through to another route, since [P] chose this one.

    Raises:
        UpgradeRequired: as above, or when the Upgrade offers nothing the route allows.
        BadRequest, Forbidden, NotFound, MethodNotAllowed: from routing.
    """
    client_path, _ = normalize_target(client_target, allow_encoded_slashes=scope.limits.allow_encoded_slashes)
    effective = dataclasses.replace(effective_scope(scope, client_path), rules=(one_off,), locations=())
    is_ws = (one_off.target is not None and one_off.target.is_ws) or one_off.balancer_scheme in ("ws", "wss")
    offered = [t for t in (upgrade_header or "").split(",") if t.strip()]
    if is_ws and not offered and not effective.fallback_to_proxy_http:
        raise UpgradeRequired(
            "upgrade required",
            detail=f"no Upgrade on the [P] route of {one_off.where}",
            headers=[("Connection", "Upgrade"), ("Upgrade", "WebSocket")],
        )
    decision = route(effective, raw_target, upgrade_header, method=method)
    if _has_dot_segment(raw_target.partition("?")[0]):
        # httpd forwards a [P] URL's path without resolving dot-segments: a "$1" that
        # was "%252e%252e" in the request must not climb out of the substitution's
        # prefix (ws://b/app/$1 reaching /admin); the backend gets the path as made.
        decision = dataclasses.replace(decision, backend_path=raw_target)
    # Access is decided on the client's path, as httpd walks <Location> over r->uri,
    # which [P] leaves alone: a denied /admin stays denied whatever the target is.
    return dataclasses.replace(decision, local_path=client_path)


_DOT_OR_SLASH_ESCAPE = re.compile(r"%2[eEfF]")


def _has_dot_segment(raw_path: str) -> bool:
    """Has a path a "." or ".." segment, counting %2e and %2f as the characters?"""
    decoded = _DOT_OR_SLASH_ESCAPE.sub(lambda m: "." if m.group(0)[2] in "eE" else "/", raw_path)
    return any(segment in (".", "..") for segment in decoded.split("/"))
