"""protocol/request.py, sans-IO: bytes in, request heads out (the fast path agrees
with h11), strict checks and limits. No sockets."""

from __future__ import annotations

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.clients import KEY, upgrade_request
from tests.support.sansio import HEADER_VALUES, parse_head
from tunnel.config import Limits
from tunnel.errors import (
    BadRequest,
    ClientError,
    HeaderFieldsTooLarge,
    MethodNotAllowed,
    URITooLong,
)
from tunnel.protocol.request import FrontEnd
from tunnel.protocol.upgrade import validate_upgrade

pytestmark = pytest.mark.timeout(30)


def test_head_and_early_data_split():
    fe, head = parse_head(upgrade_request("/chat?x=1") + b"\x81\x05early")
    assert head.method == "GET" and head.target == "/chat?x=1" and head.http_version == "1.1"
    assert head.get("UPGRADE") == "websocket"
    assert fe.take_buffer() == b"\x81\x05early"
    assert fe.buffer == b""


def test_partial_head_needs_more():
    data = upgrade_request()
    fe = FrontEnd()
    for i in range(len(data) - 1):
        fe.feed(data[i : i + 1])
        assert fe.next_head() is None
    fe.feed(data[-1:])
    assert fe.next_head() is not None


@pytest.mark.parametrize(
    "raw, exc, fragment",
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", BadRequest, "bare CR"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\nY: b\r\n\r\n", BadRequest, "bare LF"),
        (b"GET / HTTP/1.1\nHost: a\n\n", BadRequest, "bare LF"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", BadRequest, "folding"),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", BadRequest, "both Content-Length and Transfer-Encoding"),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", BadRequest, "Content-Length"),
        (b"GET / HTTP/1.1\r\nHo st: a\r\n\r\n", BadRequest, "malformed"),
        (b"GET / HTTP/1.1\r\n\r\n", BadRequest, "Host"),
        (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", MethodNotAllowed, "CONNECT"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: \x00\r\n\r\n", BadRequest, "NUL"),
    ],
)
def test_strict_head_errors(raw, exc, fragment):
    with pytest.raises(exc) as info:
        parse_head(raw)
    assert fragment in info.value.reason


def test_limits():
    with pytest.raises(URITooLong):
        parse_head(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    with pytest.raises(URITooLong):  # refused before the line even ends
        fe = FrontEnd()
        fe.feed(b"GET /" + b"a" * 9000)
        fe.next_head()
    with pytest.raises(HeaderFieldsTooLarge) as info:
        parse_head(b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"b" * 9000 + b"\r\n\r\n")
    assert info.value.status == 431
    many = b"".join(b"X%d: y\r\n" % i for i in range(101))
    with pytest.raises(HeaderFieldsTooLarge):
        parse_head(b"GET / HTTP/1.1\r\nHost: a\r\n" + many + b"\r\n")
    _, head = parse_head(b"GET / HTTP/1.1\r\nHost: a\r\n" + many + b"\r\n", Limits(fields=200))
    assert head is not None


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_give_a_head_none_or_a_client_error(data):
    fe = FrontEnd()
    fe.feed(data)
    try:
        head = fe.next_head()
    except ClientError as exc:
        assert 400 <= exc.status < 500 and exc.reason
        return
    if head is not None:
        try:
            validate_upgrade(head, "websocket")
        except ClientError as exc:
            assert exc.status in (400, 426)


@pytest.mark.parametrize(
    "host, ok",
    [("xn--zz", True), ("example.test:8080", True), ("[::1]:80", True), ("10.0.0.1", True), ("caf\xe9", False), ("a b", False), ("a,b", False)],
)
def test_host_header_syntax(host, ok):
    raw = upgrade_request(host=host)
    if ok:
        _, head = parse_head(raw)
        assert validate_upgrade(head, "websocket") == KEY  # an IDNA-looking name is not wsproto's 500
    else:
        with pytest.raises(BadRequest, match="Host"):
            parse_head(raw.replace(host.encode(), host.encode("latin-1")))


def test_two_host_headers_are_refused():
    with pytest.raises(BadRequest, match="Host"):
        parse_head(upgrade_request(extra="Host: other.test"))


# -- the fast path agrees with h11 ---------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(["GET / HTTP/1.1", "GET /a?b HTTP/1.1", "POST /p HTTP/1.1", "GET  / HTTP/1.1", "GET / HTTP/1.0", "CONNECT a:1 HTTP/1.1", "GET /\x80 HTTP/1.1", "get / HTTP/1.1"]),
    st.lists(
        st.tuples(
            st.sampled_from(["Host", "host", "Upgrade", "Connection", "Content-Length", "Transfer-Encoding", "X-A", "Bad Name", " X", "X:"]),
            HEADER_VALUES,
        ),
        max_size=6,
    ),
    st.sampled_from(["", "Host: h\r\n", "Host: h:1\r\n", "Host: [::1]\r\n"]),
)
def test_simple_head_reads_what_h11_reads(request_line, headers, host):
    raw = (request_line + "\r\n" + host + "".join(f"{k}:{v}\r\n" for k, v in headers) + "\r\n").encode("latin-1")
    fe = FrontEnd()
    fe.feed(raw + b"rest")
    try:
        head = fe.next_head()
    except ClientError:
        return  # refused by the strict checks or h11: nothing of the fast path involved
    slow = h11.Connection(h11.SERVER)
    slow.receive_data(raw)
    event = slow.next_event()
    assert isinstance(event, h11.Request)
    assert head.method == event.method.decode() and head.target == event.target.decode("latin-1")
    assert head.http_version == event.http_version.decode()
    assert head.headers == [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers.raw_items()]
    assert head.raw_size == len(raw) and bytes(fe.buffer) == b"rest"
    assert fe.conn.their_state is slow.their_state  # h11 brought up to date when asked


def test_keep_alive_second_head_after_a_fast_one():
    fe = FrontEnd()
    fe.feed(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n")
    assert fe.next_head().target == "/a"
    conn = fe.conn  # the proxy answers the first request through h11
    assert isinstance(conn.next_event(), h11.EndOfMessage)  # its empty body
    conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
    conn.send(h11.EndOfMessage())
    assert fe.next_head().target == "/b"
    assert fe.conn.their_state is h11.SEND_BODY and fe.conn.our_state is h11.SEND_RESPONSE  # as after h11 read it
