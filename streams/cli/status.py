"""``streamscore status``: consumer lag per group and partition, throughput, the last nightly run.

Lag is the broker's view (committed offset of each worker group against the partition's
end offset, via the admin API), so it works with no worker running. Throughput and the
nightly run come from ClickHouse, through the worker's ``/sql`` when it holds chDB.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from streams.errors import KafkaError, StreamscoreError
from streams.redact import redact

if TYPE_CHECKING:
    from streams.report.source import Rows
    from streams.settings import Settings

BROKER_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """One partition a group has committed on: ``committed`` is None when it has no offset."""

    topic: str
    partition: int
    committed: int | None
    end: int

    @property
    def lag(self) -> int | None:
        return None if self.committed is None else max(self.end - self.committed, 0)


@dataclass(frozen=True, slots=True)
class GroupStatus:
    """A consumer group: its state, members and lag, or why they could not be read."""

    group: str
    state: str = "unknown"
    members: int = 0
    partitions: tuple[PartitionLag, ...] = ()
    error: str = ""

    @property
    def total_lag(self) -> int:
        return sum(p.lag or 0 for p in self.partitions)


@dataclass(frozen=True, slots=True)
class Throughput:
    """Events scored (decided rows: one per event) and dead letters stored, recently."""

    scored_1m: int
    scored_5m: int
    dlq_5m: int


@dataclass(frozen=True, slots=True)
class NightlyStatus:
    """The newest row of ``feature_runs``."""

    run_id: str
    nightly_date: str
    status: str
    started_at: str
    finished_at: str
    durations_s: dict[str, float] = field(default_factory=dict)
    error: str = ""


@dataclass(frozen=True, slots=True)
class StatusReport:
    bootstrap: str
    groups: tuple[GroupStatus, ...]
    throughput: Throughput | None = None
    nightly: NightlyStatus | None = None
    clickhouse_error: str = ""
    taken_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def healthy(self) -> bool:
        return not self.clickhouse_error and not any(g.error for g in self.groups)


# ---- Kafka ---------------------------------------------------------------------------


def worker_groups(settings: Settings) -> list[str]:
    """The consumer groups of every agent (``<app_id>-<agent>``, as BatchAgent names them)."""
    from streams.agents.batching import group_id
    from streams.settings import AGENTS

    return [group_id(settings, agent) for agent in AGENTS]


def kafka_status(admin: Any, groups: Sequence[str], bootstrap: str) -> list[GroupStatus]:
    """Lag of each group from the broker. KafkaError when the broker does not answer."""
    from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
    from confluent_kafka import admin as kafka_admin

    spec: Any = kafka_admin.OffsetSpec  # type: ignore[attr-defined]
    latest = spec.latest()

    try:
        admin.list_topics(timeout=BROKER_TIMEOUT_S)
    except KafkaException as exc:
        raise KafkaError(
            f"cannot reach the Kafka broker at {bootstrap} within {BROKER_TIMEOUT_S:.0f} s "
            f"({exc.args[0] if exc.args else exc}); start it with `streamscore infra up` "
            "or check STREAMSCORE_KAFKA_BOOTSTRAP"
        ) from exc
    described: dict[str, tuple[str, int]] = {}
    try:
        for group, future in admin.describe_consumer_groups(
            list(groups), request_timeout=BROKER_TIMEOUT_S
        ).items():
            description = future.result()
            state = str(getattr(description.state, "name", description.state)).lower()
            described[group] = (state, len(description.members or ()))
    except KafkaException:
        pass  # state and members are a nicety; lag below is what counts
    statuses: list[GroupStatus] = []
    for group in groups:
        state, members = described.get(group, ("unknown", 0))
        try:
            # One group per request: the admin API takes no more.
            futures = admin.list_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(group)], request_timeout=BROKER_TIMEOUT_S
            )
            committed = futures[group].result().topic_partitions or []
            ends: dict[tuple[str, int], int] = {}
            if committed:
                wanted = {TopicPartition(tp.topic, tp.partition): latest for tp in committed}
                for tp, future in admin.list_offsets(
                    wanted, request_timeout=BROKER_TIMEOUT_S
                ).items():
                    ends[(tp.topic, tp.partition)] = int(future.result().offset)
        except KafkaException as exc:
            statuses.append(GroupStatus(group, state, members, error=str(exc.args[0])))
            continue
        partitions = tuple(
            sorted(
                (
                    PartitionLag(
                        tp.topic,
                        tp.partition,
                        int(tp.offset) if tp.offset >= 0 else None,
                        ends.get((tp.topic, tp.partition), 0),
                    )
                    for tp in committed
                ),
                key=lambda p: (p.topic, p.partition),
            )
        )
        statuses.append(GroupStatus(group, state, members, partitions))
    return statuses


# ---- ClickHouse ----------------------------------------------------------------------


def throughput(rows: Rows, database: str) -> Throughput:
    """Decided rows scored in the last 1 and 5 minutes (no FINAL: a status screen can
    count a re-delivered event twice until merges fold it), dead letters in the last 5."""
    from streams.clickhouse.client import quote_identifier

    db = quote_identifier(database)
    scored = rows(
        "select countIf(scored_at >= now64(3) - interval 1 minute) as m1, count() as m5 "  # noqa: S608 - checked identifier
        f"from {db}.predictions where decided and scored_at >= now64(3) - interval 5 minute",
        {},
    )
    dead = rows(
        f"select count() as m5 from {db}.dlq_events where sunk_at >= now64(3) - interval 5 minute",  # noqa: S608 - checked identifier
        {},
    )
    return Throughput(
        int(scored[0]["m1"]) if scored else 0,
        int(scored[0]["m5"]) if scored else 0,
        int(dead[0]["m5"]) if dead else 0,
    )


def last_nightly(rows: Rows, database: str) -> NightlyStatus | None:
    """The newest ``feature_runs`` row, successful or not."""
    from streams.clickhouse.client import quote_identifier

    found = rows(
        "select run_id, toString(nightly_date) as nightly_date, status, "  # noqa: S608 - checked identifier
        "formatDateTime(started_at, '%Y-%m-%d %H:%i:%S') as started_at, "
        "formatDateTime(finished_at, '%Y-%m-%d %H:%i:%S') as finished_at, durations_s, error "
        f"from {quote_identifier(database)}.feature_runs order by started_at desc limit 1",
        {},
    )
    if not found:
        return None
    row = found[0]
    return NightlyStatus(
        run_id=str(row["run_id"]),
        nightly_date=str(row["nightly_date"]),
        status=str(row["status"]),
        started_at=str(row["started_at"]),
        finished_at=str(row["finished_at"]),
        durations_s={str(k): float(v) for k, v in (row.get("durations_s") or {}).items()},
        error=str(row.get("error") or ""),
    )


# ---- the screen ----------------------------------------------------------------------


def _seconds(value: float) -> str:
    return f"{value:.1f}s" if value < 120 else f"{value / 60:.1f}m"


def format_status(report: StatusReport, *, max_partitions: int = 12) -> str:
    """The status screen: one block per group, then throughput, then the nightly run.

    The whole screen is redacted: broker and ClickHouse errors may quote a URL.
    """
    out = [
        f"streamscore status  {report.taken_at:%Y-%m-%d %H:%M:%S} UTC  broker {report.bootstrap}",
        "",
        "Consumer lag (committed offset → end offset)",
    ]
    width = max((len(g.group) for g in report.groups), default=10)
    for g in report.groups:
        plural = "s" if g.members != 1 else " "
        head = f"  {g.group:<{width}}  {g.state:<12} {g.members} member{plural}"
        if g.error:
            out.append(f"{head}  error: {g.error}")
            continue
        if not g.partitions:
            out.append(f"{head}  no committed offsets")
            continue
        out.append(f"{head}  lag {g.total_lag:>10,}")
        by_topic: dict[str, list[PartitionLag]] = {}
        for p in g.partitions:
            by_topic.setdefault(p.topic, []).append(p)
        for topic, parts in by_topic.items():
            cells = [f"p{p.partition}={'-' if p.lag is None else f'{p.lag:,}'}" for p in parts]
            if len(cells) > max_partitions:
                cells = [*cells[:max_partitions], f"+{len(cells) - max_partitions} more"]
            out.append(f"      {topic}  {' '.join(cells)}")
    out += ["", "Throughput"]
    if report.throughput is not None:
        t = report.throughput
        out.append(
            f"  scored  {t.scored_1m:>10,} last minute  {t.scored_5m:>10,} last 5 minutes "
            f"({t.scored_5m / 300:,.1f}/s)"
        )
        out.append(f"  DLQ     {'':>10}              {t.dlq_5m:>10,} last 5 minutes")
    elif report.clickhouse_error:
        out.append(f"  unavailable: {report.clickhouse_error}")
    out += ["", "Last nightly run"]
    n = report.nightly
    if n is not None:
        out.append(f"  {n.nightly_date}  {n.status.upper()}  run {n.run_id}")
        out.append(f"  started {n.started_at}  finished {n.finished_at}")
        if n.durations_s:
            steps = "  ".join(f"{k} {_seconds(v)}" for k, v in n.durations_s.items())
            out.append(f"  {steps}")
        if n.error:
            out.append(f"  error: {n.error[:300]}")
    elif report.clickhouse_error:
        out.append(f"  unavailable: {report.clickhouse_error}")
    else:
        out.append("  none yet: run `streamscore nightly`")
    return redact("\n".join(out) + "\n")


def gather(settings: Settings, rows: Rows | None = None, admin: Any = None) -> StatusReport:
    """Everything on the screen. KafkaError when the broker cannot be reached."""
    from streams.kafka import make_admin
    from streams.report.source import settings_rows

    if admin is None:
        # log_level 0: a down broker is reported once, by kafka_status, instead of
        # librdkafka printing a connection failure every 50 ms on stderr.
        admin = make_admin(settings, log_level=0)
    groups = kafka_status(admin, worker_groups(settings), settings.bootstrap_servers)
    query = rows or settings_rows(settings)
    try:
        tput = throughput(query, settings.clickhouse_database)
        nightly = last_nightly(query, settings.clickhouse_database)
    except StreamscoreError as exc:
        error = redact(str(exc))
        return StatusReport(settings.bootstrap_servers, tuple(groups), clickhouse_error=error)
    return StatusReport(settings.bootstrap_servers, tuple(groups), tput, nightly)


@click.command()
@click.pass_obj
def status(settings: Settings) -> None:
    """Lag per consumer group and partition, events scored lately, the last nightly run.

    Exits 1 when the broker cannot be reached, 2 when ClickHouse or a group could not
    be read (what could be read is still shown).
    """
    report = gather(settings)
    click.echo(format_status(report), nl=False)
    if not report.healthy:
        raise click.exceptions.Exit(2)
