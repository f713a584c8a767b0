"""Hostile HTTP/2 (R146): each input ends with the right GOAWAY or RST_STREAM code, a log
line, and nothing left behind (the connection's state is dropped, fds released)."""

from __future__ import annotations

import logging

import hpack
import pytest

from tests.e2e.test_h2 import ca, cert, client_ctx, h2_proxy  # noqa: F401 - fixtures
from tests.support.h2client import H2Client, RawH2, frame_bytes
from tests.support.resources import fd_table, wait_fds_back
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

HEADERS, RST_STREAM, SETTINGS, PING, CONTINUATION = 1, 3, 4, 6, 9
END_STREAM, END_HEADERS = 0x1, 0x4
PROTOCOL_ERROR, REFUSED_STREAM, ENHANCE_YOUR_CALM = 1, 7, 11


def _block(path: str = "/", extra: list[tuple[str, str]] | None = None) -> bytes:
    return hpack.Encoder().encode([(":method", "GET"), (":scheme", "https"), (":authority", "localhost"), (":path", path), *(extra or [])])


@pytest.fixture
def proxy(make_proxy, cert):  # noqa: F811 - the module fixture
    return h2_proxy(make_proxy, cert, "ProxyPass /ws/ ws://127.0.0.1:9/\nLimitRequestFieldSize 1000")


def _gone(engine, before: dict[int, str]) -> None:
    wait_for(lambda: not engine._h2, what="the connection's state dropped")
    wait_fds_back(before, what="fds released")


def test_rapid_reset_ends_with_enhance_your_calm(proxy, ca, caplog):  # noqa: F811
    before = fd_table()
    raw = RawH2(proxy.addresses[0], client_ctx(ca))
    block = _block("/ws/x")
    burst = b"".join(
        frame_bytes(HEADERS, END_HEADERS | END_STREAM, sid, block) + frame_bytes(RST_STREAM, 0, sid, (8).to_bytes(4, "big"))
        for sid in range(1, 2 * 400, 2)
    )
    raw.send(burst)
    assert raw.goaway() == ENHANCE_YOUR_CALM
    raw.close()
    _gone(proxy, before)
    assert "GOAWAY ENHANCE_YOUR_CALM: RST_STREAM (rapid reset) frames faster than allowed" in caplog.text


def test_continuation_flood_ends_with_enhance_your_calm(proxy, ca, caplog):  # noqa: F811
    before = fd_table()
    raw = RawH2(proxy.addresses[0], client_ctx(ca))
    raw.send(frame_bytes(HEADERS, 0, 1, _block()))
    filler = b"\x00" * 16000
    for _ in range(10):  # 160 kB of header block, never ended
        if not raw.send(frame_bytes(CONTINUATION, 0, 1, filler)):
            break
    assert raw.goaway() == ENHANCE_YOUR_CALM
    raw.close()
    _gone(proxy, before)
    assert "header block over 65536 bytes" in caplog.text


def test_empty_continuation_frames_are_a_flood(proxy, ca, caplog):  # noqa: F811
    raw = RawH2(proxy.addresses[0], client_ctx(ca))
    raw.send(frame_bytes(HEADERS, 0, 1, _block()) + frame_bytes(CONTINUATION, 0, 1) * 500)
    assert raw.goaway() == ENHANCE_YOUR_CALM
    raw.close()
    assert "empty CONTINUATION frames" in caplog.text


@pytest.mark.parametrize(
    ("frame", "what"),
    [
        (frame_bytes(SETTINGS, 0, 0), "SETTINGS frames faster than allowed"),
        (frame_bytes(PING, 0, 0, b"12345678"), "PING frames faster than allowed"),
        (frame_bytes(0, 0, 1), "empty DATA frames"),
    ],
    ids=["settings", "ping", "empty-data"],
)
def test_control_frame_floods_end_with_enhance_your_calm(proxy, ca, caplog, frame, what):  # noqa: F811
    before = fd_table()
    raw = RawH2(proxy.addresses[0], client_ctx(ca))
    prefix = frame_bytes(HEADERS, END_HEADERS, 1, _block("/ws/x")) if frame[3] == 0 else b""
    raw.send(prefix + frame * 1000)
    assert raw.goaway() == ENHANCE_YOUR_CALM
    raw.close()
    _gone(proxy, before)
    assert what in caplog.text


def test_oversized_header_field_is_431_on_its_stream(proxy, ca):  # noqa: F811
    with H2Client(proxy.addresses[0], client_ctx(ca)) as client:
        sid = client.request("GET", "/ws/x", headers=[("x-big", "a" * 5000)])
        state = client.complete(sid)
        assert state.status == 431  # LimitRequestFieldSize, as for HTTP/1.1
        again = client.request("GET", "/nothing")  # the connection lives on
        assert client.complete(again).status == 404


def test_header_list_over_the_limit_ends_the_connection(proxy, ca, caplog):  # noqa: F811
    raw = RawH2(proxy.addresses[0], client_ctx(ca))
    # 40 kB literal fields, indexed once and then repeated by index: a small block that
    # decodes to far more than SETTINGS_MAX_HEADER_LIST_SIZE.
    encoder = hpack.Encoder()
    encoder.header_table_size = 4096
    first = encoder.encode([(":method", "GET"), (":scheme", "https"), (":authority", "localhost"), (":path", "/"), ("x-a", "v" * 3000)])
    repeat = encoder.encode([("x-a", "v" * 3000)]) * 40
    raw.send(frame_bytes(HEADERS, END_HEADERS | END_STREAM, 1, first + repeat))
    code = raw.goaway()
    assert code in (ENHANCE_YOUR_CALM, PROTOCOL_ERROR)
    raw.close()
    assert "GOAWAY" in caplog.text


def test_streams_over_the_limit_are_refused(make_proxy, cert, ca, caplog):  # noqa: F811
    caplog.set_level(logging.INFO)
    engine = h2_proxy(make_proxy, cert, "H2MaxSessionStreams 2\nProxyPass /ws/ ws://127.0.0.1:9/")
    raw = RawH2(engine.addresses[0], client_ctx(ca))
    # Before our SETTINGS are acknowledged a client may race past the limit: the streams
    # over it are refused one by one, the others served.
    block = _block("/hold")
    raw.send(b"".join(frame_bytes(HEADERS, END_HEADERS, sid, block) for sid in (1, 3, 5)))
    assert raw.reset_of(5) == REFUSED_STREAM
    raw.close()
    assert "more than H2MaxSessionStreams 2 streams" in caplog.text


def test_bytes_that_are_not_http2_end_with_protocol_error(proxy, ca, caplog):  # noqa: F811
    raw = RawH2(proxy.addresses[0], client_ctx(ca))
    raw.send(frame_bytes(HEADERS, END_HEADERS, 2, _block()))  # an even (server) stream id
    assert raw.goaway() == PROTOCOL_ERROR
    raw.close()
    wait_for(lambda: not proxy._h2, what="connection closed")
    assert "GOAWAY PROTOCOL_ERROR" in caplog.text
