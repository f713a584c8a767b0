"""The directive parser: configuration text (and its Includes) into a `Draft`.

Contexts follow httpd: server-only (Listen, MaxTunnelThreads, TunnelBufferLimit),
server and vhost (most), also `<Location>` for the per-directory ones (ProxyWebsocket*,
ProxyPreserveHost, ProxyAddHeaders, the one-argument ProxyPass). Balancer names are
global: `<Proxy balancer://x>` in a vhost defines the same balancer://x everywhere.
Paths (certificates, logs) are kept as written; ServerRoot is ignored.
Access control (Require, `<Require*>`, AuthMerging) is read by config/access.py's hooks;
`<Proxy URL>` and `<ProxyMatch>` blocks keep only those (R75).
"""

from __future__ import annotations

import functools
import glob
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import ConfigError
from .access import COMPAT_DIRECTIVES, AccessHooks, AuthzDraft, close_section, compat_directive
from .aliashooks import AliasHooks
from .build import BalancerDraft, Draft, LocationDraft, ScopeDraft, VhostDraft, finish
from .corehooks import CoreHooks
from .directives import HANDLERS, SECTIONS, SETTINGS, Ctx
from .lexer import logical_lines, split_words
from .loghooks import LogHooks
from .model import Config, Listener, Location, Member, ProxyAccess, ProxyRule
from .remoteip import RemoteIPHooks
from .rewrite import RewriteDirectives
from .tlshooks import TLSHooks
from .values import (
    IGNORED_DIRECTIVES,
    MAX_INCLUDE_DEPTH,
    SKIPPED_SECTIONS,
    BadDirective,
    Expected,
    accepted_worker_key,
    balancer_key,
    byte_size,
    compile_regex,
    listen_address,
    member_key,
    on_off,
    parse_url,
    positive_int,
    rule_key,
    seconds,
    server_name,
    url_keys,
)


@dataclass
class _Frame:
    """An open section. ``ctx`` None: transparent (`<IfModule>`)."""

    tag: str
    ctx: Optional[Ctx]
    file: str
    line: int
    scope: Optional[ScopeDraft] = None
    location: Optional[LocationDraft] = None
    balancer: Optional[str] = None
    vhost: Optional[VhostDraft] = None
    authz: Optional[AuthzDraft] = None  # its Require lines (a context's or a section's)


def _has_wildcards(pattern: str) -> bool:
    """apr_fnmatch_test: ``*``, ``?`` or a ``[...]`` set, outside backslash escapes."""
    escaped = False
    bracket = False
    for ch in pattern:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch in "*?":
            return True
        elif ch == "[":
            bracket = True
        elif ch == "]" and bracket:
            return True
    return False


def _one(args: list[str], what: str = "one argument") -> str:
    if len(args) != 1:
        raise BadDirective(f"expected {what}, got {len(args)} arguments")
    return args[0]


