"""Freezing what the parser read into a `Config`: scopes merged, rules ordered, checked.

The parser collects each context's directives as "settings" (Scope field names,
``limits.*`` / ``proxy_tls.*`` / ``tls.*`` for the nested ones) and the scopes are built
only here, at the end, so a `<VirtualHost>` sees the main server's values as they stand
at the end of the file (httpd merges each vhost over the finished main server), its own
values winning.

Rule order in a scope (R1): the `<Location>` rules first (regex locations, then plain
ones, longest path first), then the main server's ProxyPass lines, then the vhost's
own: mod_proxy's merge_proxy_config appends a vhost's aliases to the main server's, so a
main-server ``ProxyPass /`` shadows every vhost route, in httpd and here.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from ..accesslog import PREDEFINED_LOG_FORMATS, Formatter
from ..errors import ConfigError
from .checks import route_warnings
from .model import (
    AliasRedirect,
    Balancer,
    Config,
    Limits,
    Listener,
    Location,
    LogConfig,
    Member,
    ProxyRule,
    ProxyTLS,
    RewriteCond,
    RewriteRule,
    Scope,
    ServerTLS,
    VirtualHost,
)
from .scopes import merge_access


@dataclass
class ScopeDraft:
    """One server context (main server or a vhost) while its lines are read."""

    settings: dict[str, Any] = field(default_factory=dict)
    rules: list[ProxyRule] = field(default_factory=list)
    location_rules: list[ProxyRule] = field(default_factory=list)  # configuration order
    locations: list[Location] = field(default_factory=list)
    ssl_engine_at: tuple[str, int] = ("", 0)
    rewrite_conds: list[RewriteCond] = field(default_factory=list)  # waiting for their rule
    rewrite_rules: list[RewriteRule] = field(default_factory=list)
    rewrite_options: Optional[str] = None  # "inherit" | "inheritbefore"
    redirects: list[AliasRedirect] = field(default_factory=list)


@dataclass
class VhostDraft:
    addresses: tuple[tuple[str, int], ...]
    file: str
    line: int
    scope: ScopeDraft = field(default_factory=ScopeDraft)
    aliases: list[str] = field(default_factory=list)


@dataclass
class LocationDraft:
    path: str
    is_regex: bool
    regex: Optional[re.Pattern[str]]
    settings: dict[str, Any] = field(default_factory=dict)
    rule: Optional[ProxyRule] = None
    rewrite_conds: list[RewriteCond] = field(default_factory=list)  # per-directory rules (R79)
    rewrite_rules: list[RewriteRule] = field(default_factory=list)
    rewrite_options: Optional[str] = None
    rewrite_base: str = ""
    redirects: list[AliasRedirect] = field(default_factory=list)


@dataclass
class BalancerDraft:
    name: str
    members: list[Member] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    defined_at: tuple[str, int] = ("", 0)  # <Proxy> or first BalancerMember; "" = never



class Draft:
    """What the parser has read so far: the builders `finish` freezes into a `Config`."""

    def __init__(self) -> None:
        self.main = ScopeDraft()
        self.vhosts: list[VhostDraft] = []
        self.balancers: dict[str, BalancerDraft] = {}
        self.balancer_refs: list[ProxyRule] = []
        self.listeners: list[Listener] = []
        self.warnings: list[str] = []
        self.log: dict[str, Any] = {}
        self.log_formats: dict[str, str] = dict(PREDEFINED_LOG_FORMATS)
        self.custom_logs: list[tuple[str, str, str, int]] = []  # file, format|nick, where
        self.globals: dict[str, Any] = {}
        self.ignored: list[tuple[str, str]] = []  # (directive, "file:line")


# -- building the Config ---------------------------------------------------------------------


def _build_scope(
    settings: dict[str, Any],
    rules: list[ProxyRule],
    locations: list[Location],
    rewrite_rules: tuple[RewriteRule, ...] = (),
    redirects: tuple[AliasRedirect, ...] = (),
) -> Scope:
    groups: dict[str, dict[str, Any]] = {"": {}, "limits": {}, "proxy_tls": {}, "tls": {}}
    for key, value in settings.items():
        if key in ("proxy_access", "remoteip_proxies"):
            value = tuple(value)
        elif key == "reverse_maps":  # (path, url, file, line): where it was written is for errors only
            value = tuple((path, url) for path, url, _, _ in value)
        group, _, name = key.rpartition(".")
        groups[group][name] = value
    return Scope(
        rules=tuple(rules),
        limits=Limits(**groups["limits"]),
        proxy_tls=ProxyTLS(**groups["proxy_tls"]),
        locations=tuple(locations),
        rewrite_rules=rewrite_rules,
        redirects=redirects,
        **groups[""],
    )


def _order_location_rules(rules: list[ProxyRule]) -> list[ProxyRule]:
    """`<Location>` ProxyPass rules in matching order, given in merge order (the main
    server's blocks in file order, then the vhost's). httpd merges every matching block
    in that order, `<LocationMatch>` among them, and the last merged block's ProxyPass
    replaces the earlier ones' (R1, R106): so the rules are tried last block first."""
    return list(reversed(rules))


