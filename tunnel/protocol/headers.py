"""mod_headers, sans-IO: Header and RequestHeader lines applied to header lists (R80-R82).

Header lists are ``[(name, value)]`` with names compared ignoring case, and each action
treats them as httpd's tables do: ``set`` replaces the first line and drops the others,
``append`` joins the first line's value with ", ", ``merge`` does so unless the value is
already one of its comma-separated tokens, ``add`` adds a line, ``setifempty`` sets only
when there is no such line, ``unset`` removes them all, ``edit``/``edit*`` rewrite each
line's value (its first match, or every match) and move the lines to the end, ``echo``
copies matching request headers to the response, ``note`` stores a value in the
request's notes. A line with ``env=[!]VAR`` applies only when the variable is set (not
set); one with ``expr=`` when the expression is true.

The response side keeps httpd's two tables: a relayed answer's headers are its
``headers_out``, the ``always`` lines edit ``err_headers_out`` (empty unless the proxy
put something there), the rest edit ``headers_out``, and the answer carries the first
table followed by the second. The proxy's own answers (errors, redirects) get the
``always`` lines only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Optional

from ..accesslog import env_value
from ..config.headermodel import Condition, Format, HeaderOp
from .access import AccessRequest, expr_true, word_value

__all__ = ["HeaderContext", "apply_request_headers", "apply_response_headers", "expand", "pregsub", "env_set", "env_unset"]

Headers = list[tuple[str, str]]

#: Characters that must not reach a header line (CR, LF, NUL and other controls but tab).
_CONTROLS = dict.fromkeys([*range(0, 9), *range(10, 32), 127], " ")


@dataclass
class HeaderContext:
    """What Header values and conditions read for one request.

    Attributes:
        env: the request's environment (`Exchange.notes`): read by ``%{VAR}e``, env=
            and expr=, written by ``note``.
        access: the request as access rules see it (for expr=); its ``env`` should be
            ``env``.
        start: the request's start, seconds since the epoch (``%t``, ``%D``).
        now: the clock for ``%D`` (seconds since the epoch).
        ssl: SSL variables (``%{HTTPS}s``, ``%{SSL_PROTOCOL}s``, ...); a missing one is
            "(null)" as in httpd.
        loadavg: the 1, 5 and 15 minute load averages (``%l``).
    """

    env: MutableMapping[str, str]
    access: AccessRequest
    start: float = 0.0
    now: Callable[[], float] = lambda: 0.0
    ssl: Mapping[str, str] = field(default_factory=dict)
    loadavg: Callable[[], tuple[float, float, float]] = lambda: (0.0, 0.0, 0.0)


def env_set(env: MutableMapping[str, str], name: str, value: str) -> None:
    """Set a variable, replacing any spelled with another case (httpd's tables)."""
    env_unset(env, name)
    env[name] = value


def env_unset(env: MutableMapping[str, str], name: str) -> None:
    lowered = name.lower()
    for key in [k for k in env if k.lower() == lowered]:
        del env[key]


def _clean(value: str) -> str:
    """A value as a header line may carry it: controls as blanks, no blanks around it."""
    return value.translate(_CONTROLS).strip(" \t")


def expand(fmt: Format, ctx: HeaderContext) -> str:
    """A compiled Header value, its specifiers filled in (process_tags)."""
    out: list[str] = []
    for part in fmt:
        if isinstance(part, str):
            out.append(part)
            continue
        code = part.code
        if code == "t":
            out.append(f"t={int(ctx.start * 1_000_000)}")
        elif code == "D":
            out.append(f"D={max(0, int((ctx.now() - ctx.start) * 1_000_000))}")
        elif code == "e":
            value = env_value(ctx.env, part.arg)
            out.append("(null)" if value is None else value.replace("\r", " ").replace("\n", " "))
        elif code == "s":
            value = ctx.ssl.get(part.arg.upper()) or ""
            out.append(value.replace("\r", " ").replace("\n", " ") if value else "(null)")
        elif code == "expr":
            out.append(word_value(part.word, ctx.access))
        elif code == "l":
            one, five, fifteen = ctx.loadavg()
            out.append(f"l={one:.2f}/{five:.2f}/{fifteen:.2f}")
    return "".join(out)


def pregsub(template: str, match: re.Match[str]) -> str:
    """httpd's ap_pregsub: ``$0``-``$9`` are the match's groups (nothing for a group that
    matched nothing or did not take part), a backslash takes the next character as it is."""
    count = match.re.groups
    out: list[str] = []
    i, n = 0, len(template)
    while i < n:
        c = template[i]
        if c == "$" and i + 1 < n and template[i + 1].isdigit():
            number = int(template[i + 1])
            if number <= count:
                out.append(match.group(number) or "")
            i += 2
        elif c == "\\" and i + 1 < n:
            out.append(template[i + 1])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _applies(condition: Optional[Condition], ctx: HeaderContext) -> bool:
    if condition is None:
        return True
    if condition.expr is not None:
        return expr_true(condition.expr, ctx.access)
    found = env_value(ctx.env, condition.var) is not None
    return found != condition.negate


def _first(headers: Headers, name: str) -> Optional[int]:
    lowered = name.lower()
    return next((i for i, (k, _) in enumerate(headers) if k.lower() == lowered), None)


def _without(headers: Headers, name: str) -> Headers:
    lowered = name.lower()
    return [(k, v) for k, v in headers if k.lower() != lowered]


def _has_token(value: str, token: str) -> bool:
    """merge's test: is ``token`` one of the value's comma-separated members (quoted
    strings kept whole, compared exactly)?"""
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i].isspace():
            i += 1
        start = i
        while i < n and value[i] != ",":
            if value[i] == '"':
                i += 1
                while i < n and value[i] != '"':
                    i += 1
            i += 1
        if value[start:min(i, n)] == token:
            return True
        i += 1
    return False


