"""A three-node local cluster (replication 3, min.insync.replicas 2) losing the leader of
the raw topic mid-stream: SIGKILL it while events flow, bring it back later.

What must hold, as with a killed worker (test_topology.py): every raw offset ends exactly
once in ``predictions`` (per model) or in ``dlq_events``; nothing acknowledged is lost;
the worker keeps running through the leader change. The test prints how long decisions
stalled: the largest gap between consecutive decisions around the kill.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from streams.infra.kafka import LocalKafka
from streams.kafka import make_admin, make_consumer
from streams.settings import Settings
from streams.simulate.records import SimRecord
from streams.topics import PREDICTIONS, raw_topic, topic_name
from tests.integration.conftest import (
    FEAST_STACK_MARKS,
    Coordinates,
    _worker_starter,
    free_node_ports,
    publish,
    query,
    read_topic,
    records,
    scoring_world,
    stop,
    wait_for_log,
    wait_for_predictions,
)
from tests.integration.test_scoring import stored_sources
from tests.planted import PLANTED

pytestmark = FEAST_STACK_MARKS

RATE = 200  # events per second, steady
EVENTS = 8_000  # 40 s of stream: the kill after ~8 s, the restart ~20 s later


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """Three combined broker+controller nodes started by the project's code, small heaps."""
    if os.environ.get("STREAMSCORE_KAFKA_BOOTSTRAP"):
        pytest.skip("STREAMSCORE_KAFKA_BOOTSTRAP names an external cluster: none to kill here")
    port, controller = free_node_ports(3)
    kafka = LocalKafka(
        Settings(
            home=tmp_path_factory.mktemp("cluster-home"),
            kafka_port=port,
            kafka_controller_port=controller,
            kafka_brokers=3,
            kafka_heap="384m",  # three JVMs on a small machine
            redis_password=SecretStr(PLANTED),  # no log of the run may show it
        )
    )
    kafka.up(timeout=180)
    try:
        yield kafka
    finally:
        kafka.down()


@pytest.fixture
def cluster_settings(cluster: LocalKafka, world: Path, tmp_path: Path) -> Iterator[Settings]:
    tag = uuid.uuid4().hex[:8]
    settings = cluster.settings.model_copy(
        update={"topic_prefix": f"it-{tag}.", "app_id": f"it-{tag}", "web_enabled": False}
    )
    with scoring_world(settings, world, tmp_path) as scoring:
        yield scoring


@pytest.fixture
def start_cluster_worker(
    cluster_settings: Settings, tmp_path: Path
) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    start, started = _worker_starter(cluster_settings, tmp_path)
    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def _first_decision_after(settings: Settings, since: float, timeout: float) -> float:
    """Seconds until the decisions topic holds one made after ``since`` (epoch seconds)."""
    from confluent_kafka import KafkaException, TopicPartition

    topic = topic_name(settings, PREDICTIONS)
    consumer = make_consumer(settings, f"reader-{uuid.uuid4().hex[:8]}")
    started = time.monotonic()
    last: Exception | None = None
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        while time.monotonic() - started < timeout:
            wanted = [TopicPartition(topic, p, int(since * 1000)) for p in partitions]
            try:
                found = consumer.offsets_for_times(wanted, timeout=10)
            except KafkaException as exc:
                # e.g. a leader elected a moment ago: "high watermark is not caught up"
                last = exc
                found = []
            if any(tp.offset >= 0 for tp in found):
                return time.monotonic() - started
            time.sleep(0.5)
    finally:
        consumer.close()
    raise AssertionError(f"no decision within {timeout:.0f} s of the leader change ({last})")


def _raw_leader(settings: Settings, partition: int = 0) -> int:
    topic = raw_topic(settings)
    metadata = make_admin(settings).list_topics(topic, timeout=10)
    leader: int = metadata.topics[topic].partitions[partition].leader
    return leader


