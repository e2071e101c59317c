"""The ``feature_runs`` log in ClickHouse: what each nightly run built, and which run is live.

Each successful run takes effect at its ``effective_at``: its finish plus
STREAMSCORE_FEATURE_SWITCH_DELAY_S (60 s), time for every scoring process to load it
first (rows recorded before effective times: their finish). Which run serves an event at
time t is one rule, pure (:class:`RunTimeline`; :func:`select_runs` for a replay), that
the live worker and ``streamscore replay`` both apply to each event's own time:

    among the successful runs with ``effective_at <= t`` whose nightly date is not after
    t's UTC date (features at D use only events before D: the point-in-time rule training
    uses, so a run for a later date would leak the future), the newest nightly date, then
    the newest ``effective_at`` among reruns of that date.

The live worker reads the newest few runs (:func:`recent_runs_sql`), loads each as soon as
it is recorded, before it takes effect, and keeps the one in effect before it
(:func:`hold_from`), so a batch straddling the switch, and a late event from before it,
are scored as a replay scores them. The rule over the newest runs only is the rule over
the whole history from their first start on (every one of them outranks every older one).

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
    "effective_at",  # migration 0010; a row recorded before it reads its finished_at
)


@dataclass(frozen=True, slots=True)
class NightlyRun:
    """One nightly run: ``status`` is ``success`` or ``failed``. ``effective_at``: when
    its features take effect (None: at its finish, as runs recorded before it)."""

    run_id: str
    nightly_date: date
    feature_service: str
    status: str
    started_at: datetime
    finished_at: datetime
    rows: dict[str, int] = field(default_factory=dict)
    durations_s: dict[str, float] = field(default_factory=dict)
    error: str = ""
    effective_at: datetime | None = None

    @property
    def ok(self) -> bool:
        return self.status == "success"

    @property
    def effective(self) -> datetime:
        """When the run's features take effect: ``effective_at``, or its finish."""
        return self.finished_at if self.effective_at is None else self.effective_at


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
        run.effective,
    ]
    try:
        client.insert(f"{quote_identifier(database)}.feature_runs", [row], column_names=COLUMNS)
    except Exception as exc:
        raise SinkError(
            f"cannot record nightly run {run.run_id} in {database}.feature_runs: {exc}"
        ) from exc


RECENT_RUNS = 8  # runs a scoring process reads at each reload (it holds two or three)


def latest_run_sql(database: str) -> str:
    """The query for the newest run: the successful one with the newest nightly date
    (newest ``effective_at`` among reruns), its service bound as ``{service:String}``."""
    return recent_runs_sql(database, 1)


def recent_runs_sql(database: str, limit: int = RECENT_RUNS) -> str:
    """The ``limit`` newest successful runs in the rule's order (newest nightly date, then
    newest ``effective_at``), newest first, their service bound as ``{service:String}``."""
    if limit < 1:
        raise ValueError(f"read at least one run, not {limit}")
    return (
        f"select {', '.join(COLUMNS)} from {quote_identifier(database)}.feature_runs "  # noqa: S608 - identifiers are checked/declared, values bound
        "where status = 'success' and feature_service = {service:String} "
        f"order by nightly_date desc, effective_at desc, run_id desc limit {int(limit)}"
    )


