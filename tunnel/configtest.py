"""What `tunnel configtest` prints: the listeners, each scope's routes in match order
with their backends and effective ProxyWebsocket* values, each scope's rewrite rules
(with their conds) in evaluation order, and the balancers."""

from __future__ import annotations

from .config.checks import named_scopes, rule_backend
from .config.directives import SETTINGS
from .config.model import AccessRules, AliasRedirect, Config, ProxyRule, Require, RequireSection, Scope

__all__ = ["summary", "ignored_summary"]


def _seconds_text(value: float) -> str:
    return f"{value * 1000:g}ms" if 0 < value < 1 else f"{value:g}s"


#: ``upgrade=`` values shown by name rather than as a token list.
_UPGRADE_NAMES: dict[tuple[str, ...], str] = {("*",): "ANY", ("NONE",): "NONE"}


def _rule_line(rule: ProxyRule, config: Config) -> str:
    kind = "ProxyPassMatch" if rule.is_regex else "ProxyPass"
    if rule.exclude:
        return f"{kind} {rule.path} ! (excluded)"
    display, _, is_ws = rule_backend(rule, config)
    upgrade = rule.upgrade or (rule.balancer_upgrade if rule.balancer else None)
    if upgrade is None:
        up = "websocket (default)" if is_ws else "none (plain HTTP)"
    else:
        up = _UPGRADE_NAMES.get(upgrade, ",".join(upgrade))
    extras = "".join(f" {k}={v}" for k, v in rule.keys if k != "upgrade")
    nocanon = " nocanon" if rule.nocanon else ""
    return f"{kind} {rule.path} -> {display}  upgrade={up}{extras}{nocanon}"


def _scope_values(scope: Scope) -> str:
    return (
        f"ProxyWebsocketAsync {'On' if scope.websocket_async else 'Off'}, "
        f"AsyncDelay {_seconds_text(scope.websocket_async_delay)}, "
        f"IdleTimeout {_seconds_text(scope.websocket_idle_timeout) if scope.websocket_idle_timeout else 'none'}, "
        f"FallbackToProxyHttp {'On' if scope.fallback_to_proxy_http else 'Off'}, "
        f"Timeout {_seconds_text(scope.timeout)}, ProxyTimeout "
        f"{_seconds_text(scope.proxy_timeout) if scope.proxy_timeout is not None else '(Timeout)'}"
    )


#: Scope field -> the directive that sets it, for configtest.
_DIRECTIVE_OF = {spec[1]: spec[0] for spec in SETTINGS.values()}


def _value_text(value: object) -> str:
    if isinstance(value, bool):
        return "On" if value else "Off"
    return _seconds_text(value) if isinstance(value, float) else str(value)


def _node_text(node: Require | RequireSection) -> str:
    if isinstance(node, Require):
        return node.text
    return f"<{node.name}> " + "; ".join(_node_text(c) for c in node.children) + f" </{node.name}>"


def access_text(rules: AccessRules) -> str:
    """The rules on one line: a context's several Require lines read "any of: ..."."""
    root = rules.root
    if len(root.children) == 1 and root.op == "any" and not root.negate:
        text = _node_text(root.children[0])
    elif root.op == "any" and not root.negate:
        text = "any of: " + "; ".join(_node_text(c) for c in root.children)
    else:
        text = _node_text(root)
    return text + (f" (AuthMerging {rules.merging.capitalize()})" if rules.merging != "off" else "")


def _redirect_text(rd: AliasRedirect) -> str:
    kind = "RedirectMatch" if rd.regex is not None else "Redirect"
    path = f" {rd.path}" if rd.path else ""
    return f"{kind} {rd.status}{path}" + (f" -> {rd.url}" if rd.url is not None else "")


