"""streams.records: messages → records, and the one source-header codec, without a broker."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from streams.agents.dlq import to_stored
from streams.headers import (
    DLQ_SOURCE,
    INGESTED_AT,
    SOURCE_OFFSET,
    SOURCE_PARTITION,
    SOURCE_TIMESTAMP,
    SOURCE_TOPIC,
    VALID_SOURCE,
)
from streams.ingest import Accepted, DeadLetter, Limits, ingest_record
from streams.records import (
    RawRecord,
    SourceHeaders,
    ValidEvent,
    read_source,
    scoring_event,
    source_headers,
    timestamp_ms,
    to_raw_record,
    to_valid_event,
)
from streams.schemas import SchemaRegistry
from streams.schemas.registry import load_examples
from streams.sinks.handoff import dead_letter_headers, handoff_headers

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "schemas" / "examples"
VALID = "p.events.valid.transaction"
RAW = "p.events.raw"
RAW_BYTES = RAW.encode()
OWN_MS = 1_714_557_600_000  # the hand-off message's own Kafka timestamp


class FakeMessage:
    """What streams.records reads of a confluent-kafka Message."""

    def __init__(
        self,
        headers: Any = None,
        *,
        topic: str = VALID,
        partition: int | None = 3,
        offset: int | None = 41,
        key: bytes | None = b"acc_1",
        value: bytes | None = b'{"a": 1}',
        timestamp: tuple[int, int] = (1, OWN_MS),
    ) -> None:
        self._headers, self._topic, self._timestamp = headers, topic, timestamp
        self._partition, self._offset, self._key, self._value = partition, offset, key, value

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int | None:
        return self._partition

    def offset(self) -> int | None:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> Any:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return self._timestamp


def handoff(
    topic: Any = RAW_BYTES,
    partition: Any = b"2",
    offset: Any = b"17",
    produced: Any = b"1714557000000",
    ingested: Any = b"1714557001000",
) -> list[tuple[str, Any]]:
    """Source headers as the hand-off writes them; ``None`` leaves a header out."""
    values = [
        (SOURCE_TOPIC, topic), (SOURCE_PARTITION, partition), (SOURCE_OFFSET, offset),
        (SOURCE_TIMESTAMP, produced), (INGESTED_AT, ingested),
    ]  # fmt: skip
    return [("event-type", b"transaction"), *((k, v) for k, v in values if v is not None)]


def replaced(name: str, value: Any) -> list[tuple[str, Any]]:
    """The hand-off's headers with ``name`` set to ``value`` (which may be None)."""
    return [(k, value if k == name else v) for k, v in handoff()]


# -- messages → records ------------------------------------------------------------------


def test_a_message_becomes_a_raw_record_with_its_bytes_untouched() -> None:
    headers = [("trace", b"x"), ("empty", None)]
    record = to_raw_record(FakeMessage(headers, topic=RAW))  # type: ignore[arg-type]
    assert record == RawRecord(RAW, 3, 41, OWN_MS, b"acc_1", b'{"a": 1}', tuple(headers))
    bare = FakeMessage(None, partition=None, offset=None, value=None, timestamp=(0, 0))
    assert to_raw_record(bare) == RawRecord(VALID, 0, 0, -1, b"acc_1", None, ())  # type: ignore[arg-type]


def test_a_message_without_a_timestamp_is_minus_one() -> None:
    assert timestamp_ms(FakeMessage(timestamp=(0, 1234))) == -1  # type: ignore[arg-type]
    assert timestamp_ms(FakeMessage(timestamp=(2, 1234))) == 1234  # type: ignore[arg-type]


def test_a_valid_message_carries_its_source_and_times() -> None:
    event = to_valid_event(FakeMessage(handoff()))  # type: ignore[arg-type]
    assert event == ValidEvent(
        3, 41, (RAW, 2, 17), 1_714_557_000_000, 1_714_557_001_000, b"acc_1", b'{"a": 1}'
    )