def _edit(op: HeaderOp, value: str, ctx: HeaderContext) -> str:
    assert op.regex is not None
    replacement = expand(op.value, ctx)
    return op.regex.sub(lambda m: pregsub(replacement, m), value, count=0 if op.action == "edit*" else 1)


def _apply(op: HeaderOp, headers: Headers, ctx: HeaderContext, request: Sequence[tuple[str, str]], echo_to: Headers) -> Headers:
    """One action on one table; returns the table (a new list when lines move)."""
    action, name = op.action, op.name
    if action == "unset":
        return _without(headers, name)
    if action == "echo":
        assert op.regex is not None
        echo_to.extend((k, v) for k, v in request if op.regex.search(k))
        return headers
    if action in ("edit", "edit*"):
        lowered = name.lower()
        edited = [(k, _clean(_edit(op, v, ctx))) for k, v in headers if k.lower() == lowered]
        return _without(headers, name) + edited if edited else headers
    if action == "note":
        at = _first(headers, name)
        key = expand(op.value, ctx)
        if at is None:
            env_unset(ctx.env, key)
        else:
            env_set(ctx.env, key, headers[at][1])
        return headers
    value = _clean(expand(op.value, ctx))
    at = _first(headers, name)
    if at is None:
        headers.append((name, value))  # every remaining action adds a line when there is none
    elif action == "add":
        headers.append((name, value))
    elif action == "set":
        lowered = name.lower()
        headers = [(name, value) if i == at else (k, v) for i, (k, v) in enumerate(headers) if i == at or k.lower() != lowered]
    elif action == "append" or (action == "merge" and not _has_token(headers[at][1], value)):
        headers[at] = (headers[at][0], f"{headers[at][1]}, {value}")
    return headers  # setifempty with a line, or merge of a value already there: unchanged


def _run(ops: Sequence[HeaderOp], headers: Headers, ctx: HeaderContext, request: Sequence[tuple[str, str]], echo_to: Optional[Headers] = None, *, early: bool = False) -> Headers:
    for op in ops:
        if op.early != early or not _applies(op.condition, ctx):
            continue
        headers = _apply(op, headers, ctx, request, echo_to if echo_to is not None else headers)
    return headers


def apply_request_headers(ops: Sequence[HeaderOp], headers: Sequence[tuple[str, str]], ctx: HeaderContext, *, early: bool = False) -> Headers:
    """RequestHeader lines over the request's headers (the fixups phase, or with
    ``early`` the lines marked early, before the URL is mapped). Returns a new list."""
    current = list(headers)
    return _run(ops, current, ctx, current, early=early)


def apply_response_headers(
    always: Sequence[HeaderOp],
    onsuccess: Sequence[HeaderOp],
    err: Sequence[tuple[str, str]],
    out: Sequence[tuple[str, str]],
    ctx: HeaderContext,
    request: Sequence[tuple[str, str]],
) -> Headers:
    """Header lines over an answer's two tables: ``always`` over ``err``, then the
    others over ``out`` (pass none for the proxy's own answers); the answer's headers
    are the first table followed by the second. ``echo`` copies from ``request`` into
    the second table, whichever line asks."""
    out_table = list(out)
    err_table = _run(always, list(err), ctx, request, out_table)
    out_table = _run(onsuccess, out_table, ctx, request)
    return err_table + out_table
