"""The ingestion agent: raw topics → (valid topic per event type | dead-letter topic).

All logic is in ``streams.ingest`` (pure) and ``streams.sinks.handoff`` (Kafka). This
agent batches, converts faust messages to RawRecords, and awaits the hand-off before
the batch's events are acknowledged (faust's ``take_events`` acks after the body runs).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

import faust

from streams.errors import StreamscoreError
from streams.ingest import Limits, RawRecord, ingest_batch
from streams.schemas.registry import SchemaRegistry
from streams.settings import Settings
from streams.sinks.handoff import KafkaHandoff
from streams.topics import raw_topics

log = logging.getLogger("streams.agents.ingest")

# Exit code when a hand-off fails: the process stops before faust acks the batch, so
# the committed offsets never pass an event that was not delivered.
EXIT_HANDOFF_FAILED = 70


def to_raw_record(message: Any) -> RawRecord:
    """A faust ConsumerMessage as a RawRecord (no copies of the bytes)."""
    headers = message.headers
    if headers is None:
        headers = ()
    elif isinstance(headers, dict):
        headers = tuple(headers.items())
    timestamp = message.timestamp
    return RawRecord(
        message.topic,
        message.partition,
        message.offset,
        int(timestamp * 1000) if timestamp is not None else -1,
        message.key,
        message.value,
        headers,
    )


def register_ingest_agent(
    app: faust.App,
    settings: Settings,
    registry: SchemaRegistry,
    handoff: KafkaHandoff,
) -> Any:
    """Attach the ingestion agent to ``app``; returns the agent."""
    topic = app.topic(
        *raw_topics(settings),
        key_serializer="raw",
        value_serializer="raw",
        allow_empty=True,  # tombstones are dead letters, not crashes
    )
    limits = Limits(settings.max_payload_bytes, settings.max_nesting_depth)
    counts = {"valid": 0, "dead": 0, "batches": 0}

    async def ingest(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        # take_events is public faust API; faust's StreamT protocol just does not list it.
        async for events in stream.take_events(  # type: ignore[attr-defined]
            settings.ingest_batch_size, within=settings.ingest_batch_seconds
        ):
            records: Sequence[RawRecord] = [to_raw_record(e.message) for e in events]
            accepted, dead = ingest_batch(records, registry, limits)
            try:
                await handoff.deliver(accepted, dead)
            except StreamscoreError as exc:
                log.critical("hand-off failed, stopping before offsets move: %s", exc)
                logging.shutdown()
                os._exit(EXIT_HANDOFF_FAILED)
            counts["valid"] += len(accepted)
            counts["dead"] += len(dead)
            counts["batches"] += 1
            if dead:
                log.info(
                    "batch of %d: %d valid, %d to DLQ (%s)",
                    len(records), len(accepted), len(dead),
                    ", ".join(sorted({d.reason for d in dead})),
                )  # fmt: skip
            yield None

    return app.agent(topic, name="ingest", concurrency=1)(ingest)
