"""Idempotent writes of predictions and dead letters to ClickHouse.

The pipeline is at-least-once: after a crash a batch is re-read, and after an ingestion
crash the valid topic holds re-sent copies of events at new offsets. Three layers make
the *effect* exactly once, all keyed on the raw record's coordinates, which every copy
of an event shares (``source-topic/-partition/-offset`` headers):

1. ``SourceMarks`` (live scoring): per valid-topic partition, the highest raw offset
   already written per raw partition. Within one valid partition the raw offsets of one
   raw partition only rise (ingestion is ordered per partition; the hand-off is keyed),
   except for re-sent copies, so anything at or below the mark is a copy and is dropped.
   Marks are loaded from ClickHouse when a partition is assigned, so they survive crashes.
2. Each insert carries ``insert_deduplication_token`` = the batch's valid-topic ranges and
   model versions; the tables' ``non_replicated_deduplication_window`` makes ClickHouse
   drop a re-sent identical block (a retry after a timeout that did land).
3. ReplacingMergeTree on (topic, partition, offset, model_version) folds anything left at
   merge time; ``FINAL`` gives exact counts before that.

Replays and dead-letter sinks check existence instead (``existing_sources``): their
ranges are bounded, and the check is exact whatever order records come in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from streams.clickhouse.gateway import ClickHouseGateway

if TYPE_CHECKING:
    import pyarrow as pa

    from streams.scoring.pipeline import ValidEvent

RawPartition = tuple[str, int]
Source = tuple[str, int, int]


class SourceMarks:
    """Per valid-topic partition: raw (topic, partition) → highest raw offset written."""

    def __init__(self) -> None:
        self._marks: dict[int, dict[RawPartition, int]] = {}

    def load(self, partition: int, marks: Mapping[RawPartition, int]) -> None:
        self._marks[partition] = dict(marks)

    def forget(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self._marks.pop(p, None)

    def get(self, partition: int) -> dict[RawPartition, int]:
        return dict(self._marks.get(partition, {}))

    def select(self, events: Sequence[ValidEvent]) -> list[int]:
        """Indices of ``events`` not written before (raising the marks as it goes)."""
        keep: list[int] = []
        marks = self._marks
        for i, event in enumerate(events):
            seen = marks.setdefault(event.handoff_partition, {})
            raw = (event.source[0], event.source[1])
            if event.source[2] > seen.get(raw, -1):
                seen[raw] = event.source[2]
                keep.append(i)
        return keep


def dedup_token(topic: str, coordinates: Iterable[tuple[int, int]], versions: Sequence[str]) -> str:
    """``topic|partition:first-last,...|version,...``: the same batch always gets the same token."""
    ranges: dict[int, tuple[int, int]] = {}
    for partition, offset in coordinates:
        first, last = ranges.get(partition, (offset, offset))
        ranges[partition] = (min(first, offset), max(last, offset))
    spans = ",".join(f"{p}:{a}-{b}" for p, (a, b) in sorted(ranges.items()))
    return f"{topic}|{spans}|{','.join(versions)}"


def insert_settings(token: str, dedup: bool) -> dict[str, Any]:
    """Settings for an idempotent insert (or, for the negative-control test, a plain one)."""
    if not dedup:
        return {"insert_deduplicate": 0}
    return {"insert_deduplicate": 1, "insert_deduplication_token": token}


class PredictionsSink:
    """Writes ``predictions`` batches and answers what is already there."""

    def __init__(self, gateway: ClickHouseGateway, *, dedup: bool = True) -> None:
        self.gateway = gateway
        self.dedup = dedup

    def write(self, rows: pa.Table, token: str) -> None:
        if rows.num_rows:
            self.gateway.insert_arrow(
                "predictions", rows, settings=insert_settings(token, self.dedup)
            )

    def write_drift(self, deltas: pa.Table, token: str) -> None:
        """Drift count deltas (``streams.monitoring``), keyed by their batch's coordinates."""
        if deltas.num_rows:
            self.gateway.insert_arrow(
                "drift_deltas", deltas, settings=insert_settings(token, self.dedup)
            )

    def marks(
        self, event_type: str, partitions: Sequence[int]
    ) -> dict[int, dict[RawPartition, int]]:
        """``live_marks`` per valid partition, or none when deduplication is off (the
        negative control)."""
        if not self.dedup:
            return {p: {} for p in partitions}
        from streams.clickhouse.reads import GatewayReads, live_marks

        return live_marks(GatewayReads(self.gateway), event_type, partitions)

    def existing_sources(
        self, sources: Sequence[Source], model_version: str | None = None
    ) -> set[Source]:
        """Which of ``sources`` already have a row (for ``model_version``, if given)."""
        return existing_sources(self.gateway, "predictions", sources, model_version)


class DeadLetterSink:
    """Writes ``dlq_events``; a dead letter already stored (same raw coordinates) is skipped."""

    def __init__(self, gateway: ClickHouseGateway, *, dedup: bool = True) -> None:
        self.gateway = gateway
        self.dedup = dedup

    def existing_sources(self, sources: Sequence[Source]) -> set[Source]:
        return existing_sources(self.gateway, "dlq_events", sources, None)

    def write(self, rows: pa.Table, token: str) -> None:
        if rows.num_rows:
            self.gateway.insert_arrow(
                "dlq_events", rows, settings=insert_settings(token, self.dedup)
            )


def existing_sources(
    gateway: ClickHouseGateway,
    table: str,
    sources: Sequence[Source],
    model_version: str | None = None,
) -> set[Source]:
    """Which raw coordinates of ``sources`` already have a row in ``table``."""
    found: set[Source] = set()
    by_partition: dict[RawPartition, list[int]] = {}
    for topic, partition, offset in sources:
        by_partition.setdefault((topic, partition), []).append(offset)
    version_filter = "" if model_version is None else " and model_version = {version:String}"
    for (topic, partition), offsets in by_partition.items():
        result = gateway.query(
            f"select distinct offset from {gateway.table(table)} "  # noqa: S608 - checked identifiers
            "where topic = {topic:String} and partition = {partition:UInt16} "
            "and offset between {low:UInt64} and {high:UInt64} "
            "and has({offsets:Array(UInt64)}, offset)" + version_filter,
            {
                "topic": topic,
                "partition": partition,
                "low": min(offsets),
                "high": max(offsets),
                "offsets": offsets,
                "version": model_version or "",
            },
        )
        found.update((topic, partition, int(row[0])) for row in result.result_rows)
    return found
