"""Plain HTTP/1.1 forwarding with h11 on both sides, streamed, as generator task steps.

Used for ``http://`` routes, for non-upgrade requests on ws routes under
``ProxyWebsocketFallbackToProxyHttp On`` (R17), and to relay a backend's non-101 answer
to an upgrade request (R20: the client connection then stays HTTP, R48).

Bodies stream in both directions chunk by chunk (never buffered whole); h11 re-frames
them (Content-Length kept, chunked otherwise). Every backend connection carries one
request and is closed after it (no pool: simple, and what httpd does for upgrades).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import NamedTuple, Optional, Union

import h11

from ..errors import BadGateway, BadRequest, GatewayTimeout, PayloadTooLarge, RequestTimeout
from ..io.loop import Wait
from ..io.steps import recv, sendall
from ..io.streams import Endpoint
from ..protocol.backend import BackendHandshake
from ..protocol.h11compat import take_trailing
from ..protocol.heads import HOP_BY_HOP, ResponseHead
from ..protocol.request import FrontEnd

__all__ = ["send_request_body", "relay_response", "drain_request_body", "read_request_body", "send_to_client", "Counted"]

Step = Generator[Wait, None, object]
#: What ``h11.Connection.next_event`` returns: an event, or NEED_DATA / PAUSED.
NextEvent = Union[h11.Event, type[h11.NEED_DATA], type[h11.PAUSED]]


class Counted(NamedTuple):
    """Bytes of one message leg, for the access log: ``body`` (payload, %B) and ``wire``
    (every byte on the client connection: heads and chunk framing included; %I/%O)."""

    body: int
    wire: int


class _Wire:
    """Bytes of the request body consumed from the client connection (framing included)."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


def send_to_client(sock: Endpoint, front: FrontEnd, event: h11.Event, deadline: Optional[float]) -> Generator[Wait, None, int]:
    """Serialise one h11 event on the client connection and send it. Returns bytes sent."""
    data = front.conn.send(event)
    if data:
        yield from sendall(sock, data, deadline)
    return len(data or b"")


def _client_event(sock: Endpoint, front: FrontEnd, deadline: float, wire: Optional[_Wire] = None) -> Generator[Wait, None, NextEvent]:
    """The next h11 event of the client's request body, reading as needed.

    h11 is asked first and given bytes only when it needs them, and the bytes it holds
    past the body's end are handed back to ``front.buffer``: they are the next pipelined
    request (RFC 9112 §9.3.2), which ``FrontEnd.next_head`` parses from there.
    """
    conn = front.conn
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise BadRequest(f"malformed request body: {exc}") from exc
        if event is not h11.NEED_DATA:
            if isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                back = _reclaim_trailing(front)
                if wire is not None:
                    wire.n -= back
            return event
        if front.buffer:
            data = bytes(front.buffer)
            front.buffer.clear()
        else:
            try:
                data = yield from recv(sock, deadline)
            except TimeoutError:
                raise RequestTimeout("request body not received in time") from None
        if wire is not None:
            wire.n += len(data)
        conn.receive_data(data)


def _reclaim_trailing(front: FrontEnd) -> int:
    """Move the bytes h11 buffered beyond the request back to ``front.buffer``: a
    pipelined request read together with a body would otherwise be lost."""
    data = take_trailing(front.conn)
    if data:
        front.buffer[:0] = data
    return len(data)


