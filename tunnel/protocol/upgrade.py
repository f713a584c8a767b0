"""Upgrade checks, sans-IO: is this request a valid upgrade for the selected token?

RFC 6455 through wsproto's own server rules plus a key check (R12), raising the
`ClientError` to answer with.
"""

from __future__ import annotations

import binascii
from typing import Optional

from wsproto import ConnectionType, WSConnection
from wsproto.utilities import RemoteProtocolError as WSRemoteProtocolError

from ..errors import BadRequest, UpgradeRequired
from .heads import RequestHead

__all__ = ["validate_upgrade"]


def _key_ok(key: str) -> bool:
    try:
        return len(binascii.a2b_base64(key.encode("ascii"), strict_mode=True)) == 16  # b64decode(validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return False


def validate_upgrade(head: RequestHead, token: str, *, none_mode: bool = False) -> Optional[str]:
    """Check an upgrade request for the selected ``token`` (R12 tunnel line, R16).

    A valid WebSocket request is recognised by `_websocket_ok`, which applies the same
    rules as wsproto's server handshake without building an h11 event and a handshake
    object per request (tests/protocol/test_upgrade.py checks the two agree on generated
    requests). A request it refuses is run through wsproto, whose message and status
    (400, or 426 for a bad version) are the answer.

    Args:
        head: the client's request head.
        token: the Upgrade token routing selected (``websocket`` or another).
        none_mode: the route says ``upgrade=NONE``: the Upgrade and Connection checks are
            skipped, the rest of the WebSocket checks still apply.

    Returns:
        The client's Sec-WebSocket-Key for a WebSocket upgrade, else None.

    Raises:
        BadRequest: HTTP/1.0, no ``upgrade`` in Connection, or a bad WebSocket request.
        UpgradeRequired: a Sec-WebSocket-Version other than 13 (426).
    """
    if head.http_version != "1.1":
        raise BadRequest("an upgrade needs HTTP/1.1")
    if not none_mode and "upgrade" not in head.tokens("connection"):
        raise BadRequest("Connection header lacks the upgrade option")
    if token.lower() != "websocket":
        return None
    key = _websocket_ok(head)
    if key is not None:
        return key
    keys = head.get_all("sec-websocket-key")
    if len(keys) > 1:
        raise BadRequest("repeated Sec-WebSocket-Key")
    if head.get("content-length") not in (None, "0") or head.get("transfer-encoding"):
        raise BadRequest("a WebSocket handshake has no body")
    _wsproto_verdict(head)
    key = keys[0].strip() if keys else ""
    if not _key_ok(key):
        raise BadRequest("Sec-WebSocket-Key is not base64 of 16 bytes")
    if head.get("host") is None:  # pragma: no cover - h11 refuses an HTTP/1.1 head without Host
        raise BadRequest("invalid WebSocket handshake: missing or bad header 'Host'")
    raise BadRequest("invalid WebSocket handshake")  # pragma: no cover - _websocket_ok's rules are wsproto's


def _websocket_ok(head: RequestHead) -> Optional[str]:
    """The key of a valid WebSocket upgrade request, or None if anything is off.

    wsproto's server rules (GET; ``upgrade`` among the Connection tokens is checked by
    the caller; the last Sec-WebSocket-Version is ``13``; a Sec-WebSocket-Key; a Host),
    plus ours: exactly one key, base64 of 16 bytes, and no body.
    """
    if head.method != "GET":
        return None
    index = head.index()
    key = index.get("sec-websocket-key")
    if (
        key is not None
        and "," not in key  # one line (repeated ones are joined with ", ")
        and index.get("sec-websocket-version") == "13"
        and "transfer-encoding" not in index
        and index.get("content-length", "0") == "0"
    ):
        return key if _key_ok(key) else None
    key = version = None
    keys = 0
    for name, value in head.headers:
        low = name.lower()
        if low == "sec-websocket-key":
            key = value
            keys += 1
        elif low == "sec-websocket-version":
            version = value
        elif low == "transfer-encoding" or (low == "content-length" and value != "0"):
            return None
    if keys != 1 or version != "13" or key is None or not _key_ok(key):
        return None
    return key


def _wsproto_verdict(head: RequestHead) -> None:
    """Run a refused request through wsproto's server handshake for its exact answer.

    The head goes to a server `WSConnection` as bytes (its public API); wsproto raises
    the error, with the status in its event hint (400, or 426 for a bad version).
    """
    lines = [f"{head.method} {head.target} HTTP/{head.http_version}"]
    for name, value in head.headers:
        if name.lower() not in ("upgrade", "connection"):
            lines.append(f"{name}: {value}")
    lines += ["upgrade: websocket", "connection: Upgrade"]
    try:
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    except UnicodeError:  # pragma: no cover - the head was read as latin-1
        raise BadRequest("invalid WebSocket handshake") from None
    try:
        WSConnection(ConnectionType.SERVER).receive_data(raw)
    except WSRemoteProtocolError as exc:
        hint = exc.event_hint
        status = getattr(hint, "status_code", 400)
        reason = str(exc).replace("Missing header, ", "missing or bad header ")
        if status == 426:
            raise UpgradeRequired(f"unsupported Sec-WebSocket-Version {head.get('sec-websocket-version')!r}; 13 is required") from exc
        if reason == "Bad HTTP message":
            raise BadRequest("invalid WebSocket handshake: malformed request") from exc
        raise BadRequest(f"invalid WebSocket handshake: {reason}") from exc
    except UnicodeError:  # wsproto decodes Host as IDNA; the request was refused already
        pass
