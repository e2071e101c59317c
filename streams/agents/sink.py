"""The ClickHouse sink stage: scored batches → ``predictions`` and ``drift_deltas`` (and the
scoring processes' ``models`` and ``drift_baselines`` rows), about one insert a second per
table.

It is off the decision path: the scoring stage answers on Kafka and hands its rows over on
the scored topic (``streams.sinks.scored``); this stage gathers them for
``STREAMSCORE_SINK_FLUSH_SECONDS`` (or ``STREAMSCORE_SINK_MAX_BYTES``), drops rows already
written (marks per valid partition and raw partition, loaded from ClickHouse on
assignment), and writes the rest in one insert with a deterministic deduplication token.
Offsets are stored only after ClickHouse confirmed; a failed insert exits the process
(code 72) before they move, and the batch is read again after the restart.

On chDB this stage must run in the process that holds the data path (the worker); against
a ClickHouse server, sink processes scale by partition in one consumer group.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
from confluent_kafka import Message

from streams.agents.batching import BatchAgent
from streams.clickhouse.gateway import ClickHouseGateway
from streams.monitoring.metrics import WorkerMetrics
from streams.settings import Settings
from streams.sinks.clickhouse import PredictionsSink, dedup_token
from streams.sinks.scored import ROW_TABLES, RowMarks, decode_rows, decode_scored, message_kind
from streams.topics import SCORED_MAX_BYTES, scored_topic

__all__ = ["EXIT_SINK_FAILED", "PredictionsSinkStage", "register_sink_agent"]

log = logging.getLogger("streams.agents.sink")

EXIT_SINK_FAILED = 72


@dataclass(frozen=True, slots=True)
class Gathered:
    """What one sink batch writes."""

    rows: pa.Table | None  # predictions, copies dropped
    deltas: pa.Table | None  # drift_deltas
    other: list[tuple[str, list[str], list[list[object]]]]  # (table, names, rows)
    dropped: int


class PredictionsSinkStage:
    """Marks, the ClickHouse sink and the batch handler of one sink stage."""

    def __init__(
        self, settings: Settings, gateway: ClickHouseGateway, *, event_type: str = "transaction"
    ) -> None:
        self.settings = settings
        self.event_type = event_type
        self.topic = scored_topic(settings, event_type)
        self.sink = PredictionsSink(gateway, dedup=settings.sink_dedup)
        self.marks = RowMarks()
        self.metrics: WorkerMetrics | None = None
        self.counts = {"inserts": 0, "rows": 0, "copies_dropped": 0}

    async def on_assigned(self, partitions: Sequence[tuple[str, int]]) -> None:
        mine = [p for t, p in partitions if t == self.topic]
        if not mine:
            return
        loaded = await asyncio.to_thread(self.sink.marks, self.event_type, mine)
        for partition, marks in loaded.items():
            self.marks.load(partition, marks)
            log.info(
                "%s[%d]: marks loaded for %d raw partitions", self.topic, partition, len(marks)
            )

    def prepare(self, messages: Sequence[Message]) -> Gathered:
        """The predictions rows to insert (copies dropped), the drift deltas, the other
        tables' rows, and how many copies were dropped. Deltas need no marks:
        ``drift_deltas`` keys them by their batch's coordinates (ReplacingMergeTree)."""
        tables: list[pa.Table] = []
        drift: list[pa.Table] = []
        other: list[tuple[str, list[str], list[list[object]]]] = []
        dropped = 0
        for message in messages:
            kind, table = message_kind(message.headers())  # type: ignore[arg-type]
            if kind == "rows":
                if table in ROW_TABLES:
                    other.append((table, *decode_rows(message.value() or b"")))
                else:  # not ours to write: say so, and go on (it carries no events)
                    log.warning("scored message for unknown table %r skipped", table)
                continue
            rows = decode_scored(message.value() or b"")
            if kind == "drift_deltas":
                drift.append(rows)
                continue
            if self.sink.dedup:
                fresh = self.marks.take(int(message.partition() or 0), rows)
                dropped += rows.num_rows - fresh.num_rows
                rows = fresh
            if rows.num_rows:
                tables.append(rows)
        deltas = pa.concat_tables(drift, promote_options="default") if drift else None
        rows = pa.concat_tables(tables, promote_options="default") if tables else None
        return Gathered(rows, deltas, other, dropped)

    async def handle(self, messages: Sequence[Message]) -> None:
        gathered = await asyncio.to_thread(self.prepare, messages)
        rows, deltas, dropped = gathered.rows, gathered.deltas, gathered.dropped
        for table, names, values in gathered.other:
            columns = list(zip(*values, strict=True)) if values else []
            if columns:
                await asyncio.to_thread(self.sink.gateway.insert_columns, table, columns, names)
        self.counts["copies_dropped"] += dropped
        coordinates = [(int(m.partition() or 0), int(m.offset() or 0)) for m in messages]
        if deltas is not None:
            token = dedup_token(self.topic, coordinates, ["drift"])
            await asyncio.to_thread(self.sink.write_drift, deltas, token)
        if rows is None:
            return
        versions = sorted(set(rows.column("model_version").to_pylist()))
        token = dedup_token(self.topic, coordinates, versions)
        started = time.perf_counter()
        await asyncio.to_thread(self.sink.write, rows, token)
        if not self.counts["inserts"]:
            log.info("sink: first insert of %d rows written", rows.num_rows)
        self.counts["inserts"] += 1
        self.counts["rows"] += rows.num_rows
        if (m := self.metrics) is not None:
            m.observe_stage("sink_insert", time.perf_counter() - started)
            m.count("sink", "rows", rows.num_rows)
            if dropped:
                m.count("sink", "copies_dropped", dropped)


def register_sink_agent(
    app: object,
    settings: Settings,
    gateway: ClickHouseGateway,
    metrics: WorkerMetrics | None = None,
) -> BatchAgent:
    """Attach the ClickHouse sink stage to the faust ``app``; returns it."""
    import faust

    assert isinstance(app, faust.App)
    stage = PredictionsSinkStage(settings, gateway)
    stage.metrics = metrics
    agent = BatchAgent(
        settings,
        "sink",
        [stage.topic],
        stage.handle,
        exit_code=EXIT_SINK_FAILED,
        batch_size=1000,
        batch_seconds=settings.sink_flush_seconds,
        gather_bytes=settings.sink_max_bytes,
        on_assigned=stage.on_assigned,
        consumer_config={"max.partition.fetch.bytes": SCORED_MAX_BYTES},
        metrics=metrics,
        loop=app.loop,
        beacon=app.beacon,
    )
    agent.stage = stage  # type: ignore[attr-defined]
    app.add_dependency(agent)
    return agent
