"""The nightly feature run: dbt build (with tests) → export → feast apply → materialise → record.

``run_nightly(settings, date)`` is what ``streamscore nightly`` and the worker's crontab
call. A failing dbt test stops the run before anything is exported or materialised; every
run, good or bad, is recorded in ClickHouse ``feature_runs``. A successful run takes
effect STREAMSCORE_FEATURE_SWITCH_DELAY_S after it finishes (its ``effective_at``; a
service's first run at its finish): workers load it as soon as it is recorded and score
each event with the run in effect at its event time (``streams.features.runs``), as
``streamscore replay`` does.

Each run keeps what it serves (its nightly date's export of every view) read-only under
its run id (``streams.features.run_exports``): the live worker loads a run by that id, and
``streamscore replay`` reloads the same bytes for events of that run's time, even after a
rerun or a backfill overwrote the dated files Feast reads. A failed run's folder is
removed; after each successful run, runs past ``STREAMSCORE_FEATURE_RUN_RETENTION_DAYS``
(90) are pruned (``runs.runs_to_prune`` says which are kept).

dbt and Feast talk a lot (dbt's run log, Feast's prints, progress bars and log records).
``run_nightly(output=path)`` appends all of it to one file instead of the console, so a
caller with its own display (the demo, a worker's log) keeps it clean; dbt also keeps its
own log under its state folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from streams.errors import FeatureError, StreamscoreError
from streams.features.paths import dbt_state_dir, duckdb_path, export_path
from streams.features.run_exports import (
    discard_run_export,
    keep_run_export,
    prune_run_exports,
)
from streams.features.runs import (
    NightlyRun,
    latest_successful_run,
    record_run,
    successful_runs,
)

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

    from streams.features.registry import ServiceLayout
    from streams.settings import Settings

__all__ = ["NightlyRun", "dbt_environment", "feast_output_to", "run_nightly"]

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


def dbt_environment(settings: Settings) -> dict[str, str]:
    """The environment dbt runs in: profiles.yml reads these (and only these) paths."""
    env = dict(os.environ)  # PATH, HOME, locale; dbt itself needs them
    env.update(
        STREAMSCORE_HOME=str(settings.home),
        STREAMSCORE_LAKE_DIR=settings.lake_url,
        STREAMSCORE_DUCKDB_PATH=str(duckdb_path(settings)),
        DBT_SEND_ANONYMOUS_USAGE_STATS="false",
        DBT_USE_COLORS="false",
    )
    return env


@contextmanager
def feast_output_to(log: TextIO | None) -> Iterator[None]:
    """While it lasts, Feast's own output goes to ``log``: its ``print``s (sys.stdout), its
    tqdm progress bars and warnings (sys.stderr) and the records of the ``feast`` loggers
    (not passed on to the root logger's handlers). ``None`` changes nothing.

    sys.stdout and sys.stderr are process-wide: a print from another thread during these
    steps lands in ``log`` too. Log handlers made earlier keep their own streams.
    """
    if log is None:
        yield
        return
    feast_logger = logging.getLogger("feast")
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    propagate = feast_logger.propagate
    feast_logger.addHandler(handler)
    feast_logger.propagate = False
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            yield
    finally:
        feast_logger.removeHandler(handler)
        feast_logger.propagate = propagate
        log.flush()


def run_nightly(
    settings: Settings,
    nightly_date: date | None = None,
    *,
    start_date: date | None = None,
    client: Client | None = None,
    progress: Progress = _quiet,
    output: Path | None = None,
) -> NightlyRun:
    """Build features as of ``nightly_date`` (default: today, UTC) and make them live.

    ``start_date`` backfills the marts for every date from it to ``nightly_date``; only
    ``nightly_date`` is materialised online. Rerunning a date gives the same features.
    Raises FeatureError (after recording the failed run) when any step fails.

    ``output``: a file that dbt's and Feast's own output is appended to (``progress`` then
    hears only the steps); by default dbt's lines go to ``progress`` and Feast prints.
    """
    with contextlib.ExitStack() as stack:
        log: TextIO | None = None
        if output is not None:
            output.parent.mkdir(parents=True, exist_ok=True)
            log = stack.enter_context(output.open("a", encoding="utf-8"))
        return _run_nightly(settings, nightly_date, start_date, client, progress, log, output)


def _run_nightly(
    settings: Settings,
    nightly_date: date | None,
    start_date: date | None,
    client: Client | None,
    progress: Progress,
    log: TextIO | None,
    output: Path | None,
) -> NightlyRun:
    from streams.clickhouse import apply_migrations, connect
    from streams.features.redis_store import check_reachable, held_runs, materializing
    from streams.features.registry import load_service_layout

    end = nightly_date or datetime.now(UTC).date()
    start = start_date or end
    if start > end:
        raise FeatureError(f"backfill start {start} is after the nightly date {end}")
    run_id = uuid.uuid4().hex
    started = datetime.now(UTC)
    if log is not None:
        log.write(f"--- nightly run {run_id} for {end} (features from {start}), {started}\n")
    durations: dict[str, float] = {}
    rows: dict[str, int] = {}

    @contextmanager
    def step(name: str) -> Iterator[None]:
        progress(f"{name} …")
        began = time.perf_counter()
        try:
            yield
        finally:
            durations[name] = round(time.perf_counter() - began, 3)

    owns_client = client is None
    ch = client if client is not None else connect(settings)
    try:
        apply_migrations(ch, settings.clickhouse_database)
        try:
            layout = load_service_layout(settings, settings.feature_service)
            check_reachable(settings)  # the Redis online store: before dbt's minutes, not after
            with step("dbt_build"):
                _dbt_build(settings, start, end, progress, log)
            with step("export"):
                rows.update(_export(settings, layout, start, end))
                keep_run_export(
                    settings,
                    run_id,
                    end,
                    layout.spec.name,
                    {view.model: export_path(settings, view.model, end) for view in layout.views},
                )
            with step("feast_apply"), feast_output_to(log):
                store = _feast_apply(settings)
            with step("materialize"), feast_output_to(log):
                held = held_runs(settings, layout)  # Redis: what it holds, by its marks
                with materializing(settings, run_id, end, rows):  # Redis: marks, errors named
                    _materialize_bulk(settings, store, layout, end, held)
        except Exception as exc:
            discard_run_export(settings, run_id)  # only successful runs are served or replayed
            message = (
                str(exc) if isinstance(exc, StreamscoreError) else f"{type(exc).__name__}: {exc}"
            )
            where = f"; dbt's and Feast's output is in {output}" if output is not None else ""
            failed = NightlyRun(
                run_id, end, settings.feature_service, "failed", started,
                datetime.now(UTC), rows, durations, message,
            )  # fmt: skip
            record_run(ch, settings.clickhouse_database, failed)
            if isinstance(exc, FeatureError):
                raise FeatureError(
                    f"{exc} (run {run_id} recorded as failed in feature_runs{where})"
                ) from exc
            raise FeatureError(
                f"nightly run {run_id} for {end} failed: {message} "
                f"(recorded as failed in feature_runs{where})"
            ) from exc
        durations["total"] = round((datetime.now(UTC) - started).total_seconds(), 3)
        # Every scoring process loads the run before it takes effect (streams.features.runs);
        # a service's first run has none to switch from (nothing scores before it).
        service = settings.feature_service
        first = latest_successful_run(ch, settings.clickhouse_database, service) is None
        finished = datetime.now(UTC)
        delay = 0.0 if first else settings.feature_switch_delay_s
        effective = finished + timedelta(seconds=delay)
        run = NightlyRun(
            run_id, end, settings.feature_service, "success", started,
            finished, rows, durations, effective_at=effective,
        )  # fmt: skip
        record_run(ch, settings.clickhouse_database, run)
        progress(f"recorded run {run_id}")
        _prune(settings, ch, progress)
        return run
    finally:
        if owns_client:
            ch.close()


def _prune(settings: Settings, client: Client, progress: Progress) -> None:
    """Remove run folders past the retention window; a failure is logged (the run stands)."""
    try:
        history = successful_runs(client, settings.clickhouse_database, None)  # every service
        pruned = prune_run_exports(settings, history)
    except (StreamscoreError, OSError) as exc:
        logging.getLogger("streams.nightly").warning(
            "pruning kept nightly runs failed (they stay on disk): %s", exc
        )
        return
    if pruned:
        progress(f"pruned {len(pruned)} runs older than {settings.feature_run_retention_days} days")


def _dbt_executable() -> str:
    beside = Path(sys.executable).with_name("dbt")
    found = str(beside) if beside.is_file() else shutil.which("dbt")
    if found is None:
        raise FeatureError("dbt is not installed next to this Python nor on PATH")
    return found


def _dbt_build(
    settings: Settings,
    start: date,
    end: date,
    progress: Progress,
    log: TextIO | None = None,
    *,
    extra_vars: dict[str, object] | None = None,
) -> None:
    """``dbt build`` of the feature dates ``start``..``end``; ``extra_vars`` go to dbt too
    (``{"entity_state": False}``: a one-date run recomputes from the windowed events)."""
    state = dbt_state_dir(settings)
    target = state / "target"
    settings.home.mkdir(parents=True, exist_ok=True)
    results = target / "run_results.json"
    results.unlink(missing_ok=True)
    variables = {
        "nightly_date": end.isoformat(),
        "start_date": start.isoformat(),
        "end_date": end.isoformat(),
        **(extra_vars or {}),
    }
    command = [
        _dbt_executable(), "build",
        "--project-dir", str(settings.dbt_project_dir),
        "--profiles-dir", str(settings.dbt_project_dir),
        "--target-path", str(target),
        "--log-path", str(state / "logs"),
        "--vars", json.dumps(variables),
        # unit tests check SQL logic, not data: CI runs them (dbt test --select test_type:unit)
        "--exclude-resource-type", "unit_test",
    ]  # fmt: skip
    lines: list[str] = []

    def hear(line: str) -> None:
        lines.append(line.rstrip())
        if log is not None:
            log.write(line if line.endswith("\n") else line + "\n")
        else:
            progress(line.strip())

    returncode = stream_output(command, dbt_environment(settings), hear)
    if log is not None:
        log.flush()
    if returncode == 0:
        return
    failures = _dbt_failures(results)
    where = f"dbt log: {state / 'logs' / 'dbt.log'}"
    if failures:
        raise FeatureError(
            f"dbt build for {end} failed: {'; '.join(failures)}; nothing was materialised ({where})"
        )
    tail = "\n".join(lines[-15:])
    raise FeatureError(
        f"dbt build for {end} failed (exit {returncode}); "
        f"nothing was materialised ({where}):\n{tail}"
    )


def stream_output(command: list[str], env: dict[str, str], hear: Callable[[str], None]) -> int:
    """Run ``command``, handing each line of its stdout and stderr to ``hear``; its exit code."""
    with subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            hear(line)
    return process.returncode


def _dbt_failures(results: Path) -> list[str]:
    """``test <name> failed (N rows)`` / ``model <name> error: …`` from run_results.json."""
    if not results.is_file():
        return []
    document = json.loads(results.read_text(encoding="utf-8"))
    failures: list[str] = []
    for result in document.get("results", []):
        status = result.get("status")
        if status not in ("fail", "error"):
            continue
        kind, _, name = str(result.get("unique_id", "?")).partition(".")
        name = (
            name.split(".", 1)[-1].rsplit(".", 1)[0] if kind == "test" else name.split(".", 1)[-1]
        )
        if status == "fail":
            failures.append(f"{kind} {name} failed ({result.get('failures')} failing rows)")
        else:
            failures.append(f"{kind} {name} error: {(result.get('message') or '').strip()[:300]}")
    return failures


def _export(settings: Settings, layout: ServiceLayout, start: date, end: date) -> dict[str, int]:
    """Write each view's rows per feature date to Parquet for Feast; return rows at ``end``."""
    import duckdb

    rows: dict[str, int] = {}
    con = duckdb.connect(str(duckdb_path(settings)), read_only=True)
    try:
        con.execute("set TimeZone = 'UTC'")
        day = start
        while day <= end:
            for view in layout.views:
                target = export_path(settings, view.model, day)
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_suffix(".parquet.partial")
                columns = ", ".join(f'"{c}"' for c in view.columns)
                con.execute(
                    f"copy (select {view.join_key}, "  # noqa: S608 - identifiers are checked/declared, values bound
                    "cast(cast(feature_date as timestamp) as timestamptz) as event_timestamp, "
                    f"{columns} from {view.model} where feature_date = date '{day.isoformat()}' "
                    f"order by {view.join_key}) "
                    f"to '{_sql_string(partial)}' (format parquet, compression zstd)"
                )
                partial.replace(target)  # atomic: readers see the old file or the new one
                if day == end:
                    count = con.execute(
                        f"select count(*) from {view.model} where feature_date = ?",  # noqa: S608 - identifiers are checked/declared, values bound
                        [day],
                    ).fetchone()
                    rows[view.name] = int(count[0]) if count else 0
            day += timedelta(days=1)
    finally:
        con.close()
    if rows and all(n == 0 for n in rows.values()):
        raise FeatureError(
            f"no features for {end}: the lake at {settings.lake_url} has no transactions in the "
            "look-back window before that date"
        )
    return rows


def _sql_string(path: Path) -> str:
    return str(path).replace("'", "''")


def _feast_apply(settings: Settings) -> object:
    from streams.features.store import feature_store, load_definitions

    store = feature_store(settings)
    store.apply(load_definitions(settings.feature_repo_dir).objects)
    return store


def _materialize(store: object, layout: ServiceLayout, day: date) -> None:
    # Feature rows are stamped at midnight of their feature date: a window around it holds
    # exactly the rows of ``day``.
    midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
    store.materialize(  # type: ignore[attr-defined]
        start_date=midnight - timedelta(hours=12),
        end_date=midnight + timedelta(hours=12),
        feature_views=[view.name for view in layout.views],
    )


def _materialize_bulk(
    settings: Settings,
    store: object,
    layout: ServiceLayout,
    day: date,
    held: Mapping[str, Path] | None = None,
) -> None:
    """``_materialize`` through the bulk writer (streams.features.bulk_write): the same rows
    in Feast's layout from Feast's registry objects, written in one transaction (SQLite)
    or pipelined batches (Redis) instead of one value at a time; minutes at 1 M entities.
    ``held`` (Redis): per view, the rows its store holds (only the values that differ are
    sent)."""
    from streams.features.bulk_write import materialize_views

    midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
    redis = None
    if settings.online_store == "redis":
        from streams.features.store import redis_client

        redis = redis_client(settings)
    try:
        materialize_views(
            store,  # type: ignore[arg-type]
            [view.name for view in layout.views],
            midnight - timedelta(hours=12),
            midnight + timedelta(hours=12),
            redis=redis,
            held=held,
        )
    finally:
        if redis is not None:
            redis.close()
