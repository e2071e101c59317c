"""Read-only SQL for analysts: one checked statement → columns, types, rows; ``POST /sql``.

ClickHouse enforces read-only: every query runs with ``readonly=2`` (``readonly=1`` would
also forbid the per-query settings clickhouse-connect and the row/time limits below need).
A pre-check refuses what ``readonly`` lets through or what would hurt a shared client:

* more than one statement: chDB runs each one, and a per-query ``SETTINGS`` clause only
  covers the last, so ``select 1; drop table t`` would drop the table;
* anything but SELECT/WITH/SHOW/DESCRIBE/EXPLAIN/EXISTS, and ``INSERT INTO`` after a
  ``WITH``: clickhouse-connect sends those with ``SET readonly`` and cannot restore the
  setting afterwards, which would leave a shared chDB session read-only;
* ``INTO OUTFILE``, which chDB honours even with ``readonly=2``.

The pre-check is conservative (it refuses what it cannot parse); on chDB
:func:`open_readonly_gateway` also makes the whole session read-only, so ClickHouse
refuses writes even where the pre-check would be wrong.
"""

from __future__ import annotations

import asyncio
import csv
import io
import ipaddress
import itertools
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from datetime import time as dt_time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson

from streams.clickhouse.client import connect
from streams.clickhouse.gateway import ClickHouseGateway
from streams.errors import ConfigError, StreamscoreError

if TYPE_CHECKING:
    import faust

    from streams.settings import Settings

log = logging.getLogger("streams.web.query")

PATH = "/sql"
FORMATS = ("json", "csv", "table")
DEFAULT_MAX_ROWS = 1000
MAX_ROWS_LIMIT = 100_000
DEFAULT_TIMEOUT_S = 60.0
MAX_BODY_BYTES = 1024 * 1024

_READ_KEYWORDS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS"})
_PARAMETER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_REQUEST_KEYS = frozenset({"sql", "parameters", "format", "max_rows"})


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


# ---- the pre-check -------------------------------------------------------------------


def _code_tokens(sql: str) -> list[tuple[int, str]]:
    """``(position, token)`` of each word (upper-cased) and mark outside comments and quotes.

    Only ``--`` and non-nested ``/* */`` comments are skipped: text that ClickHouse may
    read as a comment but this does not (``#``, heredocs) is checked as code, so a
    mismatch can only refuse a query, never let a hidden statement through.
    """
    tokens: list[tuple[int, str]] = []
    i, n = 0, len(sql)
    while i < n:
        char = sql[i]
        if char.isspace():
            i += 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            if end < 0:
                raise StreamscoreError(f"unterminated /* comment at character {i}")
            i = end + 2
        elif char in "'\"`":
            j = i + 1
            while j < n:
                if sql[j] == "\\" or sql.startswith(char * 2, j):  # escaped or doubled
                    j += 2
                elif sql[j] == char:
                    break
                else:
                    j += 1
            if j >= n:
                raise StreamscoreError(f"unterminated {char} quote at character {i}")
            tokens.append((i, "<quoted>"))
            i = j + 1
        elif char.isalnum() or char == "_":
            j = i
            while j < n and (sql[j].isalnum() or sql[j] == "_"):
                j += 1
            tokens.append((i, sql[i:j].upper()))
            i = j
        else:
            tokens.append((i, char))
            i += 1
    return tokens


