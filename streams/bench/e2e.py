"""``streamscore bench e2e``: raw topic → ingest → score → ClickHouse, one worker, end to end.

A small world is bootstrapped once into ``<home>/bench-e2e`` (history, nightly, LightGBM
champion; no shadow, so each event is scored once) and reused. Then, in one run:

(a) ceiling: a raw confluent-kafka consume + orjson decode loop over N pre-loaded events;
(b) throughput: one worker (ingest, score, sink, dlq; web off) from process start until
    the last decision: sustained events/s from the decisions' broker timestamps, wall
    events/s, peak RSS; the rate at which rows became queryable from ``inserted_at``;
(c) latency: a fresh topic set fed at a fixed rate. Decision latency: the raw record's
    produce timestamp → this process receiving its decision on the decisions topic.
    Queryable latency: ``inserted_at − produced_at`` per event, read from ClickHouse after
    the worker stopped (chDB: one process at a time), and inserts per second of the
    busiest table (distinct ``inserted_at``: one per insert).

Events come from ``simulate_records`` with the world's population (real account, card and
merchant ids), 2% invalid. Invalid kinds are the ones that are JSON text (the ceiling loop
decodes every record), without ``payload_too_large`` (256 KiB each): a few hundred of those
would dominate the bytes a benchmark of event rates moves.
"""

from __future__ import annotations

import contextlib
import math
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import orjson
import psutil

from streams.demo import (
    DecisionReader,
    Pacer,
    delete_run_topics,
    start_worker,
    stop_worker,
    wait_for_groups,
)
from streams.settings import Settings

AGENTS = "score,sink,dlq"
SEED = 7
GOAL_EPS = 50_000.0
GOAL_RATIO = 0.5
GOAL_DECISION_P99_MS = 25.0
GOAL_QUERYABLE_P99_MS = 2000.0
GOAL_INSERTS_PER_S = 2.0
EVENT_RATE = 10_000.0  # events per second of event time in the generated traffic

Headers = list[tuple[str, str | bytes | None]]
Record = tuple[bytes | None, bytes, Headers, bool]  # key, value, headers, valid


@dataclass(frozen=True, slots=True)
class WorldConfig:
    accounts: int = 20_000
    history_days: int = 30


@dataclass(slots=True)
class E2EResult:
    events: int = 0
    valid: int = 0
    preload_eps: float = 0.0
    ceiling_eps: float = 0.0
    sustained_eps: float = 0.0  # first → last prediction, broker timestamps
    wall_eps: float = 0.0  # worker process start → last prediction queryable
    inserted_eps: float = 0.0  # first → last ClickHouse inserted_at
    startup_s: float = 0.0  # worker start → first prediction
    peak_rss_mb: float = 0.0
    stages_ms: dict[str, float] = field(default_factory=dict)  # mean per batch
    batch_events: float = 0.0
    latency_rate: float = 0.0  # events/s asked for
    latency_warmup_s: float = 0.0  # produced at that rate first, not measured
    latency_achieved: float = 0.0
    latency_events: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)  # produce → queryable
    decision_ms: dict[str, float] = field(default_factory=dict)  # produce → decision received
    inserts_per_s: float = 0.0  # the busiest table's, during the latency run
    processes: int = 1
    cpu_us_per_event: dict[str, float] = field(default_factory=dict)  # by process role

    def to_json(self) -> dict[str, Any]:
        """The machine-readable result (``--json``)."""

        def ms(summary: dict[str, float], key: str) -> float | None:
            value = summary.get(key)
            return None if value is None or math.isnan(value) else round(value, 1)

        return {
            "events": self.events,
            "ceiling_eps": round(self.ceiling_eps),
            "sustained_eps": round(self.sustained_eps),
            "ratio": round(self.ratio, 3),
            "decision_p50_ms": ms(self.decision_ms, "p50"),
            "decision_p99_ms": ms(self.decision_ms, "p99"),
            "queryable_p50_ms": ms(self.latency_ms, "p50"),
            "queryable_p99_ms": ms(self.latency_ms, "p99"),
            "inserts_per_s": round(self.inserts_per_s, 2),
            "startup_s": round(self.startup_s, 2),
            "peak_rss_mb": round(self.peak_rss_mb),
            "processes": self.processes,
            "cpu_us_per_event": self.cpu_us_per_event,
        }

    @property
    def ratio(self) -> float:
        return self.sustained_eps / self.ceiling_eps if self.ceiling_eps else 0.0


