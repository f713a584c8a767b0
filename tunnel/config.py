"""The httpd-style configuration language, parsed into frozen dataclasses.

The model (this first part) is the contract the rest of the package reads; the parser
(``parse``) below turns configuration text into it. Nothing here touches sockets.

Scopes nest as httpd's do: the global server context, ``<VirtualHost>`` blocks and
``<Location>`` blocks. A child scope inherits every value it does not set itself
(HTTPD-BEHAVIOUR.md §0: "a child scope inherits every value it does not set").
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from .errors import ConfigError

__all__ = [
    "Config",
    "ConfigError",
    "Listener",
    "Target",
    "ProxyRule",
    "Member",
    "Balancer",
    "Scope",
    "VirtualHost",
    "ServerTLS",
    "ProxyTLS",
    "LogConfig",
    "Limits",
    "Location",
    "parse",
    "route_warnings",
    "summary",
]

#: httpd's `Timeout` default, seconds.
DEFAULT_TIMEOUT = 60.0
#: httpd's `retry=` default for a worker in error state, seconds.
DEFAULT_RETRY = 60.0
#: `RequestReadTimeout header=` default (mod_reqtimeout's 20-40 is per-rate; we use one
#: total deadline of 10 s, HTTPD-BEHAVIOUR.md R41).
DEFAULT_HEADER_TIMEOUT = 10.0
#: httpd's LimitRequestLine / LimitRequestFieldSize / LimitRequestFields defaults.
DEFAULT_LIMIT_REQUEST_LINE = 8190
DEFAULT_LIMIT_REQUEST_FIELDSIZE = 8190
DEFAULT_LIMIT_REQUEST_FIELDS = 100
#: Sync tunnel threads when no `MaxTunnelThreads` is given: enough for a small host,
#: bounded so a flood of tunnels cannot exhaust memory with thread stacks.
DEFAULT_MAX_TUNNEL_THREADS = 256


@dataclass(frozen=True)
class Listener:
    """One `Listen [addr:]port [protocol]` line. ``host`` is "" for all addresses."""

    host: str
    port: int
    tls: bool = False
    file: str = "<config>"
    line: int = 0

    @property
    def display(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else (self.host or "0.0.0.0")
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class Target:
    """A backend URL from configuration: ``scheme://host:port/path``.

    ``scheme`` is one of ws, wss, http, https. ``unix_path`` is set for
    ``unix:/path|ws://host/...`` targets (configuration only, R11/R50).
    ``port`` is always filled (defaults 80/443). ``path`` starts with "/".
    """

    scheme: str
    host: str
    port: int
    path: str = "/"
    unix_path: Optional[str] = None

    @property
    def tls(self) -> bool:
        return self.scheme in ("wss", "https")

    @property
    def is_ws(self) -> bool:
        return self.scheme in ("ws", "wss")

    @property
    def default_port(self) -> int:
        return 443 if self.tls else 80

    @property
    def authority(self) -> str:
        """``host[:port]`` as the Host header names it (port left out when default)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == self.default_port else f"{host}:{self.port}"

    def __str__(self) -> str:
        base = f"{self.scheme}://{self.authority}{self.path}"
        return f"unix:{self.unix_path}|{base}" if self.unix_path else base


@dataclass(frozen=True)
class ProxyRule:
    """One `ProxyPass` / `ProxyPassMatch` line (or `<Location>`'s one-argument form).

    Exactly one of ``target`` / ``balancer`` is set, or neither for an exclusion (``!``).

    Attributes:
        path: the prefix (ProxyPass) or the regex source (ProxyPassMatch).
        is_regex: True for ProxyPassMatch.
        upgrade: None when no ``upgrade=`` key was given (scheme default applies), else
            the tokens: ``("*",)`` for ANY, ``("NONE",)`` for NONE, or a token list.
        timeout / connectiontimeout / retry: route keys in seconds, None when not set.
        keys: every key=value as written, for logs and configtest.
        balancer_path: the path after ``balancer://name`` (a template for ProxyPassMatch).
        balancer_scheme / balancer_upgrade: the scheme and ``upgrade=`` of the balancer's
            first member, filled in at the end of parsing; routing decides a balancer
            route's default upgrade from them (a ws/wss first member: ``websocket``).
        regex: the compiled ProxyPassMatch pattern (or `<LocationMatch>` one), compiled
            once at parse time.
    """

    path: str
    target: Optional[Target] = None
    balancer: Optional[str] = None
    is_regex: bool = False
    exclude: bool = False
    upgrade: Optional[tuple[str, ...]] = None
    timeout: Optional[float] = None
    connectiontimeout: Optional[float] = None
    retry: Optional[float] = None
    nocanon: bool = False
    keys: tuple[tuple[str, str], ...] = ()
    file: str = "<config>"
    line: int = 0
    balancer_path: str = "/"
    balancer_scheme: Optional[str] = None
    balancer_upgrade: Optional[tuple[str, ...]] = None
    regex: Optional[re.Pattern[str]] = field(default=None, compare=False, repr=False)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Member:
    """One `BalancerMember`. ``status`` holds the set flags among "DSHIRN" (R42)."""

    target: Target
    loadfactor: int = 1
    lbset: int = 0
    route: str = ""
    redirect: str = ""
    retry: float = DEFAULT_RETRY
    status: frozenset[str] = frozenset()
    connectiontimeout: Optional[float] = None
    timeout: Optional[float] = None
    upgrade: Optional[tuple[str, ...]] = None
    file: str = "<config>"
    line: int = 0


@dataclass(frozen=True)
class Balancer:
    """A `<Proxy balancer://name>` block (and `ProxySet` / `BalancerMember` lines)."""

    name: str  # as in the URL: "balancer://cluster" -> "cluster"
    members: tuple[Member, ...] = ()
    lbmethod: str = "byrequests"  # byrequests | bybusyness | bytraffic
    stickysession: tuple[str, ...] = ()  # cookie name, URL parameter name
    nofailover: bool = False
    maxattempts: Optional[int] = None  # None: members - 1
    forcerecovery: bool = True
    timeout: float = 0.0  # wait for a usable member, seconds
    failonstatus: tuple[int, ...] = ()
    file: str = "<config>"
    line: int = 0
    failontimeout: bool = False


@dataclass(frozen=True)
class ServerTLS:
    """`SSLEngine On` with its certificate, for a TLS listener (global or vhost)."""

    certificate_file: str
    key_file: Optional[str] = None
    min_protocol: str = "TLSv1.2"  # from SSLProtocol


@dataclass(frozen=True)
class ProxyTLS:
    """TLS towards backends: the SSLProxy* directives."""

    engine: bool = False
    verify: bool = True  # SSLProxyVerify require (default) / none
    ca_file: Optional[str] = None  # None: the system store
    check_peer_name: bool = True
    machine_certificate_file: Optional[str] = None


@dataclass(frozen=True)
class Limits:
    """Request limits, httpd's directive names and defaults."""

    request_line: int = DEFAULT_LIMIT_REQUEST_LINE
    field_size: int = DEFAULT_LIMIT_REQUEST_FIELDSIZE
    fields: int = DEFAULT_LIMIT_REQUEST_FIELDS
    header_timeout: float = DEFAULT_HEADER_TIMEOUT  # RequestReadTimeout header=N
    allow_encoded_slashes: bool = False


@dataclass(frozen=True)
class LogConfig:
    """`ErrorLog`, `LogLevel`, `CustomLog` (file, format string already resolved)."""

    error_log: Optional[str] = None  # None: stderr
    level: str = "warn"
    custom_logs: tuple[tuple[str, str], ...] = ()  # (file, format) ; file "-" = stdout


