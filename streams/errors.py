"""The one exception tree of streamscore.

    StreamscoreError
    ├── ConfigError            settings or a config file is wrong
    ├── SchemaError            a schema file is broken or a new version is incompatible
    │   └── IncompatibleSchemaError
    ├── EventRejected          one event failed validation (carries every violation)
    ├── InfraError             a local service (Kafka broker, Redis) could not start or answer
    ├── KafkaError             the cluster refused or failed an operation
    │   └── DeliveryError      a produced record was not acknowledged
    ├── FeatureError           nightly features could not be built or served
    │   └── FeatureStoreDown   the online store (Redis) did not answer
    ├── ModelError             a model artifact is corrupt, mismatched or cannot load
    ├── SinkError              a sink (ClickHouse, lake) failed to write
    ├── QueryRefused           an analyst's SQL is not one read-only statement, or is not allowed
    │   └── QueryBusy          every read-only query slot is taken; try again
    └── QueryFailed            ClickHouse failed an analyst's query (a limit, an unknown table)

Every message says what was wrong, with which input, and where the data went.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class StreamscoreError(Exception):
    """Base class of every error streamscore raises on purpose."""


class ConfigError(StreamscoreError):
    """Settings or a configuration file is invalid."""


class SchemaError(StreamscoreError):
    """A schema file cannot be loaded or is inconsistent."""


class IncompatibleSchemaError(SchemaError):
    """A new schema version would reject events that the previous version accepted."""


@dataclass(frozen=True, slots=True)
class Violation:
    """One reason an event is invalid: where (JSON path) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class EventRejected(StreamscoreError):
    """An event failed ingestion checks; ``reason`` is a stable machine-readable class."""

    def __init__(
        self,
        reason: str,
        message: str,
        violations: Sequence[Violation] = (),
        schema_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.violations = tuple(violations)
        self.schema_id = schema_id


class InfraError(StreamscoreError):
    """A local service could not be installed, started, reached or stopped."""


class KafkaError(StreamscoreError):
    """The Kafka cluster refused or failed an operation."""


class DeliveryError(KafkaError):
    """A produced record was not acknowledged by the broker."""


class FeatureError(StreamscoreError):
    """Features could not be built, materialised or served."""


class FeatureStoreDown(FeatureError):
    """The online store (Redis) refused the connection, timed out or refused the login."""


class ModelError(StreamscoreError):
    """A model artifact is corrupt, mismatched or cannot be loaded."""


class SinkError(StreamscoreError):
    """A sink failed to write; the batch's offsets were not committed."""


class QueryRefused(StreamscoreError):
    """An analyst's statement was refused before it ran; nothing was read or written."""


class QueryBusy(QueryRefused):
    """Every read-only query slot stayed taken for the whole wait; nothing ran."""


class QueryFailed(StreamscoreError):
    """ClickHouse failed an analyst's query; its message says why. Nothing was written."""
