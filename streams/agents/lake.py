"""The lake agent: valid hand-off topics → hive-partitioned Parquet in the lake, each event once.

It runs on ``BatchAgent`` (group ``<app_id>-lake``): time-closed batches of at least a
second, so lake files are not tiny. Exactly once, across crashes of this worker and of
ingestion:

* the lake's manifests record the hand-off offsets each committed batch covers
  (``LakeWriter``); a restarted agent drops records at or below them, and offsets are
  stored only after the batch's files and manifest are committed. Recovery (deleting
  uncommitted files, loading the resume state) runs before the first batch; if it or a
  write fails the process exits with ``EXIT_LAKE_FAILED`` before any offset moves;
* ingestion itself is at-least-once: after a crash it re-sends a batch to the hand-off
  topic at new offsets. Such a re-delivery has the same ``source-*`` header coordinates,
  and on one hand-off partition the raw offsets of one raw partition only ever rise
  except in a re-delivery, so a per-partition high-water mark of raw offsets
  drops it. The marks go to ``<lake>/_lake_sink/<event_type>/<batch_id>.json`` before
  the batch's manifest commits, so a restart resumes them from the newest manifest.

The pure steps (grouping, selecting what is new, building events) are plain functions;
``LakeSink`` does the blocking file I/O and ``LakeStage`` runs it in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson
import pyarrow.fs as pafs
from confluent_kafka import Message

from streams.agents.batching import BatchAgent
from streams.errors import ConfigError
from streams.lake.exceptions import LakeError, LakeInputError
from streams.lake.schema import SCHEMAS, to_table
from streams.lake.writer import BatchReport, LakeWriter, RecoverReport, SourceRange, batch_digest
from streams.records import Source, read_source
from streams.schemas.registry import SchemaRegistry
from streams.settings import Settings
from streams.topics import valid_topic

__all__ = [
    "EXIT_LAKE_FAILED",
    "MAX_BATCH_BYTES",
    "HandoffRecord",
    "LakeSink",
    "LakeStage",
    "PartitionState",
    "Selection",
    "decode_marks",
    "encode_marks",
    "group_records",
    "lake_events",
    "register_lake_agent",
    "resume_points",
    "select_new",
    "to_handoff_record",
]

log = logging.getLogger("streams.agents.lake")

# Exit code when the lake cannot be recovered or written: the process stops before the
# batch's offsets are stored, so no offset is committed past an event not in the lake.
EXIT_LAKE_FAILED = 71
# A batch closes after max(1 s, ingest_batch_seconds) or once it holds this much: large
# enough for Parquet row groups worth reading, small enough to build in memory.
MAX_BATCH_BYTES = 64 * 1024 * 1024
STATE_DIR = "_lake_sink"
STATE_VERSION = 1

Partition = tuple[str, int]  # (topic, partition)


@dataclass(frozen=True, slots=True)
class HandoffRecord:
    """One record of a valid hand-off topic, with its raw source coordinates (if present)."""

    topic: str
    partition: int
    offset: int
    value: bytes
    source: Source | None = None


@dataclass(slots=True)
class PartitionState:
    """What the lake holds of one hand-off partition."""

    committed: int = -1  # the highest hand-off offset in a committed manifest
    marks: dict[Partition, int] = field(default_factory=dict)  # raw partition → highest offset


@dataclass(frozen=True, slots=True)
class Selection:
    """The part of one partition's records that goes into the lake, and the state after it."""

    records: list[HandoffRecord]
    source: SourceRange | None  # the hand-off offsets to commit; None when nothing is new
    marks: dict[Partition, int]


def to_handoff_record(message: Message) -> HandoffRecord:
    """A consumed hand-off message as a HandoffRecord.

    The record keeps the message's own coordinates; when its ``source-*`` headers are
    absent or malformed (``streams.records.read_source``) its source is None, so the
    lake's provenance columns stay empty and only the hand-off offset deduplicates it
    (the raw-offset marks cannot).
    """
    return HandoffRecord(
        str(message.topic()),
        int(message.partition() or 0),
        int(message.offset() or 0),
        message.value() or b"",
        read_source(message.headers()).source,
    )