@dataclass(frozen=True)
class Location:
    """A `<Location>` / `<LocationMatch>` block's own settings, applied by path.

    httpd merges every `<Location>` that matches a request over the server's values, in
    configuration order (plain ones first, then regex ones), later ones winning. tunnel
    does the same for the per-directory directives it knows (ProxyWebsocket*,
    ProxyPreserveHost, ProxyAddHeaders): ``settings`` holds the `Scope` field names and
    values the block sets, and routing applies them to the scope of any request whose
    path the block matches, whichever rule takes the request. A plain path matches as
    a ProxyPass prefix does (routing.alias_match: segment-aware, no wildcards).
    """

    path: str
    is_regex: bool = False
    settings: tuple[tuple[str, Any], ...] = ()
    file: str = "<config>"
    line: int = 0
    regex: Optional[re.Pattern[str]] = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Scope:
    """The directives in force for one context (global, vhost, or location).

    Every field has httpd's default. ``rules`` are in matching order: the `<Location>`
    rules first (regex locations, then plain ones longest path first), then the main
    server's ProxyPass lines, then the vhost's own, in configuration order (R1; mod_proxy
    appends a vhost's aliases to the main server's). ``locations`` are the `<Location>`
    blocks with settings, in httpd's merge order (see `Location`).
    """

    rules: tuple[ProxyRule, ...] = ()
    websocket_async: bool = False
    websocket_async_delay: float = 0.0
    websocket_idle_timeout: float = 0.0  # 0 = none
    fallback_to_proxy_http: bool = True
    timeout: float = DEFAULT_TIMEOUT
    proxy_timeout: Optional[float] = None  # None: Timeout
    preserve_host: bool = False
    add_headers: bool = True
    server_name: str = ""
    limits: Limits = field(default_factory=Limits)
    proxy_tls: ProxyTLS = field(default_factory=ProxyTLS)
    locations: tuple[Location, ...] = ()

    def head_timeout(self, rule: Optional[ProxyRule] = None) -> float:
        """Deadline for a backend's response head: timeout=, else ProxyTimeout, else Timeout."""
        if rule is not None and rule.timeout is not None:
            return rule.timeout
        return self.proxy_timeout if self.proxy_timeout is not None else self.timeout

    def connect_timeout(self, rule: Optional[ProxyRule] = None) -> float:
        """Connect deadline: connectiontimeout=, else the head_timeout chain (R18)."""
        if rule is not None and rule.connectiontimeout is not None:
            return rule.connectiontimeout
        return self.head_timeout(rule)


@dataclass(frozen=True)
class VirtualHost:
    """A `<VirtualHost addr:port ...>` block, its scope merged over the global one."""

    addresses: tuple[tuple[str, int], ...]  # ("*" or an address, port or 0 for any)
    server_name: str = ""
    aliases: tuple[str, ...] = ()
    scope: Scope = field(default_factory=Scope)
    tls: Optional[ServerTLS] = None
    file: str = "<config>"
    line: int = 0


@dataclass(frozen=True)
class Config:
    """A whole configuration. Build it with `Config.from_file` or `Config.from_text`."""

    listeners: tuple[Listener, ...] = ()
    scope: Scope = field(default_factory=Scope)  # the global server context
    vhosts: tuple[VirtualHost, ...] = ()
    balancers: dict[str, Balancer] = field(default_factory=dict)
    tls: Optional[ServerTLS] = None  # global SSLEngine On
    log: LogConfig = field(default_factory=LogConfig)
    max_tunnel_threads: int = DEFAULT_MAX_TUNNEL_THREADS
    #: TunnelBufferLimit: bytes buffered across all tunnels before reads pause (0 = none).
    buffer_limit: int = 0
    warnings: tuple[str, ...] = ()  # "file:line: text" for accepted-and-ignored lines
    source: str = "<config>"

    @classmethod
    def from_text(cls, text: str, *, filename: str = "<config>") -> "Config":
        """Parse configuration text. Raises ConfigError(file, line, expected)."""
        return parse(text, filename=filename)

    @classmethod
    def from_file(cls, path: str) -> "Config":
        """Read and parse a configuration file (``Include`` is relative to its folder)."""
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise ConfigError(f"cannot read configuration: {exc.strerror}", file=path) from exc
        except UnicodeDecodeError as exc:
            raise ConfigError("configuration is not valid UTF-8", file=path) from exc
        return parse(text, filename=path)

    def replace(self, **changes: object) -> "Config":
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def scope_for(self, listener: Optional[Listener], host: Optional[str]) -> Scope:
        """The scope for a request that came in on ``listener`` with ``Host: host``.

        httpd's name-based virtual hosting: among the vhosts whose address matches the
        listener, the one whose ServerName/ServerAlias matches the host (port dropped,
        case-insensitive) wins, else the first of them; no vhost matching → global scope.
        """
        return self.vhost_for(listener, host)[0]

    def vhost_for(
        self, listener: Optional[Listener], host: Optional[str]
    ) -> tuple[Scope, Optional[VirtualHost]]:
        candidates = [
            v
            for v in self.vhosts
            if listener is None
            or any(
                (a in ("*", "_default_", "", listener.host) or listener.host == "")
                and (p in (0, listener.port))
                for a, p in v.addresses
            )
        ]
        if not candidates:
            return self.scope, None
        name = (host or "").rsplit("]", 1)[-1]
        hostname = (host or "").lower()
        if hostname.startswith("["):
            hostname = hostname[: hostname.find("]") + 1]
        elif ":" in name:
            hostname = hostname.rsplit(":", 1)[0]
        for v in candidates:
            names = (v.server_name.lower(),) + tuple(a.lower() for a in v.aliases)
            if hostname and hostname in names:
                return v.scope, v
        return candidates[0].scope, candidates[0]


# ---------------------------------------------------------------------------------------
# The parser
#
# Lexical rules (httpd's ap_cfg_getline / ap_getword_conf):
#
# * A physical line ending in ``\`` (trailing blanks ignored) continues on the next one;
#   the logical line is numbered by its first physical line. Joining happens before
#   comments are recognised, so a comment ending in ``\`` swallows the next line, as in
#   httpd.
# * A line whose first non-blank character is ``#`` is a comment. **tunnel:** a word
#   starting with ``#`` after a blank also ends the line (httpd rejects such trailing
#   comments with "takes N arguments"; accepting them costs nothing).
# * Words are split on blanks. A word *starting* with ``"`` or ``'`` runs to the matching
#   quote, ``\"`` (or ``\'``) standing for the quote itself; a quote elsewhere is a
#   plain character.
# * ``<Name args>`` opens a section, ``</Name>`` closes it. Names are case-insensitive.
#
# Scopes: the parser collects each context's directives as "settings" (Scope field
# names, ``limits.*`` / ``proxy_tls.*`` / ``tls.*`` for the nested ones) and builds the
# frozen scopes only at the end, so a `<VirtualHost>` sees the main server's values as
# they stand at the end of the file (httpd merges each vhost over the finished main
# server), its own values winning.
#
# Rule order in a scope (R1): the `<Location>` rules first (regex locations, then plain
# ones, longest path first), then the main server's ProxyPass lines, then the vhost's
# own: mod_proxy's merge_proxy_config appends a vhost's aliases to the main server's
# (``apr_array_append(p, base->aliases, overrides->aliases)``), so a main-server
# ``ProxyPass /`` shadows every vhost route, in httpd and here.
#
# Contexts follow httpd: server-only (Listen, MaxTunnelThreads, TunnelBufferLimit),
# server and vhost (most), also `<Location>` for the per-directory ones (ProxyWebsocket*,
# ProxyPreserveHost, ProxyAddHeaders, the one-argument ProxyPass). Balancer names are
# global: `<Proxy balancer://x>` in a vhost defines the same balancer://x everywhere.
# Paths (certificates, logs) are kept as written; ServerRoot is ignored.
# ---------------------------------------------------------------------------------------

#: Includes nested deeper than this are an error (httpd's AP_MAX_INCLUDE_DEPTH is 128;
#: a real configuration never comes close, a loop gets there at once).
MAX_INCLUDE_DEPTH = 32

#: httpd directives accepted and ignored with a warning, so an httpd file can be reused.
IGNORED_DIRECTIVES = frozenset(
    name.lower()
    for name in (
        "LoadModule ServerRoot User Group PidFile DocumentRoot DirectoryIndex ServerAdmin "
        "ServerTokens ServerSignature KeepAlive KeepAliveTimeout MaxKeepAliveRequests "
        "AddDefaultCharset Mutex TypesConfig AddType Options AllowOverride Require Order "
        "Allow Deny"
    ).split()
)

#: Sections skipped whole, with one warning (tunnel serves no files). `<Proxy>` blocks
#: that are not ``balancer://`` ones (httpd's access control for proxied URLs) too.
SKIPPED_SECTIONS = frozenset({"directory", "directorymatch", "files", "filesmatch", "proxymatch"})

#: httpd's predefined log formats (mod_log_config).
PREDEFINED_LOG_FORMATS = {
    "common": '%h %l %u %t "%r" %>s %b',
    "combined": '%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-Agent}i"',
}

LOG_LEVELS = ("emerg", "alert", "crit", "error", "warn", "notice", "info", "debug")
TRACE_LEVELS = tuple(f"trace{n}" for n in range(1, 9))  # logged as "debug"

#: SSLProtocol names, oldest first; tunnel offers only the last two.
SSL_PROTOCOLS = ("sslv3", "tlsv1", "tlsv1.1", "tlsv1.2", "tlsv1.3")
SSL_PROTOCOL_NAMES = {"tlsv1.2": "TLSv1.2", "tlsv1.3": "TLSv1.3"}

