"""ProxyPassReverse (R77): the backend's URLs in Location, Content-Location and URI."""

from __future__ import annotations

import pytest

from tests.support.sansio import conf
from tunnel.protocol.reverse import reverse_map, reverse_map_headers

pytestmark = pytest.mark.timeout(30)

BASE = "https://proxy.example"


@pytest.mark.parametrize(
    ("value", "maps", "expected"),
    [
        ("http://b:8080/login", [("/", "http://b:8080/")], "https://proxy.example/login"),
        ("http://b:8080/app/x?y=1", [("/app/", "http://b:8080/app/")], "https://proxy.example/app/x?y=1"),
        ("http://b:8080/x", [("/ui/", "http://b:8080/")], "https://proxy.example/ui/x"),  # one slash dropped
        ("HTTP://B:8080/x", [("/", "http://b:8080/")], "https://proxy.example/x"),  # case-insensitive, as httpd
        ("http://other/x", [("/", "http://b:8080/")], "http://other/x"),  # no map: as it was
        ("/relative", [("/", "http://b:8080/")], "/relative"),
        ("http://b:8080/x", [("/first/", "http://b:8080/"), ("/second/", "http://b:8080/")], "https://proxy.example/first/x"),
    ],
)
def test_reverse_map(value, maps, expected):
    assert reverse_map(value, maps, base=BASE, balancers={}) == expected


def test_a_balancer_url_stands_for_each_member():
    c = conf(
        "<Proxy balancer://app>\n BalancerMember http://m1:81\n BalancerMember http://m2:82/sub\n</Proxy>\n"
        "ProxyPass /a/ balancer://app/\nProxyPassReverse /a/ balancer://app/\n"
    )
    maps = c.scope.reverse_maps
    assert maps == (("/a/", "balancer://app/"),)
    assert reverse_map("http://m2:82/sub/x", maps, base=BASE, balancers=c.balancers) == "https://proxy.example/a/x"
    assert reverse_map("http://m1:81/y", maps, base=BASE, balancers=c.balancers) == "https://proxy.example/a/y"


def test_only_the_three_headers_are_mapped():
    headers = [("Location", "http://b/x"), ("Content-Location", "http://b/y"), ("URI", "http://b/z"), ("Link", "http://b/w")]
    out = reverse_map_headers(headers, (("/", "http://b/"),), base=BASE, balancers={})
    assert out == [("Location", f"{BASE}/x"), ("Content-Location", f"{BASE}/y"), ("URI", f"{BASE}/z"), ("Link", "http://b/w")]


def test_parsing_contexts_and_inheritance():
    c = conf(
        "ProxyPassReverse / http://main/\n"
        "<Location /loc/>\n ProxyPassReverse http://inloc/\n</Location>\n"
        "<VirtualHost *:80>\n ServerName v\n ProxyPassReverse /v/ http://vhost/\n</VirtualHost>\n"
    )
    assert c.scope.reverse_maps == (("/", "http://main/"), ("/loc/", "http://inloc/"))
    assert c.vhosts[0].scope.reverse_maps == (("/", "http://main/"), ("/loc/", "http://inloc/"), ("/v/", "http://vhost/"))


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("ProxyPassReverse http://b/", 1, "ProxyPassReverse: expected PATH URL"),
        ("ProxyPassReverse / /notaurl", 1, 'expected a URL (http://host/..., balancer://name/...), got "/notaurl"'),
        ("ProxyPassReverse / http://b/ interpolate", 1, "interpolate is not supported"),
        ("<Location /x>\nProxyPassReverse /x http://b/\n</Location>", 2, "inside <Location> the path is the location's"),
        ("<LocationMatch ^/x>\nProxyPassReverse http://b/\n</LocationMatch>", 2, "not allowed in <LocationMatch>"),
        ("ProxyPass / ws://b/\nProxyPassReverse / balancer://nope/", 2, "ProxyPassReverse: balancer://nope is not defined"),
        ("ProxyRequests On", 1, "ProxyRequests: On is not supported: tunnel is a reverse proxy, not a forward proxy"),
        ("ProxyRequests maybe", 1, "ProxyRequests: expected On or Off"),
    ],
)
def test_errors_name_file_line_and_what(text, line, message):
    from tunnel.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        conf(text + "\n")
    assert info.value.line == line and message in str(info.value), str(info.value)


def test_proxy_requests_off_loads():
    assert conf("ProxyRequests Off\nProxyPass / ws://b/\n").scope.rules
