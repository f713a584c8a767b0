"""Hostile input against mod_rewrite and access control on a live proxy: header
injection through a redirect built from back-references, request smuggling through a
[P] target, access and [F] bypasses through other spellings of a denied path, and
malformed input that must get a specific 4xx/5xx, never a traceback."""

from __future__ import annotations

import logging
import socket

import pytest

from tests.support.backends import Recorder
from tests.support.clients import read_head, status_of, upgrade_request
from tests.support.resources import fd_table, wait_fds_back
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(30)


def exchange(engine, request: bytes) -> tuple[int, bytes]:
    """One request on a fresh connection; the answer's status and head."""
    with socket.create_connection(engine.addresses[0], timeout=5) as sock:
        sock.sendall(request)
        head, _ = read_head(sock)
    return status_of(head), head


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: example.test\r\n{extra}\r\n".encode("latin-1")


def no_internal_error(caplog) -> None:
    assert "internal error" not in caplog.text
    assert "Traceback" not in caplog.text


# --- [R] redirects built from back-references -----------------------------------------

INJECTIONS = ["/r/%0d%0aSet-Cookie:x", "/r/%0aSet-Cookie:x", "/r/a%09b%7fc", "/r/%0d%0a%0d%0a<html>"]


@pytest.mark.parametrize("flags", ["[R]", "[R,NE]", "[R=301,NE,L]"])
@pytest.mark.parametrize("path", INJECTIONS)
def test_redirect_location_never_carries_cr_or_lf(make_proxy, caplog, flags, path):
    caplog.set_level(logging.INFO)
    engine = make_proxy(f"RewriteEngine On\nRewriteRule ^/r/(.*) http://elsewhere.example/$1 {flags}\n")
    status, head = exchange(engine, get(path))
    # escaped, the control characters are harmless %XX; under [NE] the answer is 500
    assert status == (500 if "NE" in flags else 302), head
    assert b"Set-Cookie" not in head.split(b"\r\n\r\n")[0].split(b"\r\n", 1)[0]
    for line in head.split(b"\r\n")[1:]:
        assert not line.lower().startswith(b"set-cookie"), head
        assert b"\r" not in line and b"\n" not in line
        assert all(b >= 0x20 and b != 0x7F for b in line), head
    no_internal_error(caplog)


@pytest.mark.parametrize("flags", ["[R]", "[R,NE]"])
def test_redirect_with_a_back_reference_in_the_authority(make_proxy, caplog, flags):
    caplog.set_level(logging.INFO)
    engine = make_proxy(f"RewriteEngine On\nRewriteRule ^/go/(.*) http://$1 {flags}\n")
    status, head = exchange(engine, get("/go/evil.example%0d%0aSet-Cookie:x"))
    assert status == 500, head  # the host part is never escaped: refused
    for line in head.split(b"\r\n")[1:]:
        assert not line.lower().startswith(b"set-cookie"), head
        assert all(b >= 0x20 and b != 0x7F for b in line), head
    no_internal_error(caplog)


def test_redirect_from_a_header_variable(make_proxy, caplog):
    caplog.set_level(logging.INFO)
    engine = make_proxy("RewriteEngine On\nRewriteRule ^/h http://x.example/%{HTTP:X-To} [R,NE]\n")
    status, head = exchange(engine, get("/h", "X-To: a\x80b c\r\n"))
    assert status == 302, head
    assert b"\r\nLocation: http://x.example/a%80b c\r\n" in head + b"\r\n", head
    no_internal_error(caplog)


# --- [P] targets built from back-references -------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["//evil.example/x", "/@evil.example/x", "/a%20b%0d%0aHost:%20evil", "/a%3Fb", "/a%23b", "/%2e%2e%2fx"],
)
def test_proxy_target_from_a_back_reference_stays_on_the_backend(make_proxy, caplog, path):
    caplog.set_level(logging.INFO)
    with Recorder("BACKEND") as backend:
        engine = make_proxy(f"RewriteEngine On\nRewriteRule ^/(.*) ws://127.0.0.1:{backend.port}/$1 [P]\n")
        status, head = exchange(engine, upgrade_request(path))
        assert status in (101, 400, 403, 404), head
        for seen in backend.heads:
            request_line, *fields = seen.split(b"\r\n")
            assert request_line.count(b" ") == 2, request_line
            assert request_line.endswith(b" HTTP/1.1")
            hosts = [f for f in fields if f.lower().startswith(b"host:")]
            assert hosts == [f"Host: 127.0.0.1:{backend.port}".encode()], seen
    no_internal_error(caplog)