def summary(config: Config) -> str:
    """The route table `tunnel configtest` prints.

    Args:
        config: a parsed configuration.

    Returns:
        Listeners, then each scope's rules in match order with their backend, keys and
        the effective ProxyWebsocket* values (per `<Location>` where one changes them),
        the access rules where they apply (the scope's, each `<Proxy URL>` block's, each
        `<Location>`'s), then the balancers. Warnings are in ``config.warnings``, not repeated here.
    """
    out: list[str] = ["Listeners:"]
    out += [f"  {lst.display}{' (https)' if lst.tls else ''}  {lst.file}:{lst.line}" for lst in config.listeners] or [
        "  (none)"
    ]
    for name, scope in named_scopes(config):
        out += ["", f"{name}:", f"  {_scope_values(scope)}"]
        if scope.rewrite_rules or scope.rewrite_engine:
            out.append(f"  RewriteEngine {'On' if scope.rewrite_engine else 'Off'} (the rewrite rules run before the routes)")
        for n, rw in enumerate(scope.rewrite_rules, 1):
            for cond in rw.conds:
                neg = "!" if cond.negate else ""
                op = "" if cond.kind == "regex" else cond.kind
                flags = ",".join(f for f, on in (("NC", cond.nocase), ("OR", cond.ornext)) if on)
                shown = f" [{flags}]" if flags else ""
                out.append(f"     RewriteCond {cond.test} {neg}{op}{cond.pattern}{shown}  [{cond.file}:{cond.line}]")
            pattern = f"!{rw.pattern}" if rw.negate else rw.pattern
            flags = f" {rw.flags}" if rw.flags else ""
            out.append(f"  R{n}. RewriteRule {pattern} {rw.substitution}{flags}  [{rw.where}]")
        if not scope.rules:
            out.append("  (no routes)")
        for n, rule in enumerate(scope.rules, 1):
            out.append(f"  {n}. {_rule_line(rule, config)}  [{rule.where}]")
        for rd in scope.redirects:  # tried where no route takes the path (R94)
            out.append(f"  {_redirect_text(rd)} (where no route takes the path)  [{rd.where}]")
        if scope.access is not None:
            out.append(f"  access: {access_text(scope.access)}")
        for block in scope.proxy_access:
            out.append(f"  <Proxy {block.pattern}> access: {access_text(block.rules)}  [{block.file}:{block.line}]")
        for loc in scope.locations:
            section = f"<Location{'Match' if loc.is_regex else ''} {loc.path}>"
            if loc.settings:
                values = ", ".join(f"{_DIRECTIVE_OF.get(k, k)} {_value_text(v)}" for k, v in loc.settings)
                out.append(f"  {section} sets {values}  [{loc.file}:{loc.line}]")
            if loc.access is not None:
                out.append(f"  {section} access: {access_text(loc.access)}  [{loc.file}:{loc.line}]")
            for rd in loc.redirects:
                out.append(f"  {section} {_redirect_text(rd)}  [{rd.where}]")
    for b in config.balancers.values():
        sticky = "|".join(b.stickysession) or "none"
        out += ["", f"balancer://{b.name}: lbmethod={b.lbmethod} stickysession={sticky}  [{b.file}:{b.line}]"]
        for m in b.members:
            flags = "".join(sorted(m.status))
            out.append(
                f"  {m.target} loadfactor={m.loadfactor} lbset={m.lbset}"
                + (f" route={m.route}" if m.route else "")
                + (f" status=+{flags}" if flags else "")
                + (f" upgrade={','.join(m.upgrade)}" if m.upgrade else "")
                + f"  [{m.file}:{m.line}]"
            )
    return "\n".join(out)


def ignored_summary(config: Config) -> str:
    """The directives accepted and ignored (R97), each with where it was written, or
    "" when there are none."""
    if not config.ignored:
        return ""
    where: dict[str, list[str]] = {}
    for name, at in config.ignored:
        where.setdefault(name, []).append(at)
    lines = [f"Ignored directives ({len(config.ignored)} lines; no effect on proxied traffic):"]
    lines += [f"  {name}: {', '.join(places)}" for name, places in sorted(where.items(), key=lambda i: i[0].lower())]
    return "\n".join(lines)
