"""``streamscore replay``: re-score a range of the raw topic by offsets or times, no duplicates,
with the nightly features live at each event's time (``--features current``: today's)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from streams.settings import Settings


def parse_time(value: str | None) -> datetime | None:
    """RFC 3339 / ISO 8601; a naive time is UTC."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def span_request(
    from_offset: str | None,
    from_time: str | None,
    to_offset: str | None,
    to_time: str | None,
    partitions: str | None,
) -> dict[str, Any]:
    """The CLI options as ``resolve_range`` keyword arguments (checked there)."""
    from streams.replay import parse_offsets

    return {
        "from_offsets": parse_offsets(from_offset) if from_offset else None,
        "from_time": parse_time(from_time),
        "to_offsets": parse_offsets(to_offset) if to_offset else None,
        "to_time": parse_time(to_time),
        "partitions": [int(p) for p in partitions.split(",")] if partitions else None,
    }


def open_writable(settings: Settings) -> Any:
    """The ClickHouse gateway for a replay; a clear error if a worker holds the chDB path."""
    from streams.clickhouse.gateway import ClickHouseGateway
    from streams.errors import SinkError
    from streams.sql.route import chdb_lock_holder

    url = settings.clickhouse_url
    if url.startswith("chdb://"):
        holder = chdb_lock_holder(Path(url.removeprefix("chdb://")))
        if holder is not None:
            raise SinkError(
                f"the embedded ClickHouse at {url} is held by process {holder or '?'} (the "
                "worker): chDB allows one process per data path. Stop the worker for the "
                "replay, or run ClickHouse as a server (STREAMSCORE_CLICKHOUSE_DSN=http://...)"
            )
    return ClickHouseGateway.open(settings)


def run_and_report(
    settings: Settings, label: str, run: Callable[[Any, Callable[[int], None]], Any]
) -> None:
    """``run(gateway, progress)`` with a writable gateway and a progress bar, then report."""
    from rich.progress import Progress

    gateway = open_writable(settings)
    try:
        with Progress(transient=True) as bar:
            task = bar.add_task(label, total=None)
            span, counts, run_id = run(gateway, lambda n: bar.advance(task, n))
    finally:
        gateway.close()
    report(span, counts, run_id)


def report(span: Any, counts: Any, run_id: str) -> None:
    click.echo(f"run id              {run_id}")
    click.echo(f"range               {span.describe()}  ({span.size:,} records)")
    click.echo(f"records read        {counts.read:>10,}")
    click.echo(f"events scored       {counts.scored:>10,}")
    click.echo(f"rows written        {counts.rows_written:>10,}")
    click.echo(f"rows already there  {counts.rows_present:>10,}  (skipped: no duplicates)")
    for reason, n in sorted(counts.invalid.items()):
        click.echo(f"invalid: {reason:22}{n:>8,}")
    if counts.undecodable:
        click.echo(f"undecodable         {counts.undecodable:>10,}")
    report_features(counts)


def report_features(counts: Any) -> None:
    """Which feature runs served the replay, and every way it disagrees with the originals."""
    what = "as of event time" if counts.features == "as-of-event-time" else "current (live now)"
    click.echo(f"features            {what}; {counts.snapshots_loaded} run snapshots loaded")
    for run, n in sorted(counts.runs_used.items(), key=lambda item: -item[1]):
        click.echo(f"  feature run {run:32} {n:>10,} events")
    if counts.no_run:
        click.echo(
            f"NOT SCORED          {counts.no_run:>10,} events before the first nightly run was "
            f"live ({counts.first_live or '?'}): no features as of their time"
        )
    for run, n in sorted(counts.run_not_kept.items()):
        click.echo(
            f"NOT SCORED          {n:>10,} events of run {run}: its features were not kept "
            "(pruned past STREAMSCORE_FEATURE_RUN_RETENTION_DAYS, or from before runs kept them)"
        )
    if counts.rows_compared:
        click.echo(
            f"scores changed      {counts.scores_changed:>10,}  of {counts.rows_compared:,} rows "
            "already there (compared, not rewritten)"
        )
    if counts.run_mismatch:
        click.echo(
            f"RUN DIFFERS         {counts.run_mismatch:>10,} events scored with another feature "
            "run than their original rows:"
        )
        top = sorted(counts.run_changed.items(), key=lambda item: -item[1])
        for (was, now), n in top[:10]:
            click.echo(f"  {was or '(none recorded)'} → {now}: {n:,}")
        if len(top) > 10:
            click.echo(f"  … and {len(top) - 10} more pairs")


@click.command()
@click.option("--from-offset", help="Start offsets, PARTITION:OFFSET[,...] (inclusive).")
@click.option("--from-time", help="Start time, ISO 8601 (UTC if no offset).")
@click.option("--to-offset", help="Last offsets, PARTITION:OFFSET[,...] (inclusive).")
@click.option("--to-time", help="End time, ISO 8601 (exclusive). Default: the head now.")
@click.option("--partitions", help="Only these partitions, e.g. 0,3.")
@click.option("--model", help="Score with this model id only (default: the serving set).")
@click.option("--topic", help="Raw topic to replay (default: the events topic).")
@click.option(
    "--features",
    "features",
    type=click.Choice(["as-of-event-time", "current"]),
    default="as-of-event-time",
    show_default=True,
    help="Each event with the nightly run live at its event time, or the run live now.",
)
@click.option(
    "--as-of-event-time",
    "features",
    flag_value="as-of-event-time",
    help="Same as --features as-of-event-time (the default).",
)
@click.pass_obj
def replay(
    settings: Settings,
    from_offset: str | None,
    from_time: str | None,
    to_offset: str | None,
    to_time: str | None,
    partitions: str | None,
    model: str | None,
    topic: str | None,
    features: str,
) -> None:
    """Re-score a range of raw events through a consumer group of its own.

    The live group's offsets do not move. Rows already in ClickHouse for the same event
    and model version are skipped, so running the same replay twice adds nothing and a
    replay with another --model adds one row per event for that model.

    By default each event is scored with the nightly feature run that was live at its
    event time (the run the worker served then, loaded by run id), and compared with its
    original rows: events whose run differs from the original row's, and rows whose
    score changed, are counted. Events before the first run, or whose run's features
    were pruned, are counted and not scored. --features current scores everything with
    the run live now.
    """
    from streams.replay import replay as run_replay
    from streams.topics import raw_topic

    request = span_request(from_offset, from_time, to_offset, to_time, partitions)
    source = topic or raw_topic(settings)
    run_and_report(
        settings,
        "re-scoring",
        lambda gateway, progress: run_replay(
            settings,
            gateway,
            request,
            topic=source,
            model=model,
            features=features,
            progress=progress,
        ),
    )
