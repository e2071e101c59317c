"""In-stream drift: per tumbling event-time window, histograms against the training baseline.

The scoring agent adds every scored batch to a ``DriftAccumulator``: per (valid-topic
partition, window, model version) it keeps bin counts for each feature and the score,
using the bin edges of the model's training baseline (the ONNX sidecar), plus row and
missing counts. Nothing but counts is kept: memory is features × bins per open window.

When event time has passed a window's end by ``lateness`` windows, its counts are
emitted as ``drift_histograms`` rows, keyed by (model version, feature, window,
partition). Statistics are computed from summed counts, in ClickHouse (the
``drift_stats`` view, so windows whose partitions were scored by several workers add
up) and here (``drift_statistics``, the same formulas, for logs and metrics):

* PSI = Σ (p − q) · ln(p / q) over bins (proportions smoothed by ``EPSILON``),
* KS = max |CDF_p − CDF_q| on the bins (a binned two-sample KS statistic),
* Jensen-Shannon distance = sqrt(½ KL(p‖m) + ½ KL(q‖m)), m = (p + q)/2, base 2 (0…1).

A window alerts when its PSI is both material and significant: above the feature's
threshold from the registry, and above the PSI that sampling alone reaches one window in
a thousand. Without drift, PSI ≈ χ²(k − 1) · (1/n + 1/m) for n window rows, m baseline
rows and k non-empty bins, so the noise floor is ``critical · (1/n + 1/m)`` with
``critical`` the χ² 0.999 quantile. A 0.1 threshold over 250 rows and 10 bins would
otherwise fire on noise alone about once in 200 windows.

A window is exactly once per partition: a restarted or newly assigned worker seeds an
open (partition, window) from the ``predictions`` already in ClickHouse before it adds
new rows, and re-emitting a window replaces the same key (ReplacingMergeTree).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from streams.scoring.metadata import Histogram, ModelMetadata

EPSILON = 1e-4
SCORE = "__score__"  # the pseudo-feature holding the model's score distribution
ALERT_MIN_ROWS = 200
Z_999 = 3.0902  # the standard normal 0.999 quantile


def chi2_quantile(dof: int, z: float = Z_999) -> float:
    """The χ² quantile for ``dof`` degrees of freedom at the normal quantile ``z``
    (Wilson-Hilferty: 3% above the exact value at 1 degree of freedom, under 2% from 3 on)."""
    k = max(dof, 1)
    return float(k * (1 - 2 / (9 * k) + z * math.sqrt(2 / (9 * k))) ** 3)


@dataclass(frozen=True, slots=True)
class Baseline:
    """One monitored column: training bin edges, expected proportions, alert threshold."""

    name: str
    column: int  # the model input column; -1 for the score
    edges: NDArray[np.float64]  # interior cut points: bins (-inf,e0), [e0,e1), …, [e_last, inf)
    expected: NDArray[np.float64]
    threshold: float  # PSI above which the window alerts; 0 = not alerted (reported only)
    reference_rows: int = 0  # rows the baseline was built from; 0 = unknown (taken as many)

    @classmethod
    def from_histogram(
        cls, name: str, column: int, histogram: Histogram, threshold: float, reference_rows: int = 0
    ) -> Baseline:
        return cls(
            name,
            column,
            np.asarray(histogram.edges, dtype=np.float64),
            np.asarray(histogram.proportions, dtype=np.float64),
            threshold,
            reference_rows,
        )

    @property
    def bins(self) -> int:
        return len(self.expected)

    @property
    def critical(self) -> float:
        """χ² 0.999 quantile for the baseline's non-empty bins less one."""
        return chi2_quantile(int(np.count_nonzero(self.expected > EPSILON)) - 1)

    def noise_floor(self, rows: int) -> float:
        """The PSI a window of ``rows`` reaches by sampling alone once in a thousand."""
        reference = 1 / self.reference_rows if self.reference_rows > 0 else 0.0
        return self.critical * (1 / max(rows, 1) + reference)

    def alerts(self, psi: float, rows: int) -> bool:
        """The ``drift_stats`` alert rule: material, significant and enough rows."""
        return (
            self.threshold > 0
            and rows >= ALERT_MIN_ROWS
            and psi > self.threshold
            and psi > self.noise_floor(rows)
        )


def model_baselines(
    metadata: ModelMetadata, thresholds: Mapping[str, float], score_threshold: float = 0.2
) -> list[Baseline]:
    """The model's features in input order (those with a baseline), then its score.

    Feature baselines come from the training rows, the score's from the holdout rows."""
    train_rows = int(metadata.training_data.get("train_rows", 0))
    holdout_rows = int(metadata.training_data.get("holdout_rows", 0))
    out = [
        Baseline.from_histogram(
            name, column, metadata.feature_baselines[name], thresholds.get(name, 0.2), train_rows
        )
        for column, name in enumerate(metadata.feature_names)
        if name in metadata.feature_baselines
    ]
    if metadata.score_baseline is not None:
        out.append(
            Baseline.from_histogram(
                SCORE, -1, metadata.score_baseline, score_threshold, holdout_rows
            )
        )
    return out