def test_a_valid_message_without_headers_is_its_own_source() -> None:
    event = to_valid_event(FakeMessage(None, value=None))  # type: ignore[arg-type]
    assert event.source == (VALID, 3, 41)
    assert (event.handoff_partition, event.handoff_offset) == (3, 41)
    assert (event.produced_at_ms, event.ingested_at_ms) == (OWN_MS, OWN_MS)
    assert event.value == b""


def test_a_raw_record_as_a_scoring_event_is_its_own_source() -> None:
    record = RawRecord(RAW, 5, 900, 1_000, b"k", b"{}")
    assert scoring_event(record, picked_up_ms=2_000) == ValidEvent(
        5, 900, (RAW, 5, 900), 1_000, 2_000, b"k", b"{}"
    )
    assert scoring_event(RawRecord(RAW, 5, 900, 1_000, None, None), 2_000).value == b""


def test_the_moved_types_are_the_same_objects_where_they_used_to_be() -> None:
    import streams.ingest
    import streams.scoring.pipeline

    assert streams.ingest.RawRecord is RawRecord
    assert streams.scoring.pipeline.ValidEvent is ValidEvent


# -- the decoder ---------------------------------------------------------------------------


def test_read_source_takes_lists_dicts_str_and_bytearray_values() -> None:
    expected = SourceHeaders((RAW, 2, 17), 1_714_557_000_000, 1_714_557_001_000)
    assert read_source(handoff()) == expected
    assert read_source(dict(handoff())) == expected
    as_text = handoff(RAW, "2", "17", "1714557000000", "1714557001000")
    assert read_source(as_text) == expected
    assert read_source([(k, bytearray(v)) for k, v in handoff()]) == expected
    assert read_source(None) == read_source([]) == read_source({}) == SourceHeaders()


def test_read_source_walks_the_headers_once() -> None:
    # A generator can be iterated only once: a second pass would find nothing.
    assert read_source(iter(handoff())).source == (RAW, 2, 17)


def test_the_last_copy_of_a_header_counts() -> None:
    headers = [(SOURCE_OFFSET, b"5"), *handoff()]
    assert read_source(headers).source == (RAW, 2, 17)
    # ...even when it is the malformed one: then there is no source at all.
    assert read_source([*handoff(), (SOURCE_OFFSET, b"x")]).source is None


MALFORMED_COORDINATES = {
    "no topic": handoff(topic=None),
    "no partition": handoff(partition=None),
    "no offset": handoff(offset=None),
    "empty topic": handoff(topic=b""),
    "null topic": replaced(SOURCE_TOPIC, None),
    "topic not UTF-8": handoff(topic=b"raw\xff\xfe"),
    "topic not ASCII": handoff(topic="événements".encode()),
    "topic with a slash": handoff(topic=b"raw/../x"),
    "topic with a space": handoff(topic=b"raw "),
    "topic too long": handoff(topic=b"t" * 250),
    "negative partition": handoff(partition=b"-1"),
    "negative offset": handoff(offset=b"-1"),
    "plus sign": handoff(offset=b"+17"),
    "spaces": handoff(offset=b" 17 "),
    "underscore": handoff(offset=b"1_7"),
    "hex": handoff(offset=b"0x11"),
    "float": handoff(offset=b"17.0"),
    "empty offset": handoff(offset=b""),
    "null offset": replaced(SOURCE_OFFSET, None),
    "offset not UTF-8": handoff(offset=b"\xff\xfe"),
    "arabic digits as bytes": handoff(offset="١٧".encode()),
    "arabic digits as str": handoff(offset="١٧"),
    "not bytes or str": handoff(offset=17),
    "partition past int32": handoff(partition=str(2**31).encode()),
    "offset past int64": handoff(offset=str(2**63).encode()),
    "a megabyte of digits": handoff(offset=b"7" * 1_000_000),
}


