"""``streamscore simulate``: live simulated traffic to Kafka or a JSONL file, or a lake history."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING

import click

from streams.simulate.exceptions import SimulationError

if TYPE_CHECKING:
    from streams.settings import Settings
    from streams.simulate.records import SimRecord

_DAYS = re.compile(r"^(?P<n>[1-9][0-9]*)d?$")


def _parse_days(value: str) -> int:
    match = _DAYS.match(value.strip())
    if match is None:
        raise SimulationError(f"--history takes a number of days like 90d, got {value!r}")
    return int(match["n"])


class _Sink:
    """Where records go: a JSONL file or the raw Kafka topics."""

    def __init__(self, settings: Settings, out: Path | None) -> None:
        self._file: IO[bytes] | None = None
        self._producer = None
        if out is not None:
            self._file = out.open("wb")
            return
        # Imported here: the file path must work without Kafka clients installed.
        from streams.producer import EventProducer
        from streams.schemas import SchemaRegistry
        from streams.topics import raw_topic

        self._producer = EventProducer(settings, SchemaRegistry.load(settings.schemas_dir))
        self._raw = raw_topic(settings)
        self._labels = self._producer.topic_for("label")

    def send(self, record: SimRecord) -> None:
        if self._file is not None:
            self._file.write(record.value + b"\n")
            return
        assert self._producer is not None
        # Raw on purpose: invalid records must reach the ingestion worker unjudged.
        topic = self._labels if record.valid and record.event_type == "label" else self._raw
        self._producer.send_raw(record.value, record.key, list(record.headers), topic=topic)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._producer is not None:
            self._producer.flush(60.0)
            self._producer.close()


def _paced(
    records: Iterator[SimRecord], rate: float, count: int | None, duration: float | None
) -> Iterator[SimRecord]:
    started: float | None = None
    for sent, record in enumerate(records):
        # From the first record on, as the live clock does: the first simulated day is
        # drawn before it comes out, and pacing from earlier would send every record early.
        if started is None:
            started = time.monotonic()
        if count is not None and sent >= count:
            return
        now = time.monotonic()
        if duration is not None and now - started >= duration:
            return
        if rate > 0:
            # Pace against the start, not the last send, so the average rate holds.
            delay = started + sent / rate - now
            if delay > 0:
                time.sleep(delay)
        yield record


def _summary(sent: int, seconds: float, counts: Counter[tuple[str, str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"simulated {sent:,} records in {seconds:.1f}s")
    table.add_column("what")
    table.add_column("value")
    table.add_column("records", justify="right")
    for (what, value), n in sorted(counts.items()):
        table.add_row(what, value, f"{n:,}")
    Console(stderr=True).print(table)


@click.command(name="simulate")
@click.option(
    "--count",
    type=click.IntRange(min=1),
    help="Records to produce (default 10,000 unless --duration).",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    help="Stop after this many wall-clock seconds.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Records per second; 0 = as fast as possible.",
)
@click.option("--seed", type=int, default=7, show_default=True, help="Same seed, same records.")
@click.option(
    "--accounts",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="Population size; the history uses the same ids for the same seed and size.",
)
@click.option(
    "--fraud-rate",
    type=click.FloatRange(0, 0.5, max_open=True),
    default=0.005,
    show_default=True,
    help="Share of transactions that are fraud.",
)
@click.option(
    "--invalid-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.01,
    show_default=True,
    help="Share of records that are broken on purpose (schema violations, non-JSON, "
    "non-UTF-8, unknown type, oversize, deep nesting) and must land in the DLQ.",
)
@click.option(
    "--labels/--no-labels",
    default=True,
    show_default=True,
    help="Emit late labels (chargebacks, reports, analyst reviews) at their label time.",
)
@click.option(
    "--clock",
    type=click.Choice(["wall", "simulated"]),
    help="Event times. wall: the population's records stamped on the wall clock at "
    "--rate (a 60 s stream spans 60 s of event time; with --rate 0 each record gets the "
    "time it is made). simulated: the population's own pace from --start (about 0.5 "
    "transactions per account per day). Default: wall when --rate is set, else simulated.",
)
@click.option(
    "--start",
    type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
    help="Where in the population's calendar the stream begins, UTC (default: now). With "
    "--clock simulated also the first record's event time.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write JSONL to this file instead of Kafka: one record value per line. Only "
    "invalid kinds that are valid JSON text are written (no non-JSON or non-UTF-8 "
    "bytes); headers are not kept.",
)
@click.option(
    "--to-kafka",
    is_flag=True,
    help="Send raw records to the raw topics (labels to the label topic), unvalidated, "
    "with schema-id/event-type/schema-version headers. Default without --out.",
)
@click.option(
    "--history",
    "history",
    metavar="DAYS",
    help="Instead of live traffic, write DAYS (e.g. 90d) of transactions and labels "
    "into the lake (STREAMSCORE_LAKE_DIR) and exit.",
)
@click.option(
    "--end-date",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    help="Last day of --history, UTC (default: yesterday).",
)
@click.option(
    "--drift",
    "drift",
    metavar="SPEC",
    help="Inject drift from a known time: amount[:x3][:share=0.5][:at=ISO-TIME], "
    "country[:share=S][:at=T] (new merchant countries) or missing[:share=S][:at=T] "
    "(merchants the nightly run never saw).",
)
@click.pass_context
def simulate(
    ctx: click.Context,
    count: int | None,
    duration: float | None,
    rate: float,
    seed: int,
    accounts: int,
    fraud_rate: float,
    invalid_fraction: float,
    labels: bool,
    clock: str | None,
    start: datetime | None,
    out: Path | None,
    to_kafka: bool,
    history: str | None,
    end_date: datetime | None,
    drift: str | None,
) -> None:
    """Generate realistic, seeded card transactions with fraud and late labels.

    \b
    Live:    streamscore simulate --count 50000 --rate 500          (to Kafka, wall clock)
             streamscore simulate --count 1000 --out events.jsonl   (to a file)
    History: streamscore simulate --history 90d --accounts 100000   (into the lake)

    Fraud scenarios: card testing, account takeover, foreign high amounts, stolen
    cards. The summary counts records by expected ingestion verdict and fraud scenario.
    """
    from rich.progress import Progress

    settings: Settings = ctx.obj
    if history is not None:
        from streams.simulate.history import write_history

        days = _parse_days(history)
        last = end_date.date() if end_date else datetime.now(UTC).date() - timedelta(days=1)
        with Progress(transient=True) as bar:
            task = bar.add_task(f"history {days}d → {settings.lake_url}", total=days)
            report = write_history(
                settings.lake_url, last, days, accounts, seed, fraud_rate,
                progress=lambda done, _: bar.update(task, completed=done),
            )  # fmt: skip
        counts: Counter[tuple[str, str]] = Counter()
        for kind, n in report.rows.items():
            counts[("rows", kind)] = n
        for scenario, n in report.fraud_by_scenario.items():
            counts[("fraud", scenario)] = n
        click.echo(f"lake {report.lake_root}: {report.start_date} .. {report.end_date}")
        _summary(report.total_rows, report.seconds, counts)
        return
    if out is not None and to_kafka:
        raise click.UsageError("--out and --to-kafka are exclusive")
    if count is None and duration is None:
        count = 10_000
    from streams.simulate.drift import DriftInjection
    from streams.simulate.records import SimulationConfig, simulate_records

    live = (clock or ("wall" if rate > 0 else "simulated")) == "wall"
    config = SimulationConfig(
        rate=rate if live else None,
        drift=DriftInjection.parse(drift) if drift else None,
        start=(start.replace(tzinfo=UTC) if start else datetime.now(UTC)),
        accounts=accounts,
        seed=seed,
        fraud_rate=fraud_rate,
        invalid_fraction=invalid_fraction,
        labels=labels,
        text_only=out is not None,
        max_payload_bytes=settings.max_payload_bytes,
        max_nesting_depth=settings.max_nesting_depth,
    )
    sink = _Sink(settings, out)
    counts = Counter()
    sent = 0
    started = time.monotonic()
    try:
        with Progress(transient=True) as bar:
            task = bar.add_task("simulating", total=count if count is not None else duration)
            for record in _paced(simulate_records(config), rate, count, duration):
                sink.send(record)
                sent += 1
                counts[("verdict", record.expected)] += 1
                counts[("type", record.event_type)] += 1
                if record.scenario and record.event_type == "transaction":
                    counts[("fraud", record.scenario)] += 1
                if sent % 500 == 0:
                    done = sent if count is not None else time.monotonic() - started
                    bar.update(task, completed=done)
    finally:
        sink.close()
    _summary(sent, time.monotonic() - started, counts)
