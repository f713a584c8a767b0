"""mod_rewrite's directives, the part used for proxying: RewriteCond, RewriteRule and
RewriteOptions (RewriteEngine is a plain setting of the parser's table).

Per-server only (server context and `<VirtualHost>`): httpd's per-directory rules
(`<Location>`, `<Directory>`, .htaccess) strip a prefix and re-inject the request, which
tunnel does not do; a RewriteRule or RewriteCond in `<Location>` is refused. Every flag,
variable and pattern form tunnel does not implement is refused by name, never ignored
(docs/configuration.md, "mod_rewrite"; docs/httpd-behaviour.md, R63-R68).
"""

from __future__ import annotations

import re
from typing import Optional, Union

from .build import LocationDraft, ScopeDraft
from .model import RewriteCond, RewriteRule
from .values import BadDirective, Expected, compile_regex

__all__ = ["RewriteDirectives", "check_template", "VARIABLES", "split_flags"]

#: The %{NAME} variables tunnel knows (besides %{HTTP:header} and %{ENV:name}).
VARIABLES = frozenset(
    {
        "HTTP_HOST",
        "HTTP_COOKIE",
        "HTTP_REFERER",
        "HTTP_USER_AGENT",
        "HTTP_ACCEPT",
        "HTTP_FORWARDED",
        "HTTP_PROXY_CONNECTION",
        "REQUEST_URI",
        "QUERY_STRING",
        "REQUEST_METHOD",
        "REQUEST_SCHEME",
        "HTTPS",
        "REMOTE_ADDR",
        "REMOTE_PORT",
        "SERVER_PORT",
        "SERVER_NAME",
        "SERVER_PROTOCOL",
        "THE_REQUEST",
    }
)

#: httpd's file tests: tunnel serves no files, so none can be answered.
_FILE_TESTS = frozenset({"-d", "-f", "-F", "-h", "-l", "-L", "-s", "-U", "-x"})
_INT_TESTS = frozenset({"-eq", "-ne", "-lt", "-le", "-gt", "-ge"})
_LEXICAL = ("<=", ">=", "=", "<", ">")
_VAR_RE = re.compile(r"%\{([^}]*)\}")
_MAP_RE = re.compile(r"\$\{")

#: Rule flags: lower-case long or short name -> the canonical short name.
_RULE_FLAGS = {
    "p": "P", "proxy": "P",
    "l": "L", "last": "L",
    "end": "END",
    "nc": "NC", "nocase": "NC",
    "qsa": "QSA", "qsappend": "QSA",
    "qsd": "QSD", "qsdiscard": "QSD",
    "ne": "NE", "noescape": "NE",
    "pt": "PT", "passthrough": "PT",
    "f": "F", "forbidden": "F",
    "g": "G", "gone": "G",
    "ns": "NS", "nosubreq": "NS",
}  # fmt: skip
#: Flags httpd has and tunnel refuses, with the reason.
_REFUSED_RULE_FLAGS = {
    "c": "chaining", "chain": "chaining",
    "n": "re-running the rules", "next": "re-running the rules",
    "s": "skipping rules", "skip": "skipping rules",
    "t": "MIME types (tunnel serves no files)", "type": "MIME types (tunnel serves no files)",
    "h": "handlers (tunnel serves no files)", "handler": "handlers (tunnel serves no files)",
    "b": "escaping back-references", "bnp": "escaping back-references", "bne": "escaping back-references",
    "bctls": "escaping back-references",
    "co": "setting cookies", "cookie": "setting cookies",
    "dpi": "per-directory path info", "discardpath": "per-directory path info",
    "qsl": "the last-? query split", "qslast": "the last-? query split",
    "unsafeallow3f": "unsafe flags", "unsafeprefixstat": "unsafe flags", "unc": "UNC paths",
}  # fmt: skip
_COND_FLAGS = {"nc": "NC", "nocase": "NC", "or": "OR", "ornext": "OR", "nv": "NV", "novary": "NV"}


