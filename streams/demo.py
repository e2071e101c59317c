"""The main job end to end on local defaults: bootstrap a world, stream live events, summarise.

``run_demo`` starts the local broker if needed, bootstraps a simulated history (nightly
features, a trained and promoted champion plus an MLP shadow), starts a worker (score,
sink, dlq, lake), streams live simulated events at a steady rate on the wall clock, times
each decision as a reader of the decisions topic receives it, waits until every event is
scored or dead-lettered, and reads the summary from ClickHouse through the worker's
``POST /sql`` endpoint (chDB: the worker owns the data path while it runs). Everything it
started it stops again, on errors and Ctrl-C too; the broker only if it was not running.
With STREAMSCORE_ONLINE_STORE=redis it starts the local Redis online store the same way
(``streams.infra.redis``; not when STREAMSCORE_REDIS_URL names another host).

Given ``logs``, each step's own output (Feast's prints and progress bars, librdkafka's
and ONNX Runtime's lines, warnings, log records on stderr) goes to ``logs/<step>.log``
instead of the terminal, so only the progress display and the summary are printed.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson

from streams.errors import InfraError, StreamscoreError
from streams.settings import Settings

# A server-side ``{name:Type}`` placeholder, as the /sql endpoint reads them.
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*):[^{}]+\}")
SEED = 7  # bootstrap's and the live stream's population seed: same accounts, same merchants


class Observer(Protocol):
    """Where progress goes: one step at a time, each with an optional total."""

    def begin(self, step: str, description: str, total: float | None = None) -> None: ...

    def update(self, completed: float) -> None: ...

    def end(self) -> None: ...

    def say(self, line: str) -> None: ...


class QuietObserver:
    """An observer that reports nothing (library use, tests)."""

    def begin(self, step: str, description: str, total: float | None = None) -> None:
        return None

    def update(self, completed: float) -> None:
        return None

    def end(self) -> None:
        return None

    def say(self, line: str) -> None:
        return None


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """What the demo simulates; ``events`` (when set) wins over ``rate × seconds``."""

    events: int | None = None
    seconds: float = 60.0
    rate: float = 1_000.0  # events/s; 0 = as fast as the producer goes
    accounts: int = 5_000
    history_days: int = 90
    invalid_fraction: float = 0.03
    fraud_rate: float | None = None  # None: fraud_rate_for(accounts)
    shadow: bool = True  # also train an MLP and serve it as a shadow
    drain_timeout_s: float = 300.0
    min_merchant_events: int = 20  # a merchant needs this many events to be ranked

    @property
    def total_events(self) -> int:
        if self.events is not None:
            return self.events
        if self.rate <= 0:
            raise ValueError("with --rate 0 (as fast as possible) give --events")
        return max(1, round(self.rate * self.seconds))


def fraud_rate_for(accounts: int) -> float:
    """1% fraud at 5,000 accounts and more; higher for smaller worlds (up to 5%), so the
    training window still holds enough fraud for a holdout split."""
    return min(0.05, max(0.01, 0.01 * 5_000 / max(accounts, 1)))


class Pacer:
    """Sends at ``rate`` per second on average: ``wait(sent)`` sleeps until ``sent`` is due.

    Pacing by the total sent since the start (not per gap) means a late sleep is made up
    by the next ones, so the long-run rate is exact. ``rate <= 0`` never sleeps.
    """

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._started = clock()

    def delay(self, sent: int) -> float:
        """Seconds to wait before event number ``sent`` (0-based) is due; never negative."""
        if self.rate <= 0:
            return 0.0
        return max(0.0, sent / self.rate - (self._clock() - self._started))

    def wait(self, sent: int) -> None:
        ahead = self.delay(sent)
        if ahead > 0:
            self._sleep(ahead)

    @property
    def elapsed(self) -> float:
        return self._clock() - self._started


@dataclass(frozen=True, slots=True)
class MerchantRisk:
    merchant_id: str
    country: str
    events: int
    decline_rate: float
    mean_score: float


@dataclass(frozen=True, slots=True)
class Agreement:
    champion: str
    shadow: str
    events: int
    decision_agreement: float
    mean_abs_score_diff: float


@dataclass(slots=True)
class DemoSummary:
    """What one demo run produced and what ClickHouse holds for it."""

    raw_topic: str = ""
    produced: int = 0
    produce_seconds: float = 0.0
    expected_valid: int = 0
    expected_dead: dict[str, int] = field(default_factory=dict)
    scored: int = 0  # events with an acted-on (champion) prediction
    decisions: dict[str, int] = field(default_factory=dict)
    human_review: int = 0
    dlq: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)  # produce→queryable p50, p99, max
    # produce→decision (a reader of the decisions topic): p50, p99, max; empty until measured
    decision_latency_ms: dict[str, float] = field(default_factory=dict)
    merchants: list[MerchantRisk] = field(default_factory=list)
    agreement: list[Agreement] = field(default_factory=list)
    models: dict[str, tuple[str, str]] = field(default_factory=dict)  # version → (role, provider)
    durations_s: dict[str, float] = field(default_factory=dict)
    complete: bool = False
    online_store: str = ""  # STREAMSCORE_ONLINE_STORE
    features_from: list[str] = field(default_factory=list)  # per scoring process: redis, export

    @property
    def dead(self) -> int:
        return sum(self.dlq.values())

    @property
    def total_seconds(self) -> float:
        return round(sum(self.durations_s.values()), 1)


def format_summary(summary: DemoSummary) -> list[str]:
    """The summary as printable lines (plain text, aligned)."""
    lines: list[str] = []
    expected_dead = sum(summary.expected_dead.values())
    rate = summary.produced / summary.produce_seconds if summary.produce_seconds else 0.0
    lines.append(f"raw topic               {summary.raw_topic}")
    lines.append(f"events produced         {summary.produced:>9,}  ({rate:,.0f} events/s)")
    scored, valid = summary.scored, summary.expected_valid
    lines.append(f"events scored           {scored:>9,}  (expected {valid:,})")
    for name in ("approve", "review", "decline"):
        count = summary.decisions.get(name, 0)
        lines.append(f"  {name:22}{count:>9,}  {_share(count, summary.scored)}")
    human = summary.human_review
    lines.append(f"  {'human review':22}{human:>9,}  {_share(human, summary.scored)}")
    lines.append(f"dead letters            {summary.dead:>9,}  (expected {expected_dead:,})")
    for reason, count in sorted(summary.dlq.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"  {reason:22}{count:>9,}")
    for what, latency in (
        ("decision", summary.decision_latency_ms),
        ("queryable", summary.latency_ms),
    ):
        if latency:
            p50, p99 = latency.get("p50", 0.0), latency.get("p99", 0.0)
            worst = latency.get("max", 0.0)
            lines.append(
                f"latency produce→{what:9}  p50 {p50:,.0f} ms  p99 {p99:,.0f} ms  "
                f"max {worst:,.0f} ms"
            )
        elif what == "decision" and summary.latency_ms:
            lines.append("latency produce→decision   not measured (no decision received)")
    if summary.merchants:
        lines.append("riskiest merchants (mean champion score, ≥ min events):")
        lines.append(f"  {'merchant':14}{'country':>8}{'events':>8}{'decline':>9}{'score':>8}")
        for m in summary.merchants:
            lines.append(
                f"  {m.merchant_id:14}{m.country:>8}{m.events:>8,}"
                f"{m.decline_rate:>9.1%}{m.mean_score:>8.3f}"
            )
    for a in summary.agreement:
        lines.append(
            f"shadow {a.shadow} vs champion {a.champion}: {a.decision_agreement:.1%} same "
            f"decision over {a.events:,} events, mean |Δscore| {a.mean_abs_score_diff:.4f}"
        )
    for version, (role, provider) in sorted(summary.models.items(), key=lambda kv: kv[1][0]):
        lines.append(f"model {version} ({role}) on ONNX Runtime {provider}")
    if summary.durations_s:
        steps = "  ".join(f"{k} {v:.1f}s" for k, v in summary.durations_s.items())
        lines.append(f"took {summary.total_seconds:.1f}s: {steps}")
    return lines


def _share(part: int, whole: int) -> str:
    return f"({part / whole:.1%})" if whole else ""


DECISION_LATENCY_NOTE = (
    "decision_p50_ms and decision_p99_ms (event produced → its decision read from the "
    "decisions topic) are null: no decision was received with a produce time"
)


def summary_json(summary: DemoSummary) -> dict[str, Any]:
    """The summary as one JSON-ready object (``streamscore demo --json``).

    Latencies are milliseconds, null when not measured; ``notes`` says why one is missing.
    """
    notes: list[str] = []
    decision, queryable = summary.decision_latency_ms, summary.latency_ms
    if not decision:
        notes.append(DECISION_LATENCY_NOTE)
    if not queryable:
        notes.append("nothing was scored: no produce → queryable latency")
    rate = summary.produced / summary.produce_seconds if summary.produce_seconds else None
    return {
        "complete": summary.complete,
        "raw_topic": summary.raw_topic,
        "produced": summary.produced,
        "produced_per_s": round(rate, 1) if rate is not None else None,
        "scored": summary.scored,
        "expected_scored": summary.expected_valid,
        "dead": summary.dead,
        "expected_dead": sum(summary.expected_dead.values()),
        "dead_by_reason": dict(sorted(summary.dlq.items())),
        "expected_dead_by_reason": dict(sorted(summary.expected_dead.items())),
        "decisions": dict(sorted(summary.decisions.items())),
        "human_review": summary.human_review,
        "decision_p50_ms": decision.get("p50"),
        "decision_p99_ms": decision.get("p99"),
        "decision_max_ms": decision.get("max"),
        "queryable_p50_ms": queryable.get("p50"),
        "queryable_p99_ms": queryable.get("p99"),
        "queryable_max_ms": queryable.get("max"),
        "models": [
            {"model": version, "role": role, "provider": provider}
            for version, (role, provider) in sorted(
                summary.models.items(), key=lambda kv: (kv[1][0], kv[0])
            )
        ],
        "online_store": summary.online_store,
        "features_from": summary.features_from,
        "durations_s": dict(summary.durations_s),
        "total_s": summary.total_seconds,
        "notes": notes,
    }


# -- the worker's read-only SQL endpoint ------------------------------------------------


class WorkerSql:
    """``POST /sql`` on a worker's web server (loopback only, with its bearer token): rows as
    lists.

    The token is read from ``<home>/sql.token`` on every query: the worker writes a new one
    each time it starts, and one left by an earlier worker must not stick.
    """

    def __init__(self, port: int, database: str, home: Path, timeout: float = 30.0) -> None:
        self.url = f"http://127.0.0.1:{port}/sql"
        self.database = database  # bound as {db:Identifier}
        self.home = home
        self.timeout = timeout

    def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[list[Any]]:
        from streams.sql.route import post_query
        from streams.web.token import read_token

        # The endpoint refuses a parameter the statement does not name: bind only those.
        given = {"db": self.database, **(parameters or {})}
        named = set(_PLACEHOLDER.findall(sql))
        request = {"sql": sql, "parameters": {k: v for k, v in given.items() if k in named}}
        try:
            payload = post_query(self.url, request, read_token(self.home), self.timeout)
        except StreamscoreError as exc:
            raise InfraError(f"{exc} (query: {sql})") from exc
        rows: list[list[Any]] = payload["rows"]
        return rows

    def ready(self) -> bool:
        try:
            return self.query("select 1") == [[1]]
        except (OSError, InfraError):  # not listening yet, or no token written yet
            return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# -- processes ----------------------------------------------------------------------------


def start_worker(settings: Settings, log: Path, **env: str) -> subprocess.Popen[bytes]:
    """``streamscore worker`` on these settings in its own session (Ctrl-C is ours to pass on)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    full = {**os.environ, **settings.to_env(STREAMSCORE_WORKER_ID=settings.worker_id, **env)}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "streams.cli.main", "worker"], env=full, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def stop_worker(worker: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    """SIGTERM, then SIGKILL after ``timeout``; the exit code."""
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)
    return int(worker.returncode)