def group_records(
    records: Iterable[HandoffRecord], event_types: Mapping[str, str]
) -> dict[str, dict[Partition, list[HandoffRecord]]]:
    """``event type → (topic, partition) → records`` in offset order; ``event_types`` maps
    each hand-off topic to its event type. A record of another topic is a LakeInputError."""
    grouped: dict[str, dict[Partition, list[HandoffRecord]]] = defaultdict(dict)
    for record in records:
        event_type = event_types.get(record.topic)
        if event_type is None:
            raise LakeInputError(
                f"record {record.topic}[{record.partition}]@{record.offset} is not from a "
                f"hand-off topic the lake agent reads ({', '.join(sorted(event_types))})"
            )
        grouped[event_type].setdefault((record.topic, record.partition), []).append(record)
    for partitions in grouped.values():
        for items in partitions.values():
            items.sort(key=lambda r: r.offset)
    return dict(grouped)


def select_new(records: Sequence[HandoffRecord], state: PartitionState) -> Selection:
    """Records of one partition (offset order) not yet in the lake.

    Drops offsets at or below ``state.committed`` (a re-read after a restart or
    rebalance) and records whose raw source offset is at or below the partition's mark
    for that raw partition (an ingestion re-delivery of an event already kept). The
    returned range covers every new offset, kept or dropped, so that it is committed.
    """
    floor = state.committed
    marks = dict(state.marks)
    kept: list[HandoffRecord] = []
    first: int | None = None
    for record in records:
        if record.offset <= floor:
            continue
        floor = record.offset
        if first is None:
            first = record.offset
        if record.source is not None:
            raw = (record.source[0], record.source[1])
            if record.source[2] <= marks.get(raw, -1):
                continue
            marks[raw] = record.source[2]
        kept.append(record)
    if first is None:
        return Selection([], None, marks)
    topic, partition = records[0].topic, records[0].partition
    return Selection(kept, (topic, partition, first, floor), marks)


def lake_events(records: Iterable[HandoffRecord]) -> list[dict[str, Any]]:
    """Parse each value (orjson) and add the provenance columns from the source headers."""
    events: list[dict[str, Any]] = []
    for record in records:
        try:
            event = orjson.loads(record.value)
        except orjson.JSONDecodeError as exc:
            raise LakeInputError(
                f"hand-off record {record.topic}[{record.partition}]@{record.offset} is not "
                f"JSON: {exc}"
            ) from exc
        if not isinstance(event, dict):
            raise LakeInputError(
                f"hand-off record {record.topic}[{record.partition}]@{record.offset} is not "
                f"a JSON object"
            )
        source = record.source or (None, None, None)
        event["source_topic"], event["source_partition"], event["source_offset"] = source
        events.append(event)
    return events


def resume_points(manifests: Iterable[Mapping[str, Any]]) -> dict[Partition, tuple[int, str]]:
    """``(topic, partition) → (last committed offset, batch_id of the batch that holds it)``.

    The offsets are ``LakeWriter.committed_offsets``; the batch ids name the state files
    with the raw-offset marks.
    """
    points: dict[Partition, tuple[int, str]] = {}
    for manifest in manifests:
        batch_id = str(manifest.get("batch_id", ""))
        for item in manifest.get("source", []):
            key = (str(item["topic"]), int(item["partition"]))
            last = int(item["last_offset"])
            if key not in points or last > points[key][0]:
                points[key] = (last, batch_id)
    return points


def encode_marks(batch_id: str, marks: Mapping[Partition, Mapping[Partition, int]]) -> bytes:
    """The state file of one batch: each hand-off partition's raw-offset marks after it."""
    document = {
        "version": STATE_VERSION,
        "batch_id": batch_id,
        "partitions": [
            {
                "topic": topic,
                "partition": partition,
                "marks": [
                    {"topic": t, "partition": p, "offset": o}
                    for (t, p), o in sorted(marks[(topic, partition)].items())
                ],
            }
            for topic, partition in sorted(marks)
        ],
    }
    return orjson.dumps(document, option=orjson.OPT_INDENT_2)


