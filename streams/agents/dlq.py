"""The dead-letter agent: the DLQ topic → ClickHouse ``dlq_events``, each dead letter once.

Dead letters are rare, so each batch asks ClickHouse which of its raw coordinates are
already stored and inserts the rest (with a deduplication token as a second guard).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
import pyarrow as pa
from confluent_kafka import Message

from streams.agents.batching import BatchAgent, now_ms
from streams.clickhouse.gateway import ClickHouseGateway
from streams.headers import (
    DLQ_ERROR_CLASS,
    DLQ_ERROR_MESSAGE,
    DLQ_ERROR_PATHS,
    DLQ_SCHEMA_ID,
    DLQ_SOURCE,
    DLQ_STAGE,
    DLQ_WORKER_ID,
    EVENT_TYPE,
)
from streams.monitoring.metrics import WorkerMetrics
from streams.records import read_source, timestamp_ms
from streams.settings import Settings
from streams.sinks.clickhouse import DeadLetterSink, dedup_token
from streams.text import bounded
from streams.topics import dlq_topic

__all__ = [
    "EXIT_DLQ_SINK_FAILED",
    "StoredDeadLetter",
    "dead_letter_rows",
    "register_dlq_agent",
    "to_stored",
]

log = logging.getLogger("streams.agents.dlq")

EXIT_DLQ_SINK_FAILED = 73
_TS = pa.timestamp("ms", tz="UTC")


@dataclass(frozen=True, slots=True)
class StoredDeadLetter:
    """One DLQ record as a ``dlq_events`` row."""

    topic: str
    partition: int
    offset: int
    produced_at_ms: int
    dead_at_ms: int
    stage: str
    reason: str
    message: str
    paths: list[str]
    schema_id: str
    event_type: str
    key: bytes
    payload: bytes
    dlq_partition: int
    dlq_offset: int
    worker_id: str

    @property
    def source(self) -> tuple[str, int, int]:
        return self.topic, self.partition, self.offset


# Only these headers become text columns; the record's other headers (any size) are not
# read. The dlq.source.* headers and dlq.time are read_source's.
_READ = frozenset(
    (DLQ_ERROR_CLASS, DLQ_ERROR_MESSAGE, DLQ_ERROR_PATHS, DLQ_SCHEMA_ID, DLQ_STAGE,
     DLQ_WORKER_ID, EVENT_TYPE)
)  # fmt: skip
# Our hand-off writes at most about 2 KB per header; a DLQ record from anywhere else is
# cut here (with bounded()'s marker) so that one row cannot carry megabytes of text.
_MAX_MESSAGE_CHARS = 4096
_MAX_FIELD_CHARS = 256
_LONG = {DLQ_ERROR_MESSAGE: _MAX_MESSAGE_CHARS, DLQ_ERROR_PATHS: _MAX_MESSAGE_CHARS}


def _paths(text: str) -> list[str]:
    """The ``dlq.error.paths`` header (a JSON list of paths, already cut to
    _MAX_MESSAGE_CHARS); anything else is kept as one path."""
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        return [bounded(text, _MAX_FIELD_CHARS)]
    items = parsed if isinstance(parsed, list) else [parsed]
    return [bounded(p if isinstance(p, str) else str(p), _MAX_FIELD_CHARS) for p in items]


def to_stored(message: Message) -> StoredDeadLetter:
    """Read a dead letter's headers. A record whose ``dlq.source.*`` headers are absent or
    malformed keeps its DLQ coordinates (all three: never a mix), one without times the
    DLQ record's timestamp."""
    pairs: list[tuple[str, object]] = list(message.headers() or ())  # type: ignore[arg-type]
    headers = {
        k: bounded(v, _LONG.get(k, _MAX_FIELD_CHARS)) if isinstance(v, bytes) else str(v or "")
        for k, v in pairs
        if k in _READ
    }
    found = read_source(pairs, DLQ_SOURCE)
    dlq_partition, dlq_offset = int(message.partition() or 0), int(message.offset() or 0)
    topic, partition, offset = found.source or (str(message.topic()), dlq_partition, dlq_offset)
    own_ms = timestamp_ms(message)
    paths = _paths(headers.get(DLQ_ERROR_PATHS, "[]"))
    return StoredDeadLetter(
        topic=topic,
        partition=partition,
        offset=offset,
        produced_at_ms=own_ms if found.produced_at_ms is None else found.produced_at_ms,
        dead_at_ms=own_ms if found.handed_off_at_ms is None else found.handed_off_at_ms,
        stage=headers.get(DLQ_STAGE, ""),
        reason=headers.get(DLQ_ERROR_CLASS, "unknown"),
        message=headers.get(DLQ_ERROR_MESSAGE, ""),
        paths=paths,
        schema_id=headers.get(DLQ_SCHEMA_ID, ""),
        event_type=headers.get(EVENT_TYPE, ""),
        key=message.key() or b"",
        payload=message.value() or b"",
        dlq_partition=dlq_partition,
        dlq_offset=dlq_offset,
        worker_id=headers.get(DLQ_WORKER_ID, ""),
    )


