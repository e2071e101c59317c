"""Ingestion as a pure function: guards before parsing, every violation with its path."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from streams.ingest import (
    Accepted,
    DeadLetter,
    Limits,
    RawRecord,
    ingest_batch,
    ingest_record,
    nesting_depth,
    too_deep,
)
from streams.schemas import SchemaRegistry
from streams.schemas.registry import load_examples

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples"
LIMITS = Limits(max_payload_bytes=256 * 1024, max_nesting_depth=32)


def record(value: bytes | None, offset: int = 0, headers=()) -> RawRecord:  # type: ignore[no-untyped-def]
    return RawRecord("raw", 3, offset, 1_700_000_000_000, b"k", value, headers)


@pytest.mark.parametrize("event_type", ["transaction", "label"])
def test_examples_get_their_verdict(registry: SchemaRegistry, event_type: str) -> None:
    for kind in ("valid", "invalid"):
        examples = load_examples(EXAMPLES, event_type, kind)
        assert examples, f"no {kind} examples for {event_type}"
        for name, raw in examples.items():
            result = ingest_record(record(raw), registry, LIMITS)
            assert isinstance(result, Accepted) == (kind == "valid"), (name, result)


# Each invalid example is named for the rule it breaks; the violation must point there.
EXPECTED_PATHS = {
    "missing_required_amount": "$",
    "amount_not_positive": "$.amount",
    "amount_above_maximum": "$.amount",
    "amount_wrong_type_string": "$.amount",
    "currency_not_iso4217": "$.currency",
    "mcc_not_four_digits": "$.mcc",
    "country_lower_case": "$.merchant_country",
    "channel_not_in_enum": "$.channel",
    "event_id_not_uuid": "$.event_id",
    "event_time_not_rfc3339": "$.event_time",
    "additional_property": "$",
    "ip_malformed": "$.ip",
    "geo_latitude_out_of_range": "$.geo.lat",
    "v2_wallet_not_in_enum": "$.wallet",
}


def test_invalid_examples_name_the_broken_rule(registry: SchemaRegistry) -> None:
    examples = load_examples(EXAMPLES, "transaction", "invalid")
    for name, path in EXPECTED_PATHS.items():
        result = ingest_record(record(examples[name]), registry, LIMITS)
        assert isinstance(result, DeadLetter)
        assert result.reason == "schema_violation"
        assert [v.path for v in result.violations] == [path], name


def test_every_violation_is_listed(registry: SchemaRegistry) -> None:
    raw = load_examples(EXAMPLES, "transaction", "invalid")["several_violations"]
    result = ingest_record(record(raw), registry, LIMITS)
    assert isinstance(result, DeadLetter)
    assert {v.path for v in result.violations} == {"$.amount", "$.currency", "$.mcc"}
    assert "$.amount" in result.message and "$.mcc" in result.message
    assert result.schema_id and result.schema_id.endswith("transaction.v1.json")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "empty_value"),
        (b"", "empty_value"),
        (b"\xff\xfe\xfd", "not_utf8"),
        (b'{"a": "\xc3\x28"}', "not_utf8"),
        (b"not json", "not_json"),
        (b'{"a": 1', "not_json"),
        (b"NaN", "not_json"),
        (b"[1, 2]", "not_an_object"),
        (b'"text"', "not_an_object"),
        (b'{"event_type": "alien"}', "unknown_event_type"),
        (b'{"event_type": 5}', "unknown_event_type"),
        (b"[" * 100_000 + b"]" * 100_000, "too_deeply_nested"),
        (b'{"a":' * 40 + b"1" + b"}" * 40, "too_deeply_nested"),
        # A string that never closes: the brackets in it do not count, those before do.
        (b'{"a": "' + b"[" * 40, "not_json"),
        (b"[" * 33 + b'"' + b'\\"' * 1000, "too_deeply_nested"),
        (b'{"a": "' + b"x" * (300 * 1024) + b'"}', "payload_too_large"),
    ],
)
def test_bad_bytes_become_dead_letters(
    registry: SchemaRegistry, value: bytes | None, reason: str
) -> None:
    result = ingest_record(record(value), registry, LIMITS)
    assert isinstance(result, DeadLetter)
    assert result.reason == reason
    assert result.record.value is value  # original bytes kept, untouched
    assert result.message


def test_depth_ignores_brackets_inside_strings() -> None:
    text = b'{"note": "' + b"[{" * 500 + b'"}'
    assert nesting_depth(text) == 1
    assert not too_deep(text, 2)
    assert nesting_depth(b'{"a": [{"b": [1]}]}') == 4
    assert nesting_depth(b'{"a": "\\"[[["}') == 1
    assert nesting_depth(b'{"a": "\\\\", "b": [[1]]}') == 3  # an even run closes the string
    assert nesting_depth(b"") == 0


def test_batch_keeps_order_and_splits(registry: SchemaRegistry) -> None:
    valid = load_examples(EXAMPLES, "transaction", "valid")["pos_contactless"]
    records = [record(valid, 0), record(b"x", 1), record(valid, 2), record(b"[]", 3)]
    accepted, dead = ingest_batch(records, registry, LIMITS)
    assert [a.record.offset for a in accepted] == [0, 2]
    assert [d.record.offset for d in dead] == [1, 3]
    assert accepted[0].event == orjson.loads(valid)
    assert accepted[0].schema.label == "transaction/v1"
