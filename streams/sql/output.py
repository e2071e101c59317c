"""A query's answer as analysts see it: columns, types, JSON-ready rows, rendered text.

Shared by ``streamscore sql``, the worker's ``POST /sql`` and the report, so the three
print the same values the same way.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from datetime import time as dt_time
from decimal import Decimal
from typing import Any

import orjson

from streams.errors import ConfigError, StreamscoreError

__all__ = ["FORMATS", "QueryOutput", "jsonable", "render"]

FORMATS = ("json", "csv", "table")


@dataclass(frozen=True, slots=True)
class QueryOutput:
    """A query's result, JSON-ready: values are JSON scalars, lists or string-keyed objects."""

    columns: tuple[str, ...]
    types: tuple[str, ...]
    rows: list[list[Any]]
    truncated: bool
    elapsed_ms: float
    format: str
    text: str

    def to_json(self) -> dict[str, Any]:
        """The ``POST /sql`` answer."""
        return {
            "columns": list(self.columns),
            "types": list(self.types),
            "rows": self.rows,
            "row_count": len(self.rows),
            "truncated": self.truncated,
            "elapsed_ms": self.elapsed_ms,
            "format": self.format,
            "text": self.text,
        }

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> QueryOutput:
        """Back from a ``POST /sql`` answer; ConfigError when it is not one."""
        try:
            return cls(
                columns=tuple(str(c) for c in payload["columns"]),
                types=tuple(str(t) for t in payload["types"]),
                rows=[list(row) for row in payload["rows"]],
                truncated=bool(payload["truncated"]),
                elapsed_ms=float(payload["elapsed_ms"]),
                format=str(payload["format"]),
                text=str(payload["text"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not a streamscore /sql answer ({exc!r}): {payload!r:.200}") from exc


def jsonable(value: Any) -> Any:
    """``value`` as JSON can carry it: dates as ClickHouse prints them, big ints as text."""
    if value is None or isinstance(value, bool | str | float):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, date | dt_time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, Mapping):
        return {str(jsonable(key)): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(item) for item in value]
    if isinstance(value, Decimal | uuid.UUID | ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        return jsonable(item())
    return str(value)


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def render(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> str:
    """Rows as JSON lines (one object per row), CSV with a header, or an aligned text table."""
    if fmt == "json":
        return "".join(
            orjson.dumps(dict(zip(columns, row, strict=True))).decode() + "\n" for row in rows
        )
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow("" if value is None else _cell(value) for value in row)
        return buffer.getvalue()
    if fmt == "table":
        return _table(columns, rows)
    raise StreamscoreError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_cell(v).replace("\n", "\\n") for v in row] for row in rows]
    widths = [len(name) for name in columns]
    for row in cells:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]
    numeric = [
        bool(rows) and all(row[i] is None or _is_number(row[i]) for row in rows)
        for i in range(len(columns))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            value.rjust(width) if right else value.ljust(width)
            for value, width, right in zip(values, widths, numeric, strict=True)
        ]
        return " | ".join(parts).rstrip()

    out = [line(columns), "-+-".join("-" * width for width in widths)]
    out.extend(line(row) for row in cells)
    out.append(f"({len(rows)} row{'' if len(rows) == 1 else 's'})")
    return "\n".join(out) + "\n"
