"""The one settings object, read from ``STREAMSCORE_*`` environment variables at start-up.

Build it once in the entry point (``Settings()``) and pass it down. Nothing in
streamscore reads the environment anywhere else.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

KAFKA_VERSION = "3.9.2"


def project_root() -> Path:
    """The repository root (the folder holding ``schemas/``, ``features/``, ``dbt_project/``)."""
    return Path(__file__).resolve().parent.parent


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseSettings):
    """streamscore configuration. Each field is ``STREAMSCORE_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMSCORE_", frozen=True, extra="forbid", validate_default=True
    )

    home: Path = Field(
        default_factory=lambda: project_root() / ".streamscore",
        description="STREAMSCORE_HOME: state of local services, lake, chDB data.",
    )
    kafka_bootstrap: str | None = Field(
        default=None,
        description=(
            "STREAMSCORE_KAFKA_BOOTSTRAP: an existing cluster (host:port,...). When set, "
            "streamscore never starts a local broker."
        ),
    )
    kafka_port: int = Field(default=19092, description="STREAMSCORE_KAFKA_PORT: local broker.")
    kafka_controller_port: int = Field(
        default=19093, description="STREAMSCORE_KAFKA_CONTROLLER_PORT: local KRaft controller."
    )
    kafka_heap: str = Field(default="768m", description="STREAMSCORE_KAFKA_HEAP: broker -Xmx.")
    kafka_cache: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "streamscore" / f"kafka-{KAFKA_VERSION}",
        description="STREAMSCORE_KAFKA_CACHE: where the Kafka jars are installed once.",
    )
    topic_prefix: str = Field(
        default="streamscore.", description="STREAMSCORE_TOPIC_PREFIX: prefix of every topic."
    )
    app_id: str = Field(
        default="streamscore", description="STREAMSCORE_APP_ID: faust app id and consumer group."
    )
    schemas_dir: Path = Field(
        default_factory=lambda: project_root() / "schemas",
        description="STREAMSCORE_SCHEMAS_DIR: the versioned JSON Schemas.",
    )
    max_payload_bytes: int = Field(
        default=256 * 1024, gt=0, description="STREAMSCORE_MAX_PAYLOAD_BYTES: larger → DLQ."
    )
    max_nesting_depth: int = Field(
        default=32, gt=0, description="STREAMSCORE_MAX_NESTING_DEPTH: deeper → DLQ."
    )
    ingest_batch_size: int = Field(
        default=2000, gt=0, description="STREAMSCORE_INGEST_BATCH_SIZE: events per batch."
    )
    ingest_batch_seconds: float = Field(
        default=0.05, gt=0, description="STREAMSCORE_INGEST_BATCH_SECONDS: max wait per batch."
    )
    worker_id: str = Field(
        default_factory=_default_worker_id, description="STREAMSCORE_WORKER_ID: in DLQ headers."
    )
    web_port: int = Field(default=6066, description="STREAMSCORE_WEB_PORT: worker web server.")
    web_enabled: bool = Field(default=True, description="STREAMSCORE_WEB_ENABLED.")
    log_level: str = Field(default="info", description="STREAMSCORE_LOG_LEVEL.")

    @field_validator("topic_prefix")
    @classmethod
    def _prefix_is_topic_safe(cls, value: str) -> str:
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        if not set(value) <= allowed:
            raise ValueError(f"topic prefix {value!r} may only hold letters, digits, '.', '_', '-'")
        return value

    @property
    def manages_local_kafka(self) -> bool:
        """True when streamscore owns the broker (no external bootstrap given)."""
        return self.kafka_bootstrap is None

    @property
    def bootstrap_servers(self) -> str:
        """The bootstrap servers every client uses."""
        return self.kafka_bootstrap or f"127.0.0.1:{self.kafka_port}"
