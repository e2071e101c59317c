"""The main job on local defaults: broker up, topics, a simulated stream, the worker, a summary.

Everything it starts it stops again (the broker only if it was not already running).
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from confluent_kafka import Message

from streams.headers import (
    DLQ_ERROR_CLASS,
    DLQ_SOURCE_OFFSET,
    DLQ_SOURCE_PARTITION,
    SOURCE_OFFSET,
    SOURCE_PARTITION,
)
from streams.infra.kafka import LocalKafka
from streams.kafka import make_admin, make_consumer
from streams.producer import EventProducer
from streams.schemas.registry import SchemaRegistry
from streams.settings import Settings
from streams.simulate.records import SimulationConfig, simulate_records
from streams.topics import apply_topics, declared_topics, dlq_topic, valid_topic

Progress = Callable[[str], None]


@dataclass(slots=True)
class DemoSummary:
    produced: int = 0
    expected_valid: int = 0
    expected_dead: collections.Counter[str] = field(default_factory=collections.Counter)
    valid: int = 0
    dead: collections.Counter[str] = field(default_factory=collections.Counter)
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return self.valid >= self.expected_valid and sum(self.dead.values()) >= sum(
            self.expected_dead.values()
        )


def run_demo(
    settings: Settings,
    events: int = 20_000,
    invalid_fraction: float = 0.03,
    rate: float = 0.0,
    say: Progress = print,
    timeout: float = 300.0,
) -> DemoSummary:
    """Run the ingestion flow end to end and count what reached each topic."""
    kafka = LocalKafka(settings) if settings.manages_local_kafka else None
    started_broker = False
    if kafka is not None and kafka.pid() is None:
        say(f"starting Kafka 3.9.2 on {settings.bootstrap_servers} (jars fetched once) ...")
        kafka.up()
        started_broker = True
    run_tag = uuid.uuid4().hex[:6]
    # A fresh topic set per run keeps the summary about this run alone.
    demo = settings.model_copy(
        update={
            "topic_prefix": f"{settings.topic_prefix}demo-{run_tag}.",
            "app_id": f"demo-{run_tag}",
        }
    )
    worker: subprocess.Popen[bytes] | None = None
    summary = DemoSummary()
    began = time.monotonic()
    try:
        registry = SchemaRegistry.load(demo.schemas_dir)
        report = apply_topics(demo, declared_topics(registry.event_types), make_admin(demo))
        say(f"topics: {len(report.created)} created under prefix {demo.topic_prefix}")
        worker = _start_worker(demo)
        say(f"worker started (pid {worker.pid}); simulating {events:,} events ...")
        _simulate(demo, registry, events, invalid_fraction, rate, summary)
        invalid = sum(summary.expected_dead.values())
        say(
            f"sent {summary.produced:,}: {summary.expected_valid:,} valid, {invalid:,} invalid; "
            "waiting for the worker ..."
        )
        _count_outputs(demo, summary, timeout)
    finally:
        if worker is not None:
            worker.terminate()
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
        admin = make_admin(demo)
        names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(demo.topic_prefix)]
        if names:
            admin.delete_topics(names, operation_timeout=30)
        if started_broker and kafka is not None:
            kafka.down()
            say("Kafka stopped")
    summary.seconds = time.monotonic() - began
    return summary


def _start_worker(settings: Settings) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **settings.to_env(STREAMSCORE_WEB_ENABLED="false", STREAMSCORE_LOG_LEVEL="warning"),
    }
    log = settings.home / "demo-worker.log"
    settings.home.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "streams.cli.main", "worker"], env=env, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip


def _simulate(
    settings: Settings,
    registry: SchemaRegistry,
    events: int,
    invalid_fraction: float,
    rate: float,
    summary: DemoSummary,
) -> None:
    producer = EventProducer(settings, registry)
    config = SimulationConfig(
        start=datetime.now(tz=UTC).replace(hour=0, minute=0, second=0, microsecond=0),
        accounts=2_000, invalid_fraction=invalid_fraction, labels=False,
    )  # fmt: skip
    began = time.monotonic()
    for index, item in enumerate(simulate_records(config)):
        if index >= events:
            break
        producer.send_raw(item.value, item.key, list(item.headers))
        summary.produced += 1
        if item.valid:
            summary.expected_valid += 1
        else:
            summary.expected_dead[item.expected] += 1
        if rate > 0:
            ahead = (index + 1) / rate - (time.monotonic() - began)
            if ahead > 0:
                time.sleep(ahead)
    producer.flush()


def bytes_headers(message: Message) -> dict[str, bytes]:
    """A record's headers as a dict of bytes (confluent-kafka types them loosely)."""
    raw = message.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return {name: value for name, value in pairs if isinstance(value, bytes)}


def _count_outputs(settings: Settings, summary: DemoSummary, timeout: float) -> None:
    consumer = make_consumer(settings, f"demo-summary-{uuid.uuid4().hex[:6]}")
    valid, dead = valid_topic(settings, "transaction"), dlq_topic(settings)
    consumer.subscribe([valid, dead])
    seen: set[tuple[str, int, int]] = set()  # dedupe re-deliveries on source coordinates
    deadline = time.monotonic() + timeout
    try:
        while not summary.complete and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=5000, timeout=0.5):
                if message.error() is not None:
                    continue
                headers = bytes_headers(message)
                if message.topic() == dead:
                    partition, offset = headers[DLQ_SOURCE_PARTITION], headers[DLQ_SOURCE_OFFSET]
                    key = ("dlq", int(partition), int(offset))
                    if key not in seen:
                        seen.add(key)
                        summary.dead[headers[DLQ_ERROR_CLASS].decode()] += 1
                else:
                    key = ("ok", int(headers[SOURCE_PARTITION]), int(headers[SOURCE_OFFSET]))
                    if key not in seen:
                        seen.add(key)
                        summary.valid += 1
    finally:
        consumer.close()
