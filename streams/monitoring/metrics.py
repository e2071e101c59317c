"""Prometheus metrics of one worker: events by outcome, stage latencies, batch sizes, lag, drift.

A :class:`WorkerMetrics` owns its own ``CollectorRegistry`` (never the global default),
so a test can build as many as it likes. Agents call it once per batch, never per event:
per-event latencies arrive as one array and are bucketed with numpy
(:class:`BulkHistogram`), and consumer lag is read from librdkafka's local state
(position and the cached high watermark), not from the broker, at most once a second.
``register_metrics_endpoint`` serves ``GET /metrics`` on the worker's web server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import ArrayLike
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    import faust

__all__ = [
    "BATCH_STAGES",
    "LATENCY_BUCKETS",
    "LATENCY_STAGES",
    "OUTCOMES",
    "BulkHistogram",
    "NodePlacement",
    "ServedFeatures",
    "WorkerMetrics",
    "consumer_lag",
    "register_metrics_endpoint",
]

PATH = "/metrics"
# The text format every Prometheus server scrapes (generate_latest writes it).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

# Agents (BatchAgent names): batch sizes and events by outcome are labelled with these.
BATCH_STAGES = ("ingest", "score", "sink", "dlq", "labels", "lake")
# streamscore_stage_seconds: a whole batch is labelled with its agent (BATCH_STAGES, via
# observe_batch), the timed steps inside one with these. The last two are per-event
# latencies (streamscore_event_latency_seconds, via observe_latency).
LATENCY_STAGES = (
    "feature_lookup",
    "model",
    "sink_insert",  # the sink stage's ClickHouse insert (off the decision path)
    "produce_flush",  # predictions/review produce + flush, awaited
    "dlq_insert",
    "end_to_end",  # per event: raw record produced → scored (an array per batch)
    "queue",  # per event: ingested → picked up by the scorer
)
OUTCOMES = (
    "valid", "scored", "dlq", "review", "copies_dropped", "undecodable", "stored", "rows",
    "late", "future",
)  # fmt: skip

# 0.5 ms … 60 s: a model call on a batch is milliseconds, end to end is up to seconds.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10_000, 20_000)
LAG_INTERVAL_S = 1.0


class BulkHistogram(Collector):
    """A labelled Prometheus histogram that takes a whole array per call.

    ``prometheus_client.Histogram.observe`` costs about a microsecond per value under a
    lock; a scoring batch holds thousands of events, so here one ``np.searchsorted`` +
    ``np.bincount`` adds a batch to the bucket counts.
    """

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds = np.asarray(sorted(buckets), dtype=np.float64)
        self._lock = threading.Lock()
        # per label values: (counts per bucket + the +Inf bucket, sum)
        self._series: dict[tuple[str, ...], tuple[np.ndarray[Any, Any], float]] = {}

    def observe(self, labels: Sequence[str], values: ArrayLike) -> None:
        """Add every value of ``values`` (NaN skipped) to the series ``labels``."""
        data = np.asarray(values, dtype=np.float64).ravel()
        data = data[~np.isnan(data)]
        if data.size == 0:
            return
        # Prometheus buckets are "le": bucket i holds bounds[i-1] < v <= bounds[i].
        index = np.searchsorted(self.bounds, data, side="left")
        counts = np.bincount(index, minlength=self.bounds.size + 1)
        total = float(data.sum())
        key = tuple(labels)
        with self._lock:
            old = self._series.get(key)
            if old is None:
                self._series[key] = (counts.astype(np.int64), total)
            else:
                self._series[key] = (old[0] + counts, old[1] + total)

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            series = list(self._series.items())
        for labels, (counts, total) in sorted(series):
            cumulative = np.cumsum(counts)
            buckets = [(_le(b), float(c)) for b, c in zip(self.bounds, cumulative, strict=False)]
            buckets.append(("+Inf", float(cumulative[-1])))
            family.add_metric(list(labels), buckets, total)
        yield family


def _le(bound: float) -> str:
    return repr(float(bound))


class _LagCollector(Collector):
    """Consumer lag per (group, topic, partition): replaced wholesale per group, so a revoked
    partition disappears instead of reporting its last lag forever."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lag: dict[str, dict[tuple[str, int], int]] = {}

    def set_group(self, group: str, lags: dict[tuple[str, int], int]) -> None:
        with self._lock:
            self._lag[group] = dict(lags)

    def get(self, group: str) -> dict[tuple[str, int], int]:
        with self._lock:
            return dict(self._lag.get(group, {}))

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "streamscore_consumer_lag",
            "Messages between the consumer's position and the partition's high watermark.",
            labels=("group", "topic", "partition"),
        )
        with self._lock:
            snapshot = {g: dict(v) for g, v in self._lag.items()}
        for group in sorted(snapshot):
            for (topic, partition), lag in sorted(snapshot[group].items()):
                family.add_metric([group, topic, str(partition)], float(lag))
        yield family


