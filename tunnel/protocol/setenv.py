"""mod_setenvif and mod_env, sans-IO: the request's environment (R83, R84).

* **SetEnvIf** lines of the server context and of the `<VirtualHost>` (the main
  server's first) run as soon as the request head is read, before mod_rewrite, so
  ``RewriteCond %{ENV:var}`` sees what they set; those in a `<Location>` run once the
  request is routed, before the access rules. With a ``--early`` line in the server
  lines, httpd runs them all once more first (its earliest hook): so does tunnel.
* The attribute is a request header (its first line; when the request has none, an
  environment variable of that name), a regex of header names (the last matching line
  wins), or one of Remote_Addr, Remote_Host (the address: tunnel does no DNS),
  Server_Addr, Request_Method, Request_Protocol, Request_URI (the raw path before
  routing, the decoded one in a `<Location>`). A missing one is "". The pattern is
  searched in it; when it matches, each ``VAR=value`` is set (``$1``... from the regex;
  a plain-string pattern keeps ``$1`` as written), ``VAR`` set to 1, ``!VAR`` removed.
* **SetEnv/PassEnv** values (merged server, vhost, then `<Location>`) are added to
  the environment after the access rules (httpd's fixups), except where the request
  already has the variable: httpd overlays its table under the request's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass

from ..accesslog import env_value
from ..config.headermodel import EnvDirectives, SetEnvIf
from ..config.model import Scope
from ..config.scopes import location_matches
from .headers import env_set, env_unset, pregsub

__all__ = ["EnvFacts", "post_read_request", "location_setenvif", "apply_setenv", "request_config", "has_env"]


@dataclass(frozen=True)
class EnvFacts:
    """What a SetEnvIf line may test. ``server_addr`` is asked only when a line needs it."""

    remote_addr: str
    method: str
    protocol: str
    uri: str
    headers: Sequence[tuple[str, str]]
    server_addr: Callable[[], str] = lambda: ""


def _value(rule: SetEnvIf, facts: EnvFacts, env: MutableMapping[str, str]) -> str:
    special = rule.special
    if special in ("remote_addr", "remote_host"):
        return facts.remote_addr
    if special == "server_addr":
        return facts.server_addr()
    if special == "request_method":
        return facts.method
    if special == "request_protocol":
        return facts.protocol
    if special == "request_uri":
        return facts.uri
    if rule.name_regex is not None:
        found = ""
        for name, value in facts.headers:
            if rule.name_regex.search(name):
                found = value  # the last matching line, as httpd's loop leaves it
        return found
    lowered = rule.attribute.lower()
    for name, value in facts.headers:
        if name.lower() == lowered:
            return value
    return env_value(env, rule.attribute) or ""


def _run(rules: Sequence[SetEnvIf], facts: EnvFacts, env: MutableMapping[str, str], *, skip_early: bool) -> None:
    for rule in rules:
        if skip_early and rule.early:
            continue
        match = rule.regex.search(_value(rule, facts, env))
        if match is None:
            continue
        for var, value in rule.features:
            if value is None:
                env_unset(env, var)
            else:
                env_set(env, var, value if rule.literal else pregsub(value, match))


def post_read_request(scope: Scope, facts: EnvFacts, env: MutableMapping[str, str]) -> None:
    """The server's and vhost's SetEnvIf lines (match_headers at post_read_request)."""
    rules = scope.env.setenvif
    if not rules:
        return
    if any(rule.early for rule in rules):
        _run(rules, facts, env, skip_early=False)  # the REALLY_FIRST pass runs every line
    _run(rules, facts, env, skip_early=True)


def location_setenvif(rules: Sequence[SetEnvIf], facts: EnvFacts, env: MutableMapping[str, str]) -> None:
    """The matching `<Location>` blocks' SetEnvIf lines (match_headers at header_parser)."""
    _run(rules, facts, env, skip_early=False)


def apply_setenv(conf: EnvDirectives, env: MutableMapping[str, str]) -> None:
    """SetEnv/PassEnv values into the environment, where it lacks them (fixup_env_module)."""
    for name, value in conf.env_vars:
        if env_value(env, name) is None:
            env[name] = value


def has_env(scope: Scope) -> bool:
    """Does any Header/RequestHeader/SetEnv*/SetEnvIf line apply in this scope?"""
    return scope.uses_env


def request_config(scope: Scope, path: str) -> tuple[EnvDirectives, tuple[SetEnvIf, ...]]:
    """The lines in force for a request to ``path``: the scope's, then every matching
    `<Location>`'s in merge order; and the `<Location>` SetEnvIf lines apart (they run
    at another time than the server's)."""
    conf = scope.env
    loc_rules: tuple[SetEnvIf, ...] = ()
    for location in scope.locations:
        if location.env and location_matches(location, path):
            loc_rules += location.env.setenvif
            conf = conf.merged(dataclasses.replace(location.env, setenvif=()))
    return conf, loc_rules
