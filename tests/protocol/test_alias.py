"""protocol/alias.py: mod_alias's matching and targets, and the server's own URL (R94, R95)."""

from __future__ import annotations

import re

import pytest

from tunnel.config.model import AliasRedirect, Location, Scope
from tunnel.protocol.alias import find_redirect, location_redirects, self_url, server_name_port

pytestmark = pytest.mark.timeout(30)

BASE = "http://proxy.test"


def prefix(path: str, url: str | None, status: int = 302) -> AliasRedirect:
    return AliasRedirect(path, url, status)


def regex(pattern: str, url: str, status: int = 302) -> AliasRedirect:
    return AliasRedirect(pattern, url, status, regex=re.compile(pattern))


@pytest.mark.parametrize(
    "rule, path, query, expected",
    [
        (prefix("/old", "http://new.test/n"), "/old", "", "http://new.test/n"),
        (prefix("/old", "http://new.test/n"), "/old/a b/c", "", "http://new.test/n/a%20b/c"),
        (prefix("/old", "http://new.test/n"), "/oldies", "", None),  # segment-aware
        (prefix("/old/", "http://new.test/n/"), "/old", "", None),
        (prefix("/old", "http://new.test/n"), "//old//x", "", "http://new.test/n//x"),  # as alias_match: the rest as it is
        (prefix("/old", "http://new.test/n"), "/old/x", "a=1&b", "http://new.test/n/x?a=1&b"),
        (prefix("/old", "http://new.test/n?k=v"), "/old/x", "a=1", "http://new.test/n?k=v/x"),  # target has ?: kept
        (prefix("/old", "/here"), "/old/x", "", "http://proxy.test/here/x"),
        (regex("^/f/(.*)$", "http://x.test/$1/&"), "/f/a b", "q", "http://x.test/a%20b//f/a%20b?q"),
        (regex("^/g/(.*)$", "http://x.test/\\$1?p=$1#frag"), "/g/z", "q", "http://x.test/$1?p=z#frag"),
        (regex("^/h", "no-scheme/$0"), "/h", "", "500"),
    ],
)
def test_find_redirect(rule, path, query, expected) -> None:
    found = find_redirect([rule], path, query, BASE)
    if expected is None:
        assert found is None
    elif expected == "500":
        assert found is not None and (found.status, found.location) == (500, None)
    else:
        assert found is not None and (found.status, found.location) == (rule.status, expected)


def test_a_non_redirect_status_has_no_location_and_the_first_match_wins() -> None:
    rules = [prefix("/a", None, 410), prefix("/a", "http://never/")]
    found = find_redirect(rules, "/a/b", "", BASE)
    assert found is not None and (found.status, found.location, found.rule) == (410, None, rules[0])


def test_location_redirects_in_fixup_order() -> None:
    own_outer = AliasRedirect("", "http://outer/", 301)
    listed_outer = prefix("/app/x", "http://outer-x/")
    own_inner = AliasRedirect("", "http://inner/", 302)
    listed_inner = prefix("/app/x", "http://inner-x/")
    locations = (
        Location("/app", redirects=(own_outer, listed_outer)),
        Location("/app/x", redirects=(own_inner, listed_inner)),
        Location("/other", redirects=(prefix("/other", "http://o/"),)),
    )
    # The last merged one-argument form first, then each block's list, the later block's first.
    assert location_redirects(locations, "/app/x/1") == [own_inner, listed_inner, listed_outer]
    assert location_redirects(locations, "/app/y") == [own_outer, listed_outer]
    assert location_redirects(locations, "/none") == []


@pytest.mark.parametrize(
    "scope, host, https, expected",
    [
        (Scope(), "a.test", False, ("a.test", 80, "http://a.test")),
        (Scope(), "a.test:8080", False, ("a.test", 8080, "http://a.test:8080")),
        (Scope(), "A.Test:443", True, ("a.test", 443, "https://a.test")),
        (Scope(server_name="canon.test", server_port=8443), "a.test", False, ("a.test", 8443, "http://a.test:8443")),
        (Scope(server_name="canon.test", use_canonical_name=True), "a.test:81", False, ("canon.test", 80, "http://canon.test")),
        (Scope(server_name="canon.test", server_port=8443, server_scheme="https", use_canonical_name=True), "a.test", False,
         ("canon.test", 8443, "https://canon.test:8443")),
        (Scope(), "", False, ("machine", 7000, "http://machine:7000")),
        (Scope(), "[::1]:9", False, ("[::1]", 9, "http://[::1]:9")),
    ],
)
def test_server_name_port_and_self_url(scope, host, https, expected) -> None:
    name, port, url = expected
    assert server_name_port(scope, host, https, "machine", 7000) == (name, port)
    assert self_url(scope, host, https, "machine", 7000) == url
