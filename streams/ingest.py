"""Schema-on-write ingestion as a pure function: raw record in, accepted event or dead letter out.

No Kafka client and no faust here: the agent hands records in, a sink sends results on.
Checks run cheapest first, and nothing expensive runs on bytes that a cheap check
already refused: size, nesting depth (before parsing, so a 100,000-deep payload
never reaches the parser), UTF-8 and JSON (orjson), object shape, schema resolution,
then validation (jsonschema-rs). An invalid event keeps its original bytes and gets
every violation with its JSON path.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from streams.errors import EventRejected, Violation
from streams.schemas.registry import EventSchema, SchemaRegistry
from streams.schemas.validation import describe

Headers = Sequence[tuple[str, bytes | None]]

# Reasons are stable, machine-readable error classes (DLQ header, metrics label).
PAYLOAD_TOO_LARGE = "payload_too_large"
TOO_DEEPLY_NESTED = "too_deeply_nested"
EMPTY_VALUE = "empty_value"
NOT_UTF8 = "not_utf8"
NOT_JSON = "not_json"
NOT_AN_OBJECT = "not_an_object"
SCHEMA_VIOLATION = "schema_violation"


@dataclass(frozen=True, slots=True)
class RawRecord:
    """A Kafka record as it arrived, bytes untouched."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: Headers = ()


@dataclass(frozen=True, slots=True)
class Limits:
    """Guards applied before parsing."""

    max_payload_bytes: int
    max_nesting_depth: int


@dataclass(frozen=True, slots=True)
class Accepted:
    """A valid event and the schema it validated against."""

    record: RawRecord
    schema: EventSchema
    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event that failed ingestion, with why. The record's bytes go to the DLQ unchanged."""

    record: RawRecord
    reason: str
    message: str
    violations: tuple[Violation, ...] = ()
    schema_id: str | None = None


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_OPEN = np.zeros(256, dtype=np.int8)
_OPEN[[ord("["), ord("{")]] = 1
_OPEN[[ord("]"), ord("}")]] = -1


def nesting_depth(value: bytes) -> int:
    """Maximum bracket depth of a JSON text, ignoring brackets inside strings."""
    structure = _JSON_STRING.sub(b"", value)
    if not structure:
        return 0
    steps = _OPEN[np.frombuffer(structure, dtype=np.uint8)]
    return int(np.cumsum(steps, dtype=np.int64).max(initial=0))


def too_deep(value: bytes, limit: int) -> bool:
    """True when the JSON text nests deeper than ``limit``; cheap for ordinary events."""
    # Depth can never exceed the number of opening brackets: most events stop here.
    if value.count(b"[") + value.count(b"{") <= limit:
        return False
    return nesting_depth(value) > limit


def _decode_failure(value: bytes, exc: orjson.JSONDecodeError) -> tuple[str, str]:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as bad:
        return NOT_UTF8, f"value is not UTF-8 at byte {bad.start}: {bad.reason}"
    return NOT_JSON, f"value is not JSON: {exc}"


def ingest_record(
    record: RawRecord, registry: SchemaRegistry, limits: Limits
) -> Accepted | DeadLetter:
    """Check one record. Never raises for bad input: every failure is a DeadLetter."""
    value = record.value
    if value is None or not value:
        return DeadLetter(record, EMPTY_VALUE, "record has no value (tombstone or empty)")
    if len(value) > limits.max_payload_bytes:
        return DeadLetter(
            record,
            PAYLOAD_TOO_LARGE,
            f"value is {len(value)} bytes, the limit is {limits.max_payload_bytes}",
        )
    if too_deep(value, limits.max_nesting_depth):
        return DeadLetter(
            record, TOO_DEEPLY_NESTED, f"JSON nests deeper than {limits.max_nesting_depth} levels"
        )
    try:
        event = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        reason, message = _decode_failure(value, exc)
        return DeadLetter(record, reason, message)
    if type(event) is not dict:
        return DeadLetter(
            record, NOT_AN_OBJECT, f"top-level JSON is {type(event).__name__}, not an object"
        )
    try:
        schema = registry.resolve(event, record.headers)
    except EventRejected as exc:
        return DeadLetter(record, exc.reason, exc.message, exc.violations, exc.schema_id)
    if schema.fast.is_valid(event):
        return Accepted(record, schema, event)
    violations = schema.fast.violations(event)
    return DeadLetter(
        record,
        SCHEMA_VIOLATION,
        f"{schema.label}: {describe(violations)}",
        violations,
        schema.schema_id,
    )


def ingest_batch(
    records: Sequence[RawRecord], registry: SchemaRegistry, limits: Limits
) -> tuple[list[Accepted], list[DeadLetter]]:
    """Split a batch into accepted events and dead letters, order kept within each."""
    accepted: list[Accepted] = []
    dead: list[DeadLetter] = []
    for record in records:
        result = ingest_record(record, registry, limits)
        if type(result) is Accepted:
            accepted.append(result)
        else:
            dead.append(result)  # type: ignore[arg-type]
    return accepted, dead
