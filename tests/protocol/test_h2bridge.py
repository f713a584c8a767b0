"""The HTTP/2 <-> HTTP/1.1 translation and the frame scanner, sans-IO (R143-R146)."""

from __future__ import annotations

import base64
import hashlib

import h11
import pytest

from tunnel.protocol.h2bridge import (
    Body,
    Budget,
    End,
    Flood,
    FrameScanner,
    Head,
    Refusal,
    Reset,
    StreamBridge,
    translate_request,
)

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WS = [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"), (":authority", "chat.test"), (":path", "/room?x=1"), ("sec-websocket-version", "13"), ("sec-websocket-protocol", "chat"), ("cookie", "a=1"), ("cookie", "b=2")]


def _parse(data: bytes) -> h11.Request:
    server = h11.Connection(h11.SERVER)
    server.receive_data(data)
    event = server.next_event()
    assert isinstance(event, h11.Request)
    return event


def test_extended_connect_becomes_a_get_upgrade_with_our_key():
    t = translate_request(WS, end_stream=False, connect_protocol=True)
    bridge = StreamBridge(t)
    req = _parse(bridge.head_bytes(end=False))
    headers = {k.decode(): v.decode() for k, v in req.headers}
    assert (req.method, req.target) == (b"GET", b"/room?x=1")
    assert headers["host"] == "chat.test" and headers["upgrade"] == "websocket" and headers["connection"] == "Upgrade"
    assert headers["sec-websocket-key"] == t.key and len(base64.b64decode(t.key or "")) == 16
    assert headers["cookie"] == "a=1; b=2" and headers["sec-websocket-protocol"] == "chat"
    assert translate_request(WS, end_stream=False, connect_protocol=True).key != t.key  # fresh each time


def test_101_becomes_200_and_the_stream_a_tunnel():
    t = translate_request(WS, end_stream=False, connect_protocol=True)
    bridge = StreamBridge(t)
    bridge.head_bytes(end=False)
    accept = base64.b64encode(hashlib.sha1((t.key or "").encode() + GUID).digest()).decode()
    out = bridge.answer(
        f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
        "Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n".encode() + b"\x81\x02hi"
    )
    head = out[0]
    assert isinstance(head, Head) and head.tunnel
    assert head.headers == [(":status", "200"), ("sec-websocket-protocol", "chat"), ("sec-websocket-extensions", "permessage-deflate")]
    assert out[1:] == [Body(b"\x81\x02hi")]
    assert bridge.body_bytes(b"raw") == b"raw"
    assert bridge.answer(b"more") == [Body(b"more")] and bridge.answer(b"") == [End()]


@pytest.mark.parametrize(("status", "expected"), [(200, 502), (204, 502), (403, 403), (302, 302), (503, 503)])
def test_answers_that_did_not_switch(status, expected):
    bridge = StreamBridge(translate_request(WS, end_stream=False, connect_protocol=True))
    bridge.head_bytes(end=False)
    out = bridge.answer(f"HTTP/1.1 {status} X\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc".encode())
    head = out[0]
    assert isinstance(head, Head) and head.headers[0] == (":status", str(expected))
    assert ("connection", "close") not in head.headers
    assert out[-1] == End()
    if expected == status:
        assert Body(b"abc") in out


def test_plain_request_body_without_length_goes_chunked():
    t = translate_request([(":method", "POST"), (":scheme", "https"), (":authority", "a"), (":path", "/p")], end_stream=False, connect_protocol=False)
    bridge = StreamBridge(t)
    wire = bridge.head_bytes(end=False) + bridge.body_bytes(b"hello") + bridge.end_bytes()
    assert b"transfer-encoding: chunked" in wire.lower() and wire.endswith(b"5\r\nhello\r\n0\r\n\r\n")
    out = bridge.answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert out == [Head([(":status", "200")]), Body(b"abc"), End()]


def test_answer_cut_short_is_a_reset():
    bridge = StreamBridge(translate_request([(":method", "GET"), (":scheme", "https"), (":authority", "a"), (":path", "/")], end_stream=True, connect_protocol=False))
    bridge.head_bytes(end=True)
    out = bridge.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    assert out[:2] == [Head([(":status", "200"), ("content-length", "10")]), Body(b"abc")]
    assert isinstance(bridge.answer(b"")[0], Reset)


def test_protocol_without_the_setting_is_refused_with_protocol_error():
    with pytest.raises(Refusal) as err:
        translate_request(WS, end_stream=False, connect_protocol=False)
    assert err.value.reset == 1


def _frame(kind: int, flags: int, sid: int, length: int = 0) -> bytes:
    return length.to_bytes(3, "big") + bytes([kind, flags]) + sid.to_bytes(4, "big") + b"\0" * length


def test_scanner_bounds_header_blocks_across_reads():
    scanner = FrameScanner(1000, 0.0)
    data = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(1, 0, 1, 600) + _frame(9, 0, 1, 300)
    for i in range(0, len(data), 7):  # split anywhere
        scanner.feed(data[i : i + 7], 0.0)
    scanner.feed(_frame(9, 4, 1, 100), 0.0)  # END_HEADERS at exactly 1000
    scanner.feed(_frame(1, 0, 3, 900), 0.0)
    with pytest.raises(Flood, match="header block over 1000 bytes"):
        scanner.feed(_frame(9, 0, 3, 101), 0.0)


def test_scanner_budgets_refill_with_time():
    scanner = FrameScanner(65536, 0.0)
    scanner.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 0.0)
    for _ in range(100):
        scanner.feed(_frame(3, 0, 1, 4), 0.0)
    with pytest.raises(Flood, match="rapid reset"):
        scanner.feed(_frame(3, 0, 1, 4), 0.0)
    scanner = FrameScanner(65536, 0.0)
    scanner.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 0.0)
    for i in range(300):  # 20 a second is within the rate
        scanner.feed(_frame(3, 0, 1, 4), i / 20)
    for _ in range(1000):
        scanner.feed(_frame(4, 1, 0), 0.0)  # SETTINGS ACKs are not counted
    assert scanner.counts[3] == 300


def test_budget():
    b = Budget(2, 1.0, 0.0)
    assert b.spend(0.0) and b.spend(0.0) and not b.spend(0.0)
    assert b.spend(1.0) and not b.spend(1.0)