def drift_statistics(
    counts: NDArray[np.int64], expected: NDArray[np.float64]
) -> tuple[float, float, float]:
    """(PSI, binned KS, Jensen-Shannon distance) of observed ``counts`` vs ``expected``."""
    total = counts.sum()
    if total == 0:
        return 0.0, 0.0, 0.0
    p = np.maximum(counts / total, EPSILON)
    q = np.maximum(expected, EPSILON)
    p, q = p / p.sum(), q / q.sum()
    psi = float(np.sum((p - q) * np.log(p / q)))
    ks = float(np.max(np.abs(np.cumsum(p) - np.cumsum(q))))
    m = (p + q) / 2
    js = 0.5 * np.sum(p * np.log2(p / m)) + 0.5 * np.sum(q * np.log2(q / m))
    return psi, ks, math.sqrt(max(float(js), 0.0))


@dataclass(slots=True)
class _Window:
    counts: NDArray[np.int64]  # every baseline's bins, end to end (see _Layout.offsets)
    missing: NDArray[np.int64]  # per baseline
    rows: int = 0


@dataclass(frozen=True, slots=True)
class _Layout:
    """A model's baselines as arrays, so one batch is binned in a few numpy calls."""

    columns: NDArray[np.int64]  # model input column of each feature baseline
    edges: NDArray[np.float64]  # [features × most edges], padded with +inf
    offsets: NDArray[np.int64]  # where each baseline's bins start in the flat counts
    bins: int  # all bins, the score's included
    score: Baseline | None

    @classmethod
    def of(cls, baselines: Sequence[Baseline]) -> _Layout:
        features = [b for b in baselines if b.column >= 0]
        score = next((b for b in baselines if b.column < 0), None)
        if score is not None and baselines[-1] is not score:
            raise ValueError("the score's baseline must come last (see model_baselines)")
        width = max((len(b.edges) for b in features), default=0)
        edges = np.full((len(features), max(width, 1)), np.inf)
        for i, b in enumerate(features):
            edges[i, : len(b.edges)] = b.edges
        sizes = [b.bins for b in features] + ([score.bins] if score is not None else [])
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        columns = np.array([b.column for b in features], dtype=np.int64)
        return cls(columns, edges, offsets, int(offsets[-1]), score)


@dataclass(frozen=True, slots=True)
class HistogramRow:
    """One ``drift_histograms`` row."""

    model_version: str
    feature: str
    feature_index: int
    window_start_ms: int
    window_ms: int
    partition: int
    rows: int
    missing: int
    counts: list[int]


WindowKey = tuple[int, int, str]  # (partition, window start ms, model version)


@dataclass(frozen=True, slots=True)
class WindowDrift:
    """One feature of one model over one closed window, as ``drift_stats`` computes it."""

    model_version: str
    feature: str
    window_start_ms: int
    rows: int
    psi: float
    threshold: float
    noise_floor: float
    alert: bool


def summarise(
    rows: Sequence[HistogramRow], baselines: Mapping[str, Sequence[Baseline]]
) -> list[WindowDrift]:
    """Statistics of the newest window per model among closed histogram rows, partitions
    of that window summed.

    For this worker's logs and gauges: it sees only its own partitions and only those
    closed together, and a batch that catches up on a backlog closes thousands of
    windows at once; ``drift_stats`` in ClickHouse has every window, every worker's.
    """
    by_name = {(m, b.name): b for m, columns in baselines.items() for b in columns}
    newest: dict[str, int] = {}
    for r in rows:
        newest[r.model_version] = max(
            newest.get(r.model_version, r.window_start_ms), r.window_start_ms
        )
    summed: dict[tuple[str, str, int], tuple[int, NDArray[np.int64]]] = {}
    for r in (r for r in rows if r.window_start_ms == newest[r.model_version]):
        key = (r.model_version, r.feature, r.window_start_ms)
        n, counts = summed.get(key, (0, np.zeros(len(r.counts), dtype=np.int64)))
        summed[key] = (n + r.rows, counts + np.asarray(r.counts, dtype=np.int64))
    out: list[WindowDrift] = []
    for (model, feature, start), (n, counts) in sorted(summed.items()):
        baseline = by_name.get((model, feature))
        if baseline is None:
            continue
        psi = drift_statistics(counts, baseline.expected)[0]
        floor, alert = baseline.noise_floor(n), baseline.alerts(psi, n)
        out.append(WindowDrift(model, feature, start, n, psi, baseline.threshold, floor, alert))
    return out