DEFAULT_PORTS = {"ws": 80, "http": 80, "wss": 443, "https": 443}
BACKEND_SCHEMES = frozenset(DEFAULT_PORTS)
LB_METHODS = ("byrequests", "bybusyness", "bytraffic")
MEMBER_STATUS_FLAGS = frozenset("DSIHRN")

_HOST_RE = re.compile(r"[A-Za-z0-9._-]+")
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
#: Characters a configured URL path may hold: RFC 3986 pchar, "/" and %-escapes.
_URL_PATH_RE = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})*")
_SIZE_SUFFIXES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


class _Ctx(Enum):
    """Where a directive stands."""

    SERVER = "the server context"
    VHOST = "<VirtualHost>"
    LOCATION = "<Location>"
    PROXY = "<Proxy balancer://...>"


_S = frozenset({_Ctx.SERVER})
_SV = frozenset({_Ctx.SERVER, _Ctx.VHOST})
_SVL = frozenset({_Ctx.SERVER, _Ctx.VHOST, _Ctx.LOCATION})
_SVP = frozenset({_Ctx.SERVER, _Ctx.VHOST, _Ctx.PROXY})
_V = frozenset({_Ctx.VHOST})
_ALL = frozenset(_Ctx)


class _Bad(Exception):
    """A directive is wrong; the dispatcher adds the directive name, file and line."""


class _Expected(_Bad):
    def __init__(self, expected: str, got: str) -> None:
        super().__init__(f'expected {expected}, got "{got}"')


# -- value parsers: str -> value, raising _Expected -------------------------------------


def _on_off(value: str) -> bool:
    lowered = value.lower()
    if lowered not in ("on", "off"):
        raise _Expected("On or Off", value)
    return lowered == "on"


def _number(value: str, expected: str, *, ms: bool = False, positive: bool = False) -> float:
    """Seconds, as a decimal number; with ``ms``, a ``ms`` suffix gives milliseconds."""
    text, scale = value, 1.0
    if ms and value.lower().endswith("ms"):
        text, scale = value[:-2], 0.001
    if not re.fullmatch(r"[0-9]{1,12}(?:\.[0-9]{1,9})?", text):
        raise _Expected(expected, value)
    seconds = float(text) * scale
    if positive and seconds <= 0:
        raise _Expected(expected, value)
    return seconds


def _seconds(value: str) -> float:
    return _number(value, "a positive number of seconds", positive=True)


def _seconds_or_zero(value: str) -> float:
    return _number(value, "a number of seconds")


def _seconds_ms(value: str) -> float:
    return _number(value, 'a number with optional "ms" suffix', ms=True)


def _seconds_ms_positive(value: str) -> float:
    return _number(value, 'a positive number with optional "ms" suffix', ms=True, positive=True)


def _integer(value: str, low: int, high: Optional[int] = None) -> int:
    expected = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"
    if not re.fullmatch(r"[0-9]{1,9}", value) or int(value) < low or (high is not None and int(value) > high):
        raise _Expected(expected, value)
    return int(value)


def _positive_int(value: str) -> int:
    return _integer(value, 1)


def _size(value: str) -> int:
    match = re.fullmatch(r"([0-9]{1,15})([KkMmGg]?)", value)
    if not match:
        raise _Expected("a byte count with optional K, M or G suffix", value)
    return int(match.group(1)) * _SIZE_SUFFIXES[match.group(2).lower()]


def _verify(value: str) -> bool:
    lowered = value.lower()
    if lowered not in ("none", "require"):
        raise _Expected("none or require", value)
    return lowered == "require"


def _encoded_slashes(value: str) -> bool:
    lowered = value.lower()
    if lowered not in ("on", "off", "nodecode"):
        raise _Expected("On, Off or NoDecode", value)
    return lowered != "off"


def _text(value: str) -> str:
    if not value:
        raise _Expected("a non-empty value", value)
    return value


def _server_name(value: str) -> str:
    """``name[:port]`` -> the name (lower-cased, port dropped; IPv6 keeps brackets)."""
    match = re.fullmatch(r"(?:[a-z]+://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._*-]+)(?::([0-9]{1,5}))?", value)
    if not match:
        raise _Expected("a host name with optional :port", value)
    return match.group(1).lower()


def _log_level(value: str) -> str:
    lowered = value.lower()
    if lowered in TRACE_LEVELS:
        return "debug"
    if lowered not in LOG_LEVELS:
        raise _Expected("one of emerg alert crit error warn notice info debug trace1-8", value)
    return lowered


def _ssl_protocol(args: list[str]) -> str:
    """SSLProtocol's ``[+-]name`` list -> the lowest version enabled (TLSv1.2 or 1.3)."""
    enabled: set[str] = set()
    for word in args:
        action, name = (word[0], word[1:]) if word[:1] in "+-" else ("", word)
        name = name.lower()
        if name == "all":
            names = set(SSL_PROTOCOLS[1:])  # "all" is TLSv1+ in 2.4 (SSLv3 gone)
        elif name in SSL_PROTOCOLS:
            names = {name}
        else:
            raise _Expected("[+-]all, SSLv3, TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3", word)
        if action == "+":
            enabled |= names
        elif action == "-":
            enabled -= names
        else:
            enabled = set(names)
    supported = [p for p in SSL_PROTOCOLS if p in enabled and p in SSL_PROTOCOL_NAMES]
    if not supported:
        raise _Bad("no protocol tunnel supports is enabled (TLSv1.2 or TLSv1.3)")
    return SSL_PROTOCOL_NAMES[supported[0]]


def _upgrade(value: str) -> tuple[str, ...]:
    """``upgrade=`` -> ("*",) for ANY, ("NONE",) for NONE, else the tokens as written."""
    if value.upper() == "ANY":
        return ("*",)
    if value.upper() == "NONE":
        return ("NONE",)
    tokens = tuple(t.strip() for t in value.split(","))
    for token in tokens:
        name, _, version = token.partition("/")
        if not _TOKEN_RE.fullmatch(name) or (version and not _TOKEN_RE.fullmatch(version)):
            raise _Expected("websocket, ANY, NONE or a comma list of protocol tokens", value)
        if name.lower() == "tls" or token.upper() in ("ANY", "NONE"):
            raise _Bad(f'upgrade= cannot hold "{token}" (TLS upgrades are never honoured, R57; ANY and NONE stand alone)')
    return tokens


# -- URLs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Url:
    """A parsed configuration URL: a Target, or a balancer name and path."""

    target: Optional[Target] = None
    balancer: Optional[str] = None
    balancer_path: str = "/"


def _parse_authority(authority: str, url: str) -> tuple[str, Optional[int]]:
    if "@" in authority:
        raise _Bad(f'user information is not allowed in a backend URL: "{url}"')
    if authority.startswith("["):
        host, bracket, rest = authority[1:].partition("]")
        if not bracket or not re.fullmatch(r"[0-9A-Fa-f:.]+", host) or (rest and not rest.startswith(":")):
            raise _Expected("[IPv6]:port in the URL", url)
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text_ = authority.partition(":")
        port_text = port_text_ if colon else None
        if "$" in host:
            raise _Bad(f'backreferences ($1) are substituted in the URL path only: "{url}"')
        if not _HOST_RE.fullmatch(host):
            raise _Expected("scheme://host[:port]/path", url)
    port: Optional[int] = None
    if port_text is not None:
        if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 0 < int(port_text) < 65536:
            raise _Expected("a port from 1 to 65535 in the URL", url)
        port = int(port_text)
    return host.lower(), port


def _parse_url(url: str) -> _Url:
    """Parse a ProxyPass / BalancerMember URL (configuration only, never client input).

    Accepted: ``ws``, ``wss``, ``http``, ``https`` URLs, ``balancer://name[/path]`` and
    ``unix:/socket|ws://host/path`` (R11). The host is lower-cased, the scheme's
    default port filled in, the path defaults to "/". A query or fragment is refused.

    Args:
        url: the URL as written.

    Returns:
        A `_Url` holding a `Target`, or a balancer name and path.

    Raises:
        _Bad: the URL is malformed or its scheme unsupported (the caller's directive
            turns it into a ConfigError naming the line).
    """
    unix_path: Optional[str] = None
    rest = url
    if url[:5].lower() == "unix:":
        unix_path, bar, rest = url[5:].partition("|")
        if not bar or not unix_path.startswith("/") or not rest:
            raise _Expected("unix:/path/to.sock|ws://host/path", url)
    scheme, sep, remainder = rest.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in BACKEND_SCHEMES | {"balancer"}:
        raise _Expected("a ws://, wss://, http://, https://, balancer:// or unix: URL", url)
    if unix_path is not None and scheme == "balancer":
        raise _Expected("unix:/path/to.sock|ws://host/path", url)
    authority, slash, path = remainder.partition("/")
    path = slash + path if slash else "/"
    if "?" in path or "#" in path:
        raise _Bad(f'a query or fragment is not allowed in a backend URL: "{url}"')
    if not _URL_PATH_RE.fullmatch(path):
        raise _Bad(f'the URL path holds characters that must be %-encoded: "{url}"')
    if scheme == "balancer":
        if not _HOST_RE.fullmatch(authority):
            raise _Expected("balancer://name[/path]", url)
        return _Url(balancer=authority.lower(), balancer_path=path)
    if not authority and unix_path is not None:
        authority = "localhost"
    host, port = _parse_authority(authority, url)
    return _Url(target=Target(scheme, host, port or DEFAULT_PORTS[scheme], path, unix_path))


