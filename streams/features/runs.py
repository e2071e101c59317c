"""The ``feature_runs`` log in ClickHouse: what each nightly run built, and which run is live.

Which run is live when (pure, no I/O: :class:`RunTimeline`, :func:`select_runs`):

* **now** (the live worker): the successful run with the newest nightly date, the newest
  finish among reruns of that date (:func:`latest_run_sql`), reloaded every 30 s;
* **at a past moment t** (``streamscore replay``, as of event time): the same order, over
  the runs that existed at t and do not look past t: ``finished_at <= t`` (the run was
  recorded, so a worker could load it) and ``nightly_date <= t``'s UTC date (features at
  D use only events before D: the point-in-time rule training uses, so a run for a later
  date would leak the future). For an on-time event this is the run the worker served,
  except in the reload gap (up to 30 s plus the load after a run finishes), for an event
  that arrived long after its event time (the worker served the run live on arrival),
  and for a run recorded for a future date (the worker serves it, the rule does not).

Runs are kept for replays (:func:`runs_to_prune`): every successful run whose nightly date
is inside the retention window, the run live at the window's start, and the live run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from streams.clickhouse.client import quote_identifier
from streams.errors import SinkError

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

COLUMNS = (
    "run_id",
    "nightly_date",
    "feature_service",
    "status",
    "started_at",
    "finished_at",
    "rows",
    "durations_s",
    "error",
)


@dataclass(frozen=True, slots=True)
class NightlyRun:
    """One nightly run: ``status`` is ``success`` or ``failed``."""

    run_id: str
    nightly_date: date
    feature_service: str
    status: str
    started_at: datetime
    finished_at: datetime
    rows: dict[str, int] = field(default_factory=dict)
    durations_s: dict[str, float] = field(default_factory=dict)
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "success"


def record_run(client: Client, database: str, run: NightlyRun) -> None:
    """Append ``run`` to ``feature_runs``."""
    row = [
        run.run_id,
        run.nightly_date,
        run.feature_service,
        run.status,
        run.started_at,
        run.finished_at,
        run.rows,
        run.durations_s,
        run.error,
    ]
    try:
        client.insert(f"{quote_identifier(database)}.feature_runs", [row], column_names=COLUMNS)
    except Exception as exc:
        raise SinkError(
            f"cannot record nightly run {run.run_id} in {database}.feature_runs: {exc}"
        ) from exc


def latest_run_sql(database: str) -> str:
    """The query for the live run: the successful one with the newest nightly date (newest
    finish among reruns), its service bound as ``{service:String}``."""
    return (
        f"select {', '.join(COLUMNS)} from {quote_identifier(database)}.feature_runs "  # noqa: S608 - identifiers are checked/declared, values bound
        "where status = 'success' and feature_service = {service:String} "
        "order by nightly_date desc, finished_at desc limit 1"
    )


def history_sql(database: str, *, every_service: bool = False) -> str:
    """Every successful run, oldest first: of the service bound as ``{service:String}``, or
    of every service."""
    service = "" if every_service else "and feature_service = {service:String} "
    return (
        f"select {', '.join(COLUMNS)} from {quote_identifier(database)}.feature_runs "  # noqa: S608 - identifiers are checked/declared, values bound
        f"where status = 'success' {service}"
        "order by nightly_date, finished_at"
    )


def successful_runs(client: Client, database: str, feature_service: str | None) -> list[NightlyRun]:
    """Every successful run of ``feature_service`` (None: of every service), oldest first."""
    try:
        result = client.query(
            history_sql(database, every_service=feature_service is None),
            parameters={"service": feature_service or ""},
        )
    except Exception as exc:
        raise SinkError(f"cannot read {database}.feature_runs: {exc}") from exc
    return [run_from_row(row) for row in result.result_rows]


def latest_successful_run(client: Client, database: str, feature_service: str) -> NightlyRun | None:
    """The successful run with the newest nightly date (newest finish among reruns)."""
    try:
        result = client.query(latest_run_sql(database), parameters={"service": feature_service})
    except Exception as exc:
        raise SinkError(f"cannot read {database}.feature_runs: {exc}") from exc
    return run_from_row(result.result_rows[0]) if result.result_rows else None


def run_from_row(row: Sequence[Any]) -> NightlyRun:
    """A ``feature_runs`` row as ClickHouse returns it or as ``POST /sql`` prints it (dates
    and times as ISO text)."""
    values = dict(zip(COLUMNS, row, strict=True))
    return NightlyRun(
        run_id=str(values["run_id"]),
        nightly_date=_date(values["nightly_date"]),
        feature_service=str(values["feature_service"]),
        status=str(values["status"]),
        started_at=_datetime(values["started_at"]),
        finished_at=_datetime(values["finished_at"]),
        rows={str(k): int(v) for k, v in dict(values["rows"]).items()},
        durations_s={str(k): float(v) for k, v in dict(values["durations_s"]).items()},
        error=str(values["error"]),
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_ms(moment: datetime) -> int:
    """Milliseconds since the epoch; a naive time is UTC (as ClickHouse may return it)."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return (aware - _EPOCH) // timedelta(milliseconds=1)  # exact: no float rounding


