"""The one place tunnel reaches past h11's public API, pinned to the versions it is
tested with (``setup.cfg`` bounds h11; ``tests/protocol/test_h11compat.py`` checks
the behaviour on the installed version).

h11 has no public call to give back the bytes it buffered beyond the current message.
After a request body, those bytes are the next pipelined request (or a tunnel's first
bytes); the front end must get them back, or they would be lost and the client would
hang. ``Connection.trailing_data`` shows them; emptying h11's receive buffer is the part
with no public form.
"""

from __future__ import annotations

import h11

__all__ = ["take_trailing", "SUPPORTED"]

#: The h11 releases this adapter is written for (``install_requires`` matches).
SUPPORTED = ">=0.14,<0.17"


def take_trailing(conn: h11.Connection) -> bytes:
    """Take the bytes ``conn`` has buffered but not parsed, leaving its buffer empty.

    Args:
        conn: an h11 connection whose current message is complete.

    Returns:
        The buffered bytes (b"" when none).
    """
    data, _closed = conn.trailing_data
    if data:
        buffer = conn._receive_buffer  # noqa: SLF001 - no public way to empty it
        conn._receive_buffer = type(buffer)()  # noqa: SLF001
    return bytes(data)
