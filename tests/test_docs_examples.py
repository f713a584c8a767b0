"""Every ```apache block in README.md and docs/ parses: what a reader copies works
(trailing comments, for one, are an error since R89)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tunnel.config import parse

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).parent.parent
BLOCKS = [
    (path.relative_to(ROOT), text[: m.start()].count("\n") + 1, m.group(1))
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for text in [path.read_text()]
    for m in re.finditer(r"```apache\n(.*?)```", text, re.S)
]


def test_the_docs_have_examples() -> None:
    assert len(BLOCKS) >= 10


@pytest.mark.parametrize("where, line, text", BLOCKS, ids=[f"{p}:{n}" for p, n, _ in BLOCKS])
def test_an_example_block_parses(where: Path, line: int, text: str) -> None:
    parse(text, filename=f"{where}:{line}", environ={"APACHE_LOG_DIR": "/var/log/apache2"})
