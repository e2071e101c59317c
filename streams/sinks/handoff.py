"""The ingestion hand-off: accepted events to their valid topic, dead letters to the DLQ.

Both keep the original key and value bytes. Accepted events gain ``source-*`` headers
(topic, partition, offset of the raw record; the codec is ``streams.records``), so every
downstream consumer can deduplicate on the source coordinates: ingestion is
at-least-once, and a worker crash between send and commit re-sends a batch that
downstream then drops as duplicates.
Dead letters gain ``dlq.*`` headers that say what was wrong and where it came from.

``deliver`` returns only when the broker acknowledged every record (acks=all,
idempotent producer); the caller commits offsets only after that.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import astuple

import orjson
from confluent_kafka import KafkaError as _ConfluentError
from confluent_kafka import Message, Producer

from streams.errors import DeliveryError, Violation
from streams.headers import (
    DLQ_ERROR_CLASS,
    DLQ_ERROR_MESSAGE,
    DLQ_ERROR_PATHS,
    DLQ_PREFIX,
    DLQ_SCHEMA_ID,
    DLQ_SOURCE,
    DLQ_STAGE,
    DLQ_WORKER_ID,
    EVENT_TYPE,
    SCHEMA_ID,
    SCHEMA_VERSION,
    VALID_SOURCE,
)
from streams.ingest import Accepted, DeadLetter
from streams.kafka import make_producer
from streams.records import source_headers
from streams.schemas.validation import MAX_PATH_CHARS
from streams.settings import Settings
from streams.text import bounded
from streams.topics import dlq_topic, valid_topic

__all__ = [
    "MAX_EVENT_ID_CHARS",
    "MAX_MESSAGE_CHARS",
    "MAX_PATHS_BYTES",
    "Header",
    "KafkaHandoff",
    "dead_letter_headers",
    "handoff_headers",
    "log_dead_letter",
    "paths_header",
]

Header = tuple[str, bytes]
# A raw record's own copies of these are dropped: the hand-off writes them, so a reader
# never sees two (a producer's ``source-offset`` cannot pose as ours).
_REPLACED_ON_HANDOFF = frozenset((SCHEMA_ID, EVENT_TYPE, SCHEMA_VERSION, *astuple(VALID_SOURCE)))
# A DLQ header or a log line quotes input (a header value, an event's string) only cut
# with bounded(), which says how long the original was: a 1 MB header costs 2 KB.
MAX_MESSAGE_CHARS = 2000
MAX_PATHS_BYTES = 2000
MAX_EVENT_ID_CHARS = 128

log = logging.getLogger("streams.sinks.handoff")


def handoff_headers(accepted: Accepted, now_ms: int) -> list[Header]:
    """Headers of an accepted event on its valid topic: schema identity and source offsets."""
    record, schema = accepted.record, accepted.schema
    headers: list[Header] = [
        (k, v) for k, v in record.headers if k not in _REPLACED_ON_HANDOFF and v is not None
    ]
    headers += [
        (SCHEMA_ID, schema.schema_id.encode()),
        (EVENT_TYPE, schema.event_type.encode()),
        (SCHEMA_VERSION, str(schema.version).encode()),
    ]
    headers += source_headers(record, now_ms, VALID_SOURCE)
    return headers


def dead_letter_headers(dead: DeadLetter, stage: str, worker_id: str, now_ms: int) -> list[Header]:
    """The original headers (minus any earlier ``dlq.*``) followed by why and from where."""
    record = dead.record
    headers: list[Header] = [
        (k, v if v is not None else b"") for k, v in record.headers if not k.startswith(DLQ_PREFIX)
    ]
    headers += source_headers(record, now_ms, DLQ_SOURCE)
    headers += [
        (DLQ_STAGE, stage.encode()),
        (DLQ_ERROR_CLASS, dead.reason.encode()),
        (DLQ_ERROR_MESSAGE, bounded(dead.message, MAX_MESSAGE_CHARS).encode()),
        (DLQ_ERROR_PATHS, paths_header(dead.violations)),
        (DLQ_SCHEMA_ID, (dead.schema_id or "").encode()),
        (DLQ_WORKER_ID, worker_id.encode()),
    ]
    return headers


def paths_header(violations: Sequence[Violation]) -> bytes:
    """The violations' distinct paths as a JSON list of at most MAX_PATHS_BYTES; when
    they do not all fit, the last item says how many there were in all."""
    paths = sorted({bounded(v.path, MAX_PATH_CHARS) for v in violations})
    whole = orjson.dumps(paths)
    if len(whole) <= MAX_PATHS_BYTES:
        return whole
    marker = f"…[truncated, {len(paths)} paths]"
    room = MAX_PATHS_BYTES - len(orjson.dumps([marker]))
    kept: list[str] = []
    for path in paths:
        room -= len(orjson.dumps(path)) + 1  # the path and its comma
        if room < 0:
            break
        kept.append(path)
    return orjson.dumps([*kept, marker])


class KafkaHandoff:
    """Produces a batch's results and waits for the broker's acknowledgement of each."""

    def __init__(self, settings: Settings, producer: Producer | None = None) -> None:
        self._settings = settings
        self._producer = producer or make_producer(
            settings, **{"linger.ms": 2, "delivery.report.only.error": True}
        )
        self._dlq = dlq_topic(settings)
        self._valid: dict[str, str] = {}
        self._failures: list[str] = []

    def _valid_topic(self, event_type: str) -> str:
        topic = self._valid.get(event_type)
        if topic is None:
            topic = self._valid[event_type] = valid_topic(self._settings, event_type)
        return topic

    def _on_delivery(self, err: _ConfluentError | None, msg: Message) -> None:
        if err is not None:
            self._failures.append(f"{msg.topic()}[{msg.partition()}]: {err}")

    def produce(
        self, accepted: Sequence[Accepted], dead: Sequence[DeadLetter], stage: str = "ingest"
    ) -> None:
        """Queue every record (non-blocking unless the local queue is full)."""
        now_ms = int(time.time() * 1000)
        produce, callback = self._producer.produce, self._on_delivery
        for item in accepted:
            record = item.record
            key = record.key
            if key is None:
                # Key by the schema's key field so every copy of an event (a re-delivery
                # after a crash) lands on the same partition as the first.
                value = item.event.get(item.schema.key_field)
                key = str(value).encode() if value is not None else None
            self._produce(
                produce,
                self._valid_topic(item.schema.event_type),
                key,
                record.value,
                handoff_headers(item, now_ms),
                callback,
            )
        worker_id = self._settings.worker_id
        for letter in dead:
            record = letter.record
            self._produce(
                produce,
                self._dlq,
                record.key,
                record.value,
                dead_letter_headers(letter, stage, worker_id, now_ms),
                callback,
            )

    def _produce(self, produce, topic, key, value, headers, callback) -> None:  # type: ignore[no-untyped-def]
        while True:
            try:
                produce(topic, value=value, key=key, headers=headers, on_delivery=callback)
                return
            except BufferError:
                self._producer.poll(0.05)

    def flush(self, timeout: float = 120.0) -> None:
        """Block until every queued record is acknowledged; DeliveryError if any failed."""
        remaining = self._producer.flush(timeout)
        failures, self._failures = self._failures, []
        if remaining:
            raise DeliveryError(
                f"{remaining} hand-off records not acknowledged within {timeout}s by "
                f"{self._settings.bootstrap_servers}; offsets not committed"
            )
        if failures:
            raise DeliveryError(
                f"{len(failures)} hand-off records failed: {'; '.join(failures[:5])}; "
                "offsets not committed"
            )

    async def deliver(
        self, accepted: Sequence[Accepted], dead: Sequence[DeadLetter], stage: str = "ingest"
    ) -> None:
        """Produce and wait for acks without blocking the event loop; then log each dead
        letter (where it came from, why, at which stage) once it is safely on the DLQ."""
        # All of it in a thread: produce() waits while librdkafka's queue is full, and
        # each dead-letter line may parse its payload for the event id.
        await asyncio.to_thread(self._deliver, accepted, dead, stage)

    def _deliver(
        self, accepted: Sequence[Accepted], dead: Sequence[DeadLetter], stage: str
    ) -> None:
        self.produce(accepted, dead, stage)
        self.flush()
        for letter in dead:
            log_dead_letter(letter, stage)


def log_dead_letter(letter: DeadLetter, stage: str) -> None:
    r = letter.record
    extra = {
        "stage": stage, "reason": letter.reason, "schema_id": letter.schema_id,
        "source_topic": r.topic, "source_partition": r.partition, "source_offset": r.offset,
        "event_id": _event_id(r.value),
    }  # fmt: skip
    log.info(
        "dead letter %s[%d]@%d (%s at %s): %s",
        r.topic, r.partition, r.offset, letter.reason, stage,
        bounded(letter.message, MAX_MESSAGE_CHARS),
        extra=extra,
    )  # fmt: skip


def _event_id(value: bytes | None) -> str | None:
    """The ``event_id`` of a dead letter that is a JSON object with one (often it is)."""
    if not value or len(value) > 64 * 1024:
        return None
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    event_id = parsed.get("event_id") if isinstance(parsed, dict) else None
    return bounded(event_id, MAX_EVENT_ID_CHARS) if isinstance(event_id, str) else None
