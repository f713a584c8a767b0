"""Value parsers for directive arguments, and the constants they check against.

Each parser takes one argument as written and returns its value, or raises `Expected`
naming what was expected; the directive parser adds the directive name, file and line.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

from ..accesslog import LOG_LEVELS
from .model import Target

#: Includes nested deeper than this are an error (httpd's AP_MAX_INCLUDE_DEPTH is 128;
#: a real configuration never comes close, a loop gets there at once).
MAX_INCLUDE_DEPTH = 32

#: httpd directives accepted and ignored with one warning each (configtest lists them),
#: so that an httpd file can be reused: none has an effect on proxied traffic, or its
#: effect is what tunnel does anyway (docs/configuration.md, "Accepted and ignored", R97).
IGNORED_DIRECTIVES = frozenset(
    name.lower()
    for name in [
        "LoadModule", "LoadFile", "NameVirtualHost", "ServerRoot", "User", "Group", "Mutex", "DefaultRuntimeDir",
        "DirectoryIndex", "ServerAdmin", "ServerTokens", "ServerSignature",
        "KeepAlive", "KeepAliveTimeout", "MaxKeepAliveRequests", "AddDefaultCharset",
        "TypesConfig", "AddType", "AddHandler", "AddOutputFilter", "AddOutputFilterByType", "AddEncoding",
        "AddCharset", "AddLanguage", "LanguagePriority", "ForceLanguagePriority", "DefaultLanguage",
        "Options", "AllowOverride", "AllowOverrideList", "AccessFileName", "EnableSendfile", "EnableMMAP",
        "LimitInternalRecursion", "FileETag", "IndexOptions", "IndexIgnore", "AddIcon", "AddIconByType",
        "AddIconByEncoding", "DefaultIcon", "ReadmeName", "HeaderName", "AddAlt", "AddAltByEncoding",
        "AddAltByType", "AddDescription", "ScriptAlias", "Alias", "UserDir", "MIMEMagicFile",
        "StartServers", "MinSpareServers", "MaxSpareServers", "MinSpareThreads", "MaxSpareThreads",
        "ThreadsPerChild", "ThreadLimit", "ServerLimit", "MaxRequestWorkers", "MaxClients",
        "MaxConnectionsPerChild", "MaxRequestsPerChild", "ListenBackLog",
        "SSLSessionCache", "SSLSessionCacheTimeout", "SSLStaplingCache", "SSLUseStapling",
        "SSLStaplingResponderTimeout", "SSLStaplingReturnResponderErrors", "SSLRandomSeed",
        "SSLPassPhraseDialog", "SSLCryptoDevice", "SSLOptions",
    ]
)  # fmt: skip

#: Sections skipped whole, with one warning (tunnel serves no files; httpd does not apply
#: them to proxied requests either). `<Proxy URL>` and `<ProxyMatch>` blocks are read for
#: their access rules (config/access.py).
SKIPPED_SECTIONS = frozenset({"directory", "directorymatch", "files", "filesmatch"})


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




class BadDirective(Exception):
    """A directive is wrong; the dispatcher adds the directive name, file and line."""


class Expected(BadDirective):
    def __init__(self, expected: str, got: str) -> None:
        super().__init__(f'expected {expected}, got "{got}"')


# -- value parsers: str -> value, raising Expected -------------------------------------


def on_off(value: str) -> bool:
    lowered = value.lower()
    if lowered not in ("on", "off"):
        raise Expected("On or Off", value)
    return lowered == "on"


def frame_tracking(value: str) -> str:
    """ProxyWebsocketFrameTracking's value: "on", "off" or "auto" (R160)."""
    lowered = value.lower()
    if lowered not in ("on", "off", "auto"):
        raise Expected("On, Off or Auto", value)
    return lowered


def _number(value: str, expected: str, *, ms: bool = False, positive: bool = False) -> float:
    """Seconds, as a decimal number; with ``ms``, a ``ms`` suffix gives milliseconds."""
    text, scale = value, 1.0
    if ms and value.lower().endswith("ms"):
        text, scale = value[:-2], 0.001
    if not re.fullmatch(r"[0-9]{1,12}(?:\.[0-9]{1,9})?", text):
        raise Expected(expected, value)
    seconds = float(text) * scale
    if positive and seconds <= 0:
        raise Expected(expected, value)
    return seconds


def seconds(value: str) -> float:
    return _number(value, "a positive number of seconds", positive=True)


def _seconds_or_zero(value: str) -> float:
    return _number(value, "a number of seconds")


