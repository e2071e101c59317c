"""The producer API: validate before send, key by the schema's key field, schema in headers.

Built on confluent-kafka with idempotence and acks=all. ``send`` refuses an invalid
event with every violation (nothing reaches Kafka); ``send_raw`` sends bytes as they
are, for replaying files and for simulating misbehaving producers (the ingestion
worker then routes them to the dead-letter topic).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import KafkaError as _ConfluentError
from confluent_kafka import Message

from streams.errors import DeliveryError, EventRejected, KafkaError
from streams.headers import EVENT_TYPE, SCHEMA_ID, SCHEMA_VERSION
from streams.ingest import Accepted
from streams.kafka import Refusals, make_producer, refusal_error
from streams.schemas.registry import EventSchema, SchemaRegistry
from streams.schemas.validation import describe
from streams.settings import Settings
from streams.topics import LABELS_RAW, raw_topic, topic_name

Header = tuple[str, bytes]
# What confluent-kafka accepts; tuples are covariant, so a list[Header] converts for free.
KafkaHeaders = list[tuple[str, str | bytes | None]]


@dataclass(slots=True)
class ProduceReport:
    """Counts for one producer's lifetime; ``failed`` are broker-side delivery failures."""

    sent: int = 0
    rejected: int = 0
    delivered: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def schema_headers(schema: EventSchema) -> list[Header]:
    return [
        (SCHEMA_ID, schema.schema_id.encode()),
        (EVENT_TYPE, schema.event_type.encode()),
        (SCHEMA_VERSION, str(schema.version).encode()),
    ]


class EventProducer:
    """Validating producer for streamscore events.

    >>> producer = EventProducer(settings, registry)
    >>> producer.send(event)          # raises EventRejected if invalid
    >>> producer.flush()              # raises DeliveryError if any record failed
    """

    def __init__(self, settings: Settings, registry: SchemaRegistry, **config: Any) -> None:
        self._settings = settings
        self._registry = registry
        # Remembers why the cluster refuses this producer (a wrong password, an unknown CA),
        # so flush fails at once saying so instead of after its whole timeout.
        self._refusals = Refusals()
        self._producer = make_producer(settings, **{"error_cb": self._refusals, **config})
        self._raw_topic = raw_topic(settings)
        self._label_topic = topic_name(settings, LABELS_RAW)
        self.report = ProduceReport()

    def topic_for(self, event_type: str) -> str:
        """Labels have their own raw topic; every other type shares the raw events topic."""
        return self._label_topic if event_type == "label" else self._raw_topic

    def validate(self, event: Mapping[str, Any], headers: Sequence[Header] = ()) -> EventSchema:
        """Resolve and validate; raise EventRejected listing every violation."""
        schema = self._registry.resolve(event, headers)
        if not schema.fast.is_valid(event):
            violations = schema.fast.violations(event)
            raise EventRejected(
                "schema_violation",
                f"{schema.label}: {describe(violations)}",
                violations,
                schema.schema_id,
            )
        return schema

    def send(self, event: Mapping[str, Any], topic: str | None = None) -> None:
        """Validate, then publish keyed by the schema's key field. Invalid → EventRejected."""
        try:
            schema = self.validate(event)
        except EventRejected:
            self.report.rejected += 1
            raise
        key = str(event[schema.key_field]).encode()
        self._produce(
            topic or self.topic_for(schema.event_type),
            orjson.dumps(event),
            key,
            schema_headers(schema),
        )

    def send_accepted(self, accepted: Accepted) -> None:
        """Publish an event that ``streams.ingest`` already accepted, its bytes unchanged."""
        schema, record = accepted.schema, accepted.record
        key = str(accepted.event[schema.key_field]).encode()
        assert record.value is not None  # accepted events always have a value
        self._produce(self.topic_for(schema.event_type), record.value, key, schema_headers(schema))

    def send_raw(
        self,
        value: bytes,
        key: bytes | None = None,
        headers: Sequence[Header] = (),
        topic: str | None = None,
    ) -> None:
        """Publish bytes unvalidated (the ingestion worker will judge them)."""
        self._produce(topic or self._raw_topic, value, key, headers)

    def _produce(
        self, topic: str, value: bytes, key: bytes | None, headers: Sequence[Header]
    ) -> None:
        kafka_headers: KafkaHeaders = [*headers]
        while True:
            try:
                self._producer.produce(
                    topic,
                    value=value,
                    key=key,
                    headers=kafka_headers,
                    on_delivery=self._on_delivery,
                )
                break
            except BufferError:
                # Local queue full: serve delivery callbacks until there is room.
                self._producer.poll(0.1)
            except Exception as exc:  # KafkaException, e.g. message too large
                raise KafkaError(f"could not produce to {topic}: {exc}") from exc
        self.report.sent += 1
        self._producer.poll(0)

    def _on_delivery(self, err: _ConfluentError | None, msg: Message) -> None:
        if err is None:
            self.report.delivered += 1
        else:
            self.report.failed += 1
            if len(self.report.errors) < 20:
                self.report.errors.append(f"{msg.topic()}: {err}")

    def poll(self, timeout: float = 0) -> None:
        self._producer.poll(timeout)

    def flush(self, timeout: float = 60.0) -> None:
        """Wait for every record's acknowledgement; raise DeliveryError if any failed, or
        KafkaError at once when the cluster refuses this producer's credentials."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = self._producer.flush(min(0.5, max(0.0, deadline - time.monotonic())))
            if not remaining or time.monotonic() >= deadline:
                break
            refused = refusal_error(self._settings, self._refusals, "producing to")
            if refused is not None:
                raise refused
        if remaining:
            raise DeliveryError(
                f"{remaining} records not acknowledged by {self._settings.bootstrap_servers} "
                f"within {timeout}s"
            )
        if self.report.failed:
            raise DeliveryError(
                f"{self.report.failed} records failed delivery: {'; '.join(self.report.errors)}"
            )

    def close(self, timeout: float = 60.0) -> None:
        self.flush(timeout)
