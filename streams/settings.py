"""The one settings object, read from ``STREAMSCORE_*`` environment variables at start-up.

Build it once in the entry point (``Settings()``) and pass it down. Nothing in
streamscore reads the environment anywhere else.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

KAFKA_VERSION = "3.9.2"


def project_root() -> Path:
    """The repository root (the folder holding ``schemas/``, ``features/``, ``dbt_project/``)."""
    return Path(__file__).resolve().parent.parent


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


AGENTS = ("ingest", "score", "dlq", "lake", "labels")


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
        default=0.01, gt=0, description="STREAMSCORE_INGEST_BATCH_SECONDS: max wait per batch."
    )
    worker_id: str = Field(
        default_factory=_default_worker_id, description="STREAMSCORE_WORKER_ID: in DLQ headers."
    )
    agents: str = Field(
        default="dlq,ingest,labels,lake,score",
        description=(
            "STREAMSCORE_AGENTS: comma-separated agents this worker runs (ingest, score, "
            "dlq, labels, lake); run stages in separate processes to scale them independently."
        ),
    )
    score_batch_size: int = Field(
        default=5000, gt=0, description="STREAMSCORE_SCORE_BATCH_SIZE: events per scoring batch."
    )
    score_batch_seconds: float = Field(
        default=0.01,
        gt=0,
        description="STREAMSCORE_SCORE_BATCH_SECONDS: max wait to fill a scoring batch.",
    )
    drift_enabled: bool = Field(
        default=True, description="STREAMSCORE_DRIFT_ENABLED: in-stream drift histograms."
    )
    drift_window_seconds: int = Field(
        default=60,
        gt=0,
        description="STREAMSCORE_DRIFT_WINDOW_SECONDS: tumbling event-time window.",
    )
    drift_lateness_windows: int = Field(
        default=1,
        ge=0,
        description="STREAMSCORE_DRIFT_LATENESS_WINDOWS: windows a partition's clock must "
        "pass a window's end before it closes (later events are counted as late).",
    )
    sink_dedup: bool = Field(
        default=True,
        description=(
            "STREAMSCORE_SINK_DEDUP: idempotent ClickHouse writes (source marks + insert "
            "deduplication tokens). false exists only for the negative-control test."
        ),
    )
    web_port: int = Field(default=6066, description="STREAMSCORE_WEB_PORT: worker web server.")
    web_enabled: bool = Field(default=True, description="STREAMSCORE_WEB_ENABLED.")
    log_level: str = Field(default="info", description="STREAMSCORE_LOG_LEVEL.")
    log_format: Literal["text", "json"] = Field(
        default="text",
        description=(
            "STREAMSCORE_LOG_FORMAT: text (faust's console format) or json (one object per "
            "line with worker_id, batch_id and the event's ids, for a log pipeline)."
        ),
    )

    # Nightly features (dbt + Feast) and the lake.
    lake_dir: str = Field(
        default="",
        description=(
            "STREAMSCORE_LAKE_DIR: event lake root, a local path or any fsspec URL "
            "(default <home>/lake)."
        ),
    )
    dbt_project_dir: Path = Field(
        default_factory=lambda: project_root() / "dbt_project",
        description="STREAMSCORE_DBT_PROJECT_DIR.",
    )
    feature_repo_dir: Path = Field(
        default_factory=lambda: project_root() / "features",
        description="STREAMSCORE_FEATURE_REPO_DIR: the Feast repo.",
    )
    online_store: str = Field(
        default="sqlite", description="STREAMSCORE_ONLINE_STORE: sqlite (default) or redis."
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:16379/0", description="STREAMSCORE_REDIS_URL."
    )
    redis_port: int = Field(default=16379, description="STREAMSCORE_REDIS_PORT: local redis.")
    feature_service: str = Field(
        default="fraud_v1", description="STREAMSCORE_FEATURE_SERVICE: what the model names."
    )
    nightly_cron: str = Field(
        default="",
        description="STREAMSCORE_NIGHTLY_CRON: run nightly in the worker (e.g. 0 2 * * *).",
    )

    # Models and scoring.
    models_dir: Path = Field(
        default_factory=lambda: project_root() / "models",
        description="STREAMSCORE_MODELS_DIR: registry.yaml and ONNX artifacts.",
    )
    providers: str = Field(
        default="auto",
        description="STREAMSCORE_PROVIDERS: auto (CUDA then CPU), cpu, cuda, tensorrt.",
    )
    intra_op_threads: int = Field(
        default=1, ge=0, description="STREAMSCORE_INTRA_OP_THREADS: ONNX Runtime threads."
    )

    # ClickHouse: chDB in-process by default, any server by URL unchanged.
    clickhouse_dsn: str = Field(
        default="",
        description=(
            "STREAMSCORE_CLICKHOUSE_DSN: chdb:///path (default <home>/chdb) or http://host:8123/db."
        ),
    )
    clickhouse_database: str = Field(
        default="streamscore", description="STREAMSCORE_CLICKHOUSE_DATABASE."
    )

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

    @field_validator("agents")
    @classmethod
    def _known_agents(cls, value: str) -> str:
        names = {name.strip() for name in value.split(",") if name.strip()}
        unknown = names - set(AGENTS)
        if not names or unknown:
            raise ValueError(f"agents must name some of: {', '.join(AGENTS)} (got {value!r})")
        return ",".join(sorted(names))

    def to_env(self, **overrides: str) -> dict[str, str]:
        """These settings as ``STREAMSCORE_*`` variables, for a child process (a worker).

        ``worker_id`` is left out: a child is its own worker and names itself.
        """
        env: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None or name == "worker_id":
                continue
            env[f"STREAMSCORE_{name.upper()}"] = (
                str(value).lower() if isinstance(value, bool) else str(value)
            )
        env.update(overrides)
        return env

    @property
    def agent_names(self) -> frozenset[str]:
        """The agents this worker runs."""
        return frozenset(self.agents.split(","))

    @property
    def lake_url(self) -> str:
        """The lake root: STREAMSCORE_LAKE_DIR or <home>/lake."""
        return self.lake_dir or str(self.home / "lake")

    @property
    def clickhouse_url(self) -> str:
        """The ClickHouse DSN: STREAMSCORE_CLICKHOUSE_DSN or chdb:///<home>/chdb."""
        return self.clickhouse_dsn or f"chdb://{self.home / 'chdb'}"

    @property
    def bootstrap_servers(self) -> str:
        """The bootstrap servers every client uses."""
        return self.kafka_bootstrap or f"127.0.0.1:{self.kafka_port}"
