"""Integration fixtures: one real Kafka broker per test session, started by the project's code.

The broker runs from a temporary STREAMSCORE_HOME on free ports, so it never touches a
developer's own broker. Each test gets its own topic prefix and consumer group.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import TopicPartition
from pydantic import SecretStr

from streams.agents.batching import group_id
from streams.infra.kafka import LocalKafka
from streams.infra.redis import LocalRedis
from streams.kafka import make_admin, make_consumer, make_producer
from streams.settings import Settings
from streams.simulate.records import SimRecord, SimulationConfig, simulate_records
from streams.topics import PREDICTIONS, dlq_topic, raw_topic, scored_topic, topic_name
from tests.planted import PLANTED

pytestmark = pytest.mark.integration

# For modules that run the Feast/dbt stack: Feast's file offline store runs on dask/pandas,
# which warn about their own internals, and Feast leaves its metrics files open.
FEAST_STACK_MARKS = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

# The scoring world: its history and live traffic come from one population and fraud rate,
# so a stream without injected drift has the distribution the models were trained on.
WORLD_ACCOUNTS = 800
WORLD_SEED = 7
WORLD_FRAUD_RATE = 0.05


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_node_ports(nodes: int) -> tuple[int, int]:
    """STREAMSCORE_KAFKA_PORT and _CONTROLLER_PORT for a local cluster of ``nodes``: node n
    takes both plus 10(n-1), so every one of those ports must be free."""
    for _ in range(50):
        base, controller = free_port(), free_port()
        ports = [p + 10 * n for p in (base, controller) for n in range(nodes)]
        if len(set(ports)) != len(ports) or max(ports) > 65535:
            continue
        try:
            for port in ports:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base, controller
    raise RuntimeError(f"no free ports for {nodes} local Kafka nodes")


@contextlib.contextmanager
def local_redis(home: Path) -> Iterator[dict[str, Any]]:
    """A redis-server started by the project's code (``streams.infra.redis``) under ``home``
    on a free port, asking for the planted password; yields the settings fields that point
    a Settings at it (``Settings(..., **fields)``), and stops it at the end."""
    port = free_port()
    fields: dict[str, Any] = {
        "online_store": "redis",
        "redis_port": port,
        "redis_url": f"redis://127.0.0.1:{port}/0",
        "redis_password": SecretStr(PLANTED),
    }
    redis = LocalRedis(Settings(home=home, **fields))
    redis.up()
    try:
        yield fields
    finally:
        redis.down()


@pytest.fixture(scope="session")
def kafka_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("streamscore-home")


@pytest.fixture(scope="session")
def broker_settings(kafka_home: Path) -> Iterator[Settings]:
    """A real local broker for the whole session; stopped at the end."""
    # Every worker of the session carries a planted secret in its settings; no log of
    # the run may show it (tests/planted.py, run by `make integration`).
    planted = SecretStr(PLANTED)
    if os.environ.get("STREAMSCORE_KAFKA_BOOTSTRAP"):
        # An external cluster was given (e.g. docker compose): use it, start nothing.
        yield Settings(home=kafka_home, redis_password=planted)
        return
    settings = Settings(
        home=kafka_home,
        kafka_port=free_port(),
        kafka_controller_port=free_port(),
        kafka_heap="512m",
        redis_password=planted,
    )
    kafka = LocalKafka(settings)
    kafka.up(timeout=120)
    try:
        yield settings
    finally:
        kafka.down()


@pytest.fixture
def settings(broker_settings: Settings) -> Settings:
    """Per-test topics and consumer group on the session broker."""
    tag = uuid.uuid4().hex[:8]
    return broker_settings.model_copy(
        update={"topic_prefix": f"it-{tag}.", "app_id": f"it-{tag}", "web_enabled": False}
    )


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a worker process holding exactly these settings.

    Workers run ingestion and the lake unless a test asks for more (scoring needs a
    nightly run and a champion model first).
    """
    env = {
        **os.environ,
        **settings.to_env(
            STREAMSCORE_LOG_LEVEL="info",
            PYTHONUNBUFFERED="1",
            STREAMSCORE_AGENTS="ingest,lake",
            STREAMSCORE_SCORERS="0",  # one process: a test's SIGKILL hits every stage
        ),
    }
    env.update(extra)
    return env


def _worker_starter(
    settings: Settings, logs: Path
) -> tuple[Callable[..., subprocess.Popen[bytes]], list[subprocess.Popen[bytes]]]:
    """A function starting ``streamscore worker`` processes on ``settings``, and the list
    of those it started. Each process logs to ``logs/worker-N.log`` (``process.log_path``)."""
    started: list[subprocess.Popen[bytes]] = []

    def start(**extra: str) -> subprocess.Popen[bytes]:
        path = logs / f"worker-{len(started)}.log"
        with path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "streams.cli.main", "worker"],
                env=worker_env(settings, **extra),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        process.log_path = path  # type: ignore[attr-defined]
        started.append(process)
        return process

    return start, started


