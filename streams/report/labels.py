"""How the report writes numbers and times: readable score values and full-date spans.

Pure functions, no rendering. Scores of a fraud model live around 1e-6…1e-2, where
``%g``-style formatting prints ``4e-07``: here a score is a percentage in plain decimals
with two significant digits (``0.00004%``), never scientific notation. A time span always
carries the date of both ends, so a window read on its own says when it was.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

__all__ = ["format_score", "is_decade", "span_label", "time_label"]

# Below this a score prints as "<0.0000001%": more zeros would not help anyone read it.
SMALLEST_SCORE = 1e-9


def format_score(value: float) -> str:
    """A score (a probability, 0…1) as a percentage with two significant digits in plain
    decimals: 1 → ``100%``, 0.0123 → ``1.2%``, 1e-6 → ``0.0001%``, 4e-7 → ``0.00004%``."""
    if not math.isfinite(value):
        return "—"
    if value <= 0:
        return "0%"
    if value < SMALLEST_SCORE:
        return f"<{format_score(SMALLEST_SCORE)}"
    pct = value * 100
    decimals = max(0, 1 - math.floor(math.log10(pct)))
    text = f"{pct:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text}%"


def is_decade(value: float) -> bool:
    """Whether ``value`` is a power of ten (where a log axis puts its labels)."""
    if not value > 0 or not math.isfinite(value):
        return False
    exponent = math.log10(value)
    return abs(exponent - round(exponent)) < 1e-9


def time_label(moment: datetime, seconds: bool = False) -> str:
    """``YYYY-mm-dd HH:MM`` (``:SS`` with ``seconds``) in UTC."""
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S}"[: 19 if seconds else 16]


def span_label(start: datetime, end: datetime) -> str:
    """``start – end UTC`` with the date on both ends; seconds when the two would
    otherwise read the same (a window shorter than a minute)."""
    seconds = time_label(start) == time_label(end) and start != end
    return f"{time_label(start, seconds)} – {time_label(end, seconds)} UTC"
