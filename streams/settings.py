"""The one settings object, read from ``STREAMSCORE_*`` environment variables at start-up.

Build it once in the entry point (``Settings()``) and pass it down. Nothing in
streamscore reads the environment anywhere else.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_serializer, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.errors import ConfigError
from streams.redact import redact

KAFKA_VERSION = "3.9.2"
# Local node n (from 1) takes the base ports + 10(n-1): 19092/19093, 19102/19103, ...
KAFKA_NODE_PORT_STEP = 10


def project_root() -> Path:
    """The repository root (the folder holding ``schemas/``, ``features/``, ``dbt_project/``)."""
    return Path(__file__).resolve().parent.parent


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


AGENTS = ("ingest", "score", "sink", "dlq", "lake", "labels")

KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
KafkaSaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

_SASL_FIELDS = ("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password")
_SSL_FIELDS = (
    "kafka_ssl_ca_location",
    "kafka_ssl_certificate_location",
    "kafka_ssl_key_location",
    "kafka_ssl_key_password",
)


def _variables(names: tuple[str, ...] | list[str]) -> str:
    return ", ".join(f"STREAMSCORE_{name.upper()}" for name in names)


class Settings(BaseSettings):
    """streamscore configuration. Each field is ``STREAMSCORE_<FIELD>`` in the environment."""

    # hide_input_in_errors: a rejected value may be a DSN or a password, and pydantic
    # would quote it in the ValidationError that the CLI prints.
    model_config = SettingsConfigDict(
        env_prefix="STREAMSCORE_",
        frozen=True,
        extra="forbid",
        validate_default=True,
        hide_input_in_errors=True,
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
    # Kafka security: applied to every client streamscore makes (streams.kafka for
    # confluent-kafka, streams.app for faust's aiokafka). File paths are checked when a
    # client is built, not here: certificates may be mounted after the settings are read.
    kafka_security_protocol: KafkaSecurityProtocol = Field(
        default="PLAINTEXT",
        description=(
            "STREAMSCORE_KAFKA_SECURITY_PROTOCOL: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL "
            "(the local broker speaks PLAINTEXT, or SASL_SSL after `streamscore infra up "
            "--secure`; the others need STREAMSCORE_KAFKA_BOOTSTRAP)."
        ),
    )
    kafka_sasl_mechanism: KafkaSaslMechanism | None = Field(
        default=None,
        description="STREAMSCORE_KAFKA_SASL_MECHANISM: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.",
    )
    kafka_sasl_username: str | None = Field(
        default=None, description="STREAMSCORE_KAFKA_SASL_USERNAME."
    )
    kafka_sasl_password: SecretStr | None = Field(
        default=None, description="STREAMSCORE_KAFKA_SASL_PASSWORD."
    )
    kafka_ssl_ca_location: Path | None = Field(
        default=None,
        description="STREAMSCORE_KAFKA_SSL_CA_LOCATION: CA bundle (PEM) to verify the brokers.",
    )
    kafka_ssl_certificate_location: Path | None = Field(
        default=None,
        description="STREAMSCORE_KAFKA_SSL_CERTIFICATE_LOCATION: client certificate (PEM, mTLS).",
    )
    kafka_ssl_key_location: Path | None = Field(
        default=None,
        description="STREAMSCORE_KAFKA_SSL_KEY_LOCATION: the client certificate's key (PEM).",
    )
    kafka_ssl_key_password: SecretStr | None = Field(
        default=None, description="STREAMSCORE_KAFKA_SSL_KEY_PASSWORD: when the key is encrypted."
    )
    kafka_port: int = Field(default=19092, description="STREAMSCORE_KAFKA_PORT: local broker.")
    kafka_controller_port: int = Field(
        default=19093, description="STREAMSCORE_KAFKA_CONTROLLER_PORT: local KRaft controller."
    )
    kafka_brokers: int = Field(
        default=1,
        ge=1,
        le=9,
        description=(
            "STREAMSCORE_KAFKA_BROKERS: nodes of the local cluster (`streamscore infra up "
            "--brokers`); node n (from 0) listens on STREAMSCORE_KAFKA_PORT + 10n and "
            "STREAMSCORE_KAFKA_CONTROLLER_PORT + 10n. Unused with STREAMSCORE_KAFKA_BOOTSTRAP."
        ),
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
        default="dlq,labels,lake,score,sink",
        description=(
            "STREAMSCORE_AGENTS: comma-separated agents this worker runs (score, sink, dlq, "
            "labels, lake, ingest); run stages in separate processes to scale them "
            "independently. score reads the raw topics, validates, decides on Kafka and "
            "hands valid events off; sink writes its rows to ClickHouse; ingest validates "
            "and hands off without scoring (not together with score, which ingests)."
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
    # Bounded drift cost (streams.monitoring.drift): however far apart a batch's event
    # times are, each partition keeps at most this many windows open, and no event from
    # beyond the wall clock's future limit moves its watermark.
    drift_max_open_windows: int = Field(
        default=4,
        ge=1,
        description="STREAMSCORE_DRIFT_MAX_OPEN_WINDOWS: open drift windows per valid-topic "
        "partition at most (the lateness is capped by it); the oldest closes first.",
    )
    drift_max_future_s: float = Field(
        default=60.0,
        ge=0,
        description="STREAMSCORE_DRIFT_MAX_FUTURE_S: an event time more than this ahead of "
        "the wall clock is scored and counted as future, but neither binned nor allowed "
        "to move its partition's drift watermark.",
    )
    sink_flush_seconds: float = Field(
        default=1.0,
        gt=0,
        description=(
            "STREAMSCORE_SINK_FLUSH_SECONDS: the ClickHouse sink inserts what arrived in this "
            "long (one insert per table per interval at steady state)."
        ),
    )
    sink_max_bytes: int = Field(
        default=64 * 1024 * 1024,
        gt=0,
        description="STREAMSCORE_SINK_MAX_BYTES: … or sooner, once it holds this many bytes.",
    )
    sink_dedup: bool = Field(
        default=True,
        description=(
            "STREAMSCORE_SINK_DEDUP: idempotent ClickHouse writes (source marks + insert "
            "deduplication tokens). false exists only for the negative-control test."
        ),
    )
    web_port: int = Field(default=6066, description="STREAMSCORE_WEB_PORT: worker web server.")
    sql_owner_port: int | None = Field(
        default=None,
        description=(
            "STREAMSCORE_SQL_OWNER_PORT: on chDB, the web port of the process that holds the "
            "data path (the one running the sink); a scoring process without the sink reads "
            "ClickHouse through its POST /sql. Default: STREAMSCORE_WEB_PORT."
        ),
    )
    scorers: int | None = Field(
        default=None,
        ge=0,
        le=64,
        description=(
            "STREAMSCORE_SCORERS: scoring processes `streamscore worker` starts next to one "
            "process for the other stages (sink, DLQ, labels, lake); default: one per CPU "
            "core; 0 runs every stage in one process."
        ),
    )
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
        default="redis://127.0.0.1:16379/0",
        description=(
            "STREAMSCORE_REDIS_URL: redis://[user[:password]@]host:port/db, or rediss:// for TLS."
        ),
    )
    redis_password: SecretStr | None = Field(
        default=None,
        description="STREAMSCORE_REDIS_PASSWORD: instead of a password in the URL.",
    )
    redis_port: int = Field(default=16379, description="STREAMSCORE_REDIS_PORT: local redis.")
    feature_service: str = Field(
        default="fraud_v1", description="STREAMSCORE_FEATURE_SERVICE: what the model names."
    )
    nightly_cron: str = Field(
        default="",
        description="STREAMSCORE_NIGHTLY_CRON: run nightly in the worker (e.g. 0 2 * * *).",
    )
    feature_run_retention_days: int = Field(
        default=90,
        ge=1,
        description=(
            "STREAMSCORE_FEATURE_RUN_RETENTION_DAYS: days each nightly run's served features "
            "are kept under its run id for as-of replays (the nightly job prunes older ones)."
        ),
    )
    feature_reload_s: float = Field(
        default=30.0,
        gt=0,
        description=(
            "STREAMSCORE_FEATURE_RELOAD_S: how often each scoring process checks for a new "
            "nightly run (and a changed model registry) and loads it in the background."
        ),
    )
    feature_switch_delay_s: float = Field(
        default=60.0,
        ge=0,
        description=(
            "STREAMSCORE_FEATURE_SWITCH_DELAY_S: new features take effect this long after the "
            "nightly run finishes (its effective_at), so every scoring process has loaded "
            "them before they apply: each event is scored with the run in effect at its event "
            "time, live and in replays alike. Keep it above STREAMSCORE_FEATURE_RELOAD_S plus "
            "the time a load takes (default: twice the reload interval). A feature service's "
            "first run takes effect at its finish (no worker scores before it)."
        ),
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
    gpu_crossover_rows: int | None = Field(
        default=None,
        ge=1,
        description=(
            "STREAMSCORE_GPU_CROSSOVER_ROWS: with providers=auto and a GPU, batches of at "
            "least this many rows score on the GPU, smaller ones on CPU; unset, auto stays "
            "on CPU. `streamscore bench scorer` measures it (crossover_batch)."
        ),
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
    clickhouse_user: str | None = Field(
        default=None,
        description="STREAMSCORE_CLICKHOUSE_USER: for an http(s) DSN (chDB has no users).",
    )
    clickhouse_password: SecretStr | None = Field(
        default=None,
        description=(
            "STREAMSCORE_CLICKHOUSE_PASSWORD: for an http(s) DSN, instead of a password in the DSN."
        ),
    )

    clickhouse_analyst_user: str | None = Field(
        default=None,
        description=(
            "STREAMSCORE_CLICKHOUSE_ANALYST_USER: on a server, the read-only user that analysts' "
            "queries (streamscore sql, POST /sql, the report) run as; infra/clickhouse ships "
            "one with a constrained profile. Default: the sinks' user."
        ),
    )
    clickhouse_analyst_password: SecretStr | None = Field(
        default=None, description="STREAMSCORE_CLICKHOUSE_ANALYST_PASSWORD."
    )
    sql_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="STREAMSCORE_SQL_TIMEOUT_S: an analyst's query stops after this long.",
    )
    sql_max_memory_bytes: int = Field(
        default=2 * 1024**3,
        gt=0,
        description="STREAMSCORE_SQL_MAX_MEMORY_BYTES: memory one analyst's query may use.",
    )
    sql_concurrency: int = Field(
        default=4,
        gt=0,
        description=(
            "STREAMSCORE_SQL_CONCURRENCY: analysts' queries at once; one more waits up to "
            "10 s for a slot, then is told to try again (HTTP 429)."
        ),
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
        if {"ingest", "score"} <= names:
            raise ValueError(
                "agents: score reads the raw topics and validates itself; with ingest too, "
                "every event would be handed off twice (drop ingest)"
            )
        return ",".join(sorted(names))

    @model_validator(mode="after")
    def _credentials_are_complete(self) -> Settings:
        # ConfigError, not ValueError: pydantic passes it through as it is, so the
        # message is ours and quotes no value.
        protocol = self.kafka_security_protocol
        given = [name for name in (*_SASL_FIELDS, *_SSL_FIELDS) if getattr(self, name) is not None]
        if protocol not in ("PLAINTEXT", "SASL_SSL") and self.manages_local_kafka:
            raise ConfigError(
                f"STREAMSCORE_KAFKA_SECURITY_PROTOCOL={protocol} needs an external cluster "
                "(STREAMSCORE_KAFKA_BOOTSTRAP): the local broker speaks PLAINTEXT only, or "
                "SASL_SSL when started with `streamscore infra up --secure`"
            )
        if protocol.startswith("SASL_"):
            missing = [name for name in _SASL_FIELDS if getattr(self, name) is None]
            if missing:
                raise ConfigError(
                    f"STREAMSCORE_KAFKA_SECURITY_PROTOCOL={protocol} needs "
                    f"{_variables(missing)} (mechanism, user name and password all set)"
                )
        elif unused := [name for name in given if name in _SASL_FIELDS]:
            raise ConfigError(
                f"{_variables(unused)} set but STREAMSCORE_KAFKA_SECURITY_PROTOCOL={protocol} "
                "does not use SASL (use SASL_PLAINTEXT or SASL_SSL)"
            )
        if not protocol.endswith("SSL") and (unused := [n for n in given if n in _SSL_FIELDS]):
            raise ConfigError(
                f"{_variables(unused)} set but STREAMSCORE_KAFKA_SECURITY_PROTOCOL={protocol} "
                "does not use TLS (use SSL or SASL_SSL)"
            )
        certificate = self.kafka_ssl_certificate_location is not None
        if certificate != (self.kafka_ssl_key_location is not None):
            raise ConfigError(
                "STREAMSCORE_KAFKA_SSL_CERTIFICATE_LOCATION and STREAMSCORE_KAFKA_SSL_KEY_LOCATION "
                "go together: a client certificate needs its key"
            )
        if self.kafka_ssl_key_password is not None and self.kafka_ssl_key_location is None:
            raise ConfigError(
                "STREAMSCORE_KAFKA_SSL_KEY_PASSWORD set without STREAMSCORE_KAFKA_SSL_KEY_LOCATION"
            )
        self._check_clickhouse_credentials()
        self._check_redis_credentials()
        return self

    def _check_clickhouse_credentials(self) -> None:
        analyst = (self.clickhouse_analyst_user, self.clickhouse_analyst_password)
        if analyst != (None, None) and not self.clickhouse_url.startswith(("http://", "https://")):
            raise ConfigError(
                "STREAMSCORE_CLICKHOUSE_ANALYST_USER/PASSWORD are for a ClickHouse server "
                "(chDB has no users; its analysts' sessions are read-only by themselves)"
            )
        if self.clickhouse_analyst_password is not None and self.clickhouse_analyst_user is None:
            raise ConfigError(
                "STREAMSCORE_CLICKHOUSE_ANALYST_PASSWORD set without "
                "STREAMSCORE_CLICKHOUSE_ANALYST_USER"
            )
        separate = self.clickhouse_user is not None or self.clickhouse_password is not None
        if not separate:
            return
        url = self.clickhouse_url
        if not url.startswith(("http://", "https://")):
            raise ConfigError(
                "STREAMSCORE_CLICKHOUSE_USER/PASSWORD are for a ClickHouse server: set "
                "STREAMSCORE_CLICKHOUSE_DSN=http(s)://host:port (chDB has no users)"
            )
        if urlsplit(url).username is not None:
            raise ConfigError(
                "STREAMSCORE_CLICKHOUSE_DSN names a user and STREAMSCORE_CLICKHOUSE_USER/PASSWORD "
                "are set too: give the credentials once"
            )

    def _check_redis_credentials(self) -> None:
        if self.redis_password is not None and urlsplit(self.redis_url).password is not None:
            raise ConfigError(
                "STREAMSCORE_REDIS_URL holds a password and STREAMSCORE_REDIS_PASSWORD is set "
                "too: give it once"
            )

    @field_serializer("clickhouse_dsn", "redis_url", "kafka_bootstrap", when_used="json")
    def _mask_urls_in_json(self, value: str | None) -> str | None:
        # As SecretStr fields dump as '**********' in JSON: a JSON dump is for showing.
        return None if value is None else redact(value)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # repr() and str() show DSNs and URLs with their passwords masked (SecretStr
        # fields mask themselves).
        for name, value in super().__repr_args__():
            yield name, redact(value) if isinstance(value, str) else value

    def to_env(self, **overrides: str) -> dict[str, str]:
        """These settings as ``STREAMSCORE_*`` variables, for a child process (a worker).

        Secrets are passed in the clear: the child needs them to connect. ``worker_id``
        is left out: a child is its own worker and names itself.
        """
        env: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None or name == "worker_id":
                continue
            if isinstance(value, SecretStr):
                text = value.get_secret_value()
            elif isinstance(value, bool):
                text = str(value).lower()
            else:
                text = str(value)
            env[f"STREAMSCORE_{name.upper()}"] = text
        env.update(overrides)
        return env

    @property
    def agent_names(self) -> frozenset[str]:
        """The agents this worker runs."""
        return frozenset(self.agents.split(","))

    @property
    def scoring_processes(self) -> int:
        """STREAMSCORE_SCORERS, or one per CPU core when unset."""
        return self.scorers if self.scorers is not None else max(1, os.cpu_count() or 1)

    @property
    def opens_clickhouse(self) -> bool:
        """Whether this process opens ClickHouse itself: always on a server; on chDB (one
        process per data path) only the process running a ClickHouse sink."""
        if not self.clickhouse_url.startswith("chdb://"):
            return True
        return bool(self.agent_names & {"sink", "dlq", "labels"})

    @property
    def lake_url(self) -> str:
        """The lake root: STREAMSCORE_LAKE_DIR or <home>/lake."""
        return self.lake_dir or str(self.home / "lake")

    @property
    def clickhouse_url(self) -> str:
        """The ClickHouse DSN: STREAMSCORE_CLICKHOUSE_DSN or chdb:///<home>/chdb."""
        return self.clickhouse_dsn or f"chdb://{self.home / 'chdb'}"

    def kafka_node_ports(self, node: int) -> tuple[int, int]:
        """The client and controller port of local node ``node`` (from 1)."""
        step = KAFKA_NODE_PORT_STEP * (node - 1)
        return self.kafka_port + step, self.kafka_controller_port + step

    @property
    def bootstrap_servers(self) -> str:
        """The bootstrap servers every client uses: every node of the local cluster, so a
        client starting while one of them is down still finds the others."""
        if self.kafka_bootstrap:
            return self.kafka_bootstrap
        nodes = range(1, self.kafka_brokers + 1)
        return ",".join(f"127.0.0.1:{self.kafka_node_ports(n)[0]}" for n in nodes)