@pytest.mark.parametrize(
    "path",
    [
        "/p/evil.example:99999/x",
        "/p/%20/x",
        "/p/a%0d%0ab/x",
        "/p/user@/x",
        "/p/[::1/x",
        "/p/:80/x",
        "/p/a:b:c/x",
        "/p/" + "a" * 70 + ".example/x",  # a DNS label too long for the resolver
        "/p/" + "a" * 300 + "/x",
        "/p/%C3%A9.example/x",
        "/p/a..b/x",
    ],
)
def test_proxy_host_from_a_back_reference_is_a_valid_url_or_an_error(make_proxy, caplog, path):
    caplog.set_level(logging.INFO)
    engine = make_proxy("RewriteEngine On\nRewriteRule ^/p/([^/]+)/(.*) ws://$1/$2 [P]\n")
    status, head = exchange(engine, upgrade_request(path))
    assert 400 <= status < 600, head
    no_internal_error(caplog)
    for record in caplog.records:  # a client's CR/LF cannot forge error-log lines
        assert "\n" not in record.getMessage() and "\r" not in record.getMessage()


# --- access: <Location /admin> Require all denied -------------------------------------

BYPASSES = [
    "/admin",
    "/admin/",
    "/admin/x",
    "/x/../admin",
    "//admin",
    "/./admin",
    "/%61dmin",
    "/%61dmin/x",
    "/x/%2e%2e/admin",
    "/x/%2E%2E/admin",
    "/.//admin",
    "///admin/",
    "http://other.example/admin",
    "http://other.example//admin/x",
    "HTTP://example.test/%61dmin",
]


@pytest.mark.parametrize("path", BYPASSES)
def test_location_deny_cannot_be_bypassed(make_proxy, caplog, path):
    caplog.set_level(logging.INFO)
    with Recorder("BACKEND") as backend:
        engine = make_proxy(
            f"ProxyPass / ws://127.0.0.1:{backend.port}/\n<Location /admin>\nRequire all denied\n</Location>\n"
        )
        status, head = exchange(engine, upgrade_request(path))
        assert status in (400, 403), (path, head)
        assert backend.heads == []
        # the proxy is still serving
        status, head = exchange(engine, upgrade_request("/public"))
        assert status == 101, head
    no_internal_error(caplog)


@pytest.mark.parametrize("path", BYPASSES)
def test_location_deny_cannot_be_bypassed_through_a_rewrite(make_proxy, caplog, path):
    """A rule that rewrites every path under /app leaves /admin's denial in force."""
    caplog.set_level(logging.INFO)
    with Recorder("BACKEND") as backend:
        engine = make_proxy(
            "RewriteEngine On\n"
            f"RewriteRule ^/(.*) ws://127.0.0.1:{backend.port}/app/$1 [P]\n"
            "<Location /admin>\nRequire all denied\n</Location>\n"
        )
        status, head = exchange(engine, upgrade_request(path))
        assert status in (400, 403), (path, head)
        assert backend.heads == []
    no_internal_error(caplog)


@pytest.mark.parametrize("path", BYPASSES)
def test_rewrite_forbidden_cannot_be_bypassed(make_proxy, caplog, path):
    caplog.set_level(logging.INFO)
    with Recorder("BACKEND") as backend:
        engine = make_proxy(
            f"RewriteEngine On\nRewriteRule ^/admin - [F]\nProxyPass / ws://127.0.0.1:{backend.port}/\n"
        )
        status, head = exchange(engine, upgrade_request(path))
        assert status in (400, 403), (path, head)
        assert backend.heads == []
    no_internal_error(caplog)


def test_access_ignores_x_forwarded_for(make_proxy):
    with Recorder("BACKEND") as backend:
        engine = make_proxy(f"ProxyPass / ws://127.0.0.1:{backend.port}/\nRequire ip 10.0.0.0/8\n")
        status, head = exchange(engine, upgrade_request("/", extra="X-Forwarded-For: 10.1.2.3\r\n"))
        assert status == 403, head
        assert backend.heads == []