# -- pure helpers -------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100) with linear interpolation (numpy's default); NaN if empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary(values: Sequence[float]) -> dict[str, float]:
    """p50, p90, p99, max and mean of latencies (ms); empty for no values."""
    if not values:
        return {}
    return {
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values),
        "mean": sum(values) / len(values),
    }


def sustained_rate(first_ms: float, last_ms: float, count: int) -> float:
    """Events/s between the first and last of ``count`` timestamped events (0 if undefined).

    ``count - 1`` intervals fit between the first and the last event.
    """
    span = (last_ms - first_ms) / 1000
    return (count - 1) / span if count > 1 and span > 0 else 0.0


def format_table(result: E2EResult) -> list[str]:
    """The result as an aligned table, each line with its goal where there is one."""

    def row(name: str, value: str, goal: str = "", met: bool | None = None) -> str:
        mark = "" if met is None else ("  ok" if met else "  short")
        return f"{name:36}{value:>16}  {goal:>12}{mark}"

    r = result
    lat = r.latency_ms
    p99 = lat.get("p99", math.nan)
    decision = r.decision_ms
    decision_p99 = decision.get("p99", math.nan)
    lines = [
        row("measure", "value", "goal"),
        row("events pre-loaded (valid)", f"{r.events:,} ({r.valid:,})"),
        row("pre-load produce rate", f"{r.preload_eps:,.0f}/s"),
        row("(a) ceiling: consume + orjson", f"{r.ceiling_eps:,.0f}/s"),
        row(
            "(b) worker sustained",
            f"{r.sustained_eps:,.0f}/s",
            f"≥ {GOAL_EPS:,.0f}/s",
            r.sustained_eps >= GOAL_EPS,
        ),
        row("    ratio to ceiling", f"{r.ratio:.2f}", f"≥ {GOAL_RATIO}", r.ratio >= GOAL_RATIO),
        row("    sustained by inserted_at", f"{r.inserted_eps:,.0f}/s"),
        row("    wall, incl. start-up", f"{r.wall_eps:,.0f}/s"),
        row("    start-up to first prediction", f"{r.startup_s:.1f} s"),
        row("    peak RSS, largest process", f"{r.peak_rss_mb:,.0f} MB"),
        row("    events per scoring batch", f"{r.batch_events:,.0f}"),
    ]
    for role, us in sorted(r.cpu_us_per_event.items()):
        lines.append(row(f"    CPU per event, {role} processes", f"{us:,.1f} µs"))
    for stage, ms in r.stages_ms.items():
        lines.append(row(f"    mean {stage} per batch", f"{ms:,.1f} ms"))
    lines += [
        row(
            f"(c) latency at {r.latency_rate:,.0f}/s, after {r.latency_warmup_s:.0f} s",
            f"{r.latency_events:,} events",
        ),
        row("    achieved produce rate", f"{r.latency_achieved:,.0f}/s"),
        row("    p50 produce → decision", f"{decision.get('p50', math.nan):,.1f} ms"),
        row(
            "    p99",
            f"{decision_p99:,.1f} ms",
            f"≤ {GOAL_DECISION_P99_MS:.0f} ms",
            decision_p99 <= GOAL_DECISION_P99_MS,
        ),
        row("    p50 produce → queryable", f"{lat.get('p50', math.nan):,.1f} ms"),
        row("    p90", f"{lat.get('p90', math.nan):,.1f} ms"),
        row(
            "    p99",
            f"{p99:,.1f} ms",
            f"≤ {GOAL_QUERYABLE_P99_MS:,.0f} ms",
            p99 <= GOAL_QUERYABLE_P99_MS,
        ),
        row("    max", f"{lat.get('max', math.nan):,.1f} ms"),
        row(
            "    inserts/s, busiest table",
            f"{r.inserts_per_s:.2f}",
            f"≤ {GOAL_INSERTS_PER_S:.0f}",
            r.inserts_per_s <= GOAL_INSERTS_PER_S,
        ),
    ]
    return lines


