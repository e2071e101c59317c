"""The labels agent's pure parts: decoding, raw coordinates, deduplication, rows."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streams.agents.labels import (
    decode_labels,
    fresh_labels,
    label_rows,
    rfc3339_ms,
)
from streams.records import to_valid_event

LABEL = {
    "event_id": "0b6f6c1e-4c1e-4f0a-9a55-8d1c9f0d2a11",
    "event_type": "label",
    "schema_version": 1,
    "label_time": "2024-05-01T12:00:00.123456789+02:00",
    "transaction_id": "5b1c1d2e-0000-4000-8000-000000000001",
    "account_id": "acc_1",
    "is_fraud": True,
    "source": "chargeback",
    "fraud_type": "stolen_card",
    "chargeback_amount": 12.5,
}


class FakeMessage:
    """What the agent reads of a confluent-kafka Message."""

    def __init__(self, value: bytes, offset: int, headers: list[tuple[str, bytes]]) -> None:
        self._value, self._offset, self._headers = value, offset, headers

    def topic(self) -> str:
        return "p.events.valid.label"

    def partition(self) -> int:
        return 1

    def offset(self) -> int:
        return self._offset

    def headers(self) -> list[tuple[str, bytes]]:
        return self._headers

    def key(self) -> bytes:
        return b"acc_1"

    def value(self) -> bytes:
        return self._value

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_714_557_600_000)


def message(body: Any, offset: int, raw_offset: int | None = None) -> Any:
    headers = []
    if raw_offset is not None:
        headers = [
            ("source-topic", b"p.labels.raw"),
            ("source-partition", b"2"),
            ("source-offset", str(raw_offset).encode()),
            ("source-timestamp", b"1714557000000"),
            ("ingested-at", b"1714557001000"),
        ]
    value = body if isinstance(body, bytes) else orjson.dumps(body)
    return FakeMessage(value, offset, headers)


def test_rfc3339_ms_reads_offsets_nanoseconds_and_z() -> None:
    assert rfc3339_ms("2024-05-01T10:00:00Z") == 1_714_557_600_000
    assert rfc3339_ms("2024-05-01T12:00:00.123456789+02:00") == 1_714_557_600_123
    assert rfc3339_ms("2024-05-01T10:00:00.5z") == 1_714_557_600_500


def test_a_label_keeps_its_raw_coordinates_and_fields() -> None:
    labels, failed = decode_labels([to_valid_event(message(LABEL, 7, raw_offset=41))])
    assert failed == []
    (label,) = labels
    assert label.coordinates == ("p.labels.raw", 2, 41)
    assert (label.handoff_partition, label.handoff_offset) == (1, 7)
    assert label.transaction_id == LABEL["transaction_id"] and label.is_fraud is True
    assert label.label_time_ms == 1_714_557_600_123
    assert (label.produced_at_ms, label.ingested_at_ms) == (1_714_557_000_000, 1_714_557_001_000)
    assert (label.fraud_type, label.chargeback_amount) == ("stolen_card", 12.5)


def test_without_source_headers_a_label_keeps_its_own_coordinates() -> None:
    body = {k: v for k, v in LABEL.items() if k not in {"fraud_type", "chargeback_amount"}}
    (label,), _ = decode_labels([to_valid_event(message(body, 9))])
    assert label.coordinates == ("p.events.valid.label", 1, 9)
    assert label.fraud_type is None and label.chargeback_amount is None


@pytest.mark.parametrize(
    "body",
    [b"not json", {**LABEL, "label_time": "yesterday"}, {"event_type": "label"}],
    ids=["bytes", "time", "fields"],
)
def test_what_is_not_a_label_is_set_aside_with_why(body: Any) -> None:
    labels, failed = decode_labels([to_valid_event(message(body, 3, raw_offset=5))])
    assert labels == [] and len(failed) == 1
    assert failed[0][1].startswith("not a decodable label")


def test_fresh_labels_drop_stored_coordinates_and_copies_in_the_batch() -> None:
    events = [
        to_valid_event(message(LABEL, o, raw_offset=r)) for o, r in [(1, 10), (2, 11), (3, 10)]
    ]
    labels, _ = decode_labels(events)
    assert [x.offset for x in fresh_labels(labels, set())] == [10, 11]
    assert [x.offset for x in fresh_labels(labels, {("p.labels.raw", 2, 10)})] == [11]


def test_label_rows_are_one_part_per_batch_with_nulls_kept() -> None:
    body = {k: v for k, v in LABEL.items() if k != "fraud_type"}
    labels, _ = decode_labels(
        [to_valid_event(message(b, o, raw_offset=o)) for o, b in [(1, LABEL), (2, body)]]
    )
    rows = label_rows(labels, "w-1", 1_714_560_000_000)
    assert rows.num_rows == 2
    assert rows.column("fraud_type").to_pylist() == ["stolen_card", None]
    assert len(set(rows.column("sunk_at").to_pylist())) == 1
    assert rows.column("offset").to_pylist() == [1, 2]
    assert str(rows.schema.field("label_time").type) == "timestamp[ms, tz=UTC]"
