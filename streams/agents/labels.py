"""The labels agent: the valid label topic → ClickHouse ``labels``, each label once.

Labels are few (chargebacks arrive days later), so like the dead-letter agent each batch
asks ClickHouse which raw coordinates are already stored and inserts the rest, with a
deduplication token as a second guard. A label that cannot be decoded (it passed
validation, so only a schema change could cause this) goes to the DLQ, stage ``labels``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa
from confluent_kafka import Message

from streams.agents.batching import BatchAgent, now_ms
from streams.clickhouse.gateway import ClickHouseGateway
from streams.ingest import DeadLetter
from streams.records import RawRecord, ValidEvent, to_valid_event
from streams.settings import Settings
from streams.sinks.clickhouse import Source, dedup_token, existing_sources, insert_settings
from streams.sinks.handoff import KafkaHandoff
from streams.topics import valid_topic

__all__ = [
    "EXIT_LABELS_SINK_FAILED",
    "LabelStore",
    "StoredLabel",
    "decode_labels",
    "fresh_labels",
    "label_rows",
    "register_labels_agent",
    "rfc3339_ms",
    "to_label",
]

log = logging.getLogger("streams.agents.labels")

EXIT_LABELS_SINK_FAILED = 74
UNDECODABLE = "undecodable"
TABLE = "labels"
_TS = pa.timestamp("ms", tz="UTC")


@dataclass(frozen=True, slots=True)
class StoredLabel:
    """One label event as a ``labels`` row."""

    event_id: str
    transaction_id: str
    account_id: str
    is_fraud: bool
    label_time_ms: int
    source: str
    fraud_type: str | None
    chargeback_amount: float | None
    produced_at_ms: int
    ingested_at_ms: int
    topic: str
    partition: int
    offset: int
    handoff_partition: int
    handoff_offset: int

    @property
    def coordinates(self) -> Source:
        return self.topic, self.partition, self.offset


def rfc3339_ms(text: str) -> int:
    """``2024-05-01T12:00:00.123456789+02:00`` (or ``Z``) → ms since the epoch, UTC."""
    head, dot, rest = text.replace("Z", "+00:00").replace("z", "+00:00").partition(".")
    if dot:  # Python reads at most 6 fractional digits: trim them, keep the offset
        digits = len(rest) - len(rest.lstrip("0123456789"))
        head = f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}"
    parsed = datetime.fromisoformat(head)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def to_label(event: ValidEvent) -> StoredLabel:
    """Decode one valid label; ValueError (or KeyError, TypeError) when it is not one."""
    body: dict[str, Any] = orjson.loads(event.value)
    amount = body.get("chargeback_amount")
    fraud_type = body.get("fraud_type")
    topic, partition, offset = event.source
    return StoredLabel(
        event_id=str(body["event_id"]),
        transaction_id=str(body["transaction_id"]),
        account_id=str(body["account_id"]),
        is_fraud=bool(body["is_fraud"]),
        label_time_ms=rfc3339_ms(str(body["label_time"])),
        source=str(body["source"]),
        fraud_type=None if fraud_type is None else str(fraud_type),
        chargeback_amount=None if amount is None else float(amount),
        produced_at_ms=event.produced_at_ms,
        ingested_at_ms=event.ingested_at_ms,
        topic=topic,
        partition=partition,
        offset=offset,
        handoff_partition=event.handoff_partition,
        handoff_offset=event.handoff_offset,
    )


def decode_labels(
    events: Sequence[ValidEvent],
) -> tuple[list[StoredLabel], list[tuple[ValidEvent, str]]]:
    """Labels, and the events that are not labels with why."""
    labels: list[StoredLabel] = []
    failed: list[tuple[ValidEvent, str]] = []
    for event in events:
        try:
            labels.append(to_label(event))
        except (ValueError, KeyError, TypeError) as exc:
            failed.append((event, f"not a decodable label: {exc!r}"))
    return labels, failed


def fresh_labels(labels: Sequence[StoredLabel], present: set[Source]) -> list[StoredLabel]:
    """``labels`` whose raw coordinates are not in ``present``, each coordinate once."""
    seen = set(present)
    fresh: list[StoredLabel] = []
    for label in labels:
        if label.coordinates not in seen:
            seen.add(label.coordinates)
            fresh.append(label)
    return fresh


def label_rows(labels: Sequence[StoredLabel], worker_id: str, sunk_at_ms: int) -> pa.Table:
    """``labels`` rows; ``sunk_at`` is one value per batch (one part, atomic insert)."""

    def col(name: str, dtype: pa.DataType) -> pa.Array:
        return pa.array([getattr(label, name) for label in labels], type=dtype)

    n = len(labels)
    return pa.table(
        {
            "event_id": col("event_id", pa.string()),
            "transaction_id": col("transaction_id", pa.string()),
            "account_id": col("account_id", pa.string()),
            "is_fraud": col("is_fraud", pa.bool_()),
            "label_time": col("label_time_ms", pa.int64()).cast(_TS),
            "source": col("source", pa.string()),
            "fraud_type": col("fraud_type", pa.string()),
            "chargeback_amount": col("chargeback_amount", pa.float64()),
            "produced_at": col("produced_at_ms", pa.int64()).cast(_TS),
            "ingested_at": col("ingested_at_ms", pa.int64()).cast(_TS),
            "topic": col("topic", pa.string()),
            "partition": col("partition", pa.uint16()),
            "offset": col("offset", pa.uint64()),
            "handoff_partition": col("handoff_partition", pa.uint16()),
            "handoff_offset": col("handoff_offset", pa.uint64()),
            "worker_id": pa.array([worker_id] * n, type=pa.string()),
            "sunk_at": pa.array([sunk_at_ms] * n, type=pa.int64()).cast(_TS),
        }
    )


class LabelStore:
    """What the labels agent holds; ``handle`` is the batch handler (callable on its own)."""

    def __init__(
        self,
        settings: Settings,
        gateway: ClickHouseGateway,
        handoff: KafkaHandoff | None = None,
    ) -> None:
        self.settings = settings
        self.gateway = gateway
        self.topic = valid_topic(settings, "label")
        self.dedup = settings.sink_dedup
        self._handoff = handoff
        self.counts = {"stored": 0, "already_stored": 0, "undecodable": 0}

    def existing(self, labels: Sequence[StoredLabel]) -> set[Source]:
        """Which raw coordinates of ``labels`` are stored already."""
        return existing_sources(self.gateway, TABLE, [label.coordinates for label in labels])

    def write(self, labels: Sequence[StoredLabel]) -> None:
        token = dedup_token(
            self.topic,
            ((label.handoff_partition, label.handoff_offset) for label in labels),
            [TABLE],
        )
        rows = label_rows(labels, self.settings.worker_id, now_ms())
        self.gateway.insert_arrow(TABLE, rows, settings=insert_settings(token, self.dedup))

    async def handle(self, messages: Sequence[Message]) -> None:
        """Store a batch's labels not stored yet; raises SinkError when ClickHouse fails."""
        labels, failed = decode_labels([to_valid_event(m) for m in messages])
        if failed:
            await self.dead_letters(failed)
        if self.dedup and labels:
            present = await asyncio.to_thread(self.existing, labels)
            fresh = fresh_labels(labels, present)
            self.counts["already_stored"] += len(labels) - len(fresh)
            labels = fresh
        if not labels:
            return
        await asyncio.to_thread(self.write, labels)
        self.counts["stored"] += len(labels)

    async def dead_letters(self, failed: Sequence[tuple[ValidEvent, str]]) -> None:
        letters = [
            DeadLetter(
                RawRecord(e.source[0], e.source[1], e.source[2], e.produced_at_ms, e.key, e.value),
                UNDECODABLE,
                why,
            )
            for e, why in failed
        ]
        self.counts["undecodable"] += len(letters)
        log.warning("%d labels could not be decoded; sent to the DLQ", len(letters))
        if self._handoff is None:
            self._handoff = KafkaHandoff(self.settings)
        await self._handoff.deliver([], letters, stage="labels")


def register_labels_agent(
    app: object, settings: Settings, gateway: ClickHouseGateway
) -> BatchAgent:
    """Attach the labels agent to the faust ``app``; returns it."""
    import faust

    assert isinstance(app, faust.App)
    store = LabelStore(settings, gateway)
    agent = BatchAgent(
        settings,
        "labels",
        [store.topic],
        store.handle,
        exit_code=EXIT_LABELS_SINK_FAILED,
        # Time-closed batches like the predictions sink: about one insert a second.
        batch_size=5000,
        batch_seconds=settings.sink_flush_seconds,
        gather_bytes=settings.sink_max_bytes,
        loop=app.loop,
        beacon=app.beacon,
    )
    agent.labels = store  # type: ignore[attr-defined]
    app.add_dependency(agent)
    return agent