_SOURCE = re.compile(r'^streamscore_features_age_seconds\{source="([a-z]+)"\}', re.MULTILINE)


def feature_sources(settings: Settings, timeout: float = 5.0) -> list[str]:
    """Where each scoring process of the worker serves features from ("redis", "export"),
    as its ``/metrics`` say; "?" for one that did not answer."""
    import urllib.request

    if settings.scorers == 0:
        ports = [settings.web_port]  # one process runs every stage
    else:
        ports = [settings.web_port + 1 + i for i in range(settings.scoring_processes)]
    found = []
    for port in ports:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/metrics", timeout=timeout
            ) as response:
                match = _SOURCE.search(response.read().decode())
        except OSError:
            match = None
        found.append(match[1] if match else "?")
    return found


def check_alive(worker: subprocess.Popen[bytes], log: Path) -> None:
    if worker.poll() is not None:
        tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
        raise InfraError(
            f"the worker exited with {worker.returncode}; see {log}:\n" + "\n".join(tail)
        )


def wait_for_groups(
    settings: Settings,
    agents: tuple[str, ...],
    worker: subprocess.Popen[bytes],
    log: Path,
    timeout: float = 120.0,
) -> None:
    """Until each agent's consumer group is stable with partitions assigned."""
    from confluent_kafka import ConsumerGroupState

    from streams.kafka import make_admin

    admin = make_admin(settings)
    groups = [f"{settings.app_id}-{agent}" for agent in agents]  # batching.group_id
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check_alive(worker, log)
        ready = 0
        for future in admin.describe_consumer_groups(groups, request_timeout=5).values():
            with contextlib.suppress(Exception):  # not there yet
                group = future.result()
                assigned = any(m.assignment.topic_partitions for m in group.members)
                ready += group.state == ConsumerGroupState.STABLE and assigned
        if ready == len(groups):
            return
        time.sleep(0.25)
    raise InfraError(f"the worker's consumers ({', '.join(groups)}) not assigned in {timeout:.0f}s")