def _order_locations(locations: list[Location]) -> list[Location]:
    """httpd's merge order: `<Location>` and `<LocationMatch>` sections together, in
    file order (the main server's before a vhost's)."""
    return list(locations)


def _server_tls(settings: dict[str, Any], where: tuple[str, int]) -> Optional[ServerTLS]:
    if not settings.get("tls.engine"):
        return None
    if "tls.certificate_file" not in settings:
        raise ConfigError("SSLEngine On needs SSLCertificateFile", file=where[0], line=where[1])
    values = {k[4:]: v for k, v in settings.items() if k.startswith("tls.") and k != "tls.engine"}
    if values.get("verify_client", "none") != "none" and not values.get("ca_file"):
        raise ConfigError(
            f"SSLVerifyClient {values['verify_client']} needs SSLCACertificateFile (the CAs client certificates "
            "must chain to)",
            file=where[0],
            line=where[1],
        )
    return ServerTLS(**values, file=where[0], line=where[1])


def finish(p: Draft, source: str) -> Config:
    balancers = _finish_balancers(p)
    _check_reverse_maps(p, balancers)
    resolve = {name: b.members[0] for name, b in balancers.items()}

    def with_balancer(rule: ProxyRule) -> ProxyRule:
        if rule.balancer is None:
            return rule
        first = resolve[rule.balancer]
        return dataclasses.replace(rule, balancer_scheme=first.target.scheme, balancer_upgrade=first.upgrade)

    main_settings = dict(p.main.settings)
    main_rules = [with_balancer(r) for r in p.main.rules]
    main_loc_rules = [with_balancer(r) for r in p.main.location_rules]
    _dangling_conds(p)
    main_rewrite = tuple(p.main.rewrite_rules)
    scope = _build_scope(
        main_settings,
        _order_location_rules(main_loc_rules) + main_rules,
        _order_locations(p.main.locations),
        main_rewrite,
        tuple(p.main.redirects),
    )
    _check_proxy_tls(scope, balancers, "the server context")
    used = {r.balancer for r in p.balancer_refs}
    for name, balancer in balancers.items():
        if name not in used and not scope.proxy_tls.engine:
            for member in balancer.members:
                if member.target.tls:
                    raise ConfigError(
                        f"BalancerMember: {member.target} needs SSLProxyEngine On", file=member.file, line=member.line
                    )
    tls = _server_tls(main_settings, p.main.ssl_engine_at)

    vhosts: list[VirtualHost] = []
    for v in p.vhosts:
        settings = {**main_settings, **v.scope.settings}
        # Access rules merge by AuthMerging; <Proxy URL> blocks: the main server's, then the vhost's.
        settings["access"] = merge_access(main_settings.get("access"), v.scope.settings.get("access"))
        settings["proxy_access"] = [*main_settings.get("proxy_access", ()), *v.scope.settings.get("proxy_access", ())]
        settings["reverse_maps"] = [*main_settings.get("reverse_maps", ()), *v.scope.settings.get("reverse_maps", ())]
        own_loc_rules = [with_balancer(r) for r in v.scope.location_rules]
        rules = (
            _order_location_rules(main_loc_rules + own_loc_rules)
            + main_rules
            + [with_balancer(r) for r in v.scope.rules]
        )
        options = v.scope.rewrite_options or p.main.rewrite_options
        own = tuple(v.scope.rewrite_rules)
        # httpd's config_server_merge: Inherit appends the main server's rules after the
        # vhost's own, InheritBefore puts them first, no option: the vhost's only (R65).
        rewrite = own + main_rewrite if options == "inherit" else main_rewrite + own if options else own
        # mod_alias's merge: the vhost's Redirect lines first, then the main server's (R94).
        redirects = tuple(v.scope.redirects + p.main.redirects)
        vscope = _build_scope(
            settings, rules, _order_locations(p.main.locations + v.scope.locations), rewrite, redirects
        )
        _check_proxy_tls(vscope, balancers, f"<VirtualHost> at {v.file}:{v.line}")
        vtls = _server_tls(settings, v.scope.ssl_engine_at) if "tls.engine" in v.scope.settings else None
        vhosts.append(
            VirtualHost(
                v.addresses,
                server_name=v.scope.settings.get("server_name", ""),
                aliases=tuple(v.aliases),
                scope=vscope,
                tls=vtls,
                file=v.file,
                line=v.line,
            )
        )

    custom_logs = []
    for file, fmt, where_file, where_line in p.custom_logs:
        if fmt in p.log_formats:
            fmt = p.log_formats[fmt]
        elif "%" not in fmt:
            raise ConfigError(
                f'CustomLog: unknown log format nickname "{fmt}" (define it with LogFormat)',
                file=where_file,
                line=where_line,
            )
        try:

            Formatter(fmt)
        except ValueError as exc:
            raise ConfigError(f"CustomLog: bad log format: {exc}", file=where_file, line=where_line) from None
        custom_logs.append((file, fmt))
    config = Config(
        listeners=_proxy_protocol_listeners(p),
        scope=scope,
        vhosts=tuple(vhosts),
        balancers=balancers,
        tls=tls,
        log=LogConfig(custom_logs=tuple(custom_logs), **p.log),
        warnings=tuple(p.warnings),
        ignored=tuple(p.ignored),
        source=source,
        **p.globals,
    )
    return config.replace(warnings=config.warnings + tuple(route_warnings(config)))


