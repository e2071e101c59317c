"""The ingestion agent: raw topics → (valid topic per event type | dead-letter topic).

All logic is in ``streams.records`` and ``streams.ingest`` (pure) and
``streams.sinks.handoff`` (Kafka). This agent turns a consumed batch into RawRecords, runs
``ingest_batch`` and awaits the hand-off's acknowledgements; only then does ``BatchAgent``
store the batch's offsets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import faust
from confluent_kafka import Message

from streams.agents.batching import BatchAgent
from streams.ingest import Limits, ingest_batch
from streams.monitoring.metrics import WorkerMetrics
from streams.records import to_raw_record
from streams.schemas.registry import SchemaRegistry
from streams.settings import Settings
from streams.sinks.handoff import KafkaHandoff
from streams.topics import raw_topics

__all__ = ["EXIT_HANDOFF_FAILED", "register_ingest_agent"]

# Exit code when a hand-off fails: the process stops before the batch's offsets are
# stored, so the committed offsets never pass an event that was not delivered.
EXIT_HANDOFF_FAILED = 70


def register_ingest_agent(
    app: faust.App,
    settings: Settings,
    registry: SchemaRegistry,
    handoff: KafkaHandoff,
    metrics: WorkerMetrics | None = None,
) -> BatchAgent:
    """Attach the ingestion agent to ``app``; returns it."""
    limits = Limits(settings.max_payload_bytes, settings.max_nesting_depth)
    counts = {"valid": 0, "dead": 0}

    async def ingest(messages: Sequence[Message]) -> None:
        records = [to_raw_record(m) for m in messages]
        # Off the event loop: guards, parsing and validation are CPU work (a hostile
        # 256 KiB payload costs the guards about a millisecond), and faust's own
        # heartbeats, web server and timers run on the loop.
        accepted, dead = await asyncio.to_thread(ingest_batch, records, registry, limits)
        await handoff.deliver(accepted, dead)
        counts["valid"] += len(accepted)
        counts["dead"] += len(dead)
        if metrics is not None:
            metrics.count("ingest", "valid", len(accepted))
            metrics.count_dlq("ingest", (d.reason for d in dead))

    agent = BatchAgent(
        settings,
        "ingest",
        raw_topics(settings),
        ingest,
        exit_code=EXIT_HANDOFF_FAILED,
        batch_size=settings.ingest_batch_size,
        batch_seconds=settings.ingest_batch_seconds,
        # A DLQ'd 10 MB payload must still be fetchable.
        consumer_config={"max.partition.fetch.bytes": 16 * 1024 * 1024},
        metrics=metrics,
        loop=app.loop,
        beacon=app.beacon,
    )
    app.add_dependency(agent)  # started and stopped with the app
    return agent
