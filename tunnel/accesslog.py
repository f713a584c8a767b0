"""Access log entries in httpd's mod_log_config formats (docs/httpd-behaviour.md, R58)."""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TextIO

__all__ = [
    "COMMON",
    "COMBINED",
    "PREDEFINED_LOG_FORMATS",
    "LOG_LEVELS",
    "JSON_FORMAT",
    "Entry",
    "Formatter",
    "JsonFormatter",
    "formatter_for",
    "AccessLog",
    "env_value",
]

COMMON = '%h %l %u %t "%r" %>s %b'
COMBINED = COMMON + ' "%{Referer}i" "%{User-Agent}i"'
#: httpd's predefined log format nicknames (mod_log_config).
PREDEFINED_LOG_FORMATS = {"common": COMMON, "combined": COMBINED}

#: httpd's LogLevel names, most severe first, mapped onto Python's logging levels
#: (trace1-8 are read as debug by the configuration).
LOG_LEVELS = {
    "emerg": logging.CRITICAL,
    "alert": logging.CRITICAL,
    "crit": logging.CRITICAL,
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "notice": logging.INFO,
    "info": logging.INFO,
    "debug": logging.DEBUG,
}


@dataclass(slots=True)
class Entry:
    """One finished request or tunnel."""

    remote_host: str = "-"
    peer_host: str = ""  # the TCP peer when a PROXY header or RemoteIPHeader named the client
    request_line: str = "-"
    method: str = "-"
    path: str = "-"
    protocol: str = "-"
    status: int = 0
    request_headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    response_headers: Mapping[str, str] = field(default_factory=dict)
    bytes_in: int = 0
    bytes_out: int = 0
    body_bytes: int = 0
    start: float = 0.0
    duration: float = 0.0
    notes: Mapping[str, str] = field(default_factory=dict)
    server_port: int = 0
    vhost: str = ""
    tunnel: bool = False


_C_ESCAPES = {"\b": "\\b", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def _escape(value: str) -> str:
    """httpd's ap_escape_logitem: ``"`` and ``\\`` backslashed, \\b \\n \\r \\t \\v as
    C escapes, any other non-printable byte as \\xhh."""
    out = []
    for ch in value:
        o = ord(ch)
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif ch in _C_ESCAPES:
            out.append(_C_ESCAPES[ch])
        elif o < 0x20 or o >= 0x7F:
            out.append(f"\\x{o:02x}")
        else:
            out.append(ch)
    return "".join(out)


def _clf_time(e: Entry) -> str:
    return time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(e.start or time.time()))


def _bytes_clf(e: Entry) -> str:
    return str(e.body_bytes) if e.body_bytes or e.tunnel else "-"


_SIMPLE: dict[str, Callable[[Entry], str]] = {
    "h": lambda e: e.remote_host,
    "a": lambda e: e.remote_host,
    "l": lambda e: "-",
    "u": lambda e: "-",
    "t": _clf_time,
    "r": lambda e: _escape(e.request_line),
    ">s": lambda e: str(e.status),
    "s": lambda e: str(e.status),
    "b": _bytes_clf,
    "B": lambda e: str(e.body_bytes),
    "I": lambda e: str(e.bytes_in),
    "O": lambda e: str(e.bytes_out),
    "D": lambda e: str(int(e.duration * 1_000_000)),
    "T": lambda e: str(int(e.duration)),
    "U": lambda e: _escape(e.path.split("?", 1)[0]),
    "q": lambda e: ("?" + _escape(e.path.split("?", 1)[1])) if "?" in e.path else "",
    "m": lambda e: e.method,
    "H": lambda e: e.protocol,
    "p": lambda e: str(e.server_port),
    "v": lambda e: e.vhost or "-",
}
def _custom_time(arg: str) -> Callable[[Entry], str]:
    """httpd's %{format}t: ``begin:``/``end:`` prefix (default begin), then ``sec``,
    ``msec``, ``usec``, ``msec_frac``, ``usec_frac`` or a strftime format (local time)."""
    at_end = False
    if arg.startswith("begin:"):
        arg = arg[len("begin:") :]
    elif arg.startswith("end:"):
        arg, at_end = arg[len("end:") :], True

    def when(e: Entry) -> float:
        start = e.start or time.time()
        return start + e.duration if at_end else start

    numeric: dict[str, Callable[[float], str]] = {
        "sec": lambda t: str(int(t)),
        "msec": lambda t: str(int(t * 1000)),
        "usec": lambda t: str(int(t * 1_000_000)),
        "msec_frac": lambda t: f"{int(t * 1000) % 1000:03d}",
        "usec_frac": lambda t: f"{int(t * 1_000_000) % 1_000_000:06d}",
    }
    if arg in numeric:
        fn = numeric[arg]
        return lambda e: fn(when(e))
    if not arg:
        return lambda e: time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(when(e)))
    fmt = arg
    return lambda e: time.strftime(fmt, time.localtime(when(e)))


