"""Access control directives (mod_authz_core, mod_authz_host) into `AccessRules`.

``Require all|ip|local|method|expr``, ``Require not ...``, ``<RequireAll>``,
``<RequireAny>``, ``<RequireNone>`` and ``AuthMerging``; the parser calls in here from
small hooks. Providers tunnel cannot evaluate (user, group, valid-user, env, host,
forward-dns, ...) are configuration errors, never silently granted. ``Require expr``
takes the part of ap_expr that access rules use (see docs/configuration.md); its
syntax errors are configuration errors at load time.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Optional, Union

from .lexer import split_words
from .model import (
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
    Var,
    Word,
)
from .values import BadDirective

__all__ = ["AuthzDraft", "COMPAT_DIRECTIVES", "compat_directive", "parse_require", "parse_expr", "parse_string_expr", "auth_merging", "parse_networks"]

#: httpd 2.2's mod_access_compat directives: refused, pointing to Require.
COMPAT_DIRECTIVES = frozenset({"order", "allow", "deny", "satisfy"})


def compat_directive(name: str, args: list[str]) -> str:
    """httpd 2.2's access lines (mod_access_compat), which published configurations
    still carry: the ones that grant everything (``Order ...``, ``Allow from all``,
    ``Satisfy ...``) mean what tunnel does without them, and are accepted with the
    returned warning; any line that restricts (``Deny from ...``, ``Allow from`` an
    address) is refused, since ignoring it would open what it closes.

    Raises:
        BadDirective: the line restricts access; the message says how to write it.
    """
    key = name.lower()
    words = [a.lower() for a in args]
    if key == "allow" and words == ["from", "all"]:
        return "Allow from all grants every client, as tunnel does without it; ignored"
    if key in ("order", "satisfy"):
        return f"{name} (httpd 2.2 access control) has no effect without Deny lines; ignored"
    hint = "Require ip ADDRESS..." if key == "allow" else "Require not ip ADDRESS... inside <RequireAll>, or Require all denied"
    raise BadDirective(f"{name} {' '.join(args)}: httpd 2.2 access control (mod_access_compat) that restricts access is not supported: write it as {hint}")

#: Providers httpd has that tunnel refuses, with the reason.
_REFUSED = {
    "env": "write Require expr \"%{reqenv:VAR} != ''\" instead",
    "user": "tunnel does no authentication",
    "group": "tunnel does no authentication",
    "valid-user": "tunnel does no authentication",
    "file-owner": "tunnel serves no files",
    "file-group": "tunnel serves no files",
    "host": "needs reverse DNS lookups, which tunnel does not do",
    "forward-dns": "needs DNS lookups per request, which tunnel does not do",
}

#: Plain variables of ap_expr that tunnel knows; ``HTTP:name`` (also ``req:``/``http:``)
#: reads any request header.
VARIABLES = frozenset(
    {
        "HTTP_HOST",
        "HTTP_USER_AGENT",
        "HTTP_REFERER",
        "HTTP_COOKIE",
        "HTTP_ACCEPT",
        "HTTP_FORWARDED",
        "REQUEST_URI",
        "REQUEST_METHOD",
        "REMOTE_ADDR",
        "QUERY_STRING",
        "HTTPS",
        "REQUEST_SCHEME",
    }
)
_HEADER_FUNCS = ("http:", "req:")
#: ``%{reqenv:NAME}`` / ``%{env:NAME}``: the request's environment (SetEnvIf, SetEnv,
#: RewriteRule [E=]; R84).
_ENV_FUNCS = ("reqenv:", "env:")


@dataclass
class AuthzDraft:
    """A Require section (or a context's implicit one) while it is read."""

    op: str
    negate: bool
    file: str
    line: int
    children: list[Union[Require, AuthzDraft]] = field(default_factory=list)
    merging: str = "off"
    implicit: bool = False  # a context's own Require lines (file, line: the first one)

    def freeze(self) -> RequireSection:
        """The frozen section; a section with only negative requirements is an error
        (httpd: it could never grant)."""
        children = tuple(c.freeze() if isinstance(c, AuthzDraft) else c for c in self.children)
        section = RequireSection(self.op, self.negate, children, self.file, self.line)
        if not _has_positive(section):
            where = (
                f"the Require lines from {self.file}:{self.line}"
                if self.implicit
                else f"<{section.name}> (opened at {self.file}:{self.line})"
            )
            raise BadDirective(f"{where} contain(s) only negative authorization directives (they can never grant)")
        return section

    def rules(self) -> Optional[AccessRules]:
        """The context's rules, or None when it has no Require line (AuthMerging alone)."""
        if not self.children:
            return None
        return AccessRules(self.freeze(), self.merging, self.file, self.line)


def _has_positive(section: RequireSection) -> bool:
    """httpd's check: after De Morgan flattening of a negated child section whose
    operator differs, at least one child is not negated."""
    for child in section.children:
        if isinstance(child, RequireSection) and child.negate and child.op != section.op:
            if any(c.negate for c in child.children):
                return True  # a negated grandchild becomes positive when flattened
        elif not child.negate:
            return True
    return False


def auth_merging(word: str) -> str:
    value = word.lower()
    if value not in ("off", "and", "or"):
        raise BadDirective(f"expected Off, And or Or, got {word!r}")
    return value


# -- Require ---------------------------------------------------------------------------------

_PARTIAL_V4 = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){0,2}\.?")


