"""The access-control part of the configuration model (mod_authz_core, mod_authz_host),
built by config/access.py; a leaf, re-exported by `tunnel.config.model`."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Optional, Union

# -- access control (mod_authz_core, mod_authz_host; built by config/access.py) -----------

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


@dataclass(frozen=True)
class Var:
    """An expression variable: ``%{REMOTE_ADDR}``, ``%{HTTP:Origin}`` (name as written)."""

    name: str


#: A string of an expression: literal parts and variables, concatenated when evaluated.
Word = tuple[Union[str, Var], ...]


@dataclass(frozen=True)
class Regex:
    """``/re/`` or ``m#re#`` after ``=~`` / ``!~``, compiled once at load time."""

    source: str
    pattern: re.Pattern[str] = field(compare=False, repr=False)


@dataclass(frozen=True)
class Compare:
    """``word OP word`` (==, !=, -strmatch, -strcmatch, -ipmatch) or ``word =~ regex``."""

    op: str
    left: Word
    right: Union[Word, Regex]


@dataclass(frozen=True)
class Not:
    operand: Expr


@dataclass(frozen=True)
class BoolOp:
    op: str  # "&&" or "||"
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Const:
    value: bool


Expr = Union[Const, Not, BoolOp, Compare]


@dataclass(frozen=True)
class Require:
    """One ``Require [not] provider args`` line.

    ``provider`` is all, ip, local, method or expr; ``granted`` for ``all``;
    ``networks`` for ``ip``; ``methods`` for ``method``; ``expr`` for ``expr``.
    """

    provider: str
    negate: bool = False
    text: str = ""
    granted: bool = False
    networks: tuple[Network, ...] = ()
    methods: tuple[str, ...] = ()
    expr: Optional[Expr] = None
    file: str = "<config>"
    line: int = 0


@dataclass(frozen=True)
class RequireSection:
    """``<RequireAll>`` (op all), ``<RequireAny>`` (op any), ``<RequireNone>`` (any,
    negated); a context's own Require lines are an implicit ``<RequireAny>``."""

    op: str
    negate: bool = False
    children: tuple[Union[Require, RequireSection], ...] = ()
    file: str = "<config>"
    line: int = 0

    @property
    def name(self) -> str:
        if self.op == "all":
            return "RequireNotAll" if self.negate else "RequireAll"
        return "RequireNone" if self.negate else "RequireAny"


@dataclass(frozen=True)
class AccessRules:
    """The access rules of one context and its ``AuthMerging`` (off, and, or)."""

    root: RequireSection
    merging: str = "off"
    file: str = "<config>"
    line: int = 0


@dataclass(frozen=True)
class ProxyAccess:
    """A ``<Proxy URL>`` block's rules, applied to requests routed to a matching URL
    (a wildcard pattern matches the whole URL, anything else is a prefix; a
    ``<ProxyMatch>`` or ``<Proxy ~ re>`` block has ``regex``, searched in the URL)."""

    pattern: str
    rules: AccessRules
    file: str = "<config>"
    line: int = 0
    regex: Optional[re.Pattern[str]] = field(default=None, compare=False, repr=False)
