"""Build and run a worker process: settings → registry → app with its agents → faust.Worker."""

from __future__ import annotations

import asyncio
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
    if settings.web_enabled:
        register_metrics_endpoint(app, metrics)
        # Analysts' read-only SQL, each query on a read-only session of its own (chDB: same
        # engine, the only way in while this worker holds the data path), for holders of
        # the token this worker writes to <home>/sql.token.
        serve_readonly_sql(app, settings)
    if "ingest" in settings.agent_names:
        register_ingest_agent(app, settings, registry, KafkaHandoff(settings), metrics)
    if "lake" in settings.agent_names:
        register_lake_agent(app, settings, registry)
    if settings.agent_names & {"score", "sink", "dlq", "labels"}:
        # The worker owns ClickHouse (with chDB, no other process may open the data path):
        # one client for the sinks and the read-only /sql endpoint.
        gateway = ClickHouseGateway.open(settings)
        if "dlq" in settings.agent_names:
            register_dlq_agent(app, settings, gateway, metrics)
        if "labels" in settings.agent_names:
            register_labels_agent(app, settings, gateway)
        if "score" in settings.agent_names:
            register_score_agent(app, settings, gateway, metrics=metrics, registry=registry)
        if "sink" in settings.agent_names:
            register_sink_agent(app, settings, gateway, metrics=metrics)
    if settings.nightly_cron:
        # On the leader only: one nightly run per group, not one per worker.
        app.crontab(settings.nightly_cron, on_leader=True)(nightly_job(settings))
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
    level = settings.log_level.upper()
    if settings.log_format == "json":
        config = logging_config(level, settings.worker_id)
        worker = faust.Worker(app, loglevel=level, quiet=True, logging_config=config)
    else:
        worker = faust.Worker(app, loglevel=level, quiet=True)
    worker.execute_from_commandline()