def send_request_body(
    client: Endpoint,
    front: FrontEnd,
    backend: Endpoint,
    hs: BackendHandshake,
    *,
    timeout: float,
    clock: Callable[[], float],
    limit: int = 0,
) -> Generator[Wait, None, Counted]:
    """Stream the client's request body to the backend.

    Args:
        limit: LimitRequestBody (0: none). A body that grows past it stops there: the
            chunk that would cross it is not forwarded (R105).

    Returns:
        ``Counted(body, wire)``: body bytes sent to the backend, and bytes consumed from
        the client connection (the body with its framing; %I).

    Raises:
        PayloadTooLarge: the body went over ``limit``.
    """
    conn = front.conn
    wire = _Wire()
    if conn.they_are_waiting_for_100_continue:
        # Our own 100 (the backend is connected and has the head): the client may send.
        yield from send_to_client(client, front, h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue"), clock() + timeout)
    total = 0
    while True:
        event = yield from _client_event(client, front, clock() + timeout, wire)
        if isinstance(event, h11.Data):
            total += len(event.data)
            if limit and total > limit:
                raise PayloadTooLarge(
                    "request body too large", detail=f"more than LimitRequestBody {limit} bytes, body not finished"
                )
            out = hs.conn.send(h11.Data(data=event.data))
        elif isinstance(event, h11.EndOfMessage):
            out = hs.conn.send(h11.EndOfMessage())
        else:
            return Counted(total, wire.n)  # PAUSED (an upgrade request's end) or ConnectionClosed
        if out:
            try:
                yield from sendall(backend, out, clock() + timeout)
            except TimeoutError:
                raise GatewayTimeout("backend did not take the request body in time") from None
            except OSError as exc:
                raise BadGateway("backend aborted while receiving the request", detail=str(exc)) from exc
        if isinstance(event, h11.EndOfMessage):
            return Counted(total, wire.n)


def drain_request_body(client: Endpoint, front: FrontEnd, *, deadline: float, limit: int = 1 << 20) -> Generator[Wait, None, bool]:
    """Read and drop the rest of a request we answered ourselves.

    Returns True when the connection can carry another request (both sides DONE: a
    ``Connection: close`` from either side leaves ours at MUST_CLOSE).
    """
    conn = front.conn
    if conn.their_state is not h11.SEND_BODY:
        return conn.their_state is h11.DONE and conn.our_state is h11.DONE
    dropped = 0
    while dropped <= limit:
        try:
            event = yield from _client_event(client, front, deadline)
        except (TimeoutError, BadRequest, RequestTimeout):
            return False
        if isinstance(event, h11.Data):
            dropped += len(event.data)
        elif isinstance(event, h11.EndOfMessage):
            return conn.our_state is h11.DONE
        else:
            return False
    return False


def read_request_body(client: Endpoint, front: FrontEnd, *, deadline: float, limit: int) -> Generator[Wait, None, tuple[bytes, int]]:
    """Read a request body we answer ourselves (a handler's form), up to ``limit``
    bytes. Returns the body and the bytes it took on the wire (framing included, %I).

    Raises:
        BadRequest: the body is longer than ``limit`` or malformed.
        RequestTimeout: it did not arrive by ``deadline``.
    """
    wire = _Wire()
    body = bytearray()
    while front.conn.their_state is h11.SEND_BODY:
        event = yield from _client_event(client, front, deadline, wire)
        if isinstance(event, h11.Data):
            body += event.data
            if len(body) > limit:
                raise BadRequest(f"request body longer than {limit} bytes")
        elif not isinstance(event, h11.EndOfMessage):
            break
    return bytes(body), wire.n


def response_headers(response: ResponseHead) -> list[tuple[str, str]]:
    """The backend's headers to relay: hop-by-hop removed (and those its Connection names).

    With Transfer-Encoding, the backend's Content-Length is dropped too: the body was
    framed by the transfer coding (RFC 9112 §6.3), and h11 re-frames it for the client;
    relaying the stale length would announce a body of the wrong size.
    """
    named = {t.strip().lower() for t in (response.get("connection") or "").split(",")}
    if response.get("transfer-encoding") is not None:
        named.add("content-length")
    return [(k, v) for k, v in response.headers if k.lower() not in HOP_BY_HOP and k.lower() not in named]


def relay_response(
    client: Endpoint,
    front: FrontEnd,
    backend: Endpoint,
    hs: BackendHandshake,
    response: ResponseHead,
    *,
    timeout: float,
    clock: Callable[[], float],
    extra_headers: Sequence[tuple[str, str]] = (),
) -> Generator[Wait, None, Counted]:
    """Send ``response`` and stream its body from the backend.

    ``extra_headers`` go after the relayed ones (the hop-by-hop ``Connection`` and
    ``Upgrade`` of an answer that keeps its Upgrade, R101).

    Returns:
        ``Counted(body, wire)``: body bytes relayed (%B), and every byte written to the
        client for this response, head and framing included (%O).

    Raises:
        BadGateway: the backend broke the body (the client connection must then close).
    """
    # As bytes: the latin-1 strings go back to the bytes the backend sent (obs-text passes).
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (*response_headers(response), *extra_headers)]
    reason = response.reason.encode("latin-1")
    wire = yield from send_to_client(
        client, front, h11.Response(status_code=response.status, reason=reason, headers=headers), clock() + timeout
    )
    conn = hs.conn
    total = 0
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise BadGateway("backend sent a malformed response body", detail=str(exc)) from exc
        if event is h11.NEED_DATA:
            try:
                data = yield from recv(backend, clock() + timeout)
            except TimeoutError:
                raise GatewayTimeout("backend stopped sending the response body") from None
            except OSError as exc:
                raise BadGateway("backend aborted the response body", detail=str(exc)) from exc
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Data):
            total += len(event.data)
            wire += yield from send_to_client(client, front, h11.Data(data=event.data), clock() + timeout)
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            wire += yield from send_to_client(client, front, h11.EndOfMessage(), clock() + timeout)
            return Counted(total, wire)
        else:  # pragma: no cover - h11 gives nothing else here
            raise BadGateway("unexpected event in the backend's response")
