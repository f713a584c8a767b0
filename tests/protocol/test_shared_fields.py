"""protocol/heads.py: header names and short values are shared between the heads that
have them (an idle tunnel keeps its heads), bounded, and read exactly as before."""

from __future__ import annotations

from tunnel.protocol import heads
from tunnel.protocol.backend import parse_101
from tunnel.protocol.request import FrontEnd

HEAD = (
    b"GET /chat HTTP/1.1\r\nHost: example.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
ANSWER = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)


def _head(raw: bytes):
    front = FrontEnd()
    front.feed(raw)
    head = front.next_head()
    assert head is not None
    return head


def test_two_heads_share_names_and_short_values_not_long_ones():
    a, b = _head(HEAD), _head(HEAD)
    assert a.headers == b.headers
    for (na, va), (nb, vb) in zip(a.headers, b.headers, strict=True):
        assert na is nb
        assert (va is vb) == (len(va) <= heads.SHARED_VALUE_MAX)
    r1, r2 = parse_101(ANSWER), parse_101(ANSWER)
    assert r1 is not None and r2 is not None
    assert r1[0].headers == [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")]
    assert r1[0].headers[0][1] is a.headers[1][1]  # "websocket", once per process


def test_names_keep_their_case_and_obs_text_values_read_as_latin_1():
    head = _head(b"GET / HTTP/1.1\r\nhOsT: h\r\nX-Odd: caf\xe9\r\n\r\n")
    assert head.headers == [("hOsT", "h"), ("X-Odd", "caf\u00e9")]
    assert heads.field_name(b"hOsT") == ("hOsT", "host")


def test_the_caches_are_bounded():
    for i in range(heads.SHARED_MAX + 50):
        assert heads.field_name(f"X-N{i}".encode()) == (f"X-N{i}", f"x-n{i}")
        assert heads.field_value(f"v{i}".encode()) == f"v{i}"
    assert len(heads._NAMES) <= heads.SHARED_MAX and len(heads._VALUES) <= heads.SHARED_MAX
    assert _head(HEAD).headers[0] == ("Host", "example.test")
