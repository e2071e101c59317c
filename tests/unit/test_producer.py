"""The producer refuses invalid events before anything reaches Kafka."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from streams.errors import EventRejected
from streams.producer import EventProducer
from streams.schemas import SchemaRegistry
from streams.schemas.registry import load_examples
from streams.settings import Settings

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples"


@pytest.fixture
def producer(registry: SchemaRegistry, tmp_path: Path) -> EventProducer:
    # Nothing listens on port 9: any record that got as far as the client would never be
    # delivered, and the report would show it queued.
    settings = Settings(home=tmp_path, kafka_bootstrap="127.0.0.1:9")
    return EventProducer(settings, registry)


def test_rejects_invalid_events_with_every_violation(producer: EventProducer) -> None:
    for name, raw in load_examples(EXAMPLES, "transaction", "invalid").items():
        with pytest.raises(EventRejected) as rejected:
            producer.send(orjson.loads(raw))
        assert rejected.value.message, name
    assert producer.report.rejected == len(load_examples(EXAMPLES, "transaction", "invalid"))
    assert producer.report.sent == 0


def test_rejection_names_paths(producer: EventProducer) -> None:
    raw = load_examples(EXAMPLES, "transaction", "invalid")["several_violations"]
    with pytest.raises(EventRejected) as rejected:
        producer.send(orjson.loads(raw))
    assert {v.path for v in rejected.value.violations} == {"$.amount", "$.currency", "$.mcc"}


def test_valid_events_route_by_type(producer: EventProducer) -> None:
    assert producer.topic_for("label").endswith("labels.raw")
    assert producer.topic_for("transaction").endswith("events.raw")
    raw = load_examples(EXAMPLES, "transaction", "valid")["pos_contactless"]
    assert producer.validate(orjson.loads(raw)).label == "transaction/v1"


def test_flush_fails_at_once_when_the_cluster_refuses_the_credentials(
    registry: SchemaRegistry, tmp_path: Path
) -> None:
    import time

    from confluent_kafka import KafkaError as ConfluentError

    from streams.errors import DeliveryError, KafkaError

    settings = Settings(
        home=tmp_path,
        kafka_bootstrap="127.0.0.1:9",
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="streamscore",
        kafka_sasl_password="not-the-password",  # type: ignore[arg-type]
    )
    producer = EventProducer(settings, registry)
    raw = load_examples(EXAMPLES, "transaction", "valid")["pos_contactless"]
    producer.send(orjson.loads(raw))
    # What librdkafka's error_cb hands over when the broker rejects the SCRAM exchange.
    producer._refusals(
        ConfluentError(
            ConfluentError._AUTHENTICATION,
            "SASL authentication error: Authentication failed during authentication due to "
            "invalid credentials with SASL mechanism SCRAM-SHA-512",
        )
    )
    began = time.monotonic()
    with pytest.raises(KafkaError) as refused:
        producer.flush(timeout=30)
    assert not isinstance(refused.value, DeliveryError)
    assert time.monotonic() - began < 5  # not the 30 s flush timeout
    message = str(refused.value)
    assert "refused user 'streamscore' (SCRAM-SHA-512 over SASL_PLAINTEXT)" in message
    assert "invalid credentials" in message and "STREAMSCORE_KAFKA_SASL_PASSWORD" in message
    assert "not-the-password" not in message


def test_flush_without_a_refusal_waits_for_its_timeout(producer: EventProducer) -> None:
    from streams.errors import DeliveryError

    raw = load_examples(EXAMPLES, "transaction", "valid")["pos_contactless"]
    producer.send(orjson.loads(raw))
    with pytest.raises(DeliveryError, match="1 records not acknowledged"):
        producer.flush(timeout=1.2)
