"""``streamscore report``: a self-contained HTML report of the last hours of scoring."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from streams.settings import Settings

_DURATION = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str) -> timedelta:
    """``90m``, ``24h``, ``7d`` or ``2w`` → a timedelta."""
    match = _DURATION.match(text)
    if match is None or int(match.group(1)) == 0:
        raise click.BadParameter(
            f"{text!r} is not a positive duration like 30m, 24h, 7d or 2w", param_hint="--since"
        )
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


@click.command()
@click.option("--since", default="24h", show_default=True, help="How far back: 30m, 24h, 7d, 2w.")
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("report.html"),
    show_default=True,
    help="Where to write the HTML file.",
)
@click.pass_obj
def report(settings: Settings, since: str, out: Path) -> None:
    """Write an HTML report: scores vs the training baseline, decisions per hour, latency
    percentiles, champion vs challengers and PSI over time (when drift_stats exists).

    One file with inline CSS and SVG: mail it, open it offline. On chDB held by a running
    worker the queries go through the worker's read-only /sql endpoint.
    """
    from streams.report import collect, render_html
    from streams.report.labels import span_label
    from streams.report.source import settings_rows

    end = datetime.now(UTC)
    start = end - parse_since(since)
    rows = settings_rows(settings, note=lambda message: click.echo(message, err=True))
    data = collect(rows, settings.clickhouse_database, settings.models_dir, start, end)
    out.write_text(render_html(data, generated=end), encoding="utf-8")
    click.echo(f"wrote {out} ({data.events:,} events, {span_label(start, end)})")