def midnight_ms(day: date) -> int:
    """00:00 UTC of ``day``, in epoch milliseconds: when a run for ``day`` may first serve."""
    return epoch_ms(datetime.combine(day, time(0), tzinfo=UTC))


def live_from_ms(run: NightlyRun) -> int:
    """The first moment the as-of rule may pick ``run``: recorded, and on or after its date."""
    return max(epoch_ms(run.finished_at), midnight_ms(run.nightly_date))


def _order(run: NightlyRun) -> tuple[date, int, str]:
    # The live worker's order (newest nightly date, newest finish); the run id only breaks
    # exact ties, so that the choice never depends on the history's order.
    return (run.nightly_date, epoch_ms(run.finished_at), run.run_id)


@dataclass(frozen=True, slots=True)
class RunTimeline:
    """Which successful run is live when: ``runs[i]`` from ``starts_ms[i]`` until the next
    start (the last one ever after). Before ``starts_ms[0]`` no run is live."""

    starts_ms: npt.NDArray[np.int64]
    runs: tuple[NightlyRun, ...]

    @classmethod
    def from_runs(cls, history: Iterable[NightlyRun]) -> RunTimeline:
        """The timeline of ``history``'s successful runs (failed ones are ignored)."""
        pending = sorted((r for r in history if r.ok), key=lambda r: (live_from_ms(r), _order(r)))
        starts: list[int] = []
        runs: list[NightlyRun] = []
        best: tuple[date, int, str] | None = None
        for run in pending:
            key = _order(run)
            if best is not None and key <= best:
                continue  # a run ordered below the one live then is never picked
            best = key
            start = live_from_ms(run)
            if starts and starts[-1] == start:
                runs[-1] = run  # two runs become live at once: the higher one wins
            else:
                starts.append(start)
                runs.append(run)
        return cls(np.array(starts, dtype=np.int64), tuple(runs))

    @property
    def first_live_ms(self) -> int | None:
        """When the first run became live; None for an empty history."""
        return int(self.starts_ms[0]) if len(self.starts_ms) else None

    def at(self, times_ms: npt.ArrayLike) -> npt.NDArray[np.intp]:
        """Per time: the index in :attr:`runs` of the run live then, or -1 (none yet)."""
        times = np.asarray(times_ms, dtype=np.int64)
        return np.searchsorted(self.starts_ms, times, side="right").astype(np.intp) - 1

    def run_at(self, time_ms: int) -> NightlyRun | None:
        index = int(self.at([time_ms])[0])
        return self.runs[index] if index >= 0 else None


def select_runs(times_ms: npt.ArrayLike, history: Iterable[NightlyRun]) -> list[str | None]:
    """Per event time (epoch ms, UTC): the id of the run live then, or None (no run was)."""
    timeline = RunTimeline.from_runs(history)
    return [timeline.runs[i].run_id if i >= 0 else None for i in timeline.at(times_ms).tolist()]


def runs_to_prune(
    history: Iterable[NightlyRun],
    kept: Mapping[str, date],
    today: date,
    retention_days: int,
) -> list[str]:
    """Which of the ``kept`` run exports (run id → its nightly date) to delete, sorted.

    Per feature service, kept: every successful run whose nightly date is within
    ``retention_days`` before ``today``, every run live (as of :class:`RunTimeline`) at
    some time since the window's first midnight (so events at the window's start can be
    replayed), and the live worker's run (the newest), whatever their age. Exports of
    runs not in ``history`` (a failed or killed run) go once their date is outside the
    window.
    """
    if retention_days < 1:
        raise ValueError(f"retention must be at least one day, got {retention_days}")
    cutoff = today - timedelta(days=retention_days)
    by_service: dict[str, list[NightlyRun]] = {}
    for run in history:
        if run.ok:
            by_service.setdefault(run.feature_service, []).append(run)
    keep: set[str] = set()
    for runs in by_service.values():  # each service has its own live run and timeline
        keep.update(r.run_id for r in runs if r.nightly_date >= cutoff)
        timeline = RunTimeline.from_runs(runs)
        first = max(int(timeline.at([midnight_ms(cutoff)])[0]), 0)
        keep.update(r.run_id for r in timeline.runs[first:])  # live at some time in the window
        keep.add(max(runs, key=_order).run_id)
    return sorted(run_id for run_id, day in kept.items() if run_id not in keep and day < cutoff)


def _date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def _datetime(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


__all__ = [
    "COLUMNS",
    "NightlyRun",
    "RunTimeline",
    "epoch_ms",
    "history_sql",
    "latest_run_sql",
    "latest_successful_run",
    "live_from_ms",
    "midnight_ms",
    "record_run",
    "run_from_row",
    "runs_to_prune",
    "select_runs",
    "successful_runs",
]
