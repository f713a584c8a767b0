"""protocol/heads.py: what an open tunnel keeps of its heads is shared between tunnels
that hold equal lines (bounded), in lists of their exact size."""

from __future__ import annotations

import sys

from tunnel.protocol import heads
from tunnel.protocol.heads import RequestHead, kept_lines


def _fresh(text: str) -> str:
    return "".join(list(text))  # an equal string that is not the same object


def test_equal_kept_lines_of_two_tunnels_are_one_object():
    names = frozenset({"upgrade", "user-agent"})
    a = kept_lines([(_fresh("Upgrade"), _fresh("websocket")), ("Date", "x")], names)
    b = kept_lines([(_fresh("Upgrade"), _fresh("websocket")), ("Server", "y")], names)
    assert a == b == [("Upgrade", "websocket")]
    assert a[0] is b[0] and a is not b  # the line shared, each tunnel its own list


def test_only_the_named_lines_are_kept_in_a_list_of_exact_size():
    names = frozenset({"user-agent"})
    lines = [("Host", "h"), ("User-Agent", _fresh("ua/1")), ("Cookie", "c")]
    kept = kept_lines(lines, names)
    assert kept == [("User-Agent", "ua/1")]
    assert sys.getsizeof(kept) == sys.getsizeof([None])  # no room to grow held
    assert kept_lines(lines, frozenset()) == []


def test_a_kept_request_head_shares_method_and_version():
    one = RequestHead(_fresh("GET"), "/a", _fresh("1.1"), [("Host", "h")], 10).kept(frozenset())
    two = RequestHead(_fresh("GET"), "/b", _fresh("1.1"), [("Host", "h")], 12).kept(frozenset())
    assert one.method is two.method and one.http_version is two.http_version
    assert (one.target, two.target, one.raw_size, two.headers) == ("/a", "/b", 10, [])


def test_once_the_cache_is_full_new_values_are_kept_as_they_came(monkeypatch):
    monkeypatch.setattr(heads, "_shared_lines", {})
    monkeypatch.setattr(heads, "SHARED_MAX", 2)
    names = frozenset({"x"})
    for i in range(5):
        kept_lines([("X", f"v{i}")], names)
    assert len(heads._shared_lines) == 2  # bounded: unique values do not grow it
    late = [(_fresh("X"), _fresh("v4"))]
    assert kept_lines(late, names)[0] is late[0]  # not cached, the tunnel's own
    early = [(_fresh("X"), _fresh("v0"))]
    assert kept_lines(early, names)[0] is not early[0]  # cached earlier: shared
