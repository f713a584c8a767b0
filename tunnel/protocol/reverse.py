"""ProxyPassReverse, sans-IO: the backend's own URLs in a relayed answer's Location,
Content-Location and URI headers become the proxy's (R77).

A map is ``(path, url)``: a header value that starts with ``url`` (compared without
regard to case, as httpd's ap_proxy_location_reverse_map does) has that prefix replaced
by ``path``, one ``/`` dropped where both sides have one; a relative result is made
absolute with the scheme and Host the client used (UseCanonicalName Off, httpd's
default). A ``balancer://name/...`` url stands for each of its members' URLs. The first
map that matches wins; a value no map matches is relayed as it is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from ..config.model import Balancer

__all__ = ["REVERSED_HEADERS", "reverse_map", "reverse_map_headers"]

_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")

#: The response headers ProxyPassReverse rewrites (httpd's list).
REVERSED_HEADERS = frozenset({"location", "content-location", "uri"})


def _expand(maps: Iterable[tuple[str, str]], balancers: Mapping[str, Balancer]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for path, url in maps:
        if url.lower().startswith("balancer://"):
            name, slash, rest = url[len("balancer://") :].partition("/")
            balancer = balancers.get(name)
            if balancer is None:
                continue
            for member in balancer.members:
                base = str(member.target).rstrip("/")
                out.append((path, base + slash + rest))
        else:
            out.append((path, url))
    return out


def reverse_map(value: str, maps: Iterable[tuple[str, str]], *, base: str, balancers: Mapping[str, Balancer]) -> str:
    """``value`` with the first matching map applied, else ``value`` itself.

    Args:
        value: a Location (or Content-Location, URI) header value from the backend.
        maps: ``(path, url)`` pairs in configuration order.
        base: ``scheme://host[:port]`` as the client reached the proxy.
        balancers: the configuration's balancers, for ``balancer://`` urls.
    """
    for path, url in _expand(maps, balancers):
        if len(url) <= len(value) and value[: len(url)].lower() == url.lower():
            rest = value[len(url) :]
            if path.endswith("/") and rest.startswith("/"):
                rest = rest[1:]
            mapped = path + rest
            return mapped if _ABSOLUTE.match(mapped) else base + mapped
    return value


def reverse_map_headers(
    headers: list[tuple[str, str]],
    maps: tuple[tuple[str, str], ...],
    *,
    base: str,
    balancers: Mapping[str, Balancer],
) -> list[tuple[str, str]]:
    """The response headers with ProxyPassReverse applied (the list itself when no map)."""
    if not maps:
        return headers
    return [
        (k, reverse_map(v, maps, base=base, balancers=balancers)) if k.lower() in REVERSED_HEADERS else (k, v)
        for k, v in headers
    ]
