"""``streamscore dlq``: look at dead letters and re-drive them once they can pass."""

from __future__ import annotations

import click

from streams.settings import Settings


@click.group()
def dlq() -> None:
    """Dead letters: counts by reason, and re-driving them after a fix."""


@dlq.command("replay")
@click.option("--from-offset", help="DLQ start offsets, PARTITION:OFFSET[,...].")
@click.option("--from-time", help="DLQ start time, ISO 8601 (default: the beginning).")
@click.option("--to-offset", help="Last DLQ offsets, PARTITION:OFFSET[,...] (inclusive).")
@click.option("--to-time", help="End time, ISO 8601 (exclusive). Default: the head now.")
@click.option("--reason", "reasons", multiple=True, help="Only dead letters with this reason.")
@click.option("--model", help="Score with this model id only (default: the serving set).")
@click.pass_obj
def replay(
    settings: Settings,
    from_offset: str | None,
    from_time: str | None,
    to_offset: str | None,
    to_time: str | None,
    reasons: tuple[str, ...],
    model: str | None,
) -> None:
    """Re-validate dead letters against today's schemas; score the ones now valid.

    Predictions keep the events' original raw coordinates, so re-driving twice adds
    nothing. Records still invalid are counted by reason and stay in the DLQ.
    """
    from streams.cli.replay import run_and_report, span_request
    from streams.replay import redrive

    if from_offset is None and from_time is None:
        from_time = "1970-01-01T00:00:00+00:00"  # the whole DLQ
    request = span_request(from_offset, from_time, to_offset, to_time, None)
    run_and_report(
        settings,
        "re-driving",
        lambda gateway, progress: redrive(
            settings, gateway, request, reasons=reasons, model=model, progress=progress
        ),
    )
