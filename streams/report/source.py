"""Where report and status queries run: ``sql → row dicts``, routed like ``streamscore sql``.

On chDB held by a running worker the query goes through the worker's read-only
``POST /sql``; otherwise it runs directly (read-only). Tests hand in a plain function.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streams.settings import Settings
    from streams.sql import ReadOnlySQL

Rows = Callable[[str, Mapping[str, Any]], list[dict[str, Any]]]
# Aggregates only: no report query returns more rows than this.
MAX_ROWS = 100_000


def settings_rows(settings: Settings, note: Callable[[str], None] | None = None) -> Rows:
    """A :data:`Rows` for ``settings``' ClickHouse; ``note`` hears once that the worker ran it."""
    from streams.sql.route import execute

    told: list[str] = []

    def once(message: str) -> None:
        if not told:
            told.append(message)
            if note is not None:
                note(message)

    def rows(sql: str, parameters: Mapping[str, Any]) -> list[dict[str, Any]]:
        output = execute(settings, sql, parameters, "json", MAX_ROWS, note=once)
        return [dict(zip(output.columns, row, strict=True)) for row in output.rows]

    return rows


def table_exists(rows: Rows, database: str, name: str) -> bool:
    """Whether ``database.name`` is a table or view."""
    found = rows(
        "select count() as n from system.tables "
        "where database = {db:String} and name = {name:String}",
        {"db": database, "name": name},
    )
    return bool(found) and int(found[0]["n"]) > 0


def column_names(rows: Rows, database: str, name: str) -> set[str]:
    """The columns of table or view ``database.name`` (empty when it does not exist)."""
    found = rows(
        "select name from system.columns where database = {db:String} and table = {name:String}",
        {"db": database, "name": name},
    )
    return {str(r["name"]) for r in found}


def readonly_rows(sql: ReadOnlySQL) -> Rows:
    """A :data:`Rows` on the read-only query path (what the worker's /sql runs)."""

    def rows(text: str, parameters: Mapping[str, Any]) -> list[dict[str, Any]]:
        output = sql.query(text, parameters, "json", MAX_ROWS)
        return [dict(zip(output.columns, row, strict=True)) for row in output.rows]

    return rows
