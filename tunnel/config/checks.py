"""Warnings on routes that configtest prints and `Config.warnings` carries.

They need the path rules the router uses (``alias_match``, `<Location>` merging), which
live in `tunnel.config.scopes` so that the router and these checks share them.
"""

from __future__ import annotations

from typing import Optional

from .model import Config, ProxyRule, Scope
from .scopes import alias_match, effective_scope


def named_scopes(config: Config) -> list[tuple[str, Scope]]:
    scopes = [("server context", config.scope)]
    for v in config.vhosts:
        addresses = " ".join(f"{'[' + a + ']' if ':' in a else a}:{p or '*'}" for a, p in v.addresses)
        name = f" {v.server_name}" if v.server_name else ""
        scopes.append((f"<VirtualHost {addresses}>{name} ({v.file}:{v.line})", v.scope))
    return scopes


def rule_backend(rule: ProxyRule, config: Config) -> tuple[str, Optional[tuple[str, int]], bool]:
    """(display, (host, port) or None for a balancer, is a WebSocket route)."""
    if rule.target is not None:
        t = rule.target
        return str(t), (t.unix_path or t.host, t.port), t.is_ws
    name = f"balancer://{rule.balancer}{rule.balancer_path}"
    return name, None, rule.balancer_scheme in ("ws", "wss")


def route_warnings(config: Config) -> list[str]:
    """configtest's warnings on routes ("file:line: text"), also added to Config.warnings.

    * R16: any ``upgrade=ANY`` or ``upgrade=NONE`` (route or member): not for production.
    * R3: under ProxyWebsocketFallbackToProxyHttp On, a ws:// route takes every request
      under its path, plain ones going as HTTP to its own host and port, so a later
      http(s) route under that path to another backend is never used.

    Args:
        config: a parsed configuration.

    Returns:
        The warnings, each once, in configuration order.
    """


    found: dict[str, None] = {}
    _verify_warnings(config, found)
    meaning = {("*",): "ANY forwards whatever the client asks", ("NONE",): "NONE makes every request a handshake"}
    for b in config.balancers.values():
        schemes = {("ws" if m.target.scheme in ("ws", "wss") or m.upgrade else "http") for m in b.members}
        if len(schemes) > 1 and b.members:
            first = b.members[0]
            found[f"{first.file}:{first.line}: balancer://{b.name} mixes ws:// members with http:// members "
                  f"without upgrade=: whether a request is tunnelled follows the first member "
                  f"({first.target.scheme}://), whichever member is picked; give the http:// members "
                  f"upgrade=websocket"] = None
        for m in b.members:
            if m.upgrade in meaning:
                found[f"{m.file}:{m.line}: upgrade={'ANY' if m.upgrade == ('*',) else 'NONE'} on {m.target}: "
                      f"{meaning[m.upgrade]}; not for production (R16)"] = None
    for _, scope in named_scopes(config):
        for i, rule in enumerate(scope.rules):
            if rule.upgrade in meaning:
                found[f"{rule.where}: upgrade={'ANY' if rule.upgrade == ('*',) else 'NONE'} on {rule.path}: "
                      f"{meaning[rule.upgrade]}; not for production (R16)"] = None
            display, backend, is_ws = rule_backend(rule, config)
            if rule.exclude or rule.is_regex or not is_ws or rule.upgrade == ("NONE",):
                continue
            if not effective_scope(scope, rule.path).fallback_to_proxy_http:
                continue
            for later in scope.rules[i + 1 :]:
                if later.exclude or later.is_regex or not alias_match(later.path, rule.path):
                    continue
                later_display, later_backend, later_ws = rule_backend(later, config)
                if later_ws or (backend is not None and later_backend == backend):
                    continue
                found[f"{later.where}: ProxyPass {later.path} {later_display} is never used: the ws route at "
                      f"{rule.where} ({display}) takes every request under {rule.path}, plain ones as HTTP "
                      "to its own backend, under ProxyWebsocketFallbackToProxyHttp On (R3)"] = None
    return list(found)




def _verify_warnings(config: Config, found: dict[str, None]) -> None:
    """R93: every wss:// or https:// backend (a route's, a used balancer's members)
    in a scope without an SSLProxyVerify line: tunnel verifies, httpd would not."""
    advice = (
        "its certificate is verified (tunnel's default; httpd's is SSLProxyVerify none): write SSLProxyVerify "
        "require to keep that, or SSLProxyVerify none and SSLProxyCheckPeerName off to do as httpd"
    )
    for _, scope in named_scopes(config):
        if scope.proxy_tls.verify_set or not scope.proxy_tls.engine:
            continue
        for rule in scope.rules:
            if rule.target is not None and rule.target.tls:
                found[f"{rule.where}: backend {rule.target}: {advice}"] = None
            elif rule.balancer is not None and rule.balancer in config.balancers:
                for m in config.balancers[rule.balancer].members:
                    if m.target.tls:
                        found[f"{m.file}:{m.line}: BalancerMember {m.target}: {advice}"] = None
