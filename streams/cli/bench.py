"""``streamscore bench``: benchmarks that print numbers (never asserted in tests)."""

from __future__ import annotations

import importlib

import click

from streams.settings import Settings

# Benchmarks owned by other stages register here as "module:command".
_EXTERNAL = {
    "scorer": "streams.bench.scorer:scorer",
    "features": "streams.bench.features:features",
    "e2e": "streams.bench.e2e:e2e",
}


class _BenchGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *_EXTERNAL])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _EXTERNAL:
            module, attribute = _EXTERNAL[cmd_name].split(":")
            try:
                command = getattr(importlib.import_module(module), attribute)
            except (ModuleNotFoundError, AttributeError):
                return None
            assert isinstance(command, click.Command)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=_BenchGroup)
def bench() -> None:
    """Benchmarks. Each prints its numbers; run them on an otherwise idle machine."""


@bench.command()
@click.option("--events", default=300_000, show_default=True, help="Events to pre-load.")
@click.pass_obj
def ingest(settings: Settings, events: int) -> None:
    """Ingestion agent throughput vs a raw confluent-kafka consume+decode ceiling.

    Starts the local broker if this project manages it. Uses fresh bench-* topics
    and deletes them afterwards.
    """
    from streams.bench.ingest import run, validation_rates
    from streams.infra.kafka import LocalKafka

    click.echo("hot-path validation, one core, 20-field transactions:")
    for name, rate in validation_rates(settings).items():
        click.echo(f"  {name:26} {rate:>12,.0f} events/s")

    if settings.manages_local_kafka:
        LocalKafka(settings).up()
    click.echo(f"pre-loading {events:,} events (2% invalid) ...")
    result = run(settings, events)
    click.echo(f"events                       {result.events:>12,}  ({result.invalid:,} invalid)")
    click.echo(f"ceiling: consume+decode      {result.ceiling_eps:>12,.0f} events/s")
    click.echo(f"ingest agent, sustained      {result.agent_sustained_eps:>12,.0f} events/s")
    click.echo(f"ingest agent, incl. start-up {result.agent_wall_eps:>12,.0f} events/s")
    click.echo(f"ratio to ceiling             {result.ratio:>12.2f}")
    click.echo(f"worker peak RSS              {result.worker_peak_rss_mb:>12,.0f} MB")
