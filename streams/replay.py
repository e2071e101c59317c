"""Re-score a range of the raw topic, or re-drive dead letters, without duplicating a row.

Both read raw records (the replay from the raw topic, ``dlq replay`` the original bytes
and coordinates carried by each dead letter), validate them against today's schemas,
score the valid ones with the serving models (or one ``--model``) and write predictions
keyed on the raw coordinates. Before each insert they ask ClickHouse which (coordinates,
model version) rows exist and write only the others, so running the same replay twice
adds nothing, and replaying with another model version adds one row per event for it.

Features (``features=``, ``--features``):

* ``as-of-event-time`` (the default): each event is scored with the nightly run in
  effect at its event time (``event_time`` in the payload), by the rule the live worker
  applies to each event too (``streams.features.runs``): among the successful runs in
  effect by then (``effective_at <= t``: the run's finish plus
  STREAMSCORE_FEATURE_SWITCH_DELAY_S) whose nightly date is not after t's UTC date
  (training's point-in-time rule: features at D use only events before D), the newest
  nightly date, then the newest ``effective_at``. Each run's features are loaded by run
  id, the bytes the run kept (``features.run_exports``, sha256-checked), the same bytes
  the live worker loaded. So a replay reproduces each live row, including events of the
  seconds after a run finished and late events from before a switch. Where the worker
  could not follow the rule the replay differs and reports it (``run_changed``): an event
  older than every run the worker held (``streamscore_features_stale_events_total``); a
  run that took effect before a worker had loaded it (the switch delay shorter than a
  reload plus a load: the worker logs a warning); rows scored before runs had an
  effective time (the worker switched at its reload then). An event before any run was
  in effect (``no_run``) or whose run's features were pruned
  (``STREAMSCORE_FEATURE_RUN_RETENTION_DAYS``) or never kept by run id
  (``run_not_kept``) is counted and not scored: there is no fallback to other features.
* ``current``: every event with the newest run (the one the worker serves new events).

Where an event already has rows (the live worker's), the replay compares without
writing: events whose chosen run differs from the row's ``feature_run_id`` are counted by
(original, replayed) run (``run_changed``), and rows whose score the replay computes
differently (``scores_changed``), so a disagreement is never silent. New rows record the
run they were scored with in ``feature_run_id``.

A replay groups each batch's events by run and scores each group with that run's
snapshot; a small LRU of snapshots (``SNAPSHOT_CACHE``) bounds memory, so each run is
loaded once while the replay moves forward in time.

A replay uses its own consumer group and explicit partition assignment: the live group's
offsets never move. Replayed rows carry ``run = <replay id>``; nothing is sent to the
predictions or review topics (a replay must not trigger actions twice).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from confluent_kafka import Consumer, TopicPartition

from streams.clickhouse.gateway import ClickHouseGateway
from streams.errors import ConfigError, KafkaError
from streams.features.online import OnlineFeatures, Snapshot
from streams.features.runs import (
    NightlyRun,
    RunTimeline,
    latest_successful_run,
    successful_runs,
)
from streams.headers import DLQ_ERROR_CLASS, DLQ_PREFIX, DLQ_SOURCE
from streams.ingest import Limits, ingest_batch
from streams.kafka import make_consumer
from streams.records import RawRecord, read_source
from streams.schemas.registry import SchemaRegistry
from streams.scoring.modelset import ModelSet
from streams.scoring.pipeline import (
    DecodedBatch,
    ScoredEvents,
    ValidEvent,
    decode_events,
    input_columns,
    score_events,
)
from streams.scoring.registry import artifact_path
from streams.scoring.scorer import Scorer
from streams.settings import Settings
from streams.sinks.clickhouse import PredictionsSink, Source, dedup_token
from streams.topics import dlq_topic

log = logging.getLogger("streams.replay")

Progress = Callable[[int], None]

AS_OF_EVENT_TIME = "as-of-event-time"
CURRENT = "current"
FEATURE_MODES = (AS_OF_EVENT_TIME, CURRENT)
SNAPSHOT_CACHE = 3  # runs' snapshots held at once (each is every entity's feature table)


@dataclass(slots=True)
class RescoreCounts:
    """What a replay did, by outcome."""

    read: int = 0
    scored: int = 0  # events with at least one new row
    rows_written: int = 0
    rows_present: int = 0  # (event, model) rows that already existed
    invalid: dict[str, int] = field(default_factory=dict)  # by DLQ reason
    undecodable: int = 0
    features: str = AS_OF_EVENT_TIME
    runs_used: dict[str, int] = field(default_factory=dict)  # feature run → events scored
    no_run: int = 0  # events before any nightly run was live: not scored
    run_not_kept: dict[str, int] = field(default_factory=dict)  # run kept no features: events
    # (the original row's feature run, the replay's) → events where they differ
    run_changed: dict[tuple[str, str], int] = field(default_factory=dict)
    rows_compared: int = 0  # rows already there whose score was compared
    scores_changed: int = 0  # of those, rows the replay scores differently
    snapshots_loaded: int = 0
    first_live: str = ""  # when the first nightly run became live (UTC, ISO), if no_run

    @property
    def run_mismatch(self) -> int:
        """Events whose replay run differs from the run on their original rows."""
        return sum(self.run_changed.values())

    @property
    def unserved(self) -> int:
        """Valid events not scored: no features as of their event time."""
        return self.no_run + sum(self.run_not_kept.values())

    def add(self, other: RescoreCounts) -> None:
        self.read += other.read
        self.scored += other.scored
        self.rows_written += other.rows_written
        self.rows_present += other.rows_present
        self.undecodable += other.undecodable
        self.no_run += other.no_run
        self.rows_compared += other.rows_compared
        self.scores_changed += other.scores_changed
        self.snapshots_loaded += other.snapshots_loaded
        self.features = other.features
        self.first_live = self.first_live or other.first_live
        for mine, theirs in (
            (self.invalid, other.invalid),
            (self.runs_used, other.runs_used),
            (self.run_not_kept, other.run_not_kept),
        ):
            for key, n in theirs.items():
                mine[key] = mine.get(key, 0) + n
        for pair, n in other.run_changed.items():
            self.run_changed[pair] = self.run_changed.get(pair, 0) + n


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


class SnapshotCache:
    """The last few runs' snapshots, loaded by run id (least recently used goes first).

    ``require_kept``: a run that kept no features by run id gives None (the as-of rule
    never substitutes the dated export, which a rerun may have overwritten).
    """

    def __init__(
        self, features: OnlineFeatures, capacity: int = SNAPSHOT_CACHE, *, require_kept: bool
    ) -> None:
        if capacity < 1:
            raise ConfigError(f"a snapshot cache holds at least one run, not {capacity}")
        self.features = features
        self.capacity = capacity
        self.require_kept = require_kept
        self.loads = 0
        self._held: OrderedDict[str, Snapshot | None] = OrderedDict()

    def get(self, run: NightlyRun) -> Snapshot | None:
        if run.run_id in self._held:
            self._held.move_to_end(run.run_id)
            return self._held[run.run_id]
        snapshot: Snapshot | None = None
        if not self.require_kept or self.features.has_kept(run):
            snapshot = self.features.read_run(run, require_kept=self.require_kept)
            self.loads += 1
        self._held[run.run_id] = snapshot
        while len(self._held) > self.capacity:
            self._held.popitem(last=False)
        return snapshot


@dataclass(frozen=True, slots=True)
class RescoredGroup:
    """The events of one batch that one nightly run served, scored with it."""

    run: NightlyRun
    decoded: DecodedBatch
    scored: ScoredEvents

    @property
    def sources(self) -> list[Source]:
        return [e.source for e in self.decoded.events]


@dataclass(frozen=True, slots=True)
class OriginalRow:
    """What an existing predictions row recorded: its feature run and score."""

    feature_run_id: str
    score: float


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
        features: str = AS_OF_EVENT_TIME,
        cache_size: int = SNAPSHOT_CACHE,
    ) -> None:
        if features not in FEATURE_MODES:
            raise ConfigError(f"features {features!r} is not one of {', '.join(FEATURE_MODES)}")
        self.settings = settings
        self.gateway = gateway
        self.run_id = run_id
        self.mode = features
        self.registry = SchemaRegistry.load(settings.schemas_dir)
        self.limits = Limits(settings.max_payload_bytes, settings.max_nesting_depth)
        self.event_type = event_type
        self.sink = PredictionsSink(gateway)
        database, service = settings.clickhouse_database, settings.feature_service
        self.features = OnlineFeatures(
            settings,
            latest_run=lambda: gateway.run(lambda c: latest_successful_run(c, database, service)),
        )
        if features == CURRENT:
            # The live worker's own query: the run it serves now.
            live = gateway.run(lambda c: latest_successful_run(c, database, service))
            history = [] if live is None else [live]
            self.timeline = None
        else:
            history = gateway.run(lambda c: successful_runs(c, database, service))
            self.timeline = RunTimeline.from_runs(history)
        if not history:
            raise ConfigError("no successful nightly feature run yet: run `streamscore nightly`")
        self.current = history[-1] if features == CURRENT else None
        self.snapshots = SnapshotCache(
            self.features, cache_size, require_kept=features == AS_OF_EVENT_TIME
        )
        spec = self.features.layout.spec
        if model is None:
            self.models = ModelSet.from_registry(settings, spec)
        else:
            scorer = Scorer.load(
                artifact_path(settings.models_dir, model),
                spec,
                providers=settings.providers,
                intra_op_threads=settings.intra_op_threads,
                gpu_crossover_rows=settings.gpu_crossover_rows,
            )
            self.models = ModelSet(scorer)
        self.columns = input_columns(self.features.layout)

    @property
    def model_ids(self) -> tuple[str, ...]:
        return self.models.model_ids

    def runs_for(
        self, event_times_ms: npt.NDArray[np.int64]
    ) -> tuple[list[NightlyRun], npt.NDArray[np.intp]]:
        """The runs to score with and, per event, its run's index in them (-1: none live)."""
        if self.timeline is None:
            assert self.current is not None
            return [self.current], np.zeros(len(event_times_ms), dtype=np.intp)
        return list(self.timeline.runs), self.timeline.at(event_times_ms)

    def rescore(self, records: Sequence[RawRecord]) -> tuple[list[RescoredGroup], RescoreCounts]:
        """Validate and score ``records``, each valid event with its run; nothing is written."""
        counts = RescoreCounts(read=len(records), features=self.mode)
        accepted, dead = ingest_batch(records, self.registry, self.limits)
        for letter in dead:
            counts.invalid[letter.reason] = counts.invalid.get(letter.reason, 0) + 1
        events = [
            _as_valid_event(a.record) for a in accepted if a.schema.event_type == self.event_type
        ]
        if not events:
            return [], counts
        decoded = decode_events(events, self.columns)
        counts.undecodable = len(decoded.failed)
        if not decoded.events:
            return [], counts
        times = decoded.table.column("event_time").cast(pa.int64()).to_numpy()
        runs, chosen = self.runs_for(times)
        counts.no_run = int((chosen < 0).sum())
        if counts.no_run and self.timeline is not None:
            first = self.timeline.first_live_ms or 0
            counts.first_live = datetime.fromtimestamp(first / 1000, UTC).isoformat()
        loads = self.snapshots.loads
        groups: list[RescoredGroup] = []
        for index in np.unique(chosen[chosen >= 0]).tolist():
            run = runs[index]
            rows = np.flatnonzero(chosen == index)
            snapshot = self.snapshots.get(run)
            if snapshot is None:
                counts.run_not_kept[run.run_id] = len(rows)
                continue
            part = _take(decoded, rows)
            scored = score_events(
                part,
                self.features.pinned(snapshot),
                self.models,
                run=self.run_id,
                worker_id=self.settings.worker_id,
                picked_up_ms=int(time.time() * 1000),
            )
            counts.runs_used[run.run_id] = len(rows)
            groups.append(RescoredGroup(run, part, scored))
        counts.snapshots_loaded = self.snapshots.loads - loads
        return groups, counts

    def process(self, records: Sequence[RawRecord], topic_tag: str) -> RescoreCounts:
        """Score ``records`` and write the rows not there yet; compare the others."""
        groups, counts = self.rescore(records)
        if not groups:
            return counts
        originals = original_rows(
            self.gateway, [s for g in groups for s in g.sources], self.model_ids
        )
        for group in groups:
            self._write(group, originals, counts, topic_tag)
        return counts

    def _write(
        self,
        group: RescoredGroup,
        originals: Mapping[tuple[Source, str], OriginalRow],
        counts: RescoreCounts,
        topic_tag: str,
    ) -> None:
        sources = group.sources
        n = len(sources)
        replayed_run = group.run.run_id
        keep = np.ones(group.scored.predictions.num_rows, dtype=np.bool_)
        changed: dict[int, str] = {}  # event → its original rows' run, where it differs
        for block, m in enumerate(group.scored.models):
            for i, source in enumerate(sources):
                original = originals.get((source, m.model_id))
                if original is None:
                    continue
                keep[block * n + i] = False
                counts.rows_compared += 1
                if not _same_score(original.score, m.scores[i]):
                    counts.scores_changed += 1
                if original.feature_run_id != replayed_run:
                    changed.setdefault(i, original.feature_run_id)
        for was in changed.values():
            pair = (was, replayed_run)
            counts.run_changed[pair] = counts.run_changed.get(pair, 0) + 1
        counts.rows_present += int((~keep).sum())
        rows = group.scored.predictions.filter(pa.array(keep))
        if rows.num_rows:
            token = dedup_token(
                f"{topic_tag}:{self.run_id}:{replayed_run}",
                ((s[1], s[2]) for s in sources),
                [m.model_id for m in group.scored.models],
            )
            self.sink.write(rows, token)
        counts.rows_written += rows.num_rows
        counts.scored += len(set((np.flatnonzero(keep) % n).tolist()))


