"""Schema-on-write ingestion as a pure function: raw record in, accepted event or dead letter out.

No Kafka client and no faust here: the agent hands records in, a sink sends results on.
Checks run cheapest first, and nothing expensive runs on bytes that a cheap check
already refused: size, nesting depth (before parsing, so a 100,000-deep payload
never reaches the parser), UTF-8 and JSON (orjson), object shape, schema resolution,
then validation (jsonschema-rs). An invalid event keeps its original bytes and gets
every violation with its JSON path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import orjson

from streams.errors import EventRejected, Violation
from streams.records import RawRecord
from streams.schemas.registry import EventSchema, SchemaRegistry
from streams.schemas.validation import describe

__all__ = [
    "EMPTY_VALUE",
    "NOT_AN_OBJECT",
    "NOT_JSON",
    "NOT_UTF8",
    "PAYLOAD_TOO_LARGE",
    "SCHEMA_VIOLATION",
    "TOO_DEEPLY_NESTED",
    "Accepted",
    "DeadLetter",
    "Limits",
    "RawRecord",  # defined in streams.records, kept here for the callers that import it here
    "guard",
    "ingest_batch",
    "ingest_record",
    "nesting_depth",
    "too_deep",
]

# Reasons are stable, machine-readable error classes (DLQ header, metrics label).
PAYLOAD_TOO_LARGE = "payload_too_large"
TOO_DEEPLY_NESTED = "too_deeply_nested"
EMPTY_VALUE = "empty_value"
NOT_UTF8 = "not_utf8"
NOT_JSON = "not_json"
NOT_AN_OBJECT = "not_an_object"
SCHEMA_VIOLATION = "schema_violation"


@dataclass(frozen=True, slots=True)
class Limits:
    """Guards applied before parsing."""

    max_payload_bytes: int
    max_nesting_depth: int


class Accepted(NamedTuple):
    """A valid event and the schema it validated against."""

    record: RawRecord
    schema: EventSchema
    event: dict[str, Any]


class DeadLetter(NamedTuple):
    """An event that failed ingestion, with why. The record's bytes go to the DLQ unchanged."""

    record: RawRecord
    reason: str
    message: str
    violations: tuple[Violation, ...] = ()
    schema_id: str | None = None


# Byte → bracket step, read with bytes.translate (one C pass): +1 opens, -1 (0xFF as int8) closes.
_STEPS = bytes(
    1 if b in b"[{" else 0xFF if b in b"]}" else 0 for b in range(256)
)  # fmt: skip
_QUOTE, _BACKSLASH = ord('"'), ord("\\")


def _bits(mask: npt.NDArray[np.bool_]) -> int:
    """A boolean array as one Python int: bit ``i`` is ``mask[i]``."""
    return int.from_bytes(np.packbits(mask, bitorder="little").tobytes(), "little")


def _escaped(is_backslash: npt.NDArray[np.bool_]) -> npt.NDArray[np.uint8]:
    """1 where a byte follows an odd run of backslashes (it is escaped), else 0.

    simdjson's carry trick on one arbitrary-precision int (each operation is linear in
    the number of bytes): adding a run's start bit to the backslash bits carries through
    the run and lands on the byte just after it; a run that starts on an even position
    and lands on an odd one (or the reverse) is odd.
    """
    n = len(is_backslash)
    size = (n + 7) // 8
    b = _bits(is_backslash)
    even = int.from_bytes(b"\x55" * size, "little")  # bits 0, 2, 4, ...
    starts = b & ~(b << 1)
    odd_from_even = (b + (starts & even)) & ~b & ~even
    odd_from_odd = (b + (starts & ~even)) & ~b & even
    escaped = (odd_from_even | odd_from_odd) & ((1 << n) - 1)
    packed = np.frombuffer(escaped.to_bytes(size, "little"), dtype=np.uint8)
    return np.unpackbits(packed, count=n, bitorder="little")


def _inside_strings(is_quote: npt.NDArray[np.bool_]) -> npt.NDArray[np.uint8]:
    """1 from each opening quote up to (not including) its closing quote, else 0.

    A prefix XOR of the quote bits: within 64-bit words by six shift-XORs, then each
    word flipped when the words before it hold an odd number of quotes. Linear, and a
    string that never closes simply runs to the end.
    """
    n = len(is_quote)
    words = np.zeros((n + 63) // 64, dtype="<u8")
    packed = np.packbits(is_quote, bitorder="little")
    words.view(np.uint8)[: len(packed)] = packed
    for shift in (1, 2, 4, 8, 16, 32):
        words ^= words << np.uint64(shift)
    odd_before = np.bitwise_xor.accumulate(words >> np.uint64(63))
    words[1:] ^= np.uint64(0) - odd_before[:-1]  # all ones where the parity carried in is odd
    return np.unpackbits(words.view(np.uint8), count=n, bitorder="little")


def nesting_depth(value: bytes) -> int:
    """Maximum bracket depth of a JSON text, ignoring brackets inside strings.

    One linear pass in a few vectorised steps, whatever the input (no regex, nothing
    that can backtrack): a byte after an odd run of backslashes is escaped; every other
    quote opens or closes a string; the brackets left are summed. A string that never
    closes runs to the end of the text, and orjson later refuses the text as not JSON.
    """
    steps = np.frombuffer(value.translate(_STEPS), dtype=np.int8).copy()
    data = np.frombuffer(value, dtype=np.uint8)
    is_quote = data == _QUOTE
    if value.find(b"\\") >= 0:
        escaped = _escaped(data == _BACKSLASH)
        is_quote &= escaped == 0
        steps *= 1 - escaped.view(np.int8)
    if is_quote.any():
        steps *= 1 - _inside_strings(is_quote).view(np.int8)
    # int32 sums are a third faster than int64 and cannot overflow below 2 GiB.
    total = np.int32 if len(value) < 2**31 else np.int64
    return int(np.cumsum(steps, dtype=total).max(initial=0))


def too_deep(value: bytes, limit: int) -> bool:
    """True when the JSON text nests deeper than ``limit``; cheap for ordinary events."""
    # Depth can never exceed the number of opening brackets: most events stop here.
    if value.count(b"[") + value.count(b"{") <= limit:
        return False
    return nesting_depth(value) > limit


def guard(record: RawRecord, limits: Limits) -> DeadLetter | None:
    """The checks on raw bytes, before any parsing: a DeadLetter, or None to go on.

    Each is one linear pass over the value (size is O(1)), so a hostile payload at the
    size limit costs about a millisecond, not the parser's or a regex's worst case.
    """
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
    return None


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
    refused = guard(record, limits)
    if refused is not None:
        return refused
    value = record.value
    assert value is not None  # guard refused None
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
