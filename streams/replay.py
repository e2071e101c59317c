"""Re-score a range of the raw topic, or re-drive dead letters, without duplicating a row.

Both read raw records (the replay from the raw topic, ``dlq replay`` the original bytes
and coordinates carried by each dead letter), validate them against today's schemas,
score the valid ones with the serving models (or one ``--model``) and write predictions
keyed on the raw coordinates. Before each insert they ask ClickHouse which (coordinates,
model version) rows exist and write only the others, so running the same replay twice
adds nothing, and replaying with another model version adds one row per event for it.

A replay uses its own consumer group and explicit partition assignment: the live group's
offsets never move. Replayed rows carry ``run = <replay id>``; nothing is sent to the
predictions or review topics (a replay must not trigger actions twice).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pyarrow as pa
from confluent_kafka import Consumer, TopicPartition

from streams.clickhouse.gateway import ClickHouseGateway
from streams.errors import ConfigError, KafkaError
from streams.features.online import OnlineFeatures
from streams.features.runs import latest_successful_run
from streams.headers import DLQ_ERROR_CLASS, DLQ_PREFIX, DLQ_SOURCE
from streams.ingest import Limits, ingest_batch
from streams.kafka import make_consumer
from streams.records import RawRecord, read_source
from streams.schemas.registry import SchemaRegistry
from streams.scoring.modelset import ModelSet
from streams.scoring.pipeline import ValidEvent, decode_events, input_columns, score_events
from streams.scoring.registry import artifact_path
from streams.scoring.scorer import Scorer
from streams.settings import Settings
from streams.sinks.clickhouse import PredictionsSink, dedup_token
from streams.topics import dlq_topic

log = logging.getLogger("streams.replay")

Progress = Callable[[int], None]


@dataclass(slots=True)
class RescoreCounts:
    """What a replay did, by outcome."""

    read: int = 0
    scored: int = 0  # events with at least one new row
    rows_written: int = 0
    rows_present: int = 0  # (event, model) rows that already existed
    invalid: dict[str, int] = field(default_factory=dict)  # by DLQ reason
    undecodable: int = 0

    def add(self, other: RescoreCounts) -> None:
        self.read += other.read
        self.scored += other.scored
        self.rows_written += other.rows_written
        self.rows_present += other.rows_present
        self.undecodable += other.undecodable
        for reason, n in other.invalid.items():
            self.invalid[reason] = self.invalid.get(reason, 0) + n


def parse_offsets(text: str) -> dict[int, int]:
    """``"0:100,3:250"`` → {0: 100, 3: 250}; a clear ConfigError otherwise."""
    out: dict[int, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        partition, sep, offset = part.partition(":")
        if not sep:
            raise ConfigError(f"offset {part!r} is not PARTITION:OFFSET (e.g. 0:1200)")
        try:
            p, o = int(partition), int(offset)
        except ValueError:
            raise ConfigError(f"offset {part!r} is not PARTITION:OFFSET with integers") from None
        if p < 0 or o < 0:
            raise ConfigError(f"offset {part!r} has a negative partition or offset")
        out[p] = o
    if not out:
        raise ConfigError(f"no PARTITION:OFFSET in {text!r}")
    return out


@dataclass(frozen=True, slots=True)
class ReplayRange:
    """Per partition: first offset (inclusive) and end offset (exclusive)."""

    topic: str
    start: Mapping[int, int]
    end: Mapping[int, int]

    @property
    def size(self) -> int:
        return sum(max(0, self.end[p] - self.start[p]) for p in self.start)

    def describe(self) -> str:
        spans = ", ".join(f"{p}:[{self.start[p]},{self.end[p]})" for p in sorted(self.start))
        return f"{self.topic} {spans}"


def resolve_range(
    consumer: Consumer,
    topic: str,
    *,
    from_offsets: Mapping[int, int] | None = None,
    from_time: datetime | None = None,
    to_offsets: Mapping[int, int] | None = None,
    to_time: datetime | None = None,
    partitions: Sequence[int] | None = None,
    timeout: float = 30.0,
) -> ReplayRange:
    """Offsets for the requested range; ``to_offsets`` are inclusive, times are UTC.

    Without an end, the range ends at each partition's high watermark now (a replay
    never chases the live head).
    """
    if (from_offsets is None) == (from_time is None):
        raise ConfigError("give exactly one of --from-offset and --from-time")
    if to_offsets is not None and to_time is not None:
        raise ConfigError("give at most one of --to-offset and --to-time")
    try:
        metadata = consumer.list_topics(topic, timeout=timeout)
    except Exception as exc:
        raise KafkaError(f"cannot read metadata of {topic}: {exc}") from exc
    known = sorted(metadata.topics[topic].partitions) if topic in metadata.topics else []
    if not known:
        raise ConfigError(f"topic {topic} does not exist or has no partitions")
    chosen = list(partitions) if partitions else list(from_offsets or known)
    unknown = [p for p in chosen if p not in known]
    if unknown:
        raise ConfigError(f"{topic} has no partition {unknown} (it has {known})")

    def at_time(moment: datetime) -> dict[int, int]:
        millis = int(moment.timestamp() * 1000)
        found = consumer.offsets_for_times(
            [TopicPartition(topic, p, millis) for p in chosen], timeout=timeout
        )
        highs = watermarks()
        # -1 (OFFSET_END): no record at or after the time: the range starts/ends at the head.
        return {tp.partition: highs[tp.partition] if tp.offset < 0 else tp.offset for tp in found}

    def watermarks() -> dict[int, int]:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1]
            for p in chosen
        }

    if from_offsets is not None:
        start = {p: from_offsets.get(p, 0) for p in chosen}
    else:
        assert from_time is not None
        start = at_time(from_time)
    if to_offsets is not None:
        highs = watermarks()
        end = {p: min(to_offsets.get(p, highs[p] - 1) + 1, highs[p]) for p in chosen}
    elif to_time is not None:
        end = at_time(to_time)
    else:
        end = watermarks()
    return ReplayRange(topic, start, end)


def read_range(
    consumer: Consumer, span: ReplayRange, batch_size: int = 5000, idle_timeout: float = 30.0
) -> Iterator[list[RawRecord]]:
    """Batches of raw records in ``span``, in offset order per partition."""
    todo = {p for p in span.start if span.end[p] > span.start[p]}
    if not todo:
        return
    consumer.assign([TopicPartition(span.topic, p, span.start[p]) for p in sorted(todo)])
    idle_since = time.monotonic()
    while todo:
        messages = consumer.consume(batch_size, 1.0)
        batch: list[RawRecord] = []
        for m in messages:
            if m.error() is not None:
                continue
            p, offset = int(m.partition() or 0), int(m.offset() or 0)
            if p not in todo or offset >= span.end[p]:
                continue
            kind, stamp = m.timestamp()
            batch.append(
                RawRecord(
                    span.topic,
                    p,
                    offset,
                    int(stamp) if kind else -1,
                    m.key(),
                    m.value(),
                    tuple(m.headers() or ()),  # type: ignore[arg-type]
                )
            )
            if offset + 1 >= span.end[p]:
                todo.discard(p)
        if batch:
            idle_since = time.monotonic()
            yield batch
        elif time.monotonic() - idle_since > idle_timeout:
            raise KafkaError(
                f"no records for {idle_timeout:.0f}s while replaying {span.describe()}; "
                f"partitions still open: {sorted(todo)} (records deleted by retention?)"
            )
    consumer.unassign()


class Rescorer:
    """Validate, score and idempotently write raw records, one batch at a time."""

    def __init__(
        self,
        settings: Settings,
        gateway: ClickHouseGateway,
        *,
        run_id: str,
        model: str | None = None,
        event_type: str = "transaction",
    ) -> None:
        self.settings = settings
        self.run_id = run_id
        self.registry = SchemaRegistry.load(settings.schemas_dir)
        self.limits = Limits(settings.max_payload_bytes, settings.max_nesting_depth)
        self.event_type = event_type
        self.sink = PredictionsSink(gateway)
        self.features = OnlineFeatures(
            settings,
            latest_run=lambda: gateway.run(
                lambda c: latest_successful_run(
                    c, settings.clickhouse_database, settings.feature_service
                )
            ),
        )
        if not self.features.refresh_if_newer():
            raise ConfigError("no successful nightly feature run yet: run `streamscore nightly`")
        spec = self.features.layout.spec
        if model is None:
            self.models = ModelSet.from_registry(settings, spec)
        else:
            scorer = Scorer.load(
                artifact_path(settings.models_dir, model),
                spec,
                providers=settings.providers,
                intra_op_threads=settings.intra_op_threads,
            )
            self.models = ModelSet(scorer)
        self.columns = input_columns(self.features.layout)

    @property
    def model_ids(self) -> tuple[str, ...]:
        return self.models.model_ids

    def process(self, records: Sequence[RawRecord], topic_tag: str) -> RescoreCounts:
        counts = RescoreCounts(read=len(records))
        accepted, dead = ingest_batch(records, self.registry, self.limits)
        for letter in dead:
            counts.invalid[letter.reason] = counts.invalid.get(letter.reason, 0) + 1
        events = [
            _as_valid_event(a.record) for a in accepted if a.schema.event_type == self.event_type
        ]
        if not events:
            return counts
        decoded = decode_events(events, self.columns)
        counts.undecodable = len(decoded.failed)
        if not decoded.events:
            return counts
        scored = score_events(
            decoded,
            self.features,
            self.models,
            run=self.run_id,
            worker_id=self.settings.worker_id,
            picked_up_ms=int(time.time() * 1000),
        )
        sources = [e.source for e in decoded.events]
        n = len(sources)
        keep = np.ones(scored.predictions.num_rows, dtype=np.bool_)
        for block, m in enumerate(scored.models):
            present = self.sink.existing_sources(sources, m.model_id)
            if present:
                rows = [block * n + i for i, s in enumerate(sources) if s in present]
                keep[rows] = False
        counts.rows_present = int((~keep).sum())
        rows = scored.predictions.filter(pa.array(keep))
        if rows.num_rows:
            token = dedup_token(
                f"{topic_tag}:{self.run_id}",
                ((s[1], s[2]) for s in sources),
                [m.model_id for m in scored.models],
            )
            self.sink.write(rows, token)
        counts.rows_written = rows.num_rows
        counts.scored = len(set((np.flatnonzero(keep) % n).tolist()))
        return counts


def _as_valid_event(record: RawRecord) -> ValidEvent:
    """A raw record that validated, as the scoring pipeline's input (its own coordinates)."""
    source = (record.topic, record.partition, record.offset)
    stamp = record.timestamp_ms
    return ValidEvent(
        record.partition, record.offset, source, stamp, stamp, record.key, record.value or b""
    )