class NodePlacement(Protocol):
    """Where one model's compute nodes run (``streams.scoring.placement.Placement``)."""

    @property
    def nodes_by_provider(self) -> Mapping[str, int]: ...

    @property
    def share_by_provider(self) -> Mapping[str, float]: ...

    @property
    def cuda_capable(self) -> bool: ...


class _PlacementCollector(Collector):
    """Nodes, node-time share per provider and CUDA capability of the served models:
    replaced wholesale with the model set, so a retired model's series disappear."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._placement: dict[str, NodePlacement] = {}

    def set(self, placement: Mapping[str, NodePlacement]) -> None:
        with self._lock:
            self._placement = dict(placement)

    def collect(self) -> Iterator[Metric]:
        nodes = GaugeMetricFamily(
            "streamscore_model_nodes",
            "Compute nodes of a served model's session per ONNX Runtime execution provider "
            "(from the profile of its warm-up; Memcpy nodes not counted).",
            labels=("model_version", "provider"),
        )
        share = GaugeMetricFamily(
            "streamscore_model_compute_share",
            "Share (0-1) of a served model's profiled node time per execution provider.",
            labels=("model_version", "provider"),
        )
        capable = GaugeMetricFamily(
            "streamscore_model_cuda_capable",
            "1 when every operator of the model's graph has a CUDA kernel in ONNX Runtime.",
            labels=("model_version",),
        )
        with self._lock:
            snapshot = dict(self._placement)
        for version in sorted(snapshot):
            where = snapshot[version]
            for provider, n in sorted(where.nodes_by_provider.items()):
                nodes.add_metric([version, provider], float(n))
            for provider, fraction in sorted(where.share_by_provider.items()):
                share.add_metric([version, provider], float(fraction))
            capable.add_metric([version], 1.0 if where.cuda_capable else 0.0)
        yield from (nodes, share, capable)


class ServedFeatures(Protocol):
    """What a scoring stage serves features from (``streams.features.online.OnlineFeatures``)."""

    @property
    def online_store(self) -> str: ...

    @property
    def store_up(self) -> bool | None: ...

    @property
    def served_source(self) -> str | None: ...

    @property
    def feature_date(self) -> date | None: ...


class _FeaturesCollector(Collector):
    """Whether the online store answers and how old the served features are, read from
    the scoring stage's features at each scrape (attributes only: no I/O here)."""

    def __init__(self) -> None:
        self.features: ServedFeatures | None = None

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "streamscore_feature_store_up",
            "1 when the online store (Redis) answered its last check (each feature load and "
            "each 30 s reload), 0 when not: the served features stay, newer runs wait. "
            "Absent when features come from the nightly exports (STREAMSCORE_ONLINE_STORE=sqlite).",
            labels=("store",),
        )
        age = GaugeMetricFamily(
            "streamscore_features_age_seconds",
            "Seconds since midnight UTC of the served nightly run's date (its features use "
            "events before it), by where the run was loaded from (redis, or export: its "
            "Parquet export, also what serves while Redis was down at start-up).",
            labels=("source",),
        )
        features = self.features
        if features is not None:
            state = features.store_up
            if state is not None:
                up.add_metric([features.online_store], 1.0 if state else 0.0)
            day, source = features.feature_date, features.served_source
            if day is not None and source is not None:
                midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
                age.add_metric([source], (datetime.now(UTC) - midnight).total_seconds())
        yield from (up, age)


