"""Scoring end to end on the real broker, real chDB, real dbt/Feast features and ONNX models.

One module-scoped world: a simulated history, a real nightly run and a LightGBM champion
plus an MLP shadow trained on it. Each test runs worker processes against a fresh topic
prefix and checks ClickHouse once the worker has stopped (chDB: one process at a time).
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from streams.kafka import make_consumer, make_producer
from streams.settings import Settings
from streams.simulate.records import SimRecord
from streams.topics import REVIEW, raw_topic, topic_name
from tests.integration.conftest import (
    FEAST_STACK_MARKS,
    Coordinates,
    publish,
    query,
    records,
    stop,
    wait_for_log,
    wait_for_predictions,
)

pytestmark = FEAST_STACK_MARKS


def stored_sources(settings: Settings) -> tuple[set[Coordinates], set[Coordinates]]:
    predictions = {
        (t, p, o)
        for t, p, o in query(settings, "select topic, partition, offset from {db}.predictions")
    }
    dead = {
        (t, p, o)
        for t, p, o in query(settings, "select topic, partition, offset from {db}.dlq_events")
    }
    return predictions, dead


def test_every_valid_event_scored_by_every_model_and_every_invalid_one_stored(
    scoring_settings: Settings, start_scorer: Callable[..., subprocess.Popen[bytes]]
) -> None:
    settings = scoring_settings
    items = records(1500, invalid_fraction=0.04, seed=11)
    landed = publish(settings, items)
    valid = {c for c, r in landed.items() if r.expected == "accepted"}
    invalid = {c: r.expected for c, r in landed.items() if r.expected != "accepted"}
    assert valid and invalid

    worker = start_scorer(STREAMSCORE_AGENTS="score,sink,dlq", STREAMSCORE_LOG_FORMAT="json")
    wait_for_predictions(settings, valid, timeout=180, worker=worker, drained=("sink", "dlq"))
    time.sleep(2)  # the DLQ agent's batch window
    stop(worker)
    assert_logged_dead_letters(worker, invalid)

    roles = query(settings, "select distinct model_role from {db}.predictions order by 1")
    assert roles == [("champion",), ("shadow",)]
    served = query(settings, "select model_version, length(feature_names) from {db}.models")
    assert sorted(n for _, n in served) == [142, 142]
    rows = query(
        settings,
        "select count(), uniqExact(topic, partition, offset, model_version), countIf(decided), "
        "countIf(decided and human_review), countIf(length(features) != 142) from {db}.predictions",
    )[0]
    count, unique, decided, human, bad_vectors = rows
    assert count == unique == 2 * len(valid)
    assert decided == len(valid)  # one acted-on row per event: the champion's (no canary)
    assert bad_vectors == 0
    predictions, dead = stored_sources(settings)
    assert predictions == valid
    assert dead == set(invalid)
    stored = query(settings, "select topic, partition, offset, reason from {db}.dlq_events")
    assert {(t, p, o): r for t, p, o, r in stored} == invalid

    # Low-confidence cases went to the review topic with their full context.
    consumer = make_consumer(settings, f"reader-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([topic_name(settings, REVIEW)])
    review: list[dict[str, Any]] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and len(review) < human:
        review += [
            orjson.loads(m.value()) for m in consumer.consume(1000, 0.5) if m.error() is None
        ]
    consumer.close()
    assert len(review) == human
    if review:
        assert {"event", "scores", "features", "missing_entities"} <= set(review[0])
        assert len(review[0]["features"]) == 142


def assert_logged_dead_letters(
    worker: subprocess.Popen[bytes], invalid: dict[Coordinates, str]
) -> None:
    """The worker's JSON log has one line per dead letter: where from, why, in which batch."""
    lines = worker.log_path.read_text().splitlines()  # type: ignore[attr-defined]
    entries = [orjson.loads(line) for line in lines if line.startswith("{")]
    assert len(entries) > 0.9 * len(lines)  # only librdkafka's own stderr lines are not JSON
    assert all({"time", "level", "logger", "message", "worker_id"} <= set(e) for e in entries)
    logged = {
        (e["source_topic"], e["source_partition"], e["source_offset"]): e
        for e in entries
        if e["message"].startswith("dead letter")
    }
    assert {c: e["reason"] for c, e in logged.items()} == invalid
    # a dead letter that is a JSON object names its event
    assert any(e["event_id"] for e in logged.values() if e["reason"] == "schema_violation")
    assert all(e["event_id"] is None for e in logged.values() if e["reason"] == "not_json")
    for (topic, _, _), entry in logged.items():
        # a batch is named by its first record; it may span the topic's partitions
        agent, start = entry["batch_id"].split(":", 1)
        # (the score stage validates: dead letters are its batch's)
        assert agent == "score" and start.startswith(f"{topic}/"), entry["batch_id"]


