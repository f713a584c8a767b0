"""The configuration model: frozen dataclasses that the rest of the package reads.

A leaf: it imports nothing of tunnel but the errors (``Config.from_text`` and
``from_file`` reach the parser only when called). Scopes nest as httpd's do: the global
server context, ``<VirtualHost>`` blocks and ``<Location>`` blocks; a child scope
inherits every value it does not set itself (see docs/httpd-behaviour.md, R1).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

from ..errors import ConfigError
from .authz import AccessRules as AccessRules
from .authz import BoolOp as BoolOp
from .authz import Compare as Compare
from .authz import Const as Const
from .authz import Expr as Expr
from .authz import Network as Network
from .authz import Not as Not
from .authz import ProxyAccess as ProxyAccess
from .authz import Regex as Regex
from .authz import Require as Require
from .authz import RequireSection as RequireSection
from .authz import Var as Var
from .authz import Word as Word
from .headermodel import EMPTY_ENV, EnvDirectives

#: httpd's `Timeout` default, seconds.
DEFAULT_TIMEOUT = 60.0
#: httpd's `retry=` default for a worker in error state, seconds.
DEFAULT_RETRY = 60.0
#: `RequestReadTimeout header=` default (mod_reqtimeout's 20-40 is per-rate; we use one
#: total deadline of 10 s, docs/httpd-behaviour.md, R41).
DEFAULT_HEADER_TIMEOUT = 10.0
#: httpd's LimitRequestLine / LimitRequestFieldSize / LimitRequestFields defaults.
DEFAULT_LIMIT_REQUEST_LINE = 8190
DEFAULT_LIMIT_REQUEST_FIELDSIZE = 8190
DEFAULT_LIMIT_REQUEST_FIELDS = 100
#: httpd's LimitRequestBody default since 2.4.54 (1 GiB; it was 0, no limit, before).
DEFAULT_LIMIT_REQUEST_BODY = 1 << 30
#: mod_http2's defaults (R141): H2MaxSessionStreams, H2WindowSize, H2StreamMaxMemSize.
DEFAULT_H2_MAX_SESSION_STREAMS = 100
DEFAULT_H2_WINDOW_SIZE = 65535
DEFAULT_H2_STREAM_MAX_MEM_SIZE = 65536
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
    #: RemoteIPProxyProtocol On for this address (the main server's or a vhost's, R130).
    proxy_protocol: bool = False

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

    @functools.cached_property
    def authority(self) -> str:
        """``host[:port]`` as the Host header names it (port left out when default).
        Worked out once per target (every request to it sends it)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == self.default_port else f"{host}:{self.port}"

    @functools.cached_property
    def _text(self) -> str:
        base = f"{self.scheme}://{self.authority}{self.path}"
        return f"unix:{self.unix_path}|{base}" if self.unix_path else base

    def __str__(self) -> str:
        return self._text


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

    @functools.cached_property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    @functools.cached_property
    def route_name(self) -> str:
        """How logs name the route: its path and configuration line."""
        return f"{self.path} ({self.where})"


@dataclass(frozen=True)
class RewriteCond:
    """One `RewriteCond TestString CondPattern [flags]` line (docs/configuration.md).

    ``kind`` is "regex", a lexical comparison ("=", "<", ">", "<=", ">=") or an integer
    one ("-eq", "-ne", "-lt", "-le", "-gt", "-ge"); ``pattern`` is what it compares
    with (the regex source, or the string after the operator).
    """

    test: str
    pattern: str
    kind: str = "regex"
    negate: bool = False
    nocase: bool = False
    ornext: bool = False
    file: str = "<config>"
    line: int = 0
    regex: Optional[re.Pattern[str]] = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class RewriteRule:
    """One `RewriteRule Pattern Substitution [flags]` line with the conds before it.

    ``redirect`` is the [R] status (0: none); ``env`` the [E=VAR:value] pairs, values
    unexpanded. ``substitution`` "-" changes nothing.
    """

    pattern: str
    substitution: str
    conds: tuple[RewriteCond, ...] = ()
    negate: bool = False
    nocase: bool = False
    proxy: bool = False
    last: bool = False
    end: bool = False
    qsa: bool = False
    qsd: bool = False
    noescape: bool = False
    passthrough: bool = False
    redirect: int = 0
    forbidden: bool = False
    gone: bool = False
    env: tuple[tuple[str, str], ...] = ()
    flags: str = ""  # the [flags] argument as written, for configtest
    file: str = "<config>"
    line: int = 0
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
    #: httpd's worker name (BALANCER_WORKER_NAME): the URL, scheme and host lower-cased,
    #: a default port dropped, the path as written; "" when built outside the parser.
    name: str = ""


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
    nonce: Optional[str] = None  # ProxySet nonce= ("" for None); None: made at start