@dataclass(slots=True)
class DriftAccumulator:
    """Bin counts per (partition, window, model) for the baselines of each model."""

    window_ms: int
    baselines: dict[str, list[Baseline]]  # model version → monitored columns
    lateness_windows: int = 1
    idle_windows: int = 10
    windows: dict[WindowKey, _Window] = field(default_factory=dict)
    _layouts: dict[str, tuple[list[Baseline], _Layout]] = field(default_factory=dict)
    closed_before: dict[int, int] = field(default_factory=dict)  # partition → first open window
    late_rows: int = 0

    def window_of(self, event_ms: NDArray[np.int64]) -> NDArray[np.int64]:
        return (event_ms // self.window_ms) * self.window_ms

    def known(self, partition: int, window_start: int, model: str) -> bool:
        return (partition, window_start, model) in self.windows

    def is_closed(self, partition: int, window_start: int) -> bool:
        return window_start < self.closed_before.get(partition, -(2**62))

    def add(
        self,
        model: str,
        partitions: NDArray[np.int64],
        event_ms: NDArray[np.int64],
        features: NDArray[np.float32],
        feature_missing: NDArray[np.bool_],
        scores: NDArray[np.float32],
    ) -> None:
        """Add rows scored by ``model``: features [rows × model inputs] as scored, the
        per-feature missing mask (served from defaults) and the model's scores."""
        baselines = self.baselines.get(model)
        if not baselines or len(event_ms) == 0:
            return
        layout = self.layout(model, baselines)
        starts = self.window_of(event_ms)
        keys = np.stack([partitions, starts], axis=1)
        for partition, start in {(int(p), int(s)) for p, s in keys}:
            rows = (partitions == partition) & (starts == start)
            if self.is_closed(partition, start):
                self.late_rows += int(rows.sum())
                continue
            window = self.windows.get((partition, start, model))
            if window is None:
                window = self.windows[(partition, start, model)] = _Window(
                    np.zeros(layout.bins, dtype=np.int64),
                    np.zeros(len(baselines), dtype=np.int64),
                )
            _accumulate(window, layout, features[rows], feature_missing[rows], scores[rows])

    def layout(self, model: str, baselines: list[Baseline]) -> _Layout:
        cached = self._layouts.get(model)
        if cached is None or cached[0] is not baselines:
            cached = self._layouts[model] = (baselines, _Layout.of(baselines))
        return cached[1]

    def close(self, watermarks: Mapping[int, int]) -> list[HistogramRow]:
        """Emit and forget the windows event time has moved past.

        Each partition keeps its own clock (its highest event time, ``watermarks``): its
        windows close ``lateness_windows`` after their end, however far other partitions
        are ahead. A partition that went quiet closes once the newest partition is
        ``idle_windows`` past the window.
        """
        newest = max(watermarks.values(), default=0)
        idle_horizon = newest - self.idle_windows * self.window_ms
        out: list[HistogramRow] = []
        for key in sorted(self.windows):
            partition, start, model = key
            own = watermarks.get(partition, 0) - self.lateness_windows * self.window_ms
            end = start + self.window_ms
            if end > own and end > idle_horizon:
                continue
            window = self.windows.pop(key)
            self.closed_before[partition] = max(self.closed_before.get(partition, end), end)
            out.extend(self._rows(model, start, partition, window))
        return out

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop open windows of revoked partitions (their next owner seeds them)."""
        gone = set(partitions)
        for key in [k for k in self.windows if k[0] in gone]:
            del self.windows[key]
        for p in gone:
            self.closed_before.pop(p, None)

    def _rows(self, model: str, start: int, partition: int, window: _Window) -> list[HistogramRow]:
        offsets = self.layout(model, self.baselines[model]).offsets
        return [
            HistogramRow(
                model,
                b.name,
                b.column,
                start,
                self.window_ms,
                partition,
                window.rows,
                int(window.missing[i]),
                window.counts[offsets[i] : offsets[i + 1]].tolist(),
            )
            for i, b in enumerate(self.baselines[model])
        ]


def _accumulate(
    window: _Window,
    layout: _Layout,
    features: NDArray[np.float32],
    missing: NDArray[np.bool_],
    scores: NDArray[np.float32],
) -> None:
    """Bin ``features`` (rows × model inputs) and ``scores`` into ``window``.

    A value's bin is the number of edges at or below it (``searchsorted(side="right")``),
    counted for every feature at once against the padded edge matrix; NaN (a missing
    score) is in no bin.
    """
    window.rows += len(scores)
    n = len(layout.columns)
    if n:
        x = features[:, layout.columns].astype(np.float64)
        bins = (x[:, :, None] >= layout.edges[None, :, :]).sum(axis=2)
        flat = bins + layout.offsets[None, :n]
        counted = flat[~np.isnan(x)]
        window.counts += np.bincount(counted, minlength=layout.bins)
        window.missing[:n] += missing[:, layout.columns].sum(axis=0)
    if layout.score is not None:
        finite = scores[~np.isnan(scores)]
        bins = np.searchsorted(layout.score.edges, finite, side="right") + layout.offsets[n]
        window.counts += np.bincount(bins, minlength=layout.bins)
        window.missing[n] += int(np.isnan(scores).sum())