_TOKEN = re.compile(r"%(?:\{([^}]*)\})?(>?[a-zA-Z%])")


def _literal(text: str) -> Callable[[Entry], str]:
    """A part of the format that is written as it stands."""
    return lambda e: text


class Formatter:
    """A LogFormat string compiled once into parts."""

    def __init__(self, fmt: str) -> None:
        fmt = fmt.replace("\\n", "\n").replace("\\t", "\t").replace('\\"', '"')
        self.parts: list[Callable[[Entry], str]] = []
        #: the request and response header names (lower case) the format reads
        self.request_names: set[str] = set()
        self.response_names: set[str] = set()
        pos = 0
        for m in _TOKEN.finditer(fmt):
            if m.group(1) is not None and m.group(2) in ("i", "o"):
                names = self.request_names if m.group(2) == "i" else self.response_names
                names.add(m.group(1).lower())
            if m.start() > pos:
                self.parts.append(_literal(fmt[pos : m.start()]))
            self.parts.append(self._directive(m.group(1), m.group(2)))
            pos = m.end()
        if "%" in fmt[pos:]:
            raise ValueError(f"unknown log format directive {fmt[pos:]!r}")
        if pos < len(fmt):
            self.parts.append(_literal(fmt[pos:]))

    @staticmethod
    def _directive(arg: str | None, code: str) -> Callable[[Entry], str]:
        if code == "%":
            return lambda e: "%"
        if arg is not None:
            key = arg.lower()
            if code == "i":
                return lambda e: _escape(e.request_headers.get(key, "-"))
            if code == "o":
                return lambda e: _escape(e.response_headers.get(key, "-"))
            if code == "n":
                return lambda e: _escape(str(e.notes.get(arg, "-")))
            if code == "e":  # the request's environment (one table with the notes in tunnel)
                return lambda e: _env_field(e, arg)
            if code in ("a", "h") and arg == "c":  # the connection's peer (a balancer in front)
                return lambda e: e.peer_host or e.remote_host
            if code == "t":
                return _custom_time(arg)
            if code == "T":
                scale = {"ms": 1000, "us": 1_000_000, "s": 1}.get(arg)
                if scale is None:
                    raise ValueError(f"unknown %{{{arg}}}T unit")
                return lambda e: str(int(e.duration * scale))
            raise ValueError(f"unknown log format directive %{{{arg}}}{code}")
        fn = _SIMPLE.get(code)
        if fn is None:
            raise ValueError(f"unknown log format directive %{code}")
        return fn

    def format(self, e: Entry) -> str:
        return "".join(p(e) for p in self.parts)


def env_value(env: Mapping[str, str], name: str) -> str | None:
    """A variable of a request's environment; names compare ignoring case, as in httpd's
    tables (an exact match first)."""
    value = env.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, value in env.items():
        if key.lower() == lowered:
            return value
    return None


#: ``CustomLog FILE json``: one JSON object per line (R118), unless a LogFormat defines
#: a nickname "json" itself (a configuration's own nickname wins).
JSON_FORMAT = "json"
#: The notes a JSON line carries when set (tunnel's per-request facts).
JSON_NOTES = ("route", "rewrite", "backend", "balancer", "member", "strategy", "close_reason", "to_backend", "to_client", "tunnel_id", "handler")


