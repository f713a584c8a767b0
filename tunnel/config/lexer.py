"""The configuration's lexical rules (httpd's ap_cfg_getline and ap_getword_conf).

* A physical line ending in ``\\`` (trailing blanks ignored) continues on the next one;
  the logical line is numbered by its first physical line. Joining happens before
  comments are recognised, so a comment ending in ``\\`` swallows the next line, as in
  httpd.
* A line whose first non-blank character is ``#`` is a comment; comments stand on
  their own line only. httpd reads a ``#`` word after a directive as one more argument
  (an error for most directives, a silently wrong value for some), so an unquoted word
  starting with ``#`` after the directive name is a config error here, naming it
  (quote it to mean the characters).
* Words are split on blanks. A word *starting* with ``"`` or ``'`` runs to the matching
  quote, ``\\"`` (or ``\\'``) standing for the quote itself; a quote elsewhere is a
  plain character.
* ``<Name args>`` opens a section, ``</Name>`` closes it. Names are case-insensitive.
"""

from __future__ import annotations

from collections.abc import Iterator

from .values import BadDirective


def logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(first line number, logical line) with continuations joined, blanks stripped."""
    pending: list[str] = []
    first = 0
    for number, raw in enumerate(text.split("\n"), start=1):  # LF only ends a line, as in httpd
        line = raw.rstrip()
        if not pending:
            first = number
        if line.endswith("\\"):
            pending.append(line[:-1])
            continue
        pending.append(line)
        yield first, " ".join(p.strip() for p in pending if p.strip())
        pending = []
    if pending:
        yield first, " ".join(p.strip() for p in pending if p.strip())


def split_words(line: str) -> list[str]:
    """ap_getword_conf over a whole line; an unquoted word starting with ``#`` after the
    first is refused (a trailing comment, which httpd does not have)."""
    words: list[str] = []
    i, n = 0, len(line)
    while i < n:
        if line[i].isspace():
            i += 1
            continue
        quote = line[i]
        if quote in "\"'":
            i += 1
            chars: list[str] = []
            while i < n and line[i] != quote:
                if line[i] == "\\" and i + 1 < n and line[i + 1] == quote:
                    i += 1
                chars.append(line[i])
                i += 1
            if i >= n:
                raise BadDirective(f"unterminated {quote} quote")
            i += 1
            words.append("".join(chars))
            continue
        if quote == "#" and words:
            raise BadDirective(
                f'"{line[i:].strip()}": a comment must stand on its own line (httpd reads a "#" after a '
                'directive as more arguments); move it to the line above, or quote the word if "#" is meant'
            )
        start = i
        while i < n and not line[i].isspace():
            i += 1
        words.append(line[start:i])
    return words

