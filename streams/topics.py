"""Topics as code: every topic streamscore uses, declared once, applied with the AdminClient.

``apply_topics`` creates missing topics and reports drift between the declared and
the actual configuration (partitions, replication, retention, cleanup policy). It
never deletes or shrinks anything: drift is reported for an operator to decide.

Replication follows the cluster: ``min(3, brokers)`` replicas (the brokers the admin
client's DescribeCluster returns), and ``min.insync.replicas=2`` with three, so with the
producers' ``acks=all`` one broker may die without losing an acknowledged record or
blocking a producer. A topic holding fewer replicas than that is reported as drift,
never silently accepted (raising it is a partition reassignment, an operator's call).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported, not in __all__
    AdminClient,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from streams.errors import KafkaError
from streams.kafka import admin_result, kafka_failure
from streams.settings import Settings

__all__ = [
    "CONTROL",
    "DAY_MS",
    "DLQ",
    "HOUR_MS",
    "LABELS_RAW",
    "PREDICTIONS",
    "RAW",
    "REVIEW",
    "SCORED_MAX_BYTES",
    "ApplyReport",
    "TopicSpec",
    "apply_topics",
    "cluster_size",
    "declared_topics",
    "dlq_topic",
    "min_insync_replicas",
    "raw_topic",
    "raw_topics",
    "replication_factor",
    "scored_spec",
    "scored_topic",
    "topic_name",
    "valid_spec",
    "valid_topic",
]

HOUR_MS = 60 * 60 * 1000
DAY_MS = 24 * HOUR_MS


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A declared topic. ``name`` is without the settings' prefix."""

    name: str
    partitions: int
    retention_ms: int
    cleanup_policy: str = "delete"
    description: str = ""
    extra: tuple[tuple[str, str], ...] = ()

    def config(self) -> dict[str, str]:
        return {
            "retention.ms": str(self.retention_ms),
            "cleanup.policy": self.cleanup_policy,
            **dict(self.extra),
        }


# The declared topics. Valid events are handed off per event type.
RAW = TopicSpec("events.raw", 6, 7 * DAY_MS, description="Raw events from producers (any type).")
LABELS_RAW = TopicSpec("labels.raw", 3, 30 * DAY_MS, description="Raw late labels (chargebacks).")
DLQ = TopicSpec(
    "events.dlq",
    3,
    30 * DAY_MS,
    description="Dead letters: original key/value/headers plus dlq.* headers saying why.",
    extra=(("max.message.bytes", str(16 * 1024 * 1024)),),
)
PREDICTIONS = TopicSpec(
    "predictions",
    6,
    7 * DAY_MS,
    description="Decisions: one small record per scored event, keyed by account (at least once).",
)
REVIEW = TopicSpec("review", 3, 30 * DAY_MS, description="Low-confidence cases for humans.")
# Delete, not compact: every reader starts at the end (a starting process reads the model
# registry itself), so no one reads old messages and compaction's "latest per key" would
# serve no one; a day of them stays for whoever asks what was broadcast. Segments roll
# hourly, else the retention of a topic this quiet would wait for the 7-day default roll.
CONTROL = TopicSpec(
    "control",
    1,  # one order for every reader
    DAY_MS,
    description="Broadcasts to every worker process (model promotions, rollbacks).",
    extra=(("segment.ms", str(HOUR_MS)),),
)


def valid_spec(event_type: str) -> TopicSpec:
    """The hand-off topic for one validated event type."""
    partitions = 6 if event_type == "transaction" else 3
    return TopicSpec(
        f"events.valid.{event_type}",
        partitions,
        7 * DAY_MS,
        description=f"Validated {event_type} events, original bytes, source offsets in headers.",
    )


def scored_spec(event_type: str) -> TopicSpec:
    """Scored batches of one event type, for the ClickHouse sink stage.

    One Arrow IPC message per (scoring batch, valid partition), written to the partition of
    the same number, so a sink partition sees one valid partition's batches in order.
    Messages carry every model's rows with their feature vectors: a few MB each.
    """
    return TopicSpec(
        f"scored.{event_type}",
        valid_spec(event_type).partitions,
        1 * DAY_MS,
        description=f"Scored {event_type} batches (Arrow IPC) for the ClickHouse sink.",
        extra=(("max.message.bytes", str(SCORED_MAX_BYTES)),),
    )


SCORED_MAX_BYTES = 64 * 1024 * 1024


def declared_topics(event_types: Iterable[str]) -> tuple[TopicSpec, ...]:
    """Every topic for the given event types (from the schema registry)."""
    types = sorted(event_types)
    return (
        RAW,
        LABELS_RAW,
        DLQ,
        PREDICTIONS,
        REVIEW,
        CONTROL,
        *(valid_spec(t) for t in types),
        *(scored_spec(t) for t in types),
    )