class JsonFormatter:
    """``CustomLog FILE json``: the entry's fields as one JSON object."""

    #: the request and response header names (lower case) a line carries
    request_names = frozenset({"referer", "user-agent"})
    response_names: frozenset[str] = frozenset()

    def format(self, e: Entry) -> str:
        record: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(e.start or time.time())),
            "remote": e.remote_host,
            "vhost": e.vhost,
            "port": e.server_port,
            "request": e.request_line,
            "method": e.method,
            "path": e.path,
            "protocol": e.protocol,
            "status": e.status,
            "bytes_in": e.bytes_in,
            "bytes_out": e.bytes_out,
            "body_bytes": e.body_bytes,
            "duration_us": int(e.duration * 1_000_000),
            "tunnel": e.tunnel,
            "referer": e.request_headers.get("referer"),
            "user_agent": e.request_headers.get("user-agent"),
        }
        record.update({k: str(e.notes[k]) for k in JSON_NOTES if k in e.notes})
        return json.dumps(record, ensure_ascii=True, separators=(",", ":"))


def formatter_for(fmt: str) -> Formatter | JsonFormatter:
    """The formatter of a resolved CustomLog format: `JSON_FORMAT` or a LogFormat string.

    Raises:
        ValueError: an unknown directive in a format string.
    """
    return JsonFormatter() if fmt == JSON_FORMAT else Formatter(fmt)




def _env_field(e: Entry, name: str) -> str:
    """%{VAR}e: the value escaped ("" when set empty), "-" when not set."""
    value = env_value(e.notes, name)
    return "-" if value is None else _escape(value)


def _wanted(condition: str, e: Entry) -> bool:
    """CustomLog's env= clause: "" always, "VAR" when set, "!VAR" when not set (R85)."""
    if not condition:
        return True
    if condition.startswith("!"):
        return env_value(e.notes, condition[1:]) is None
    return env_value(e.notes, condition) is not None


class AccessLog:
    """CustomLog targets: (file or "-" for stdout, format), each with an optional env=
    condition ("VAR" or "!VAR", in the same order). Thread-safe, line-buffered."""

    def __init__(self, targets: Sequence[tuple[str, str]], conditions: Sequence[str] = ()) -> None:
        self._lock = threading.Lock()
        self._outs: list[tuple[TextIO, Formatter | JsonFormatter, bool, str]] = []
        try:
            for i, (path, fmt) in enumerate(targets):
                formatter = formatter_for(fmt)  # a bad format fails before its file is opened
                condition = conditions[i] if i < len(conditions) else ""
                if path == "-":
                    self._outs.append((sys.stdout, formatter, False, condition))
                else:
                    # Open for the log's whole life (``close()`` closes it): no ``with`` block fits.
                    log_file = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - closed by close()
                    self._outs.append((log_file, formatter, True, condition))
        except BaseException:
            self.close()  # the files opened before the one that failed
            raise

    @property
    def enabled(self) -> bool:
        return bool(self._outs)

    def header_names(self) -> tuple[frozenset[str], frozenset[str]]:
        """The request and response header names (lower case) any of the formats reads:
        all an entry needs of the heads (a tunnel keeps no others while it is open)."""
        request: set[str] = set()
        response: set[str] = set()
        for _, fmt, _, _ in self._outs:
            request |= fmt.request_names
            response |= fmt.response_names
        return frozenset(request), frozenset(response)

    def write(self, e: Entry) -> None:
        if not self._outs:
            return
        with self._lock:
            for out, fmt, _, condition in self._outs:
                if not _wanted(condition, e):
                    continue
                try:
                    out.write(fmt.format(e) + "\n")
                    out.flush()
                except (OSError, ValueError):
                    pass

    def close(self) -> None:
        with self._lock:
            for out, _, owned, _ in self._outs:
                if owned:
                    out.close()
            self._outs = []