def original_rows(
    gateway: ClickHouseGateway, sources: Sequence[Source], model_versions: Sequence[str]
) -> dict[tuple[Source, str], OriginalRow]:
    """The rows already in ``predictions`` for ``sources`` and ``model_versions``: each
    one's feature run and score, keyed by (coordinates, model version)."""
    found: dict[tuple[Source, str], OriginalRow] = {}
    by_partition: dict[tuple[str, int], list[int]] = {}
    for topic, partition, offset in sources:
        by_partition.setdefault((topic, partition), []).append(offset)
    for (topic, partition), offsets in by_partition.items():
        # Copies of a row (before ReplacingMergeTree folds them) are the same row: any().
        result = gateway.query(
            "select offset, model_version, any(feature_run_id), any(score) "  # noqa: S608 - checked identifiers, values bound
            f"from {gateway.table('predictions')} "
            "where topic = {topic:String} and partition = {partition:UInt16} "
            "and offset between {low:UInt64} and {high:UInt64} "
            "and has({offsets:Array(UInt64)}, offset) "
            "and has({versions:Array(String)}, model_version) "
            "group by offset, model_version",
            {
                "topic": topic,
                "partition": partition,
                "low": min(offsets),
                "high": max(offsets),
                "offsets": offsets,
                "versions": list(model_versions),
            },
        )
        for offset, version, run_id, score in result.result_rows:
            key = ((topic, partition, int(offset)), str(version))
            found[key] = OriginalRow(str(run_id), float(score))
    return found