def _network(word: str) -> Network:
    """An address, CIDR, address/netmask, or httpd's partial IPv4 form (``10.1``)."""
    if _PARTIAL_V4.fullmatch(word):
        octets = [o for o in word.split(".") if o]
        if all(int(o) <= 255 for o in octets):
            padded = ".".join(octets + ["0"] * (4 - len(octets)))
            return ipaddress.ip_network(f"{padded}/{8 * len(octets)}")
    try:
        network = ipaddress.ip_network(word, strict=False)
    except ValueError:
        raise BadDirective(f"not an IP address, network or partial address: {word!r}") from None
    if isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped is not None:
        # APR refuses these: an IPv4 client (or one on an IPv6 socket, ::ffff:a.b.c.d)
        # is only ever compared with IPv4 networks, so this one would match nothing.
        raise BadDirective(f"IPv4-mapped IPv6 address {word!r}: write the IPv4 form (a.b.c.d)")
    return network


def parse_networks(args: list[str]) -> tuple[Network, ...]:
    if not args:
        raise BadDirective("Require ip: expected one or more addresses or networks")
    return tuple(_network(a) for a in args)


def parse_require(args: list[str], raw_line: str, file: str, line: int) -> Require:
    """One ``Require`` line. ``raw_line`` is the whole line, for ``expr`` (its quotes
    matter to ap_expr)."""
    negate = bool(args) and args[0].lower() == "not"
    rest = args[1:] if negate else args
    if not rest:
        raise BadDirective("expected [not] provider [arguments]")
    provider, values = rest[0].lower(), rest[1:]
    text = "Require " + " ".join(args)
    make = functools.partial(Require, negate=negate, text=text, file=file, line=line)
    if provider == "all":
        if len(values) != 1 or values[0].lower() not in ("granted", "denied"):
            raise BadDirective("Require all: expected granted or denied")
        return make("all", granted=values[0].lower() == "granted")
    if provider == "ip":
        return make("ip", networks=parse_networks(values))
    if provider == "local":
        if values:
            raise BadDirective("Require local takes no arguments")
        return make("local")
    if provider == "method":
        if not values or not all(re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", v) for v in values):
            raise BadDirective("Require method: expected one or more method names")
        return make("method", methods=tuple(v.upper() for v in values))
    if provider == "expr":
        match = re.match(r"\s*\S+\s+(?:not\s+)?\S+\s+(.*)$", raw_line, re.IGNORECASE | re.DOTALL)
        source = match.group(1).strip() if match else ""
        if source[:1] in ("'", '"') and len(split_words(source)) == 1 and source.endswith(source[0]):
            source = split_words(source)[0]
        if not source:
            raise BadDirective("Require expr: expected an expression")
        try:
            expr = parse_expr(source)
        except BadDirective as exc:
            raise BadDirective(f"Require expr: {exc}") from None
        return make("expr", expr=expr)
    if provider in _REFUSED:
        raise BadDirective(f'Require {provider}: not supported by tunnel ({_REFUSED[provider]})')
    raise BadDirective(
        f'Require {rest[0]}: unknown or unsupported provider "{rest[0]}" (tunnel supports all, ip, local, method, expr)'
    )


# -- ap_expr, the part access rules use ------------------------------------------------------

_BINARY = ("==", "!=", "=~", "!~", "=", "-strmatch", "-strcmatch", "-ipmatch")
_TOKEN = re.compile(
    r"\s*(?:(?P<op>&&|\|\||==|!=|=~|!~|=|!|\(|\))"
    r"|(?P<dash>-[a-z]+)"
    r"|(?P<var>%\{[^}]*\})"
    r"|(?P<quote>['\"])"
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_]*))"
)
_VAR = re.compile(r"%\{([^}]*)\}")


