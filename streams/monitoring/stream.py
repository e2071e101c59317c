"""The scoring agent's drift monitor: feeds the accumulator, seeds it after a restart, writes.

``observe`` runs in the scoring thread on every batch; ``write`` inserts the histograms
of the windows that closed, before the batch's predictions are inserted, so a crash
never loses a closed window (see ``streams.monitoring.drift`` for why this is exact).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from streams.clickhouse.gateway import ClickHouseGateway
from streams.monitoring.drift import (
    Baseline,
    DriftAccumulator,
    HistogramRow,
    WindowDrift,
    model_baselines,
    summarise,
)
from streams.scoring.modelset import ModelSet
from streams.scoring.pipeline import DecodedBatch, ScoredEvents

log = logging.getLogger("streams.monitoring.stream")

_TS = pa.timestamp("ms", tz="UTC")


class DriftMonitor:
    """Drift histograms for the partitions this worker scores."""

    def __init__(
        self,
        gateway: ClickHouseGateway,
        *,
        window_seconds: int,
        lateness_windows: int = 1,
        thresholds: Mapping[str, float],
        event_type: str,
        source_topic: str,
        entity_features: Sequence[int],
        entity_names: Sequence[str],
        worker_id: str,
    ) -> None:
        self.gateway = gateway
        self.thresholds = dict(thresholds)
        self.event_type = event_type
        self.source_topic = source_topic  # the raw topic: predictions' ``topic``
        self.entity_features = np.asarray(entity_features, dtype=np.int64)
        self.entity_names = list(entity_names)
        self.worker_id = worker_id
        self.accumulator = DriftAccumulator(window_seconds * 1000, {}, lateness_windows)
        self._unseeded: set[int] = set()
        self._watermarks: dict[int, int] = {}

    def set_models(self, models: ModelSet) -> None:
        """Monitor ``models`` (after a load or swap) and record their baselines."""
        scorers = [models.champion, *(c.scorer for c in models.challengers)]
        baselines = {s.model_id: model_baselines(s.metadata, self.thresholds) for s in scorers}
        self.accumulator.baselines = baselines
        rows = [
            [
                model,
                b.name,
                b.column,
                b.edges.tolist(),
                b.expected.tolist(),
                b.threshold,
                b.reference_rows,
                b.critical,
            ]
            for model, columns in baselines.items()
            for b in columns
        ]
        if rows:
            names = (
                "model_version", "feature", "feature_index", "edges", "expected", "threshold",
                "reference_rows", "critical",
            )  # fmt: skip
            self.gateway.insert_columns("drift_baselines", list(zip(*rows, strict=True)), names)

    def assigned(self, partitions: Sequence[int]) -> None:
        """Partitions (re)assigned to this worker: drop stale state, seed before adding."""
        self.accumulator.forget(partitions)
        for partition in partitions:
            self._watermarks.pop(partition, None)
        self._unseeded.update(partitions)

    def observe(self, batch: DecodedBatch, scored: ScoredEvents) -> list[HistogramRow]:
        """Add a scored batch; return the rows of windows that closed."""
        partitions = np.array([e.handoff_partition for e in batch.events], dtype=np.int64)
        event_ms = batch.table.column("event_time").cast(pa.int64()).to_numpy()
        fresh = self._unseeded.intersection(partitions.tolist())
        for partition in sorted(fresh):
            starts = self.accumulator.window_of(event_ms[partitions == partition])
            first = (
                int(starts.min()) - self.accumulator.lateness_windows * self.accumulator.window_ms
            )
            self._seed(partition, first, int(starts.max()) + self.accumulator.window_ms)
            self._unseeded.discard(partition)
        for m in scored.models:
            self.accumulator.add(
                m.model_id, partitions, event_ms, scored.features, scored.feature_missing, m.scores
            )
        marks = self._watermarks
        for partition in np.unique(partitions).tolist():
            newest = int(event_ms[partitions == partition].max())
            marks[partition] = max(marks.get(partition, newest), newest)
        return self.accumulator.close(marks)

    def summarise(self, rows: Sequence[HistogramRow]) -> list[WindowDrift]:
        """PSI and alert of the newest window per model among ``rows``; logs each alert."""
        out = summarise(rows, self.accumulator.baselines)
        for w in out:
            if w.alert:
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

    def write(self, rows: Sequence[HistogramRow]) -> None:
        if not rows:
            return
        flushed = int(time.time() * 1000)
        starts = pa.array([r.window_start_ms for r in rows], type=pa.int64())
        table = pa.table(
            {
                "model_version": [r.model_version for r in rows],
                "feature": [r.feature for r in rows],
                "feature_index": pa.array([r.feature_index for r in rows], type=pa.int16()),
                "window_start": starts.cast(_TS),
                "window_seconds": pa.array([r.window_ms // 1000 for r in rows], type=pa.uint32()),
                "partition": pa.array([r.partition for r in rows], type=pa.uint16()),
                "rows": pa.array([r.rows for r in rows], type=pa.uint64()),
                "missing": pa.array([r.missing for r in rows], type=pa.uint64()),
                "counts": pa.array([r.counts for r in rows], type=pa.list_(pa.uint64())),
                "worker_id": [self.worker_id] * len(rows),
                "flushed_at": pa.array([flushed] * len(rows), type=pa.int64()).cast(_TS),
            }
        )
        self.gateway.insert_arrow("drift_histograms", table)

    def _seed(self, partition: int, start_ms: int, end_ms: int) -> None:
        """Add what earlier processes already scored in [start, end) of ``partition``."""
        table = self.gateway.table("predictions")
        result = self.gateway.query(
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
                "a": start_ms,
                "b": end_ms,
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
            self.accumulator.add(
                model,
                np.full(len(items), partition, dtype=np.int64),
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


__all__ = ["Baseline", "DriftMonitor"]


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")
