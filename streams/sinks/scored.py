"""Scored batches between the scoring stage and the ClickHouse sink: Arrow IPC on Kafka.

The scoring stage decides and answers on Kafka without waiting for ClickHouse; what
ClickHouse needs (every model's ``predictions`` rows, feature vectors included) travels as
one compressed Arrow IPC stream per (scoring batch, valid partition) on the scored topic,
written to the partition of the valid partition's number. The sink stage reads a second's
worth, drops rows it has written before (:class:`RowMarks`) and inserts them in one go.

Two more kinds ride the same topic, named by the ``streamscore.kind`` header: a batch's
drift deltas (Arrow IPC, ``drift_deltas``) and the small rows a scoring process records
about itself when it loads models (``rows``: the ``models`` and ``drift_baselines``
tables, JSON, the table in ``streamscore.table``; both are ReplacingMergeTree on the
model, so a re-sent copy folds). A scoring process never opens ClickHouse for them.

Exactly-once effect, at-least-once delivery: a scoring crash re-sends a batch after the
one that may already be written; within a scored partition the raw offsets of each raw
partition only rise except for such re-sends, so a row at or below the highest raw offset
written for its (valid partition, raw partition) is a copy. The marks are loaded from
ClickHouse when the sink is assigned a partition, and raised as rows are taken.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "DRIFT_HEADERS",
    "KIND_HEADER",
    "ROW_TABLES",
    "TABLE_HEADER",
    "Headers",
    "RowMarks",
    "decode_rows",
    "decode_scored",
    "encode_rows",
    "encode_scored",
    "encode_table",
    "is_drift",
    "message_kind",
]

_WRITE = pa.ipc.IpcWriteOptions(compression="lz4")
RawPartition = tuple[str, int]
# A scored message holds predictions rows unless this header says drift_deltas rows.
KIND_HEADER = "streamscore.kind"
Headers = list[tuple[str, str | bytes | None]]
TABLE_HEADER = "streamscore.table"
DRIFT_HEADERS: Headers = [(KIND_HEADER, b"drift_deltas")]
# The tables a scoring process may write through the sink (``rows`` messages).
ROW_TABLES = frozenset({"models", "drift_baselines"})
Kind = str  # "predictions", "drift_deltas" or "rows"


def encode_table(table: pa.Table, partition: int = 0) -> list[tuple[int, bytes]]:
    """``table`` as one lz4 Arrow IPC stream: ``[(partition, bytes)]``."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=_WRITE) as writer:
        writer.write_table(table)
    return [(partition, sink.getvalue().to_pybytes())]


def encode_scored(rows: pa.Table) -> list[tuple[int, bytes]]:
    """``(valid partition, Arrow IPC bytes)`` per valid partition in ``rows``."""
    column = rows.column("handoff_partition")
    partitions = sorted(pc.unique(column).to_pylist())
    out: list[tuple[int, bytes]] = []
    for partition in partitions:
        part = rows if len(partitions) == 1 else rows.filter(pc.equal(column, partition))
        out += encode_table(part, int(partition))
    return out


def is_drift(headers: Headers | dict[str, str | bytes | None] | None) -> bool:
    """Whether a scored message carries drift deltas (by its kind header)."""
    pairs = headers.items() if isinstance(headers, dict) else headers or ()
    return any(key == KIND_HEADER and value == b"drift_deltas" for key, value in pairs)


def message_kind(headers: Headers | None) -> tuple[Kind, str]:
    """A scored message's kind and, for ``rows``, its table (else "")."""
    kind, table = "predictions", ""
    for key, value in headers or ():
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value or ""
        if key == KIND_HEADER:
            kind = text
        elif key == TABLE_HEADER:
            table = text
    return kind, table


def encode_rows(
    table: str, names: Sequence[str], rows: Sequence[Sequence[object]]
) -> tuple[Headers, bytes]:
    """Rows for one of :data:`ROW_TABLES`, as a ``rows`` message: (headers, JSON value)."""
    if table not in ROW_TABLES:
        raise ValueError(f"{table!r} is not one of the tables the sink writes rows to")
    value = orjson.dumps({"names": list(names), "rows": [list(r) for r in rows]})
    return [(KIND_HEADER, b"rows"), (TABLE_HEADER, table.encode())], value


def decode_rows(value: bytes) -> tuple[list[str], list[list[object]]]:
    """Column names and rows of a ``rows`` message."""
    payload = orjson.loads(value)
    return [str(n) for n in payload["names"]], [list(r) for r in payload["rows"]]


def decode_scored(value: bytes) -> pa.Table:
    """The rows of one scored message."""
    return pa.ipc.open_stream(value).read_all()


class RowMarks:
    """Per valid partition: raw (topic, partition) → highest raw offset written."""

    def __init__(self) -> None:
        self._marks: dict[int, dict[RawPartition, int]] = {}

    def load(self, partition: int, marks: Mapping[RawPartition, int]) -> None:
        self._marks[partition] = dict(marks)

    def forget(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self._marks.pop(partition, None)

    def get(self, partition: int) -> dict[RawPartition, int]:
        return dict(self._marks.get(partition, {}))

    def take(self, partition: int, rows: pa.Table) -> pa.Table:
        """The rows of one scored message not written before; raises the marks.

        Vectorised per raw partition: every model's row of an event shares the event's
        raw offset, so they are kept or dropped together.
        """
        if rows.num_rows == 0:
            return rows
        marks = self._marks.setdefault(partition, {})
        topics = rows.column("topic").to_numpy(zero_copy_only=False)
        partitions = rows.column("partition").to_numpy()
        offsets = rows.column("offset").to_numpy().astype(np.int64)
        keep = np.zeros(rows.num_rows, dtype=np.bool_)
        for topic in np.unique(topics):
            in_topic = topics == topic
            for raw in np.unique(partitions[in_topic]):
                group = in_topic & (partitions == raw)
                key = (str(topic), int(raw))
                fresh = group & (offsets > marks.get(key, -1))
                if fresh.any():
                    marks[key] = int(offsets[fresh].max())
                    keep |= fresh
        return rows if keep.all() else rows.filter(pa.array(keep))
