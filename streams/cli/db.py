"""``streamscore db``: apply ClickHouse migrations, list tables and views."""

from __future__ import annotations

from pathlib import Path

import click

from streams.errors import SinkError, StreamscoreError
from streams.settings import Settings

_TABLES_SQL = """
select
    name,
    if(engine like '%View', 'view', 'table') as kind,
    engine,
    if(total_rows is null, '-', toString(total_rows)) as rows
from system.tables
where database = {database:String}
order by kind, name
"""


@click.group()
def db() -> None:
    """ClickHouse: apply migrations, list tables and views."""


@db.command()
@click.pass_obj
def migrate(settings: Settings) -> None:
    """Apply the migrations the database lacks (idempotent).

    The worker applies them too when it starts; on chDB only one process can open the
    data, so run this while no worker runs (or restart the worker instead).
    """
    from streams.clickhouse.client import connect
    from streams.clickhouse.migrations import apply_migrations, load_migrations
    from streams.sql.route import chdb_lock_holder

    url = settings.clickhouse_url
    path = Path(url.removeprefix("chdb://")) if url.startswith("chdb://") else None
    if path is not None and (holder := chdb_lock_holder(path)) is not None:
        raise StreamscoreError(_locked_message(path, holder))
    names = {m.version: f"{m.version:04d}_{m.name}" for m in load_migrations()}
    try:
        client = connect(settings)
    except SinkError as exc:
        if path is not None and (holder := chdb_lock_holder(path)) is not None:
            raise StreamscoreError(_locked_message(path, holder)) from exc  # lost a race
        raise
    try:
        applied = apply_migrations(client, settings.clickhouse_database)
    finally:
        client.close()
    database = settings.clickhouse_database
    if not applied:
        latest = max(names) if names else 0
        click.echo(f"{database}: up to date (latest {names.get(latest, 'none')})")
        return
    for version in applied:
        click.echo(f"{database}: applied {names[version]}")


def _locked_message(path: Path, holder: int) -> str:
    who = f"PID {holder}" if holder else "another process"
    return (
        f"chDB at {path} is held by {who} (a running `streamscore worker`?), and chDB lets "
        "one process open it. The worker applies pending migrations when it starts: "
        "restart it to apply new ones, or stop it and run `streamscore db migrate`."
    )


@db.command()
@click.pass_obj
def tables(settings: Settings) -> None:
    """Tables and views in the database, with stored row counts (before merges fold
    replaced rows: count with FINAL for exact numbers). Goes through the worker when it
    holds chDB."""
    from streams.sql.route import execute

    output = execute(
        settings,
        _TABLES_SQL,
        {"database": settings.clickhouse_database},
        "table",
        10_000,
    )
    if not output.rows:
        click.echo(
            f"no tables in {settings.clickhouse_database} yet: run `streamscore db migrate` "
            "(or start the worker, which applies migrations)"
        )
        return
    click.echo(output.text, nl=False)