@dataclass(frozen=True)
class ServerTLS:
    """`SSLEngine On` with its certificate, for a TLS listener (global or vhost), and the
    mod_ssl directives tunnel honours (docs/configuration.md, "TLS"; R92).

    ``verify_client`` is "none", "require" or "optional" (with ``ca_file``);
    ``ciphers`` the OpenSSL cipher string for TLS 1.2 (None: Python's default);
    ``honor_cipher_order`` / ``session_tickets``: None leaves OpenSSL's default;
    ``curves``: SSLOpenSSLConfCmd Curves/Groups/ECDHParameters (one curve name);
    ``dh_params``: a DH parameter file; ``no_options``: OpenSSL option names to set.
    """

    certificate_file: str
    key_file: Optional[str] = None
    min_protocol: str = "TLSv1.2"  # from SSLProtocol
    max_protocol: str = "TLSv1.3"
    chain_file: Optional[str] = None
    ca_file: Optional[str] = None
    verify_client: str = "none"
    verify_depth: int = 1
    ciphers: Optional[str] = None
    honor_cipher_order: Optional[bool] = None
    session_tickets: Optional[bool] = None
    curves: Optional[str] = None
    dh_params: Optional[str] = None
    openssl_options: tuple[str, ...] = ()
    file: str = field(default="<config>", compare=False)
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class ProxyTLS:
    """TLS towards backends: the SSLProxy* directives."""

    engine: bool = False
    verify: bool = True  # SSLProxyVerify require (default) / none
    ca_file: Optional[str] = None  # None: the system store
    check_peer_name: bool = True
    machine_certificate_file: Optional[str] = None
    check_peer_cn: bool = True  # SSLProxyCheckPeerCN: with check_peer_name, the name check
    check_peer_expire: bool = True  # SSLProxyCheckPeerExpire: OpenSSL always checks dates
    min_protocol: str = "TLSv1.2"  # SSLProxyProtocol
    max_protocol: str = "TLSv1.3"
    ciphers: Optional[str] = None  # SSLProxyCipherSuite (TLS 1.2)
    verify_set: bool = False  # an SSLProxyVerify line is in force (configtest warns without, R93)


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
    """`ErrorLog`, `LogLevel`, `CustomLog` and `TransferLog` (file, format string
    already resolved)."""

    error_log: Optional[str] = None  # None: stderr
    level: str = "warn"
    custom_logs: tuple[tuple[str, str], ...] = ()  # (file, format) ; file "-" = stdout
    #: each custom log's env= condition, in the same order: "" (always), "VAR" or "!VAR" (R85)
    conditions: tuple[str, ...] = ()