def delete_run_topics(settings: Settings) -> None:
    from streams.kafka import make_admin

    admin = make_admin(settings)
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(settings.topic_prefix)]
    if names:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            with contextlib.suppress(Exception):
                future.result()


# -- the run ------------------------------------------------------------------------------


@contextlib.contextmanager
def captured_output(path: Path) -> Iterator[Path]:
    """While it lasts, everything this process writes to stdout and stderr is appended to
    ``path``: Python's ``print``, warnings, log handlers and progress bars on sys.stdout or
    sys.stderr, and what C libraries (librdkafka, ONNX Runtime) and child processes that
    inherit the streams write to file descriptors 1 and 2.

    Process-wide: whoever wants to keep writing to the terminal meanwhile (the progress
    display) writes to a duplicate of the terminal's descriptor made beforehand.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = (os.dup(1), os.dup(2))
    # Append mode on every handle, so writes through the descriptors and the text file
    # land in order instead of over each other.
    with path.open("a", encoding="utf-8", errors="replace", buffering=1) as out:
        try:
            os.dup2(out.fileno(), 1)
            os.dup2(out.fileno(), 2)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                yield path
        finally:
            for stream in (sys.stdout, sys.stderr, out):
                with contextlib.suppress(Exception):
                    stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


class _Steps:
    """Times named steps, drives the observer, and sends each step's output to its log."""

    def __init__(
        self, observer: Observer, durations: dict[str, float], logs: Path | None = None
    ) -> None:
        self.observer = observer
        self.durations = durations
        self.logs = logs

    @contextlib.contextmanager
    def step(self, name: str, description: str, total: float | None = None) -> Iterator[None]:
        began = time.perf_counter()
        self.observer.begin(name, description, total)
        log = self.logs / f"{name}.log" if self.logs is not None else None
        try:
            with contextlib.ExitStack() as output:
                if log is not None:
                    log.unlink(missing_ok=True)  # this run's output only
                    output.enter_context(captured_output(log))
                yield
        except BaseException:
            if log is not None:
                self.observer.say(f"{name} failed; its output is in {log}")
            raise
        finally:
            self.observer.end()
            self.durations[name] = round(time.perf_counter() - began, 2)