def seconds_ms(value: str) -> float:
    return _number(value, 'a number with optional "ms" suffix', ms=True)


def _seconds_ms_positive(value: str) -> float:
    return _number(value, 'a positive number with optional "ms" suffix', ms=True, positive=True)


def _integer(value: str, low: int, high: Optional[int] = None) -> int:
    expected = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"
    if not re.fullmatch(r"[0-9]{1,9}", value) or int(value) < low or (high is not None and int(value) > high):
        raise Expected(expected, value)
    return int(value)


def positive_int(value: str) -> int:
    return _integer(value, 1)


def byte_size(value: str) -> int:
    match = re.fullmatch(r"([0-9]{1,15})([KkMmGg]?)", value)
    if not match:
        raise Expected("a byte count with optional K, M or G suffix", value)
    return int(match.group(1)) * _SIZE_SUFFIXES[match.group(2).lower()]


def request_body_limit(value: str) -> int:
    """LimitRequestBody: bytes, a non-negative integer (0: no limit); no suffixes, as httpd."""
    if not re.fullmatch(r"[0-9]{1,19}", value) or int(value) >= 1 << 63:
        raise Expected("a non-negative integer of bytes (0 for no limit)", value)
    return int(value)


#: ProxyVia's values (as the lower-cased keyword that is stored).
VIA_MODES = ("off", "on", "full", "block")


def via_mode(value: str) -> str:
    lowered = value.lower()
    if lowered not in VIA_MODES:
        raise Expected("Off, On, Full or Block", value)
    return lowered


def verify(value: str) -> bool:
    lowered = value.lower()
    if lowered not in ("none", "require"):
        raise Expected("none or require", value)
    return lowered == "require"


def encoded_slashes(value: str) -> bool:
    lowered = value.lower()
    if lowered not in ("on", "off", "nodecode"):
        raise Expected("On, Off or NoDecode", value)
    return lowered != "off"


def text_value(value: str) -> str:
    if not value:
        raise Expected("a non-empty value", value)
    return value


def server_name_port(value: str) -> tuple[str, str, int]:
    """``[scheme://]name[:port]`` -> (scheme or "", the name as written, port or 0).

    The name keeps its case (httpd sends it so in X-Forwarded-Server and its own URLs);
    virtual-host matching ignores case."""
    match = re.fullmatch(r"(?:([A-Za-z][A-Za-z0-9+.-]*)://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._*-]+)(?::([0-9]{1,5}))?", value)
    if not match or (match.group(3) and not 0 < int(match.group(3)) < 65536):
        raise Expected("[scheme://]host name[:port]", value)
    return (match.group(1) or "").lower(), match.group(2), int(match.group(3) or 0)


def server_name(value: str) -> str:
    """``name[:port]`` -> the name (lower-cased, port dropped; IPv6 keeps brackets)."""
    match = re.fullmatch(r"(?:[a-z]+://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._*-]+)(?::([0-9]{1,5}))?", value)
    if not match:
        raise Expected("a host name with optional :port", value)
    return match.group(1).lower()


def log_level(value: str) -> str:
    lowered = value.lower()
    if lowered in TRACE_LEVELS:
        return "debug"
    if lowered not in LOG_LEVELS:
        raise Expected("one of emerg alert crit error warn notice info debug trace1-8", value)
    return lowered


def ssl_protocols(args: list[str], *, openssl: bool = False) -> tuple[str, str, list[str]]:
    """SSLProtocol's ``[+-]name`` list (or SSLOpenSSLConfCmd Protocol's) -> the lowest
    and highest version tunnel offers (TLSv1.2 or TLSv1.3), and the older ones the list
    enables, which tunnel never offers (R92).

    As httpd 2.4 with an OpenSSL without SSLv3: ``all`` is TLSv1 up; a name without a sign starts the set
    afresh; SSLv2 may be named (it is never enabled).
    """
    enabled: set[str] = set()
    for word in args:
        action, name = (word[0], word[1:]) if word[:1] in "+-" else ("", word)
        name = name.lower()
        if name == "all":
            names = set(SSL_PROTOCOLS[1:])
        elif name in SSL_PROTOCOLS:
            names = {name}
        elif name == "sslv2":
            names = set()
        else:
            raise Expected("[+-]all, SSLv2, SSLv3, TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3", word)
        if action == "+":
            enabled |= names
        elif action == "-":
            enabled -= names
        elif openssl and name != "all":
            enabled |= names  # OpenSSL's Protocol command adds a bare name
        else:
            enabled = set(names)
    supported = [p for p in SSL_PROTOCOLS if p in enabled and p in SSL_PROTOCOL_NAMES]
    if not supported:
        raise BadDirective("no protocol tunnel supports is enabled (TLSv1.2 or TLSv1.3)")
    old = [p for p in SSL_PROTOCOLS if p in enabled and p not in SSL_PROTOCOL_NAMES]
    return SSL_PROTOCOL_NAMES[supported[0]], SSL_PROTOCOL_NAMES[supported[-1]], old


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
            raise Expected("websocket, ANY, NONE or a comma list of protocol tokens", value)
        if name.lower() == "tls" or token.upper() in ("ANY", "NONE"):
            raise BadDirective(f'upgrade= cannot hold "{token}" (TLS upgrades are never honoured, R57; ANY and NONE stand alone)')
    return tokens