def _proxy_protocol_listeners(p: Draft) -> tuple[Listener, ...]:
    """The listeners with ``proxy_protocol`` set by RemoteIPProxyProtocol lines, in
    configuration order (a later line for the same address wins, R130)."""
    settings = p.globals.pop("proxy_protocol", [])
    exceptions = p.globals.pop("proxy_protocol_exceptions", None)
    if exceptions is not None:
        p.globals["proxy_protocol_exceptions"] = tuple(exceptions)
    listeners = []
    for listener in p.listeners:
        on = False
        for addresses, value, _, _ in settings:
            if addresses is None or any(
                (a in ("*", "_default_", "", listener.host) or listener.host == "") and port in (0, listener.port)
                for a, port in addresses
            ):
                on = value
        listeners.append(dataclasses.replace(listener, proxy_protocol=on) if on else listener)
    if any(on for _, on, _, _ in settings) and not any(li.proxy_protocol for li in listeners):
        _, _, file, line = next(s for s in settings if s[1])
        p.warnings.append(f"{file}:{line}: RemoteIPProxyProtocol On names no address tunnel listens on")
    return tuple(listeners)


def _finish_balancers(p: Draft) -> dict[str, Balancer]:
    for rule in p.balancer_refs:
        build = p.balancers[rule.balancer or ""]
        if not build.defined_at[0]:
            raise ConfigError(
                f"ProxyPass: balancer://{build.name} is not defined (no <Proxy balancer://{build.name}> "
                "or BalancerMember for it)",
                file=rule.file,
                line=rule.line,
            )
        if not build.members:
            raise ConfigError(
                f"ProxyPass: balancer://{build.name} has no BalancerMember", file=rule.file, line=rule.line
            )
    balancers: dict[str, Balancer] = {}
    for name, build in p.balancers.items():
        if not build.members:
            file, line = build.defined_at
            raise ConfigError(f"balancer://{name} has no BalancerMember", file=file, line=line)
        balancers[name] = Balancer(
            name, tuple(build.members), file=build.defined_at[0], line=build.defined_at[1], **build.params
        )
    return balancers