def test_unknown_entities_are_flagged_per_row_not_filled_from_others(
    scoring_settings: Settings, start_scorer: Callable[..., subprocess.Popen[bytes]]
) -> None:
    settings = scoring_settings
    items = records(300, invalid_fraction=0.0, seed=12)
    strangers: list[SimRecord] = []
    for item in items[:50]:  # same events, but for an account the nightly run never saw
        event = orjson.loads(item.value)
        event["account_id"] = f"acc_unknown_{event['event_id'][:8]}"
        strangers.append(dataclasses.replace(item, value=orjson.dumps(event)))
    landed = publish(settings, strangers + items[50:])
    worker = start_scorer(STREAMSCORE_AGENTS="score,sink")
    wait_for_predictions(settings, set(landed), timeout=180, worker=worker)
    stop(worker)
    flagged = query(
        settings,
        "select countIf(startsWith(account_id, 'acc_unknown_')), "
        "countIf(has(missing_entities, 'account') and startsWith(account_id, 'acc_unknown_')), "
        "min(if(has(missing_entities, 'account'), missing_features, 999)), "
        "countIf(not startsWith(account_id, 'acc_unknown_') and empty(missing_entities)), "
        "countIf(empty(missing_entities) and missing_features != 0) "
        "from {db}.predictions where model_role = 'champion'",
    )[0]
    assert flagged[0] == flagged[1] == 50  # every stranger flagged, per row
    assert 0 < flagged[2] < 999  # and counted as that entity's features
    # Known entities are served their own features: of the 250 known accounts' events
    # most have every entity known (cards issued after the nightly run do not), and
    # none of those is served a default.
    assert flagged[3] > 150
    assert flagged[4] == 0


@pytest.mark.parametrize("dedup", [True, False], ids=["idempotent", "negative-control"])
def test_sigkill_many_times_gives_exactly_one_row_per_event_and_model(
    scoring_settings: Settings,
    start_scorer: Callable[..., subprocess.Popen[bytes]],
    dedup: bool,
) -> None:
    """SIGKILL the worker at random points while events flow; then count rows.

    The negative control turns deduplication off (no source marks, no insert tokens): the
    same kills must then leave duplicates, which proves the test can fail.
    """
    settings = scoring_settings
    items = records(15_000, invalid_fraction=0.02, seed=13)
    landed: dict[Coordinates, SimRecord] = {}
    publisher = threading.Thread(
        target=lambda: landed.update(publish(settings, items, rate=250)), daemon=True
    )
    env = {
        "STREAMSCORE_AGENTS": "score,sink,dlq",
        "STREAMSCORE_SINK_DEDUP": str(dedup).lower(),
    }
    # No background merges in this test: ReplacingMergeTree would fold duplicates at merge
    # time and hide whether the insert path itself wrote each row once.
    from streams.clickhouse import connect

    client = connect(settings)
    for table in ("predictions", "dlq_events"):
        client.command(
            f"alter table {settings.clickhouse_database}.{table} modify setting "
            "max_bytes_to_merge_at_max_space_in_pool = 1, "
            "max_bytes_to_merge_at_min_space_in_pool = 1"
        )
    client.close()
    rng = random.Random(13)
    publisher.start()
    kills = 0
    while publisher.is_alive() and kills < 6:
        worker = start_scorer(**env)
        # Kill while it scores: once it has written a first batch (a killed predecessor's
        # session must expire before it gets partitions), at a random point after that.
        wait_for_log(worker, "first batch of", timeout=90)
        time.sleep(rng.uniform(0.3, 3.0))
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
        kills += 1
    publisher.join()
    worker = start_scorer(**env)
    valid = {c for c, r in landed.items() if r.expected == "accepted"}
    wait_for_predictions(settings, valid, timeout=240, worker=worker, drained=("sink", "dlq"))
    time.sleep(2)
    stop(worker)

    count, unique = query(
        settings,
        "select count(), uniqExact(topic, partition, offset, model_version) from {db}.predictions",
    )[0]
    predictions, dead = stored_sources(settings)
    assert kills >= 3
    assert predictions | dead == set(landed)  # every source offset is somewhere
    if dedup:
        assert count == unique == 2 * len(valid)
    else:
        assert count > unique, "without deduplication the kills should have left duplicates"