@pytest.mark.parametrize("headers", MALFORMED_COORDINATES.values(), ids=list(MALFORMED_COORDINATES))
def test_malformed_coordinates_are_no_source_and_the_message_keeps_its_own(
    headers: list[tuple[str, Any]],
) -> None:
    found = read_source(headers)
    assert found.source is None
    # The times are separate headers, and these are well formed.
    assert (found.produced_at_ms, found.handed_off_at_ms) == (1_714_557_000_000, 1_714_557_001_000)
    event = to_valid_event(FakeMessage(headers))  # type: ignore[arg-type]
    assert event.source == (VALID, 3, 41)  # all three of its own, never a mix


def test_the_largest_legal_values_are_read() -> None:
    headers = handoff(b"t" * 249, str(2**31 - 1).encode(), str(2**63 - 1).encode(), b"0", b"007")
    assert read_source(headers) == SourceHeaders(("t" * 249, 2**31 - 1, 2**63 - 1), 0, 7)


MALFORMED_TIMES = [b"-1", b"yesterday", b"", b"1.5e12", b"\xff", "١٧".encode(), None]


@pytest.mark.parametrize("bad", MALFORMED_TIMES, ids=repr)
def test_a_malformed_source_timestamp_falls_back_to_the_message_timestamp(bad: Any) -> None:
    headers = replaced(SOURCE_TIMESTAMP, bad)
    assert read_source(headers).produced_at_ms is None
    event = to_valid_event(FakeMessage(headers))  # type: ignore[arg-type]  # no ValueError
    assert event.produced_at_ms == OWN_MS
    assert event.ingested_at_ms == 1_714_557_001_000
    assert event.source == (RAW, 2, 17)  # the coordinates do not depend on the times


@pytest.mark.parametrize("bad", MALFORMED_TIMES, ids=repr)
def test_a_malformed_ingested_at_falls_back_to_the_message_timestamp(bad: Any) -> None:
    headers = replaced(INGESTED_AT, bad)
    assert read_source(headers).handed_off_at_ms is None
    event = to_valid_event(FakeMessage(headers))  # type: ignore[arg-type]
    assert (event.produced_at_ms, event.ingested_at_ms) == (1_714_557_000_000, OWN_MS)


def test_absent_times_fall_back_to_the_message_timestamp() -> None:
    event = to_valid_event(FakeMessage(handoff(produced=None, ingested=None)))  # type: ignore[arg-type]
    assert event.source == (RAW, 2, 17)
    assert (event.produced_at_ms, event.ingested_at_ms) == (OWN_MS, OWN_MS)


# -- the encoder, and round trips ----------------------------------------------------------


@pytest.mark.parametrize("names", [VALID_SOURCE, DLQ_SOURCE], ids=["valid", "dlq"])
def test_source_headers_round_trip(names: Any) -> None:
    record = RawRecord(RAW, 7, 123_456_789_012, 1_714_557_000_123, b"k", b"{}")
    headers = source_headers(record, 1_714_557_000_456, names)
    assert all(isinstance(v, bytes) for _, v in headers)
    assert read_source(headers, names) == SourceHeaders(
        (RAW, 7, 123_456_789_012), 1_714_557_000_123, 1_714_557_000_456
    )
    # Each hand-off's names are its own: the other reader finds nothing.
    other = DLQ_SOURCE if names is VALID_SOURCE else VALID_SOURCE
    assert read_source(headers, other) == SourceHeaders()


def test_a_record_without_timestamp_gets_no_timestamp_header() -> None:
    headers = source_headers(RawRecord(RAW, 0, 5, -1, None, b"{}"), 99)
    assert SOURCE_TIMESTAMP not in dict(headers)
    assert read_source(headers) == SourceHeaders((RAW, 0, 5), None, 99)


def accepted(registry: SchemaRegistry, headers: list[tuple[str, bytes | None]]) -> Accepted:
    raw = load_examples(EXAMPLES, "transaction", "valid")["pos_contactless"]
    rec = RawRecord(RAW, 4, 1234, 1_700_000_000_123, b"acc", raw, headers)
    result = ingest_record(rec, registry, Limits(256 * 1024, 32))
    assert isinstance(result, Accepted)
    return result


