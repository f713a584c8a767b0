"""The httpd-style configuration: the model the rest of the package reads, and its parser.

* `model`: frozen dataclasses (`Config`, `Scope`, `ProxyRule`, ...), a leaf.
* `lexer`, `values`: lines and words; directive arguments into values.
* `directives`: the contexts and the directive tables; `access`, `loghooks`,
  `rewrite`: the parser's handlers for Require, the logs and mod_rewrite.
* `parser`: directives into a draft, context by context; `build`: the draft frozen
  into a `Config` (scopes merged, rules ordered, checked); `checks`: route warnings.
* `scopes`: the path rules routing and the checks share (alias_match, `<Location>` merge).

Scopes nest as httpd's do: the global server context, ``<VirtualHost>`` blocks and
``<Location>`` blocks. A child scope inherits every value it does not set itself.
"""

from ..errors import ConfigError
from .model import (
    Balancer,
    Config,
    Limits,
    Listener,
    Location,
    LogConfig,
    Member,
    ProxyRule,
    ProxyTLS,
    Scope,
    ServerTLS,
    Target,
    VirtualHost,
)
from .parser import parse

__all__ = [
    "Config",
    "ConfigError",
    "Listener",
    "Target",
    "ProxyRule",
    "Member",
    "Balancer",
    "Scope",
    "VirtualHost",
    "ServerTLS",
    "ProxyTLS",
    "LogConfig",
    "Limits",
    "Location",
    "parse",
]
