"""httpd core's configuration-language directives, mixed into the parser: ``Define``,
``UnDefine``, ``${VAR}``, the conditional sections (``<IfDefine>``, ``<IfVersion>``,
``<IfFile>``), and the core server directives that are not plain settings
(``ServerName``, ``Protocols``, ``HostnameLookups``, ``UseCanonicalName``, ``TraceEnable``,
``ErrorDocument``).

``${NAME}`` is replaced when the line is read (httpd's ap_resolve_env runs over the
whole line before it is split into words, R88): from the names ``Define`` gave a value
(and ``-D``), then the process environment. An undefined name is a config error here
(httpd warns and keeps the text, which then fails later, far from its cause); a name
holding ``:`` is left as written, as httpd leaves it (``${map:key}`` is mod_rewrite's).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, Optional

from .values import BadDirective, Expected, on_off, server_name_port

__all__ = ["CoreHooks", "HTTPD_VERSION", "resolve_variables"]

#: The httpd version `<IfVersion>` compares with: tunnel follows httpd 2.4's semantics.
HTTPD_VERSION = (2, 4, 62)

_VAR_RE = re.compile(r"\$\{([^}]*)\}")
_VERSION_RE = re.compile(r"([0-9]+)(?:\.([0-9]+))?(?:\.([0-9]+))?")
#: The protocols ``Protocols`` may name (R140).
PROTOCOLS = ("h2", "http/1.1")


def resolve_variables(line: str, defined: Mapping[str, Optional[str]], environ: Mapping[str, str]) -> str:
    """``line`` with each ``${NAME}`` replaced (R88).

    Args:
        line: a logical configuration line.
        defined: the names ``Define`` (or ``-D``) gave, a value or None.
        environ: the process environment.

    Returns:
        The line; ``${NAME?=default}`` gives ``default`` when NAME is not defined (as
        httpd's newer releases do); a name with ``:`` stays as written.

    Raises:
        BadDirective: a name is neither defined with a value nor in the environment.
    """
    if "${" not in line:
        return line

    def value(m: re.Match[str]) -> str:
        name, has_default, default = m.group(1).partition("?=")
        if ":" in name:
            return m.group(0)
        found = defined.get(name)
        if found is None:
            found = environ.get(name)
        if found is not None:
            return found
        if has_default:
            return default
        bare = " (Define gave it no value)" if name in defined else ""
        raise BadDirective(
            f"${{{name}}} is not defined{bare}: define it with \"Define {name} value\" before this line "
            f"(or pass -D), or export {name} in tunnel's environment (Debian's httpd files take "
            "APACHE_* names from /etc/apache2/envvars: source it first)"
        )

    return _VAR_RE.sub(value, line)


def _version(text: str) -> tuple[int, ...]:
    m = _VERSION_RE.fullmatch(text)
    if m is None:
        raise Expected("a version such as 2.4 or 2.4.10", text)
    return tuple(int(g) for g in m.groups() if g is not None)


def version_matches(args: list[str], have: tuple[int, int, int] = HTTPD_VERSION) -> bool:
    """mod_version's test: ``[[!]op] version`` (op = == > >= < <=, ~ or /re/ for a
    regex over "major.minor.patch"); a missing part of the version counts as 0."""
    if len(args) == 1:
        op, text = "=", args[0]
    elif len(args) == 2:
        op, text = args
    else:
        raise BadDirective("expected [[!]operator] version")
    negate = op.startswith("!")
    op = op[1:] if negate else op
    shown = ".".join(str(n) for n in have)
    if text.startswith("/") and text.endswith("/") and len(text) > 1 and len(args) == 1:
        op, text = "~", text[1:-1]
    if op == "~":
        try:
            result = re.search(text, shown) is not None
        except re.error as exc:
            raise BadDirective(f'bad regular expression "{text}": {exc}') from None
        return result != negate
    want = _version(text)
    want = want + (0,) * (3 - len(want))
    compare = {
        "=": have == want,
        "==": have == want,
        ">": have > want,
        ">=": have >= want,
        "<": have < want,
        "<=": have <= want,
    }
    if op not in compare:
        raise Expected("an operator among = == > >= < <= ~", op)
    return compare[op] != negate


class CoreHooks:
    """Define and friends, and the core directives with their own handler."""

    file: str
    line: int
    #: Define'd names: value or None (a bare ``Define NAME`` / ``-D NAME``).
    defines: dict[str, Optional[str]]
    environ: Mapping[str, str]
    ignored: list[tuple[str, str]]

    def warn(self, text: str) -> None:
        raise NotImplementedError

    def _set(self, setting: str, value: Any) -> None:
        raise NotImplementedError

    # -- Define ------------------------------------------------------------------------
    def resolve(self, line: str) -> str:
        return resolve_variables(line, self.defines, self.environ)

    def _define(self, args: list[str]) -> None:
        if not 1 <= len(args) <= 2:
            raise BadDirective("expected NAME [value]")
        if ":" in args[0]:
            raise BadDirective("a variable name must not contain ':'")
        self.defines[args[0]] = args[1] if len(args) == 2 else self.defines.get(args[0])

    def _undefine(self, args: list[str]) -> None:
        if len(args) != 1:
            raise BadDirective("expected NAME")
        if ":" in args[0]:
            raise BadDirective("a variable name must not contain ':'")
        self.defines.pop(args[0], None)

    def condition(self, key: str, args: list[str]) -> bool:
        """Whether a conditional section's body is read: ``<IfDefine [!]NAME>``,
        ``<IfVersion [[!]op] version>``, ``<IfFile [!]path>``."""
        if key == "ifversion":
            return version_matches(args)
        if len(args) != 1 or args[0] in ("", "!"):
            raise BadDirective("expected one [!]name" if key == "ifdefine" else "expected one [!]path")
        negate = args[0].startswith("!")
        name = args[0][1:] if negate else args[0]
        if key == "ifdefine":
            found = name in self.defines
        else:
            if not os.path.isabs(name):
                real_file = os.path.isabs(self.file) or os.path.isfile(self.file)
                base = os.path.dirname(os.path.abspath(self.file)) if real_file else os.getcwd()
                name = os.path.join(base, name)
            found = os.path.exists(name)
        return found != negate

    # -- core directives -------------------------------------------------------------------
    def _server_name(self, args: list[str]) -> None:
        if len(args) != 1:
            raise BadDirective(f"expected [scheme://]name[:port], got {len(args)} arguments")
        scheme, name, port = server_name_port(args[0])
        self._set("server_name", name)
        self._set("server_port", port)
        self._set("server_scheme", scheme)

    def _protocols(self, args: list[str]) -> None:
        # R140: h2 is served on TLS listeners (ALPN); h2c, HTTP/2 in clear text, is not.
        if not args:
            raise BadDirective("expected one or more of h2, http/1.1")
        names: list[str] = []
        for arg in args:
            name = arg.lower()
            if name == "h2c":
                raise BadDirective("h2c (HTTP/2 over cleartext) is not supported: HTTP/2 is served on TLS listeners only")
            if name not in PROTOCOLS:
                raise Expected("h2 or http/1.1", arg)
            if name not in names:
                names.append(name)
        self._set("protocols", tuple(names))

    def _protocols_honor_order(self, args: list[str]) -> None:
        if len(args) != 1:
            raise BadDirective("expected On or Off")
        self._set("protocols_honor_order", on_off(args[0]))

    def _hostname_lookups(self, args: list[str]) -> None:
        if len(args) != 1 or args[0].lower() not in ("on", "off", "double"):
            raise BadDirective("expected On, Off or Double")
        if args[0].lower() != "off":
            raise BadDirective(
                f"{args[0]} is not supported: tunnel never looks up client host names (%h logs the "
                "address); use HostnameLookups Off"
            )

    def _use_canonical_name(self, args: list[str]) -> None:
        if len(args) != 1 or args[0].lower() not in ("on", "off", "dns"):
            raise BadDirective("expected On, Off or DNS")
        if args[0].lower() == "dns":
            raise BadDirective("DNS is not supported: tunnel does not reverse-resolve its own address; use On or Off")
        self._set("use_canonical_name", args[0].lower() == "on")

    def _trace_enable(self, args: list[str]) -> None:
        if len(args) != 1 or args[0].lower() not in ("on", "off", "extended"):
            raise BadDirective("expected On, Off or Extended")
        self._set("trace_enable", args[0].lower())

    def _error_document(self, args: list[str]) -> None:
        if len(args) != 2 or not re.fullmatch(r"[1-5][0-9][0-9]", args[0]):
            raise BadDirective("expected a status code and a local URL, a URL or a message")
        if "://" in args[1]:
            raise BadDirective(
                f"{args[1]}: an ErrorDocument URL turns the {args[0]} answer into a redirect, which tunnel does "
                "not do; remove the line (tunnel answers errors with a plain-text body)"
            )
        self.ignored.append(("ErrorDocument", f"{self.file}:{self.line}"))
        self.warn(f"ErrorDocument {args[0]} is ignored: tunnel answers {args[0]} with its own plain-text body "
                  "(the status is the same)")