@pytest.fixture
def start_worker(
    settings: Settings, tmp_path: Path
) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``streamscore worker`` processes; every one still running is stopped at the end."""
    start, started = _worker_starter(settings, tmp_path)
    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()


def read_topic(
    settings: Settings,
    topic: str,
    expected: int,
    timeout: float = 120.0,
    settle: float | None = 3.0,
) -> list[Any]:
    """Read a topic from the start until ``expected`` records came and ``settle`` s passed
    without more (so that extra, unexpected records are seen too), or until ``timeout``.
    With ``settle=None`` it returns as soon as ``expected`` records came."""
    consumer = make_consumer(settings, f"reader-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([topic])
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    quiet_since = time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = consumer.consume(num_messages=5000, timeout=0.5)
            got = [m for m in batch if m.error() is None]
            if got:
                records.extend(got)
                quiet_since = time.monotonic()
                if settle is None and len(records) >= expected:
                    break
            elif (
                settle is not None
                and len(records) >= expected
                and time.monotonic() - quiet_since >= settle
            ):
                break
    finally:
        consumer.close()
    return records


def delete_topics(settings: Settings) -> None:
    admin = make_admin(settings)
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(settings.topic_prefix)]
    if names:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            future.result()


# -- a scoring world: history → nightly → LightGBM champion + MLP shadow (+ an unserved model)


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
        accounts=WORLD_ACCOUNTS,
        seed=WORLD_SEED,
        history_days=100,  # > 90 + the training window: 90-day features are full-length
        train_days=4,
        label_lag_days=3,
        fraud_rate=WORLD_FRAUD_RATE,
        n_estimators=30,
        shadow_kind="mlp",
    )
    report = bootstrap(settings, config)
    # A third model, trained but not serving, for replays with another version.
    from datetime import timedelta

    from streams.features.registry import load_feature_service
    from streams.features.training import build_training_set
    from streams.scoring.training import import_training_package
    from streams.settings import project_root

    models = import_training_package(project_root() / "models")
    first = report.today - timedelta(days=config.train_days + config.label_lag_days)
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    table = build_training_set(settings, start, start + timedelta(days=config.train_days))
    spec = load_feature_service(settings, settings.feature_service)
    alt = models.TrainConfig(kind="lightgbm", version="alt", n_estimators=10)
    models.train(spec, table, settings.models_dir / "artifacts", alt)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def scoring_world(settings: Settings, world: Path, tmp_path: Path) -> Iterator[Settings]:
    """``settings`` (a test's topics on some broker) pointed at a private copy of the
    world's ClickHouse; the test's topics are deleted at the end."""
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
    try:
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
    finally:
        delete_topics(settings)


@pytest.fixture
def scoring_settings(settings: Settings, world: Path, tmp_path: Path) -> Iterator[Settings]:
    """The broker test settings pointed at a private copy of the world's ClickHouse."""
    with scoring_world(settings, world, tmp_path) as scoring:
        yield scoring


@pytest.fixture
def start_scorer(
    scoring_settings: Settings, tmp_path: Path
) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``streamscore worker`` processes on the scoring settings; kill leftovers at the end."""
    start, started = _worker_starter(scoring_settings, tmp_path)
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


Coordinates = tuple[str, int, int]


def records(count: int, invalid_fraction: float, seed: int = WORLD_SEED) -> list[SimRecord]:
    """Live traffic from the world's population at the world's fraud rate."""
    config = SimulationConfig(
        start=datetime.now(UTC), accounts=WORLD_ACCOUNTS, seed=seed, fraud_rate=WORLD_FRAUD_RATE,
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
    drained: Sequence[str] = ("sink",),
) -> None:
    """Until every expected raw coordinate has a decision on the predictions topic, and the
    ``drained`` sink stages have written all they read (their rows are in ClickHouse)."""
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
    for agent in drained:
        wait_until_drained(settings, agent, max(5.0, deadline - time.monotonic()), worker)


SINK_TOPICS: dict[str, Callable[[Settings], str]] = {
    "sink": lambda s: scored_topic(s, "transaction"),
    "dlq": dlq_topic,
}


def wait_until_drained(
    settings: Settings, agent: str, timeout: float, worker: subprocess.Popen[bytes] | None
) -> None:
    """Until ``agent``'s consumer group has committed every offset of its topic: a sink
    stores offsets only after ClickHouse confirmed, so its rows are all written."""
    topic = SINK_TOPICS[agent](settings)
    consumer = make_consumer(settings, group_id(settings, agent))  # never subscribes
    deadline = time.monotonic() + timeout
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        wanted = [TopicPartition(topic, p) for p in partitions]
        while True:
            if worker is not None and worker.poll() is not None:
                raise AssertionError(f"the worker exited with {worker.returncode}")
            committed = consumer.committed(wanted, timeout=10)
            behind = []
            for tp in committed:
                low, high = consumer.get_watermark_offsets(tp, timeout=10)
                if high > max(tp.offset, low):  # (an empty partition has nothing to commit)
                    behind.append(tp.partition)
            if not behind:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{agent} never caught up on {topic} partitions {behind}")
            time.sleep(0.5)
    finally:
        consumer.close()


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
