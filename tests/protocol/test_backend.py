"""protocol/backend.py, sans-IO: the forwarded headers, the request bytes, the
backend's head (the fast paths agree with h11) and the 101 checks. No sockets."""

from __future__ import annotations

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.clients import ACCEPT, KEY, upgrade_request
from tests.support.sansio import HEADER_NAMES, HEADER_VALUES, parse_head
from tunnel.errors import BadGateway
from tunnel.protocol.backend import BackendHandshake, _request_head, backend_headers, client_switch_bytes, parse_101

pytestmark = pytest.mark.timeout(30)


def test_backend_headers_strip_and_add():
    raw = upgrade_request(
        extra="Connection: X-Forwarded-For, X-Secret\r\nX-Secret: s\r\nKeep-Alive: 5\r\nProxy-Authorization: Basic x\r\n"
        "TE: trailers\r\nOrigin: http://o\r\nSec-WebSocket-Protocol: chat\r\nX-Forwarded-For: 9.9.9.9"
    )
    _, head = parse_head(raw)
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
    _, head = parse_head(upgrade_request(extra="X-Forwarded-For: 1.1.1.1"))
    hdrs = backend_headers(head, host="b", upgrade_token=None, client_ip="2.2.2.2", add_headers=False, preserve_host=True)
    d = {k.lower(): v for k, v in hdrs}
    assert d["host"] == "example.test" and d["x-forwarded-for"] == "1.1.1.1"
    assert "upgrade" not in d and "connection" not in d
    hdrs = backend_headers(head, host="b", upgrade_token=None, client_ip="2.2.2.2")
    assert {k.lower(): v for k, v in hdrs}["x-forwarded-for"] == "1.1.1.1, 2.2.2.2"


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


_STATUS_LINES = st.sampled_from(
    [b"HTTP/1.1 101 Switching Protocols", b"HTTP/1.1 100 Continue", b"HTTP/1.1 103 Early Hints", b"HTTP/1.1 200 OK",
     b"HTTP/1.0 404 Not Found", b"HTTP/1.1 999 X", b"HTTP/1.1 1010", b"HTTP/2 101", b"garbage"]
)
_RESPONSE_FIELDS = st.sampled_from(
    [b"Upgrade: websocket", b"Connection: Upgrade", b"Sec-WebSocket-Accept: " + ACCEPT.encode(), b"Upgrade: h2c",
     b"Sec-WebSocket-Accept: AAAA", b"Content-Length: 2", b"Transfer-Encoding: chunked", b"Bad Name: x", b"X: \x00"]
)
#: Random bytes, and responses built from plausible pieces (whole or cut anywhere).
_BACKEND_BYTES = st.one_of(
    st.binary(max_size=400),
    st.builds(
        lambda line, fields, eol, rest, cut: (line + eol + b"".join(f + eol for f in fields) + eol + rest)[:cut],
        _STATUS_LINES,
        st.lists(_RESPONSE_FIELDS, max_size=5),
        st.sampled_from([b"\r\n", b"\n"]),
        st.sampled_from([b"", b"\x81\x02hi", b"HTTP/1.1 200 OK\r\n\r\n"]),
        st.integers(min_value=1, max_value=400),
    ),
)


@settings(max_examples=300, deadline=None)
@given(_BACKEND_BYTES)
def test_any_backend_bytes_give_a_head_none_or_bad_gateway(data):
    """Whatever the backend sends: a whole head (101 or a final status), None while the
    head is incomplete (and then the backend closing is a 502), or a 502; a 101 is a
    tunnel only if check_switch accepts it. Nothing else escapes."""
    hs = _hs()
    hs.request_bytes()
    try:
        resp = hs.feed(data)
    except BadGateway as exc:
        assert exc.status == 502 and exc.reason.startswith("backend "), exc.reason
        return
    if resp is None:
        assert data, "EOF (b'') is never 'need more'"
        with pytest.raises(BadGateway, match="closed the connection before a response head"):
            hs.feed(b"")
        return
    assert resp.status == 101 or 200 <= resp.status <= 999, resp.status  # other 1xx are skipped
    assert resp.http_version in ("1.0", "1.1"), resp.http_version
    if resp.status == 101:
        try:
            hs.check_switch(resp)
        except BadGateway as exc:
            assert exc.status == 502 and exc.reason, exc
        else:  # a valid switch: the bytes after the head are the tunnel's first bytes
            assert resp.get("sec-websocket-accept") == ACCEPT
            assert data.endswith(hs.trailing)


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
    st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=5),
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
    st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=5),
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
