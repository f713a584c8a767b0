"""What the proxy changes in the heads it passes on, per request: ProxyVia on the
forwarded request (R104), and on the backend's answer ProxyPassReverse (R77), the cookie
maps (R103), Via and the Upgrade kept on a non-101 answer (R101); LimitRequestBody's
check of a declared length (R105).

Pure functions of the configuration and the request, kept out of ``session.py`` so that
the connection's life stays readable there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Optional

from .._version import __version__
from ..config.model import Balancer, Member, ProxyRule, Scope
from ..errors import PayloadTooLarge
from ..protocol.heads import RequestHead, ResponseHead
from ..protocol.reverse import reverse_map_headers
from ..protocol.routing import relays_upgrade
from ..protocol.via import via_entry, via_request, via_response
from . import aliasing
from .records import Exchange

__all__ = ["answer_head", "check_declared_length", "kept_upgrade", "request_via"]

#: The product a ``ProxyVia Full`` entry names.
PRODUCT = f"tunnel/{__version__}"


def _host_port(host: Optional[str]) -> Optional[int]:
    """The port a Host header names, or None."""
    if not host:
        return None
    tail = host.rsplit("]", 1)[-1]
    _, colon, port = tail.rpartition(":")
    return int(port) if colon and port.isdigit() else None


def _via(scope: Scope, server_name: str, ex: Exchange) -> str:
    head = ex.head
    port = _host_port(head.get("host") if head is not None else None)
    if port is None and ex.listener is not None:
        port = ex.listener.port
    tls = ex.listener is not None and ex.listener.tls
    version = head.http_version if head is not None else "1.1"
    return via_entry(version, scope.server_name or server_name, port, tls=tls, product=PRODUCT if scope.via == "full" else None)


def request_via(headers: list[tuple[str, str]], scope: Scope, server_name: str, ex: Exchange) -> list[tuple[str, str]]:
    """The forwarded request's headers under the scope's ProxyVia (R104)."""
    if scope.via == "off":
        return headers
    return via_request(headers, scope.via, _via(scope, server_name, ex) if scope.via != "block" else "")


def answer_head(
    response: ResponseHead, scope: Scope, ex: Exchange, balancers: Mapping[str, Balancer], server_name: str
) -> ResponseHead:
    """The backend's answer (a 101 too) with ProxyPassReverse, the cookie maps and Via applied."""
    headers = response.headers
    if scope.reverse_maps or scope.cookie_paths or scope.cookie_domains:
        assert ex.head is not None
        base = aliasing.base_url(scope, ex.head, ex.listener, scope.server_name or "localhost")  # R95
        headers = reverse_map_headers(
            headers,
            scope.reverse_maps,
            base=base,
            balancers=balancers,
            cookie_paths=scope.cookie_paths,
            cookie_domains=scope.cookie_domains,
        )
    if scope.via in ("on", "full"):
        headers = via_response(headers, scope.via, _via(scope, server_name, ex))
    return response if headers is response.headers else dataclasses.replace(response, headers=headers)


def kept_upgrade(response: ResponseHead, rule: ProxyRule, member: Optional[Member]) -> list[tuple[str, str]]:
    """``Connection: Upgrade`` and the backend's ``Upgrade`` for a non-101 answer that
    keeps them (R101), else nothing."""
    value = response.get("upgrade")
    if value is None or not value.strip() or not relays_upgrade(rule, value, status=response.status, member=member):
        return []
    return [("Connection", "Upgrade"), ("Upgrade", value.strip())]


def check_declared_length(scope: Scope, head: RequestHead) -> None:
    """A Content-Length over LimitRequestBody is refused before any backend (R105).

    Raises:
        PayloadTooLarge: 413.
    """
    limit = scope.limit_request_body
    if not limit:
        return
    declared = head.get("content-length")
    if declared is None or head.get("transfer-encoding") is not None:
        return
    first = declared.split(",")[0].strip()  # repeated equal values were accepted by the front end
    if first.isdigit() and int(first) > limit:
        raise PayloadTooLarge("request body too large", detail=f"Content-Length {first} over LimitRequestBody {limit}")
