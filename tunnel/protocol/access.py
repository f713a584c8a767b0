"""Access control, sans-IO: is this request granted by the rules in force (R70-R76)?

The rules in force are the vhost's (already merged over the server's), then every
`<Proxy URL>` block matching the backend URL the request is routed to, then every
`<Location>` matching its path, each merged over the previous by its ``AuthMerging``
(httpd walks proxy sections before locations). No rule anywhere: granted.

Each requirement is granted, denied or neutral as in mod_authz_core: ``Require not``
turns granted into denied and denied into neutral (a negation can refuse, never grant);
a `<RequireAll>` is denied if a child is, else granted if a child is; a `<RequireAny>`
is granted if a child is, else denied if a child is; `<RequireNone>` is a negated
`<RequireAny>`. The request is served only when the whole is granted.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Optional, Union

from ..config.access import parse_networks
from ..config.model import (
    AccessRules,
    BoolOp,
    Compare,
    Const,
    Expr,
    Network,
    Not,
    Regex,
    Require,
    RequireSection,
    Scope,
    Var,
    Word,
)
from ..config.scopes import location_matches, merge_access
from ..config.values import BadDirective
from .routing import RouteResult

__all__ = ["AccessRequest", "Result", "backend_url", "effective_access", "is_granted", "evaluate", "expr_true", "word_value"]

Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


class Result(Enum):
    GRANTED = "granted"
    DENIED = "denied"
    NEUTRAL = "neutral"


@dataclass(frozen=True)
class AccessRequest:
    """What the rules may look at.

    Attributes:
        remote: the peer's IP address as text ("unix" for a unix-socket client).
        local: the address the client connected to ("" when not known).
        method: the request method.
        path: the normalised, decoded path (``%{REQUEST_URI}``).
        query: the query string without ``?`` (``%{QUERY_STRING}``).
        headers: the request headers as received.
        https: the client connection is TLS.
        env: the request's environment (``%{reqenv:NAME}``, ``%{env:NAME}``).
    """

    remote: str
    local: str = ""
    method: str = "GET"
    path: str = "/"
    query: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    https: bool = False
    env: Mapping[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str:
        name = name.lower()
        return ", ".join(v for k, v in self.headers if k.lower() == name)


def effective_access(scope: Scope, path: str, backend_url: Optional[str]) -> Optional[AccessRules]:
    """The rules for a request: the scope's, then matching `<Proxy>` blocks, then
    matching `<Location>` blocks (merge order), each merged by its AuthMerging."""
    rules = scope.access
    if backend_url is not None:
        for block in scope.proxy_access:
            if block.regex.search(backend_url) if block.regex else _proxy_matches(block.pattern, backend_url):
                rules = merge_access(rules, block.rules)
    for location in scope.locations:
        if location.access is not None and location_matches(location, path):
            rules = merge_access(rules, location.access)
    return rules


def backend_url(decision: RouteResult) -> str:
    """The URL `<Proxy>` blocks are matched against (httpd's ``proxy:`` filename): the
    route's backend as configured (``ws://``, not the plain-HTTP fallback's ``http://``)
    or ``balancer://name``, with the mapped path and no query."""
    path = decision.backend_path.partition("?")[0]
    rule = decision.rule
    if rule.balancer is not None:
        return f"balancer://{rule.balancer}{path}"
    target = rule.target or decision.target
    if target is None:
        return path
    base = f"{target.scheme}://{target.authority}{path}"
    return f"unix:{target.unix_path}|{base}" if target.unix_path else base


def _proxy_matches(pattern: str, url: str) -> bool:
    """mod_proxy's proxy_walk: a wildcard pattern matches the whole URL (``*`` crosses
    ``/``), any other pattern is a prefix."""
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(url, pattern)
    return url.startswith(pattern)


def is_granted(rules: Optional[AccessRules], request: AccessRequest) -> bool:
    return rules is None or evaluate(rules.root, request) is Result.GRANTED


def evaluate(node: Union[Require, RequireSection], request: AccessRequest) -> Result:
    """One requirement or section's result, negation applied."""
    if isinstance(node, Require):
        result = Result.GRANTED if _provider(node, request) else Result.DENIED
    else:
        results = [evaluate(child, request) for child in node.children]
        decisive, fallback = (
            (Result.DENIED, Result.GRANTED) if node.op == "all" else (Result.GRANTED, Result.DENIED)
        )
        if decisive in results:
            result = decisive
        elif fallback in results:
            result = fallback
        else:
            result = Result.NEUTRAL
    if node.negate:
        return {Result.GRANTED: Result.DENIED, Result.DENIED: Result.NEUTRAL}.get(result, result)
    return result


def _address(text: str) -> Optional[Address]:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _in_networks(text: str, networks: tuple[Network, ...]) -> bool:
    address = _address(text)
    return address is not None and any(address.version == n.version and address in n for n in networks)


def _is_local(request: AccessRequest) -> bool:
    if request.remote == "unix":
        return True  # a unix-socket client is on this host
    address = _address(request.remote)
    if address is None:
        return False
    return address.is_loopback or (bool(request.local) and address == _address(request.local))


def _provider(req: Require, request: AccessRequest) -> bool:
    if req.provider == "all":
        return req.granted
    if req.provider == "ip":
        return _in_networks(request.remote, req.networks)
    if req.provider == "local":
        return _is_local(request)
    if req.provider == "method":
        return request.method.upper() in req.methods
    assert req.provider == "expr" and req.expr is not None
    return _expr(req.expr, request)


# -- expressions ---------------------------------------------------------------------------


def word_value(word: Word, request: AccessRequest) -> str:
    """A string expression's value (``Header set X expr=...``)."""
    return _word(word, request)


def expr_true(expr: Expr, request: AccessRequest) -> bool:
    """Is a parsed ap_expr (Require expr, Header ... expr=) true for ``request``?"""
    return _expr(expr, request)


def _expr(expr: Expr, request: AccessRequest) -> bool:
    if isinstance(expr, Const):
        return expr.value
    if isinstance(expr, Not):
        return not _expr(expr.operand, request)
    if isinstance(expr, BoolOp):
        if expr.op == "&&":
            return _expr(expr.left, request) and _expr(expr.right, request)
        return _expr(expr.left, request) or _expr(expr.right, request)
    return _compare(expr, request)


def _compare(cmp: Compare, request: AccessRequest) -> bool:
    left = _word(cmp.left, request)
    if isinstance(cmp.right, Regex):
        found = cmp.right.pattern.search(left) is not None
        return found if cmp.op == "=~" else not found
    right = _word(cmp.right, request)
    if cmp.op == "==":
        return left == right
    if cmp.op == "!=":
        return left != right
    if cmp.op == "-strmatch":
        return fnmatch.fnmatchcase(left, right)
    if cmp.op == "-strcmatch":
        return fnmatch.fnmatchcase(left.lower(), right.lower())
    assert cmp.op == "-ipmatch"
    try:  # the same address forms as Require ip
        return _in_networks(left, parse_networks([right]))
    except BadDirective:
        return False  # a variable that is not an address matches nothing


def _word(word: Word, request: AccessRequest) -> str:
    return "".join(part if isinstance(part, str) else _variable(part, request) for part in word)


def _variable(var: Var, request: AccessRequest) -> str:
    func, colon, arg = var.name.partition(":")
    if colon and func.lower() in ("env", "reqenv"):
        lowered = arg.lower()
        return next((v for k, v in request.env.items() if k.lower() == lowered), "")
    if colon:
        return request.header(arg)  # HTTP:name, req:name, http:name
    name = var.name
    if name.startswith("HTTP_") and name != "HTTPS":
        return request.header(name[5:].replace("_", "-"))
    values = {
        "REQUEST_URI": request.path,
        "REQUEST_METHOD": request.method,
        "REMOTE_ADDR": request.remote,
        "QUERY_STRING": request.query,
        "HTTPS": "on" if request.https else "off",
        "REQUEST_SCHEME": "https" if request.https else "http",
    }
    return values[name]