def check_template(text: str) -> None:
    """Refuse %{...} variables tunnel does not know and ${map:...} lookups."""
    if _MAP_RE.search(text):
        raise BadDirective(f'RewriteMap lookups (${{map:key}}) are not supported: "{text}"')
    for m in _VAR_RE.finditer(text):
        name = m.group(1)
        kind, colon, arg = name.partition(":")
        if colon and kind.upper() in ("HTTP", "ENV") and arg:
            continue
        if colon:
            raise BadDirective(f"%{{{name}}}: only %{{HTTP:header}} and %{{ENV:name}} lookups are supported")
        if name.upper() not in VARIABLES:
            known = ", ".join(sorted(VARIABLES))
            raise BadDirective(f"unknown or unsupported variable %{{{name}}} (supported: {known}, HTTP:, ENV:)")


def split_flags(text: Optional[str]) -> list[str]:
    """The words of a ``[a,b,c]`` flags argument."""
    if text is None:
        return []
    if not (text.startswith("[") and text.endswith("]")):
        raise Expected("[flags] as the last argument", text)
    return [w.strip() for w in text[1:-1].split(",") if w.strip()]


def _cond(args: list[str], file: str, line: int) -> RewriteCond:
    if len(args) not in (2, 3):
        raise BadDirective("expected TestString CondPattern [flags]")
    test, pattern = args[0], args[1]
    if test.lower() == "expr":
        raise BadDirective("expr conditions are not supported")
    check_template(test)
    nocase = ornext = False
    for flag in split_flags(args[2] if len(args) == 3 else None):
        name = _COND_FLAGS.get(flag.lower())
        if name is None:
            raise BadDirective(f'unknown or unsupported RewriteCond flag "{flag}" (supported: NC, OR, NV)')
        nocase = nocase or name == "NC"
        ornext = ornext or name == "OR"
    negate = pattern.startswith("!")
    if negate:
        pattern = pattern[1:]
    if pattern in _FILE_TESTS:
        raise BadDirective(f"the file test {pattern} is not supported: tunnel serves no files")
    kind = "regex"
    if pattern in _INT_TESTS:
        raise BadDirective(f"{pattern} needs a value: write it as {pattern}N")
    for op in sorted(_INT_TESTS):
        if pattern.startswith(op):
            kind, pattern = op, pattern[len(op) :]
            if not re.fullmatch(r"-?[0-9]{1,18}", pattern):
                raise Expected(f"an integer after {op}", pattern)
            break
    else:
        if pattern.startswith("-") and re.fullmatch(r"-[A-Za-z]{1,3}", pattern):
            raise BadDirective(f"unknown or unsupported test {pattern}")
        for op in _LEXICAL:
            if pattern.startswith(op):
                kind, pattern = op, pattern[len(op) :]
                break
    regex = None
    if kind == "regex":
        regex = compile_regex(f"(?si){pattern}" if nocase else f"(?s){pattern}")  # httpd: "." matches a newline
    elif pattern.startswith('"') and pattern.endswith('"') and len(pattern) >= 2:
        pattern = pattern[1:-1]
    return RewriteCond(test, pattern, kind, negate, nocase, ornext, file, line, regex)