def original_record(dead: RawRecord) -> RawRecord:
    """The raw record a dead letter holds: its bytes, headers and raw coordinates."""
    found = read_source(dead.headers, DLQ_SOURCE)  # the one codec: malformed → None
    if found.source is None:
        raise ConfigError(
            f"dead letter at {dead.topic}[{dead.partition}]@{dead.offset} lacks dlq.source.* "
            "headers (or they are malformed): it was not written by streamscore"
        )
    topic, partition, offset = found.source
    stamp = -1 if found.produced_at_ms is None else found.produced_at_ms
    headers = tuple((k, v) for k, v in dead.headers if not k.startswith(DLQ_PREFIX))
    return RawRecord(topic, partition, offset, stamp, dead.key, dead.value, headers)


def dead_letter_reason(dead: RawRecord) -> str:
    for key, value in dead.headers:
        if key == DLQ_ERROR_CLASS:
            return (value or b"").decode("utf-8", "replace")
    return "unknown"


def redrive(
    settings: Settings,
    gateway: ClickHouseGateway,
    span_request: Mapping[str, object],
    *,
    reasons: Sequence[str] = (),
    model: str | None = None,
    progress: Progress | None = None,
) -> tuple[ReplayRange, RescoreCounts, str]:
    """Re-validate dead letters (e.g. after a schema fix) and score those now valid.

    Rows keep the events' original raw coordinates, so a second re-drive adds nothing.
    Records still invalid are counted by reason and stay where they are.
    """
    run_id = new_run_id("redrive")
    topic = dlq_topic(settings)
    consumer = make_consumer(settings, f"{settings.app_id}-{run_id}")
    try:
        span = resolve_range(consumer, topic, **span_request)  # type: ignore[arg-type]
        rescorer = Rescorer(settings, gateway, run_id=run_id, model=model)
        total = RescoreCounts()
        for batch in read_range(consumer, span):
            chosen = [d for d in batch if not reasons or dead_letter_reason(d) in reasons]
            originals = [original_record(d) for d in chosen]
            total.add(rescorer.process(originals, topic))
            total.read += len(batch) - len(chosen)
            if progress is not None:
                progress(len(batch))
    finally:
        consumer.close()
    return span, total, run_id


def new_run_id(kind: str = "replay") -> str:
    return f"{kind}-{datetime.now().strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:4]}"


def replay(
    settings: Settings,
    gateway: ClickHouseGateway,
    span_request: Mapping[str, object],
    *,
    topic: str,
    model: str | None = None,
    progress: Progress | None = None,
) -> tuple[ReplayRange, RescoreCounts, str]:
    """Re-score a range of ``topic``; returns the resolved range, counts and the run id."""
    run_id = new_run_id()
    consumer = make_consumer(settings, f"{settings.app_id}-{run_id}")
    try:
        span = resolve_range(consumer, topic, **span_request)  # type: ignore[arg-type]
        rescorer = Rescorer(settings, gateway, run_id=run_id, model=model)
        total = RescoreCounts()
        for batch in read_range(consumer, span):
            total.add(rescorer.process(batch, topic))
            if progress is not None:
                progress(len(batch))
    finally:
        consumer.close()
    return span, total, run_id


__all__ = [
    "ReplayRange",
    "RescoreCounts",
    "Rescorer",
    "new_run_id",
    "original_record",
    "parse_offsets",
    "read_range",
    "redrive",
    "replay",
    "resolve_range",
]
