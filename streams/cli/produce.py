"""``streamscore produce``: validate JSON lines and publish them; rejects go to a file."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import BinaryIO

import click
import orjson

from streams.settings import Settings

EXIT_SOME_REJECTED = 2


@click.command()
@click.option("--type", "event_type", help="Event type of every line (else read from each event).")
@click.option(
    "--file", "path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSON Lines file; stdin when omitted.",
)  # fmt: skip
@click.option(
    "--reject-file", type=click.Path(dir_okay=False, path_type=Path),
    help="Where rejected lines go with their reasons [default: <file>.rejects.jsonl, or "
    "rejects-<time>.jsonl for stdin].",
)  # fmt: skip
@click.pass_obj
def produce(
    settings: Settings, event_type: str | None, path: Path | None, reject_file: Path | None
) -> None:
    """Validate each JSON line against its schema and publish the valid ones to Kafka.

    Valid events are keyed by their schema's key field (account_id for transactions)
    with the schema id and version in headers. Invalid lines are not sent: each is
    written to the reject file with its line number, reason and every violation.
    Exits 2 when any line was rejected, so scripts notice.
    """
    from streams.headers import EVENT_TYPE
    from streams.ingest import Accepted, Limits, RawRecord, ingest_record
    from streams.producer import EventProducer
    from streams.schemas.registry import SchemaRegistry

    registry = SchemaRegistry.load(settings.schemas_dir)
    if event_type is not None and event_type not in registry.event_types:
        raise click.BadParameter(
            f"unknown event type {event_type!r}; known: {', '.join(registry.event_types)}",
            param_hint="--type",
        )
    if reject_file is None:
        reject_file = (
            path.with_name(path.name + ".rejects.jsonl")
            if path
            else Path(f"rejects-{time.strftime('%Y%m%dT%H%M%S')}.jsonl")
        )
    limits = Limits(settings.max_payload_bytes, settings.max_nesting_depth)
    headers = [(EVENT_TYPE, event_type.encode())] if event_type else []
    producer = EventProducer(settings, registry)
    rejected = 0
    source: BinaryIO = path.open("rb") if path else sys.stdin.buffer
    rejects: BinaryIO | None = None
    try:
        for number, line in enumerate(source, start=1):
            raw = line.rstrip(b"\r\n")
            if not raw.strip():
                continue
            result = ingest_record(
                RawRecord("file", 0, number, 0, None, raw, headers), registry, limits
            )
            if isinstance(result, Accepted):
                producer.send_accepted(result)
                continue
            rejected += 1
            rejects = rejects or reject_file.open("wb")
            rejects.write(
                orjson.dumps(
                    {
                        "line": number,
                        "reason": result.reason,
                        "message": result.message,
                        "violations": [
                            {"path": v.path, "message": v.message} for v in result.violations
                        ],
                        "raw": raw.decode("utf-8", "backslashreplace"),
                    }
                )
                + b"\n"
            )
        producer.flush()
    finally:
        if path:
            source.close()
        if rejects:
            rejects.close()
    report = producer.report
    click.echo(f"sent {report.delivered}, rejected {rejected}")
    if rejected:
        click.echo(f"rejected lines and reasons: {reject_file}")
        sys.exit(EXIT_SOME_REJECTED)