def _rule(args: list[str], conds: tuple[RewriteCond, ...], file: str, line: int) -> RewriteRule:
    if len(args) not in (2, 3):
        raise BadDirective("expected Pattern Substitution [flags]")
    pattern, substitution = args[0], args[1]
    if substitution != "-":
        check_template(substitution)
    seen: set[str] = set()
    values: dict[str, object] = {}
    env: list[tuple[str, str]] = []
    for flag in split_flags(args[2] if len(args) == 3 else None):
        name, eq, value = flag.partition("=")
        key = name.lower()
        if key in ("r", "redirect"):
            status = 302
            if eq:
                status = {"permanent": 301, "temp": 302, "seeother": 303}.get(value.lower(), 0) or (
                    int(value) if re.fullmatch(r"[0-9]{3}", value) else 0
                )
                if not 300 <= status <= 399:
                    raise Expected("R=3xx (or permanent, temp, seeother)", flag)
            values["redirect"] = status
            continue
        if key in ("e", "env"):
            var, colon, val = value.partition(":")
            if not eq or not colon or not var or var.startswith("!"):
                raise Expected("E=VAR:value (unsetting with E=!VAR is not supported)", flag)
            check_template(val)
            env.append((var, val))
            continue
        if key in _REFUSED_RULE_FLAGS:
            raise BadDirective(f'the RewriteRule flag "{flag}" ({_REFUSED_RULE_FLAGS[key]}) is not supported')
        short = _RULE_FLAGS.get(key)
        if short is None or eq:
            raise BadDirective(
                f'unknown or unsupported RewriteRule flag "{flag}" '
                "(supported: P, L, END, NC, QSA, QSD, NE, PT, R[=3xx], F, G, E=VAR:value, NS)"
            )
        seen.add(short)
    negate = pattern.startswith("!")
    source = pattern[1:] if negate else pattern
    nocase = "NC" in seen
    regex = compile_regex(f"(?si){source}" if nocase else f"(?s){source}")  # httpd: "." matches a newline
    if "P" in seen and ("redirect" in values or seen & {"F", "G"}):
        raise BadDirective("[P] cannot be combined with [R], [F] or [G]")
    if "P" in seen and substitution == "-":
        raise BadDirective("[P] needs a substitution URL, not -")
    literal = substitution[:1] not in ("%", "$")
    if "P" in seen and literal and not re.match(r"(?i)(ws|wss|http|https|balancer)://", substitution):
        raise Expected("[P] to a ws://, wss://, http://, https:// or balancer:// URL", substitution)
    absolute = re.match(r"(?i)[a-z][a-z0-9+.-]*://", substitution)
    if literal and substitution != "-" and not absolute and not substitution.startswith("/"):
        raise Expected("-, a URL-path starting with /, or an absolute URL as the substitution", substitution)
    return RewriteRule(
        source,
        substitution,
        conds,
        negate=negate,
        nocase=nocase,
        proxy="P" in seen,
        last="L" in seen,
        end="END" in seen,
        qsa="QSA" in seen,
        qsd="QSD" in seen,
        noescape="NE" in seen,
        passthrough="PT" in seen,
        redirect=int(str(values.get("redirect", 0))),
        forbidden="F" in seen,
        gone="G" in seen,
        env=tuple(env),
        flags=args[2] if len(args) == 3 else "",
        file=file,
        line=line,
        regex=regex,
    )


class RewriteDirectives:
    """The parser's handlers for the rewrite directives (mixed into the parser)."""

    file: str
    line: int

    def _rewrite_scope(self) -> tuple[ScopeDraft, Optional[LocationDraft]]:
        """The server's or vhost's draft, and the `<Location>` the directive stands in."""
        raise NotImplementedError

    def warn(self, text: str) -> None:
        raise NotImplementedError

    def _here(self) -> Union[ScopeDraft, LocationDraft]:
        draft, location = self._rewrite_scope()
        return location if location is not None else draft

    def _rewrite_base(self, args: list[str]) -> None:
        _, location = self._rewrite_scope()
        if location is None:
            raise BadDirective("only valid in <Location> (per-directory context)")
        if len(args) != 1 or not args[0].startswith("/"):
            raise Expected("a URL-path starting with /", " ".join(args))
        location.rewrite_base = args[0]

    def _rewrite_cond(self, args: list[str]) -> None:
        self._here().rewrite_conds.append(_cond(args, self.file, self.line))

    def _rewrite_rule(self, args: list[str]) -> None:
        draft = self._here()
        rule = _rule(args, tuple(draft.rewrite_conds), self.file, self.line)
        local = rule.substitution.startswith("/") and not (rule.redirect or rule.forbidden or rule.gone)
        if local and not rule.passthrough and isinstance(draft, ScopeDraft):
            self.warn(
                f"RewriteRule {rule.pattern} {rule.substitution}: a local path without [PT]; httpd would map it "
                "to a file and skip ProxyPass, tunnel (which serves no files) routes it through ProxyPass as [PT] does"
            )
        draft.rewrite_conds.clear()
        draft.rewrite_rules.append(rule)

    def _rewrite_options(self, args: list[str]) -> None:
        draft = self._here()
        if isinstance(draft, LocationDraft):
            raise BadDirective("RewriteOptions inside <Location> is not supported (its rules replace the outer ones)")
        if not args:
            raise BadDirective("expected Inherit or InheritBefore")
        for word in args:
            if word.lower() not in ("inherit", "inheritbefore"):
                raise BadDirective(f'unsupported option "{word}" (supported: Inherit, InheritBefore)')
            draft.rewrite_options = word.lower()
