"""The model of mod_headers, mod_env and mod_setenvif directives: frozen, built once.

A leaf beside model.py (which holds one `EnvDirectives` per scope and per `<Location>`).
`EnvDirectives` is one context's own lines, or several contexts merged as httpd merges
per-directory configurations: the parent's lines first, then the child's (R80-R84).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional, Union

__all__ = [
    "FormatTag",
    "Format",
    "Condition",
    "HeaderOp",
    "SetEnvIf",
    "EnvDirectives",
    "EMPTY_ENV",
]


@dataclass(frozen=True)
class FormatTag:
    """One ``%X`` / ``%{arg}X`` specifier of a Header value: ``code`` is t, D, e, s or l;
    or ``expr`` for a whole value written ``expr=...`` (``word``: a
    `tunnel.config.model.Word`, typed loosely to keep this module a leaf)."""

    code: str
    arg: str = ""
    word: Any = None


#: A compiled Header value: literal text and specifiers, concatenated when applied.
Format = tuple[Union[str, FormatTag], ...]


@dataclass(frozen=True)
class Condition:
    """``env=VAR`` / ``env=!VAR`` (``var`` set, ``negate``), or ``expr=...`` (``expr``
    set: a `tunnel.config.model.Expr`, typed loosely to keep this module a leaf)."""

    var: str = ""
    negate: bool = False
    expr: Any = None
    text: str = ""  # as written, for logs


@dataclass(frozen=True)
class HeaderOp:
    """One ``Header`` or ``RequestHeader`` line.

    Attributes:
        action: set, setifempty, add, append, merge, unset, edit, edit*, echo or note.
        name: the header name (a trailing ``:`` removed); for echo, the regex source.
        value: the value (for edit: the replacement; for note: the note's name).
        regex: edit's pattern, echo's name pattern.
        condition: the env=/expr= clause, or None.
        early: ``RequestHeader ... early`` (applied before the URL is mapped).
    """

    action: str
    name: str
    value: Format = ()
    regex: Optional[re.Pattern[str]] = field(default=None, compare=False, repr=False)
    condition: Optional[Condition] = None
    early: bool = False
    file: str = "<config>"
    line: int = 0


@dataclass(frozen=True)
class SetEnvIf:
    """One ``SetEnvIf``/``SetEnvIfNoCase``/``BrowserMatch[NoCase]`` line.

    Attributes:
        attribute: as written (a header name, a special name, or a regex of names).
        special: "remote_addr", "remote_host", "server_addr", "request_method",
            "request_protocol", "request_uri", or "" for a header.
        name_regex: set when ``attribute`` is a regex of header names.
        regex: the value pattern (compiled even for a plain string; ``literal`` then
            says that ``$N`` in the values is not substituted, as httpd's string match).
        features: (variable, value) pairs; value None unsets the variable.
        early: ``--early`` was given (server context only).
    """

    attribute: str
    special: str
    regex: re.Pattern[str] = field(compare=False, repr=False)
    literal: bool
    features: tuple[tuple[str, Optional[str]], ...]
    name_regex: Optional[re.Pattern[str]] = field(default=None, compare=False, repr=False)
    early: bool = False
    file: str = "<config>"
    line: int = 0


@dataclass(frozen=True)
class EnvDirectives:
    """The header and environment lines of a context (or of contexts merged).

    Attributes:
        request: RequestHeader lines, in order.
        onsuccess: Header lines without ``always`` (httpd's headers_out table).
        always: ``Header always`` lines (httpd's err_headers_out table).
        env_vars: SetEnv/PassEnv values after UnsetEnv, mod_env's table (names compare
            ignoring case).
        env_unset: UnsetEnv names, applied to the parent's table when merged.
        setenvif: SetEnvIf lines (server ones run before rewriting, `<Location>` ones
            after routing).
    """

    request: tuple[HeaderOp, ...] = ()
    onsuccess: tuple[HeaderOp, ...] = ()
    always: tuple[HeaderOp, ...] = ()
    env_vars: tuple[tuple[str, str], ...] = ()
    env_unset: tuple[str, ...] = ()
    setenvif: tuple[SetEnvIf, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.request or self.onsuccess or self.always or self.env_vars or self.env_unset or self.setenvif)

    def merged(self, child: EnvDirectives) -> EnvDirectives:
        """``child`` over this (merge_headers_config, merge_env_dir_configs,
        merge_setenvif_config): lists appended; mod_env's table copied, the child's
        UnsetEnv names removed from it, the child's values set."""
        if not child:
            return self
        if not self:
            return child
        unset = {n.lower() for n in child.env_unset}
        mine = {n.lower() for n, _ in child.env_vars}
        kept = tuple((n, v) for n, v in self.env_vars if n.lower() not in unset and n.lower() not in mine)
        return EnvDirectives(
            request=self.request + child.request,
            onsuccess=self.onsuccess + child.onsuccess,
            always=self.always + child.always,
            env_vars=kept + child.env_vars,
            env_unset=(),
            setenvif=self.setenvif + child.setenvif,
        )


EMPTY_ENV = EnvDirectives()
