"""Request and response heads as the protocol layer passes them around, and the
HTTP grammar fragments the fast paths check lines against (RFC 9110 as h11 applies it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional, TypeVar

__all__ = ["RequestHead", "ResponseHead", "HOP_BY_HOP", "MAX_RESPONSE_HEAD", "kept_lines"]

_T = TypeVar("_T", str, tuple[str, str])

#: How many distinct values `_shared` keeps (per cache): once full, a new value is
#: kept as it came, so a stream of unique ones costs no more than before.
SHARED_MAX = 512
_shared_words: dict[str, str] = {}
_shared_lines: dict[tuple[str, str], tuple[str, str]] = {}


def _shared(value: _T, cache: dict[_T, _T]) -> _T:
    """``value``, or an equal one kept earlier: what many open tunnels hold alike (the
    101's ``Upgrade: websocket``, a common User-Agent, ``GET``, ``1.1``) is then held
    once, not once per tunnel."""
    got = cache.get(value)
    if got is not None:
        return got
    if len(cache) < SHARED_MAX:
        cache[value] = value
    return value


def kept_lines(headers: list[tuple[str, str]], names: frozenset[str]) -> list[tuple[str, str]]:
    """The header lines whose lower-case name is in ``names``, in a list of their exact
    size, each line shared with the equal ones other tunnels keep (see `_shared`)."""
    kept = [_shared(h, _shared_lines) for h in headers if h[0].lower() in names]
    return kept[:] if kept else kept  # a comprehension's list has room to grow: not kept

#: Removed from every forwarded request and relayed response (R14 plus the
#: tunnel line: Proxy-Authorization is never forwarded, Proxy-Authenticate never relayed).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "proxy-connection",
        "keep-alive",
        "upgrade",
        "trailer",
        "te",
        "transfer-encoding",
        "proxy-authorization",
        "proxy-authenticate",
    }
)
#: The longest response head we read from a backend (R19: lines ≤ 8192; a head this big
#: is already suspicious).
MAX_RESPONSE_HEAD = 64 * 1024

TOKEN_SPLIT = re.compile(r"\s*,\s*")
#: A Host value httpd's fix_hostname accepts: a name or IPv4 address of letters, digits,
#: ``-``, ``_`` and ``.``, or a bracketed IPv6 literal; an optional numeric port.
HOST_VALUE = re.compile(rb"(?:[A-Za-z0-9._-]*|\[[0-9A-Fa-f:.]+\])(?::[0-9]*)?")

#: RFC 9110's grammar as h11 applies it: a token (method, field name), a request target,
#: a field value (no leading or trailing blanks).
TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
TARGET = rb"[\x21-\x7e]+"
VALUE = rb"(?:[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?"
#: One header line as h11 reads it (name, value without the blanks around it).
FIELD_LINE = re.compile(rb"(" + TOKEN + rb"):[ \t]*(" + VALUE + rb")[ \t]*")

#: Header names and short values as read, shared by every head that has them: an idle
#: tunnel keeps its request and 101 heads (for the access log and the status pages), and
#: ``Upgrade``/``websocket``/``13`` once per process rather than once per tunnel is most of
#: their memory. Bounded: a cache that fills is emptied (only sharing is lost).
_NAMES: dict[bytes, tuple[str, str]] = {}
_VALUES: dict[bytes, str] = {}
SHARED_MAX = 1024
#: Longer values are most likely unique (keys, accept tokens, cookies): not shared.
SHARED_VALUE_MAX = 20


def field_name(raw: bytes) -> tuple[str, str]:
    """A header name read from the wire as (name, lower-case name), shared."""
    got = _NAMES.get(raw)
    if got is None:
        if len(_NAMES) >= SHARED_MAX:
            _NAMES.clear()
        name = raw.decode("latin-1")
        got = _NAMES[raw] = (name, name.lower())
    return got


def field_value(raw: bytes) -> str:
    """A header value read from the wire (latin-1), shared when it is short."""
    if len(raw) > SHARED_VALUE_MAX:
        return raw.decode("latin-1")
    got = _VALUES.get(raw)
    if got is None:
        if len(_VALUES) >= SHARED_MAX:
            _VALUES.clear()
        got = _VALUES[raw] = raw.decode("latin-1")
    return got


#: Header lines read before, as (name, lower-case name, value), shared by every head
#: that has them. Bounded: a table that fills is emptied (only sharing is lost).
LINES: dict[bytes, tuple[str, str, str]] = {}


def field_line(line: bytes) -> tuple[str, str, str]:
    """A header line a head's regex has checked (``name:[ \t]*value[ \t]*``, no CR LF)
    as (name, lower-case name, value), shared when its value is short."""
    got = LINES.get(line)
    if got is None:
        raw_name, _, raw_value = line.partition(b":")
        raw_value = raw_value.strip(b" \t")
        name, low = field_name(raw_name)
        got = (name, low, field_value(raw_value))
        if len(raw_value) <= SHARED_VALUE_MAX:  # a longer one is most likely unique
            if len(LINES) >= SHARED_MAX:
                LINES.clear()
            LINES[line] = got
    return got


@dataclass(slots=True)
class RequestHead:
    """A parsed request head. Header names keep the client's case; lookups ignore it."""

    method: str
    target: str
    http_version: str
    headers: list[tuple[str, str]]
    raw_size: int = 0  # bytes of the head on the wire (for %I)
    #: lower-case name -> value (repeats joined), built on the first lookup for the
    #: ``headers`` list it was built from (a new list is indexed again).
    _index: Optional[tuple[list[tuple[str, str]], dict[str, str]]] = field(default=None, init=False, repr=False, compare=False)

    def index(self) -> dict[str, str]:
        """The headers by lower-case name, repeated lines joined with ", " (R12); built
        once for the ``headers`` list (a new list is indexed again). Read-only."""
        index = self._index
        headers = self.headers
        if index is not None and index[0] is headers:
            return index[1]
        table: dict[str, str] = {}
        for k, v in headers:
            low = k.lower()
            had = table.get(low)
            table[low] = v if had is None else f"{had}, {v}"
        self._index = (headers, table)
        return table

    def get(self, name: str) -> Optional[str]:
        """The header's value, repeated lines joined with ", " (R12), or None."""
        index = self._index
        if index is None or index[0] is not self.headers:
            return self.index().get(name.lower())
        return index[1].get(name.lower())

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def tokens(self, name: str) -> list[str]:
        """The comma-separated tokens of a header, lower-cased, empty ones dropped."""
        value = self.get(name)
        if not value:
            return []
        if "," not in value:
            return [value.strip().lower()]
        return [t.lower() for t in TOKEN_SPLIT.split(value.strip())]

    def kept(self, names: frozenset[str]) -> RequestHead:
        """This head with only the header lines whose lower-case name is in ``names``
        (what a tunnel keeps for its access-log entry once the 101 is out)."""
        return RequestHead(
            _shared(self.method, _shared_words),
            self.target,
            _shared(self.http_version, _shared_words),
            kept_lines(self.headers, names),
            self.raw_size,
        )

    @property
    def request_line(self) -> str:
        return f"{self.method} {self.target} HTTP/{self.http_version}"

    @property
    def keep_alive(self) -> bool:
        tokens = self.tokens("connection")
        if self.http_version == "1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


@dataclass(slots=True)
class ResponseHead:
    status: int
    reason: str
    http_version: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    #: lower-case name -> value (repeats joined) for the ``headers`` list it is for, when
    #: the reader had the names lower-cased already (`parse_101`)
    index: Optional[tuple[list[tuple[str, str]], dict[str, str]]] = field(default=None, repr=False, compare=False)

    def get(self, name: str) -> Optional[str]:
        index = self.index
        if index is not None and index[0] is self.headers:
            return index[1].get(name.lower())
        name = name.lower()
        found: Optional[str] = None
        for k, v in self.headers:
            if k.lower() == name:
                found = v if found is None else f"{found}, {v}"
        return found
