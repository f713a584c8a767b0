"""mod_http2's directives and httpd core's ``Protocols``, mixed into the parser (R140,
R141, R142).

``Protocols`` lists what a TLS listener's ALPN may choose, in the server's order of
preference: ``h2`` and ``http/1.1``. ``h2c`` (HTTP/2 over cleartext, by Upgrade or prior
knowledge) is refused by name: tunnel speaks HTTP/2 only on TLS listeners.
"""

from __future__ import annotations

from .values import BadDirective, Expected

__all__ = ["H2Hooks", "PROTOCOLS", "h2_streams", "h2_window", "h2_mem"]

#: The protocols ``Protocols`` may name.
PROTOCOLS = ("h2", "http/1.1")
#: The largest flow-control window HTTP/2 allows (RFC 9113, 6.9.1).
MAX_WINDOW = 2**31 - 1


def _int(value: str, low: int, high: int) -> int:
    if not value.isdigit() or len(value) > 10 or not low <= int(value) <= high:
        raise Expected(f"an integer from {low} to {high}", value)
    return int(value)


def h2_streams(value: str) -> int:
    """H2MaxSessionStreams: 1 or more (httpd refuses 0)."""
    return _int(value, 1, MAX_WINDOW)


def h2_window(value: str) -> int:
    """H2WindowSize: 1024 bytes at least (httpd's floor), 2^31-1 at most (HTTP/2's)."""
    return _int(value, 1024, MAX_WINDOW)


def h2_mem(value: str) -> int:
    """H2StreamMaxMemSize: 1024 bytes at least (httpd's floor)."""
    return _int(value, 1024, MAX_WINDOW)


class H2Hooks:
    """The ``Protocols`` handler (its arguments are a list, not one value)."""

    def _set(self, setting: str, value: object) -> None:
        raise NotImplementedError

    def _protocols(self, args: list[str]) -> None:
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
