"""Analysts' queries: each on a fresh read-only ClickHouse session with limits it cannot lift.

One path for ``streamscore sql``, the worker's ``POST /sql`` and the report. A query gets
a session of its own (about 8 ms on chDB), so a slow query holds only its own slot and a
failed one leaves nothing behind for the next. On chDB the session's limits are set and
then ``readonly = 1`` locks them: ClickHouse refuses any later change, including one the
statement check would have missed. A ClickHouse server gets the same limits with every
query, under ``readonly = 2``; there the analyst user's settings profile (``infra/clickhouse``)
holds them with constraints and grants only ``SELECT`` on the project's database.

Results are streamed block by block and cut (flagged ``truncated``) at ``max_rows`` rows or
:attr:`QueryLimits.max_result_bytes` of JSON; ClickHouse itself stops at ``max_rows + 1``
rows, so a large answer is never produced whole.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from streams.errors import QueryBusy, QueryFailed, QueryRefused
from streams.sql.output import FORMATS, QueryOutput, jsonable, render
from streams.sql.statement import (
    Statement,
    check_parameters,
    check_statement,
    clickhouse_message,
)

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

    from streams.settings import Settings

__all__ = ["DEFAULT_MAX_ROWS", "MAX_ROWS_LIMIT", "QueryLimits", "ReadOnlySQL", "run_unchecked"]

DEFAULT_MAX_ROWS = 1000
MAX_ROWS_LIMIT = 100_000


@dataclass(frozen=True, slots=True)
class QueryLimits:
    """What one analyst's query may use; none of it can be changed by the query."""

    max_execution_s: float = 60.0
    max_memory_bytes: int = 2 * 1024**3
    max_result_bytes: int = 64 * 1024**2  # of JSON rows
    max_rows_to_read: int = 2_000_000_000
    max_bytes_to_read: int = 200 * 1024**3
    concurrency: int = 4  # queries at once; the next waits for a free slot
    wait_s: float = 10.0  # … this long, then QueryBusy

    @classmethod
    def from_settings(cls, settings: Settings) -> QueryLimits:
        """The limits ``STREAMSCORE_SQL_*`` set; the rest at their defaults."""
        return cls(
            max_execution_s=settings.sql_timeout_s,
            max_memory_bytes=settings.sql_max_memory_bytes,
            concurrency=settings.sql_concurrency,
        )

    def session_settings(self, max_rows: int) -> dict[str, Any]:
        """The ClickHouse settings of a session that answers at most ``max_rows`` rows."""
        return {
            "max_execution_time": self.max_execution_s,
            "max_memory_usage": self.max_memory_bytes,
            "max_result_rows": max_rows + 1,
            # The answer is cut at max_result_bytes of JSON as it streams (and flagged as
            # truncated); ClickHouse's own cut, twice that in its native format, only
            # stops a result whose native form is much larger than its JSON.
            "max_result_bytes": 2 * self.max_result_bytes,
            "result_overflow_mode": "break",  # stop at a block boundary, not with an error
            "max_rows_to_read": self.max_rows_to_read,
            "max_bytes_to_read": self.max_bytes_to_read,
            "read_overflow_mode": "throw",
        }


@dataclass
class ReadOnlySQL:
    """Run analysts' SQL read-only against ``settings``' ClickHouse; no I/O until a query.

    ``limits`` default to :meth:`QueryLimits.from_settings`. On a server the queries run as
    ``STREAMSCORE_CLICKHOUSE_ANALYST_USER`` when it is set. ``connect`` opens a new client
    (default: :func:`streams.clickhouse.client.connect`); tests hand in their own.
    """

    settings: Settings
    limits: QueryLimits = field(default_factory=QueryLimits)
    connect: Callable[[], Client] | None = None
    _slots: threading.BoundedSemaphore = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._slots = threading.BoundedSemaphore(self.limits.concurrency)

    @classmethod
    def for_settings(cls, settings: Settings) -> ReadOnlySQL:
        """Limits from ``STREAMSCORE_SQL_*``: what the CLI, the worker and the report use."""
        return cls(settings, QueryLimits.from_settings(settings))

    @property
    def database(self) -> str:
        return self.settings.clickhouse_database

    @property
    def _embedded(self) -> bool:
        return self.settings.clickhouse_url.startswith("chdb://")

    def query(
        self,
        sql: str,
        parameters: Mapping[str, Any] | None = None,
        fmt: str = "json",
        max_rows: int = DEFAULT_MAX_ROWS,
    ) -> QueryOutput:
        """Check ``sql`` with ClickHouse's parser, run its re-formatted text, shape the rows.

        QueryRefused when the statement is not allowed (nothing ran), QueryBusy when no
        slot freed up in time, QueryFailed when ClickHouse failed it (a limit, an unknown
        table), SinkError when ClickHouse cannot be opened.
        """
        _check_request(fmt, max_rows)
        bound = check_parameters(parameters)
        if not self._slots.acquire(timeout=self.limits.wait_s):
            raise QueryBusy(
                f"{self.limits.concurrency} analyst queries are running and none finished "
                f"within {self.limits.wait_s:g} s; try again"
            )
        try:
            # Two sessions: the checks' EXPLAIN subqueries need readonly = 2, and ClickHouse
            # never lowers readonly within a session; the statement runs under readonly = 1.
            with self.session(max_rows, readonly=2) as checker:
                statement = check_statement(checker, sql, bound, self.database)
            with self.session(max_rows, readonly=1) as runner:
                return _run(runner, statement, bound, fmt, max_rows, self.limits.max_result_bytes)
        finally:
            self._slots.release()

    @contextlib.contextmanager
    def session(self, max_rows: int, *, readonly: int) -> Iterator[Client]:
        """A fresh session as a query gets it: the project's database, the limits for
        ``max_rows`` rows, then ``readonly`` (on chDB it locks them); closed on exit."""
        from streams.clickhouse.client import connect, quote_identifier

        client = (
            self.connect()
            if self.connect
            else connect(_analyst(self.settings), create_database=False)
        )
        try:
            # Unqualified names resolve in the project's database; before it exists they
            # resolve elsewhere, and the table check refuses them there.
            with contextlib.suppress(Exception):
                client.command(f"USE {quote_identifier(self.database)}")
            limits = self.limits.session_settings(max_rows)
            if self._embedded:
                for name, value in limits.items():
                    client.command(f"SET {name} = {_literal(value)}")
                client.command(f"SET readonly = {readonly}")  # locks the limits above
            else:
                for name, value in {**limits, "readonly": 2}.items():
                    client.set_client_setting(name, value)
            yield client
        finally:
            client.close()


