"""Build and run a worker process: settings → registry → app with its agents → faust.Worker."""

from __future__ import annotations

import logging

import faust

from streams.agents.ingest import register_ingest_agent
from streams.app import create_app
from streams.kafka import make_admin
from streams.schemas.registry import SchemaRegistry
from streams.settings import Settings
from streams.sinks.handoff import KafkaHandoff
from streams.topics import apply_topics, declared_topics

log = logging.getLogger("streams.worker")


def build_app(settings: Settings) -> faust.App:
    """Load schemas (refusing broken or incompatible ones), declare topics, attach agents."""
    registry = SchemaRegistry.load(settings.schemas_dir)
    report = apply_topics(settings, declared_topics(registry.event_types), make_admin(settings))
    if report.created:
        log.info("created topics: %s", ", ".join(report.created))
    for drift in report.drift:
        log.warning("topic drift: %s", drift)
    app = create_app(settings)
    register_ingest_agent(app, settings, registry, KafkaHandoff(settings))
    return app


def run_worker(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM."""
    app = build_app(settings)
    worker = faust.Worker(app, loglevel=settings.log_level.upper(), quiet=True)
    worker.execute_from_commandline()
