"""The request's environment and header lines, at the moments httpd runs them (R80-R84).

``serve_client``'s `_handle` (and `tunnel.proxy.decide` for step 2) call in here, in order:

1. `post_read` once the vhost is known: ``RequestHeader ... early`` lines, then the
   server's and vhost's SetEnvIf lines (before mod_rewrite, which reads ``%{ENV:...}``).
2. `header_parser` once the request is routed: the lines of the matching `<Location>`
   blocks join the server's; their SetEnvIf lines run (before the access rules).
3. `fixups` after the access rules: SetEnv/PassEnv values, then the RequestHeader
   lines; when they changed ``Upgrade`` the upgrade decision is taken again (mod_proxy
   reads it while building the backend request).
4. `answer_headers` for what the client gets: a relayed answer or a 101 (every Header
   line) or the proxy's own answer (``Header always`` lines only).

The environment is the request's `Exchange.notes` (rewrite's [E=] and the balancer's
variables are there too). Nothing here runs when no such line is configured.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from typing import Optional

from ..config.model import Scope
from ..io.streams import Endpoint
from ..io.tls import TLSStream
from ..protocol.access import AccessRequest
from ..protocol.headers import HeaderContext, apply_request_headers, apply_response_headers
from ..protocol.heads import HOP_BY_HOP, RequestHead
from ..protocol.routing import RouteResult, reselect_upgrade
from ..protocol.setenv import EnvFacts, apply_setenv, location_setenvif, post_read_request, request_config
from .failover import peer_ip
from .records import Exchange

__all__ = ["post_read", "header_parser", "fixups", "answer_headers", "switch_headers", "error_headers"]


def _local_ip(sock: Endpoint) -> str:
    try:
        name = sock.getsockname()
    except OSError:
        return ""
    return str(name[0]) if isinstance(name, tuple) and name else ""


def _raw_path(target: str) -> str:
    """The request line's path, before any decoding (httpd's r->uri at post_read_request)."""
    if not target.startswith("/") and "://" in target:
        target = "/" + target.partition("://")[2].partition("/")[2]
    return target.partition("?")[0]


def _facts(head: RequestHead, ex: Exchange, local_ip: Callable[[], str], uri: str) -> EnvFacts:
    return EnvFacts(
        remote_addr=peer_ip(ex.peer),
        method=head.method,
        protocol=f"HTTP/{head.http_version}",
        uri=uri,
        headers=head.headers,
        server_addr=local_ip,
    )


def _ssl_vars(client: Optional[Endpoint], ex: Exchange) -> dict[str, str]:
    https = ex.listener is not None and ex.listener.tls
    # mod_ssl's lookup also answers some request variables, which configurations use.
    values = {"HTTPS": "on" if https else "off", "REMOTE_ADDR": peer_ip(ex.peer), "REQUEST_SCHEME": "https" if https else "http"}
    if ex.head is not None:
        values["REQUEST_METHOD"] = ex.head.method
    if isinstance(client, TLSStream):
        values["SSL_PROTOCOL"] = client.version() or ""
        cipher = client.cipher()
        if cipher is not None:
            values["SSL_CIPHER"] = cipher[0]
            values["SSL_CIPHER_USEKEYSIZE"] = values["SSL_CIPHER_ALGKEYSIZE"] = str(cipher[2])
    return values


def _context(head: Optional[RequestHead], ex: Exchange, client: Optional[Endpoint], path: str = "/") -> HeaderContext:
    access = AccessRequest(
        remote=peer_ip(ex.peer),
        local=_local_ip(client) if client is not None else "",
        method=head.method if head is not None else "GET",
        path=path,
        query=head.target.partition("?")[2] if head is not None else "",
        headers=tuple(head.headers) if head is not None else (),
        https=ex.listener is not None and ex.listener.tls,
        env=ex.notes,
    )
    return HeaderContext(
        env=ex.notes,
        access=access,
        start=ex.start,
        now=time.time,
        ssl=_ssl_vars(client, ex),
        loadavg=os.getloadavg,
    )


def post_read(scope: Scope, head: RequestHead, ex: Exchange, local_ip: Callable[[], str]) -> RequestHead:
    """The server's and vhost's lines as the request head is read. Returns the head,
    changed by ``RequestHeader ... early`` lines."""
    ex.env_conf = scope.env
    if not scope.uses_env:  # has_env, worked out once per scope
        return head
    early = [op for op in scope.env.request if op.early]
    if early:
        headers = apply_request_headers(early, head.headers, _context(head, ex, None, _raw_path(head.target)), early=True)
        head = dataclasses.replace(head, headers=headers)
        ex.head = head
    post_read_request(scope, _facts(head, ex, local_ip, _raw_path(head.target)), ex.notes)
    return head


def header_parser(scope: Scope, path: str, head: RequestHead, ex: Exchange, local_ip: Callable[[], str]) -> None:
    """Once the request is mapped to ``path``: the matching `<Location>` blocks' lines
    join in, and their SetEnvIf lines run (before the access rules)."""
    if not scope.uses_env:  # has_env, worked out once per scope
        return
    conf, loc_rules = request_config(scope, path)
    ex.env_conf = conf
    if loc_rules:
        location_setenvif(loc_rules, _facts(head, ex, local_ip, path), ex.notes)


def fixups(decision: RouteResult, head: RequestHead, ex: Exchange, client: Optional[Endpoint]) -> tuple[RequestHead, RouteResult]:
    """SetEnv values, then RequestHeader lines. Returns the head the backend is sent
    and the decision, taken again when the Upgrade header changed (R81)."""
    conf = ex.env_conf
    if conf.env_vars:
        apply_setenv(conf, ex.notes)
    if not any(not op.early for op in conf.request):
        return head, decision
    ctx = _context(head, ex, client, decision.local_path)
    headers = apply_request_headers(conf.request, head.headers, ctx)
    if headers == head.headers:
        return head, decision
    changed = dataclasses.replace(head, headers=headers)
    ex.head = changed
    if changed.get("upgrade") != head.get("upgrade"):
        decision = reselect_upgrade(decision, changed.get("upgrade"))
    return changed, decision


def answer_headers(
    ex: Exchange,
    client: Optional[Endpoint],
    out: Sequence[tuple[str, str]],
    err: Sequence[tuple[str, str]] = (),
    *,
    own: bool = False,
) -> list[tuple[str, str]]:
    """The headers the client gets: ``out`` (a relayed answer's, or the proxy's own
    answer's) and ``err`` (what the proxy set for an error, R15's 426 headers say) with
    the Header lines applied; the proxy's own answers (``own``) take the ``always``
    lines only."""
    conf = ex.env_conf
    if not conf.always and (own or not conf.onsuccess):
        return [*err, *out]
    head = ex.head
    ctx = _context(head, ex, client)
    request = head.headers if head is not None else []
    return apply_response_headers(conf.always, () if own else conf.onsuccess, err, out, ctx, request)


def switch_headers(ex: Exchange, client: Endpoint, headers: Sequence[tuple[str, str]], token: str) -> list[tuple[str, str]]:
    """A 101's headers with the Header lines applied to all but the hop-by-hop ones: its
    Upgrade stays the backend's (the switch is checked against it, R20), and the proxy
    writes Connection and Upgrade itself."""
    kept = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP]
    upgrade = next((v for k, v in headers if k.lower() == "upgrade"), token)
    final = [(k, v) for k, v in answer_headers(ex, client, kept) if k.lower() not in HOP_BY_HOP]
    return [*final, ("Upgrade", upgrade)]


def error_headers(
    ex: Exchange, client: Optional[Endpoint], own: Sequence[tuple[str, str]], extra: Sequence[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The headers of the proxy's own answer: ``own`` (its Content-Type and length) and
    ``extra`` (a redirect's Location, a 426's Upgrade...), with the ``Header always``
    lines applied as httpd's error path does: Location stays in headers_out, the rest
    is err_headers_out, which the lines edit."""
    location = [(k, v) for k, v in extra if k.lower() == "location"]
    err = [(k, v) for k, v in extra if k.lower() != "location"]
    return answer_headers(ex, client, [*own, *location], err, own=True)
