"""Kafka header names streamscore reads and writes, in one place."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DLQ_ERROR_CLASS",
    "DLQ_ERROR_MESSAGE",
    "DLQ_ERROR_PATHS",
    "DLQ_PREFIX",
    "DLQ_SCHEMA_ID",
    "DLQ_SOURCE",
    "DLQ_SOURCE_OFFSET",
    "DLQ_SOURCE_PARTITION",
    "DLQ_SOURCE_TIMESTAMP",
    "DLQ_SOURCE_TOPIC",
    "DLQ_STAGE",
    "DLQ_TIME",
    "DLQ_WORKER_ID",
    "EVENT_TYPE",
    "INGESTED_AT",
    "SCHEMA_ID",
    "SCHEMA_VERSION",
    "SOURCE_OFFSET",
    "SOURCE_PARTITION",
    "SOURCE_TIMESTAMP",
    "SOURCE_TOPIC",
    "VALID_SOURCE",
    "SourceNames",
]

# Set by producers (and kept on the valid hand-off).
SCHEMA_ID = "schema-id"
EVENT_TYPE = "event-type"
SCHEMA_VERSION = "schema-version"

# Added on the valid hand-off: where the event came from, so every downstream
# consumer can deduplicate on (source topic, partition, offset).
SOURCE_TOPIC = "source-topic"
SOURCE_PARTITION = "source-partition"
SOURCE_OFFSET = "source-offset"
SOURCE_TIMESTAMP = "source-timestamp"
INGESTED_AT = "ingested-at"

# Added on dead letters (the original headers are kept before these).
DLQ_PREFIX = "dlq."
DLQ_SOURCE_TOPIC = "dlq.source.topic"
DLQ_SOURCE_PARTITION = "dlq.source.partition"
DLQ_SOURCE_OFFSET = "dlq.source.offset"
DLQ_SOURCE_TIMESTAMP = "dlq.source.timestamp"
DLQ_STAGE = "dlq.stage"
DLQ_ERROR_CLASS = "dlq.error.class"
DLQ_ERROR_MESSAGE = "dlq.error.message"
DLQ_ERROR_PATHS = "dlq.error.paths"
DLQ_SCHEMA_ID = "dlq.schema.id"
DLQ_WORKER_ID = "dlq.worker.id"
DLQ_TIME = "dlq.time"


@dataclass(frozen=True, slots=True)
class SourceNames:
    """The headers one hand-off writes a record's origin under (``streams.records`` codec)."""

    topic: str
    partition: str
    offset: str
    timestamp: str  # the raw record's Kafka timestamp
    handed_off_at: str  # when the hand-off wrote the record


VALID_SOURCE = SourceNames(
    SOURCE_TOPIC, SOURCE_PARTITION, SOURCE_OFFSET, SOURCE_TIMESTAMP, INGESTED_AT
)
DLQ_SOURCE = SourceNames(
    DLQ_SOURCE_TOPIC, DLQ_SOURCE_PARTITION, DLQ_SOURCE_OFFSET, DLQ_SOURCE_TIMESTAMP, DLQ_TIME
)
