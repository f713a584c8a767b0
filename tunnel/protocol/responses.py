"""The proxy's own answers: status phrases, error bodies, which statuses end a connection."""

from __future__ import annotations

import http
from collections.abc import Iterable

__all__ = ["error_response_bytes", "phrase", "DROPS_CONNECTION"]

# httpd's ap_status_drops_connection(): after these answers the connection is closed;
# after any other error (404, 502, 504, ...) a keep-alive client may send another request.
DROPS_CONNECTION = frozenset({400, 408, 411, 413, 414, 417, 500, 501, 503})


def phrase(status: int) -> str:
    """The standard reason phrase ("Not Found"), never an empty one."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def error_response_bytes(status: int, reason: str, *, headers: Iterable[tuple[str, str]] = (), close: bool = True) -> bytes:
    """A short text/plain error answer (used where no h11 state is left to send it)."""
    text = phrase(status)
    body = f"{status} {text}: {reason}\n".encode("utf-8", "replace")
    lines = [f"HTTP/1.1 {status} {text}", "Content-Type: text/plain; charset=utf-8", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
