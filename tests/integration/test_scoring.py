"""Scoring end to end on the real broker, real chDB, real dbt/Feast features and ONNX models.

One module-scoped world: a simulated history, a real nightly run and a LightGBM champion
plus an MLP shadow trained on it. Each test runs worker processes against a fresh topic
prefix and checks ClickHouse once the worker has stopped (chDB: one process at a time).
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.kafka import make_consumer, make_producer
from streams.settings import Settings
from streams.simulate.records import SimRecord, SimulationConfig, simulate_records
from streams.topics import PREDICTIONS, REVIEW, raw_topic, topic_name
from tests.integration.conftest import delete_topics, worker_env

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

Coordinates = tuple[str, int, int]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """History → nightly → LightGBM champion + MLP shadow, once for the module."""
    from streams.bootstrap import BootstrapConfig, bootstrap

    root = tmp_path_factory.mktemp("scoring-world")
    settings = Settings(
        home=root / "home",
        models_dir=root / "models",
        providers="cpu",
        clickhouse_dsn=f"chdb://{root / 'chdb'}",
    )
    config = BootstrapConfig(
        accounts=800,
        history_days=30,
        train_days=4,
        label_lag_days=3,
        fraud_rate=0.05,
        n_estimators=30,
        shadow_kind="mlp",
    )
    bootstrap(settings, config)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def scoring_settings(settings: Settings, world: Path, tmp_path: Path) -> Iterator[Settings]:
    """The broker test settings pointed at a private copy of the world's ClickHouse."""
    from streams.clickhouse import apply_migrations, connect
    from streams.features.runs import latest_successful_run, record_run
    from streams.kafka import make_admin
    from streams.schemas.registry import SchemaRegistry
    from streams.topics import apply_topics, declared_topics

    # A private ClickHouse per test holding the world's nightly run (chDB data
    # directories cannot be copied: their metadata links are absolute).
    chdb = tmp_path / "chdb"
    db = settings.clickhouse_database
    source = connect(settings.model_copy(update={"clickhouse_dsn": f"chdb://{world / 'chdb'}"}))
    run = latest_successful_run(source, db, settings.feature_service)
    source.close()
    assert run is not None
    target = connect(settings.model_copy(update={"clickhouse_dsn": f"chdb://{chdb}"}))
    apply_migrations(target, db)
    record_run(target, db, run)
    target.close()
    registry = SchemaRegistry.load(settings.schemas_dir)
    apply_topics(settings, declared_topics(registry.event_types), make_admin(settings))
    yield settings.model_copy(
        update={
            "home": world / "home",  # features and feast live here; the broker is named:
            "kafka_bootstrap": settings.bootstrap_servers,
            "models_dir": world / "models",
            "providers": "cpu",
            "clickhouse_dsn": f"chdb://{chdb}",
            "worker_id": f"test-{uuid.uuid4().hex[:6]}",
        }
    )
    delete_topics(settings)


@pytest.fixture
def start_scorer(
    scoring_settings: Settings, tmp_path: Path
) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``streamscore worker`` processes on the scoring settings; stop leftovers at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(**extra: str) -> subprocess.Popen[bytes]:
        path = tmp_path / f"worker-{len(started)}.log"
        with path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "streams.cli.main", "worker"],
                env=worker_env(scoring_settings, **extra),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        process.log_path = path  # type: ignore[attr-defined]
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def wait_for_log(process: subprocess.Popen[bytes], text: str, timeout: float = 60) -> None:
    """Until the worker's log holds ``text`` (or it died, or ``timeout``)."""
    path: Path = process.log_path  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if text in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise AssertionError(f"worker never logged {text!r}; see {path}")


def records(count: int, invalid_fraction: float, seed: int) -> list[SimRecord]:
    config = SimulationConfig(
        start=datetime.now(UTC), accounts=800, seed=seed,
        invalid_fraction=invalid_fraction, labels=False,
    )  # fmt: skip
    out: list[SimRecord] = []
    for item in simulate_records(config):
        out.append(item)
        if len(out) == count:
            break
    return out


