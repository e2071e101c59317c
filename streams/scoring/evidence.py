"""Evidence for promoting a challenger: how it compared with the champion on the same events.

Reads the ``model_comparison_since`` view (migration 0004) through a query function the
caller passes in (``streamscore sql``'s routing in the CLI, a fake in tests), and judges
whether the challenger was compared on enough events to replace the champion.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from streams.clickhouse.client import quote_identifier

__all__ = [
    "COLUMNS",
    "DEFAULT_MIN_COMPARED",
    "Comparison",
    "PromotionEvidence",
    "Query",
    "comparison_query",
    "gather_evidence",
    "parse_comparisons",
]

DEFAULT_MIN_COMPARED = 1000
EPOCH = "1970-01-01 00:00:00.000"

# (sql, parameters) → (column names, rows)
Query = Callable[[str, Mapping[str, Any]], tuple[Sequence[str], Sequence[Sequence[Any]]]]


@dataclass(frozen=True, slots=True)
class Comparison:
    """One row of ``model_comparison``: a challenger against the champion on shared events."""

    champion_version: str
    challenger_version: str
    challenger_roles: str
    events: int
    scored_by_both: int
    champion_score_mean: float | None
    champion_score_p50: float | None
    champion_score_p90: float | None
    challenger_score_mean: float | None
    challenger_score_p50: float | None
    challenger_score_p90: float | None
    decision_agreement: float | None
    champion_decline_rate: float | None
    challenger_decline_rate: float | None
    labelled_events: int
    positives: int
    champion_precision: float | None
    champion_recall: float | None
    challenger_precision: float | None
    challenger_recall: float | None
    champion_auc: float | None
    challenger_auc: float | None


_INTS = frozenset({"events", "scored_by_both", "labelled_events", "positives"})
_STRS = frozenset({"champion_version", "challenger_version", "challenger_roles"})
COLUMNS = tuple(f.name for f in fields(Comparison))


def _number(value: Any) -> float | None:
    """A float, or None for SQL null, NaN (empty averages) and JSON null."""
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def parse_comparisons(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[Comparison]:
    """Rows of ``comparison_query`` → Comparisons; columns are matched by name."""
    index = {name: i for i, name in enumerate(columns)}
    missing = [c for c in COLUMNS if c not in index]
    if missing:
        raise ValueError(f"model_comparison lacks columns {missing} (got {list(columns)})")
    out: list[Comparison] = []
    for row in rows:
        values: dict[str, Any] = {}
        for name in COLUMNS:
            raw = row[index[name]]
            if name in _STRS:
                values[name] = str(raw)
            elif name in _INTS:
                values[name] = int(raw)
            else:
                values[name] = _number(raw)
        out.append(Comparison(**values))
    return out


def comparison_query(
    database: str,
    *,
    since: datetime | None = None,
    challenger: str | None = None,
    champion: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """SQL and parameters reading ``model_comparison_since``, optionally for one pair."""
    where: list[str] = []
    parameters: dict[str, Any] = {
        "since": since.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if since else EPOCH
    }
    if challenger is not None:
        where.append("challenger_version = {challenger:String}")
        parameters["challenger"] = challenger
    if champion is not None:
        where.append("champion_version = {champion:String}")
        parameters["champion"] = champion
    sql = (
        f"select {', '.join(COLUMNS)} "  # noqa: S608 - checked identifier, values bound
        f"from {quote_identifier(database)}.model_comparison_since("
        "since = {since:String})"
        + (" where " + " and ".join(where) if where else "")
        + " order by champion_version, challenger_version"
    )
    return sql, parameters


@dataclass(frozen=True, slots=True)
class PromotionEvidence:
    """What ``promote`` knows about a candidate before it replaces the champion."""

    candidate: str
    champion: str | None
    min_compared: int
    comparison: Comparison | None = None
    unavailable: str | None = None  # why ClickHouse could not answer, if it could not

    @property
    def compared(self) -> int:
        return self.comparison.events if self.comparison else 0

    @property
    def sufficient(self) -> bool:
        """True when there is no champion to compare with, or enough compared events."""
        if self.champion is None:
            return True
        return self.unavailable is None and self.compared >= self.min_compared

    def refusal(self) -> str:
        """Why promotion is refused (only meaningful when not ``sufficient``)."""
        if self.unavailable is not None:
            return (
                f"cannot read the comparison of {self.candidate} with champion {self.champion} "
                f"from ClickHouse ({self.unavailable}); promote with --force to skip the check"
            )
        return (
            f"{self.candidate} was compared with champion {self.champion} on {self.compared:,} "
            f"events, fewer than the {self.min_compared:,} required: run it as a shadow "
            "(`streamscore model promote --shadow`) or replay history with it "
            "(`streamscore replay --model`) first, lower --min-compared, or use --force"
        )

    def lines(self) -> list[str]:
        """The evidence, one fact per line, for the console."""
        if self.champion is None:
            return [f"no champion yet: {self.candidate} needs no comparison"]
        c = self.comparison
        if c is None:
            return [f"{self.candidate} vs champion {self.champion}: no events compared"]
        out = [
            f"{self.candidate} vs champion {self.champion} ({c.challenger_roles}): "
            f"{c.events:,} events compared (minimum {self.min_compared:,})",
            f"  decision agreement {_pct(c.decision_agreement)}, decline rate "
            f"{_pct(c.champion_decline_rate)} (champion) vs {_pct(c.challenger_decline_rate)}",
            f"  mean score {_num(c.champion_score_mean)} (champion) vs "
            f"{_num(c.challenger_score_mean)}",
        ]
        if c.labelled_events:
            out.append(
                f"  labels: {c.labelled_events:,} events, {c.positives:,} fraud; ROC AUC "
                f"{_num(c.champion_auc)} (champion) vs {_num(c.challenger_auc)}, recall "
                f"{_pct(c.champion_recall)} vs {_pct(c.challenger_recall)}, precision "
                f"{_pct(c.champion_precision)} vs {_pct(c.challenger_precision)}"
            )
        else:
            out.append("  labels: none yet for the compared events")
        return out


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def gather_evidence(
    query: Query,
    database: str,
    candidate: str,
    champion: str | None,
    min_compared: int = DEFAULT_MIN_COMPARED,
    unavailable: type[BaseException] | tuple[type[BaseException], ...] = (),
) -> PromotionEvidence:
    """Ask ClickHouse how ``candidate`` compared with ``champion``; exceptions of the
    ``unavailable`` types become ``PromotionEvidence.unavailable`` (the CLI refuses then)."""
    if champion is None:
        return PromotionEvidence(candidate, None, min_compared)
    sql, parameters = comparison_query(database, challenger=candidate, champion=champion)
    try:
        columns, rows = query(sql, parameters)
    except unavailable as exc:
        return PromotionEvidence(candidate, champion, min_compared, unavailable=str(exc))
    found = parse_comparisons(columns, rows)
    return PromotionEvidence(candidate, champion, min_compared, found[0] if found else None)