# -- URLs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedUrl:
    """A parsed configuration URL: a Target, or a balancer name and path."""

    target: Optional[Target] = None
    balancer: Optional[str] = None
    balancer_path: str = "/"


def _parse_authority(authority: str, url: str) -> tuple[str, Optional[int]]:
    if "@" in authority:
        raise BadDirective(f'user information is not allowed in a backend URL: "{url}"')
    if authority.startswith("["):
        host, bracket, rest = authority[1:].partition("]")
        if not bracket or not re.fullmatch(r"[0-9A-Fa-f:.]+", host) or (rest and not rest.startswith(":")):
            raise Expected("[IPv6]:port in the URL", url)
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text_ = authority.partition(":")
        port_text = port_text_ if colon else None
        if "$" in host:
            raise BadDirective(f'backreferences ($1) are substituted in the URL path only: "{url}"')
        if not _HOST_RE.fullmatch(host):
            raise Expected("scheme://host[:port]/path", url)
    port: Optional[int] = None
    if port_text is not None:
        if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 0 < int(port_text) < 65536:
            raise Expected("a port from 1 to 65535 in the URL", url)
        port = int(port_text)
    return host.lower(), port


def parse_url(url: str) -> ParsedUrl:
    """Parse a ProxyPass / BalancerMember URL (configuration only, never client input).

    Accepted: ``ws``, ``wss``, ``http``, ``https`` URLs, ``balancer://name[/path]`` and
    ``unix:/socket|ws://host/path`` (R11). The host is lower-cased, the scheme's
    default port filled in, the path defaults to "/". A query or fragment is refused.

    Args:
        url: the URL as written.

    Returns:
        A `ParsedUrl` holding a `Target`, or a balancer name and path.

    Raises:
        BadDirective: the URL is malformed or its scheme unsupported (the caller's directive
            turns it into a ConfigError naming the line).
    """
    unix_path: Optional[str] = None
    rest = url
    if url[:5].lower() == "unix:":
        unix_path, bar, rest = url[5:].partition("|")
        if not bar or not unix_path.startswith("/") or not rest:
            raise Expected("unix:/path/to.sock|ws://host/path", url)
    scheme, sep, remainder = rest.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in BACKEND_SCHEMES | {"balancer"}:
        raise Expected("a ws://, wss://, http://, https://, balancer:// or unix: URL", url)
    if unix_path is not None and scheme == "balancer":
        raise Expected("unix:/path/to.sock|ws://host/path", url)
    authority, slash, path = remainder.partition("/")
    path = slash + path if slash else "/"
    if "?" in path or "#" in path:
        raise BadDirective(f'a query or fragment is not allowed in a backend URL: "{url}"')
    if not _URL_PATH_RE.fullmatch(path):
        raise BadDirective(f'the URL path holds characters that must be %-encoded: "{url}"')
    if scheme == "balancer":
        if not _HOST_RE.fullmatch(authority):
            raise Expected("balancer://name[/path]", url)
        return ParsedUrl(balancer=authority.lower(), balancer_path=path)
    if not authority and unix_path is not None:
        authority = "localhost"
    host, port = _parse_authority(authority, url)
    return ParsedUrl(target=Target(scheme, host, port or DEFAULT_PORTS[scheme], path, unix_path))


# -- key=value lists -------------------------------------------------------------------


def url_keys(words: list[str], *, flags: tuple[str, ...] = ()) -> tuple[list[tuple[str, str]], set[str]]:
    """``key=value`` words -> [(lower key, value)] and the set of bare flags seen."""
    pairs: list[tuple[str, str]] = []
    seen_flags: set[str] = set()
    for word in words:
        key, eq, value = word.partition("=")
        if not eq:
            if word.lower() in flags:
                seen_flags.add(word.lower())
                continue
            raise BadDirective(f'expected key=value, got "{word}"')
        pairs.append((key.lower(), value))
    return pairs, seen_flags