def demo_settings(settings: Settings, tag: str) -> Settings:
    """This run's settings: fresh topics and groups, models in <home>/models, the demo's own
    lake in <home>/demo-lake, a free web port."""
    return settings.model_copy(
        update={
            "lake_dir": str(settings.home / "demo-lake"),
            "topic_prefix": f"{settings.topic_prefix}demo-{tag}.",
            "app_id": f"demo-{tag}",
            "worker_id": f"demo-{tag}",
            "models_dir": settings.home / "models",
            "web_enabled": True,
            "web_port": free_port(),
        }
    )


def run_demo(
    settings: Settings,
    config: DemoConfig = DemoConfig(),
    observer: Observer | None = None,
    *,
    logs: Path | None = None,
) -> DemoSummary:
    """Run the whole job once; the summary of what ClickHouse holds for this run.

    ``logs``: a folder where each step's output goes (``<step>.log``, see
    :func:`captured_output`); None leaves the output where it is.
    """
    from streams.infra.kafka import LocalKafka
    from streams.infra.redis import LocalRedis

    total = config.total_events  # check the arguments before starting anything
    obs = observer or QuietObserver()
    summary = DemoSummary()
    steps = _Steps(obs, summary.durations_s, logs)
    demo = demo_settings(settings, uuid.uuid4().hex[:6])
    log = demo.home / "demo-worker.log"
    with contextlib.ExitStack() as cleanup:
        kafka = LocalKafka(demo) if demo.manages_local_kafka else None
        if kafka is not None and kafka.pid() is None:
            with steps.step("broker", f"starting Kafka on {demo.bootstrap_servers}"):
                kafka.up()
            cleanup.callback(kafka.down)
        redis = LocalRedis(demo) if demo.online_store == "redis" else None
        if redis is not None and redis.managed and redis.pid() is None:
            with steps.step("redis", f"starting Redis on {redis.url}"):
                redis.up()
            cleanup.callback(redis.down)
        with steps.step("setup", "topics and ClickHouse migrations"):
            # The demo's lake is rebuilt each run: live events an earlier run archived
            # would otherwise duplicate the history written over the same days now.
            shutil.rmtree(demo.lake_url, ignore_errors=True)
            _setup(demo)
        cleanup.callback(delete_run_topics, demo)
        _bootstrap(demo, config, steps)
        with steps.step("worker", "starting the worker (score, sink, dlq, lake)"):
            worker = start_worker(demo, log, STREAMSCORE_AGENTS="score,sink,dlq,lake")
            cleanup.callback(stop_worker, worker)
            sql = WorkerSql(demo.web_port, demo.clickhouse_database, demo.home)
            wait_for_groups(demo, ("score", "sink", "dlq"), worker, log)
            while not sql.ready():
                check_alive(worker, log)
                time.sleep(0.2)
            clock = DecisionReader(demo)  # a reader of the decisions topic, from the start
            clock.start()
            cleanup.callback(clock.done.set)
            if not clock.ready.wait(60):
                raise InfraError("the decisions topic's reader got no partitions within 60 s")
        with steps.step("stream", f"streaming {total:,} live events", total):
            _stream(demo, config, total, summary, obs)
        with steps.step("drain", "waiting for every event", summary.produced):
            summary.complete = _drain(sql, summary, config.drain_timeout_s, obs, worker, log)
        with steps.step("summary", "querying ClickHouse"):
            clock.wait_for(summary.expected_valid, timeout=30)
            read_summary(sql, summary, config.min_merchant_events)
            summary.decision_latency_ms = latency_percentiles(clock.latencies)
            summary.online_store = demo.online_store
            summary.features_from = feature_sources(demo)
        with steps.step("stop", "stopping what the demo started"):
            cleanup.close()
    return summary