@pytest.mark.parametrize(
    "extra",
    [
        "X-Token: caf\xe9\r\n",
        "X-Token: \x80\xff\xfe\r\n",
        "X-Token: " + "a" * 7000 + "\r\n",
        "",
    ],
)
def test_require_expr_on_odd_headers_never_raises(make_proxy, caplog, extra):
    caplog.set_level(logging.INFO)
    with Recorder("BACKEND") as backend:
        engine = make_proxy(
            f"ProxyPass / ws://127.0.0.1:{backend.port}/\n"
            "Require expr \"%{HTTP:X-Token} =~ /^(a+)+$/ || %{HTTP:X-Token} == ''\"\n"
        )
        status, head = exchange(engine, upgrade_request("/", extra=extra))
        assert status in (101, 403), head
    no_internal_error(caplog)


def test_rewrite_env_in_the_access_log_is_escaped(make_proxy, tmp_path):
    log = tmp_path / "access.log"
    with Recorder("BACKEND") as backend:
        engine = make_proxy(
            "RewriteEngine On\n"
            "RewriteRule ^/e/(.*) - [E=WHO:$1]\n"
            "RewriteCond %{HTTP:X-Name} (.*)\n"
            "RewriteRule ^/e/ - [E=NAME:%1]\n"
            f'CustomLog {log} "%{{WHO}}n %{{NAME}}n %{{rewrite}}n"\n'
            f"ProxyPass / ws://127.0.0.1:{backend.port}/\n"
        )
        status, _ = exchange(engine, upgrade_request("/e/a%0a%22b%5c", extra='X-Name: x"\x80y\r\n'))
        assert status == 101
        wait_for(lambda: log.exists() and log.read_bytes().endswith(b"\n"), what="the access log line")
        line = log.read_bytes()
        assert line.count(b"\n") == 1, line
        assert b"\\n" in line and b'\\"' in line and b"\\\\" in line, line
        assert b"\\xc2\\x80" in line, line  # the helper sends the header as UTF-8


HOSTILE = [
    get("/r/%0d%0aSet-Cookie:x"),
    get("/go/evil%0d%0a"),
    get("/h", "X-To: a\x80b\r\n"),
    upgrade_request("/p/a%0d%0ab/x"),
    upgrade_request("/p/" + "a" * 300 + "/x"),
    upgrade_request("/p/%20/x"),
    upgrade_request("/x/../admin"),
    upgrade_request("/%61dmin"),
    upgrade_request("/%2e%2e/admin"),
    upgrade_request("/%00"),
    upgrade_request("/a%2fb"),
    upgrade_request("/a%zz"),
    b"GET http://other.example/admin HTTP/1.1\r\nHost: example.test\r\n\r\n",
    b"GET ftp://x/ HTTP/1.1\r\nHost: example.test\r\n\r\n",
]


def test_hostile_requests_leave_no_fd_behind(make_proxy, caplog):
    caplog.set_level(logging.INFO)
    with Recorder("BACKEND") as backend:
        engine = make_proxy(
            "RewriteEngine On\n"
            "RewriteRule ^/r/(.*) http://x.example/$1 [R,NE]\n"
            "RewriteRule ^/go/(.*) http://$1 [R]\n"
            "RewriteRule ^/h http://x.example/%{HTTP:X-To} [R,NE]\n"
            "RewriteRule ^/p/([^/]*)/(.*) ws://$1/$2 [P]\n"
            f"ProxyPass / ws://127.0.0.1:{backend.port}/\n"
            "<Location /admin>\nRequire all denied\n</Location>\n"
        )
        exchange(engine, get("/warm-up"))
        wait_for(lambda: len(backend.heads) == 1, what="the warm-up at the backend")
        for _ in range(2):  # the second round must end with the fds the first ended with
            settled = fd_table()
            statuses = [exchange(engine, request)[0] for request in HOSTILE]
            assert statuses[2] == 302 and all(400 <= s < 600 for s in statuses[:2] + statuses[3:]), statuses
            wait_fds_back(settled, extra=1, what="the hostile connections' fds closed")
        assert len(backend.heads) == 1  # only the warm-up reached the backend
    no_internal_error(caplog)


@pytest.mark.parametrize("path", ["/admin;x", "/ADMIN", "/admin.json", "/%41DMIN;jsessionid=1", "/x/../Admin"])
def test_location_match_recipe_covers_the_spellings_a_backend_may_fold(make_proxy, path):
    """<Location /admin> leaves /admin;x to the backend (as httpd does); the documented
    <LocationMatch> denies it too."""
    with Recorder("BACKEND") as backend:
        engine = make_proxy(
            f"ProxyPass / ws://127.0.0.1:{backend.port}/\n"
            '<LocationMatch "(?i)^/admin([;./]|$)">\nRequire all denied\n</LocationMatch>\n'
        )
        status, head = exchange(engine, upgrade_request(path))
        assert status == 403, head
        assert exchange(engine, upgrade_request("/administrators"))[0] == 101
        assert len(backend.heads) == 1


