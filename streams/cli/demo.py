"""``streamscore demo``: the main job end to end on local defaults (see ``streams.demo``)."""

from __future__ import annotations

import os
import signal
import warnings
from types import FrameType
from typing import TYPE_CHECKING

import click
import orjson

from streams.settings import Settings

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


class RichObserver:
    """Progress bars for ``streams.demo``: one line per step, kept when it ends."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: TaskID | None = None

    def begin(self, step: str, description: str, total: float | None = None) -> None:
        self.task = self.progress.add_task(f"{step:8} {description}", total=total)

    def update(self, completed: float) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=completed)

    def end(self) -> None:
        if self.task is not None:
            task = self.progress.tasks[self.task]
            total = task.total if task.total is not None else 1.0
            self.progress.update(self.task, total=total, completed=max(task.completed, total))
            self.progress.stop_task(self.task)
            self.task = None

    def say(self, line: str) -> None:
        self.progress.console.print(line)


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # the same clean-up as Ctrl-C


@click.command()
@click.option("--seconds", default=60.0, show_default=True, help="How long to stream.")
@click.option("--rate", default=1000.0, show_default=True, help="Events/s (0 = flat out).")
@click.option("--events", type=int, default=None, help="Events to stream [rate × seconds].")
@click.option("--accounts", default=5000, show_default=True, help="Simulated accounts.")
@click.option("--history-days", default=90, show_default=True, help="Days of history.")
@click.option("--invalid-fraction", default=0.03, show_default=True, help="Share of bad records.")
@click.option("--shadow/--no-shadow", default=True, show_default=True, help="MLP shadow model.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the summary as one JSON object on stdout (progress goes to stderr).",
)
@click.pass_obj
def demo(
    settings: Settings,
    seconds: float,
    rate: float,
    events: int | None,
    accounts: int,
    history_days: int,
    invalid_fraction: float,
    shadow: bool,
    as_json: bool,
) -> None:
    """History → nightly features → trained models → worker → live stream → summary.

    Starts the local Kafka broker if needed (and the local Redis online store with
    STREAMSCORE_ONLINE_STORE=redis), bootstraps a simulated world in
    STREAMSCORE_HOME (models in <home>/models), streams live transactions with fraud and
    invalid records (event times on the wall clock) through a worker (score, sink, dlq,
    lake), times each decision on the decisions topic, waits until every event is scored
    or dead-lettered, and prints what ClickHouse holds for this run. Stops what it
    started, on Ctrl-C too. Each step's own output (dbt, Feast, Kafka clients) goes to
    <home>/demo-logs/<step>.log; the worker's to <home>/demo-worker.log.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    from streams.demo import DemoConfig, format_summary, run_demo, summary_json

    if rate <= 0 and events is None:
        raise click.BadParameter("--rate 0 (flat out) needs --events", param_hint="--events")
    config = DemoConfig(
        events=events, seconds=seconds, rate=rate, accounts=accounts,
        history_days=history_days, invalid_fraction=invalid_fraction, shadow=shadow,
    )  # fmt: skip
    # dbt, Feast and dask warn about their own dependencies; none of it is actionable here.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    previous = signal.signal(signal.SIGTERM, _sigterm)
    columns = (
        SpinnerColumn(finished_text="✓"),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    logs = settings.home / "demo-logs"
    # The display writes to its own copy of the terminal's descriptor: while a step runs,
    # descriptors 1 and 2 point at that step's log (streams.demo.captured_output).
    terminal = os.fdopen(os.dup(2 if as_json else 1), "w", encoding="utf-8", buffering=1)
    try:
        console = Console(file=terminal)
        with Progress(*columns, console=console, transient=False) as progress:
            summary = run_demo(settings, config, RichObserver(progress), logs=logs)
    finally:
        signal.signal(signal.SIGTERM, previous)
        terminal.close()
    if as_json:
        click.echo(orjson.dumps(summary_json(summary)).decode())
    else:
        click.echo("")
        for line in format_summary(summary):
            click.echo(line)
    if not summary.complete:
        raise click.ClickException(
            f"not every event was scored or dead-lettered within {config.drain_timeout_s:.0f}s; "
            f"see {settings.home / 'demo-worker.log'}"
        )
