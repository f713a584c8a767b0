"""Helpers for the sans-IO layers (config, protocol): text or bytes in, no sockets."""

from __future__ import annotations

import textwrap
from typing import Optional

from hypothesis import strategies as st

from tunnel.config import Config, Limits, parse
from tunnel.protocol.heads import RequestHead
from tunnel.protocol.request import FrontEnd


def conf(text: str, filename: str = "t.conf") -> Config:
    """Parse a (dedented) configuration text."""
    return parse(textwrap.dedent(text), filename=filename)


def parse_head(data: bytes, limits: Optional[Limits] = None) -> tuple[FrontEnd, Optional[RequestHead]]:
    """Feed ``data`` to a fresh front end; returns it and the head it parsed (or None)."""
    fe = FrontEnd(limits if limits is not None else Limits())
    fe.feed(data)
    return fe, fe.next_head()


#: Header names and values that stress the fast paths (bad names, controls, latin-1).
HEADER_NAMES = st.sampled_from(["Upgrade", "Connection", "Sec-WebSocket-Accept", "X-A", "x_b", "Set-Cookie", "Bad Name", "", "Ü", "A:B"])
HEADER_VALUES = st.one_of(
    st.sampled_from(["websocket", "Upgrade", "", " padded ", "a\tb", "é", "x\x7fy", "x\x00y", "a\r\nb: c", "v, w"]),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=12),
)
