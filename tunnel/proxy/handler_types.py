"""What a handler of `tunnel.proxy.handlers` gets (`Request`) and gives back (`Answer`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config.model import Scope
from ..protocol.heads import RequestHead
from .records import Exchange
from .services import Services

__all__ = ["Request", "Answer"]


@dataclass
class Request:
    """What a handler gets: the request, its path and query, the form body."""

    engine: Services
    head: RequestHead
    ex: Exchange
    scope: Scope
    path: str
    query: str
    body: bytes = b""

    @property
    def host(self) -> str:
        """The host name the client asked for (Host without its port), else ServerName."""
        host = (self.head.get("host") or "").strip()
        if host.startswith("["):
            return host[: host.find("]") + 1].lower()
        return host.rsplit(":", 1)[0].lower() if host else (self.scope.server_name or self.engine.server_name)


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)