class DecisionReader(threading.Thread):
    """Reads the decisions topic while events are produced, as a downstream consumer would:
    per decision, its raw record's produce time → received here, in ms (``latencies``).
    ``ready`` is set once partitions are assigned; ``done`` stops it."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="demo-decisions", daemon=True)
        self.settings = settings
        self.latencies: list[float] = []
        self.received = 0
        self.since_ms = 0.0  # decisions for events produced before this are not timed
        self.ready = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        from streams.kafka import make_consumer
        from streams.topics import PREDICTIONS, topic_name

        try:
            consumer = make_consumer(self.settings, f"{self.settings.app_id}-decisions-reader")
            consumer.subscribe(
                [topic_name(self.settings, PREDICTIONS)], on_assign=lambda *_: self.ready.set()
            )
            try:
                while not self.done.is_set():
                    got = consumer.consume(num_messages=10_000, timeout=0.02)
                    received_ms = time.time() * 1000
                    for message in got:
                        if message.error() is None:
                            self.received += 1
                            self.latencies.extend(
                                _decision_latency(message.value(), received_ms, self.since_ms)
                            )
            finally:
                consumer.close()
        except BaseException as exc:  # reported by wait_for, on the caller's thread
            self.error = exc
            self.ready.set()

    def wait_for(self, count: int, timeout: float) -> None:
        """Until ``count`` decisions were timed (or ``timeout``), then stop."""
        deadline = time.monotonic() + timeout
        while self.received < count and time.monotonic() < deadline and self.is_alive():
            time.sleep(0.1)
        self.done.set()
        self.join(30)
        if self.error is not None:
            raise InfraError(f"reading the decisions topic failed: {self.error}")


def _decision_latency(
    value: bytes | None, received_ms: float, since_ms: float = 0.0
) -> list[float]:
    """[received - produced] for one decision message; [] when it carries no produce time
    or its event was produced before ``since_ms`` (a warm-up)."""
    body = orjson.loads(value or b"{}")
    produced = body.get("produced_at_ms") if isinstance(body, dict) else None
    if not isinstance(produced, int | float) or produced < since_ms:
        return []
    return [received_ms - float(produced)]


def latency_percentiles(values: list[float]) -> dict[str, float]:
    """p50, p99 and max (ms, one decimal) as ClickHouse's quantileExact picks them (the
    element at ``level × n`` of the sorted values); empty for no values."""
    if not values:
        return {}
    ordered = sorted(values)

    def pick(level: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(level * len(ordered)))], 1)

    return {"p50": pick(0.5), "p99": pick(0.99), "max": round(ordered[-1], 1)}


def _setup(settings: Settings) -> None:
    from streams.clickhouse import apply_migrations, connect
    from streams.kafka import make_admin
    from streams.schemas.registry import SchemaRegistry
    from streams.topics import apply_topics, declared_topics

    registry = SchemaRegistry.load(settings.schemas_dir)
    apply_topics(settings, declared_topics(registry.event_types), make_admin(settings))
    client = connect(settings)
    try:
        apply_migrations(client, settings.clickhouse_database)
    finally:
        client.close()


def _bootstrap(settings: Settings, config: DemoConfig, steps: _Steps) -> None:
    """``streams.bootstrap`` with each of its steps timed and shown."""
    from streams.bootstrap import BootstrapConfig, bootstrap

    current: contextlib.ExitStack | None = None

    def step(message: str) -> None:
        nonlocal current
        if current is not None:
            current.close()
        name = message.split(":", 1)[0]
        current = contextlib.ExitStack()
        current.enter_context(steps.step(name, message))

    boot = BootstrapConfig(
        accounts=config.accounts,
        history_days=config.history_days,
        fraud_rate=_fraud_rate(config),
        seed=SEED,
        shadow_kind="mlp" if config.shadow else None,
    )
    try:
        bootstrap(settings, boot, step=step)
    finally:
        if current is not None:
            current.close()


def _fraud_rate(config: DemoConfig) -> float:
    return config.fraud_rate if config.fraud_rate is not None else fraud_rate_for(config.accounts)


def _stream(
    settings: Settings, config: DemoConfig, total: int, summary: DemoSummary, obs: Observer
) -> None:
    from streams.producer import EventProducer
    from streams.schemas.registry import SchemaRegistry
    from streams.simulate.records import SimulationConfig, simulate_records
    from streams.topics import raw_topic

    summary.raw_topic = raw_topic(settings)
    producer = EventProducer(settings, SchemaRegistry.load(settings.schemas_dir))
    # Live: event times on the wall clock at the demo's rate, so the stream spans as many
    # seconds of event time as it lasts (the population's own pace would make a minute of
    # traffic weeks of event time, and every event-time window downstream with it).
    simulation = SimulationConfig(
        start=datetime.now(UTC), accounts=config.accounts, seed=SEED,
        fraud_rate=_fraud_rate(config), invalid_fraction=config.invalid_fraction, labels=False,
        max_payload_bytes=settings.max_payload_bytes,
        max_nesting_depth=settings.max_nesting_depth, rate=max(config.rate, 0.0),
    )  # fmt: skip
    dead: collections.Counter[str] = collections.Counter()
    pacer: Pacer | None = None
    every = max(1, int(config.rate / 20)) if config.rate > 0 else 1000
    for index, item in enumerate(simulate_records(simulation)):
        if index >= total:
            break
        if pacer is None:  # paced from the first record's event time, as the clock stamps
            pacer = Pacer(config.rate)
        if index % every == 0:
            pacer.wait(index)
            obs.update(index)
        producer.send_raw(item.value, item.key, list(item.headers))
        summary.produced += 1
        if item.valid:
            summary.expected_valid += 1
        else:
            dead[item.expected] += 1
    producer.flush()
    summary.produce_seconds = pacer.elapsed if pacer is not None else 0.0
    summary.expected_dead = dict(dead)
    obs.update(summary.produced)


def _drain(
    sql: WorkerSql,
    summary: DemoSummary,
    timeout: float,
    obs: Observer,
    worker: subprocess.Popen[bytes],
    log: Path,
) -> bool:
    """Until every valid event is scored and every invalid one dead-lettered (or timeout)."""
    wanted = (summary.expected_valid, sum(summary.expected_dead.values()))
    deadline = time.monotonic() + timeout
    while True:
        check_alive(worker, log)
        scored, dead = sql.query(
            "select (select count() from {db:Identifier}.predictions final"
            " where topic = {t:String} and decided),"
            " (select count() from {db:Identifier}.dlq_events final where topic = {t:String})",
            {"t": summary.raw_topic},
        )[0]
        obs.update(int(scored) + int(dead))
        if int(scored) >= wanted[0] and int(dead) >= wanted[1]:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


def read_summary(sql: WorkerSql, summary: DemoSummary, min_events: int = 20) -> None:
    """Fill ``summary`` from ClickHouse, every query scoped to this run's raw topic."""
    t = {"t": summary.raw_topic}
    summary.decisions, summary.human_review, summary.scored = {}, 0, 0
    for decision, count, human in sql.query(
        "select toString(decision), count(), countIf(human_review) "
        "from {db:Identifier}.predictions final where topic = {t:String} and decided "
        "group by decision",
        t,
    ):
        summary.decisions[str(decision)] = int(count)
        summary.human_review += int(human)
        summary.scored += int(count)
    summary.dlq = {
        str(reason): int(count)
        for reason, count in sql.query(
            "select reason, count() from {db:Identifier}.dlq_events final "
            "where topic = {t:String} group by reason",
            t,
        )
    }
    rows = sql.query(
        "select quantilesExact(0.5, 0.99)(ms), max(ms) from ("
        "select toUnixTimestamp64Milli(inserted_at) - toUnixTimestamp64Milli(produced_at) as ms "
        "from {db:Identifier}.predictions final where topic = {t:String} and decided)",
        t,
    )
    if rows and summary.scored:
        (p50, p99), worst = rows[0]
        summary.latency_ms = {"p50": float(p50), "p99": float(p99), "max": float(worst)}
    summary.merchants = [
        MerchantRisk(str(m), str(c), int(n), float(d), float(s))
        for m, c, n, d, s in sql.query(
            "select merchant_id, toString(merchant_country), count() as n, "
            "countIf(decision = 'decline') / n, avgIf(score, not isNaN(score)) as s "
            "from {db:Identifier}.predictions final where topic = {t:String} and decided "
            "group by merchant_id, merchant_country "
            "having n >= {min:UInt32} order by s desc, n desc limit 10",
            {**t, "min": min_events},
        )
    ]
    summary.agreement = [
        Agreement(str(c), str(s), int(n), float(agree), float(diff))
        for c, s, n, agree, diff in sql.query(
            "select c.version, s.version, count(), countIf(c.decision = s.decision) / count(), "
            "avgIf(abs(c.score - s.score), not (isNaN(c.score) or isNaN(s.score))) "
            "from (select partition, offset, model_version as version, decision, score "
            "from {db:Identifier}.predictions final "
            "where topic = {t:String} and model_role = 'champion') as c "
            "inner join (select partition, offset, model_version as version, decision, score "
            "from {db:Identifier}.predictions final "
            "where topic = {t:String} and model_role = 'shadow') as s "
            "on c.partition = s.partition and c.offset = s.offset group by c.version, s.version",
            t,
        )
    ]
    roles = dict(
        sql.query(
            "select model_version, any(toString(model_role)) "
            "from {db:Identifier}.predictions final where topic = {t:String} group by 1",
            t,
        )
    )
    providers = dict(
        sql.query(
            "select model_version, argMax(toString(provider), loaded_at) "
            "from {db:Identifier}.models group by model_version"
        )
    )
    summary.models = {v: (str(role), str(providers.get(v, "?"))) for v, role in roles.items()}
