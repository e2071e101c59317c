"""``streamscore topics``: the declared topics, applied through the AdminClient."""

from __future__ import annotations

import click

from streams.settings import Settings


@click.group()
def topics() -> None:
    """Declared topics (streams/topics.py): list them, create missing ones, report drift."""


@topics.command("list")
@click.pass_obj
def list_(settings: Settings) -> None:
    """Print every declared topic with its partitions, retention and cleanup policy."""
    from streams.schemas.registry import SchemaRegistry
    from streams.topics import declared_topics, topic_name

    registry = SchemaRegistry.load(settings.schemas_dir)
    for spec in declared_topics(registry.event_types):
        days = spec.retention_ms / 86_400_000
        click.echo(
            f"{topic_name(settings, spec):45} partitions={spec.partitions:<3} "
            f"retention={days:g}d cleanup={spec.cleanup_policy}  {spec.description}"
        )


@topics.command()
@click.option("--strict", is_flag=True, help="Exit 2 when any topic drifts from its declaration.")
@click.pass_obj
def apply(settings: Settings, strict: bool) -> None:
    """Create missing topics; report drift between declared and actual config."""
    from streams.kafka import make_admin
    from streams.schemas.registry import SchemaRegistry
    from streams.topics import apply_topics, declared_topics

    registry = SchemaRegistry.load(settings.schemas_dir)
    report = apply_topics(settings, declared_topics(registry.event_types), make_admin(settings))
    for name in report.created:
        click.echo(f"created   {name}")
    for name in report.unchanged:
        click.echo(f"ok        {name}")
    for line in report.drift:
        click.secho(f"drift     {line}", fg="yellow")
    if strict and report.drift:
        raise SystemExit(2)
