"""Build and run a worker process: settings → registry → app with its agents → faust.Worker."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable

import faust

from streams.agents.dlq import register_dlq_agent
from streams.agents.ingest import register_ingest_agent
from streams.agents.labels import register_labels_agent
from streams.agents.lake import register_lake_agent
from streams.agents.score import register_score_agent
from streams.agents.sink import register_sink_agent
from streams.app import create_app
from streams.clickhouse.gateway import ClickHouseGateway
from streams.kafka import make_admin
from streams.monitoring.logs import logging_config
from streams.monitoring.metrics import WorkerMetrics, register_metrics_endpoint
from streams.nightly import NightlyRun, run_nightly
from streams.runtime.control import register_control_agent
from streams.schemas.registry import SchemaRegistry
from streams.settings import Settings
from streams.sinks.handoff import KafkaHandoff
from streams.topics import apply_topics, declared_topics
from streams.web.query import serve_readonly_sql

log = logging.getLogger("streams.worker")


def build_app(settings: Settings) -> faust.App:
    """Load schemas (refusing broken or incompatible ones), declare topics, attach agents."""
    registry = SchemaRegistry.load(settings.schemas_dir)
    admin = make_admin(settings)
    report = apply_topics(settings, declared_topics(registry.event_types), admin)
    if report.created:
        log.info("created topics: %s", ", ".join(report.created))
    for drift in report.drift:
        log.warning("topic drift: %s", drift)
    app = create_app(settings, broker_count=len(admin.list_topics(timeout=10).brokers))
    metrics = WorkerMetrics(worker_id=settings.worker_id, app_id=settings.app_id)
    agents = settings.agent_names
    # On chDB only the process running a ClickHouse sink opens the data path (one process
    # may); it serves /sql, and scoring processes without a sink read through it.
    holds = settings.opens_clickhouse and bool(agents & {"score", "sink", "dlq", "labels"})
    if settings.web_enabled:
        register_metrics_endpoint(app, metrics)
        if holds:
            # Analysts' read-only SQL, each query on a read-only session of its own (chDB:
            # same engine, the only way in while this worker holds the data path), for
            # holders of the token this worker writes to <home>/sql.token.
            serve_readonly_sql(app, settings)
    if "ingest" in agents:
        register_ingest_agent(app, settings, registry, KafkaHandoff(settings), metrics)
    if "lake" in agents:
        register_lake_agent(app, settings, registry)
    gateway = ClickHouseGateway.open(settings) if holds else None
    if gateway is not None:
        if "dlq" in agents:
            register_dlq_agent(app, settings, gateway, metrics)
        if "labels" in agents:
            register_labels_agent(app, settings, gateway)
        if "sink" in agents:
            register_sink_agent(app, settings, gateway, metrics=metrics)
    if "score" in agents:
        score = register_score_agent(app, settings, gateway, metrics=metrics, registry=registry)
        # Promotions and rollbacks, broadcast to every process (a group per process).
        register_control_agent(app, settings, score.scoring.on_control)  # type: ignore[attr-defined]
    if settings.nightly_cron:
        # One nightly run per group, not one per worker: on a server, on the leader; on
        # chDB (the run records itself in feature_runs) in the one process holding it.
        on_chdb = settings.clickhouse_url.startswith("chdb://")
        if not on_chdb or gateway is not None:
            job = nightly_job(settings)
            app.crontab(settings.nightly_cron, on_leader=not on_chdb)(job)
    return app


def nightly_job(
    settings: Settings, run: Callable[[Settings], NightlyRun] | None = None
) -> Callable[[], Awaitable[None]]:
    """The worker's nightly crontab: ``run`` in a thread; a failure is logged, never raised.

    By default dbt's and Feast's own output goes to ``<home>/nightly.log``, not into the
    worker's log lines.
    """
    if run is None:

        def run(s: Settings) -> NightlyRun:
            return run_nightly(s, output=s.home / "nightly.log")

    async def nightly() -> None:
        try:
            result = await asyncio.to_thread(run, settings)
        except Exception as exc:  # a failed night must not stop ingestion
            log.error("nightly run failed: %s: %s", type(exc).__name__, exc)
            return
        log.info(
            "nightly run %s for %s: %s (%s)",
            result.run_id, result.nightly_date, result.status, result.durations_s,
        )  # fmt: skip

    return nightly


def run_worker(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM."""
    app = build_app(settings)
    # The stages allocate a few objects per event, and each full collection would walk
    # everything start-up loaded (feature tables, models, schemas): freeze that, and
    # collect the young generation less often.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    level = settings.log_level.upper()
    if settings.log_format == "json":
        config = logging_config(level, settings.worker_id)
        worker = faust.Worker(app, loglevel=level, quiet=True, logging_config=config)
    else:
        worker = faust.Worker(app, loglevel=level, quiet=True)
    worker.execute_from_commandline()
