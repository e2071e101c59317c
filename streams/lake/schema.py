"""The event lake contract: one flat Arrow schema per event type and a fast dict → table builder.

Columns mirror the JSON Schema fields (``geo`` is flattened to ``geo_lat``/``geo_lon``/
``geo_accuracy_m``), plus provenance (``source_topic``/``source_partition``/
``source_offset``: where the event was read from; null for simulated history). The
``event_date`` partition column lives only in the hive path
(``<root>/<event_type>/event_date=YYYY-MM-DD/``), never inside the files, so readers that
use ``hive_partitioning`` do not see it twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from streams.lake.exceptions import LakeInputError

TIMESTAMP = pa.timestamp("us", tz="UTC")

PROVENANCE_FIELDS: tuple[pa.Field, ...] = (
    pa.field("source_topic", pa.string()),
    pa.field("source_partition", pa.int32()),
    pa.field("source_offset", pa.int64()),
)

TRANSACTION_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("event_time", TIMESTAMP, nullable=False),
        pa.field("account_id", pa.string(), nullable=False),
        pa.field("card_id", pa.string(), nullable=False),
        pa.field("merchant_id", pa.string(), nullable=False),
        pa.field("amount", pa.float64(), nullable=False),
        pa.field("currency", pa.string(), nullable=False),
        pa.field("mcc", pa.string(), nullable=False),
        pa.field("merchant_country", pa.string(), nullable=False),
        pa.field("card_country", pa.string(), nullable=False),
        pa.field("channel", pa.string(), nullable=False),
        pa.field("entry_mode", pa.string(), nullable=False),
        pa.field("device_id", pa.string()),
        pa.field("ip", pa.string()),
        pa.field("is_3ds", pa.bool_()),
        pa.field("card_present", pa.bool_(), nullable=False),
        pa.field("geo_lat", pa.float64()),
        pa.field("geo_lon", pa.float64()),
        pa.field("geo_accuracy_m", pa.float64()),  # v2
        pa.field("merchant_name", pa.string()),  # v2
        pa.field("wallet", pa.string()),  # v2
        pa.field("schema_version", pa.int16(), nullable=False),
        *PROVENANCE_FIELDS,
    ],
    metadata={"streamscore.event_type": "transaction", "streamscore.time_field": "event_time"},
)

LABEL_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("label_time", TIMESTAMP, nullable=False),
        pa.field("transaction_id", pa.string(), nullable=False),
        pa.field("account_id", pa.string(), nullable=False),
        pa.field("is_fraud", pa.bool_(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("fraud_type", pa.string()),
        pa.field("chargeback_amount", pa.float64()),
        pa.field("schema_version", pa.int16(), nullable=False),
        *PROVENANCE_FIELDS,
    ],
    metadata={"streamscore.event_type": "label", "streamscore.time_field": "label_time"},
)

SCHEMAS: dict[str, pa.Schema] = {"transaction": TRANSACTION_SCHEMA, "label": LABEL_SCHEMA}
TIME_FIELDS: dict[str, str] = {"transaction": "event_time", "label": "label_time"}
PARTITION_COLUMN = "event_date"

# Columns read from a nested JSON object: column -> (object field, inner field).
_NESTED: dict[str, tuple[str, str]] = {
    "geo_lat": ("geo", "lat"),
    "geo_lon": ("geo", "lon"),
    "geo_accuracy_m": ("geo", "accuracy_m"),
}


def schema_for(event_type: str) -> pa.Schema:
    """The lake schema of ``event_type``; LakeInputError for a type the lake does not hold."""
    try:
        return SCHEMAS[event_type]
    except KeyError:
        raise LakeInputError(
            f"the lake holds no event type {event_type!r}; known: {', '.join(sorted(SCHEMAS))}"
        ) from None


def parse_times(values: Sequence[str | None] | pa.Array) -> pa.Array:
    """RFC 3339 strings (``Z`` or ``±hh:mm``, up to ns digits) → ``timestamp[us, UTC]``.

    Arrow parses zone offsets only into a tz-aware type, and only as far as the
    target unit allows; going through ``ns`` accepts nine fractional digits, then the
    cast to ``us`` truncates. Years outside 1677..2262 (ns range) fall back to Python.
    """
    strings = values if isinstance(values, pa.Array) else pa.array(values, type=pa.string())
    try:
        nanos = pc.cast(strings, pa.timestamp("ns", tz="UTC"))
        return pc.cast(nanos, TIMESTAMP, safe=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return _parse_times_slowly(strings.to_pylist())


def _parse_times_slowly(values: Sequence[str | None]) -> pa.Array:
    from datetime import UTC, datetime

    out: list[datetime | None] = []
    for value in values:
        if value is None:
            out.append(None)
            continue
        text = value.replace("Z", "+00:00").replace("z", "+00:00")
        head, dot, rest = text.partition(".")
        if dot:  # Python takes at most 6 fractional digits: trim, keep the offset
            digits = len(rest) - len(rest.lstrip("0123456789"))
            text = f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}"
        try:
            out.append(datetime.fromisoformat(text).astimezone(UTC))
        except ValueError as exc:
            raise LakeInputError(f"not an RFC 3339 time: {value!r}") from exc
    return pa.array(out, type=TIMESTAMP)


def _column_getter(name: str) -> Callable[[Mapping[str, Any]], Any]:
    nested = _NESTED.get(name)
    if nested is not None:
        outer, inner = nested

        def get_nested(event: Mapping[str, Any]) -> Any:
            value = event.get(outer)
            return value.get(inner) if isinstance(value, Mapping) else None

        return get_nested
    return lambda event: event.get(name)


def to_table(event_type: str, events: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Validated JSON events (dicts) → an Arrow table in the lake schema, built column by column.

    Provenance columns are read from the dicts when present (a sink may add
    ``source_topic``/``source_partition``/``source_offset`` keys) and are null otherwise.
    A required field that is missing raises LakeInputError naming the column and row.
    """
    schema = schema_for(event_type)
    time_field = TIME_FIELDS[event_type]
    arrays: list[pa.Array] = []
    for field in schema:
        getter = _column_getter(field.name)
        values = [getter(event) for event in events]
        if not field.nullable and None in values:
            row = values.index(None)
            raise LakeInputError(
                f"{event_type} event {row} (event_id={events[row].get('event_id')!r}) "
                f"has no value for required column {field.name!r}"
            )
        try:
            if field.name == time_field:
                arrays.append(parse_times(values))
            else:
                arrays.append(pa.array(values, type=field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
            raise LakeInputError(
                f"{event_type} column {field.name!r} cannot be built as {field.type}: {exc}"
            ) from exc
    return pa.Table.from_arrays(arrays, schema=schema)


def event_dates(event_type: str, table: pa.Table) -> pa.Array:
    """The UTC calendar date (``date32``) of each row's event time: the partition key."""
    times = table.column(TIME_FIELDS[event_type])
    # Timestamps are UTC instants; the date is taken in UTC whatever the original offset.
    return pc.cast(pc.cast(times, pa.timestamp("us")), pa.date32())


def conform(event_type: str, table: pa.Table) -> pa.Table:
    """Reorder/cast ``table`` to the lake schema; absent provenance columns become null."""
    schema = schema_for(event_type)
    columns: list[pa.Array | pa.ChunkedArray] = []
    for field in schema:
        if field.name in table.column_names:
            columns.append(table.column(field.name).cast(field.type))
        elif field.nullable:
            columns.append(pa.nulls(table.num_rows, type=field.type))
        else:
            raise LakeInputError(f"{event_type} table has no column {field.name!r}")
    return pa.Table.from_arrays(columns, schema=schema)


__all__ = [
    "LABEL_SCHEMA",
    "PARTITION_COLUMN",
    "PROVENANCE_FIELDS",
    "SCHEMAS",
    "TIMESTAMP",
    "TIME_FIELDS",
    "TRANSACTION_SCHEMA",
    "conform",
    "event_dates",
    "parse_times",
    "schema_for",
    "to_table",
]