@dataclass(frozen=True)
class AliasRedirect:
    """One mod_alias ``Redirect`` / ``RedirectMatch`` line (R94).

    ``path`` is the URL-path prefix (or the regex source, ``regex`` set); ``url`` the
    target (None for a non-3xx status such as 410 Gone); ``status`` the answer's code.
    In a `<Location>` the one-argument form has ``path`` "" (the location's own).
    """

    path: str
    url: Optional[str]
    status: int
    file: str = "<config>"
    line: int = 0
    regex: Optional[re.Pattern[str]] = field(default=None, compare=False, repr=False)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


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
    settings: tuple[tuple[str, object], ...] = ()
    file: str = "<config>"
    line: int = 0
    regex: Optional[re.Pattern[str]] = field(default=None, compare=False, repr=False)
    access: Optional[AccessRules] = None  # its Require lines and sections
    env: EnvDirectives = EMPTY_ENV  # its Header, RequestHeader, SetEnv*, SetEnvIf lines (R80-R84)
    #: Its own RewriteRules, run per directory at the fixup phase (R79).
    rewrite_rules: tuple[RewriteRule, ...] = ()
    rewrite_base: str = ""  # RewriteBase
    #: its Redirect lines (the one-argument form first, R94)
    redirects: tuple[AliasRedirect, ...] = ()


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
    #: ProxyWebsocketPingInterval: ping a side silent this long (0 = off).
    websocket_ping_interval: float = 0.0
    #: ProxyWebsocketHalfCloseTimeout: once one side ended its direction, the other
    #: has this long to end its own (0 = no limit).
    websocket_half_close_timeout: float = 0.0
    #: ProxyWebsocketFrameTracking: "on", "off" or "auto" (R160): whether a websocket
    #: tunnel's relay follows its frame headers (`tunnel.tunnels.wscontrol.tracks_frames`).
    websocket_frame_tracking: str = "auto"
    fallback_to_proxy_http: bool = True
    timeout: float = DEFAULT_TIMEOUT
    proxy_timeout: Optional[float] = None  # None: Timeout
    preserve_host: bool = False
    add_headers: bool = True
    server_name: str = ""
    limits: Limits = field(default_factory=Limits)
    proxy_tls: ProxyTLS = field(default_factory=ProxyTLS)
    locations: tuple[Location, ...] = ()
    access: Optional[AccessRules] = None  # the server's or vhost's own (merged) rules
    proxy_access: tuple[ProxyAccess, ...] = ()  # <Proxy URL> blocks, main server's first
    #: ProxyPassReverse maps (path, url), the main server's first, a <Location>'s with
    #: its path (R77).
    reverse_maps: tuple[tuple[str, str], ...] = ()
    #: ProxyPassReverseCookiePath / ...CookieDomain maps (internal, public), the main
    #: server's first, then the vhost's, then those of each matching <Location> (R103).
    cookie_paths: tuple[tuple[str, str], ...] = ()
    cookie_domains: tuple[tuple[str, str], ...] = ()
    #: ProxyVia: "off", "on", "full" or "block" (R104).
    via: str = "off"
    #: LimitRequestBody in bytes, 0 for none (R105).
    limit_request_body: int = DEFAULT_LIMIT_REQUEST_BODY
    #: RewriteEngine On|Off (inherited by a vhost that does not set it, as httpd 2.4).
    rewrite_engine: bool = False
    #: DocumentRoot: tunnel serves no files, but a `<Location>`'s RewriteRules see the
    #: path under it when no ProxyPass takes a request (R79).
    document_root: str = ""
    #: RemoteIPHeader (R131): the header naming the client behind trusted proxies.
    remoteip_header: str = ""
    #: RemoteIPProxiesHeader: where the proxies that were skipped are recorded.
    remoteip_proxies_header: str = ""
    #: RemoteIPInternalProxy / RemoteIPTrustedProxy networks, True for internal ones.
    remoteip_proxies: tuple[tuple[Network, bool], ...] = ()
    #: The scope's RewriteRules in evaluation order (a vhost's own, then the main
    #: server's under `RewriteOptions Inherit`; before them under InheritBefore).
    rewrite_rules: tuple[RewriteRule, ...] = ()
    #: ServerName's port (0: none given) and scheme ("" : none), for UseCanonicalName.
    server_port: int = 0
    server_scheme: str = ""
    use_canonical_name: bool = False  # UseCanonicalName On|Off (R95)
    #: Protocols (R140): what ALPN may choose on a TLS listener, in preference order.
    protocols: tuple[str, ...] = ("http/1.1",)
    protocols_honor_order: bool = True
    trace_enable: str = "on"  # TraceEnable on|off|extended
    #: the server's and vhost's Redirect lines: the vhost's first, then the main server's
    redirects: tuple[AliasRedirect, ...] = ()
    #: Header, RequestHeader, SetEnv/UnsetEnv/PassEnv and SetEnvIf lines: the main
    #: server's, then the vhost's (R80-R84); `<Location>` ones are in ``locations``.
    env: EnvDirectives = EMPTY_ENV
    #: SetHandler: a handler tunnel serves itself (server-status, balancer-manager,
    #: metrics) for requests no ProxyPass takes; "" for none (R110).
    handler: str = ""
    #: H2WebSockets On|Off (R142): RFC 8441 extended CONNECT on HTTP/2 connections.
    h2_websockets: bool = False
    #: H2MaxSessionStreams: SETTINGS_MAX_CONCURRENT_STREAMS (R141).
    h2_max_session_streams: int = DEFAULT_H2_MAX_SESSION_STREAMS
    #: H2WindowSize: SETTINGS_INITIAL_WINDOW_SIZE, the client's DATA in flight per stream.
    h2_window_size: int = DEFAULT_H2_WINDOW_SIZE
    #: H2StreamMaxMemSize: bytes held per stream for the client before reading pauses.
    h2_stream_max_mem_size: int = DEFAULT_H2_STREAM_MAX_MEM_SIZE

    @functools.cached_property
    def uses_env(self) -> bool:
        """Does any Header/RequestHeader/SetEnv*/SetEnvIf line apply in this scope or one
        of its `<Location>` blocks? (Worked out once per scope.)"""
        return bool(self.env) or any(loc.env for loc in self.locations)

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
    #: RemoteIPProxyProtocolExceptions: clients that may skip the PROXY header.
    proxy_protocol_exceptions: tuple[Network, ...] = ()
    #: PidFile: where the process writes its pid ("" = the default under the run
    #: directory, chosen by the command line).
    pid_file: str = ""
    #: GracefulShutdownTimeout: seconds a graceful stop waits (0 = no limit).
    graceful_shutdown_timeout: float = 0.0
    #: GracefulShutdownTimeout stands in the file (any value, 0 too): with
    #: ProxyWebsocketFrameTracking Auto, tunnels then follow their frames (R160).
    graceful_shutdown_set: bool = False
    warnings: tuple[str, ...] = ()  # "file:line: text" for accepted-and-ignored lines
    #: (directive, "file:line") of each line accepted and ignored, for configtest (R97)
    ignored: tuple[tuple[str, str], ...] = ()
    source: str = "<config>"
    #: ExtendedStatus: the per-tunnel table and the totals on server-status (R111).
    extended_status: bool = True
    #: TunnelControlSocket: the unix socket `tunnel ctl` talks to; None: the default
    #: path under the run directory (R117).
    control_socket: Optional[str] = None
    #: TunnelLoopLagLimit: the loop lag (seconds) above which ``SetHandler live``
    #: answers 503 (R151).
    loop_lag_limit: float = 5.0

    @classmethod
    def from_text(cls, text: str, *, filename: str = "<config>", defines: Sequence[str] = ()) -> Config:
        """Parse configuration text. Raises ConfigError(file, line, expected).
        ``defines``: names defined before the first line, as httpd's ``-D NAME``."""
        from .parser import parse  # the model stays a leaf: the parser only when asked

        return parse(text, filename=filename, defines=dict.fromkeys(defines))

    @classmethod
    def from_file(cls, path: str, *, defines: Sequence[str] = ()) -> Config:
        """Read and parse a configuration file (``Include`` is relative to its folder)."""
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise ConfigError(f"cannot read configuration: {exc.strerror}", file=path) from exc
        except UnicodeDecodeError as exc:
            raise ConfigError("configuration is not valid UTF-8", file=path) from exc
        from .parser import parse

        return parse(text, filename=path, defines=dict.fromkeys(defines))

    def replace(self, **changes: object) -> Config:
        # mypy checks replace()'s keywords against the fields, which a **dict cannot
        # show; dataclasses.replace checks the names at run time.
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def with_websocket_async(self, on: bool) -> Config:
        """This configuration with ``ProxyWebsocketAsync`` forced to ``on`` everywhere:
        the server context, every `<VirtualHost>` and every `<Location>` in them (what
        ``tunnel serve --async/--sync`` means: a command-line override wins)."""

        def forced(scope: Scope) -> Scope:
            locations = tuple(
                dataclasses.replace(
                    loc, settings=tuple((k, on if k == "websocket_async" else v) for k, v in loc.settings)
                )
                for loc in scope.locations
            )
            return dataclasses.replace(scope, websocket_async=on, locations=locations)

        vhosts = tuple(dataclasses.replace(v, scope=forced(v.scope)) for v in self.vhosts)
        return dataclasses.replace(self, scope=forced(self.scope), vhosts=vhosts)

    @functools.cached_property
    def ip_vhosts(self) -> bool:
        """Some vhost names an address (not ``*`` / ``_default_``): matching it needs
        the connection's local address."""
        return any(a not in ("*", "_default_", "") for v in self.vhosts for a, _ in v.addresses)

    def scope_for(self, listener: Optional[Listener], host: Optional[str], local_ip: Optional[str] = None) -> Scope:
        """The scope for a request that came in on ``listener`` with ``Host: host``.

        httpd's name-based virtual hosting: among the vhosts whose address matches the
        listener, the one whose ServerName/ServerAlias matches the host (port dropped,
        case-insensitive) wins, else the first of them; no vhost matching → global scope.
        """
        return self.vhost_for(listener, host, local_ip)[0]

    def vhost_for(
        self, listener: Optional[Listener], host: Optional[str], local_ip: Optional[str] = None
    ) -> tuple[Scope, Optional[VirtualHost]]:
        """The vhost for a request (vhost.c's order, R90): those whose address is the
        connection's local address (``local_ip``; without it, the listener's) and port,
        else those with ``*``, else those with ``_default_``; among them, the one whose
        ServerName or ServerAlias is the Host, else the first."""
        if local_ip is not None and local_ip.startswith("::ffff:") and "." in local_ip:
            local_ip = local_ip[7:]
        exact: list[VirtualHost] = []
        star: list[VirtualHost] = []
        default: list[VirtualHost] = []
        for v in self.vhosts:
            kinds = set()
            for a, p in v.addresses:
                if listener is not None and p not in (0, listener.port):
                    continue
                if a in ("*", ""):
                    kinds.add("*")
                elif a == "_default_":
                    kinds.add("_default_")
                elif listener is None or (a == local_ip if local_ip is not None else listener.host in ("", a)):
                    kinds.add("ip")
            for kind, group in (("ip", exact), ("*", star), ("_default_", default)):
                if kind in kinds:
                    group.append(v)
                    break
        candidates = exact or star or default
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