_TIME_UNITS = {"ms": 0.001, "s": 1.0, "mi": 60.0, "h": 3600.0}


def _timeout_parameter(value: str, default_unit: str, expected: str) -> float:
    """httpd's ap_timeout_parameter_parse: a whole number with an optional unit (ms, s,
    mi, h; ``default_unit`` without one), in seconds; at least one millisecond."""
    m = re.fullmatch(r"([0-9]{1,12})(ms|s|mi|h)?", value.lower())
    if m is None or int(m.group(1)) * _TIME_UNITS[m.group(2) or default_unit] < 0.001:
        raise Expected(expected, value)
    return int(m.group(1)) * _TIME_UNITS[m.group(2) or default_unit]


def _whole(value: str, low: int, high: Optional[int], expected: str) -> int:
    if not re.fullmatch(r"[0-9]{1,9}", value) or int(value) < low or (high is not None and int(value) > high):
        raise Expected(expected, value)
    return int(value)


def _buffer_size(value: str) -> int:
    n = _whole(value, 0, None, "a byte count >= 512, or 0 for the system default")
    if 0 < n < 512:
        raise Expected("a byte count >= 512, or 0 for the system default", value)
    return n


def _one_of(*words: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value.lower() not in words:
            raise Expected(" or ".join(words), value)
        return value.lower()

    return parse


#: Worker keys tunnel accepts, validated as httpd validates them, with no effect: each
#: concerns a pooled or reused backend connection (tunnel opens a fresh one per request
#: and never reuses it, R18), or output buffering tunnel does not do (it relays what it
#: reads at once); docs/configuration.md's key table gives each one's reason (R96).
ACCEPTED_WORKER_KEYS: dict[str, Callable[[str], Any]] = {
    "flushpackets": _one_of("on", "off", "auto"),
    "flushwait": lambda v: _whole(v, 0, 1000, "a number of milliseconds from 0 to 1000"),
    "keepalive": on_off,
    "ping": lambda v: _timeout_parameter(v, "s", "a time of at least 1ms (unit ms, s, mi or h; default s)"),
    "acquire": lambda v: _timeout_parameter(v, "ms", "a time of at least 1ms (unit ms, s, mi or h; default ms)"),
    "max": lambda v: _whole(v, 0, None, "a number >= 0"),
    "smax": lambda v: _whole(v, 0, None, "a number >= 0"),
    "min": lambda v: _whole(v, 0, None, "a number >= 0"),
    "ttl": lambda v: _whole(v, 1, None, "a number of seconds >= 1"),
    "disablereuse": on_off,
    "enablereuse": on_off,
    "iobuffersize": _buffer_size,
    "receivebuffersize": _buffer_size,
    "responsefieldsize": lambda v: _whole(v, 0, None, "a byte count >= 0"),
    "addressttl": lambda v: -1 if v == "-1" else _whole(v, 0, None, "-1 or a number of seconds"),
}


def accepted_worker_key(key: str, value: str) -> bool:
    """True (after validating the value) for a key in `ACCEPTED_WORKER_KEYS`."""
    parser = ACCEPTED_WORKER_KEYS.get(key)
    if parser is None:
        return False
    try:
        parser(value)
    except Expected as exc:
        raise BadDirective(f"{key}= {exc}") from None
    return True


def rule_key(key: str, value: str, out: dict[str, Any]) -> None:
    """A worker key on a ProxyPass line (non-balancer URL)."""
    if key == "lbset":
        _integer(value, 0, 99)  # a member's key: validated, meaningless on one worker
    elif accepted_worker_key(key, value):
        pass
    elif key == "upgrade":
        out["upgrade"] = _upgrade(value)
    elif key == "timeout":
        out["timeout"] = seconds(value)
    elif key == "connectiontimeout":
        out["connectiontimeout"] = _seconds_ms_positive(value)
    elif key == "retry":
        out["retry"] = _seconds_or_zero(value)
    else:
        known = ", ".join(["upgrade", "timeout", "connectiontimeout", "retry", "lbset", *ACCEPTED_WORKER_KEYS])
        raise BadDirective(f'unknown key "{key}=" (known: {known})')


def _member_status(value: str) -> frozenset[str]:
    flags: set[str] = set()
    adding = True
    for ch in value.upper():
        if ch in "+-":
            adding = ch == "+"
        elif ch in MEMBER_STATUS_FLAGS:
            (flags.add if adding else flags.discard)(ch)
        else:
            raise Expected("+/- followed by flags among D S I H R N", value)
    return frozenset(flags)


_MEMBER_KEYS: dict[str, Callable[[str], Any]] = {
    "loadfactor": lambda v: _integer(v, 1, 100),
    "lbset": lambda v: _integer(v, 0, 99),
    "route": text_value,
    "redirect": text_value,
    "retry": _seconds_or_zero,
    "status": _member_status,
    "connectiontimeout": _seconds_ms_positive,
    "timeout": seconds,
    "upgrade": _upgrade,
}


def member_key(key: str, value: str) -> Any:
    parser = _MEMBER_KEYS.get(key)
    if parser is None:
        known = ", ".join([*_MEMBER_KEYS, *ACCEPTED_WORKER_KEYS])
        raise BadDirective(f'unknown BalancerMember key "{key}=" (known: {known})')
    try:
        return parser(value)
    except Expected as exc:
        raise BadDirective(f"{key}= {exc}") from None


def _lbmethod(value: str) -> str:
    if value.lower() not in LB_METHODS:
        raise Expected(" or ".join(LB_METHODS), value)
    return value.lower()


def _stickysession(value: str) -> tuple[str, ...]:
    names = tuple(value.split("|"))
    if len(names) > 2 or not all(_TOKEN_RE.fullmatch(n) for n in names):
        raise Expected("NAME or NAME|urlname", value)
    return names


def _status_list(value: str) -> tuple[int, ...]:
    codes = [c.strip() for c in value.split(",")]
    if not all(re.fullmatch(r"[1-5][0-9][0-9]", c) for c in codes):
        raise Expected("a comma list of HTTP status codes", value)
    return tuple(int(c) for c in codes)


_BALANCER_KEYS: dict[str, Callable[[str], Any]] = {
    "lbmethod": _lbmethod,
    "stickysession": _stickysession,
    "nofailover": on_off,
    "maxattempts": lambda v: _integer(v, 0),
    "forcerecovery": on_off,
    "timeout": _seconds_or_zero,
    "failonstatus": _status_list,
    "failontimeout": on_off,
    "nonce": lambda v: "" if v.lower() == "none" else _nonce(v),
}


def _nonce(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._~-]{1,64}", value):
        raise Expected("None or a nonce of 1 to 64 letters, digits, '-', '.', '_', '~'", value)
    return value


def balancer_key(key: str, value: str) -> Any:
    if key == "growth":
        raise BadDirective("growth is not supported (members come from the configuration only)")
    parser = _BALANCER_KEYS.get(key)
    if parser is None:
        raise BadDirective(f'unknown balancer key "{key}=" (known: {", ".join(_BALANCER_KEYS)})')
    try:
        return parser(value)
    except Expected as exc:
        raise BadDirective(f"{key}= {exc}") from None


# -- lexing ----------------------------------------------------------------------------


def listen_address(word: str, *, vhost: bool = False) -> tuple[str, int]:
    """``[addr:]port`` (Listen) or ``addr[:port]`` (VirtualHost; ``*`` port -> 0)."""
    expected = "addr:port, [ipv6]:port, *:port or _default_:*" if vhost else "[addr:]port or [ipv6]:port"
    if word.startswith("["):
        host, bracket, rest = word[1:].partition("]")
        if not bracket or not re.fullmatch(r"[0-9A-Fa-f:.]+", host) or (rest and not rest.startswith(":")):
            raise Expected(expected, word)
        port_text = rest[1:] if rest else ""
    elif ":" in word:
        host, _, port_text = word.rpartition(":")
    elif vhost:
        host, port_text = word, ""
    else:
        host, port_text = "", word
    if not port_text and not vhost:
        raise Expected(expected, word)
    if vhost and port_text in ("", "*"):
        port = 0
    elif re.fullmatch(r"[0-9]{1,5}", port_text) and int(port_text) < 65536:
        port = int(port_text)
    else:
        raise Expected(expected, word)
    if host not in ("*", "_default_", "") and ":" not in host and not _HOST_RE.fullmatch(host):
        raise Expected(expected, word)
    if not vhost and host == "*":
        host = ""
    return host, port




def compile_regex(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as exc:
        raise BadDirective(f'bad regular expression "{pattern}": {exc}') from None

