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
        ProxyPass /q "ws://b/it's" upgrade=websocket
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


@pytest.mark.parametrize(
    "line",
    [
        "ProxyPass /q ws://b/ # trailing comment",
        "Timeout 5 #seconds",
        "ServerAlias a.test #b.test",  # httpd would take "#b.test" as one more alias
    ],
)
def test_a_trailing_comment_is_an_error_naming_file_and_line(line: str) -> None:
    from tunnel.config import ConfigError

    with pytest.raises(ConfigError) as info:
        conf(f"# first\n<VirtualHost *:80>\n{line}\n</VirtualHost>\n")
    err = info.value
    assert (err.file, err.line) == ("t.conf", 3)
    assert "a comment must stand on its own line" in err.message and "#" in err.message


def test_a_quoted_hash_word_is_a_value_not_a_comment() -> None:
    c = conf('ProxyPass /q ws://b/ "#"\n'.replace(' "#"', "") + 'LogFormat "%h #x" "#nick"\n')
    assert c.scope.rules[0].path == "/q"