def check_read_only(sql: str) -> str:
    """The one statement in ``sql`` (a trailing ``;`` dropped) if it only reads.

    Raises StreamscoreError naming what was refused. ClickHouse's ``readonly`` setting is
    the enforcement; this keeps statements that setting does not stop away from it.
    """
    tokens = _code_tokens(sql)
    statement = sql
    ends = [pos for pos, mark in tokens if mark == ";"]
    if ends:
        if any(mark != ";" for pos, mark in tokens if pos > ends[0]):
            raise StreamscoreError("one statement at a time: the query holds a ';' mid-way")
        statement = sql[: ends[0]]
        tokens = [(pos, token) for pos, token in tokens if pos < ends[0]]
    if not tokens:
        raise StreamscoreError("the query is empty")
    lead = tokens[0][1]
    if lead not in _READ_KEYWORDS and lead != "(":
        raise StreamscoreError(
            f"read-only: {lead} statements are refused (only SELECT, WITH, SHOW, DESCRIBE, "
            "EXPLAIN and EXISTS; use `streamscore sql --write` on a direct connection)"
        )
    words = [token for _, token in tokens]
    for first, second in itertools.pairwise(words):
        if (first, second) == ("INSERT", "INTO"):
            raise StreamscoreError("read-only: INSERT INTO is refused")
        if (first, second) == ("INTO", "OUTFILE"):
            raise StreamscoreError("read-only: INTO OUTFILE writes a file and is refused")
        if first == "FORMAT" and second != "(":
            raise StreamscoreError(
                'drop the FORMAT clause: choose the output with --format (or "format")'
            )
    return statement.rstrip()


# ---- running -------------------------------------------------------------------------


