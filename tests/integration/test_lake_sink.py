"""The lake agent end to end on the real broker: every valid event in the lake exactly once,
also when the worker is SIGKILLed between lake batches and restarted."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import pytest

from streams.kafka import make_admin
from streams.schemas import SchemaRegistry
from streams.settings import Settings
from streams.topics import apply_topics, declared_topics, raw_topic, valid_topic

from .conftest import delete_topics, read_topic
from .test_ingestion import make_records, publish

pytestmark = pytest.mark.integration

# Faust reads these itself: a SIGKILLed member leaves the group after 10 s, not 60 s.
FAST_REJOIN = {"BROKER_SESSION_TIMEOUT": "10", "BROKER_REBALANCE_TIMEOUT": "10"}


@pytest.fixture
def topics(settings: Settings, registry: SchemaRegistry) -> Iterator[None]:
    apply_topics(settings, declared_topics(registry.event_types), make_admin(settings))
    yield
    delete_topics(settings)


def lake_query(lake: Path, sql: str) -> list[tuple[object, ...]]:
    """``sql`` with ``{lake}`` standing for the transaction lake."""
    source = f"read_parquet('{lake}/transaction/*/*.parquet', hive_partitioning = true)"
    return duckdb.sql(sql.format(lake=source)).fetchall()


def lake_count(lake: Path) -> int:
    """Rows in the lake now; 0 while it has no files. Readers must never see a half-written
    file while a worker writes (temp files do not match ``*.parquet``), so no retry here."""
    try:
        return int(lake_query(lake, "select count(*) from {lake}")[0][0])
    except duckdb.IOException:
        return 0


def wait_for_lake(lake: Path, at_least: int, timeout: float, poll: float = 0.2) -> int:
    deadline = time.monotonic() + timeout
    count = lake_count(lake)
    while count < at_least and time.monotonic() < deadline:
        time.sleep(poll)
        count = lake_count(lake)
    return count


def test_lake_holds_every_valid_event_once_across_sigkill(
    settings: Settings,
    topics: None,
    start_worker: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    lake = tmp_path / "lake"
    env = {"STREAMSCORE_LAKE_DIR": str(lake), "STREAMSCORE_INGEST_BATCH_SIZE": "200", **FAST_REJOIN}
    records = make_records(6000, invalid_fraction=0.1, seed=31)
    first_half, second_a, second_b = records[:3000], records[3000:4500], records[4500:]

    # Phase 1: a worker archives ~2,700 valid events; the ~300 invalid ones go nowhere near.
    landed = publish(settings, first_half)
    valid_1 = sum(r.valid for r in first_half)
    worker = start_worker(**env)
    assert len(read_topic(settings, valid_topic(settings, "transaction"), valid_1)) == valid_1
    assert wait_for_lake(lake, valid_1, timeout=30) == valid_1

    # Phase 2: more traffic; SIGKILL as soon as the lake shows some of it, so the last
    # batches are in the lake but not yet committed in Kafka (commit interval ~1 s).
    landed |= publish(settings, second_a)
    at_kill = wait_for_lake(lake, valid_1 + 1, timeout=30, poll=0.02)
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    valid_total = sum(r.valid for r in records)
    assert valid_1 < at_kill < valid_total, "the kill must land mid-way"
    landed |= publish(settings, second_b)  # arrives while no worker runs

    start_worker(**env)
    wait_for_lake(lake, valid_total, timeout=45)
    time.sleep(3)  # anything extra (a duplicate) would land now
    final = lake_count(lake)
    print(f"\nlake rows at SIGKILL: {at_kill} of {valid_total}")

    valid_ids = {r.event["event_id"] for r in records if r.valid and r.event}
    valid_sources = {(raw_topic(settings), p, o) for (p, o), r in landed.items() if r.valid}
    assert len(valid_ids) == len(valid_sources) == valid_total
    ((rows, ids, sources),) = lake_query(
        lake,
        "select count(*), count(distinct event_id), "
        "count(distinct (source_topic, source_partition, source_offset)) from {lake}",
    )
    assert final == rows == ids == sources == valid_total
    lake_ids = {row[0] for row in lake_query(lake, "select event_id from {lake}")}
    assert lake_ids == valid_ids
    lake_sources = set(
        lake_query(lake, "select source_topic, source_partition, source_offset from {lake}")
    )
    assert lake_sources == valid_sources  # no invalid record's coordinates
    # Each row sits in the hive partition of its UTC event date.
    ((days, misplaced),) = lake_query(
        lake,
        "select count(distinct event_date), "
        "count(*) filter (where event_date <> cast(timezone('UTC', event_time) as date)) "
        "from {lake}",
    )
    assert days > 1 and misplaced == 0
