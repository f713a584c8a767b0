"""The values of mod_http2's directives (R141, R142); ``Protocols`` is read in
corehooks.py (R140)."""

from __future__ import annotations

from .values import Expected

__all__ = ["h2_streams", "h2_window", "h2_mem"]

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