# -- key=value lists -------------------------------------------------------------------


def _keys(words: list[str], *, flags: tuple[str, ...] = ()) -> tuple[list[tuple[str, str]], set[str]]:
    """``key=value`` words -> [(lower key, value)] and the set of bare flags seen."""
    pairs: list[tuple[str, str]] = []
    seen_flags: set[str] = set()
    for word in words:
        key, eq, value = word.partition("=")
        if not eq:
            if word.lower() in flags:
                seen_flags.add(word.lower())
                continue
            raise _Bad(f'expected key=value, got "{word}"')
        pairs.append((key.lower(), value))
    return pairs, seen_flags


def _rule_key(key: str, value: str, out: dict[str, Any]) -> None:
    """A worker key on a ProxyPass line (non-balancer URL)."""
    if key == "upgrade":
        out["upgrade"] = _upgrade(value)
    elif key == "timeout":
        out["timeout"] = _seconds(value)
    elif key == "connectiontimeout":
        out["connectiontimeout"] = _seconds_ms_positive(value)
    elif key == "retry":
        out["retry"] = _seconds_or_zero(value)
    else:
        raise _Bad(f'unknown key "{key}=" (known: upgrade, timeout, connectiontimeout, retry)')


def _member_status(value: str) -> frozenset[str]:
    flags: set[str] = set()
    adding = True
    for ch in value.upper():
        if ch in "+-":
            adding = ch == "+"
        elif ch in MEMBER_STATUS_FLAGS:
            (flags.add if adding else flags.discard)(ch)
        else:
            raise _Expected("+/- followed by flags among D S I H R N", value)
    return frozenset(flags)


_MEMBER_KEYS: dict[str, Callable[[str], Any]] = {
    "loadfactor": lambda v: _integer(v, 1, 100),
    "lbset": lambda v: _integer(v, 0, 99),
    "route": _text,
    "redirect": _text,
    "retry": _seconds_or_zero,
    "status": _member_status,
    "connectiontimeout": _seconds_ms_positive,
    "timeout": _seconds,
    "upgrade": _upgrade,
}


def _member_key(key: str, value: str) -> Any:
    parser = _MEMBER_KEYS.get(key)
    if parser is None:
        raise _Bad(f'unknown BalancerMember key "{key}=" (known: {", ".join(_MEMBER_KEYS)})')
    try:
        return parser(value)
    except _Expected as exc:
        raise _Bad(f"{key}= {exc}") from None


def _lbmethod(value: str) -> str:
    if value.lower() not in LB_METHODS:
        raise _Expected(" or ".join(LB_METHODS), value)
    return value.lower()


def _stickysession(value: str) -> tuple[str, ...]:
    names = tuple(value.split("|"))
    if len(names) > 2 or not all(_TOKEN_RE.fullmatch(n) for n in names):
        raise _Expected("NAME or NAME|urlname", value)
    return names


def _status_list(value: str) -> tuple[int, ...]:
    codes = [c.strip() for c in value.split(",")]
    if not all(re.fullmatch(r"[1-5][0-9][0-9]", c) for c in codes):
        raise _Expected("a comma list of HTTP status codes", value)
    return tuple(int(c) for c in codes)


_BALANCER_KEYS: dict[str, Callable[[str], Any]] = {
    "lbmethod": _lbmethod,
    "stickysession": _stickysession,
    "nofailover": _on_off,
    "maxattempts": lambda v: _integer(v, 0),
    "forcerecovery": _on_off,
    "timeout": _seconds_or_zero,
    "failonstatus": _status_list,
    "failontimeout": _on_off,
}


def _balancer_key(key: str, value: str) -> Any:
    if key == "growth":
        raise _Bad("growth is not supported (members come from the configuration only)")
    parser = _BALANCER_KEYS.get(key)
    if parser is None:
        raise _Bad(f'unknown balancer key "{key}=" (known: {", ".join(_BALANCER_KEYS)})')
    try:
        return parser(value)
    except _Expected as exc:
        raise _Bad(f"{key}= {exc}") from None


# -- lexing ----------------------------------------------------------------------------


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(first line number, logical line) with continuations joined, blanks stripped."""
    pending: list[str] = []
    first = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip()
        if not pending:
            first = number
        if line.endswith("\\"):
            pending.append(line[:-1])
            continue
        pending.append(line)
        yield first, " ".join(p.strip() for p in pending if p.strip())
        pending = []
    if pending:
        yield first, " ".join(p.strip() for p in pending if p.strip())


def _split_words(line: str) -> list[str]:
    """ap_getword_conf over a whole line; a word starting with ``#`` ends it."""
    words: list[str] = []
    i, n = 0, len(line)
    while i < n:
        if line[i].isspace():
            i += 1
            continue
        quote = line[i]
        if quote in "\"'":
            i += 1
            chars: list[str] = []
            while i < n and line[i] != quote:
                if line[i] == "\\" and i + 1 < n and line[i + 1] == quote:
                    i += 1
                chars.append(line[i])
                i += 1
            if i >= n:
                raise _Bad(f"unterminated {quote} quote")
            i += 1
            words.append("".join(chars))
            continue
        if quote == "#" and words:
            break
        start = i
        while i < n and not line[i].isspace():
            i += 1
        words.append(line[start:i])
    return words


def _listen_address(word: str, *, vhost: bool = False) -> tuple[str, int]:
    """``[addr:]port`` (Listen) or ``addr[:port]`` (VirtualHost; ``*`` port -> 0)."""
    expected = "addr:port, [ipv6]:port, *:port or _default_:*" if vhost else "[addr:]port or [ipv6]:port"
    if word.startswith("["):
        host, bracket, rest = word[1:].partition("]")
        if not bracket or not re.fullmatch(r"[0-9A-Fa-f:.]+", host) or (rest and not rest.startswith(":")):
            raise _Expected(expected, word)
        port_text = rest[1:] if rest else ""
    elif ":" in word:
        host, _, port_text = word.rpartition(":")
    elif vhost:
        host, port_text = word, ""
    else:
        host, port_text = "", word
    if not port_text and not vhost:
        raise _Expected(expected, word)
    if vhost and port_text in ("", "*"):
        port = 0
    elif re.fullmatch(r"[0-9]{1,5}", port_text) and int(port_text) < 65536:
        port = int(port_text)
    else:
        raise _Expected(expected, word)
    if host not in ("*", "_default_", "") and ":" not in host and not _HOST_RE.fullmatch(host):
        raise _Expected(expected, word)
    if not vhost and host == "*":
        host = ""
    return host, port


@dataclass
class _ScopeBuild:
    """One server context (main server or a vhost) while its lines are read."""

    settings: dict[str, Any] = field(default_factory=dict)
    rules: list[ProxyRule] = field(default_factory=list)
    location_rules: list[ProxyRule] = field(default_factory=list)  # configuration order
    locations: list[Location] = field(default_factory=list)
    ssl_engine_at: tuple[str, int] = ("", 0)


@dataclass
class _VhostBuild:
    addresses: tuple[tuple[str, int], ...]
    file: str
    line: int
    scope: _ScopeBuild = field(default_factory=_ScopeBuild)
    aliases: list[str] = field(default_factory=list)


@dataclass
class _LocationBuild:
    path: str
    is_regex: bool
    regex: Optional[re.Pattern[str]]
    settings: dict[str, Any] = field(default_factory=dict)
    rule: Optional[ProxyRule] = None


@dataclass
class _BalancerBuild:
    name: str
    members: list[Member] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    defined_at: tuple[str, int] = ("", 0)  # <Proxy> or first BalancerMember; "" = never


@dataclass
class _Frame:
    """An open section. ``ctx`` None: transparent (`<IfModule>`)."""

    tag: str
    ctx: Optional[_Ctx]
    file: str
    line: int
    scope: Optional[_ScopeBuild] = None
    location: Optional[_LocationBuild] = None
    balancer: Optional[str] = None
    vhost: Optional[_VhostBuild] = None


