"""RewriteRules inside <Location>: httpd's per-directory semantics, live (R79).

At the fixup phase the rules see httpd's ``r->filename``: ``proxy:URL`` when a ProxyPass
took the request, else the document root and the path; the location's directory is
stripped when the subject starts with it. They run after access control and can send
the request elsewhere ([P]), answer it, or start it again on a new path.
"""

from __future__ import annotations

import pytest

from tests.support.backends import Recorder
from tests.support.clients import http_get, raw_upgrade, status_of
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def backend():
    with Recorder("app") as r:
        yield r


def _path_seen(head: bytes) -> str:
    return head.split(b" ", 2)[1].decode()


def _upgraded(addr, path: str) -> tuple[int, bytes]:
    sock, head, _ = raw_upgrade(addr, path)
    with sock:
        return status_of(head), head


def test_the_jupyter_layout_tunnels_upgrades_through_the_locations_rule(make_proxy, backend):
    port = backend.address[1]
    engine = make_proxy(
        "<Location /jupyter/>\n"
        f"  ProxyPass http://127.0.0.1:{port}/jupyter/\n"
        "  RewriteEngine On\n"
        "  RewriteCond %{HTTP:Upgrade} websocket [NC]\n"
        f"  RewriteRule /jupyter/(.*) ws://127.0.0.1:{port}/jupyter/$1 [P,L]\n"
        "</Location>\n"
    )
    addr = engine.addresses[0]
    status, _ = _upgraded(addr, "/jupyter/api/kernels/k1/channels?session=s")
    assert status == 101
    assert http_get(addr, "/jupyter/tree")[0] == 200
    wait_for(lambda: len(backend.heads) == 2)
    first, second = backend.heads
    assert _path_seen(first) == "/jupyter/api/kernels/k1/channels?session=s" and b"Upgrade: websocket" in first
    assert _path_seen(second) == "/jupyter/tree" and b"Upgrade" not in second


def test_an_anchored_pattern_does_not_see_the_url_path(make_proxy, backend):
    # httpd: the subject is "proxy:http://...", so "^/jupyter/" never matches there and
    # the request stays on the location's http:// route (its upgrade is not tunnelled).
    port = backend.address[1]
    engine = make_proxy(
        "<Location /jupyter/>\n"
        f"  ProxyPass http://127.0.0.1:{port}/jupyter/\n"
        "  RewriteEngine On\n"
        f"  RewriteRule ^/jupyter/(.*) ws://127.0.0.1:{port}/jupyter/$1 [P,L]\n"
        "</Location>\n"
    )
    status, _ = _upgraded(engine.addresses[0], "/jupyter/api/kernels/k1/channels")
    assert status == 200
    wait_for(lambda: backend.heads)
    assert b"Upgrade" not in backend.heads[0]


def test_without_a_proxypass_the_rules_see_the_file_path_and_can_proxy(make_proxy, backend):
    port = backend.address[1]
    engine = make_proxy(
        "DocumentRoot /srv/www\n"
        "<Location /live/>\n"
        "  RewriteEngine On\n"
        f"  RewriteRule ^/srv/www/live/(.*)$ ws://127.0.0.1:{port}/socket/$1 [P]\n"
        "</Location>\n"
    )
    addr = engine.addresses[0]
    assert _upgraded(addr, "/live/room1")[0] == 101
    assert http_get(addr, "/elsewhere")[0] == 404  # no location, no route
    wait_for(lambda: backend.heads)
    assert _path_seen(backend.heads[0]) == "/socket/room1"


def test_a_local_result_is_an_internal_redirect_through_every_step_again(make_proxy, backend):
    port = backend.address[1]
    engine = make_proxy(
        f"ProxyPass /new/ http://127.0.0.1:{port}/new/\n"
        "<Location /old/>\n"
        "  RewriteEngine On\n"
        "  RewriteBase /old/\n"
        "  RewriteRule old/(.*)$ /new/$1\n"
        "</Location>\n"
        "<Location /new/private/>\n"
        "  Require all denied\n"
        "</Location>\n"
    )
    addr = engine.addresses[0]
    assert http_get(addr, "/old/page?q=1")[0] == 200
    assert http_get(addr, "/old/private/x")[0] == 403  # the new path's access rules apply
    wait_for(lambda: backend.heads)
    assert [_path_seen(h) for h in backend.heads] == ["/new/page?q=1"]


def test_endless_internal_redirects_end_in_500(make_proxy, backend):
    engine = make_proxy(
        f"ProxyPass /loop/ http://127.0.0.1:{backend.address[1]}/loop/\n"
        "<Location /loop/>\n"
        "  RewriteEngine On\n"
        "  RewriteRule ^proxy:http://[^/]*/loop/(.*)$ /loop/a$1\n"
        "</Location>\n"
    )
    status, _, body = http_get(engine.addresses[0], "/loop/x")
    assert status == 500 and b"internal redirects" in body
    assert backend.accepted == 0


def test_access_control_comes_first_and_flags_answer(make_proxy, backend):
    port = backend.address[1]
    engine = make_proxy(
        "RewriteEngine On\n"  # inherited by the locations' per-directory state
        f"ProxyPass / http://127.0.0.1:{port}/\n"
        "<Location /private/>\n"
        "  Require all denied\n"
        f"  RewriteRule (.*) ws://127.0.0.1:{port}/ [P]\n"
        "</Location>\n"
        "<Location /gone/>\n"
        "  RewriteRule . - [G]\n"
        "</Location>\n"
        "<Location /moved/>\n"
        "  RewriteRule /moved/(.*)$ http://example.test/new/$1 [R=301]\n"
        "</Location>\n"
        "<Location /off/>\n"
        "  RewriteEngine Off\n"
        "  RewriteRule . - [F]\n"
        "</Location>\n"
    )
    addr = engine.addresses[0]
    assert http_get(addr, "/private/x")[0] == 403
    assert http_get(addr, "/gone/x")[0] == 410
    status, head, _ = http_get(addr, "/moved/a")
    assert status == 301 and b"Location: http://example.test/new/a\r\n" in head
    assert http_get(addr, "/off/x")[0] == 200  # RewriteEngine Off in the location: its rules do not run
    wait_for(lambda: backend.heads)
    assert [_path_seen(h) for h in backend.heads] == ["/off/x"]


def test_a_later_location_without_rules_replaces_the_earlier_ones(make_proxy, backend):
    # httpd's per-directory merge: the last merged <Location> brings its own (empty) rules.
    port = backend.address[1]
    engine = make_proxy(
        "RewriteEngine On\n"
        f"ProxyPass / http://127.0.0.1:{port}/\n"
        "<Location /a/>\n  RewriteRule . - [F]\n</Location>\n"
        "<Location /a/b/>\n  ProxyPreserveHost On\n</Location>\n"
    )
    addr = engine.addresses[0]
    assert http_get(addr, "/a/x")[0] == 403
    assert http_get(addr, "/a/b/x")[0] == 200
