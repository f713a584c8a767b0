"""config/lexer.py: comments, continuations, quotes and case, numbered as httpd numbers them."""

from __future__ import annotations

import pytest

from tests.support.sansio import conf

pytestmark = pytest.mark.timeout(30)


def test_comments_continuations_quotes_and_case() -> None:
    c = conf(
        """\
        # a comment
            # an indented comment
        PROXYPASS /a \\
            ws://b/ \\
            timeout=4
        ProxyPass /q "ws://b/it's" upgrade=websocket   # trailing comment
        CustomLog "x y.log" "%h \\"%r\\" %>s"
        ProxyPass /last ws://b/
        """
    )
    a, q, last = c.scope.rules
    assert (a.path, a.timeout, a.line) == ("/a", 4.0, 3)
    assert q.target is not None and q.target.path == "/it's" and q.line == 6
    assert c.log.custom_logs == (("x y.log", '%h "%r" %>s'),)
    assert last.line == 8


def test_comment_continuation_swallows_next_line_like_httpd() -> None:
    assert conf("# comment \\\nNoSuchDirective\n").scope.rules == ()