#: Directives that set one value: lower-case name -> (name, settings key, parser, contexts).
#: Keys without a dot are `Scope` fields; ``limits.``, ``proxy_tls.`` and ``tls.`` ones
#: go to `Limits`, `ProxyTLS` and `ServerTLS`.
_SETTINGS: dict[str, tuple[str, str, Callable[[str], Any], frozenset[_Ctx]]] = {
    spec[0].lower(): spec
    for spec in (
        ("ProxyWebsocketAsync", "websocket_async", _on_off, _SVL),
        ("ProxyWebsocketAsyncDelay", "websocket_async_delay", _seconds_ms, _SVL),
        ("ProxyWebsocketIdleTimeout", "websocket_idle_timeout", _seconds_ms, _SVL),
        ("ProxyWebsocketFallbackToProxyHttp", "fallback_to_proxy_http", _on_off, _SVL),
        ("ProxyPreserveHost", "preserve_host", _on_off, _SVL),
        ("ProxyAddHeaders", "add_headers", _on_off, _SVL),
        ("Timeout", "timeout", _seconds, _SV),
        ("ProxyTimeout", "proxy_timeout", _seconds, _SV),
        ("ServerName", "server_name", _server_name, _SV),
        ("LimitRequestLine", "limits.request_line", _positive_int, _SV),
        ("LimitRequestFieldSize", "limits.field_size", _positive_int, _SV),
        ("LimitRequestFields", "limits.fields", _positive_int, _SV),
        ("AllowEncodedSlashes", "limits.allow_encoded_slashes", _encoded_slashes, _SV),
        ("SSLProxyEngine", "proxy_tls.engine", _on_off, _SV),
        ("SSLProxyVerify", "proxy_tls.verify", _verify, _SV),
        ("SSLProxyCACertificateFile", "proxy_tls.ca_file", _text, _SV),
        ("SSLProxyCheckPeerName", "proxy_tls.check_peer_name", _on_off, _SV),
        ("SSLProxyMachineCertificateFile", "proxy_tls.machine_certificate_file", _text, _SV),
        ("SSLCertificateFile", "tls.certificate_file", _text, _SV),
        ("SSLCertificateKeyFile", "tls.key_file", _text, _SV),
    )
}

#: Directives with their own handler: lower-case name -> (name, method, contexts).
_HANDLERS: dict[str, tuple[str, str, frozenset[_Ctx]]] = {
    spec[0].lower(): spec
    for spec in (
        ("Listen", "_listen", _S),
        ("ServerAlias", "_server_alias", _V),
        ("ProxyPass", "_proxy_pass", _SVL),
        ("ProxyPassMatch", "_proxy_pass_match", _SVL),
        ("BalancerMember", "_balancer_member", _SVP),
        ("ProxySet", "_proxy_set", _SVP),
        ("MaxTunnelThreads", "_max_tunnel_threads", _S),
        ("TunnelBufferLimit", "_tunnel_buffer_limit", _S),
        ("RequestReadTimeout", "_request_read_timeout", _SV),
        ("SSLEngine", "_ssl_engine", _SV),
        ("SSLProtocol", "_ssl_protocol", _SV),
        ("LogLevel", "_log_level", _SV),
        ("ErrorLog", "_error_log", _SV),
        ("LogFormat", "_log_format", _SV),
        ("CustomLog", "_custom_log", _SV),
        ("Include", "_include", _ALL),
        ("IncludeOptional", "_include_optional", _ALL),
    )
}

#: Sections: lower-case name -> (name, contexts).
_SECTIONS: dict[str, tuple[str, frozenset[_Ctx]]] = {
    "virtualhost": ("VirtualHost", _S),
    "location": ("Location", _SV),
    "locationmatch": ("LocationMatch", _SV),
    "proxy": ("Proxy", _SV),
    "ifmodule": ("IfModule", _ALL),
}


def _one(args: list[str], what: str = "one argument") -> str:
    if len(args) != 1:
        raise _Bad(f"expected {what}, got {len(args)} arguments")
    return args[0]


