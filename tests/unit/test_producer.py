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