def test_replay_twice_adds_nothing_and_another_model_adds_one_row_per_event(
    scoring_settings: Settings, start_scorer: Callable[..., subprocess.Popen[bytes]]
) -> None:
    from streams.clickhouse.gateway import ClickHouseGateway
    from streams.replay import replay

    settings = scoring_settings
    landed = publish(settings, records(600, invalid_fraction=0.05, seed=14))
    valid = {c for c, r in landed.items() if r.expected == "accepted"}
    worker = start_scorer(STREAMSCORE_AGENTS="score,sink")
    wait_for_predictions(settings, valid, timeout=180, worker=worker)
    stop(worker)
    before = query(settings, "select count() from {db}.predictions")[0][0]
    assert before == 2 * len(valid)

    everything = {"from_time": datetime(2000, 1, 1, tzinfo=UTC)}
    gateway = ClickHouseGateway.open(settings)
    try:
        topic = raw_topic(settings)
        _, same, _ = replay(settings, gateway, everything, topic=topic)
        _, again, _ = replay(settings, gateway, everything, topic=topic)
        _, alt, alt_run = replay(
            settings, gateway, everything, topic=topic, model="fraud_lightgbm-alt"
        )
        _, alt_again, _ = replay(
            settings, gateway, everything, topic=topic, model="fraud_lightgbm-alt"
        )
    finally:
        gateway.close()
    assert same.read == again.read == len(landed)
    assert same.rows_written == again.rows_written == 0
    assert same.rows_present == 2 * len(valid)
    assert sum(same.invalid.values()) == len(landed) - len(valid)
    assert alt.rows_written == alt.scored == len(valid)
    assert alt_again.rows_written == 0
    rows = query(
        settings,
        "select count(), uniqExact(topic, partition, offset, model_version), "
        f"countIf(run = '{alt_run}') from {{db}}.predictions",
    )[0]
    assert rows == (3 * len(valid), 3 * len(valid), len(valid))


def test_replay_range_by_offsets_reads_only_that_range(
    scoring_settings: Settings, start_scorer: Callable[..., subprocess.Popen[bytes]]
) -> None:
    from confluent_kafka import TopicPartition

    from streams.replay import resolve_range

    settings = scoring_settings
    landed = publish(settings, records(300, invalid_fraction=0.0, seed=15))
    topic = raw_topic(settings)
    consumer = make_consumer(settings, f"reader-{uuid.uuid4().hex[:8]}")
    try:
        span = resolve_range(consumer, topic, from_offsets={0: 5, 2: 0}, to_offsets={0: 9})
        high0 = consumer.get_watermark_offsets(TopicPartition(topic, 0))[1]
        high2 = consumer.get_watermark_offsets(TopicPartition(topic, 2))[1]
        assert dict(span.start) == {0: 5, 2: 0}
        assert dict(span.end) == {0: min(10, high0), 2: high2}
        from streams.replay import read_range

        got = [(r.partition, r.offset) for batch in read_range(consumer, span) for r in batch]
    finally:
        consumer.close()
    want = sorted((p, o) for (_, p, o) in landed if (p == 0 and 5 <= o <= 9) or p == 2)
    assert sorted(got) == want


def test_dlq_replay_scores_dead_letters_that_now_pass_once(
    scoring_settings: Settings, start_scorer: Callable[..., subprocess.Popen[bytes]]
) -> None:
    """A dead letter whose bytes now validate (as after a schema fix) is scored once, under
    its original raw coordinates; one still invalid is counted and left alone."""
    from streams.clickhouse.gateway import ClickHouseGateway
    from streams.headers import (
        DLQ_ERROR_CLASS,
        DLQ_SOURCE_OFFSET,
        DLQ_SOURCE_PARTITION,
        DLQ_SOURCE_TIMESTAMP,
        DLQ_SOURCE_TOPIC,
    )
    from streams.replay import redrive
    from streams.topics import dlq_topic

    settings = scoring_settings
    items = records(40, invalid_fraction=0.0, seed=16)
    producer = make_producer(settings)
    raw = raw_topic(settings)
    for i, item in enumerate(items):
        value = item.value if i < 30 else b'{"event_type": "transaction", "broken": true}'
        headers = [
            (DLQ_SOURCE_TOPIC, raw.encode()),
            (DLQ_SOURCE_PARTITION, b"0"),
            (DLQ_SOURCE_OFFSET, str(1000 + i).encode()),
            (DLQ_SOURCE_TIMESTAMP, str(int(time.time() * 1000)).encode()),
            (DLQ_ERROR_CLASS, b"schema_violation"),
        ]
        producer.produce(dlq_topic(settings), value=value, key=item.key, headers=headers)
    assert producer.flush(30) == 0

    everything = {"from_time": datetime(2000, 1, 1, tzinfo=UTC)}
    gateway = ClickHouseGateway.open(settings)
    try:
        _, first, _ = redrive(settings, gateway, everything)
        _, second, _ = redrive(settings, gateway, everything)
    finally:
        gateway.close()
    assert first.read == second.read == 40
    assert first.scored == 30 and first.rows_written == 60  # champion + shadow
    assert first.invalid == {"schema_violation": 10}
    assert second.rows_written == 0 and second.rows_present == 60
    offsets = query(settings, "select min(offset), max(offset), count() from {db}.predictions")
    assert offsets == [(1000, 1029, 60)]
