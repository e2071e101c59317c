"""``streamscore schemas``: list the registry and check examples against it."""

from __future__ import annotations

import click

from streams.settings import Settings


@click.group()
def schemas() -> None:
    """The versioned JSON Schemas in schemas/ (loaded and checked at every start-up)."""


@schemas.command("list")
@click.pass_obj
def list_(settings: Settings) -> None:
    """Every schema: type, version, $id, partition key."""
    from streams.schemas.registry import SchemaRegistry

    for schema in SchemaRegistry.load(settings.schemas_dir).schemas:
        click.echo(f"{schema.label:16} key={schema.key_field:12} {schema.schema_id}")


@schemas.command()
@click.pass_obj
def check(settings: Settings) -> None:
    """Load all schemas (compatibility included) and validate every example."""
    from streams.ingest import Accepted, Limits, RawRecord, ingest_record
    from streams.schemas.registry import SchemaRegistry, load_examples

    registry = SchemaRegistry.load(settings.schemas_dir)
    limits = Limits(settings.max_payload_bytes, settings.max_nesting_depth)
    wrong = 0
    for event_type in registry.event_types:
        for kind in ("valid", "invalid"):
            for name, raw in load_examples(
                settings.schemas_dir / "examples", event_type, kind
            ).items():
                result = ingest_record(RawRecord("example", 0, 0, 0, None, raw), registry, limits)
                ok = isinstance(result, Accepted) == (kind == "valid")
                wrong += not ok
                verdict = "ok " if ok else "BAD"
                why = (
                    ""
                    if isinstance(result, Accepted)
                    else f" ({result.reason}: {result.message[:100]})"
                )
                click.echo(f"{verdict} {event_type}/{kind}/{name}{why}")
    if wrong:
        raise click.ClickException(f"{wrong} examples got the wrong verdict")
    click.echo("all schemas compatible, all examples as expected")
