"""Hand-off headers: source coordinates on valid events, the full story on dead letters."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import orjson
import pytest

from streams.headers import SCHEMA_ID
from streams.ingest import Accepted, DeadLetter, Limits, RawRecord, ingest_record
from streams.schemas import SchemaRegistry
from streams.schemas.registry import load_examples
from streams.settings import Settings
from streams.sinks.handoff import (
    KafkaHandoff,
    dead_letter_headers,
    handoff_headers,
    log_dead_letter,
)
from streams.topics import dlq_topic, valid_topic

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples"
LIMITS = Limits(256 * 1024, 32)


def test_valid_handoff_carries_schema_and_source(registry: SchemaRegistry) -> None:
    raw = load_examples(EXAMPLES, "transaction", "valid")["pos_contactless"]
    rec = RawRecord("t.raw", 4, 1234, 1_700_000_000_123, b"acc", raw, [("trace", b"x")])
    result = ingest_record(rec, registry, LIMITS)
    assert isinstance(result, Accepted)
    headers = dict(handoff_headers(result, now_ms=42))
    assert headers["trace"] == b"x"
    assert headers[SCHEMA_ID].endswith(b"transaction.v1.json")
    assert headers["event-type"] == b"transaction"
    assert (headers["source-topic"], headers["source-partition"], headers["source-offset"]) == (
        b"t.raw", b"4", b"1234",
    )  # fmt: skip
    assert headers["source-timestamp"] == b"1700000000123"
    assert headers["ingested-at"] == b"42"


def test_dead_letter_headers_say_why_and_keep_originals(registry: SchemaRegistry) -> None:
    raw = load_examples(EXAMPLES, "transaction", "invalid")["several_violations"]
    original = [("trace", b"abc"), ("dlq.error.class", b"stale-from-an-earlier-pass")]
    rec = RawRecord("t.raw", 2, 77, 1_700_000_000_000, b"acc", raw, original)
    result = ingest_record(rec, registry, LIMITS)
    assert isinstance(result, DeadLetter)
    headers = dead_letter_headers(result, "ingest", "worker-1", now_ms=99)
    names = [k for k, _ in headers]
    assert names.count("dlq.error.class") == 1  # the stale one was dropped
    values = dict(headers)
    assert values["trace"] == b"abc"
    assert values["dlq.source.topic"] == b"t.raw"
    assert values["dlq.source.partition"] == b"2"
    assert values["dlq.source.offset"] == b"77"
    assert values["dlq.source.timestamp"] == b"1700000000000"
    assert values["dlq.stage"] == b"ingest"
    assert values["dlq.error.class"] == b"schema_violation"
    assert orjson.loads(values["dlq.error.paths"]) == ["$.amount", "$.currency", "$.mcc"]
    assert values["dlq.schema.id"].endswith(b"transaction.v1.json")
    assert values["dlq.worker.id"] == b"worker-1"
    assert values["dlq.time"] == b"99"
    assert b"$.currency" in values["dlq.error.message"]


def test_each_dead_letter_is_logged_with_where_it_came_from(
    registry: SchemaRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    raw = load_examples(EXAMPLES, "transaction", "invalid")["several_violations"]
    bad = ingest_record(RawRecord("t.raw", 2, 77, 0, None, raw), registry, LIMITS)
    broken = ingest_record(RawRecord("t.raw", 3, 5, 0, None, b'{"event_id": '), registry, LIMITS)
    assert isinstance(bad, DeadLetter) and isinstance(broken, DeadLetter)
    with caplog.at_level(logging.INFO, logger="streams.sinks.handoff"):
        log_dead_letter(bad, "ingest")
        log_dead_letter(broken, "score")
    first, second = caplog.records
    assert first.getMessage().startswith("dead letter t.raw[2]@77 (schema_violation at ingest)")
    assert (first.source_partition, first.source_offset, first.stage) == (2, 77, "ingest")
    assert first.event_id == orjson.loads(raw)["event_id"]
    assert (second.reason, second.stage, second.event_id) == ("not_json", "score", None)


class FakeProducer:
    """Records what the hand-off produces and in which thread; acknowledges everything."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, list[tuple[str, bytes]]]] = []
        self.threads: set[int] = set()

    def produce(self, topic, value=None, key=None, headers=None, on_delivery=None):  # type: ignore[no-untyped-def]
        self.threads.add(threading.get_ident())
        self.sent.append((topic, value, headers))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        self.threads.add(threading.get_ident())
        return 0


def test_deliver_produces_flushes_and_logs_off_the_event_loop(
    registry: SchemaRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    valid = load_examples(EXAMPLES, "transaction", "valid")["pos_contactless"]
    good = ingest_record(RawRecord("t.raw", 0, 1, 0, b"k", valid), registry, LIMITS)
    bad = ingest_record(RawRecord("t.raw", 0, 2, 0, b"k", b"[" * 40), registry, LIMITS)
    assert isinstance(good, Accepted) and isinstance(bad, DeadLetter)
    producer = FakeProducer()
    settings = Settings()
    handoff = KafkaHandoff(settings, producer=producer)  # type: ignore[arg-type]

    async def main() -> int:
        await handoff.deliver([good], [bad])
        return threading.get_ident()

    with caplog.at_level(logging.INFO, logger="streams.sinks.handoff"):
        loop_thread = asyncio.run(main())
    topics = [topic for topic, _, _ in producer.sent]
    assert topics == [valid_topic(settings, "transaction"), dlq_topic(settings)]
    assert producer.sent[1][1] is bad.record.value
    assert producer.threads and loop_thread not in producer.threads
    (line,) = caplog.records
    assert line.reason == "too_deeply_nested"
