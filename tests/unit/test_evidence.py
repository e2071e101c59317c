"""Promotion evidence: the comparison query, parsing its rows, and the verdict."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from streams.errors import SinkError
from streams.scoring.evidence import COLUMNS, comparison_query, gather_evidence, parse_comparisons


def row(events: int, **values: Any) -> list[Any]:
    base: dict[str, Any] = dict.fromkeys(COLUMNS, 0.5)
    base.update(
        champion_version="m-1", challenger_version="m-2", challenger_roles="shadow",
        events=events, scored_by_both=events, labelled_events=0, positives=0,
        champion_auc=None, challenger_auc=math.nan,
    )  # fmt: skip
    base.update(values)
    return [base[name] for name in COLUMNS]


class FakeQuery:
    def __init__(self, rows: list[list[Any]], error: Exception | None = None) -> None:
        self.rows, self.error = rows, error
        self.calls: list[tuple[str, Mapping[str, Any]]] = []

    def __call__(self, sql: str, parameters: Mapping[str, Any]) -> tuple[Sequence[str], Any]:
        self.calls.append((sql, parameters))
        if self.error is not None:
            raise self.error
        return list(reversed(COLUMNS)), [list(reversed(r)) for r in self.rows]


def test_query_binds_values_and_reads_the_parameterised_view() -> None:
    sql, params = comparison_query(
        "streamscore", since=datetime(2024, 5, 1, 12, tzinfo=UTC), challenger="m-2"
    )
    assert "`streamscore`.model_comparison_since(since = {since:String})" in sql
    assert "challenger_version = {challenger:String}" in sql and "m-2" not in sql
    assert params == {"since": "2024-05-01 12:00:00.000", "challenger": "m-2"}
    assert comparison_query("db")[1] == {"since": "1970-01-01 00:00:00.000"}


def test_rows_are_matched_by_column_name_and_nan_or_null_is_none() -> None:
    (c,) = parse_comparisons(list(reversed(COLUMNS)), [list(reversed(row(12)))])
    assert (c.events, c.challenger_version, c.decision_agreement) == (12, "m-2", 0.5)
    assert c.champion_auc is None and c.challenger_auc is None
    with pytest.raises(ValueError, match="lacks columns"):
        parse_comparisons(["events"], [[1]])


def test_enough_compared_events_is_sufficient_and_says_so() -> None:
    query = FakeQuery([row(1500, labelled_events=40, positives=4, champion_auc=0.9)])
    evidence = gather_evidence(query, "db", "m-2", "m-1", min_compared=1000)
    assert evidence.sufficient and evidence.compared == 1500
    assert query.calls[0][1]["challenger"] == "m-2" and query.calls[0][1]["champion"] == "m-1"
    text = "\n".join(evidence.lines())
    assert "1,500 events compared" in text and "ROC AUC 0.9000 (champion) vs n/a" in text


@pytest.mark.parametrize("rows", [[row(999)], []], ids=["too-few", "never-compared"])
def test_too_few_compared_events_is_refused(rows: list[list[Any]]) -> None:
    evidence = gather_evidence(FakeQuery(rows), "db", "m-2", "m-1", min_compared=1000)
    assert not evidence.sufficient
    assert "fewer than the 1,000 required" in evidence.refusal()


def test_unreachable_clickhouse_is_refused_but_other_errors_propagate() -> None:
    down = FakeQuery([], SinkError("cannot open ClickHouse"))
    evidence = gather_evidence(down, "db", "m-2", "m-1", unavailable=SinkError)
    assert not evidence.sufficient and "cannot open ClickHouse" in evidence.refusal()
    with pytest.raises(SinkError):
        gather_evidence(down, "db", "m-2", "m-1")


def test_a_first_champion_needs_no_evidence_and_asks_nothing() -> None:
    query = FakeQuery([])
    evidence = gather_evidence(query, "db", "m-1", None)
    assert evidence.sufficient and query.calls == []
