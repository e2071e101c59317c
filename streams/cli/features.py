"""``streamscore features``: the feature registry and point-in-time training sets."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click

from streams.settings import Settings


@click.group()
def features() -> None:
    """Feature registry and point-in-time training sets."""


@features.command("list")
@click.option(
    "--service", default=None, help="Feature service (default: STREAMSCORE_FEATURE_SERVICE)."
)
@click.pass_obj
def list_features(settings: Settings, service: str | None) -> None:
    """The service's features in model-input order, with owner, SLA and drift threshold."""
    from rich.console import Console
    from rich.table import Table

    from streams.features.registry import load_feature_service

    spec = load_feature_service(settings, service or settings.feature_service)
    table = Table(title=f"{spec.name}: {len(spec.features)} features")
    for column in ("#", "name", "dtype", "default", "owner", "sla", "drift"):
        table.add_column(column)
    for i, f in enumerate(spec.features):
        table.add_row(
            str(i), f.name, f.dtype, f"{f.default:g}", f.owner, f.sla, f"{f.drift_threshold:g}"
        )
    Console().print(table)


@features.command("training-set")
@click.option(
    "--start", required=True, type=click.DateTime(), help="First event time (UTC), inclusive."
)
@click.option(
    "--end", required=True, type=click.DateTime(), help="Last event time (UTC), exclusive."
)
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Parquet file."
)
@click.pass_obj
def training_set(settings: Settings, start: datetime, end: datetime, out: Path) -> None:
    """Labelled transactions in [start, end) with their point-in-time features."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from streams.features.training import build_training_set

    table = build_training_set(settings, start, end)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out, compression="zstd")
    frauds = pc.sum(table.column("is_fraud")).as_py() or 0
    click.echo(f"{out}: {table.num_rows} rows ({frauds} fraud), {table.num_columns - 3} features")
