"""Quoting input in logs and headers without echoing it whole: :func:`bounded`.

Anything that quotes an event, a header or an error built from either (dead-letter
headers, log lines, rejection messages) cuts it here, so a 1 MB header value costs a
few hundred bytes of log and the reader still learns how long the original was.
"""

from __future__ import annotations

__all__ = ["MARKER_MAX_CHARS", "bounded"]

# "…[truncated, 18446744073709551615 bytes]" is the longest marker bounded() appends.
MARKER_MAX_CHARS = 40


def bounded(value: str | bytes, limit: int, *, quote: bool = False) -> str:
    """``value`` as text, cut to its first ``limit`` characters (bytes for ``bytes``).

    A cut value ends with ``…[truncated, N bytes]`` (``N chars`` for a ``str``), N being
    the original length. Bytes are decoded as UTF-8, undecodable bytes replaced. With
    ``quote`` the kept part is rendered by ``repr`` (one line, control characters
    escaped) and the marker follows the closing quote. Only the kept part is ever
    decoded or copied, so the cost is O(limit) whatever the size of ``value``. The
    result is at most ``limit + MARKER_MAX_CHARS`` characters, or with ``quote``
    ``10 * limit + 2 + MARKER_MAX_CHARS`` (repr writes a character as at most 10).
    """
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    size = len(value)
    cut = size > limit
    if isinstance(value, bytes):
        text = value[:limit].decode("utf-8", "replace")
        unit = "bytes"
    else:
        text = value[:limit]
        unit = "chars"
    if quote:
        text = repr(text)
    return f"{text}…[truncated, {size} {unit}]" if cut else text