# -- the world ------------------------------------------------------------------------------


def bench_settings(settings: Settings) -> Settings:
    """The bench's own home (lake, chDB, Feast, models) under ``<home>/bench-e2e``."""
    home = settings.home / "bench-e2e"
    update: dict[str, Any] = {
        "home": home,
        "models_dir": home / "models",
        "lake_dir": "",
        "web_enabled": False,
        "log_level": "warning",
        "nightly_cron": "",
    }
    if not settings.clickhouse_dsn.startswith(("http://", "https://")):
        update["clickhouse_dsn"] = ""  # <bench home>/chdb
    return settings.model_copy(update=update)


def ensure_world(settings: Settings, world: WorldConfig, fresh: bool = False) -> bool:
    """Bootstrap the bench world unless one of this size is there; True if it was built now."""
    from streams.bootstrap import BootstrapConfig, bootstrap
    from streams.clickhouse import apply_migrations, connect

    marker = settings.home / "world.json"
    wanted = {"accounts": world.accounts, "history_days": world.history_days, "seed": SEED}
    if not fresh and marker.exists() and orjson.loads(marker.read_bytes()) == wanted:
        return False
    client = connect(settings)
    try:
        apply_migrations(client, settings.clickhouse_database)
    finally:
        client.close()
    config = BootstrapConfig(accounts=world.accounts, history_days=world.history_days, seed=SEED)
    bootstrap(settings, config)
    marker.write_bytes(orjson.dumps(wanted))
    return True


def records(
    accounts: int, invalid_fraction: float = 0.02, event_rate: float = EVENT_RATE
) -> Iterator[Record]:
    """Endless raw records for the world's population, live from now.

    Valid events are re-timed to ``event_rate`` per second of event time: the simulated
    population trickles (its events are hours apart), and a benchmark of a worker at
    tens of thousands of events per second should see the windows such traffic makes.
    """
    from streams.simulate.records import SimulationConfig, simulate_records

    start = datetime.now(UTC)
    config = SimulationConfig(
        start=start, accounts=accounts, seed=SEED,
        invalid_fraction=invalid_fraction, labels=False, text_only=True,
    )  # fmt: skip
    start_us = int(start.timestamp() * 1_000_000)
    step_us = 1_000_000 / event_rate
    for n, item in enumerate(simulate_records(config)):
        if item.invalid_kind == "payload_too_large":
            continue
        value = item.value
        if item.valid:
            event = orjson.loads(value)
            at = datetime.fromtimestamp((start_us + int(n * step_us)) / 1_000_000, tz=UTC)
            event["event_time"] = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            value = orjson.dumps(event)
        headers: Headers = [*item.headers]
        yield item.key, value, headers, item.valid


def _fresh(settings: Settings, name: str) -> Settings:
    tag = uuid.uuid4().hex[:6]
    run = settings.model_copy(
        update={
            "topic_prefix": f"bench-e2e-{tag}.",
            "app_id": f"bench-{name}-{tag}",
            "worker_id": f"bench-{name}-{tag}",
        }
    )
    from streams.kafka import make_admin
    from streams.schemas.registry import SchemaRegistry
    from streams.topics import apply_topics, declared_topics

    registry = SchemaRegistry.load(run.schemas_dir)
    apply_topics(run, declared_topics(registry.event_types), make_admin(run))
    return run


def produce(
    settings: Settings, source: Iterator[Record], count: int, rate: float = 0.0
) -> tuple[int, float]:
    """Produce ``count`` records to the raw topic (at ``rate``/s if > 0): (valid, seconds)."""
    from streams.kafka import make_producer
    from streams.topics import raw_topic

    producer = make_producer(settings, **{"linger.ms": 5 if rate else 20})
    topic = raw_topic(settings)
    valid = 0
    pacer = Pacer(rate)
    step = max(1, int(rate / 1000)) if rate else 10_000
    for index in range(count):
        key, value, headers, ok = next(source)
        if index % step == 0:
            pacer.wait(index)
            producer.poll(0)
        while True:
            try:
                producer.produce(topic, value=value, key=key, headers=headers)
                break
            except BufferError:
                producer.poll(0.05)
        valid += ok
    seconds = pacer.elapsed
    if producer.flush(120):
        raise RuntimeError(f"records to {topic} not acknowledged within 120 s")
    return valid, seconds