@pytest.mark.parametrize(
    ("path", "encoded_slashes", "expected"),
    [
        ("/%252e%252e/admin", "Off", b"GET /app/%2e%2e/admin HTTP/1.1"),
        ("/x/%252E%252E/%252E%252E/admin", "Off", b"GET /app/x/%2E%2E/%2E%2E/admin HTTP/1.1"),
        ("/..%252fadmin", "On", b"GET /app/..%2fadmin HTTP/1.1"),
        ("/%252e/admin", "Off", b"GET /app/%2e/admin HTTP/1.1"),
        ("/ok/a%2520b", "Off", b"GET /app/ok/a%20b HTTP/1.1"),  # no dot-segment: as before
    ],
)
def test_a_double_encoded_dot_segment_cannot_leave_the_proxy_prefix(make_proxy, path, encoded_slashes, expected):
    """The client's path is decoded once; a [P] URL made from it is forwarded without
    resolving dot-segments again (as httpd does), so /app/ stays the prefix."""
    with Recorder("BACKEND") as backend:
        engine = make_proxy(
            f"AllowEncodedSlashes {encoded_slashes}\n"
            f"RewriteEngine On\nRewriteRule ^/(.*) ws://127.0.0.1:{backend.port}/app/$1 [P]\n"
        )
        status, head = exchange(engine, upgrade_request(path))
        assert status == 101, head
        assert backend.heads[0].split(b"\r\n")[0] == expected


def test_an_env_note_named_backend_cannot_forge_error_log_lines(make_proxy, caplog):
    caplog.set_level(logging.INFO)
    engine = make_proxy("RewriteEngine On\nRewriteRule ^/b/(.*) ws://$1/ [P,E=backend:$1]\n")
    status, head = exchange(engine, upgrade_request("/b/a%0d%0aERROR%20forged"))
    assert status == 500, head
    messages = [r.getMessage() for r in caplog.records if r.name == "tunnel.error"]
    assert messages and all("\n" not in m and "\r" not in m for m in messages), messages
    assert "\\x0d\\x0aERROR forged" in messages[0]
    no_internal_error(caplog)


@pytest.mark.parametrize("path", ["/%252e%252e/admin", "/x/%252E%252E/admin", "/..%252fadmin"])
def test_the_documented_rule_refuses_double_encoded_dots(make_proxy, path):
    with Recorder("BACKEND") as backend:
        engine = make_proxy(
            "RewriteEngine On\n"
            "RewriteRule %2e|%2f - [F,NC]\n"
            f"RewriteRule ^/(.*) ws://127.0.0.1:{backend.port}/app/$1 [P]\n"
        )
        assert exchange(engine, upgrade_request(path))[0] == 403
        assert exchange(engine, upgrade_request("/ok/%2e/x"))[0] == 101  # a single-encoded dot is resolved
        assert backend.heads[0].split(b"\r\n")[0] == b"GET /app/ok/x HTTP/1.1"
        assert len(backend.heads) == 1


def _dual_stack_ok() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.bind(("::", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _dual_stack_ok(), reason="no dual-stack IPv6 socket here")
@pytest.mark.parametrize(
    ("rule", "status"),
    [
        ("Require ip 127.0.0.1", 101),
        ("Require ip 127.0.0.0/8", 101),
        ("Require local", 101),
        ("Require ip 10.0.0.0/8", 403),
        ("Require ip ::1", 403),
        ("Require expr \"%{REMOTE_ADDR} -ipmatch '127.0.0.0/8'\"", 101),
    ],
)
def test_ipv4_mapped_peer_on_a_dual_stack_listener(make_proxy, rule, status):
    """A client reaching [::]:port over IPv4 is seen as ::ffff:127.0.0.1; it matches
    IPv4 networks as httpd matches it."""
    with Recorder("BACKEND") as backend:
        engine = make_proxy(f"Listen [::]:0\nProxyPass / ws://127.0.0.1:{backend.port}/\n{rule}\n")
        port = engine.addresses[0][1]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(upgrade_request("/"))
            head, _ = read_head(sock)
        assert status_of(head) == status, head