class _ExprParser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.peeked: Optional[tuple[str, str]] = None

    def fail(self, what: str) -> BadDirective:
        return BadDirective(f"{what} at offset {self.pos} in {self.text!r}")

    def peek(self) -> tuple[str, str]:
        if self.peeked is None:
            self.peeked = self._next()
        return self.peeked

    def take(self) -> tuple[str, str]:
        token = self.peek()
        self.peeked = None
        return token

    def _next(self) -> tuple[str, str]:
        rest = self.text[self.pos :]
        if not rest.strip():
            self.pos = len(self.text)
            return ("end", "")
        m = _TOKEN.match(self.text, self.pos)
        if m is None:
            self.pos += len(rest) - len(rest.lstrip())
            raise self.fail("unexpected character")
        self.pos = m.end()
        kind = m.lastgroup or ""
        if kind == "quote":
            return ("string", self._string(m.group("quote")))
        return (kind, m.group(kind))

    def _string(self, quote: str) -> str:
        end = self.pos
        while end < len(self.text) and self.text[end] != quote:
            end += 2 if self.text[end] == "\\" else 1
        if end >= len(self.text):
            raise self.fail("unterminated string")
        body = self.text[self.pos : end]
        self.pos = end + 1
        return re.sub(r"\\(.)", r"\1", body)

    def regex(self) -> Regex:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1
        start = self.pos
        if self.text.startswith("/", start):
            delim, self.pos = "/", start + 1
        elif self.text.startswith("m", start) and start + 1 < len(self.text) and not self.text[start + 1].isalnum():
            delim, self.pos = self.text[start + 1], start + 2
        else:
            raise self.fail("expected a regular expression (/re/ or m#re#)")
        end = self.text.find(delim, self.pos)
        while end > 0 and self.text[end - 1] == "\\" and delim != "\\":
            end = self.text.find(delim, end + 1)
        if end < 0:
            raise self.fail("unterminated regular expression")
        source = self.text[self.pos : end].replace("\\" + delim, delim) if delim != "/" else self.text[self.pos : end]
        self.pos = end + 1
        flags = re.DOTALL  # httpd's default regex options: "." matches a newline
        while self.pos < len(self.text) and self.text[self.pos].isalpha():
            if self.text[self.pos] != "i":
                raise self.fail(f"unknown regex flag {self.text[self.pos]!r}")
            flags |= re.IGNORECASE
            self.pos += 1
        try:
            return Regex(source, re.compile(source, flags))
        except re.error as exc:
            raise self.fail(f"bad regular expression {source!r} ({exc})") from None

    # expr := and ('||' and)* ; and := unary ('&&' unary)* ; unary := '!' unary | primary
    def parse(self) -> Expr:
        expr = self.or_expr()
        if self.peek()[0] != "end":
            raise self.fail(f"unexpected {self.peek()[1]!r}")
        return expr

    def or_expr(self) -> Expr:
        left = self.and_expr()
        while self.peek() == ("op", "||"):
            self.take()
            left = BoolOp("||", left, self.and_expr())
        return left

    def and_expr(self) -> Expr:
        left = self.unary()
        while self.peek() == ("op", "&&"):
            self.take()
            left = BoolOp("&&", left, self.unary())
        return left

    def unary(self) -> Expr:
        kind, value = self.peek()
        if (kind, value) == ("op", "!"):
            self.take()
            return Not(self.unary())
        if (kind, value) == ("op", "("):
            self.take()
            inner = self.or_expr()
            if self.take() != ("op", ")"):
                raise self.fail("expected )")
            return inner
        if kind == "word" and value in ("true", "false"):
            self.take()
            return Const(value == "true")
        left = self.word()
        kind, op = self.take()
        if op not in _BINARY or kind not in ("op", "dash"):
            raise self.fail(f"expected a comparison operator ({', '.join(_BINARY)}), got {op or 'the end'!r}")
        if op in ("=~", "!~"):
            return Compare(op, left, self.regex())
        right = self.word()
        if op == "-ipmatch" and all(isinstance(p, str) for p in right):
            _network("".join(p for p in right if isinstance(p, str)))  # a bad literal fails at load
        return Compare("==" if op == "=" else op, left, right)

    def word(self) -> Word:
        kind, value = self.take()
        if kind == "var":
            return (_variable(value[2:-1], self),)
        if kind == "string":
            parts: list[Union[str, Var]] = []
            last = 0
            for m in _VAR.finditer(value):
                if m.start() > last:
                    parts.append(value[last : m.start()])
                parts.append(_variable(m.group(1), self))
                last = m.end()
            if last < len(value) or not parts:
                parts.append(value[last:])
            return tuple(parts)
        raise self.fail(f"expected a string or %{{VARIABLE}}, got {value or 'the end'!r}")


