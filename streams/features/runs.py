"""The ``feature_runs`` log in ClickHouse: what each nightly run built, and which run is live."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

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


def _date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def _datetime(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
