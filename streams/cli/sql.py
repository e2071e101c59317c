"""``streamscore sql``: read-only SQL against ClickHouse, through the worker when it holds chDB.

Where it runs and what may run: :mod:`streams.sql.route` and :mod:`streams.sql.statement`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from streams.sql.route import execute

if TYPE_CHECKING:
    from streams.settings import Settings

_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_params(values: Sequence[str]) -> dict[str, str]:
    """``name=value`` pairs → parameters; values stay strings, bound server-side to
    ``{name:Type}`` placeholders (ClickHouse converts them to the type)."""
    params: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not _PARAM_NAME.match(name):
            raise click.BadParameter(
                f"{item!r} is not name=value with an identifier name", param_hint="--param"
            )
        if name in params:
            raise click.BadParameter(f"{name!r} is given twice", param_hint="--param")
        params[name] = value
    return params


@click.command()
@click.argument("query")
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="NAME=VALUE",
    help="A query parameter for a {name:Type} placeholder in the SQL (repeatable).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="table, CSV with a header, or JSON lines.",
)
@click.option(
    "--max-rows",
    type=click.IntRange(1, 100_000),
    default=1000,
    show_default=True,
    help="Print at most this many rows.",
)
@click.option(
    "--write",
    is_flag=True,
    help="Allow writes (DDL, INSERT). Direct connections only, never through the worker.",
)
@click.pass_obj
def sql(
    settings: Settings, query: str, params: tuple[str, ...], fmt: str, max_rows: int, write: bool
) -> None:
    """Run QUERY against ClickHouse: one read-only statement unless --write.

    ClickHouse's own parser decides what QUERY is; its re-formatted text runs on a
    read-only session with fixed limits. On chDB held by a running worker the query goes
    through the worker's /sql endpoint (with the token in STREAMSCORE_HOME/sql.token).
    Unqualified table names resolve in STREAMSCORE_CLICKHOUSE_DATABASE.

    \b
    streamscore sql "select * from streamscore.decisions_per_hour order by hour desc"
    streamscore sql "select * from streamscore.decision_trace(event_id = {id:String})" \\
        --param id=evt-42 --format json
    """
    parameters = parse_params(params)
    output = execute(settings, query, parameters, fmt, max_rows, write=write)
    click.echo(output.text, nl=False)
    if output.truncated:
        click.echo(f"note: showing the first {max_rows} rows (raise --max-rows)", err=True)