def topic_name(settings: Settings, spec: TopicSpec) -> str:
    return settings.topic_prefix + spec.name


def raw_topic(settings: Settings) -> str:
    return topic_name(settings, RAW)


def raw_topics(settings: Settings) -> tuple[str, ...]:
    """Every topic the ingestion agent reads."""
    return (topic_name(settings, RAW), topic_name(settings, LABELS_RAW))


def dlq_topic(settings: Settings) -> str:
    return topic_name(settings, DLQ)


def valid_topic(settings: Settings, event_type: str) -> str:
    return topic_name(settings, valid_spec(event_type))


def scored_topic(settings: Settings, event_type: str) -> str:
    return topic_name(settings, scored_spec(event_type))


@dataclass(slots=True)
class ApplyReport:
    """What ``apply_topics`` did and what differs from the declaration."""

    created: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.drift


def replication_factor(brokers: int) -> int:
    """Replicas of every declared topic: three, or every broker a smaller cluster has."""
    return max(1, min(3, brokers))


def min_insync_replicas(replication: int) -> int:
    """In-sync replicas an ``acks=all`` write needs: two of three (one broker may be down),
    else one (a one- or two-broker cluster cannot lose a broker and keep writing anyway)."""
    return 2 if replication >= 3 else 1


def cluster_size(settings: Settings, admin: AdminClient, timeout: float = 30.0) -> int:
    """The brokers the cluster reports (DescribeCluster: the live, registered ones)."""
    future = admin.describe_cluster(request_timeout=timeout)
    description = admin_result(settings, admin, future, "cannot describe the cluster at", timeout)
    return len(description.nodes)


def apply_topics(
    settings: Settings,
    specs: Sequence[TopicSpec],
    admin: AdminClient,
    timeout: float = 30.0,
) -> ApplyReport:
    """Create missing topics; compare existing ones with their declaration."""
    report = ApplyReport()
    brokers = cluster_size(settings, admin, timeout)
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise kafka_failure(settings, exc, "cannot reach Kafka at", admin) from None
    replication = replication_factor(brokers)
    placement = {"min.insync.replicas": str(min_insync_replicas(replication))}
    missing = [s for s in specs if topic_name(settings, s) not in metadata.topics]
    if missing:
        futures = admin.create_topics(
            [
                NewTopic(
                    topic_name(settings, s),
                    num_partitions=s.partitions,
                    replication_factor=replication,
                    config={**s.config(), **placement},
                )
                for s in missing
            ],
            request_timeout=timeout,
        )
        for name, future in futures.items():
            try:
                future.result()
                report.created.append(name)
            except KafkaException as exc:
                if exc.args[0].code() == exc.args[0].TOPIC_ALREADY_EXISTS:
                    report.unchanged.append(name)  # created concurrently by another process
                else:
                    raise KafkaError(f"could not create topic {name}: {exc.args[0]}") from exc
    present = [s for s in specs if topic_name(settings, s) in metadata.topics]
    if not present:
        return report
    resources = [ConfigResource(ResourceType.TOPIC, topic_name(settings, s)) for s in present]
    configs = admin.describe_configs(resources, request_timeout=timeout)
    by_name = {r.name: f for r, f in configs.items()}
    for spec in present:
        name = topic_name(settings, spec)
        problems = _drift(spec, metadata.topics[name], by_name[name].result(), brokers)
        if problems:
            report.drift.append(f"{name}: " + ", ".join(problems))
        else:
            report.unchanged.append(name)
    return report


def _drift(spec: TopicSpec, meta: Any, configs: dict[str, Any], brokers: int) -> list[str]:
    """What differs between one existing topic and its declaration on ``brokers`` brokers."""
    problems: list[str] = []
    partitions = len(meta.partitions)
    if partitions != spec.partitions:
        problems.append(f"partitions {partitions} (declared {spec.partitions})")
    replication = replication_factor(brokers)
    fewest = min((len(p.replicas) for p in meta.partitions.values()), default=replication)
    # Only fewer replicas is drift: a broker down while this runs makes the cluster look
    # smaller than the topics created when it was whole.
    if fewest < replication:
        problems.append(
            f"replication {fewest} (expected {replication} on {brokers} brokers; "
            "not changed: reassign its partitions to add replicas)"
        )
    actual = {k: v.value for k, v in configs.items()}
    wanted = {**spec.config(), "min.insync.replicas": str(min_insync_replicas(fewest))}
    for key, want in wanted.items():
        if actual.get(key) != want:
            problems.append(f"{key}={actual.get(key)} (declared {want})")
    return problems