def dead_letter_rows(letters: Sequence[StoredDeadLetter], sunk_at_ms: int) -> pa.Table:
    """``dlq_events`` rows; ``sunk_at`` is one value per batch (one part, atomic insert)."""

    def col(name: str, dtype: pa.DataType) -> pa.Array:
        return pa.array([getattr(d, name) for d in letters], type=dtype)

    return pa.table(
        {
            "topic": col("topic", pa.string()),
            "partition": col("partition", pa.uint16()),
            "offset": col("offset", pa.uint64()),
            "produced_at": col("produced_at_ms", pa.int64()).cast(_TS),
            "dead_at": col("dead_at_ms", pa.int64()).cast(_TS),
            "stage": col("stage", pa.string()),
            "reason": col("reason", pa.string()),
            "message": col("message", pa.string()),
            "paths": col("paths", pa.list_(pa.string())),
            "schema_id": col("schema_id", pa.string()),
            "event_type": col("event_type", pa.string()),
            "key": col("key", pa.binary()),
            "payload": col("payload", pa.binary()),
            "dlq_partition": col("dlq_partition", pa.uint16()),
            "dlq_offset": col("dlq_offset", pa.uint64()),
            "worker_id": col("worker_id", pa.string()),
            "sunk_at": pa.array([sunk_at_ms] * len(letters), type=pa.int64()).cast(_TS),
        }
    )


def register_dlq_agent(
    app: object,
    settings: Settings,
    gateway: ClickHouseGateway,
    metrics: WorkerMetrics | None = None,
) -> BatchAgent:
    """Attach the dead-letter agent to the faust ``app``; returns it."""
    import faust

    assert isinstance(app, faust.App)
    sink = DeadLetterSink(gateway, dedup=settings.sink_dedup)
    topic = dlq_topic(settings)

    async def store(messages: Sequence[Message]) -> None:
        letters = [to_stored(m) for m in messages]
        if sink.dedup:
            present = await asyncio.to_thread(sink.existing_sources, [d.source for d in letters])
            seen: set[tuple[str, int, int]] = set(present)
            fresh = []
            for d in letters:
                if d.source not in seen:
                    seen.add(d.source)
                    fresh.append(d)
            letters = fresh
        if not letters:
            return
        token = dedup_token(topic, ((d.dlq_partition, d.dlq_offset) for d in letters), ["dlq"])
        await asyncio.to_thread(sink.write, dead_letter_rows(letters, now_ms()), token)
        if metrics is not None:
            metrics.count("dlq", "stored", len(letters))

    agent = BatchAgent(
        settings,
        "dlq",
        [topic],
        store,
        exit_code=EXIT_DLQ_SINK_FAILED,
        # Time-closed batches like the predictions sink: about one insert a second.
        batch_size=5000,
        batch_seconds=settings.sink_flush_seconds,
        gather_bytes=settings.sink_max_bytes,
        consumer_config={"max.partition.fetch.bytes": 16 * 1024 * 1024},
        metrics=metrics,
        loop=app.loop,
        beacon=app.beacon,
    )
    app.add_dependency(agent)
    return agent
