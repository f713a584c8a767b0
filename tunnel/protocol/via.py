"""ProxyVia, sans-IO: the ``Via`` entry the proxy adds to forwarded requests and to the
answers it relays (R104), as mod_proxy_http writes it.

The entry is ``<version> <name>[:<port>]``: the client's HTTP version ("1.1"), the
server's name (ServerName, else the host name; never the client's Host, which httpd
also avoids), and the port the client reached unless it is the scheme's default. Full
adds the product as a comment: ``1.1 proxy.example:8080 (tunnel/1.0)``.

* ``off`` (the default): Via headers pass as they are, none is added;
* ``on`` / ``full``: the entry is appended to the request's Via (to its last line, or
  as a new line) and added as a new Via line to every relayed answer;
* ``block``: every Via header is removed from the request; nothing is added anywhere.
"""

from __future__ import annotations

from typing import Optional

__all__ = ["via_entry", "via_request", "via_response"]


def via_entry(version: str, name: str, port: Optional[int], *, tls: bool, product: Optional[str] = None) -> str:
    """The proxy's Via entry; ``port`` None or the scheme's default is left out."""
    default = 443 if tls else 80
    host = f"{name}:{port}" if port is not None and port != default else name
    return f"{version} {host} ({product})" if product else f"{version} {host}"


def via_request(headers: list[tuple[str, str]], mode: str, entry: str) -> list[tuple[str, str]]:
    """The forwarded request's headers under ``ProxyVia mode``."""
    if mode == "off":
        return headers
    if mode == "block":
        return [(k, v) for k, v in headers if k.lower() != "via"]
    out = list(headers)
    for i in range(len(out) - 1, -1, -1):
        name, value = out[i]
        if name.lower() == "via":
            out[i] = (name, f"{value}, {entry}" if value else entry)
            return out
    out.append(("Via", entry))
    return out


def via_response(headers: list[tuple[str, str]], mode: str, entry: str) -> list[tuple[str, str]]:
    """A relayed answer's headers under ``ProxyVia mode`` (On and Full add a line)."""
    if mode in ("on", "full"):
        return [*headers, ("Via", entry)]
    return headers
