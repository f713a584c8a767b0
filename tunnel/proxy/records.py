"""What one request or tunnel did (`Exchange`), what a client connection hands back
when its handshake has made a tunnel (`TunnelStart`) or chose HTTP/2 (`H2Start`), and
what an HTTP/2 stream tells the session it is given to (`Inner`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

from ..accesslog import AccessLog
from ..config.headermodel import EMPTY_ENV, EnvDirectives
from ..config.model import Listener, Scope
from ..io.streams import Endpoint, InetAddress
from ..protocol.balancer import BalancerState, MemberState
from ..protocol.heads import RequestHead
from ..tunnels.pump import Pump
from ..tunnels.strategy import Strategy

__all__ = ["Exchange", "TunnelStart", "H2Start", "Inner", "kept_headers"]


def kept_headers(access_log: AccessLog) -> tuple[frozenset[str], frozenset[str]]:
    """The request and response header names (lower case) an open tunnel keeps of its
    heads: what the access log's formats read, and the 101's Upgrade (whether the
    tunnel is a WebSocket one, for the proxy's own Close frames)."""
    request_names, response_names = access_log.header_names()
    return request_names, response_names | {"upgrade"}


@dataclass(slots=True)
class Exchange:
    """What one request/tunnel did, for the access log and the caller."""

    peer: InetAddress  # ("unix", 0) for a unix socket client, ("unknown", 0) when not known
    listener: Optional[Listener]
    head: Optional[RequestHead] = None
    status: int = 0
    start: float = field(default_factory=time.time)
    started: float = field(default_factory=time.monotonic)
    bytes_in: int = 0
    bytes_out: int = 0
    body_bytes: int = 0
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)
    tunnel: bool = False
    vhost: str = ""
    #: tunnel bytes that came with the client's head (to the backend) and with the
    #: backend's 101 (to the client); the pump counts them in its flows too (R99).
    early_in: int = 0
    early_out: int = 0
    #: the Header/RequestHeader/SetEnv lines in force (the server's, then the vhost's
    #: and the matching <Location> blocks' once known; R80-R83)
    env_conf: EnvDirectives = EMPTY_ENV
    #: the TCP peer when ``peer`` is the client a PROXY header or RemoteIPHeader named
    #: (%{c}a); None when they are the same.
    connection_peer: Optional[InetAddress] = None
    sent_at: float = 0.0  # monotonic: the request went to the backend (metrics)
    answered_at: float = 0.0  # monotonic: the backend's response head was read
    #: the client's protocol when it is not the head's HTTP/1.x (an HTTP/2 stream:
    #: "HTTP/2.0", for %H and %r).
    protocol: str = ""


@dataclass(frozen=True)
class Inner:
    """A request that reaches ``serve_client`` already decrypted and decoded by an outer
    connection (an HTTP/2 stream, translated to HTTP/1.1 on a socket pair, R143): the
    listener's TLS handshake and PROXY header were done on that connection, and are
    not looked for again."""

    protocol: str  # "HTTP/2.0"
    connection_peer: Optional[InetAddress] = None


@dataclass
class H2Start:
    """What ``serve_client`` returns when ALPN chose h2: the decrypted connection, for
    the caller to serve as HTTP/2 (it owns ``client`` now)."""

    client: Endpoint
    peer: InetAddress
    listener: Listener
    connection_peer: Optional[InetAddress]
    sni_name: Optional[str] = None


@dataclass(slots=True)
class TunnelStart:
    """What ``serve_client`` returns when a tunnel is to be started by the caller."""

    pump: Pump
    scope: Scope
    strategy: Strategy
    exchange: Exchange
    reserved: bool  # a sync pool thread is reserved for it
    member: Optional[MemberState] = None
    balancer: Optional[BalancerState] = None
    #: the tunnel's idle limit in seconds, 0 for none (R100: a <Location>'s
    #: ProxyWebsocketIdleTimeout, else the route's timeout=, else the server's).
    idle_timeout: float = 0.0
    #: its id and monotonic opening time once the recorder counts it open (the status
    #: pages, ``tunnel ctl close``, the lifetime histogram); "" and 0.0 until then.
    ident: str = ""
    opened: float = 0.0
