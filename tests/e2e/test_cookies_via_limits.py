"""ProxyPassReverseCookie* (R103), ProxyVia (R104) and LimitRequestBody (R105) end to
end: real backends record what reached them, raw clients read what came back."""

from __future__ import annotations

import os
import re
import socket

import pytest

from tests.support.backends import ACCEPT, Answering, HTTPBackend, Recorder
from tests.support.clients import http_get, raw_upgrade, read_head, recv_exactly, recv_until_eof, status_of
from tests.support.waiting import wait_for
from tunnel import __version__

pytestmark = pytest.mark.timeout(30)


def header(head: bytes, name: str) -> list[str]:
    return [m.decode() for m in re.findall(rb"(?im)^" + name.encode() + rb": *([^\r\n]*)", head)]


# -- R103: cookie paths and domains ----------------------------------------------------------------

COOKIES = b"Set-Cookie: sid=1; Path=/internal/app; Domain=Backend.Local; HttpOnly\r\nSet-Cookie: other=2; path=/elsewhere\r\n"
MAPS = "ProxyPassReverseCookiePath /internal/ /app/\nProxyPassReverseCookieDomain backend.local example.com\n"


def test_set_cookie_paths_and_domains_are_mapped_in_a_plain_answer(make_proxy):
    backend = Answering(b"HTTP/1.1 200 OK\r\n" + COOKIES + b"Content-Length: 2\r\n\r\nok", close=True)
    try:
        engine = make_proxy(MAPS + f"ProxyPass /app/ http://127.0.0.1:{backend.port}/internal/\n")
        status, head, body = http_get(engine.addresses[0], "/app/")
        assert (status, body) == (200, b"ok")
        assert header(head, "Set-Cookie") == ["sid=1; Path=/app/; Domain=example.com; HttpOnly", "other=2; path=/elsewhere"]
    finally:
        backend.close()


def test_set_cookie_is_mapped_in_the_101_too(make_proxy):
    answer = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        + f"Sec-WebSocket-Accept: {ACCEPT}\r\n".encode()
        + COOKIES
        + b"\r\n"
    )
    backend = Answering(answer)
    try:
        engine = make_proxy(MAPS + f"ProxyPass /app/ ws://127.0.0.1:{backend.port}/internal/\n")
        sock, head, _ = raw_upgrade(engine.addresses[0], "/app/")
        assert status_of(head) == 101
        assert header(head, "Set-Cookie") == ["sid=1; Path=/app/; Domain=example.com; HttpOnly", "other=2; path=/elsewhere"]
        sock.close()
    finally:
        backend.close()


def test_a_locations_cookie_map_applies_under_it_only(make_proxy):
    backend = Answering(b"HTTP/1.1 200 OK\r\nSet-Cookie: s=1; Path=/internal/\r\nContent-Length: 0\r\n\r\n", close=True)
    try:
        engine = make_proxy(
            "<Location /app/>\n  ProxyPassReverseCookiePath /internal/ /app/\n</Location>\n"
            f"ProxyPass / http://127.0.0.1:{backend.port}/\n"
        )
        _, head, _ = http_get(engine.addresses[0], "/app/x")
        assert header(head, "Set-Cookie") == ["s=1; Path=/app/"]
        _, head, _ = http_get(engine.addresses[0], "/other")
        assert header(head, "Set-Cookie") == ["s=1; Path=/internal/"]
    finally:
        backend.close()


# -- R104: ProxyVia ------------------------------------------------------------------------------------


@pytest.fixture
def http_backend():
    with HTTPBackend() as backend:
        yield backend


def _get(engine, extra: str = "", host: str = "t") -> tuple[int, bytes]:
    with socket.create_connection(engine.addresses[0], timeout=5) as sock:
        sock.sendall(f"GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n".encode())
        data = recv_until_eof(sock)
    head = data.partition(b"\r\n\r\n")[0]
    return status_of(head), head


def test_via_on_adds_the_entry_both_ways(make_proxy, http_backend):
    engine = make_proxy(f"ProxyVia On\nProxyPass / http://127.0.0.1:{http_backend.port}/\n")
    port = engine.addresses[0][1]
    status, head = _get(engine)
    assert status == 200
    assert http_backend.seen[-1][2]["via"] == f"1.1 proxy.test:{port}"  # the listener's port: Host named none
    assert header(head, "Via") == [f"1.1 proxy.test:{port}"]
    _get(engine, "Via: 1.0 upstream\r\n", host="front.example:80")  # the Host's port, the default one: left out
    assert http_backend.seen[-1][2]["via"] == "1.0 upstream, 1.1 proxy.test"


def test_via_full_names_the_product_and_the_server_name(make_proxy, http_backend):
    engine = make_proxy(f"ServerName front.example\nProxyVia Full\nProxyPass / http://127.0.0.1:{http_backend.port}/\n")
    _, head = _get(engine, host="whatever:8443")
    entry = f"1.1 front.example:8443 (tunnel/{__version__})"
    assert http_backend.seen[-1][2]["via"] == entry
    assert header(head, "Via") == [entry]