def read_only_settings(max_rows: int, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """Per-query settings: ClickHouse refuses writes; rows and time are bounded."""
    return {
        "readonly": 2,
        "max_result_rows": max_rows,
        "result_overflow_mode": "break",  # stop at a block boundary, not with an error
        "max_execution_time": timeout_s,
    }


def check_parameters(parameters: Mapping[str, Any] | None) -> dict[str, Any]:
    """Parameter names must be identifiers (``{name:Type}`` or ``%(name)s`` in the SQL)."""
    checked: dict[str, Any] = {}
    for name, value in (parameters or {}).items():
        if not isinstance(name, str) or not _PARAMETER_NAME.match(name):
            raise StreamscoreError(f"parameter name {name!r} is not an identifier")
        checked[name] = value
    return checked


def run_query(
    gateway: ClickHouseGateway,
    sql: str,
    parameters: Mapping[str, Any] | None,
    fmt: str,
    max_rows: int,
    settings: Mapping[str, Any] | None = None,
) -> QueryOutput:
    """Run ``sql`` as given (no read-only check) and shape its first ``max_rows`` rows."""
    if fmt not in FORMATS:
        raise StreamscoreError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    if isinstance(max_rows, bool) or not isinstance(max_rows, int):
        raise StreamscoreError(f"max_rows must be an integer, not {max_rows!r}")
    if not 1 <= max_rows <= MAX_ROWS_LIMIT:
        raise StreamscoreError(f"max_rows must be within 1..{MAX_ROWS_LIMIT}, not {max_rows}")
    started = time.perf_counter()
    result = gateway.query(sql, check_parameters(parameters), settings=settings)
    elapsed_ms = (time.perf_counter() - started) * 1000
    columns = tuple(str(name) for name in result.column_names)
    types = tuple(str(getattr(t, "name", t)) for t in result.column_types)
    rows = [[jsonable(value) for value in row] for row in result.result_rows[: max_rows + 1]]
    truncated = len(rows) > max_rows
    rows = rows[:max_rows]
    return QueryOutput(
        columns=columns,
        types=types,
        rows=rows,
        truncated=truncated,
        elapsed_ms=round(elapsed_ms, 3),
        format=fmt,
        text=render(columns, rows, fmt),
    )


def run_readonly_query(
    gateway: ClickHouseGateway,
    sql: str,
    parameters: Mapping[str, Any] | None = None,
    fmt: str = "json",
    max_rows: int = DEFAULT_MAX_ROWS,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> QueryOutput:
    """Check ``sql`` reads only, run it with ``readonly=2``, shape at most ``max_rows`` rows.

    ``parameters`` go to clickhouse-connect's ``parameters=`` (server-side
    ``{name:Type}`` or client-side ``%(name)s``), never into the SQL text by us.
    Raises StreamscoreError for a refused or malformed query, SinkError when ClickHouse
    fails it (its message says why).
    """
    statement = check_read_only(sql)
    return run_query(
        gateway,
        statement,
        parameters,
        fmt,
        max_rows,
        settings=read_only_settings(max_rows, timeout_s),
    )


def open_readonly_gateway(settings: Settings) -> ClickHouseGateway:
    """A gateway of its own for analysts' queries, read-only for its whole chDB session.

    In the worker it shares the process's chDB engine (one engine per process, any number
    of sessions) but not the sinks' session or lock: an analyst's slow query does not hold
    up scoring, and nothing it runs can change the sinks' session settings.
    """
    client = connect(settings, create_database=False)
    if settings.clickhouse_url.startswith("chdb://"):
        # Session-wide, so every statement is refused writes, not only the last one of a
        # multi-statement query. A server refuses multi-statements itself, and its HTTP
        # sessions expire, so there the per-query readonly=2 is what counts.
        client.command("set readonly = 2")
    return ClickHouseGateway(client, settings.clickhouse_database)


# ---- values and rendering ------------------------------------------------------------


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


# ---- the endpoint --------------------------------------------------------------------


def handle_query_request(
    gateway: Callable[[], ClickHouseGateway], body: bytes
) -> tuple[int, dict[str, Any]]:
    """``POST /sql`` without the web server: ``(HTTP status, JSON answer)``.

    400 for a malformed request, a refused statement or a query ClickHouse failed;
    503 when ClickHouse cannot be opened.
    """
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return 400, {"error": f"the body is not JSON: {exc}"}
    if not isinstance(request, dict):
        return 400, {"error": 'the body must be a JSON object: {"sql": "...", ...}'}
    unknown = sorted(set(request) - _REQUEST_KEYS)
    if unknown:
        return 400, {"error": f"unknown fields {unknown}; known: {sorted(_REQUEST_KEYS)}"}
    sql = request.get("sql")
    if not isinstance(sql, str) or not sql.strip():
        return 400, {"error": '"sql" must be a non-empty string'}
    parameters = request.get("parameters") or {}
    if not isinstance(parameters, dict):
        return 400, {"error": '"parameters" must be an object of name → value'}
    fmt = request.get("format", "json")
    max_rows = request.get("max_rows", DEFAULT_MAX_ROWS)
    try:
        target = gateway()
    except StreamscoreError as exc:
        return 503, {"error": f"ClickHouse is not available: {exc}"}
    try:
        output = run_readonly_query(target, sql, parameters, str(fmt), max_rows)
    except StreamscoreError as exc:
        return 400, {"error": str(exc)}
    return 200, output.to_json()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def register_query_endpoint(app: faust.App, gateway: Callable[[], ClickHouseGateway]) -> None:
    """Serve ``POST /sql`` on the worker's web server; ``gateway()`` is called per request.

    Refuses (ConfigError) unless the web server binds to a loopback address: the
    endpoint has no authentication.
    """
    from faust.web import View

    bind = str(app.conf.web_bind)
    if not _is_loopback(bind):
        raise ConfigError(
            f"the /sql endpoint needs the worker's web server on 127.0.0.1, but it binds "
            f"to {bind!r}: pass web_bind='127.0.0.1' to faust.App"
        )

    class QueryView(View):
        """``POST /sql``: read-only SQL against the worker's ClickHouse."""

        async def post(self, request: Any) -> Any:
            length = request.content_length
            if length is not None and length > MAX_BODY_BYTES:
                status, payload = 413, {"error": f"request body over {MAX_BODY_BYTES} bytes"}
            else:
                body = await self.read_request_content(request)
                try:
                    status, payload = await asyncio.to_thread(handle_query_request, gateway, body)
                except Exception as exc:  # an answer, never a dropped connection
                    log.exception("/sql failed")
                    status, payload = 500, {"error": f"{type(exc).__name__}: {exc}"}
            return self.bytes(orjson.dumps(payload), content_type="application/json", status=status)

    app.page(PATH, name="sql")(QueryView)
