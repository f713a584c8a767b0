"""The configuration's lexical rules (httpd's ap_cfg_getline and ap_getword_conf).

* A physical line ending in ``\\`` (trailing blanks ignored) continues on the next one;
  the logical line is numbered by its first physical line. Joining happens before
  comments are recognised, so a comment ending in ``\\`` swallows the next line, as in
  httpd.
* A line whose first non-blank character is ``#`` is a comment. **tunnel:** a word
  starting with ``#`` after a blank also ends the line (httpd rejects such trailing
  comments with "takes N arguments"; accepting them costs nothing).
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
    """ap_getword_conf over a whole line; a word starting with ``#`` ends it."""
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
            break
        start = i
        while i < n and not line[i].isspace():
            i += 1
        words.append(line[start:i])
    return words