def test_the_valid_hand_off_round_trips_through_to_valid_event(registry: SchemaRegistry) -> None:
    item = accepted(registry, [("trace", b"x")])
    message = FakeMessage(handoff_headers(item, now_ms=1_700_000_000_999), value=item.record.value)
    event = to_valid_event(message)  # type: ignore[arg-type]
    assert event.source == (RAW, 4, 1234)
    assert (event.produced_at_ms, event.ingested_at_ms) == (1_700_000_000_123, 1_700_000_000_999)
    assert (event.handoff_partition, event.handoff_offset) == (3, 41)


def test_the_hand_off_replaces_a_producers_own_source_headers(registry: SchemaRegistry) -> None:
    forged = [(SOURCE_TOPIC, b"elsewhere"), (SOURCE_OFFSET, b"1"), (INGESTED_AT, b"5")]
    headers = handoff_headers(accepted(registry, [("trace", b"x"), *forged]), now_ms=42)
    names = [k for k, _ in headers]
    assert names.count(SOURCE_TOPIC) == names.count(SOURCE_OFFSET) == 1
    assert names.count(INGESTED_AT) == 1 and ("trace", b"x") in headers
    assert read_source(headers) == SourceHeaders((RAW, 4, 1234), 1_700_000_000_123, 42)


def test_the_dead_letter_round_trips_through_the_dlq_reader(registry: SchemaRegistry) -> None:
    rec = RawRecord(RAW, 2, 77, 1_700_000_000_000, b"k", b'{"event_id": 1', ())
    letter = ingest_record(rec, registry, Limits(256 * 1024, 32))
    assert isinstance(letter, DeadLetter)
    headers = dead_letter_headers(letter, "ingest", "w-1", now_ms=1_700_000_000_500)
    assert read_source(headers, DLQ_SOURCE) == SourceHeaders(
        (RAW, 2, 77), 1_700_000_000_000, 1_700_000_000_500
    )
    stored = to_stored(FakeMessage(headers, topic="p.events.dlq", partition=0, offset=9))  # type: ignore[arg-type]
    assert stored.source == (RAW, 2, 77)
    assert (stored.produced_at_ms, stored.dead_at_ms) == (1_700_000_000_000, 1_700_000_000_500)
    assert (stored.dlq_partition, stored.dlq_offset) == (0, 9)


def test_a_dead_letter_with_a_malformed_source_keeps_all_its_dlq_coordinates() -> None:
    headers = [
        (DLQ_SOURCE.topic, RAW.encode()), (DLQ_SOURCE.partition, b"-3"),
        (DLQ_SOURCE.offset, b"77"), (DLQ_SOURCE.timestamp, b"soon"),
    ]  # fmt: skip
    stored = to_stored(FakeMessage(headers, topic="p.events.dlq", partition=0, offset=9))  # type: ignore[arg-type]
    assert stored.source == ("p.events.dlq", 0, 9)  # not (RAW, 0, 77)
    assert (stored.produced_at_ms, stored.dead_at_ms) == (OWN_MS, OWN_MS)


# -- layering ------------------------------------------------------------------------------


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports (``from streams.agents import x`` counts as ``x``)."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module == "streams.agents":
            modules.update(f"streams.agents.{a.name}" for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


def test_no_agent_imports_another_agent_but_the_runtime() -> None:
    found = {
        f"{path.name} imports {module}"
        for path in (ROOT / "streams" / "agents").glob("*.py")
        for module in imported_modules(path)
        if module.startswith("streams.agents.") and module != "streams.agents.batching"
    }
    assert found == set()
    # The check itself sees an agent importing an agent.
    assert "streams.agents.batching" in imported_modules(ROOT / "streams" / "agents" / "lake.py")


def test_records_and_the_scoring_pipeline_import_no_kafka_client_or_faust() -> None:
    code = (
        "import sys, streams.records, streams.scoring.pipeline\n"
        "loaded = {m.split('.')[0] for m in sys.modules}\n"
        "print(sorted(loaded & {'confluent_kafka', 'faust', 'mode'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