def test_via_block_strips_the_clients_via(make_proxy, http_backend):
    engine = make_proxy(f"ProxyVia Block\nProxyPass / http://127.0.0.1:{http_backend.port}/\n")
    _, head = _get(engine, "Via: 1.0 someone\r\n")
    assert "via" not in http_backend.seen[-1][2]
    assert header(head, "Via") == []


def test_via_off_passes_via_as_it_is(make_proxy, http_backend):
    engine = make_proxy(f"ProxyPass / http://127.0.0.1:{http_backend.port}/\n")
    _, head = _get(engine, "Via: 1.0 someone\r\n")
    assert http_backend.seen[-1][2]["via"] == "1.0 someone"
    assert header(head, "Via") == []


def test_via_on_a_tunnel_request_and_its_101(make_proxy):
    with Recorder("b") as backend:
        engine = make_proxy(f"ProxyVia On\nProxyPass / ws://127.0.0.1:{backend.port}/\n")
        port = engine.addresses[0][1]
        sock, head, rest = raw_upgrade(engine.addresses[0], "/x")
        assert status_of(head) == 101
        assert header(head, "Via") == [f"1.1 proxy.test:{port}"]
        assert recv_exactly(sock, 1, initial=rest) == b"b"  # the tunnel works
        assert re.search(rb"(?im)^via: 1\.1 proxy\.test:%d\r$" % port, backend.heads[0] + b"\r")
        sock.close()


# -- R105: LimitRequestBody ---------------------------------------------------------------------------------


def _post(engine, body: bytes, *, path: str = "/echo", extra: str = "") -> tuple[int, bytes, bytes]:
    with socket.create_connection(engine.addresses[0], timeout=5) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body)
        data = recv_until_eof(sock)
    head, _, rest = data.partition(b"\r\n\r\n")
    return status_of(head), head, rest


def test_a_content_length_over_the_limit_is_413_before_any_backend(make_proxy, http_backend):
    engine = make_proxy(f"LimitRequestBody 10\nProxyPass / http://127.0.0.1:{http_backend.port}/\n")
    status, head, body = _post(engine, b"x" * 11)
    assert status == 413 and b"413" in body
    assert header(head, "Connection") == ["close"]
    assert http_backend.accepted == 0  # never contacted
    status, _, body = _post(engine, b"y" * 10)  # at the limit: passes
    assert (status, body) == (200, b"y" * 10)


def test_the_413_comes_before_a_100_continue(make_proxy, http_backend):
    engine = make_proxy(f"LimitRequestBody 10\nProxyPass / http://127.0.0.1:{http_backend.port}/\n")
    with socket.create_connection(engine.addresses[0], timeout=5) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n")
        head, _ = read_head(sock)
    assert status_of(head) == 413  # not a 100: the body is never asked for
    assert http_backend.accepted == 0


def test_a_chunked_body_that_grows_over_the_limit_stops_there(make_proxy, http_backend):
    engine = make_proxy(f"LimitRequestBody 10\nProxyPass / http://127.0.0.1:{http_backend.port}/\n")
    with socket.create_connection(engine.addresses[0], timeout=5) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"8\r\naaaaaaaa\r\n8\r\nbbbbbbbb\r\n8\r\ncccccccc\r\n0\r\n\r\n"
        )
        data = recv_until_eof(sock)
    assert status_of(data) == 413
    # the backend was reached (the limit is not known in advance) and got the first chunk
    seen = wait_for(lambda: http_backend.seen, what="the request at the backend")
    assert http_backend.accepted == 1 and seen[0][:2] == ("POST", "/echo")
    http_backend.close()  # its handler has read all it was sent
    assert http_backend.body_progress <= 8  # the chunk that crossed the limit never went out


def test_limit_zero_is_no_limit_and_a_location_has_its_own(make_proxy, http_backend):
    engine = make_proxy(
        "LimitRequestBody 0\n<Location /echo/small>\n  LimitRequestBody 5\n</Location>\n"
        f"ProxyPass / http://127.0.0.1:{http_backend.port}/\n"
    )
    big = os.urandom(3 << 20)
    status, _, body = _post(engine, big)
    assert status == 200 and body == big
    assert _post(engine, b"123456", path="/echo/small")[0] == 413
    assert _post(engine, b"12345", path="/echo/small")[0] == 200


def test_the_default_limit_is_one_gibibyte(make_proxy, http_backend):
    engine = make_proxy(f"ProxyPass / http://127.0.0.1:{http_backend.port}/\n")
    with socket.create_connection(engine.addresses[0], timeout=5) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1073741825\r\n\r\n")
        head, _ = read_head(sock)
    assert status_of(head) == 413
    assert http_backend.accepted == 0