def _variable(name: str, parser: _ExprParser) -> Var:
    lower = name.lower()
    if lower.startswith(_HEADER_FUNCS + _ENV_FUNCS) and name.partition(":")[2]:
        return Var(name)
    if name.upper() in VARIABLES:
        return Var(name.upper())
    raise parser.fail(f"unknown variable %{{{name}}} (tunnel knows HTTP:name, reqenv:name, {', '.join(sorted(VARIABLES))})")


def parse_string_expr(text: str) -> Word:
    """A string expression (``Header set X expr=...``): text with ``%{VAR}`` parts."""
    parser = _ExprParser(text)
    parts: list[Union[str, Var]] = []
    last = 0
    for m in _VAR.finditer(text):
        if m.start() > last:
            parts.append(text[last : m.start()])
        parts.append(_variable(m.group(1), parser))
        last = m.end()
    if last < len(text) or not parts:
        parts.append(text[last:])
    return tuple(parts)


def parse_expr(text: str) -> Expr:
    """An expression into its tree; `BadDirective` names what is wrong and where."""
    return _ExprParser(text).parse()


class AccessHooks:
    """The parser's access-control directives (mixed into it): Require and AuthMerging
    go to the innermost Require section, or the context's implicit one."""

    file: str
    line: int
    raw_line: str

    def authz_holder(self, create: bool = True) -> AuthzDraft:
        raise NotImplementedError

    def _require(self, args: list[str]) -> None:
        self.authz_holder().children.append(parse_require(args, self.raw_line, self.file, self.line))

    def _auth_merging(self, args: list[str]) -> None:
        if len(args) != 1:
            raise BadDirective("expected Off, And or Or")
        self.authz_holder().merging = auth_merging(args[0])

    def require_section(self, tag: str, args: list[str]) -> AuthzDraft:
        """A new `<RequireAll|Any|None>` inside the current holder."""
        if args:
            raise BadDirective("takes no arguments")
        section = AuthzDraft("all" if tag == "RequireAll" else "any", tag == "RequireNone", self.file, self.line)
        self.authz_holder().children.append(section)
        return section


def close_section(section: AuthzDraft, tag: str) -> None:
    if not section.children:
        raise BadDirective(f"<{tag}> contains no authorization directives")
    section.freeze()  # checked here, so the error names the closing line
