"""ProxyPassReverse, sans-IO: the backend's own URLs in a relayed answer's Location,
Content-Location and URI headers become the proxy's (R77).

A map is ``(path, url)``: a header value that starts with ``url`` (compared without
regard to case, as httpd's ap_proxy_location_reverse_map does) has that prefix replaced
by ``path``, one ``/`` dropped where both sides have one; a relative result is made
absolute with the scheme and Host the client used (UseCanonicalName Off, httpd's
default). A ``balancer://name/...`` url stands for each of its members' URLs. The first
map that matches wins; a value no map matches is relayed as it is.

ProxyPassReverseCookiePath / ProxyPassReverseCookieDomain (R103) rewrite the ``path=``
and ``domain=`` attributes of each ``Set-Cookie``, as ap_proxy_cookie_reverse_map does:
an attribute whose value starts with a map's internal string (a path compared exactly,
a domain without regard to case) has its whole value replaced by the public one; the
first matching map wins; the rest of the header is kept byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Optional

from ..config.model import Balancer

__all__ = ["REVERSED_HEADERS", "reverse_map", "reverse_map_cookie", "reverse_map_headers"]

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


def _first_match(value: str, maps: Iterable[tuple[str, str]], *, nocase: bool) -> Optional[str]:
    probe = value.lower() if nocase else value
    for internal, public in maps:
        if probe.startswith(internal.lower() if nocase else internal):
            return public
    return None


def reverse_map_cookie(
    value: str, paths: Iterable[tuple[str, str]] = (), domains: Iterable[tuple[str, str]] = ()
) -> str:
    """A ``Set-Cookie`` value with its ``path=`` / ``domain=`` attributes mapped.

    The value is cut at ``;``; in each attribute after the cookie's own ``name=value``
    the blanks before it are skipped and ``path=`` / ``domain=`` are recognised without
    regard to case. The attribute's value runs to the next ``;`` (blanks included, as
    httpd reads it); a matching one is replaced whole by the map's public value.
    """
    parts = value.split(";")
    changed = False
    for i in range(1, len(parts)):
        part = parts[i]
        attr = part.lstrip(" \t")
        lead = part[: len(part) - len(attr)]
        key = attr[:7].lower()
        if key.startswith("path="):
            new, cut = _first_match(attr[5:], paths, nocase=False), 5
        elif key == "domain=":
            new, cut = _first_match(attr[7:], domains, nocase=True), 7
        else:
            continue
        if new is not None:
            parts[i] = lead + attr[:cut] + new
            changed = True
    return ";".join(parts) if changed else value


def reverse_map_headers(
    headers: list[tuple[str, str]],
    maps: tuple[tuple[str, str], ...],
    *,
    base: str,
    balancers: Mapping[str, Balancer],
    cookie_paths: tuple[tuple[str, str], ...] = (),
    cookie_domains: tuple[tuple[str, str], ...] = (),
) -> list[tuple[str, str]]:
    """The response headers with ProxyPassReverse and the cookie maps applied (the list
    itself when there is no map)."""
    if not maps and not cookie_paths and not cookie_domains:
        return headers
    out = []
    for k, v in headers:
        low = k.lower()
        if maps and low in REVERSED_HEADERS:
            v = reverse_map(v, maps, base=base, balancers=balancers)
        elif low == "set-cookie" and (cookie_paths or cookie_domains):
            v = reverse_map_cookie(v, cookie_paths, cookie_domains)
        out.append((k, v))
    return out
