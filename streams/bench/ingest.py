"""``streamscore bench ingest``: the ingestion agent against a raw-consumer ceiling.

Without a broker: hot-path validation rates on one core, and the worst time the
pre-parse guards (and the whole pure ingest step) spend on one hostile payload at the
size limit (``streams.bench.adversarial``; the target is 5 ms, well inside a batch).
Then one run on one pre-loaded topic set: (1) a raw confluent-kafka consume + orjson
decode loop over every event (the ceiling: what any Python consumer here could reach),
then (2) a real ``streamscore worker`` process (faust, concurrency 1) ingesting the same
events, measured from its first hand-off record to its last by broker timestamps
(sustained rate, start-up excluded) and from process start to the last record.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import click
import orjson
import psutil

from streams.bench.adversarial import adversarial_payloads
from streams.ingest import Limits, RawRecord, guard, ingest_batch, ingest_record
from streams.kafka import make_admin, make_consumer, make_producer
from streams.schemas.registry import SchemaRegistry
from streams.settings import Settings
from streams.topics import apply_topics, declared_topics, dlq_topic, raw_topic, valid_topic

__all__ = [
    "GUARD_TARGET_MS",
    "GuardReport",
    "IngestBenchResult",
    "guard_report",
    "ingest",
    "run",
    "synthetic_events",
    "validation_rates",
]

# What one hostile payload may cost the pre-parse guards: far below a batch's budget
# and librdkafka's poll interval, so no payload can stall a worker.
GUARD_TARGET_MS = 5.0


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


@dataclass(frozen=True, slots=True)
class GuardReport:
    """Per hostile payload, the median ms of ``repeat`` runs; the worst of each kind."""

    payload_bytes: int
    repeat: int
    guard_ms: dict[str, float]
    ingest_ms: dict[str, float]

    @property
    def guard_worst(self) -> tuple[str, float]:
        return max(self.guard_ms.items(), key=lambda item: item[1])

    @property
    def ingest_worst(self) -> tuple[str, float]:
        return max(self.ingest_ms.items(), key=lambda item: item[1])


def guard_report(settings: Settings, repeat: int = 7) -> GuardReport:
    """Time ``guard`` (size, depth: the checks on raw bytes) and the whole
    ``ingest_record`` (guards, parse, schema headers, validation) on each payload of
    ``adversarial_payloads`` at the configured limits; medians of ``repeat`` runs."""
    registry = SchemaRegistry.load(settings.schemas_dir)
    limits = Limits(settings.max_payload_bytes, settings.max_nesting_depth)
    guard_ms: dict[str, float] = {}
    ingest_ms: dict[str, float] = {}
    clock = time.perf_counter
    for payload in adversarial_payloads(limits):
        record = RawRecord("bench", 0, 0, 0, None, payload.value, payload.headers)
        guard_runs, ingest_runs = [], []
        for _ in range(repeat):
            began = clock()
            guard(record, limits)
            guarded = clock()
            ingest_record(record, registry, limits)
            ingest_runs.append((clock() - guarded) * 1000)
            guard_runs.append((guarded - began) * 1000)
        guard_ms[payload.name] = statistics.median(guard_runs)
        ingest_ms[payload.name] = statistics.median(ingest_runs)
    return GuardReport(limits.max_payload_bytes, repeat, guard_ms, ingest_ms)


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


def _median_rates(settings: Settings, repeat: int) -> dict[str, float]:
    runs = [validation_rates(settings) for _ in range(repeat)]
    return {name: statistics.median(run[name] for run in runs) for name in runs[0]}


def _guard_lines(report: GuardReport) -> list[str]:
    (guard_name, guard_ms), (ingest_name, ingest_ms) = report.guard_worst, report.ingest_worst
    verdict = "ok" if guard_ms <= GUARD_TARGET_MS else "OVER TARGET"
    return [
        f"hostile payloads at {report.payload_bytes:,} bytes "
        f"({len(report.guard_ms)}, median of {report.repeat} runs each):",
        f"  worst pre-parse guards     {guard_ms:>9.2f} ms  {guard_name}"
        f"  (target <= {GUARD_TARGET_MS:g} ms: {verdict})",
        f"  worst whole ingest step    {ingest_ms:>9.2f} ms  {ingest_name}",
    ]


@click.command()
@click.option("--events", default=300_000, show_default=True, help="Events to pre-load.")
@click.option(
    "--no-broker", is_flag=True, help="Only what needs no broker: validation rates and guards."
)
@click.option(
    "--repeat", default=3, show_default=True, help="Runs of the no-broker parts (medians)."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead.")
@click.pass_obj
def ingest(settings: Settings, events: int, no_broker: bool, repeat: int, as_json: bool) -> None:
    """Ingestion agent throughput vs a raw confluent-kafka consume+decode ceiling.

    First, without a broker: hot-path validation rates and the worst time the
    pre-parse guards spend on one hostile payload at the size limit. Then (unless
    --no-broker) starts the local broker if this project manages it, uses fresh bench-*
    topics and deletes them afterwards.
    """
    rates = _median_rates(settings, repeat)
    guards = guard_report(settings, repeat=max(repeat, 5))
    out: dict[str, Any] = {
        "validation_eps": rates,
        "guard_worst_ms": guards.guard_worst[1],
        "guard_worst_payload": guards.guard_worst[0],
        "guard_target_ms": GUARD_TARGET_MS,
        "ingest_worst_ms": guards.ingest_worst[1],
        "ingest_worst_payload": guards.ingest_worst[0],
        "payload_bytes": guards.payload_bytes,
        "guard_ms": guards.guard_ms,
        "ingest_ms": guards.ingest_ms,
    }
    if not as_json:
        click.echo(f"hot-path validation, one core, 20-field transactions (median of {repeat}):")
        for name, rate in rates.items():
            click.echo(f"  {name:26} {rate:>12,.0f} events/s")
        for line in _guard_lines(guards):
            click.echo(line)
    if no_broker:
        if as_json:
            click.echo(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
        return

    from streams.infra.kafka import LocalKafka

    if settings.manages_local_kafka:
        LocalKafka(settings).up()
    if not as_json:
        click.echo(f"pre-loading {events:,} events (2% invalid) ...")
    result = run(settings, events)
    if as_json:
        out["agent"] = {**asdict(result), "ratio": result.ratio}
        click.echo(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(f"events                       {result.events:>12,}  ({result.invalid:,} invalid)")
    click.echo(f"ceiling: consume+decode      {result.ceiling_eps:>12,.0f} events/s")
    click.echo(f"ingest agent, sustained      {result.agent_sustained_eps:>12,.0f} events/s")
    click.echo(f"ingest agent, incl. start-up {result.agent_wall_eps:>12,.0f} events/s")
    click.echo(f"ratio to ceiling             {result.ratio:>12.2f}")
    click.echo(f"worker peak RSS              {result.worker_peak_rss_mb:>12,.0f} MB")