def _watch(
    settings: Settings,
    worker: subprocess.Popen[bytes],
    expected: int,
    timeout: float,
) -> tuple[int, int, int, float, dict[str, float]]:
    """Count decisions until ``expected``: (seen, first ms, last ms, peak RSS MB, CPU µs per
    event by role from the first decision on)."""
    from streams.kafka import make_consumer
    from streams.topics import PREDICTIONS, topic_name

    consumer = make_consumer(settings, f"bench-watch-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([topic_name(settings, PREDICTIONS)])
    usage = Usage(psutil.Process(worker.pid))
    seen, first_ms, last_ms = 0, 0, 0
    deadline = time.monotonic() + timeout
    try:
        while seen < expected and time.monotonic() < deadline:
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited with {worker.returncode}")
            for message in consumer.consume(num_messages=10_000, timeout=0.5):
                if message.error() is not None:
                    continue
                seen += 1
                stamp = message.timestamp()[1]
                first_ms = stamp if not first_ms else min(first_ms, stamp)
                last_ms = max(last_ms, stamp)
            usage.sample(started=seen > 0)
    finally:
        consumer.close()
    if seen < expected:
        raise RuntimeError(f"only {seen:,} of {expected:,} events scored within {timeout:.0f}s")
    cpu = {role: round(us / seen, 1) for role, us in usage.cpu_us().items()}
    return seen, first_ms, last_ms, usage.peak_rss / 2**20, cpu


class Usage:
    """Peak RSS and CPU time of a worker and its children (a supervised topology), by role:
    ``score`` (scoring processes), ``stages`` (the rest), ``worker`` (all in one)."""

    def __init__(self, proc: psutil.Process) -> None:
        self.proc = proc
        self.peak_rss = 0
        self._first: dict[int, float] = {}  # CPU seconds at the first decision
        self._last: dict[int, tuple[str, float]] = {}

    def sample(self, started: bool) -> None:
        for p in [self.proc, *self.proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):  # it may have just exited
                self.peak_rss = max(self.peak_rss, p.memory_info().rss)
                times = p.cpu_times()
                cpu = times.user + times.system
                if p.pid not in self._last:
                    self._last[p.pid] = (_role(p, p is self.proc), cpu)
                    if started:
                        self._first[p.pid] = 0.0  # started mid-run: all its time counts
                if not started:
                    self._first[p.pid] = cpu
                self._last[p.pid] = (self._last[p.pid][0], cpu)

    def cpu_us(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid, (role, cpu) in self._last.items():
            out[role] = out.get(role, 0.0) + (cpu - self._first.get(pid, cpu)) * 1e6
        return {role: us for role, us in out.items() if us > 0}


def _role(p: psutil.Process, top: bool) -> str:
    env = p.environ()
    if not top:
        return "score" if env.get("STREAMSCORE_AGENTS") == "score" else "stages"
    return "supervisor" if env.get("STREAMSCORE_SCORERS") not in (None, "0") else "worker"


def _query(settings: Settings, sql: str, topic: str, since: int = 0) -> list[Sequence[Any]]:
    from streams.clickhouse import connect

    client = connect(settings)
    try:
        parameters: dict[str, Any] = {"t": topic, "db": settings.clickhouse_database}
        if "{since:" in sql:
            parameters["since"] = since
        rows = client.query(sql, parameters=parameters).result_rows
        return list(rows)
    finally:
        client.close()


def throughput(settings: Settings, events: int, result: E2EResult, log: Path, **env: str) -> None:
    """(a) and (b) on one pre-loaded topic set; ``env`` adds worker settings."""
    from streams.bench.ingest import ceiling
    from streams.topics import raw_topic

    run = _fresh(settings, "throughput")
    try:
        accounts = orjson.loads((settings.home / "world.json").read_bytes())["accounts"]
        result.events = events
        result.valid, seconds = produce(run, records(accounts), events)
        result.preload_eps = events / seconds
        result.ceiling_eps = ceiling(run, events)
        started = time.perf_counter()
        started_ms = time.time() * 1000
        worker = start_worker(run, log, STREAMSCORE_AGENTS=AGENTS, **env)
        try:
            seen, first_ms, last_ms, result.peak_rss_mb, result.cpu_us_per_event = _watch(
                run, worker, result.valid, timeout=1800
            )
            wall = time.perf_counter() - started
        finally:
            stop_worker(worker)
        result.sustained_eps = sustained_rate(first_ms, last_ms, seen)
        result.wall_eps = seen / wall
        result.startup_s = (first_ms - started_ms) / 1000
        (n, first, last, batch, queue, feature, model), *_ = _query(
            settings,
            "select count(), toUnixTimestamp64Milli(min(inserted_at)), "
            "toUnixTimestamp64Milli(max(inserted_at)), count() / uniqExact(scored_at), "
            "avg(queue_ms), avg(feature_ms), avg(model_ms) from {db:Identifier}.predictions "
            "where topic = {t:String} and decided",
            raw_topic(run),
        )
        result.inserted_eps = sustained_rate(float(first), float(last), int(n))
        result.batch_events = float(batch)
        result.stages_ms = {"queue": queue, "feature": feature, "model": model}
    finally:
        delete_run_topics(run)


def latency(
    settings: Settings,
    rate: float,
    seconds: float,
    result: E2EResult,
    log: Path,
    warmup: float = 0.0,
    **env: str,
) -> None:
    """(c): a fresh worker fed at ``rate`` for ``warmup`` + ``seconds``; latencies of the
    events produced after the warm-up (the first connections to each topic's leaders, the
    first batches through ONNX Runtime) from the decisions topic and ClickHouse."""
    from streams.topics import raw_topic

    run = _fresh(settings, "latency")
    count = round(rate * (seconds + warmup))
    try:
        accounts = orjson.loads((settings.home / "world.json").read_bytes())["accounts"]
        # generated before the clock runs, on the event clock of the rate asked for
        source = iter(list(_take(records(accounts, event_rate=rate), count)))
        worker = start_worker(run, log, STREAMSCORE_AGENTS=AGENTS, **env)
        clock = DecisionReader(run)  # the demo's reader of the decisions topic
        try:
            wait_for_groups(run, ("score", "sink", "dlq"), worker, log)
            clock.start()
            if not clock.ready.wait(60):
                raise RuntimeError("the decisions consumer got no partitions within 60 s")
            clock.since_ms = time.time() * 1000 + warmup * 1000
            valid, took = produce(run, source, count, rate)
            clock.wait_for(valid, timeout=600)
            time.sleep(3 * run.sink_flush_seconds)  # the last rows reach ClickHouse
        finally:
            clock.done.set()
            stop_worker(worker)
        rows = _query(
            settings,
            "select toUnixTimestamp64Milli(inserted_at) - toUnixTimestamp64Milli(produced_at) "
            "from {db:Identifier}.predictions final where topic = {t:String} and decided "
            "and toUnixTimestamp64Milli(produced_at) >= {since:Int64}",
            raw_topic(run),
            since=int(clock.since_ms),
        )
        values = [float(r[0]) for r in rows]
        result.latency_rate = rate
        result.latency_warmup_s = warmup
        result.latency_achieved = count / took
        result.latency_events = len(values)
        result.latency_ms = latency_summary(values)
        result.decision_ms = latency_summary(clock.latencies)
        result.inserts_per_s = max(
            inserts_per_second(settings, table, raw_topic(run)) for table in SINK_TABLES
        )
    finally:
        delete_run_topics(run)


SINK_TABLES = ("predictions", "dlq_events")


def inserts_per_second(settings: Settings, table: str, topic: str) -> float:
    """Inserts per second into ``table`` for ``topic``'s rows: distinct ``inserted_at`` (one
    per insert) over the time from the first insert to the last."""
    if table not in SINK_TABLES:
        raise ValueError(f"not a sink table: {table!r}")
    sql = (
        "select uniqExact(inserted_at), toUnixTimestamp64Milli(min(inserted_at)), "  # noqa: S608 - table is one of SINK_TABLES
        f"toUnixTimestamp64Milli(max(inserted_at)) from {{db:Identifier}}.{table} "
        "where topic = {t:String}"
    )
    rows = _query(settings, sql, topic)
    inserts, first, last = rows[0]
    span = (float(last) - float(first)) / 1000
    return (int(inserts) - 1) / span if int(inserts) > 1 and span > 0 else float(inserts)


@dataclass(frozen=True, slots=True)
class MonitoringRun:
    name: str
    shadow: bool
    drift: bool


MONITORING_RUNS = (
    MonitoringRun("champion only, drift off", shadow=False, drift=False),
    MonitoringRun("champion, drift on", shadow=False, drift=True),
    MonitoringRun("champion + shadow, drift on", shadow=True, drift=True),
)


def ensure_shadow(settings: Settings) -> str:
    """An MLP challenger trained on the champion's training window; its model id.

    Trained once into the bench world (the world itself is bootstrapped champion-only).
    """
    from streams.features.registry import load_feature_service
    from streams.features.training import build_training_set
    from streams.scoring.metadata import ModelMetadata, sidecar_path
    from streams.scoring.registry import artifact_path, load_registry, registry_path
    from streams.scoring.training import import_training_package
    from streams.settings import project_root

    registry = load_registry(registry_path(settings.models_dir))
    champion = registry.champion
    assert champion is not None, "the bench world has no champion"
    metadata = ModelMetadata.read(sidecar_path(artifact_path(settings.models_dir, champion)))
    models = import_training_package(project_root() / "models")
    config = models.TrainConfig(kind="mlp", version=f"{metadata.version}_bench")
    shadow_id = f"{config.model_name}-{config.version}"
    if artifact_path(settings.models_dir, shadow_id).exists():
        return shadow_id
    start = datetime.fromisoformat(metadata.training_data["start"])
    end = datetime.fromisoformat(metadata.training_data["end"])
    table = build_training_set(settings, start, end)
    spec = load_feature_service(settings, settings.feature_service)
    result = models.train(spec, table, settings.models_dir / "artifacts", config)
    return str(result.metadata.model_id)


def monitoring_cost(
    settings: Settings, events: int, log: Path, repeat: int = 1
) -> list[tuple[str, E2EResult]]:
    """Sustained throughput of one worker without monitoring, with drift, with drift and a
    shadow model: the same world, a fresh topic set each run. With ``repeat`` > 1 the three
    are interleaved ``repeat`` times and each reports its median run (this machine's
    run-to-run noise is about ±10%)."""
    from streams.scoring.registry import edit_registry, promote, registry_path, retire

    shadow = ensure_shadow(settings)
    path = registry_path(settings.models_dir)
    saved = path.read_bytes()
    runs: dict[str, list[E2EResult]] = {run.name: [] for run in MONITORING_RUNS}
    try:
        for _ in range(repeat):
            for run in MONITORING_RUNS:
                with edit_registry(path) as box:
                    if shadow in box[0].model_ids:
                        box[0] = retire(box[0], shadow)
                    if run.shadow:
                        box[0] = promote(box[0], shadow, role="shadow")
                result = E2EResult()
                env = {"STREAMSCORE_DRIFT_ENABLED": "true" if run.drift else "false"}
                throughput(settings, events, result, log, **env)
                runs[run.name].append(result)
    finally:
        path.write_bytes(saved)
    return [(name, median_run(results)) for name, results in runs.items()]


def median_run(results: Sequence[E2EResult]) -> E2EResult:
    """The run with the median sustained rate (the lower middle one of an even count)."""
    ordered = sorted(results, key=lambda r: r.sustained_eps)
    return ordered[(len(ordered) - 1) // 2]


def format_monitoring(rows: Sequence[tuple[str, E2EResult]]) -> list[str]:
    """One line per run: sustained events/s and the cost against the first (no monitoring)."""
    base = rows[0][1].sustained_eps if rows else 0.0
    lines = [f"{'monitoring cost':<30} {'events/s':>10} {'cost':>8} {'peak RSS':>10}"]
    for name, r in rows:
        cost = 1 - r.sustained_eps / base if base else 0.0
        lines.append(f"{name:<30} {r.sustained_eps:>10,.0f} {cost:>8.1%} {r.peak_rss_mb:>8,.0f}MB")
    return lines


def _take(source: Iterator[Record], count: int) -> Iterator[Record]:
    for _, item in zip(range(count), source, strict=False):
        yield item


@click.command()
@click.option("--events", default=1_000_000, show_default=True, help="Events to pre-load.")
@click.option("--rate", default=5_000.0, show_default=True, help="Latency run: events/s.")
@click.option("--seconds", default=30.0, show_default=True, help="Latency run: how long.")
@click.option(
    "--warmup",
    default=2.0,
    show_default=True,
    help="Latency run: seconds at the same rate before the measured ones (not measured).",
)
@click.option("--accounts", default=20_000, show_default=True, help="World size.")
@click.option("--fresh-world", is_flag=True, help="Bootstrap again even if a world exists.")
@click.option("--skip-latency", is_flag=True, help="Only the ceiling and throughput runs.")
@click.option(
    "--monitoring",
    is_flag=True,
    help="Instead: throughput without monitoring, with drift, and with drift plus a shadow.",
)
@click.option("--repeat", default=3, show_default=True, help="--monitoring: runs per setup.")
@click.option(
    "--scorers",
    type=int,
    default=None,
    help="Scoring processes next to one for the other stages (default: STREAMSCORE_SCORERS, "
    "one per core; 0: one process for every stage).",
)
@click.option("--json", "as_json", is_flag=True, help="End with the result as one JSON object.")
@click.pass_obj
def e2e(
    settings: Settings,
    events: int,
    rate: float,
    seconds: float,
    warmup: float,
    accounts: int,
    fresh_world: bool,
    skip_latency: bool,
    monitoring: bool,
    repeat: int,
    scorers: int | None,
    as_json: bool,
) -> None:
    """One worker end to end (ingest → score → ClickHouse) against the raw-consumer ceiling.

    Starts the local broker if this project manages it (and leaves it running, as
    ``bench ingest`` does). The world lives in <home>/bench-e2e and is reused.
    """
    import warnings

    from streams.infra.kafka import LocalKafka

    warnings.filterwarnings("ignore", category=FutureWarning)
    bench = bench_settings(settings)
    if bench.manages_local_kafka:
        LocalKafka(bench).up()
    began = time.perf_counter()
    if ensure_world(bench, WorldConfig(accounts=accounts), fresh=fresh_world):
        click.echo(f"world bootstrapped in {time.perf_counter() - began:.0f}s ({bench.home})")
    log = bench.home / "bench-worker.log"
    if monitoring:
        runs = len(MONITORING_RUNS) * repeat
        click.echo(f"{runs} runs of {events:,} events, one worker each (medians) ...")
        for line in format_monitoring(monitoring_cost(bench, events, log, repeat)):
            click.echo(line)
        click.echo(f"took {time.perf_counter() - began:.0f}s; worker log: {log}")
        return
    scorers = bench.scoring_processes if scorers is None else scorers
    result = E2EResult(processes=scorers + 1 if scorers else 1)
    env = {"STREAMSCORE_SCORERS": str(scorers)}
    click.echo(f"pre-loading {events:,} events, then ceiling and the worker ...")
    throughput(bench, events, result, log, **env)
    if not skip_latency:
        click.echo(f"latency run: {rate:,.0f} events/s for {seconds:.0f}s ...")
        latency(bench, rate, seconds, result, log, warmup, **env)
    click.echo("")
    for line in format_table(result):
        click.echo(line)
    click.echo(f"took {time.perf_counter() - began:.0f}s; worker log: {log}")
    if as_json:
        click.echo(orjson.dumps(result.to_json()).decode())
