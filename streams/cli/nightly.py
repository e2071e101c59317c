"""``streamscore nightly``: build, test, apply and materialise the nightly features."""

from __future__ import annotations

from datetime import date, datetime

import click

from streams.settings import Settings


def _parse_date(_: click.Context, __: click.Parameter, value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not a YYYY-MM-DD date") from exc


@click.command()
@click.option(
    "--date", "nightly_date", callback=_parse_date, help="Nightly date D (default: today, UTC)."
)
@click.option(
    "--start", "start_date", callback=_parse_date, help="Backfill the marts from this date to D."
)
@click.pass_obj
def nightly(settings: Settings, nightly_date: date | None, start_date: date | None) -> None:
    """dbt build (with tests) for D → feast apply → materialise D online → record the run.

    Features at D use only events before D. A failing dbt test stops the run before
    anything is materialised and exits non-zero naming the test.
    """
    from rich.console import Console
    from rich.table import Table

    from streams.nightly import run_nightly

    console = Console(stderr=True)
    day = nightly_date or datetime.now().astimezone().date()
    with console.status(f"nightly {day}: starting", spinner="dots") as status:

        def progress(message: str) -> None:
            if message:
                status.update(f"nightly {day}: {message[-100:]}")

        run = run_nightly(settings, day, start_date=start_date, progress=progress)
    table = Table(title=f"nightly {run.nightly_date} · run {run.run_id} · {run.status}")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    for step, seconds in run.durations_s.items():
        table.add_row(step, f"{seconds:.2f}")
    for view, rows in run.rows.items():
        table.add_row(f"rows: {view}", str(rows))
    Console().print(table)