def consumer_lag(consumer: Any) -> dict[tuple[str, int], int]:
    """Lag per assigned partition of a confluent-kafka ``Consumer``, from local state only.

    ``position`` is the next offset the application will get; the high watermark is
    librdkafka's cached value from the last fetch response (``cached=True``: no broker
    round trip). Partitions with no position yet (nothing consumed) are left out.
    """
    assignment = consumer.assignment()
    if not assignment:
        return {}
    lags: dict[tuple[str, int], int] = {}
    for tp in consumer.position(assignment):
        if tp.offset < 0:  # OFFSET_INVALID and friends: nothing consumed yet
            continue
        _low, high = consumer.get_watermark_offsets(tp, cached=True)
        if high < 0:
            continue
        lags[(tp.topic, tp.partition)] = max(int(high) - int(tp.offset), 0)
    return lags


class WorkerMetrics:
    """Every metric one worker exports, in a registry of its own.

    Methods are called once per batch from the agents (any thread); each costs a few
    microseconds whatever the batch size.
    """

    def __init__(self, worker_id: str = "", app_id: str = "streamscore") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._served: set[tuple[str, ...]] = set()
        registry = self.registry
        self.events = Counter(
            "streamscore_events",
            "Events by the stage that handled them and what became of them "
            "(reason: the DLQ error class, empty otherwise).",
            ("stage", "outcome", "reason"),
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "streamscore_stage_seconds",
            "Seconds one batch spent in a stage step.",
            ("stage",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.event_latency = BulkHistogram(
            "streamscore_event_latency_seconds",
            "Per-event latency: end_to_end is raw record produced → scored, queue is "
            "ingested → picked up by the scorer.",
            ("stage",),
            LATENCY_BUCKETS,
        )
        registry.register(self.event_latency)
        self.batch_size = Histogram(
            "streamscore_batch_size",
            "Messages per batch handed to an agent.",
            ("stage",),
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self._lag = _LagCollector()
        registry.register(self._lag)
        self._lag_due: dict[str, float] = {}
        self.model_info = Gauge(
            "streamscore_model_info",
            "1 for each model this worker serves, with its role and what runs it (CUDA only "
            "when every compute node is on CUDA, else e.g. 'CUDAExecutionProvider (partial: "
            "3 of 12 nodes on CPU)').",
            ("model_version", "role", "provider"),
            registry=registry,
        )
        self._placement = _PlacementCollector()
        registry.register(self._placement)
        self._features = _FeaturesCollector()
        registry.register(self._features)
        self.features_stale = Counter(
            "streamscore_features_stale_events",
            "Events whose event time precedes every nightly run this process holds (very "
            "late): scored with the oldest held run, not the one in effect at their time; "
            "a replay reports each as a run mismatch.",
            registry=registry,
        )
        self.drift_psi = Gauge(
            "streamscore_drift_psi",
            "Population stability index of a feature (or __score__) in the last closed window.",
            ("model_version", "feature"),
            registry=registry,
        )
        self.drift_alert = Gauge(
            "streamscore_drift_alert",
            "1 when the feature's PSI passed its alert threshold in the last closed window.",
            ("model_version", "feature"),
            registry=registry,
        )
        self.worker_info = Gauge(
            "streamscore_worker_info",
            "Always 1: who this worker is.",
            ("worker_id", "app_id"),
            registry=registry,
        )
        self.worker_info.labels(worker_id, app_id).set(1)

    # -- the agents' calls ---------------------------------------------------------------
    def count(self, stage: str, outcome: str, n: int = 1, reason: str = "") -> None:
        """``n`` events of ``stage`` ended as ``outcome`` (``reason``: the DLQ error class)."""
        if n > 0:
            self.events.labels(stage, outcome, reason).inc(n)

    def count_stale_features(self, n: int) -> None:
        """``n`` events served the oldest held nightly run (older than every held run)."""
        if n > 0:
            self.features_stale.inc(n)

    def count_dlq(self, stage: str, reasons: Iterable[str]) -> None:
        """One DLQ count per reason occurrence: ``reasons`` holds one entry per dead letter."""
        tally: dict[str, int] = {}
        for reason in reasons:
            tally[reason] = tally.get(reason, 0) + 1
        for reason, n in tally.items():
            self.count(stage, "dlq", n, reason)

    def observe_batch(self, stage: str, size: int, seconds: float | None = None) -> None:
        """A batch of ``size`` messages went through ``stage`` (an agent) in ``seconds``."""
        self.batch_size.labels(stage).observe(size)
        if seconds is not None:
            self.stage_seconds.labels(stage).observe(seconds)

    def observe_stage(self, stage: str, seconds: float) -> None:
        """One batch spent ``seconds`` in a step (``feature_lookup``, ``sink_insert``, ...)."""
        self.stage_seconds.labels(stage).observe(seconds)

    def observe_latency(self, stage: str, seconds: ArrayLike) -> None:
        """Per-event latencies of one batch, as an array (``end_to_end``, ``queue``)."""
        self.event_latency.observe((stage,), seconds)

    def record_consumer_lag(self, group: str, consumer: Any, *, force: bool = False) -> None:
        """Update ``group``'s lag from ``consumer`` (a confluent-kafka Consumer), at most
        once per second unless ``force``. Call it from BatchAgent after each batch."""
        now = time.monotonic()
        if not force and now < self._lag_due.get(group, 0.0):
            return
        self._lag_due[group] = now + LAG_INTERVAL_S
        self._lag.set_group(group, consumer_lag(consumer))

    def lag(self, group: str) -> dict[tuple[str, int], int]:
        """The last lag recorded for ``group``."""
        return self._lag.get(group)

    def set_models(
        self,
        models: Iterable[tuple[str, str, str]],
        placement: Mapping[str, NodePlacement] | None = None,
    ) -> None:
        """The models served now, as ``(model_version, role, provider)``, and where each
        one's nodes run (``placement`` by model version); replaces the last set.

        Models no longer served drop to 0 in ``streamscore_model_info`` (``clear()`` is
        unsupported when Feast has put prometheus_client in multi-process mode through
        PROMETHEUS_MULTIPROC_DIR); the placement gauges hold the current set only.
        """
        current = {tuple(m) for m in models}
        for labels in self._served - current:
            self.model_info.labels(*labels).set(0)
        for labels in current:
            self.model_info.labels(*labels).set(1)
        self._served = current
        self._placement.set(placement or {})

    def set_drift(self, model_version: str, feature: str, psi: float, alert: bool) -> None:
        """The drift code's result for one feature of one model in the last closed window."""
        self.drift_psi.labels(model_version, feature).set(psi)
        self.drift_alert.labels(model_version, feature).set(1 if alert else 0)

    def watch_features(self, features: ServedFeatures) -> None:
        """Export the online store's health and the served run's age from ``features``."""
        self._features.features = features

    # -- exposition ----------------------------------------------------------------------
    def exposition(self) -> bytes:
        """Every metric in the Prometheus text format."""
        return generate_latest(self.registry)


def register_metrics_endpoint(app: faust.App, metrics: WorkerMetrics) -> None:
    """Serve ``GET /metrics`` (Prometheus text format) on the worker's web server."""
    from faust.web import View

    class MetricsView(View):
        """``GET /metrics``: this worker's Prometheus metrics."""

        async def get(self, request: Any) -> Any:
            # In headers: aiohttp refuses a content_type argument that carries a charset.
            return self.bytes(metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    app.page(PATH, name="metrics")(MetricsView)