class _Parser:
    """Reads lines into builders; `_finish` turns them into a `Config`."""

    def __init__(self) -> None:
        self.main = _ScopeBuild()
        self.stack: list[_Frame] = [_Frame("", _Ctx.SERVER, "", 0, scope=self.main)]
        self.vhosts: list[_VhostBuild] = []
        self.balancers: dict[str, _BalancerBuild] = {}
        self.balancer_refs: list[ProxyRule] = []
        self.listeners: list[Listener] = []
        self.warnings: list[str] = []
        self.log: dict[str, Any] = {}
        self.log_formats: dict[str, str] = dict(PREDEFINED_LOG_FORMATS)
        self.custom_logs: list[tuple[str, str, str, int]] = []  # file, format|nick, where
        self.globals: dict[str, Any] = {}
        self.includes: list[str] = []
        self.file = ""
        self.line = 0
        #: while skipping a section: [name, nesting depth, file, line]
        self.skipping: Optional[list[Any]] = None

    # -- reading -----------------------------------------------------------------------
    def read(self, text: str, filename: str) -> None:
        depth = len(self.stack)
        for number, line in _logical_lines(text):
            self.file, self.line = filename, number
            if not line or line.startswith("#"):
                continue
            try:
                self._line(line)
            except _Bad as exc:
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
            self._directive(_split_words(line))

    def warn(self, text: str) -> None:
        self.warnings.append(f"{self.file}:{self.line}: {text}")

    # -- contexts ----------------------------------------------------------------------
    @property
    def frame(self) -> _Frame:
        """The innermost section that is not transparent."""
        return next(f for f in reversed(self.stack) if f.ctx is not None)

    @property
    def scope(self) -> _ScopeBuild:
        """The main server's or the enclosing vhost's builder."""
        return next(f.scope for f in reversed(self.stack) if f.scope is not None)

    def _check_context(self, contexts: frozenset[_Ctx]) -> None:
        ctx = self.frame.ctx
        assert ctx is not None
        if ctx not in contexts:
            allowed = ", ".join(c.value for c in _Ctx if c in contexts)
            raise _Bad(f"not allowed in {ctx.value} (allowed in: {allowed})")

    # -- sections ----------------------------------------------------------------------
    def _open(self, line: str) -> None:
        if not line.endswith(">"):
            raise _Bad(f'a section line must end with ">": {line}')
        words = _split_words(line[1:-1])
        if not words:
            raise _Bad("empty section name")
        key = words[0].lower()
        args = words[1:]
        if key in SKIPPED_SECTIONS or (key == "proxy" and not (args and args[0].lower().startswith("balancer://"))):
            self.warn(f"<{words[0]}> section is not used by tunnel; skipped")
            self.skipping = [words[0], 1, self.file, self.line]
            return
        if key not in _SECTIONS:
            raise _Bad(f"unknown section <{words[0]}>")
        name, contexts = _SECTIONS[key]
        try:
            self._check_context(contexts)
            frame = getattr(self, f"_open_{key}")(args)
        except _Bad as exc:
            raise _Bad(f"<{name}>: {exc}") from None
        self.stack.append(frame)

    def _new_frame(self, tag: str, ctx: Optional[_Ctx], **kw: Any) -> _Frame:
        return _Frame(tag, ctx, self.file, self.line, **kw)

    def _open_ifmodule(self, args: list[str]) -> _Frame:
        _one(args, "a module name")
        return self._new_frame("IfModule", None)

    def _open_virtualhost(self, args: list[str]) -> _Frame:
        if not args:
            raise _Bad("expected one or more addr:port")
        vhost = _VhostBuild(tuple(_listen_address(a, vhost=True) for a in args), self.file, self.line)
        return self._new_frame("VirtualHost", _Ctx.VHOST, scope=vhost.scope, vhost=vhost)

    def _open_location(self, args: list[str], tag: str = "Location") -> _Frame:
        regex = tag == "LocationMatch"
        if len(args) == 2 and args[0] == "~" and not regex:
            regex, args = True, args[1:]
        path = _one(args, "a URL path" if not regex else "a regular expression")
        compiled = _compile(path) if regex else None
        if not regex and not path.startswith("/"):
            raise _Expected("a URL path starting with /", path)
        return self._new_frame(tag, _Ctx.LOCATION, location=_LocationBuild(path, regex, compiled))

    def _open_locationmatch(self, args: list[str]) -> _Frame:
        return self._open_location(args, "LocationMatch")

    def _open_proxy(self, args: list[str]) -> _Frame:
        url = _parse_url(_one(args, "balancer://name"))
        assert url.balancer is not None
        build = self._balancer(url.balancer)
        if not build.defined_at[0]:
            build.defined_at = (self.file, self.line)
        return self._new_frame("Proxy", _Ctx.PROXY, balancer=url.balancer)

    def _close(self, line: str) -> None:
        if not line.endswith(">"):
            raise _Bad(f'a section line must end with ">": {line}')
        name = line[2:-1].strip()
        top = self.stack[-1]
        if len(self.stack) == 1:
            raise _Bad(f"</{name}> without a matching <{name}>")
        if name.lower() != top.tag.lower():
            raise _Bad(f"</{name}> does not close <{top.tag}> (opened at {top.file}:{top.line})")
        if top.file != self.file:
            raise _Bad(f"</{name}> closes a section opened in {top.file}")
        self.stack.pop()
        if top.vhost is not None:
            self.vhosts.append(top.vhost)
        elif top.location is not None:
            loc, parent = top.location, self.scope
            if loc.rule is not None:
                parent.location_rules.append(loc.rule)
            if loc.settings:
                parent.locations.append(
                    Location(loc.path, loc.is_regex, tuple(loc.settings.items()), top.file, top.line, loc.regex)
                )

    # -- directives --------------------------------------------------------------------
    def _directive(self, words: list[str]) -> None:
        name, args = words[0], words[1:]
        key = name.lower()
        if key in IGNORED_DIRECTIVES:
            self.warn(f"{name} is not used by tunnel; ignored")
            return
        if key in _SETTINGS:
            canonical, setting, parser, contexts = _SETTINGS[key]
        elif key in _HANDLERS:
            canonical, method, contexts = _HANDLERS[key]
        else:
            raise _Bad(f'unknown directive "{name}" (not an httpd directive tunnel knows or ignores)')
        try:
            self._check_context(contexts)
            if key in _SETTINGS:
                self._set(setting, parser(_one(args)))
            else:
                getattr(self, method)(args)
        except _Bad as exc:
            raise _Bad(f"{canonical}: {exc}") from None

    def _set(self, setting: str, value: Any) -> None:
        frame = self.frame
        target = frame.location.settings if frame.location is not None else self.scope.settings
        target[setting] = value

    def _listen(self, args: list[str]) -> None:
        if not 1 <= len(args) <= 2:
            raise _Bad("expected [addr:]port [protocol]")
        host, port = _listen_address(args[0])
        tls = False
        if len(args) == 2:
            protocol = args[1].lower()
            if protocol not in ("http", "https"):
                raise _Expected("http or https as the protocol", args[1])
            tls = protocol == "https"
        if port and any(other.host == host and other.port == port for other in self.listeners):
            raise _Bad(f"{args[0]} is already a listener")
        self.listeners.append(Listener(host, port, tls, self.file, self.line))

    def _server_alias(self, args: list[str]) -> None:
        if not args:
            raise _Bad("expected one or more host names")
        vhost = self.frame.vhost
        assert vhost is not None
        vhost.aliases.extend(_server_name(a) for a in args)

    # ProxyPass / ProxyPassMatch ---------------------------------------------------------
    def _proxy_pass(self, args: list[str], regex: bool = False) -> None:
        frame = self.frame
        loc = frame.location
        if loc is not None:
            if not args or args[0].startswith("/") and len(args) > 1 and ("://" in args[1] or args[1] == "!"):
                raise _Bad("inside <Location> the path is the location's: expected URL [key=value ...]")
            if loc.rule is not None:
                raise _Bad("only one ProxyPass per <Location>")
            path, url, rest = loc.path, args[0], args[1:]
            # ProxyPassMatch in a plain <Location> takes its path as the regex (httpd).
            compiled = loc.regex if loc.is_regex else (_compile(path) if regex else None)
            regex = regex or loc.is_regex
        else:
            if len(args) < 2:
                raise _Bad("expected PATH URL [key=value ...] or PATH !")
            path, url, rest = args[0], args[1], args[2:]
            compiled = _compile(path) if regex else None
            if not regex and not path.startswith("/"):
                raise _Expected("a URL path starting with /", path)
        rule = self._rule(path, url, rest, regex, compiled)
        if loc is not None:
            loc.rule = rule
        else:
            self.scope.rules.append(rule)

    def _proxy_pass_match(self, args: list[str]) -> None:
        self._proxy_pass(args, regex=True)

    def _rule(
        self, path: str, url: str, rest: list[str], regex: bool, compiled: Optional[re.Pattern[str]]
    ) -> ProxyRule:
        where = {"file": self.file, "line": self.line, "is_regex": regex, "regex": compiled}
        if url == "!":
            if rest:
                raise _Bad("an exclusion (!) takes no keys")
            return ProxyRule(path, exclude=True, **where)
        parsed = _parse_url(url)
        pairs, flags = _keys(rest, flags=("nocanon",))
        keys = tuple(pairs)
        if parsed.balancer is not None:
            build = self._balancer(parsed.balancer)
            for key, value in pairs:
                build.params[key] = _balancer_key(key, value)
            rule = ProxyRule(
                path,
                balancer=parsed.balancer,
                balancer_path=parsed.balancer_path,
                nocanon="nocanon" in flags,
                keys=keys,
                **where,
            )
            self.balancer_refs.append(rule)
            return rule
        values: dict[str, Any] = {}
        for key, value in pairs:
            try:
                _rule_key(key, value, values)
            except _Expected as exc:
                raise _Bad(f"{key}= {exc}") from None
        return ProxyRule(path, target=parsed.target, nocanon="nocanon" in flags, keys=keys, **values, **where)

    # balancers --------------------------------------------------------------------------
    def _balancer(self, name: str) -> _BalancerBuild:
        return self.balancers.setdefault(name, _BalancerBuild(name))

    def _balancer_from(self, args: list[str], directive_form: str) -> tuple[_BalancerBuild, list[str]]:
        """The block's balancer, or the ``balancer://name`` first argument outside one."""
        frame = self.frame
        if frame.balancer is not None:
            return self.balancers[frame.balancer], args
        if not args or not args[0].lower().startswith("balancer://"):
            raise _Bad(f"outside <Proxy balancer://...> expected {directive_form}")
        url = _parse_url(args[0])
        assert url.balancer is not None
        return self._balancer(url.balancer), args[1:]

    def _balancer_member(self, args: list[str]) -> None:
        build, args = self._balancer_from(args, "balancer://name URL [key=value ...]")
        if not args:
            raise _Bad("expected URL [key=value ...]")
        parsed = _parse_url(args[0])
        if parsed.target is None:
            raise _Expected("a ws://, wss://, http://, https:// or unix: URL", args[0])
        pairs, _ = _keys(args[1:])
        values = {key: _member_key(key, value) for key, value in pairs}
        build.members.append(Member(parsed.target, file=self.file, line=self.line, **values))
        if not build.defined_at[0]:
            build.defined_at = (self.file, self.line)

    def _proxy_set(self, args: list[str]) -> None:
        build, args = self._balancer_from(args, "balancer://name key=value ...")
        if not args:
            raise _Bad("expected key=value ...")
        pairs, _ = _keys(args)
        for key, value in pairs:
            build.params[key] = _balancer_key(key, value)

    # global values ------------------------------------------------------------------------
    def _max_tunnel_threads(self, args: list[str]) -> None:
        self.globals["max_tunnel_threads"] = _positive_int(_one(args))

    def _tunnel_buffer_limit(self, args: list[str]) -> None:
        self.globals["buffer_limit"] = _size(_one(args))

    def _request_read_timeout(self, args: list[str]) -> None:
        if not args:
            raise _Bad("expected header=N[-M][,MinRate=R] ...")
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
                raise _Expected("header=N[-M][,MinRate=R] (or body=, handshake=)", word)
            if kind.lower() == "header":
                self._set("limits.header_timeout", _seconds(parts[0].split("-")[0]))

    # TLS -----------------------------------------------------------------------------------
    def _ssl_engine(self, args: list[str]) -> None:
        self._set("tls.engine", _on_off(_one(args)))
        self.scope.ssl_engine_at = (self.file, self.line)

    def _ssl_protocol(self, args: list[str]) -> None:
        if not args:
            raise _Bad("expected [+-]protocol ...")
        self._set("tls.min_protocol", _ssl_protocol(args))

    # logs -----------------------------------------------------------------------------------
    def _in_vhost_warning(self, name: str, what: str) -> bool:
        if self.frame.ctx is _Ctx.VHOST:
            self.warn(f"{name} inside <VirtualHost>: {what}")
            return True
        return False

    def _log_level(self, args: list[str]) -> None:
        levels = [a for a in args if ":" not in a]
        if not args or len(levels) > 1:
            raise _Bad("expected [level] [module:level ...]")
        for extra in args:
            if ":" in extra:
                self.warn(f"LogLevel {extra}: per-module levels are ignored")
        if levels and not self._in_vhost_warning("LogLevel", "ignored (one log for all hosts)"):
            self.log["level"] = _log_level(levels[0])

    def _error_log(self, args: list[str]) -> None:
        path = _one(args, "a file name")
        if path.startswith("|") or path.lower() == "syslog" or path.lower().startswith("syslog:"):
            raise _Bad("piped logs and syslog are not supported; give a file name")
        if not self._in_vhost_warning("ErrorLog", "ignored (one error log for all hosts)"):
            self.log["error_log"] = path

    def _log_format(self, args: list[str]) -> None:
        if len(args) != 2:
            raise _Bad('expected "FORMAT" nickname')
        self.log_formats[args[1]] = args[0]

    def _custom_log(self, args: list[str]) -> None:
        if len(args) < 2:
            raise _Bad("expected FILE FORMAT|nickname")
        if args[0].startswith("|"):
            raise _Bad("piped logs are not supported; give a file name or -")
        for extra in args[2:]:
            if not extra.lower().startswith(("env=", "expr=")):
                raise _Expected("env=... or expr=... after the format", extra)
            self.warn(f"CustomLog condition {extra} is ignored: every request is logged")
        self._in_vhost_warning("CustomLog", "logs the requests of every host, not only this one")
        self.custom_logs.append((args[0], args[1], self.file, self.line))

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
                raise _Bad(f"no file matches {pattern} (IncludeOptional allows that)")
        elif os.path.isdir(pattern):
            files = sorted(
                os.path.join(root, f) for root, _, names in os.walk(pattern) for f in names
            )
        elif os.path.exists(pattern):
            files = [pattern]
        elif optional:
            files = []
        else:
            raise _Bad(f"{pattern} does not exist")
        for path in files:
            self._read_file(path)

    def _include_optional(self, args: list[str]) -> None:
        self._include(args, optional=True)

    def _read_file(self, path: str) -> None:
        real = os.path.realpath(path)
        if real in self.includes:
            raise _Bad(f"include loop: {path} is already being read")
        if len(self.includes) >= MAX_INCLUDE_DEPTH:
            raise _Bad(f"includes nested deeper than {MAX_INCLUDE_DEPTH}")
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except UnicodeDecodeError:
            raise _Bad(f"{path} is not valid UTF-8") from None
        except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
            raise _Bad(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
        file, line = self.file, self.line
        self.includes.append(real)
        try:
            self.read(text, path)
        finally:
            self.includes.pop()
            self.file, self.line = file, line


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as exc:
        raise _Bad(f'bad regular expression "{pattern}": {exc}') from None


# -- building the Config ---------------------------------------------------------------------


def _build_scope(settings: dict[str, Any], rules: list[ProxyRule], locations: list[Location]) -> Scope:
    groups: dict[str, dict[str, Any]] = {"": {}, "limits": {}, "proxy_tls": {}, "tls": {}}
    for key, value in settings.items():
        group, _, name = key.rpartition(".")
        groups[group][name] = value
    return Scope(
        rules=tuple(rules),
        limits=Limits(**groups["limits"]),
        proxy_tls=ProxyTLS(**groups["proxy_tls"]),
        locations=tuple(locations),
        **groups[""],
    )


def _order_location_rules(rules: list[ProxyRule]) -> list[ProxyRule]:
    """Location rules in matching order: regex ones first (httpd merges `<LocationMatch>`
    last, so its ProxyPass wins), then plain ones by decreasing path length (R1); ties
    keep the given order."""
    return sorted(rules, key=lambda r: (not r.is_regex, -len(r.path) if not r.is_regex else 0))


def _order_locations(locations: list[Location]) -> list[Location]:
    """httpd's merge order: plain sections in configuration order, then regex ones."""
    return sorted(locations, key=lambda loc: loc.is_regex)


def _server_tls(settings: dict[str, Any], where: tuple[str, int]) -> Optional[ServerTLS]:
    if not settings.get("tls.engine"):
        return None
    if "tls.certificate_file" not in settings:
        raise ConfigError("SSLEngine On needs SSLCertificateFile", file=where[0], line=where[1])
    return ServerTLS(
        settings["tls.certificate_file"],
        settings.get("tls.key_file"),
        settings.get("tls.min_protocol", "TLSv1.2"),
    )


def _finish(p: _Parser, source: str) -> Config:
    balancers = _finish_balancers(p)
    resolve = {name: b.members[0] for name, b in balancers.items()}

    def with_balancer(rule: ProxyRule) -> ProxyRule:
        if rule.balancer is None:
            return rule
        first = resolve[rule.balancer]
        return dataclasses.replace(rule, balancer_scheme=first.target.scheme, balancer_upgrade=first.upgrade)

    main_settings = {k: v for k, v in p.main.settings.items()}
    main_rules = [with_balancer(r) for r in p.main.rules]
    main_loc_rules = [with_balancer(r) for r in p.main.location_rules]
    scope = _build_scope(
        main_settings, _order_location_rules(main_loc_rules) + main_rules, _order_locations(p.main.locations)
    )
    _check_proxy_tls(scope, balancers, "the server context")
    used = {r.balancer for r in p.balancer_refs}
    for name, balancer in balancers.items():
        if name not in used and not scope.proxy_tls.engine:
            for member in balancer.members:
                if member.target.tls:
                    raise ConfigError(
                        f"BalancerMember: {member.target} needs SSLProxyEngine On", file=member.file, line=member.line
                    )
    tls = _server_tls(main_settings, p.main.ssl_engine_at)

    vhosts: list[VirtualHost] = []
    for v in p.vhosts:
        settings = {**main_settings, **v.scope.settings}
        own_loc_rules = [with_balancer(r) for r in v.scope.location_rules]
        rules = (
            _order_location_rules(own_loc_rules + main_loc_rules)
            + main_rules
            + [with_balancer(r) for r in v.scope.rules]
        )
        vscope = _build_scope(settings, rules, _order_locations(p.main.locations + v.scope.locations))
        _check_proxy_tls(vscope, balancers, f"<VirtualHost> at {v.file}:{v.line}")
        vtls = _server_tls(settings, v.scope.ssl_engine_at) if "tls.engine" in v.scope.settings else None
        vhosts.append(
            VirtualHost(
                v.addresses,
                server_name=v.scope.settings.get("server_name", ""),
                aliases=tuple(v.aliases),
                scope=vscope,
                tls=vtls,
                file=v.file,
                line=v.line,
            )
        )

    custom_logs = []
    for file, fmt, where_file, where_line in p.custom_logs:
        if fmt in p.log_formats:
            fmt = p.log_formats[fmt]
        elif "%" not in fmt:
            raise ConfigError(
                f'CustomLog: unknown log format nickname "{fmt}" (define it with LogFormat)',
                file=where_file,
                line=where_line,
            )
        try:
            from .accesslog import Formatter

            Formatter(fmt)
        except ValueError as exc:
            raise ConfigError(f"CustomLog: bad log format: {exc}", file=where_file, line=where_line) from None
        custom_logs.append((file, fmt))
    config = Config(
        listeners=tuple(p.listeners),
        scope=scope,
        vhosts=tuple(vhosts),
        balancers=balancers,
        tls=tls,
        log=LogConfig(custom_logs=tuple(custom_logs), **p.log),
        warnings=tuple(p.warnings),
        source=source,
        **p.globals,
    )
    return config.replace(warnings=config.warnings + tuple(route_warnings(config)))


def _finish_balancers(p: _Parser) -> dict[str, Balancer]:
    for rule in p.balancer_refs:
        build = p.balancers[rule.balancer or ""]
        if not build.defined_at[0]:
            raise ConfigError(
                f"ProxyPass: balancer://{build.name} is not defined (no <Proxy balancer://{build.name}> "
                "or BalancerMember for it)",
                file=rule.file,
                line=rule.line,
            )
        if not build.members:
            raise ConfigError(
                f"ProxyPass: balancer://{build.name} has no BalancerMember", file=rule.file, line=rule.line
            )
    balancers: dict[str, Balancer] = {}
    for name, build in p.balancers.items():
        if not build.members:
            file, line = build.defined_at
            raise ConfigError(f"balancer://{name} has no BalancerMember", file=file, line=line)
        balancers[name] = Balancer(
            name, tuple(build.members), file=build.defined_at[0], line=build.defined_at[1], **build.params
        )
    return balancers


def _check_proxy_tls(scope: Scope, balancers: dict[str, Balancer], where: str) -> None:
    """R4: a wss/https backend needs SSLProxyEngine On in the scope that uses it."""
    if scope.proxy_tls.engine:
        return
    for rule in scope.rules:
        if rule.target is not None and rule.target.tls:
            raise ConfigError(
                f"ProxyPass: {rule.target} needs SSLProxyEngine On (in {where})", file=rule.file, line=rule.line
            )
        if rule.balancer is not None:
            for member in balancers[rule.balancer].members:
                if member.target.tls:
                    raise ConfigError(
                        f"BalancerMember: {member.target} needs SSLProxyEngine On (in {where}, which uses "
                        f"balancer://{rule.balancer} at {rule.where})",
                        file=member.file,
                        line=member.line,
                    )


def parse(text: str, *, filename: str = "<config>") -> Config:
    """Parse httpd-style configuration text into a `Config`.

    Args:
        text: the configuration.
        filename: named in errors and warnings; ``Include`` paths are relative to its
            folder when it is a file, else to the working directory.

    Returns:
        The configuration, its warnings in ``Config.warnings`` ("file:line: text").

    Raises:
        ConfigError: naming the file, the line and what was expected.
    """
    parser = _Parser()
    if os.path.isfile(filename):
        parser.includes.append(os.path.realpath(filename))
    parser.read(text, filename)
    return _finish(parser, filename)


# -- configtest ------------------------------------------------------------------------------


def _named_scopes(config: Config) -> list[tuple[str, Scope]]:
    scopes = [("server context", config.scope)]
    for v in config.vhosts:
        addresses = " ".join(f"{'[' + a + ']' if ':' in a else a}:{p or '*'}" for a, p in v.addresses)
        name = f" {v.server_name}" if v.server_name else ""
        scopes.append((f"<VirtualHost {addresses}>{name} ({v.file}:{v.line})", v.scope))
    return scopes


def _backend(rule: ProxyRule, config: Config) -> tuple[str, Optional[tuple[str, int]], bool]:
    """(display, (host, port) or None for a balancer, is a WebSocket route)."""
    if rule.target is not None:
        t = rule.target
        return str(t), (t.unix_path or t.host, t.port), t.is_ws
    name = f"balancer://{rule.balancer}{rule.balancer_path}"
    return name, None, rule.balancer_scheme in ("ws", "wss")


def route_warnings(config: Config) -> list[str]:
    """configtest's warnings on routes ("file:line: text"), also added to Config.warnings.

    * R16: any ``upgrade=ANY`` or ``upgrade=NONE`` (route or member): not for production.
    * R3: under ProxyWebsocketFallbackToProxyHttp On, a ws:// route takes every request
      under its path, plain ones going as HTTP to its own host and port, so a later
      http(s) route under that path to another backend is never used.

    Args:
        config: a parsed configuration.

    Returns:
        The warnings, each once, in configuration order.
    """
    from .routing import alias_match, effective_scope

    found: dict[str, None] = {}
    meaning = {("*",): "ANY forwards whatever the client asks", ("NONE",): "NONE makes every request a handshake"}
    for b in config.balancers.values():
        schemes = {("ws" if m.target.scheme in ("ws", "wss") or m.upgrade else "http") for m in b.members}
        if len(schemes) > 1 and b.members:
            first = b.members[0]
            found[f"{first.file}:{first.line}: balancer://{b.name} mixes ws:// members with http:// members "
                  f"without upgrade=: whether a request is tunnelled follows the first member "
                  f"({first.target.scheme}://), whichever member is picked; give the http:// members "
                  f"upgrade=websocket"] = None
        for m in b.members:
            if m.upgrade in meaning:
                found[f"{m.file}:{m.line}: upgrade={'ANY' if m.upgrade == ('*',) else 'NONE'} on {m.target}: "
                      f"{meaning[m.upgrade]}; not for production (R16)"] = None
    for _, scope in _named_scopes(config):
        for i, rule in enumerate(scope.rules):
            if rule.upgrade in meaning:
                found[f"{rule.where}: upgrade={'ANY' if rule.upgrade == ('*',) else 'NONE'} on {rule.path}: "
                      f"{meaning[rule.upgrade]}; not for production (R16)"] = None
            display, backend, is_ws = _backend(rule, config)
            if rule.exclude or rule.is_regex or not is_ws or rule.upgrade == ("NONE",):
                continue
            if not effective_scope(scope, rule.path).fallback_to_proxy_http:
                continue
            for later in scope.rules[i + 1 :]:
                if later.exclude or later.is_regex or not alias_match(later.path, rule.path):
                    continue
                later_display, later_backend, later_ws = _backend(later, config)
                if later_ws or (backend is not None and later_backend == backend):
                    continue
                found[f"{later.where}: ProxyPass {later.path} {later_display} is never used: the ws route at "
                      f"{rule.where} ({display}) takes every request under {rule.path}, plain ones as HTTP "
                      "to its own backend, under ProxyWebsocketFallbackToProxyHttp On (R3)"] = None
    return list(found)


def _seconds_text(value: float) -> str:
    return f"{value * 1000:g}ms" if 0 < value < 1 else f"{value:g}s"


def _rule_line(rule: ProxyRule, config: Config) -> str:
    kind = "ProxyPassMatch" if rule.is_regex else "ProxyPass"
    if rule.exclude:
        return f"{kind} {rule.path} ! (excluded)"
    display, _, is_ws = _backend(rule, config)
    upgrade = rule.upgrade or (rule.balancer_upgrade if rule.balancer else None)
    if upgrade is None:
        up = "websocket (default)" if is_ws else "none (plain HTTP)"
    else:
        up = {("*",): "ANY", ("NONE",): "NONE"}.get(upgrade, ",".join(upgrade))
    extras = "".join(f" {k}={v}" for k, v in rule.keys if k != "upgrade")
    nocanon = " nocanon" if rule.nocanon else ""
    return f"{kind} {rule.path} -> {display}  upgrade={up}{extras}{nocanon}"


def _scope_values(scope: Scope) -> str:
    return (
        f"ProxyWebsocketAsync {'On' if scope.websocket_async else 'Off'}, "
        f"AsyncDelay {_seconds_text(scope.websocket_async_delay)}, "
        f"IdleTimeout {_seconds_text(scope.websocket_idle_timeout) if scope.websocket_idle_timeout else 'none'}, "
        f"FallbackToProxyHttp {'On' if scope.fallback_to_proxy_http else 'Off'}, "
        f"Timeout {_seconds_text(scope.timeout)}, ProxyTimeout "
        f"{_seconds_text(scope.proxy_timeout) if scope.proxy_timeout is not None else '(Timeout)'}"
    )


#: Scope field -> the directive that sets it, for configtest.
_DIRECTIVE_OF = {spec[1]: spec[0] for spec in _SETTINGS.values()}


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "On" if value else "Off"
    return _seconds_text(value) if isinstance(value, float) else str(value)


def summary(config: Config) -> str:
    """The route table `tunnel configtest` prints.

    Args:
        config: a parsed configuration.

    Returns:
        Listeners, then each scope's rules in match order with their backend, keys and
        the effective ProxyWebsocket* values (per `<Location>` where one changes them),
        then the balancers. Warnings are in ``config.warnings``, not repeated here.
    """
    out: list[str] = ["Listeners:"]
    out += [f"  {l.display}{' (https)' if l.tls else ''}  {l.file}:{l.line}" for l in config.listeners] or [
        "  (none)"
    ]
    for name, scope in _named_scopes(config):
        out += ["", f"{name}:", f"  {_scope_values(scope)}"]
        if not scope.rules:
            out.append("  (no routes)")
        for n, rule in enumerate(scope.rules, 1):
            out.append(f"  {n}. {_rule_line(rule, config)}  [{rule.where}]")
        for loc in scope.locations:
            values = ", ".join(f"{_DIRECTIVE_OF.get(k, k)} {_value_text(v)}" for k, v in loc.settings)
            out.append(f"  <Location{'Match' if loc.is_regex else ''} {loc.path}> sets {values}  [{loc.file}:{loc.line}]")
    for b in config.balancers.values():
        sticky = "|".join(b.stickysession) or "none"
        out += ["", f"balancer://{b.name}: lbmethod={b.lbmethod} stickysession={sticky}  [{b.file}:{b.line}]"]
        for m in b.members:
            flags = "".join(sorted(m.status))
            out.append(
                f"  {m.target} loadfactor={m.loadfactor} lbset={m.lbset}"
                + (f" route={m.route}" if m.route else "")
                + (f" status=+{flags}" if flags else "")
                + (f" upgrade={','.join(m.upgrade)}" if m.upgrade else "")
                + f"  [{m.file}:{m.line}]"
            )
    return "\n".join(out)
