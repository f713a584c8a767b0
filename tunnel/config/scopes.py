"""The path rules shared by routing and the configuration checks.

* **Prefix match** (mod_proxy.c ``alias_match``, R1). Any run of ``/`` in the prefix
  matches any run in the path; other characters compare exactly; the prefix's last
  segment must end at a segment boundary.
* **Location settings** (`effective_scope`): every `<Location>` whose path matches is
  applied over the scope, in httpd's merge order.
* **Access rules** (`merge_access`): a context's rules over its parent's, by its
  ``AuthMerging`` (R71).
* **A tunnel's idle limit** (`tunnel_idle_timeout`, R100): the most specific setting
  wins.

Pure string work on the model: no sockets, no clock.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from .model import AccessRules, Location, Member, ProxyRule, RequireSection, Scope

__all__ = [
    "ADDITIVE_SETTINGS",
    "alias_match",
    "location_matches",
    "effective_scope",
    "merge_access",
    "tunnel_idle_timeout",
]

#: Settings whose values are lists that a child context adds to, not replaces:
#: mod_proxy appends a section's cookie maps to its parent's (merge_proxy_dir_config).
ADDITIVE_SETTINGS = frozenset({"cookie_paths", "cookie_domains"})


def alias_match(uri: str, prefix: str) -> int:
    """mod_proxy's alias_match: how many characters of ``uri`` the ``prefix`` covers.

    Args:
        uri: the normalised path.
        prefix: a ProxyPass (or `<Location>`) path.

    Returns:
        The length of ``uri`` matched (more than ``len(prefix)`` when slash runs were
        merged), or 0 for no match.
    """
    i = j = 0
    n, m = len(uri), len(prefix)
    while j < m and i < n:
        if prefix[j] == "/":
            if uri[i] != "/":
                return 0
            while j < m and prefix[j] == "/":
                j += 1
            while i < n and uri[i] == "/":
                i += 1
        elif uri[i] != prefix[j]:
            return 0
        else:
            i += 1
            j += 1
    if j < m:
        return 0  # the path ended before the prefix did
    if prefix[-1] != "/" and i < n and uri[i] != "/":
        return 0  # the prefix's last segment continues in the path: /chat vs /chatroom
    return i


def location_matches(location: Location, path: str) -> bool:
    if location.regex is not None:
        return location.regex.search(path) is not None
    return alias_match(path, location.path) > 0


def effective_scope(scope: Scope, path: str) -> Scope:
    """The scope with every matching `<Location>`'s settings applied, in merge order.

    Args:
        scope: the server's or vhost's scope.
        path: the normalised path.

    Returns:
        ``scope`` itself when no location changes anything, else a new Scope.
    """
    changes: dict[str, object] = {}
    for location in scope.locations:
        if location_matches(location, path):
            for key, value in location.settings:
                if key in ADDITIVE_SETTINGS:
                    value = (*changes.get(key, getattr(scope, key)), *value)  # type: ignore[misc]
                changes[key] = value
    # mypy checks replace()'s keywords against the fields, which a **dict cannot show;
    # the names are Scope fields (the parser's SETTINGS), checked again at run time.
    return dataclasses.replace(scope, **changes) if changes else scope  # type: ignore[arg-type]


def tunnel_idle_timeout(scope: Scope, path: str, rule: ProxyRule, member: Optional[Member] = None) -> float:
    """A tunnel's idle limit in seconds (0: none), the most specific setting winning (R100).

    1. ``ProxyWebsocketIdleTimeout`` in a `<Location>` matching ``path`` (the last one in
       merge order that sets it);
    2. the worker's own ``timeout=``: the balancer member's, else the route's;
    3. ``ProxyWebsocketIdleTimeout`` of the server or vhost (``scope``, locations not
       applied), 0 when unset.
    """
    found: Optional[float] = None
    for location in scope.locations:
        if location_matches(location, path):
            for key, value in location.settings:
                if key == "websocket_idle_timeout" and isinstance(value, (int, float)):
                    found = float(value)
    if found is not None:
        return found
    if member is not None and member.timeout is not None:
        return member.timeout
    if rule.timeout is not None:
        return rule.timeout
    return scope.websocket_idle_timeout


def merge_access(parent: Optional[AccessRules], child: Optional[AccessRules]) -> Optional[AccessRules]:
    """mod_authz_core's merge: a context without Require lines keeps its parent's rules;
    with ``AuthMerging Off`` (the default) its own replace them; ``And`` / ``Or`` join
    both in a `<RequireAll>` / `<RequireAny>` (the merged rules keep the child's mode)."""
    if child is None:
        return parent
    if parent is None or child.merging == "off":
        return child
    op = "all" if child.merging == "and" else "any"
    joined = RequireSection(op, False, (parent.root, child.root), child.file, child.line)
    return AccessRules(joined, child.merging, child.file, child.line)
