"""The parser's hooks for mod_headers, mod_env and mod_setenvif (mixed into it).

``Header``/``RequestHeader`` (R80-R82), ``SetEnv``/``UnsetEnv``/``PassEnv`` (R83),
``SetEnvIf``/``SetEnvIfNoCase``/``BrowserMatch``/``BrowserMatchNoCase`` (R84). Each line
is checked and compiled here, once: an unknown action, a missing argument, a bad regex,
an unknown format specifier or condition is a configuration error naming the line.
Each context collects its lines in an `EnvDraft`; ``freeze`` makes the frozen
`EnvDirectives` the model holds.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Optional, Union

from .access import parse_expr, parse_string_expr
from .headermodel import Condition, EnvDirectives, Format, FormatTag, HeaderOp, SetEnvIf
from .model import Target
from .values import BadDirective, compile_regex

__all__ = ["EnvDraft", "HeaderHooks", "compile_format", "as_wire_text", "worker_name"]

_ACTIONS = ("set", "setifempty", "add", "append", "merge", "unset", "echo", "note", "edit", "edit*")
#: Specifiers of a Header value (mod_headers' format tags) tunnel has.
_TAGS = frozenset("tDesl")
#: Headers whose framing belongs to the proxy: no Header/RequestHeader line may touch them.
_FRAMING = frozenset({"content-length", "transfer-encoding"})
#: SetEnvIf attributes that are not header names (compared ignoring case).
_SPECIAL = ("remote_addr", "remote_host", "server_addr", "request_method", "request_protocol", "request_uri")
_PLAIN_NAME = re.compile(r"[-A-Za-z0-9_]*")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_REGEX_CHARS = frozenset("^.$|()[]*+?{}")


def as_wire_text(text: str) -> str:
    """Configuration text (read as UTF-8) as the bytes httpd would send, one character
    per byte (latin-1), the form headers take on the way out."""
    return text.encode("utf-8").decode("latin-1")


def worker_name(url: str, target: Target) -> str:
    """httpd's name for a worker (ap_proxy_define_worker_ex): the URL after any
    ``unix:/path|``, scheme and host lower-cased, the scheme's default port dropped, the
    path kept as written (none when none was written)."""
    rest = url.rpartition("|")[2] if url[:5].lower() == "unix:" else url
    path_written = "/" in rest.partition("://")[2]
    host = f"[{target.host}]" if ":" in target.host else target.host
    authority = host if target.port == target.default_port else f"{host}:{target.port}"
    return f"{target.scheme}://{authority}{target.path if path_written else ''}"


def compile_format(text: str) -> Format:
    """A Header value into literal parts and specifiers (mod_headers' parse_format_string).

    Backslash escapes ``\\\\``, ``\\t`` are read (others stay as written); ``%%`` and a
    trailing ``%`` are a percent sign; ``%t``, ``%D``, ``%{VAR}e``, ``%{VAR}s`` and
    ``%l`` are filled in per request.

    Raises:
        BadDirective: an unknown specifier, or a CR or LF (``\\r``, ``\\n``) that would
            split the header.
    """
    parts: list[Union[str, FormatTag]] = []
    literal: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] in "\\rnt":
            esc = text[i + 1]
            if esc in "rn":
                raise BadDirective(f"a \\{esc} in a header value would split the header: {text!r}")
            literal.append("\\" if esc == "\\" else "\t")
            i += 2
            continue
        if c != "%":
            literal.append(c)
            i += 1
            continue
        i += 1
        if i >= n or text[i] == "%":
            literal.append("%")
            i += 1
            continue
        arg = ""
        if text[i] == "{":
            end = text.find("}", i)
            if end < 0:
                raise BadDirective(f"unterminated %{{ in {text!r}")
            arg, i = text[i + 1 : end], end + 1
            if i >= n:
                raise BadDirective(f"%{{{arg}}} needs a specifier letter after it in {text!r}")
        code = text[i]
        i += 1
        if code in "ib":
            raise BadDirective(f"%{code} (idle/busy workers of httpd's scoreboard) is not supported: tunnel has no worker scoreboard")
        if code not in _TAGS:
            raise BadDirective(f"unrecognized header format %{code} (known: %t, %D, %{{VAR}}e, %{{VAR}}s, %l, %%)")
        if code in "es" and not arg:
            raise BadDirective(f"%{code} needs a variable name: %{{NAME}}{code}")
        if literal:
            parts.append(as_wire_text("".join(literal)))
            literal = []
        parts.append(FormatTag(code, arg))
    if literal:
        parts.append(as_wire_text("".join(literal)))
    return tuple(parts)


def _condition(word: str) -> Condition:
    lowered = word.lower()
    if lowered.startswith("env="):
        var = word[4:]
        negate = var.startswith("!")
        if negate:
            var = var[1:]
        if not var:
            raise BadDirective(f'missing environment variable name in "{word}" (expected env=VAR or env=!VAR)')
        return Condition(var=var, negate=negate, text=word)
    if lowered.startswith("expr="):
        source = word[5:]
        if not source:
            raise BadDirective("expr= needs an expression")
        try:
            return Condition(expr=parse_expr(source), text=word)
        except BadDirective as exc:
            raise BadDirective(f"cannot parse expr=: {exc}") from None
    if lowered in ("always", "onsuccess"):
        raise BadDirective(f'"{word}" must come first, right after Header (Header {lowered} set NAME VALUE)')
    raise BadDirective(f'unknown parameter "{word}" (expected early, env=[!]VAR or expr=EXPRESSION)')


def parse_header(args: list[str], directive: str) -> tuple[str, HeaderOp]:
    """One Header/RequestHeader line (header_cmd, header_inout_cmd).

    Returns:
        The table it goes to ("request", "onsuccess" or "always") and the operation
        (file and line left for the caller).
    """
    words = list(args)
    table = "request"
    if directive == "Header":
        table = "onsuccess"
        if words and words[0].lower() in ("always", "onsuccess"):
            table = "always" if words.pop(0).lower() == "always" else "onsuccess"
    elif words and words[0].lower() in ("always", "onsuccess"):
        raise BadDirective(f'"{words[0]}" is a condition of Header only; RequestHeader takes none')
    if len(words) < 2:
        raise BadDirective(f"expected [{'always|onsuccess ' if directive == 'Header' else ''}]ACTION HEADER [VALUE] [REPLACEMENT] [CONDITION]")
    if len(words) > 5:
        raise BadDirective("too many arguments")
    action = words[0].lower()
    if action not in _ACTIONS:
        raise BadDirective(f'unknown action "{words[0]}" (expected one of {", ".join(_ACTIONS)})')
    name, value, subs, clause = words[1], *(words[2:] + [None, None, None])[:3]
    regex: Optional[re.Pattern[str]] = None
    if action in ("edit", "edit*"):
        if subs is None or value is None:
            raise BadDirective(f"{action} needs a regular expression and a replacement")
        regex = compile_regex(f"(?s){value}")
        value = subs
    else:
        if clause is not None:
            raise BadDirective("too many arguments")
        clause = subs
    if action in ("unset", "echo") and value is not None:
        if clause is not None:
            raise BadDirective(f"{action} takes a header and an optional condition only")
        clause, value = value, None
    if action == "echo":
        if directive != "Header":
            raise BadDirective("echo is an action of Header only (it copies request headers to the response)")
        regex = compile_regex(name)
    elif value is None and action != "unset":
        raise BadDirective(f"{action} needs a value")
    early = False
    condition: Optional[Condition] = None
    if clause is not None:
        if clause.lower() == "early":
            if directive == "Header":
                raise BadDirective("early is not supported for Header (only RequestHeader ... early)")
            early = True
        else:
            condition = _condition(clause)
    if action != "echo":
        name = name.partition(":")[0]
        if not _TOKEN.fullmatch(name):
            raise BadDirective(f'"{name}" is not a header name')
        if name.lower() in _FRAMING:
            raise BadDirective(f"{name} frames the message, which is the proxy's own business: it cannot be changed")
    fmt: Format = ()
    if value is not None and value.startswith("expr="):
        try:  # a string expression: text with %{VAR} parts (Require expr's variables)
            fmt = (FormatTag("expr", value[5:], parse_string_expr(as_wire_text(value[5:]))),)
        except BadDirective as exc:
            raise BadDirective(f"cannot parse the value {value}: {exc}") from None
    elif value is not None:
        fmt = compile_format(value)
    return table, HeaderOp(action, name, fmt, regex, condition, early)


def _setenvif_pattern(regex: str, nocase: bool) -> tuple[re.Pattern[str], bool]:
    """The value pattern, and whether it is a plain string (non_regex_pattern): no regex
    character outside a backslash escape; then its escapes are removed and it matches as
    a substring, and values keep ``$N`` as written."""
    plain: list[str] = []
    escaped = False
    literal = True
    for c in regex:
        if escaped:
            if c not in _REGEX_CHARS and c != "\\":
                literal = False
                break
            plain.append(c)
            escaped = False
        elif c == "\\":
            escaped = True
        elif c in _REGEX_CHARS:
            literal = False
            break
        else:
            plain.append(c)
    flags = "(?si)" if nocase else "(?s)"
    if literal and not escaped:
        return re.compile(flags + re.escape("".join(plain))), True
    return compile_regex(flags + regex), False


def parse_setenvif(args: list[str], directive: str, *, nocase: bool, in_location: bool) -> SetEnvIf:
    """One SetEnvIf/SetEnvIfNoCase/BrowserMatch/BrowserMatchNoCase line."""
    words = list(args)
    browser = directive.startswith("Browser")
    attribute = "User-Agent" if browser else (words.pop(0) if words else "")
    if not attribute:
        raise BadDirective("expected ATTRIBUTE REGEX [!]VAR[=VALUE] ...")
    if not words:
        raise BadDirective("missing regular expression")
    regex, literal = _setenvif_pattern(words.pop(0), nocase)
    features: dict[str, tuple[str, Optional[str]]] = {}
    early = False
    for word in words:
        # add_envvars: VAR=VALUE sets; !VAR (no value) unsets; anything else, "VAR=" too, sets 1.
        var, _, val = word.partition("=")
        if word == "--early":
            if in_location:
                raise BadDirective("--early is only allowed in the server context and <VirtualHost>")
            early = True
            continue
        if val:
            feature: tuple[str, Optional[str]] = (var, as_wire_text(val))
        elif var.startswith("!") and len(var) > 1:
            feature = (var[1:], None)
        else:
            feature = (var, "1")
        if not feature[0]:
            raise BadDirective(f'"{word}" names no variable (expected [!]VAR[=VALUE])')
        features[feature[0].lower()] = feature
    if not features and not early:
        raise BadDirective("missing variable to set ([!]VAR[=VALUE] ...)")
    special = attribute.lower() if attribute.lower() in _SPECIAL else ""
    name_regex = None
    if not special and not _PLAIN_NAME.fullmatch(attribute):
        name_regex = compile_regex(f"(?i){attribute}" if nocase else attribute)
    return SetEnvIf(attribute, special, regex, literal, tuple(features.values()), name_regex, early)


@dataclass
class EnvDraft:
    """One context's lines while they are read."""

    request: list[HeaderOp] = field(default_factory=list)
    onsuccess: list[HeaderOp] = field(default_factory=list)
    always: list[HeaderOp] = field(default_factory=list)
    env_vars: dict[str, tuple[str, str]] = field(default_factory=dict)  # lower name -> (name, value)
    env_unset: dict[str, str] = field(default_factory=dict)
    setenvif: list[SetEnvIf] = field(default_factory=list)

    def freeze(self) -> EnvDirectives:
        return EnvDirectives(
            request=tuple(self.request),
            onsuccess=tuple(self.onsuccess),
            always=tuple(self.always),
            env_vars=tuple(self.env_vars.values()),
            env_unset=tuple(self.env_unset.values()),
            setenvif=tuple(self.setenvif),
        )


class HeaderHooks:
    """The parser's handlers for the header and environment directives."""

    file: str
    line: int

    def warn(self, text: str) -> None:
        raise NotImplementedError

    def _env_context(self) -> tuple[EnvDraft, bool]:
        """The current context's draft, and whether it is a `<Location>` (per-directory)."""
        raise NotImplementedError

    def _header_line(self, args: list[str], directive: str) -> None:
        draft, in_location = self._env_context()
        table, op = parse_header(args, directive)
        if op.early and in_location:
            raise BadDirective("early is only allowed in the server context and <VirtualHost> (it runs before <Location> is known)")
        op = HeaderOp(op.action, op.name, op.value, op.regex, op.condition, op.early, self.file, self.line)
        getattr(draft, table).append(op)

    def _header(self, args: list[str]) -> None:
        self._header_line(args, "Header")

    def _request_header(self, args: list[str]) -> None:
        self._header_line(args, "RequestHeader")

    def _set_env(self, args: list[str]) -> None:
        if not 1 <= len(args) <= 2:
            raise BadDirective("expected VARIABLE [VALUE]")
        name = args[0]
        if "=" in name:
            self.warn(f"SetEnv {name}: '=' in a variable name (SetEnv NAME VALUE was probably meant)")
        draft, _ = self._env_context()
        draft.env_vars[name.lower()] = (name, as_wire_text(args[1]) if len(args) == 2 else "")

    def _unset_env(self, args: list[str]) -> None:
        if not args:
            raise BadDirective("expected one or more variable names")
        draft, _ = self._env_context()
        for name in args:
            draft.env_unset[name.lower()] = name
            draft.env_vars.pop(name.lower(), None)

    def _pass_env(self, args: list[str]) -> None:
        if not args:
            raise BadDirective("expected one or more variable names")
        draft, _ = self._env_context()
        for name in args:
            value = os.environ.get(name)
            if value is None:
                self.warn(f"PassEnv {name}: the variable is not set in tunnel's environment")
                continue
            draft.env_vars[name.lower()] = (name, as_wire_text(value))

    def _setenvif_line(self, args: list[str], directive: str, nocase: bool) -> None:
        draft, in_location = self._env_context()
        rule = parse_setenvif(args, directive, nocase=nocase, in_location=in_location)
        draft.setenvif.append(
            SetEnvIf(rule.attribute, rule.special, rule.regex, rule.literal, rule.features, rule.name_regex, rule.early, self.file, self.line)
        )

    def _set_env_if(self, args: list[str]) -> None:
        self._setenvif_line(args, "SetEnvIf", False)

    def _set_env_if_nocase(self, args: list[str]) -> None:
        self._setenvif_line(args, "SetEnvIfNoCase", True)

    def _browser_match(self, args: list[str]) -> None:
        self._setenvif_line(args, "BrowserMatch", False)

    def _browser_match_nocase(self, args: list[str]) -> None:
        self._setenvif_line(args, "BrowserMatchNoCase", True)
