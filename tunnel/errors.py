"""Every error tunnel raises, in one tree.

::

    TunnelError                      status + reason to answer with (if any)
    ├── ConfigError                  file, line, what was expected (never reaches a client)
    ├── Redirect                     3xx with Location (RewriteRule [R]): not a failure
    ├── ClientError                  the client did wrong: 4xx
    │   ├── BadRequest               400
    │   ├── Forbidden                403
    │   ├── NotFound                 404
    │   ├── MethodNotAllowed         405
    │   ├── Gone                     410 (RewriteRule [G])
    │   ├── RequestTimeout           408
    │   ├── URITooLong               414
    │   ├── UpgradeRequired          426 (carries Sec-WebSocket-Version: 13)
    │   └── HeaderFieldsTooLarge     431
    └── UpstreamError                the backend (or we, towards it) failed: 5xx
        ├── InternalServerError      500 (a RewriteRule made an unusable target)
        ├── BackendDNSError          500
        ├── BadGateway               502 (closed before a head, bad head, bad 101, TLS)
        ├── ServiceUnavailable       503 (refused, connect timeout, worker in error,
        │                                 no usable balancer member, sync pool full)
        └── GatewayTimeout           504 (response head or send timed out)

    ClientGone                       the client left while we waited on its behalf:
                                     nothing to answer, the connection is closed

Rules: an error a peer can cause carries the HTTP status and a
short reason to answer with; the front end maps them to a response in one place
(``tunnel.proxy.session``) and logs the detail.  ``ClientError`` means the peer did wrong,
``UpstreamError`` the backend side did; anything else reaching the front end is our
bug and answers 500 with the traceback logged, never sent.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "TunnelError",
    "ConfigError",
    "ClientError",
    "BadRequest",
    "Forbidden",
    "NotFound",
    "MethodNotAllowed",
    "Gone",
    "Redirect",
    "InternalServerError",
    "RequestTimeout",
    "URITooLong",
    "UpgradeRequired",
    "HeaderFieldsTooLarge",
    "UpstreamError",
    "BackendDNSError",
    "BadGateway",
    "ServiceUnavailable",
    "GatewayTimeout",
    "ClientGone",
    "ConfiguredStatus",
]


class TunnelError(Exception):
    """Base of every tunnel error.

    Attributes:
        status: the HTTP status to answer with, or 0 when none applies.
        reason: a short, client-safe reason (one line, no internal detail).
        headers: extra response headers that go with the answer.
    """

    status: int = 500
    default_reason: str = "Internal Server Error"

    def __init__(
        self,
        reason: str | None = None,
        *,
        detail: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.reason = reason or self.default_reason
        #: longer text for the error log only (backend address, errno, ...).
        self.detail = detail
        self.headers = list(headers)
        super().__init__(self.reason if detail is None else f"{self.reason} ({detail})")


class ConfigError(TunnelError):
    """A configuration file or option is wrong.

    ``str()`` reads ``FILE:LINE: MESSAGE`` so a user can jump to it.
    """

    status = 0

    def __init__(self, message: str, *, file: str = "<config>", line: int = 0) -> None:
        self.file = file
        self.line = line
        self.message = message
        TunnelError.__init__(self, message)
        Exception.__init__(self, f"{file}:{line}: {message}" if line else f"{file}: {message}")

    def __str__(self) -> str:  # pragma: no cover - trivial
        return str(self.args[0])


class Redirect(TunnelError):
    """A redirect answer (RewriteRule [R]): ``status`` 3xx, the Location header set.
    Raised so that it takes the one answering path (and the access log) errors take."""

    def __init__(self, status: int, location: str) -> None:
        super().__init__(None, headers=[("Location", location)])
        self.status = status
        self.reason = {301: "Moved Permanently", 302: "Found", 303: "See Other", 307: "Temporary Redirect",
                       308: "Permanent Redirect"}.get(status, "Redirect")  # fmt: skip
        self.location = location


class ClientError(TunnelError):
    status = 400
    default_reason = "Bad Request"


class ConfiguredStatus(ClientError):
    """A status the configuration answers with: mod_alias's ``Redirect 404 /path``, a
    TRACE that TraceEnable refuses (405, or 413 with a body)."""

    def __init__(self, status: int, reason: str, *, detail: str | None = None) -> None:
        super().__init__(reason, detail=detail)
        self.status = status


class BadRequest(ClientError):
    status = 400
    default_reason = "Bad Request"


class Forbidden(ClientError):
    status = 403
    default_reason = "Forbidden"


class NotFound(ClientError):
    status = 404
    default_reason = "Not Found"


class MethodNotAllowed(ClientError):
    status = 405
    default_reason = "Method Not Allowed"


class Gone(ClientError):
    status = 410
    default_reason = "Gone"


class RequestTimeout(ClientError):
    status = 408
    default_reason = "Request Timeout"


class URITooLong(ClientError):
    status = 414
    default_reason = "URI Too Long"


class UpgradeRequired(ClientError):
    status = 426
    default_reason = "Upgrade Required"

    def __init__(
        self,
        reason: str | None = None,
        *,
        detail: str | None = None,
        headers: Sequence[tuple[str, str]] = (("Sec-WebSocket-Version", "13"),),
    ) -> None:
        super().__init__(reason, detail=detail, headers=headers)


class HeaderFieldsTooLarge(ClientError):
    status = 431
    default_reason = "Request Header Fields Too Large"


class UpstreamError(TunnelError):
    status = 502
    default_reason = "Bad Gateway"


class InternalServerError(UpstreamError):
    status = 500
    default_reason = "Internal Server Error"


class BackendDNSError(UpstreamError):
    status = 500
    default_reason = "Backend host name could not be resolved"


class BadGateway(UpstreamError):
    status = 502
    default_reason = "Bad Gateway"


class ServiceUnavailable(UpstreamError):
    status = 503
    default_reason = "Service Unavailable"


class GatewayTimeout(UpstreamError):
    status = 504
    default_reason = "Gateway Timeout"


class ClientGone(Exception):
    """The client closed its connection while the proxy waited for the backend (or for
    a balancer member) on its behalf. Not a `TunnelError`: there is nobody to answer;
    the backend connection is closed at once and the exchange is logged."""
