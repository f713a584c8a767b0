"""handshake.py, sans-IO: bytes in, heads, decisions and bytes out. No sockets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel.config import Limits
from tunnel.errors import (
    BadGateway,
    BadRequest,
    ClientError,
    HeaderFieldsTooLarge,
    MethodNotAllowed,
    UpgradeRequired,
    URITooLong,
)
from tunnel.protocol.backend import BackendHandshake, backend_headers, client_switch_bytes
from tunnel.protocol.request import FrontEnd
from tunnel.protocol.upgrade import validate_upgrade

from .helpers import ACCEPT, KEY, upgrade_request

pytestmark = pytest.mark.timeout(30)


def parse(data: bytes, limits: Limits = Limits()):
    fe = FrontEnd(limits)
    fe.feed(data)
    return fe, fe.next_head()


def test_head_and_early_data_split():
    fe, head = parse(upgrade_request("/chat?x=1") + b"\x81\x05early")
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
        parse(raw)
    assert fragment in info.value.reason


def test_limits():
    with pytest.raises(URITooLong):
        parse(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    with pytest.raises(URITooLong):  # refused before the line even ends
        fe = FrontEnd()
        fe.feed(b"GET /" + b"a" * 9000)
        fe.next_head()
    with pytest.raises(HeaderFieldsTooLarge) as info:
        parse(b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"b" * 9000 + b"\r\n\r\n")
    assert info.value.status == 431
    many = b"".join(b"X%d: y\r\n" % i for i in range(101))
    with pytest.raises(HeaderFieldsTooLarge):
        parse(b"GET / HTTP/1.1\r\nHost: a\r\n" + many + b"\r\n")
    _, head = parse(b"GET / HTTP/1.1\r\nHost: a\r\n" + many + b"\r\n", Limits(fields=200))
    assert head is not None


def test_validate_upgrade_ok_returns_key():
    _, head = parse(upgrade_request())
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
    _, head = parse(request_bytes)
    with pytest.raises(exc) as info:
        validate_upgrade(head, "websocket")
    assert fragment in info.value.reason
    if exc is UpgradeRequired:
        assert info.value.status == 426 and ("Sec-WebSocket-Version", "13") in info.value.headers


def test_validate_none_mode_skips_upgrade_checks_only():
    raw = upgrade_request().replace(b"Upgrade: websocket\r\n", b"").replace(b"Connection: Upgrade\r\n", b"")
    _, head = parse(raw)
    assert validate_upgrade(head, "websocket", none_mode=True) == KEY
    with pytest.raises(BadRequest):
        validate_upgrade(head, "websocket")


def test_other_token_needs_only_http11_and_connection():
    raw = b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n"
    _, head = parse(raw)
    assert validate_upgrade(head, "h2c") is None


def test_backend_headers_strip_and_add():
    raw = upgrade_request(
        extra="Connection: X-Forwarded-For, X-Secret\r\nX-Secret: s\r\nKeep-Alive: 5\r\nProxy-Authorization: Basic x\r\n"
        "TE: trailers\r\nOrigin: http://o\r\nSec-WebSocket-Protocol: chat\r\nX-Forwarded-For: 9.9.9.9"
    )
    _, head = parse(raw)
    hdrs = backend_headers(head, host="backend:9000", upgrade_token="websocket", client_ip="10.0.0.1", server_name="px")
    names = [k.lower() for k, _ in hdrs]
    assert hdrs[0] == ("Host", "backend:9000")
    for gone in ("x-secret", "keep-alive", "proxy-authorization", "te"):
        assert gone not in names
    d = {k.lower(): v for k, v in hdrs}
    # X-Forwarded-For was named in Connection: stripped first, then ours added (R51).
    assert d["x-forwarded-for"] == "10.0.0.1"
    assert d["x-forwarded-host"] == "example.test" and d["x-forwarded-server"] == "px"
    assert d["origin"] == "http://o" and d["sec-websocket-protocol"] == "chat"
    assert d["sec-websocket-key"] == KEY
    assert d["connection"] == "Upgrade" and d["upgrade"] == "websocket"


def test_backend_headers_preserve_host_and_no_add():
    _, head = parse(upgrade_request(extra="X-Forwarded-For: 1.1.1.1"))
    hdrs = backend_headers(head, host="b", upgrade_token=None, client_ip="2.2.2.2", add_headers=False, preserve_host=True)
    d = {k.lower(): v for k, v in hdrs}
    assert d["host"] == "example.test" and d["x-forwarded-for"] == "1.1.1.1"
    assert "upgrade" not in d and "connection" not in d
    hdrs = backend_headers(head, host="b", upgrade_token=None, client_ip="2.2.2.2")
    assert dict((k.lower(), v) for k, v in hdrs)["x-forwarded-for"] == "1.1.1.1, 2.2.2.2"


def _hs():
    return BackendHandshake(
        "GET", "/x", [("Host", "b"), ("Connection", "Upgrade"), ("Upgrade", "websocket")], upgrade_token="websocket", client_key=KEY
    )


def test_backend_101_accepted_with_trailing_bytes():
    hs = _hs()
    assert hs.request_bytes().startswith(b"GET /x HTTP/1.1\r\nHost: b\r\n")
    resp = hs.feed(f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\nSec-WebSocket-Protocol: chat\r\n\r\n".encode() + b"\x81\x02hi")
    hs.check_switch(resp)
    assert hs.trailing == b"\x81\x02hi"
    out = client_switch_bytes(resp, "websocket")
    assert out.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"Sec-WebSocket-Protocol: chat" in out and b"Connection: Upgrade" in out and out.endswith(b"\r\n\r\n")
    assert b"Date:" not in out and b"Server:" not in out


@pytest.mark.parametrize(
    "response, fragment",
    [
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAA\r\n\r\n", "Accept"),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", "Accept"),
        (b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n", "another protocol"),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n", "another protocol"),
    ],
)
def test_bad_101_is_502(response, fragment):
    hs = _hs()
    hs.request_bytes()
    resp = hs.feed(response)
    with pytest.raises(BadGateway) as info:
        hs.check_switch(resp)
    assert fragment in info.value.reason and info.value.status == 502


def test_backend_closes_or_garbles_before_head():
    hs = _hs()
    hs.request_bytes()
    assert hs.feed(b"HTTP/1.1 10") is None
    with pytest.raises(BadGateway, match="closed"):
        hs.feed(b"")
    hs = _hs()
    hs.request_bytes()
    with pytest.raises(BadGateway, match="malformed"):
        hs.feed(b"garbage garbage\r\n\r\n")


def test_101_to_a_plain_request_is_502():
    hs = BackendHandshake("GET", "/x", [("Host", "b")], upgrade_token=None, client_key=None)
    hs.request_bytes()
    with pytest.raises(BadGateway, match="without being asked"):
        hs.feed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")


def test_non_101_answer_is_a_response():
    hs = _hs()
    hs.request_bytes()
    resp = hs.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
    assert resp.status == 403 and resp.get("content-length") == "2"


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


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_backend_bytes_give_a_head_none_or_bad_gateway(data):
    hs = _hs()
    hs.request_bytes()
    try:
        resp = hs.feed(data)
        if resp is not None and resp.status == 101:
            hs.check_switch(resp)
    except BadGateway:
        pass


# -- the fast paths agree with h11 and wsproto ---------------------------------------------

import h11  # noqa: E402
from wsproto.connection import ConnectionType  # noqa: E402
from wsproto.handshake import H11Handshake  # noqa: E402
from wsproto.utilities import RemoteProtocolError as WSRemoteProtocolError  # noqa: E402

from tunnel.protocol.backend import _request_head, parse_101  # noqa: E402
from tunnel.protocol.upgrade import _websocket_ok  # noqa: E402

_names = st.sampled_from(["Upgrade", "Connection", "Sec-WebSocket-Accept", "X-A", "x_b", "Set-Cookie", "Bad Name", "", "Ü", "A:B"])
_values = st.one_of(
    st.sampled_from(["websocket", "Upgrade", "", " padded ", "a\tb", "é", "x\x7fy", "x\x00y", "a\r\nb: c", "v, w"]),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=12),
)


def _h11_response(data: bytes):
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "b"), ("Connection", "Upgrade"), ("Upgrade", "websocket")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    event = conn.next_event()
    return event, bytes(conn.trailing_data[0])


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(["HTTP/1.1 101 Switching Protocols", "HTTP/1.1 101", "HTTP/1.1 101 ", "HTTP/1.0 101 X", "HTTP/1.1 200 OK", "HTTP/1.1 101 caf\xe9", "HTTP/1.1 1010 X"]),
    st.lists(st.tuples(_names, _values), max_size=5),
    st.sampled_from([b"", b"\x81\x02hi", b"\r\n", b"HTTP/1.1 200 OK\r\n\r\n"]),
)
def test_parse_101_reads_what_h11_reads(status_line, headers, rest):
    head = (status_line + "\r\n" + "".join(f"{k}:{v}\r\n" for k, v in headers) + "\r\n").encode("latin-1")
    parsed = parse_101(head + rest)
    try:
        event, trailing = _h11_response(head + rest)
    except h11.RemoteProtocolError:
        assert parsed is None  # what h11 refuses, the fast path leaves to h11
        return
    if parsed is None:
        return  # left to h11, which reads it as before
    response, length = parsed
    assert isinstance(event, h11.InformationalResponse) and event.status_code == 101
    assert response.reason == event.reason.decode("latin-1")
    assert response.headers == [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers.raw_items()]
    assert (head + rest)[length:] == trailing


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(["GET", "POST", "G ET", ""]),
    st.sampled_from(["/", "/a?b=c", "/a b", "/é", "*"]),
    st.lists(st.tuples(_names, _values), max_size=5),
)
def test_request_head_writes_what_h11_writes(method, target, headers):
    headers = [("Host", "b"), *headers]
    fast = _request_head(method, target, headers)
    try:
        wire = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]  # as read from the client
        want = h11.Connection(h11.CLIENT).send(h11.Request(method=method.encode("ascii"), target=target.encode("ascii"), headers=wire))
    except (h11.LocalProtocolError, UnicodeError):
        assert fast is None  # h11 refuses it: the slow path answers with h11's reason
        return
    if fast is not None:
        assert fast == want


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
        _, head = parse(raw)
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


@pytest.mark.parametrize(
    "host, ok",
    [("xn--zz", True), ("example.test:8080", True), ("[::1]:80", True), ("10.0.0.1", True), ("caf\xe9", False), ("a b", False), ("a,b", False)],
)
def test_host_header_syntax(host, ok):
    raw = upgrade_request(host=host)
    if ok:
        _, head = parse(raw)
        assert validate_upgrade(head, "websocket") == KEY  # an IDNA-looking name is not wsproto's 500
    else:
        with pytest.raises(BadRequest, match="Host"):
            parse(raw.replace(host.encode(), host.encode("latin-1")))


def test_two_host_headers_are_refused():
    with pytest.raises(BadRequest, match="Host"):
        parse(upgrade_request(extra="Host: other.test"))


def test_direct_head_falls_back_to_h11_for_other_answers():
    hs = _hs()
    assert hs.request_bytes() == b"GET /x HTTP/1.1\r\nHost: b\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    assert hs.feed(b"HTTP/1.1 403 Forbidden\r\nContent-") is None
    resp = hs.feed(b"Length: 2\r\n\r\nno")
    assert resp.status == 403
    assert hs.conn.their_state is h11.SEND_BODY  # h11 was brought up to date for the body
    assert isinstance(hs.conn.next_event(), h11.Data)


def test_direct_head_with_bare_lf_101_is_read_by_h11():
    hs = _hs()
    hs.request_bytes()
    resp = hs.feed(f"HTTP/1.1 101 Switching Protocols\nUpgrade: websocket\nConnection: Upgrade\nSec-WebSocket-Accept: {ACCEPT}\n\nxy".encode())
    assert resp is not None and resp.status == 101
    hs.check_switch(resp)
    assert hs.trailing == b"xy"


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(["GET / HTTP/1.1", "GET /a?b HTTP/1.1", "POST /p HTTP/1.1", "GET  / HTTP/1.1", "GET / HTTP/1.0", "CONNECT a:1 HTTP/1.1", "GET /\x80 HTTP/1.1", "get / HTTP/1.1"]),
    st.lists(
        st.tuples(
            st.sampled_from(["Host", "host", "Upgrade", "Connection", "Content-Length", "Transfer-Encoding", "X-A", "Bad Name", " X", "X:"]),
            _values,
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