def _same_score(original: float, replayed: np.float32) -> bool:
    """Bit-for-bit the same float32 (a NaN score, routed to review, equals a NaN)."""
    was = np.float32(original)
    return bool(was == replayed or (np.isnan(was) and np.isnan(replayed)))


def _take(decoded: DecodedBatch, rows: npt.NDArray[np.intp]) -> DecodedBatch:
    """The events at ``rows`` (increasing) of ``decoded``, as a batch of their own."""
    picked = rows.tolist()
    return DecodedBatch(
        [decoded.events[i] for i in picked],
        decoded.table.take(pa.array(rows)),
        [],
        [decoded.parsed[i] for i in picked] if decoded.parsed else [],
    )


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
    features: str = AS_OF_EVENT_TIME,
    progress: Progress | None = None,
) -> tuple[ReplayRange, RescoreCounts, str]:
    """Re-validate dead letters (e.g. after a schema fix) and score those now valid, with
    the features as of each event's time (or ``features="current"``).

    Rows keep the events' original raw coordinates, so a second re-drive adds nothing.
    Records still invalid are counted by reason and stay where they are.
    """
    run_id = new_run_id("redrive")
    topic = dlq_topic(settings)
    consumer = make_consumer(settings, f"{settings.app_id}-{run_id}")
    try:
        span = resolve_range(consumer, topic, **span_request)  # type: ignore[arg-type]
        rescorer = Rescorer(settings, gateway, run_id=run_id, model=model, features=features)
        total = RescoreCounts(features=features)
        for batch in read_range(consumer, span):
            chosen = [d for d in batch if not reasons or dead_letter_reason(d) in reasons]
            originals = [original_record(d) for d in chosen]
            total.add(rescorer.process(originals, topic))
            total.read += len(batch) - len(chosen)
            if progress is not None:
                progress(len(batch))
    finally:
        consumer.close()
    _warn(total, run_id)
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
    features: str = AS_OF_EVENT_TIME,
    progress: Progress | None = None,
) -> tuple[ReplayRange, RescoreCounts, str]:
    """Re-score a range of ``topic`` with the features as of each event's time (or
    ``features="current"``); returns the resolved range, counts and the run id."""
    run_id = new_run_id()
    consumer = make_consumer(settings, f"{settings.app_id}-{run_id}")
    try:
        span = resolve_range(consumer, topic, **span_request)  # type: ignore[arg-type]
        rescorer = Rescorer(settings, gateway, run_id=run_id, model=model, features=features)
        total = RescoreCounts(features=features)
        for batch in read_range(consumer, span):
            total.add(rescorer.process(batch, topic))
            if progress is not None:
                progress(len(batch))
    finally:
        consumer.close()
    _warn(total, run_id)
    return span, total, run_id


def _warn(counts: RescoreCounts, run_id: str) -> None:
    """Say in the log what a library caller might not print: disagreements, unserved."""
    if counts.run_mismatch:
        log.warning(
            "replay %s: %d events scored with another feature run than their original rows "
            "(original → replay: %s)",
            run_id, counts.run_mismatch, dict(counts.run_changed),
        )  # fmt: skip
    if counts.unserved:
        log.warning(
            "replay %s: %d events not scored, no features as of their event time "
            "(%d before the first run, by run not kept: %s)",
            run_id, counts.unserved, counts.no_run, counts.run_not_kept,
        )  # fmt: skip


__all__ = [
    "AS_OF_EVENT_TIME",
    "CURRENT",
    "FEATURE_MODES",
    "OriginalRow",
    "ReplayRange",
    "RescoreCounts",
    "RescoredGroup",
    "Rescorer",
    "SnapshotCache",
    "new_run_id",
    "original_record",
    "original_rows",
    "parse_offsets",
    "read_range",
    "redrive",
    "replay",
    "resolve_range",
]