def _analyst(settings: Settings) -> Settings:
    """``settings`` with the analyst's credentials in place of the sinks' (servers only)."""
    if settings.clickhouse_analyst_user is None:
        return settings
    return settings.model_copy(
        update={
            "clickhouse_user": settings.clickhouse_analyst_user,
            "clickhouse_password": settings.clickhouse_analyst_password,
        }
    )


def _check_request(fmt: str, max_rows: int) -> None:
    if fmt not in FORMATS:
        raise QueryRefused(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    if isinstance(max_rows, bool) or not isinstance(max_rows, int):
        raise QueryRefused(f"max_rows must be an integer, not {max_rows!r}")
    if not 1 <= max_rows <= MAX_ROWS_LIMIT:
        raise QueryRefused(f"max_rows must be within 1..{MAX_ROWS_LIMIT}, not {max_rows}")


def _literal(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return repr(value)


def _run(
    client: Client,
    statement: Statement,
    parameters: Mapping[str, Any],
    fmt: str,
    max_rows: int,
    max_bytes: int,
) -> QueryOutput:
    """Stream the answer, stopping at ``max_rows`` rows or ``max_bytes`` of JSON."""
    if statement.kind != "select":  # EXPLAIN and catalogue answers: small, not streamable
        return run_unchecked(client, statement.text, parameters, fmt, max_rows)
    started = time.perf_counter()
    rows: list[list[Any]] = []
    size, cut = 0, False
    try:
        with client.query_row_block_stream(statement.text, parameters=dict(parameters)) as stream:
            columns = tuple(str(name) for name in stream.source.column_names)
            types = tuple(str(getattr(t, "name", t)) for t in stream.source.column_types)
            for block in stream:
                for row in block:
                    values = [jsonable(value) for value in row]
                    size += len(orjson.dumps(values))
                    if size > max_bytes:
                        cut = True
                        break
                    rows.append(values)
                    if len(rows) > max_rows:
                        break
                if cut or len(rows) > max_rows:
                    break
        if not columns:  # an empty answer streams no header: ask for the shape alone
            shape = client.query(f"DESCRIBE TABLE ({statement.text})", parameters=dict(parameters))
            columns = tuple(str(row[0]) for row in shape.result_rows)
            types = tuple(str(row[1]) for row in shape.result_rows)
    except Exception as exc:
        raise QueryFailed(f"ClickHouse failed the query: {clickhouse_message(exc)}") from exc
    return _output(columns, types, rows, started, fmt, max_rows, cut=cut)


def _output(
    columns: tuple[str, ...],
    types: tuple[str, ...],
    rows: list[list[Any]],
    started: float,
    fmt: str,
    max_rows: int,
    *,
    cut: bool = False,
) -> QueryOutput:
    elapsed_ms = (time.perf_counter() - started) * 1000
    truncated = cut or len(rows) > max_rows
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


def run_unchecked(
    client: Client, sql: str, parameters: Mapping[str, Any], fmt: str, max_rows: int
) -> QueryOutput:
    """``sql`` as given, no read-only check: ``streamscore sql --write`` on a direct client."""
    _check_request(fmt, max_rows)
    started = time.perf_counter()
    try:
        result = client.query(sql, parameters=check_parameters(parameters))
    except Exception as exc:
        raise QueryFailed(f"ClickHouse failed the query: {clickhouse_message(exc)}") from exc
    columns = tuple(str(name) for name in result.column_names)
    types = tuple(str(getattr(t, "name", t)) for t in result.column_types)
    rows = [[jsonable(value) for value in row] for row in result.result_rows[: max_rows + 1]]
    return _output(columns, types, rows, started, fmt, max_rows)