class _Parser(Draft, AccessHooks, LogHooks, RewriteDirectives, CoreHooks, TLSHooks, AliasHooks, RemoteIPHooks):
    """Reads lines into a `Draft`; `finish` turns it into a `Config`."""

    def __init__(self, defines: Optional[Mapping[str, Optional[str]]] = None, environ: Optional[Mapping[str, str]] = None) -> None:
        super().__init__()
        self.defines = dict(defines or {})
        self.environ = os.environ if environ is None else environ
        self.stack: list[_Frame] = [_Frame("", Ctx.SERVER, "", 0, scope=self.main)]
        self.includes: list[str] = []
        self.file = ""
        self.line = 0
        #: while skipping a section: [name, nesting depth, file, line]
        self.skipping: Optional[list[Any]] = None

    # -- reading -----------------------------------------------------------------------
    def read(self, text: str, filename: str) -> None:
        depth = len(self.stack)
        for number, line in logical_lines(text):
            self.file, self.line = filename, number
            if not line or line.startswith("#"):
                continue
            try:
                self._line(line if self.skipping is not None else self.resolve(line))
            except BadDirective as exc:
                raise ConfigError(str(exc), file=filename, line=number) from None
        if self.skipping is not None:
            name, _, file, line = self.skipping
            raise ConfigError(f"<{name}> is not closed", file=file, line=line)
        if len(self.stack) > depth:
            frame = self.stack[-1]
            raise ConfigError(f"<{frame.tag}> is not closed", file=frame.file, line=frame.line)

    def _line(self, line: str) -> None:
        if self.skipping is not None:
            if line.startswith("</"):
                self.skipping[1] -= 1
                if self.skipping[1] == 0:
                    self.skipping = None
            elif line.startswith("<"):
                self.skipping[1] += 1
            return
        if line.startswith("</"):
            self._close(line)
        elif line.startswith("<"):
            self._open(line)
        else:
            self.raw_line = line
            self._directive(split_words(line))

    def warn(self, text: str) -> None:
        self.warnings.append(f"{self.file}:{self.line}: {text}")

    # -- contexts ----------------------------------------------------------------------
    def _rewrite_scope(self) -> tuple[ScopeDraft, Optional[LocationDraft]]:
        return self.scope, self.frame.location

    @property
    def frame(self) -> _Frame:
        """The innermost section that is not transparent."""
        return next(f for f in reversed(self.stack) if f.ctx is not None)

    @property
    def scope(self) -> ScopeDraft:
        """The main server's or the enclosing vhost's builder."""
        return next(f.scope for f in reversed(self.stack) if f.scope is not None)

    def _check_context(self, contexts: frozenset[Ctx]) -> None:
        ctx = self.frame.ctx
        assert ctx is not None
        if ctx not in contexts:
            allowed = ", ".join(c.value for c in Ctx if c in contexts)
            raise BadDirective(f"not allowed in {ctx.value} (allowed in: {allowed})")

    # -- sections ----------------------------------------------------------------------
    def _open(self, line: str) -> None:
        if not line.endswith(">"):
            raise BadDirective(f'a section line must end with ">": {line}')
        words = split_words(line[1:-1])
        if not words:
            raise BadDirective("empty section name")
        key = words[0].lower()
        args = words[1:]
        if key in SKIPPED_SECTIONS or (key in ("limit", "limitexcept") and self.frame.ctx is Ctx.PROXY_URL):
            # <Limit> in <Proxy URL>: such blocks were skipped whole before their Require
            # lines were read, and published files carry them; skipped, as they were.
            self.warn(f"<{words[0]}> section is not used by tunnel; skipped")
            self.skipping = [words[0], 1, self.file, self.line]
            return
        if key not in SECTIONS:
            raise BadDirective(f"unknown section <{words[0]}>")
        name, contexts = SECTIONS[key]
        try:
            self._check_context(contexts)
            if key in ("ifdefine", "ifversion", "iffile"):
                if not self.condition(key, args):  # R88: the body is skipped unread
                    self.skipping = [words[0], 1, self.file, self.line]
                    return
                frame = self._new_frame(name, None)
            elif key.startswith("require"):
                frame = self._new_frame(name, Ctx.REQUIRE, authz=self.require_section(name, args))
            else:
                frame = getattr(self, f"_open_{key}")(args)
        except BadDirective as exc:
            raise BadDirective(f"<{name}>: {exc}") from None
        self.stack.append(frame)

    def _new_frame(self, tag: str, ctx: Optional[Ctx], **kw: Any) -> _Frame:
        return _Frame(tag, ctx, self.file, self.line, **kw)

    def _open_ifmodule(self, args: list[str]) -> _Frame:
        _one(args, "a module name")
        return self._new_frame("IfModule", None)

    def _open_virtualhost(self, args: list[str]) -> _Frame:
        if not args:
            raise BadDirective("expected one or more addr:port")
        vhost = VhostDraft(tuple(listen_address(a, vhost=True) for a in args), self.file, self.line)
        return self._new_frame("VirtualHost", Ctx.VHOST, scope=vhost.scope, vhost=vhost)

    def _open_location(self, args: list[str], tag: str = "Location") -> _Frame:
        regex = tag == "LocationMatch"
        if len(args) == 2 and args[0] == "~" and not regex:
            regex, args = True, args[1:]
        path = _one(args, "a URL path" if not regex else "a regular expression")
        compiled = compile_regex(path) if regex else None
        if not regex and not path.startswith("/"):
            raise Expected("a URL path starting with /", path)
        return self._new_frame(tag, Ctx.LOCATION, location=LocationDraft(path, regex, compiled))

    def _open_locationmatch(self, args: list[str]) -> _Frame:
        return self._open_location(args, "LocationMatch")

    def _open_proxy(self, args: list[str], tag: str = "Proxy") -> _Frame:
        if tag == "ProxyMatch" or (len(args) == 2 and args[0] == "~"):  # a regex: "~" marks it
            pattern = _one(args[-1:] if tag == "Proxy" else args, "a regular expression")
            compile_regex(pattern)
            return self._new_frame(tag, Ctx.PROXY_URL, balancer="~" + pattern)
        if not _one(args, "a URL or balancer://name").lower().startswith("balancer://"):
            return self._new_frame(tag, Ctx.PROXY_URL, balancer=args[0])  # access rules only
        url = parse_url(args[0])
        assert url.balancer is not None
        build = self._balancer(url.balancer)
        if not build.defined_at[0]:
            build.defined_at = (self.file, self.line)
        return self._new_frame("Proxy", Ctx.PROXY, balancer=url.balancer)

    def _open_proxymatch(self, args: list[str]) -> _Frame:
        return self._open_proxy(args, "ProxyMatch")

    def _close(self, line: str) -> None:
        if not line.endswith(">"):
            raise BadDirective(f'a section line must end with ">": {line}')
        name = line[2:-1].strip()
        top = self.stack[-1]
        if len(self.stack) == 1:
            raise BadDirective(f"</{name}> without a matching <{name}>")
        if name.lower() != top.tag.lower():
            raise BadDirective(f"</{name}> does not close <{top.tag}> (opened at {top.file}:{top.line})")
        if top.file != self.file:
            raise BadDirective(f"</{name}> closes a section opened in {top.file}")
        self.stack.pop()
        rules = top.authz.rules() if top.authz is not None and top.ctx is not Ctx.REQUIRE else None
        if top.ctx is Ctx.REQUIRE and top.authz is not None:
            close_section(top.authz, top.tag)
        elif top.ctx in (Ctx.PROXY_URL, Ctx.PROXY) and top.balancer is not None and rules is not None:
            pattern = top.balancer if top.ctx is Ctx.PROXY_URL else f"balancer://{top.balancer}"  # a prefix
            regex = compile_regex(pattern[1:]) if pattern.startswith("~") else None
            access = ProxyAccess(pattern.lstrip("~") if regex else pattern, rules, top.file, top.line, regex)
            self.scope.settings.setdefault("proxy_access", []).append(access)
        if top.vhost is not None:
            if rules is not None:
                top.vhost.scope.settings["access"] = rules
            self.vhosts.append(top.vhost)
        elif top.location is not None:
            loc, parent = top.location, self.scope
            if loc.rewrite_conds:
                cond = loc.rewrite_conds[0]
                raise ConfigError("RewriteCond: no RewriteRule follows it in its context", file=cond.file, line=cond.line)
            if loc.rule is not None:
                parent.location_rules.append(loc.rule)
            if loc.settings or rules is not None or loc.redirects or loc.rewrite_rules or loc.rewrite_base:
                parent.locations.append(
                    Location(
                        loc.path,
                        loc.is_regex,
                        tuple(loc.settings.items()),
                        top.file,
                        top.line,
                        loc.regex,
                        rules,
                        redirects=tuple(loc.redirects),
                        rewrite_rules=tuple(loc.rewrite_rules),
                        rewrite_base=loc.rewrite_base,
                    )
                )

    # -- directives --------------------------------------------------------------------
    def _directive(self, words: list[str]) -> None:
        name, args = words[0], words[1:]
        key = name.lower()
        if key in COMPAT_DIRECTIVES:  # those that restrict raise: ignoring them would open access
            self.warn(compat_directive(name, args))
            return
        if key in IGNORED_DIRECTIVES or (self.frame.ctx is Ctx.PROXY_URL and key not in ("require", "authmerging")):
            self.warn(f"{name} is not used by tunnel{' in <Proxy URL>' if key not in IGNORED_DIRECTIVES else ''}; ignored")
            self.ignored.append((name, f"{self.file}:{self.line}"))
            return
        if key in SETTINGS:
            canonical, setting, parser, contexts = SETTINGS[key]
        elif key in HANDLERS:
            canonical, method, contexts = HANDLERS[key]
        else:
            raise BadDirective(f'unknown directive "{name}" (not an httpd directive tunnel knows or ignores)')
        try:
            self._check_context(contexts)
            if key in SETTINGS:
                self._set(setting, parser(_one(args)))
            else:
                getattr(self, method)(args)
        except BadDirective as exc:
            raise BadDirective(f"{canonical}: {exc}") from None

    def _set(self, setting: str, value: Any) -> None:
        frame = self.frame
        target = frame.location.settings if frame.location is not None else self.scope.settings
        target[setting] = value

    def _listen(self, args: list[str]) -> None:
        if not 1 <= len(args) <= 2:
            raise BadDirective("expected [addr:]port [protocol]")
        host, port = listen_address(args[0])
        tls = False
        if len(args) == 2:
            protocol = args[1].lower()
            if protocol not in ("http", "https"):
                raise Expected("http or https as the protocol", args[1])
            tls = protocol == "https"
        if port and any(other.host == host and other.port == port for other in self.listeners):
            raise BadDirective(f"{args[0]} is already a listener")
        self.listeners.append(Listener(host, port, tls, self.file, self.line))

    def _server_alias(self, args: list[str]) -> None:
        if not args:
            raise BadDirective("expected one or more host names")
        vhost = self.frame.vhost
        assert vhost is not None
        vhost.aliases.extend(server_name(a) for a in args)

    # ProxyPass / ProxyPassMatch ---------------------------------------------------------
    def _proxy_pass(self, args: list[str], regex: bool = False) -> None:
        frame = self.frame
        loc = frame.location
        if loc is not None:
            if not args or args[0].startswith("/") and len(args) > 1 and ("://" in args[1] or args[1] == "!"):
                raise BadDirective("inside <Location> the path is the location's: expected URL [key=value ...]")
            if loc.rule is not None:
                raise BadDirective("only one ProxyPass per <Location>")
            path, url, rest = loc.path, args[0], args[1:]
            # httpd: a per-directory ProxyPass is a regex for ProxyPassMatch, or when the
            # block's path has wildcard characters (apr_fnmatch_test); otherwise it is a
            # prefix, even in <LocationMatch> (R1).
            regex = regex or _has_wildcards(path)
            compiled = compile_regex(path) if regex else None
            if loc.is_regex and not regex:
                self.warn(
                    f"ProxyPass in <LocationMatch {path}>: httpd takes {path!r} as a literal path prefix "
                    "(it has no *, ? or [...]), so the route only takes paths that start with it; "
                    "ProxyPassMatch makes it a regex"
                )
        else:
            if len(args) < 2:
                raise BadDirective("expected PATH URL [key=value ...] or PATH !")
            path, url, rest = args[0], args[1], args[2:]
            compiled = compile_regex(path) if regex else None
            if not regex and not path.startswith("/"):
                raise Expected("a URL path starting with /", path)
        rule = self._rule(path, url, rest, regex, compiled)
        if loc is not None:
            loc.rule = rule
        else:
            self.scope.rules.append(rule)

    def _proxy_pass_match(self, args: list[str]) -> None:
        self._proxy_pass(args, regex=True)

    def _proxy_pass_reverse(self, args: list[str]) -> None:
        """``ProxyPassReverse [path] url [interpolate]`` (the path is a <Location>'s own)."""
        loc = self.frame.location
        words = [a for a in args if a.lower() != "interpolate"]
        if len(words) != len(args):
            raise BadDirective("interpolate is not supported (ProxyPassInterpolateEnv is not implemented)")
        if loc is not None:
            if len(words) != 1:
                raise BadDirective("inside <Location> the path is the location's: expected one URL")
            if loc.is_regex:
                raise BadDirective("not allowed in <LocationMatch> (httpd needs a path to map to)")
            path, url = loc.path, words[0]
        elif len(words) == 2:
            path, url = words
        else:
            raise BadDirective("expected PATH URL")
        if not path.startswith("/"):
            raise Expected("a URL path starting with /", path)
        if "://" not in url:
            raise Expected("a URL (http://host/..., balancer://name/...)", url)
        self.scope.settings.setdefault("reverse_maps", []).append((path, url, self.file, self.line))

    def _proxy_requests(self, args: list[str]) -> None:
        if not on_off(_one(args)):
            return  # Off, the default: a reverse proxy only
        raise BadDirective("On is not supported: tunnel is a reverse proxy, not a forward proxy")

    def _rule(
        self, path: str, url: str, rest: list[str], regex: bool, compiled: Optional[re.Pattern[str]]
    ) -> ProxyRule:
        # Where the rule was written, and its regex: the same for every kind of rule.
        rule_here = functools.partial(ProxyRule, path, file=self.file, line=self.line, is_regex=regex, regex=compiled)
        if url == "!":
            if rest:
                raise BadDirective("an exclusion (!) takes no keys")
            return rule_here(exclude=True)
        parsed = parse_url(url)
        pairs, flags = url_keys(rest, flags=("nocanon",))
        keys = tuple(pairs)
        if parsed.balancer is not None:
            build = self._balancer(parsed.balancer)
            for key, value in pairs:
                build.params[key] = balancer_key(key, value)
            rule = rule_here(
                balancer=parsed.balancer,
                balancer_path=parsed.balancer_path,
                nocanon="nocanon" in flags,
                keys=keys,
            )
            self.balancer_refs.append(rule)
            return rule
        values: dict[str, Any] = {}
        for key, value in pairs:
            try:
                rule_key(key, value, values)
            except Expected as exc:
                raise BadDirective(f"{key}= {exc}") from None
        return rule_here(target=parsed.target, nocanon="nocanon" in flags, keys=keys, **values)

    # balancers --------------------------------------------------------------------------
    def _balancer(self, name: str) -> BalancerDraft:
        return self.balancers.setdefault(name, BalancerDraft(name))

    def _balancer_from(self, args: list[str], directive_form: str) -> tuple[BalancerDraft, list[str]]:
        """The block's balancer, or the ``balancer://name`` first argument outside one."""
        frame = self.frame
        if frame.balancer is not None:
            return self.balancers[frame.balancer], args
        if not args or not args[0].lower().startswith("balancer://"):
            raise BadDirective(f"outside <Proxy balancer://...> expected {directive_form}")
        url = parse_url(args[0])
        assert url.balancer is not None
        return self._balancer(url.balancer), args[1:]

    def _balancer_member(self, args: list[str]) -> None:
        build, args = self._balancer_from(args, "balancer://name URL [key=value ...]")
        if not args:
            raise BadDirective("expected URL [key=value ...]")
        parsed = parse_url(args[0])
        if parsed.target is None:
            raise Expected("a ws://, wss://, http://, https:// or unix: URL", args[0])
        pairs, _ = url_keys(args[1:])
        values = {key: member_key(key, value) for key, value in pairs if not accepted_worker_key(key, value)}
        build.members.append(Member(parsed.target, file=self.file, line=self.line, **values))
        if not build.defined_at[0]:
            build.defined_at = (self.file, self.line)

    def _proxy_set(self, args: list[str]) -> None:
        build, args = self._balancer_from(args, "balancer://name key=value ...")
        if not args:
            raise BadDirective("expected key=value ...")
        pairs, _ = url_keys(args)
        for key, value in pairs:
            build.params[key] = balancer_key(key, value)

    def _location(self) -> Optional[LocationDraft]:
        return self.frame.location

    def in_vhost(self) -> bool:
        return self.frame.ctx is Ctx.VHOST

    def vhost_addresses(self) -> tuple[tuple[str, int], ...]:
        vhost = self.frame.vhost
        return vhost.addresses if vhost is not None else ()

    def _scope_setting(self, key: str) -> list[Any]:
        value: list[Any] = self.scope.settings.setdefault(key, [])
        return value

    def authz_holder(self, create: bool = True) -> AuthzDraft:
        frame = self.frame
        if frame.authz is None:
            frame.authz = AuthzDraft("any", False, self.file, self.line, implicit=True)
        return frame.authz

    # global values ------------------------------------------------------------------------
    def _max_tunnel_threads(self, args: list[str]) -> None:
        self.globals["max_tunnel_threads"] = positive_int(_one(args))

    def _tunnel_buffer_limit(self, args: list[str]) -> None:
        self.globals["buffer_limit"] = byte_size(_one(args))

    def _request_read_timeout(self, args: list[str]) -> None:
        if not args:
            raise BadDirective("expected header=N[-M][,MinRate=R] ...")
        for word in args:
            kind, eq, spec = word.partition("=")
            parts = spec.split(",")
            valid = (
                eq
                and kind.lower() in ("header", "body", "handshake")
                and re.fullmatch(r"[0-9]{1,12}(?:\.[0-9]{1,9})?(?:-[0-9]{1,12})?", parts[0])
                and all(re.fullmatch(r"(?i)minrate=[0-9]{1,12}", p) for p in parts[1:])
            )
            if not valid:
                raise Expected("header=N[-M][,MinRate=R] (or body=, handshake=)", word)
            if kind.lower() == "header":
                self._set("limits.header_timeout", seconds(parts[0].split("-")[0]))

    # TLS -----------------------------------------------------------------------------------
    def _ssl_engine(self, args: list[str]) -> None:
        self._set("tls.engine", on_off(_one(args)))
        self.scope.ssl_engine_at = (self.file, self.line)

    # Include -----------------------------------------------------------------------------------
    def _include(self, args: list[str], optional: bool = False) -> None:
        pattern = _one(args, "a file, directory or glob")
        if not os.path.isabs(pattern):
            real_file = os.path.isabs(self.file) or os.path.isfile(self.file)
            base = os.path.dirname(os.path.abspath(self.file)) if real_file else os.getcwd()
            pattern = os.path.join(base, pattern)
        if any(c in pattern for c in "*?["):
            files = sorted(p for p in glob.glob(pattern) if os.path.isfile(p))
            if not files and not optional:
                raise BadDirective(f"no file matches {pattern} (IncludeOptional allows that)")
        elif os.path.isdir(pattern):
            files = sorted(
                os.path.join(root, f) for root, _, names in os.walk(pattern) for f in names
            )
        elif os.path.exists(pattern):
            files = [pattern]
        elif optional:
            files = []
        else:
            raise BadDirective(f"{pattern} does not exist")
        for path in files:
            self._read_file(path)

    def _include_optional(self, args: list[str]) -> None:
        self._include(args, optional=True)

    def _read_file(self, path: str) -> None:
        real = os.path.realpath(path)
        if real in self.includes:
            raise BadDirective(f"include loop: {path} is already being read")
        if len(self.includes) >= MAX_INCLUDE_DEPTH:
            raise BadDirective(f"includes nested deeper than {MAX_INCLUDE_DEPTH}")
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except UnicodeDecodeError:
            raise BadDirective(f"{path} is not valid UTF-8") from None
        except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
            raise BadDirective(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
        file, line = self.file, self.line
        self.includes.append(real)
        try:
            self.read(text, path)
        finally:
            self.includes.pop()
            self.file, self.line = file, line


def parse(
    text: str,
    *,
    filename: str = "<config>",
    defines: Optional[Mapping[str, Optional[str]]] = None,
    environ: Optional[Mapping[str, str]] = None,
) -> Config:
    """Parse httpd-style configuration text into a `Config`.

    Args:
        text: the configuration.
        filename: named in errors and warnings; ``Include`` paths are relative to its
            folder when it is a file, else to the working directory.
        defines: names defined before the first line (``-D NAME``; a value or None).
        environ: where ``${NAME}`` looks after the Define'd names (default: os.environ).

    Returns:
        The configuration, its warnings in ``Config.warnings`` ("file:line: text").

    Raises:
        ConfigError: naming the file, the line and what was expected.
    """
    parser = _Parser(defines, environ)
    if os.path.isfile(filename):
        parser.includes.append(os.path.realpath(filename))
    parser.read(text, filename)
    root = parser.stack[0].authz
    try:
        if root is not None and (rules := root.rules()) is not None:
            parser.main.settings["access"] = rules
    except BadDirective as exc:
        raise ConfigError(str(exc), file=root.file if root else filename, line=root.line if root else 0) from None
    return finish(parser, filename)