def history_sql(database: str, *, every_service: bool = False) -> str:
    """Every successful run, oldest first: of the service bound as ``{service:String}``, or
    of every service."""
    service = "" if every_service else "and feature_service = {service:String} "
    return (
        f"select {', '.join(COLUMNS)} from {quote_identifier(database)}.feature_runs "  # noqa: S608 - identifiers are checked/declared, values bound
        f"where status = 'success' {service}"
        "order by nightly_date, effective_at"
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
    """The successful run with the newest nightly date (newest ``effective_at`` among
    reruns), whether or not it is in effect yet."""
    try:
        result = client.query(latest_run_sql(database), parameters={"service": feature_service})
    except Exception as exc:
        raise SinkError(f"cannot read {database}.feature_runs: {exc}") from exc
    return run_from_row(result.result_rows[0]) if result.result_rows else None


def run_from_row(row: Sequence[Any]) -> NightlyRun:
    """A ``feature_runs`` row as ClickHouse returns it or as ``POST /sql`` prints it (dates
    and times as ISO text); one without ``effective_at`` (selected by an older query) takes
    effect at its finish."""
    if len(row) not in (len(COLUMNS), len(COLUMNS) - 1):
        raise ValueError(f"a feature_runs row has {len(COLUMNS)} columns, not {len(row)}")
    values = dict(zip(COLUMNS, row, strict=False))
    effective = values.get("effective_at")
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
        effective_at=None if effective is None else _datetime(effective),
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_ms(moment: datetime) -> int:
    """Milliseconds since the epoch; a naive time is UTC (as ClickHouse may return it)."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return (aware - _EPOCH) // timedelta(milliseconds=1)  # exact: no float rounding


def midnight_ms(day: date) -> int:
    """00:00 UTC of ``day``, in epoch milliseconds: when a run for ``day`` may first serve."""
    return epoch_ms(datetime.combine(day, time(0), tzinfo=UTC))


def effective_ms(run: NightlyRun) -> int:
    """When ``run`` takes effect, in epoch milliseconds."""
    return epoch_ms(run.effective)


def live_from_ms(run: NightlyRun) -> int:
    """The first moment the rule may pick ``run``: in effect, and on or after its date."""
    return max(effective_ms(run), midnight_ms(run.nightly_date))


def _order(run: NightlyRun) -> tuple[date, int, str]:
    # The rule's order (newest nightly date, newest effective_at); the run id only breaks
    # exact ties, so that the choice never depends on the history's order.
    return (run.nightly_date, effective_ms(run), run.run_id)


def live_index(starts_ms: npt.NDArray[np.int64], times_ms: npt.ArrayLike) -> npt.NDArray[np.intp]:
    """Per time: the index of the last start at or before it (-1 before the first), i.e.
    which run of a timeline (:class:`RunTimeline`, or the tail a worker holds) serves it."""
    times = np.asarray(times_ms, dtype=np.int64)
    return np.searchsorted(starts_ms, times, side="right").astype(np.intp) - 1


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
        return live_index(self.starts_ms, times_ms)

    def run_at(self, time_ms: int) -> NightlyRun | None:
        index = int(self.at([time_ms])[0])
        return self.runs[index] if index >= 0 else None

    def tail(self, first: int) -> RunTimeline:
        """The timeline from ``runs[first]`` on (what a scoring process holds): the same
        choice as this one, shifted by ``first``, at every time from its first start on;
        -1 before that."""
        return RunTimeline(self.starts_ms[first:], self.runs[first:])


def hold_from(timeline: RunTimeline, now_ms: int) -> int:
    """The first run of ``timeline`` a scoring process holds at ``now_ms``: the one in
    effect before the run live now (it serves late events from before the switch), so
    it holds that one, the live run and any run waiting for its start; 0 when no run is
    live yet."""
    return max(int(timeline.at([now_ms])[0]) - 1, 0)


def select_runs(times_ms: npt.ArrayLike, history: Iterable[NightlyRun]) -> list[str | None]:
    """Per event time (epoch ms, UTC): the id of the run in effect then (the module's
    rule, as :class:`RunTimeline` applies it), or None (no run was)."""
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
    "RECENT_RUNS",
    "NightlyRun",
    "RunTimeline",
    "effective_ms",
    "epoch_ms",
    "history_sql",
    "hold_from",
    "latest_run_sql",
    "latest_successful_run",
    "live_from_ms",
    "live_index",
    "midnight_ms",
    "recent_runs_sql",
    "record_run",
    "run_from_row",
    "runs_to_prune",
    "select_runs",
    "successful_runs",
]
