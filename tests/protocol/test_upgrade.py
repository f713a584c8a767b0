"""protocol/upgrade.py, sans-IO: is a head a valid upgrade for the selected token
(wsproto's rules plus the key)? No sockets."""

from __future__ import annotations

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.connection import ConnectionType
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError as WSRemoteProtocolError

from tests.support.clients import KEY, upgrade_request
from tests.support.sansio import parse_head
from tunnel.errors import BadRequest, ClientError, UpgradeRequired
from tunnel.protocol.upgrade import _websocket_ok, validate_upgrade

pytestmark = pytest.mark.timeout(30)


def test_validate_upgrade_ok_returns_key():
    _, head = parse_head(upgrade_request())
    assert validate_upgrade(head, "websocket") == KEY


@pytest.mark.parametrize(
    "request_bytes, exc, fragment",
    [
        (upgrade_request().replace(b"HTTP/1.1", b"HTTP/1.0"), BadRequest, "HTTP/1.1"),
        (upgrade_request().replace(b"Connection: Upgrade", b"Connection: keep-alive"), BadRequest, "Connection"),
        (upgrade_request().replace(b"GET", b"POST"), BadRequest, "GET"),
        (upgrade_request().replace(b"Sec-WebSocket-Key: " + KEY.encode() + b"\r\n", b""), BadRequest, "Sec-WebSocket-Key"),
        (upgrade_request(key="c2hvcnQ="), BadRequest, "16 bytes"),
        (upgrade_request(key="not base64!"), BadRequest, "16 bytes"),
        (upgrade_request(extra="Sec-WebSocket-Key: " + KEY), BadRequest, "repeated"),
        (upgrade_request(version="8"), UpgradeRequired, "13"),
        (upgrade_request().replace(b"Sec-WebSocket-Version: 13\r\n", b""), BadRequest, "Version"),
        (upgrade_request(extra="Content-Length: 5"), BadRequest, "body"),
    ],
)
def test_validate_upgrade_errors(request_bytes, exc, fragment):
    _, head = parse_head(request_bytes)
    with pytest.raises(exc) as info:
        validate_upgrade(head, "websocket")
    assert fragment in info.value.reason
    if exc is UpgradeRequired:
        assert info.value.status == 426 and ("Sec-WebSocket-Version", "13") in info.value.headers


def test_validate_none_mode_skips_upgrade_checks_only():
    raw = upgrade_request().replace(b"Upgrade: websocket\r\n", b"").replace(b"Connection: Upgrade\r\n", b"")
    _, head = parse_head(raw)
    assert validate_upgrade(head, "websocket", none_mode=True) == KEY
    with pytest.raises(BadRequest):
        validate_upgrade(head, "websocket")


def test_other_token_needs_only_http11_and_connection():
    raw = b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n"
    _, head = parse_head(raw)
    assert validate_upgrade(head, "h2c") is None


def _wsproto_accepts(head) -> bool:
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in head.headers if k.lower() not in ("upgrade", "connection")]
    headers += [(b"upgrade", b"websocket"), (b"connection", b"Upgrade")]
    try:
        request = h11.Request(method=head.method, target=head.target, headers=headers)
        H11Handshake(ConnectionType.SERVER)._process_connection_request(request)
    except WSRemoteProtocolError:
        return False
    return True


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(["GET", "POST", "HEAD"]),
    st.lists(
        st.tuples(
            st.sampled_from(["Sec-WebSocket-Key", "Sec-WebSocket-Version", "Content-Length", "Transfer-Encoding", "Origin"]),
            st.sampled_from([KEY, "c2hvcnQ=", "13", "8", " 13", "0", "5", "chunked", "", "x"]),
        ),
        max_size=5,
    ),
)
def test_websocket_check_agrees_with_wsproto(method, headers):
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers)
    raw = f"{method} /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{lines}\r\n".encode()
    try:
        _, head = parse_head(raw)
    except ClientError:
        return
    keys = head.get_all("sec-websocket-key")
    no_body = head.get("content-length") in (None, "0") and head.get("transfer-encoding") is None
    ours = _websocket_ok(head)
    expected = _wsproto_accepts(head) and len(keys) == 1 and no_body and keys[0] == KEY
    assert (ours is not None) == expected
    if ours is None:
        with pytest.raises(ClientError):
            validate_upgrade(head, "websocket")