def _dangling_conds(p: Draft) -> None:
    for draft in [p.main] + [v.scope for v in p.vhosts]:
        if draft.rewrite_conds:
            cond = draft.rewrite_conds[0]
            raise ConfigError("RewriteCond: no RewriteRule follows it in its context", file=cond.file, line=cond.line)


_LITERAL_SCHEME = re.compile(r"(?i)(wss|https|balancer)://([A-Za-z0-9._-]*)")


def _check_rewrite_targets(scope: Scope, balancers: dict[str, Balancer], where: str) -> None:
    """R4 for [P] rules whose substitution starts with a literal scheme (R67): a wss://
    or https:// one needs SSLProxyEngine On, a balancer:// one a defined balancer (whose
    TLS members need it too). Dynamic schemes are checked per request (500)."""
    for rule in scope.rewrite_rules + tuple(r for loc in scope.locations for r in loc.rewrite_rules):
        m = _LITERAL_SCHEME.match(rule.substitution) if rule.proxy else None
        if m is None:
            continue
        scheme, name = m.group(1).lower(), m.group(2).lower()
        if scheme == "balancer":
            if "$" in name or "%" in name:
                continue
            if name not in balancers:
                raise ConfigError(f"RewriteRule: balancer://{name} is not defined", file=rule.file, line=rule.line)
            if not scope.proxy_tls.engine and any(mb.target.tls for mb in balancers[name].members):
                raise ConfigError(
                    f"RewriteRule: balancer://{name} has TLS members and needs SSLProxyEngine On (in {where})",
                    file=rule.file,
                    line=rule.line,
                )
        elif not scope.proxy_tls.engine:
            raise ConfigError(
                f"RewriteRule: [P] to {scheme}:// needs SSLProxyEngine On (in {where})", file=rule.file, line=rule.line
            )


def _check_proxy_tls(scope: Scope, balancers: dict[str, Balancer], where: str) -> None:
    """R4: a wss/https backend needs SSLProxyEngine On in the scope that uses it."""
    _check_rewrite_targets(scope, balancers, where)
    if scope.proxy_tls.engine:
        return
    for rule in scope.rules:
        if rule.target is not None and rule.target.tls:
            raise ConfigError(
                f"ProxyPass: {rule.target} needs SSLProxyEngine On (in {where})", file=rule.file, line=rule.line
            )
        if rule.balancer is not None:
            for member in balancers[rule.balancer].members:
                if member.target.tls:
                    raise ConfigError(
                        f"BalancerMember: {member.target} needs SSLProxyEngine On (in {where}, which uses "
                        f"balancer://{rule.balancer} at {rule.where})",
                        file=member.file,
                        line=member.line,
                    )


def _check_reverse_maps(p: Draft, balancers: dict[str, Balancer]) -> None:
    """A ProxyPassReverse balancer:// URL must name a defined balancer (as ProxyPass)."""
    for scope in (p.main, *(v.scope for v in p.vhosts)):
        for _, url, file, line in scope.settings.get("reverse_maps", ()):
            if url.lower().startswith("balancer://"):
                name = url[len("balancer://") :].partition("/")[0]
                if name not in balancers:
                    raise ConfigError(f"ProxyPassReverse: balancer://{name} is not defined", file=file, line=line)