def publish(
    settings: Settings, items: list[SimRecord], rate: float | None = None
) -> dict[Coordinates, SimRecord]:
    """Produce raw records (at ``rate`` per second if given); where each one landed."""
    producer = make_producer(settings)
    topic = raw_topic(settings)
    landed: dict[Coordinates, SimRecord] = {}

    def delivered(err: Any, msg: Any, item: SimRecord) -> None:
        assert err is None, err
        landed[(topic, msg.partition(), msg.offset())] = item

    started = time.monotonic()
    for i, item in enumerate(items):
        producer.produce(
            topic, value=item.value, key=item.key, headers=list(item.headers),
            on_delivery=lambda err, msg, item=item: delivered(err, msg, item),
        )  # fmt: skip
        if rate and i % 100 == 0:
            producer.poll(0)
            ahead = i / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    assert producer.flush(60) == 0
    return landed


def wait_for_predictions(
    settings: Settings,
    expected: set[Coordinates],
    timeout: float,
    worker: subprocess.Popen[bytes] | None = None,
) -> None:
    """Until every expected raw coordinate has a message on the predictions topic."""
    consumer = make_consumer(settings, f"reader-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([topic_name(settings, PREDICTIONS)])
    missing = set(expected)
    deadline = time.monotonic() + timeout
    try:
        while missing and time.monotonic() < deadline:
            if worker is not None and worker.poll() is not None:
                raise AssertionError(f"the worker exited with {worker.returncode}")
            for m in consumer.consume(num_messages=5000, timeout=0.5):
                if m.error() is None:
                    source = orjson.loads(m.value())["source"]
                    missing.discard((source["topic"], source["partition"], source["offset"]))
    finally:
        consumer.close()
    assert not missing, f"{len(missing)} events never scored, e.g. {sorted(missing)[:3]}"


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(60)


def query(settings: Settings, sql: str) -> list[tuple[Any, ...]]:
    from streams.clickhouse import connect

    client = connect(settings)
    try:
        db = settings.clickhouse_database
        return list(client.query(sql.replace("{db}", db)).result_rows)
    finally:
        client.close()


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

    worker = start_scorer(STREAMSCORE_AGENTS="ingest,score,dlq")
    wait_for_predictions(settings, valid, timeout=180, worker=worker)
    time.sleep(2)  # the DLQ agent's batch window
    stop(worker)

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
    reasons = dict(
        query(settings, "select offset, reason from {db}.dlq_events where partition >= 0")
    )
    assert {invalid[c] for c in invalid} == set(reasons.values())

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
    worker = start_scorer(STREAMSCORE_AGENTS="ingest,score")
    wait_for_predictions(settings, set(landed), timeout=180, worker=worker)
    stop(worker)
    flagged = query(
        settings,
        "select countIf(startsWith(account_id, 'acc_unknown_')), "
        "countIf(has(missing_entities, 'account') and startsWith(account_id, 'acc_unknown_')), "
        "min(if(has(missing_entities, 'account'), missing_features, 999)), "
        "countIf(not startsWith(account_id, 'acc_unknown_') and missing_features = 0) "
        "from {db}.predictions where model_role = 'champion'",
    )[0]
    assert flagged[0] == flagged[1] == 50  # every stranger flagged, per row
    assert 0 < flagged[2] < 999  # and counted as that entity's features
    assert flagged[3] > 200  # known accounts are served their own features


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
    env = {"STREAMSCORE_AGENTS": "ingest,score,dlq", "STREAMSCORE_SINK_DEDUP": str(dedup).lower()}
    rng = random.Random(13)
    publisher.start()
    kills = 0
    while publisher.is_alive() and kills < 6:
        worker = start_scorer(**env)
        # Kill while it scores: after its scoring consumer got partitions (a killed
        # predecessor's session must expire first), at a random point of its work.
        wait_for_log(worker, "marks loaded")
        time.sleep(rng.uniform(0.3, 3.0))
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
        kills += 1
    publisher.join()
    worker = start_scorer(**env)
    valid = {c for c, r in landed.items() if r.expected == "accepted"}
    wait_for_predictions(settings, valid, timeout=240, worker=worker)
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