def decode_marks(payload: bytes) -> dict[Partition, dict[Partition, int]]:
    """Inverse of :func:`encode_marks`."""
    document = orjson.loads(payload)
    return {
        (str(item["topic"]), int(item["partition"])): {
            (str(m["topic"]), int(m["partition"])): int(m["offset"]) for m in item["marks"]
        }
        for item in document["partitions"]
    }


class LakeSink:
    """Writes hand-off batches into the lake; blocking, so the agent calls it in a thread.

    One sink per lake at a time (``LakeWriter.recover`` deletes a concurrent writer's
    uncommitted files, and the resume state is read once at ``start``).
    """

    def __init__(self, writer: LakeWriter, event_types: Mapping[str, str]) -> None:
        self._writer = writer
        self._types = dict(event_types)  # hand-off topic → event type
        self._state: dict[Partition, PartitionState] = {}

    @property
    def state(self) -> Mapping[Partition, PartitionState]:
        return self._state

    def start(self) -> RecoverReport:
        """Delete uncommitted files, then load where every partition resumes."""
        report = self._writer.recover()
        self._state = {}
        for event_type in sorted(set(self._types.values())):
            points = resume_points(self._writer.manifests(event_type))
            newest = {batch_id for _, batch_id in points.values()}
            stored = self._read_marks(event_type, newest)
            for key, (last, batch_id) in points.items():
                if key[0] not in self._types:
                    continue  # another prefix's topics, or a history batch
                marks = stored.get(batch_id, {}).get(key)
                if marks is None:
                    log.warning(
                        "no raw-offset marks for %s[%d] (batch %s): ingestion re-deliveries "
                        "of events before offset %d are not recognised",
                        key[0], key[1], batch_id, last,
                    )  # fmt: skip
                self._state[key] = PartitionState(last, dict(marks or {}))
        return report

    def write(self, records: Sequence[HandoffRecord]) -> list[BatchReport]:
        """Commit the new records of a batch: one lake batch per event type."""
        reports: list[BatchReport] = []
        for event_type, partitions in group_records(records, self._types).items():
            kept: list[HandoffRecord] = []
            ranges: list[SourceRange] = []
            after: dict[Partition, PartitionState] = {}
            for key, items in partitions.items():
                selection = select_new(items, self._state.get(key, PartitionState()))
                if selection.source is None:
                    continue
                kept += selection.records
                ranges.append(selection.source)
                after[key] = PartitionState(selection.source[3], selection.marks)
            if not ranges:
                continue
            table = to_table(event_type, lake_events(kept))
            batch_id = batch_digest(ranges)
            # The marks first: a manifest without them would resume with no marks.
            self._write_marks(event_type, batch_id, {k: s.marks for k, s in after.items()})
            reports.append(self._writer.write_batch(event_type, table, ranges, batch_id=batch_id))
            self._state.update(after)
        return reports

    def _state_path(self, event_type: str, name: str = "") -> str:
        return self._writer.path(STATE_DIR, event_type, *([name] if name else []))

    def _read_marks(
        self, event_type: str, newest: set[str]
    ) -> dict[str, dict[Partition, dict[Partition, int]]]:
        """The marks of the ``newest`` batches; older state files are deleted (never read again)."""
        fs = self._writer.filesystem
        folder = self._state_path(event_type)
        try:
            infos = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
            out: dict[str, dict[Partition, dict[Partition, int]]] = {}
            for info in infos:
                batch_id = info.base_name.removesuffix(".json")
                if info.type != pafs.FileType.File:
                    continue
                if batch_id in newest:
                    with fs.open_input_stream(info.path) as stream:
                        out[batch_id] = decode_marks(stream.read())
                else:  # an older batch, or one whose manifest never committed
                    fs.delete_file(info.path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LakeError(f"cannot read the lake sink's state under {folder}: {exc}") from exc
        return out

    def _write_marks(
        self, event_type: str, batch_id: str, marks: Mapping[Partition, Mapping[Partition, int]]
    ) -> None:
        fs = self._writer.filesystem
        final = self._state_path(event_type, f"{batch_id}.json")
        temp = posixpath.join(posixpath.dirname(final), f".tmp-{uuid.uuid4().hex}")
        try:
            fs.create_dir(posixpath.dirname(final), recursive=True)
            with fs.open_output_stream(temp) as stream:
                stream.write(encode_marks(batch_id, marks))
            fs.move(temp, final)
        except OSError as exc:
            raise LakeError(f"could not write {final}: {exc}; offsets not committed") from exc


class LakeStage:
    """The lake agent's handlers around one ``LakeSink``: recovery once, then each batch."""

    def __init__(self, sink: LakeSink, root: str) -> None:
        self.sink = sink
        self.root = root
        self.recovered: RecoverReport | None = None
        self.counts = {"batches": 0, "rows": 0}

    async def start(self) -> None:
        """Recover the lake and load the resume state, once, before anything is written.

        Damage (unreadable files, a manifest without its fields) is a LakeError, so the
        agent exits with ``EXIT_LAKE_FAILED`` before any offset is stored.
        """
        if self.recovered is not None:
            return
        try:
            report = await asyncio.to_thread(self.sink.start)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LakeError(
                f"lake recovery at {self.root} failed: {type(exc).__name__}: {exc}; "
                "nothing was consumed"
            ) from exc
        self.recovered = report
        if report.orphans or report.temps:
            log.info(
                "lake recovery deleted %d uncommitted files and %d temp files",
                len(report.orphans), len(report.temps),
            )  # fmt: skip

    async def on_assigned(self, partitions: Sequence[tuple[str, int]]) -> None:
        # The resume state covers every hand-off partition and only this sink writes the
        # lake, so it stays right across rebalances: a partition that comes back resumes
        # at its committed Kafka offset, and select_new drops what the lake already holds.
        await self.start()
        log.info("lake: assigned %s", ", ".join(f"{t}[{p}]" for t, p in sorted(partitions)))

    async def handle(self, messages: Sequence[Message]) -> None:
        """Commit a batch's new records to the lake; raises LakeError when that fails."""
        await self.start()  # on_assigned runs first; this only guards the order
        records = [to_handoff_record(m) for m in messages]
        try:
            reports = await asyncio.to_thread(self.sink.write, records)
        except OSError as exc:
            raise LakeError(
                f"lake write of {len(records)} records to {self.root} failed: {exc}; "
                "offsets not committed"
            ) from exc
        for report in reports:
            self.counts["batches"] += 1
            self.counts["rows"] += report.rows
            log.debug("lake batch %s: %d rows", report.batch_id, report.rows)


def register_lake_agent(
    app: faust.App,
    settings: Settings,
    registry: SchemaRegistry,
    writer: LakeWriter | None = None,
) -> BatchAgent:
    """Attach the lake agent (every hand-off topic the lake has a schema for); returns it."""
    types = {valid_topic(settings, t): t for t in registry.event_types if t in SCHEMAS}
    for missing in sorted(set(registry.event_types) - set(SCHEMAS)):
        log.warning("event type %r has no lake schema; its events are not archived", missing)
    if not types:
        raise ConfigError(
            f"no event type in {settings.schemas_dir} has a lake schema "
            f"({', '.join(sorted(SCHEMAS))}); drop 'lake' from STREAMSCORE_AGENTS"
        )
    writer = writer or LakeWriter(settings.lake_url)
    stage = LakeStage(LakeSink(writer, types), writer.root)
    agent = BatchAgent(
        settings,
        "lake",
        sorted(types),
        stage.handle,
        exit_code=EXIT_LAKE_FAILED,
        batch_size=settings.ingest_batch_size,
        # Lake files should not be tiny: gather at least a second per batch.
        batch_seconds=max(1.0, settings.ingest_batch_seconds),
        gather_bytes=MAX_BATCH_BYTES,
        on_assigned=stage.on_assigned,
        loop=app.loop,
        beacon=app.beacon,
    )
    agent.lake = stage  # type: ignore[attr-defined]
    app.add_dependency(agent)
    return agent
