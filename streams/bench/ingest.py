"""``streamscore bench ingest``: the ingestion agent against a raw-consumer ceiling.

One run, one pre-loaded topic set: (1) a raw confluent-kafka consume + orjson decode
loop over every event (the ceiling: what any Python consumer here could reach), then
(2) a real ``streamscore worker`` process (faust, concurrency 1) ingesting the same
events, measured from its first hand-off record to its last by broker timestamps
(sustained rate, start-up excluded) and from process start to the last record.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import orjson
import psutil

from streams.kafka import make_admin, make_consumer, make_producer
from streams.schemas.registry import SchemaRegistry
from streams.settings import Settings
from streams.topics import apply_topics, declared_topics, dlq_topic, raw_topic, valid_topic


@dataclass(frozen=True, slots=True)
class IngestBenchResult:
    events: int
    invalid: int
    ceiling_eps: float
    agent_sustained_eps: float
    agent_wall_eps: float
    worker_peak_rss_mb: float

    @property
    def ratio(self) -> float:
        return self.agent_sustained_eps / self.ceiling_eps if self.ceiling_eps else 0.0


def synthetic_events(count: int, invalid_every: int = 50) -> list[tuple[bytes, bytes]]:
    """Valid 20-field transactions with varied ids, plus one invalid event in ``invalid_every``."""
    base = {
        "event_type": "transaction", "schema_version": 1,
        "event_time": "2026-11-20T14:03:27.512Z", "card_id": "card_1", "merchant_id": "m_42",
        "amount": 42.5, "currency": "EUR", "mcc": "5411", "merchant_country": "DE",
        "card_country": "DE", "channel": "pos", "entry_mode": "contactless", "device_id": None,
        "ip": "203.0.113.7", "is_3ds": False, "card_present": True,
        "geo": {"lat": 52.52, "lon": 13.405},
    }  # fmt: skip
    out = []
    for i in range(count):
        account = f"acc_{i % 10_000:06d}"
        event = {**base, "event_id": str(uuid.UUID(int=i + 1)), "account_id": account}
        event["amount"] = round(1 + (i * 7919) % 50_000 / 100, 2)
        if invalid_every and i % invalid_every == invalid_every - 1:
            event["currency"] = "XXX"
        out.append((account.encode(), orjson.dumps(event)))
    return out


def validation_rates(settings: Settings, count: int = 200_000) -> dict[str, float]:
    """Hot-path validation on one core, in events/s: jsonschema-rs alone, orjson parse +
    jsonschema-rs, the full pure ingest step (guards, parse, resolve, validate), and the
    reference ``jsonschema`` on a sample."""
    from streams.ingest import Limits, RawRecord, ingest_batch
    from streams.schemas.validation import ReferenceValidator

    registry = SchemaRegistry.load(settings.schemas_dir)
    schema = registry.get("transaction", 1)
    values = [value for _, value in synthetic_events(count, invalid_every=0)]
    parsed = [orjson.loads(v) for v in values]
    is_valid = schema.fast.is_valid

    def rate(work: Callable[[], object], n: int) -> float:
        began = time.perf_counter()
        work()
        return n / (time.perf_counter() - began)

    records = [RawRecord("bench", 0, i, 0, None, v) for i, v in enumerate(values)]
    limits = Limits(settings.max_payload_bytes, settings.max_nesting_depth)
    reference = ReferenceValidator(schema.document)
    sample = parsed[:5_000]
    return {
        "jsonschema-rs validate": rate(lambda: [is_valid(e) for e in parsed], count),
        "orjson parse + validate": rate(lambda: [is_valid(orjson.loads(v)) for v in values], count),
        "full pure ingest step": rate(lambda: ingest_batch(records, registry, limits), count),
        "jsonschema (reference)": rate(
            lambda: [reference.is_valid(e) for e in sample], len(sample)
        ),
    }


def preload(settings: Settings, events: list[tuple[bytes, bytes]]) -> None:
    producer = make_producer(settings, **{"linger.ms": 20})
    topic = raw_topic(settings)
    for key, value in events:
        while True:
            try:
                producer.produce(topic, value=value, key=key)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(120)


def ceiling(settings: Settings, expected: int, timeout: float = 300.0) -> float:
    """Raw confluent-kafka consume + orjson decode of every event: events/s."""
    consumer = make_consumer(settings, f"bench-ceiling-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([raw_topic(settings)])
    seen = 0
    start: float | None = None
    deadline = time.monotonic() + timeout
    loads = orjson.loads
    while seen < expected and time.monotonic() < deadline:
        batch = consumer.consume(num_messages=10_000, timeout=1.0)
        if batch and start is None:
            start = time.perf_counter()
        for message in batch:
            if message.error() is None:
                loads(message.value() or b"null")
                seen += 1
    elapsed = time.perf_counter() - (start or time.perf_counter())
    consumer.close()
    return seen / elapsed if elapsed > 0 else 0.0


def run_agent(
    settings: Settings, expected: int, timeout: float = 600.0
) -> tuple[float, float, float]:
    """Run a worker process; return (sustained events/s, wall events/s, peak RSS MB)."""
    env = {
        **os.environ,
        **settings.to_env(
            STREAMSCORE_WEB_ENABLED="false",
            STREAMSCORE_LOG_LEVEL="warning",
            STREAMSCORE_AGENTS="ingest",  # ingestion alone: no lake agent competing for the core
        ),
    }
    started = time.perf_counter()
    worker = subprocess.Popen(
        [sys.executable, "-m", "streams.cli.main", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    proc = psutil.Process(worker.pid)
    peak_rss = 0
    outputs = [valid_topic(settings, "transaction"), dlq_topic(settings)]
    consumer = make_consumer(settings, f"bench-count-{uuid.uuid4().hex[:8]}")
    consumer.subscribe(outputs)
    seen, first_ms, last_ms = 0, None, 0
    deadline = time.monotonic() + timeout
    try:
        while seen < expected and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=10_000, timeout=0.5):
                if message.error() is not None:
                    continue
                seen += 1
                stamp = message.timestamp()[1]
                first_ms = stamp if first_ms is None else min(first_ms, stamp)
                last_ms = max(last_ms, stamp)
            try:
                peak_rss = max(peak_rss, proc.memory_info().rss)
            except psutil.NoSuchProcess:
                break
        wall = time.perf_counter() - started
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        consumer.close()
    if seen < expected:
        raise RuntimeError(f"the worker handed off only {seen} of {expected} events")
    span = max((last_ms - (first_ms or last_ms)) / 1000, 1e-3)
    return (seen - 1) / span, seen / wall, peak_rss / 2**20


def run(settings: Settings, events: int = 300_000) -> IngestBenchResult:
    """Pre-load, measure the ceiling, measure the agent, on fresh bench topics."""
    tag = uuid.uuid4().hex[:6]
    bench = settings.model_copy(
        update={"topic_prefix": f"bench-{tag}.", "app_id": f"bench-ingest-{tag}"}
    )
    registry = SchemaRegistry.load(bench.schemas_dir)
    apply_topics(bench, declared_topics(registry.event_types), make_admin(bench))
    data = synthetic_events(events)
    invalid = sum(1 for i in range(events) if i % 50 == 49)
    preload(bench, data)
    ceiling_eps = ceiling(bench, events)
    sustained, wall, rss = run_agent(bench, events)
    admin = make_admin(bench)
    admin.delete_topics(
        [t for t in admin.list_topics(timeout=10).topics if t.startswith(bench.topic_prefix)]
    )
    return IngestBenchResult(events, invalid, ceiling_eps, sustained, wall, rss)