def test_sigkill_of_the_raw_leader_loses_and_duplicates_nothing(
    cluster: LocalKafka,
    cluster_settings: Settings,
    start_cluster_worker: Callable[..., subprocess.Popen[bytes]],
) -> None:
    settings = cluster_settings
    topic = raw_topic(settings)
    deadline = time.monotonic() + 30  # new topics reach every broker's metadata shortly
    while True:
        partitions = make_admin(settings).list_topics(topic, timeout=10).topics[topic].partitions
        if len(partitions) == 6 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert {len(p.replicas) for p in partitions.values()} == {3}

    worker = start_cluster_worker(STREAMSCORE_AGENTS="score,sink,dlq")
    items = records(EVENTS, invalid_fraction=0.02, seed=21)
    landed: dict[Coordinates, SimRecord] = {}
    publisher = threading.Thread(
        target=lambda: landed.update(publish(settings, items, rate=RATE)), daemon=True
    )
    publisher.start()
    wait_for_log(worker, "first batch of", timeout=120)
    time.sleep(8)

    leader = _raw_leader(settings)
    node = next(n for n in cluster.status().nodes if n.node == leader)
    assert node.pid is not None
    os.kill(node.pid, signal.SIGKILL)
    killed_at = time.time()
    deadline = time.monotonic() + 60
    while _raw_leader(settings) in (leader, -1):  # until the controller moved leadership
        assert time.monotonic() < deadline, "no new leader for the raw topic within 60 s"
        time.sleep(0.5)
    moved_after = time.time() - killed_at
    # Keep the node down until the worker decides again on the two left: the consumer
    # groups whose coordinator it was must find the new one first (up to their 10 s
    # session timeout and a rejoin on a loaded machine).
    resumed = _first_decision_after(settings, killed_at + moved_after, timeout=120)
    time.sleep(3)
    assert worker.poll() is None, f"the worker died with the broker; see {worker.log_path}"  # type: ignore[attr-defined]
    back = cluster.up(timeout=120)  # starts only the killed node
    restarted_at = time.time()
    assert back.detail == f"started node {leader}"
    assert all(n.registered for n in back.nodes)

    publisher.join()
    valid = {c for c, r in landed.items() if r.expected == "accepted"}
    assert len(landed) == EVENTS  # every record the test produced was acknowledged
    wait_for_predictions(settings, valid, timeout=180, worker=worker, drained=("sink", "dlq"))
    assert worker.poll() is None, "the worker must run through the leader change"
    time.sleep(2)  # the DLQ agent's batch window
    stop(worker)

    count, unique = query(
        settings,
        "select count(), uniqExact(topic, partition, offset, model_version) from {db}.predictions",
    )[0]
    predictions, dead = stored_sources(settings)
    assert predictions | dead == set(landed)  # every raw offset is somewhere ...
    assert not predictions & dead  # ... and in one place
    assert count == unique == 2 * len(valid)  # champion and shadow, once each

    # How long decisions stalled: the decisions topic's record times (the worker's
    # produce time), the largest gap around the kill against the steady gap before it.
    decided = sorted(
        m.timestamp()[1] / 1000
        for m in read_topic(settings, topic_name(settings, PREDICTIONS), len(valid))
    )
    before = [t for t in decided if t < killed_at]
    around = [t for t in decided if killed_at - 1 <= t <= restarted_at + 10]
    during = [t for t in decided if killed_at < t < restarted_at]
    assert during, "no decision while the killed node was down"
    steady = max((b - a for a, b in itertools.pairwise(before)), default=0.0)
    stall = max(b - a for a, b in itertools.pairwise(around))
    print(
        f"killed node {leader} (leader of {raw_topic(settings)}[0]); new leader after "
        f"{moved_after:.1f} s, decisions again {resumed:.1f} s after that; "
        f"decisions stalled {stall:.2f} s at most (steady max gap "
        f"before the kill {steady:.2f} s); {len(during)} decisions while it was down; "
        f"{len(valid)} scored, {len(landed) - len(valid)} dead letters, none lost or doubled"
    )
