"""``streamscore demo``: the main job end to end on local defaults."""

from __future__ import annotations

import click

from streams.settings import Settings


@click.command()
@click.option("--events", default=20_000, show_default=True, help="Events to simulate.")
@click.option("--invalid-fraction", default=0.03, show_default=True, help="Share of bad records.")
@click.option("--rate", default=0.0, show_default=True, help="Events/s (0 = as fast as possible).")
@click.pass_obj
def demo(settings: Settings, events: int, invalid_fraction: float, rate: float) -> None:
    """Broker up, topics, simulated stream with fraud and invalid events, worker, summary.

    Starts the local Kafka broker if needed and stops what it started.
    """
    from streams.demo import run_demo

    summary = run_demo(settings, events, invalid_fraction, rate, say=click.echo)
    click.echo("")
    click.echo(f"events produced        {summary.produced:>8,}")
    click.echo(f"valid → hand-off topic {summary.valid:>8,}  (expected {summary.expected_valid:,})")
    total_dead, expected_dead = sum(summary.dead.values()), sum(summary.expected_dead.values())
    click.echo(f"invalid → DLQ          {total_dead:>8,}  (expected {expected_dead:,})")
    for reason, count in summary.dead.most_common():
        click.echo(f"  {reason:22}{count:>8,}  (expected {summary.expected_dead[reason]:,})")
    click.echo(f"took {summary.seconds:.1f}s")
    if not summary.complete:
        raise click.ClickException("not every event reached its topic in time; see demo-worker.log")
