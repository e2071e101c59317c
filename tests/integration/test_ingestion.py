"""Ingestion end to end on the real broker: exact counts, DLQ headers, crash recovery."""

from __future__ import annotations

import collections
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime

import orjson
import pytest

from streams.kafka import make_admin, make_producer
from streams.schemas import SchemaRegistry
from streams.settings import Settings
from streams.simulate.records import SimRecord, SimulationConfig, simulate_records
from streams.topics import apply_topics, declared_topics, dlq_topic, raw_topic, valid_topic

from .conftest import delete_topics, read_topic

pytestmark = pytest.mark.integration

Coordinates = tuple[int, int]  # (partition, offset) in the raw topic


def make_records(count: int, invalid_fraction: float, seed: int) -> list[SimRecord]:
    config = SimulationConfig(
        start=datetime(2026, 11, 1, tzinfo=UTC), accounts=300, seed=seed,
        invalid_fraction=invalid_fraction, labels=False,
    )  # fmt: skip
    records: list[SimRecord] = []
    for item in simulate_records(config):
        records.append(item)
        if len(records) == count:
            break
    return records


def publish(settings: Settings, records: list[SimRecord]) -> dict[Coordinates, SimRecord]:
    """Produce raw records; return where each one landed."""
    producer = make_producer(settings)
    landed: dict[Coordinates, SimRecord] = {}
    failures: list[str] = []

    def delivered(err, msg, item):  # type: ignore[no-untyped-def]
        if err is not None:
            failures.append(str(err))
        else:
            landed[(msg.partition(), msg.offset())] = item

    topic = raw_topic(settings)
    for item in records:
        producer.produce(
            topic, value=item.value, key=item.key, headers=list(item.headers),
            on_delivery=lambda err, msg, item=item: delivered(err, msg, item),
        )  # fmt: skip
        producer.poll(0)
    assert producer.flush(60) == 0
    assert failures == []
    assert len(landed) == len(records)
    return landed


def source_of(message) -> Coordinates:  # type: ignore[no-untyped-def]
    headers = dict(message.headers() or [])
    if "dlq.source.offset" in headers:
        return int(headers["dlq.source.partition"]), int(headers["dlq.source.offset"])
    return int(headers["source-partition"]), int(headers["source-offset"])


@pytest.fixture
def topics(settings: Settings, registry: SchemaRegistry):  # type: ignore[no-untyped-def]
    apply_topics(settings, declared_topics(registry.event_types), make_admin(settings))
    yield
    delete_topics(settings)


def test_exactly_n_valid_and_m_dead_letters(
    settings: Settings, topics: None, start_worker: Callable[..., subprocess.Popen[bytes]]
) -> None:
    records = make_records(3000, invalid_fraction=0.1, seed=11)
    landed = publish(settings, records)
    valid = {c for c, r in landed.items() if r.valid}
    invalid = {c: r for c, r in landed.items() if not r.valid}
    assert len(valid) > 2000 and len(invalid) > 150
    assert len({r.expected for r in invalid.values()}) >= 6  # many kinds of bad input

    start_worker()
    handed_off = read_topic(settings, valid_topic(settings, "transaction"), len(valid))
    dead = read_topic(settings, dlq_topic(settings), len(invalid))

    assert len(handed_off) == len(valid)
    assert len(dead) == len(invalid)
    assert {source_of(m) for m in handed_off} == valid
    assert {source_of(m) for m in dead} == set(invalid)
    for message in handed_off:
        item = landed[source_of(message)]
        assert message.value() == item.value and message.key() == item.key
    raw = raw_topic(settings)
    for message in dead:
        item = invalid[source_of(message)]
        headers = dict(message.headers() or [])
        assert message.value() == item.value and message.key() == item.key  # original bytes
        assert headers["dlq.error.class"].decode() == item.expected
        assert headers["dlq.source.topic"].decode() == raw
        assert headers["dlq.stage"] == b"ingest"
        assert headers["dlq.error.message"]
        assert int(headers["dlq.source.timestamp"]) > 0 and int(headers["dlq.time"]) > 0
        assert headers["dlq.worker.id"]
        if item.expected == "schema_violation":
            assert orjson.loads(headers["dlq.error.paths"]), item.invalid_kind
            assert headers["dlq.schema.id"].endswith(b".json")
        for name, value in item.headers:  # the producer's headers are kept
            assert headers[name] == value
    # Nothing else anywhere: the label hand-off stays empty.
    assert read_topic(settings, valid_topic(settings, "label"), 0, timeout=5, settle=2) == []


def test_sigkill_mid_stream_loses_nothing(
    settings: Settings, topics: None, start_worker: Callable[..., subprocess.Popen[bytes]]
) -> None:
    records = make_records(40_000, invalid_fraction=0.05, seed=23)
    landed = publish(settings, records)
    expected_valid = {c for c, r in landed.items() if r.valid}
    expected_dead = set(landed) - expected_valid

    first = start_worker(STREAMSCORE_INGEST_BATCH_SIZE="500")
    # Wait until the worker is visibly mid-stream, then kill it without warning.
    partial = read_topic(settings, valid_topic(settings, "transaction"), 500, settle=None)
    assert 0 < len(partial) < len(expected_valid), "kill must land mid-stream"
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    time.sleep(1)

    start_worker(STREAMSCORE_INGEST_BATCH_SIZE="500")
    handed_off = read_topic(
        settings, valid_topic(settings, "transaction"), len(expected_valid), timeout=180
    )
    dead = read_topic(settings, dlq_topic(settings), len(expected_dead), timeout=60)

    valid_sources = collections.Counter(source_of(m) for m in handed_off)
    dead_sources = collections.Counter(source_of(m) for m in dead)
    # Every source offset is accounted for, in exactly one place.
    assert set(valid_sources) == expected_valid
    assert set(dead_sources) == expected_dead
    assert not set(valid_sources) & set(dead_sources)
    # Duplicates are possible (at-least-once hand-off) and idempotent: a duplicate is the
    # same source coordinates with the same bytes, so consumers dedupe on (partition, offset).
    by_source: dict[Coordinates, set[bytes]] = collections.defaultdict(set)
    for message in handed_off:
        by_source[source_of(message)].add(message.value())
    assert all(len(values) == 1 for values in by_source.values())
    duplicates = sum(valid_sources.values()) - len(valid_sources)
    print(f"\nre-delivered after SIGKILL: {duplicates} valid, "
          f"{sum(dead_sources.values()) - len(dead_sources)} dead letters")  # fmt: skip
