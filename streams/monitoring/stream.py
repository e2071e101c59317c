"""The scoring stage's drift monitor: feeds the accumulator, hands out deltas or closed windows.

Two ways to persist the counts (``emit``):

* ``"deltas"`` (the sink stage): every batch's count deltas, keyed by the batch's
  valid-topic coordinates, go to ``drift_deltas`` through the ClickHouse sink
  (``observe_arrays(...).deltas`` or ``take_deltas()``); the ``drift_stats`` view sums
  them. Nothing is read back after a restart: deltas add up, and a re-sent batch replaces
  its own rows.
* ``"windows"`` (the scoring agent that writes ClickHouse itself): ``write`` inserts the
  windows that closed, whole, before the batch's predictions are inserted, so a crash
  never loses a closed window; a restarted or newly assigned worker seeds a partition's
  open windows from the ``predictions`` already in ClickHouse, and re-emitting a window
  replaces the same key.

Both modes close windows for this worker's logs and gauges (``summarise``). Late and future
rows (see ``streams.monitoring.drift``) are counted in ``streamscore_events_total``
(stage ``drift``) and logged at most once a minute.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from streams.clickhouse.gateway import ClickHouseGateway
from streams.errors import ConfigError
from streams.monitoring.drift import (
    Baseline,
    DriftAccumulator,
    DriftDeltas,
    HistogramRow,
    Observation,
    WindowDrift,
    model_baselines,
    summarise,
    window_table,
)
from streams.scoring.modelset import ModelSet
from streams.scoring.pipeline import DecodedBatch, ScoredEvents

BASELINE_COLUMNS = (
    "model_version", "feature", "feature_index", "edges", "expected", "threshold",
    "reference_rows", "critical", "missing_expected",
)  # fmt: skip

if TYPE_CHECKING:
    from streams.monitoring.metrics import WorkerMetrics
    from streams.settings import Settings

__all__ = ["Baseline", "DriftMonitor", "Emit"]

log = logging.getLogger("streams.monitoring.stream")

Emit = Literal["windows", "deltas"]
DELTAS_TABLE = "drift_deltas"
_REPORT_EVERY_S = 60.0


class DriftMonitor:
    """Drift histograms for the partitions this worker scores."""

    def __init__(
        self,
        gateway: ClickHouseGateway | None,
        *,
        window_seconds: int,
        lateness_windows: int = 1,
        max_open_windows: int = 4,
        max_future_s: float = 60.0,
        thresholds: Mapping[str, float],
        event_type: str,
        source_topic: str,
        entity_features: Sequence[int],
        entity_names: Sequence[str],
        worker_id: str,
        emit: Emit = "windows",
        valid_topic: str = "",
        metrics: WorkerMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if emit == "deltas" and not valid_topic:
            raise ConfigError(
                "drift deltas are keyed by the valid topic's coordinates: "
                "DriftMonitor(emit='deltas') needs valid_topic"
            )
        self.gateway = gateway
        self.thresholds = dict(thresholds)
        self.event_type = event_type
        self.source_topic = source_topic  # the raw topic: predictions' ``topic``
        self.valid_topic = valid_topic  # what delta offsets count
        self.entity_features = np.asarray(entity_features, dtype=np.int64)
        self.entity_names = list(entity_names)
        self.worker_id = worker_id
        self.emit: Emit = emit
        self.metrics = metrics
        self.clock = clock
        self.accumulator = DriftAccumulator(
            window_seconds * 1000,
            {},
            lateness_windows=lateness_windows,
            max_open_windows=max_open_windows,
            max_future_ms=int(max_future_s * 1000),
        )
        self._unseeded: set[int] = set()
        self._unsent: list[DriftDeltas] = []
        self._unreported = [0, 0]  # late, future since the last log line
        self._report_due = 0.0

    @classmethod
    def from_settings(
        cls,
        gateway: ClickHouseGateway | None,
        settings: Settings,
        *,
        thresholds: Mapping[str, float],
        event_type: str,
        source_topic: str,
        entity_features: Sequence[int],
        entity_names: Sequence[str],
        emit: Emit = "deltas",
        valid_topic: str = "",
        metrics: WorkerMetrics | None = None,
    ) -> DriftMonitor:
        """A monitor with the ``STREAMSCORE_DRIFT_*`` settings."""
        return cls(
            gateway,
            window_seconds=settings.drift_window_seconds,
            lateness_windows=settings.drift_lateness_windows,
            max_open_windows=settings.drift_max_open_windows,
            max_future_s=settings.drift_max_future_s,
            thresholds=thresholds,
            event_type=event_type,
            source_topic=source_topic,
            entity_features=entity_features,
            entity_names=entity_names,
            worker_id=settings.worker_id,
            emit=emit,
            valid_topic=valid_topic,
            metrics=metrics,
        )

    # -- models and partitions -------------------------------------------------------------
    def set_models(self, models: ModelSet) -> tuple[tuple[str, ...], list[list[object]]]:
        """Monitor ``models`` (after a load or swap); returns their ``drift_baselines`` rows
        (column names, rows) for the caller to record."""
        scorers = [models.champion, *(c.scorer for c in models.challengers)]
        baselines = {s.model_id: model_baselines(s.metadata, self.thresholds) for s in scorers}
        self.accumulator.set_baselines(baselines)
        rows: list[list[object]] = [
            [
                model,
                b.name,
                b.column,
                b.edges.tolist(),
                b.expected.tolist(),
                b.threshold,
                b.reference_rows,
                b.critical,
                b.missing_expected,
            ]
            for model, columns in baselines.items()
            for b in columns
        ]
        return BASELINE_COLUMNS, rows

    def assigned(self, partitions: Sequence[int]) -> None:
        """Partitions (re)assigned to this worker: drop stale state (and, for whole
        windows, seed them from ClickHouse on their first batch)."""
        self.accumulator.forget(partitions)
        if self.emit == "windows":
            self._unseeded.update(partitions)

    # -- batches ----------------------------------------------------------------------------
    def observe(self, batch: DecodedBatch, scored: ScoredEvents) -> list[HistogramRow]:
        """Add a scored batch; return the rows of windows that closed. With
        ``emit="deltas"`` the batch's deltas wait for ``take_deltas``."""
        observation = self.observe_batch(batch, scored)
        if self.emit == "deltas" and len(observation.deltas):
            self._unsent.append(observation.deltas)
        return observation.closed.histogram_rows()

    def observe_batch(self, batch: DecodedBatch, scored: ScoredEvents) -> Observation:
        """``observe_arrays`` for a decoded batch of ``ValidEvent``."""
        partitions = np.array([e.handoff_partition for e in batch.events], dtype=np.int64)
        offsets = np.array([e.handoff_offset for e in batch.events], dtype=np.int64)
        event_ms = batch.table.column("event_time").cast(pa.int64()).to_numpy()
        return self.observe_arrays(
            partitions,
            offsets,
            event_ms,
            scored.features,
            scored.feature_missing,
            {m.model_id: m.scores for m in scored.models},
        )

    def observe_arrays(
        self,
        partitions: NDArray[np.int64],
        offsets: NDArray[np.int64],
        event_ms: NDArray[np.int64],
        features: NDArray[np.float32],
        feature_missing: NDArray[np.bool_],
        scores: Mapping[str, NDArray[np.float32]],
    ) -> Observation:
        """Add one scored batch, columnar: per row its valid-topic partition and offset and
        its event time (ms); the features as scored, the missing mask, each model's scores.

        The result's ``deltas`` are this batch's ``drift_deltas`` rows
        (``delta_table(observation)``); ``closed`` the windows it closed, for ``summarise``.
        """
        observation = self.accumulator.observe(
            partitions,
            event_ms,
            features,
            feature_missing,
            scores,
            now_ms=int(self.clock() * 1000),
            offsets=offsets,
            source=self.valid_topic,
        )
        self._count(observation)
        if self._unseeded:
            fresh = self._unseeded.intersection(np.unique(partitions).tolist())
            for partition in sorted(fresh):
                self._seed(partition)
                self._unseeded.discard(partition)
        return observation

    def delta_table(self, observation: Observation) -> pa.Table:
        """The batch's ``drift_deltas`` rows, for the sink to insert (with other batches')."""
        return observation.deltas.table(self.worker_id)

    def take_deltas(self) -> pa.Table | None:
        """The ``drift_deltas`` rows of every batch ``observe`` took since the last call
        (``emit="deltas"``), as one table; None when there are none."""
        if not self._unsent:
            return None
        parts, self._unsent = self._unsent, []
        window_ms = self.accumulator.window_ms
        return DriftDeltas.concat(parts, window_ms, self.valid_topic).table(self.worker_id)

    def summarise(self, rows: Sequence[HistogramRow] | DriftDeltas) -> list[WindowDrift]:
        """PSI and alert of the newest window per model among ``rows``; logs each alert."""
        out = summarise(rows, self.accumulator.baselines)
        for w in out:
            if w.missing_alert:
                log.warning(
                    "drift alert: %s %s served from defaults in %.1f%% of %d rows > %.1f%% "
                    "(window %s)",
                    w.model_version, w.feature, 100 * w.missing_rate, w.rows,
                    100 * w.missing_floor, _iso(w.window_start_ms),
                    extra={
                        "model_version": w.model_version, "feature": w.feature,
                        "window_start": _iso(w.window_start_ms),
                        "missing_rate": round(w.missing_rate, 4),
                        "missing_floor": round(w.missing_floor, 4), "rows": w.rows,
                    },
                )  # fmt: skip
            if w.psi_alert:
                log.warning(
                    "drift alert: %s %s psi %.3f > %.3f over %d rows (window %s)",
                    w.model_version, w.feature, w.psi, max(w.threshold, w.noise_floor), w.rows,
                    _iso(w.window_start_ms),
                    extra={
                        "model_version": w.model_version, "feature": w.feature,
                        "window_start": _iso(w.window_start_ms), "psi": round(w.psi, 4),
                        "threshold": w.threshold, "noise_floor": round(w.noise_floor, 4),
                        "rows": w.rows,
                    },
                )  # fmt: skip
        return out

    # -- writes -------------------------------------------------------------------------------
    def write(self, rows: Sequence[HistogramRow] | DriftDeltas) -> None:
        """Insert closed windows whole (``emit="windows"``)."""
        if self.emit != "windows":
            raise ConfigError(
                "this drift monitor emits deltas (the sink writes them): writing closed "
                "windows too would count every row twice in drift_stats"
            )
        if len(rows):
            self._gateway().insert_arrow(DELTAS_TABLE, window_table(rows, self.worker_id))

    def write_deltas(self, table: pa.Table, token: str) -> None:
        """Insert delta rows with the batch's deduplication token (a stage that writes
        ClickHouse itself; the sink stage inserts ``delta_table`` rows in bulk)."""
        if table.num_rows:
            dedup = {"insert_deduplicate": 1, "insert_deduplication_token": token}
            self._gateway().insert_arrow(DELTAS_TABLE, table, settings=dedup)

    # -- internals ---------------------------------------------------------------------------
    def _gateway(self) -> ClickHouseGateway:
        if self.gateway is None:
            raise ConfigError(
                "this drift monitor has no ClickHouse client (a scoring process on chDB "
                "hands its deltas to the sink): it cannot write or seed windows"
            )
        return self.gateway

    def _count(self, observation: Observation) -> None:
        late, future = observation.late, observation.future
        if self.metrics is not None:
            self.metrics.count("drift", "late", late)
            self.metrics.count("drift", "future", future)
        self._unreported[0] += late
        self._unreported[1] += future
        now = time.monotonic()
        if any(self._unreported) and now >= self._report_due:
            self._report_due = now + _REPORT_EVERY_S
            log.warning(
                "drift: %d late and %d future rows scored but in no window "
                "(%d and %d since start); windows open per partition at most %d",
                *self._unreported, self.accumulator.late_rows, self.accumulator.future_rows,
                self.accumulator.ring,
            )  # fmt: skip
            self._unreported = [0, 0]

    def _seed(self, partition: int) -> None:
        """Add what earlier processes already scored to ``partition``'s open windows."""
        span = self.accumulator.open_range(partition)
        if span is None:
            return
        gateway = self._gateway()
        table = gateway.table("predictions")
        result = gateway.query(
            "select model_version, toUnixTimestamp64Milli(event_time), features, score, "  # noqa: S608 - checked identifier
            f"missing_entities from {table} "
            "where topic = {s:String} and run = 'live' and event_type = {t:String} "
            "and handoff_partition = {p:UInt16} "
            "and event_time >= fromUnixTimestamp64Milli({a:Int64}) "
            "and event_time < fromUnixTimestamp64Milli({b:Int64})",
            {
                "s": self.source_topic,
                "t": self.event_type,
                "p": partition,
                "a": span[0],
                "b": span[1],
            },
        )
        rows = result.result_rows
        if not rows:
            return
        by_model: dict[str, list[Sequence[Any]]] = {}
        for row in rows:
            by_model.setdefault(str(row[0]), []).append(row)
        for model, items in by_model.items():
            x = np.array([r[2] for r in items], dtype=np.float32)
            missing = self._missing([list(r[4]) for r in items], x.shape)
            self.accumulator.seed(
                model,
                partition,
                np.array([r[1] for r in items], dtype=np.int64),
                x,
                missing,
                np.array([r[3] for r in items], dtype=np.float32),
            )
        log.info("drift: seeded partition %d with %d rows already scored", partition, len(rows))

    def _missing(self, entities: list[list[str]], shape: tuple[int, ...]) -> NDArray[np.bool_]:
        """The per-feature missing mask from the stored per-row missing entity names."""
        out = np.zeros(shape, dtype=np.bool_)
        bounds = np.concatenate([[0], np.cumsum(self.entity_features)])
        for i, names in enumerate(entities):
            for name in names:
                if name in self.entity_names:
                    j = self.entity_names.index(name)
                    out[i, bounds[j] : bounds[j + 1]] = True
        return out


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")
