"""In-stream drift: per tumbling event-time window, histograms against the training baseline.

The scoring stage hands every scored batch to a ``DriftAccumulator``. Per valid-topic
partition it keeps a small ring of open event-time windows, and per window and model the
bin counts of each feature and of the score (bin edges from the model's training
baseline, the ONNX sidecar), plus row and missing counts. Nothing but counts is kept.

**Bounded cost.** However many event-time windows a batch spans, its cost is
O(rows × features) numpy work plus O(partitions × open windows) bookkeeping:

* Each partition has a watermark: the newest event time it has seen, where an event more
  than ``max_future_ms`` ahead of the wall clock does not count (a producer with a broken
  clock, or a simulator's compressed clock, cannot close every window with one event).
* The open windows of a partition are the ``ring`` newest up to its watermark's window:
  ``lateness_windows + 1`` of them, at most ``max_open_windows``. When the watermark
  moves, windows that leave the ring close, oldest first.
* An event older than the partition's oldest open window (after the batch moved the
  watermark) is *late*; one beyond the future limit is *future*. Both are counted
  (``Observation.late``/``future``, the accumulator's totals) and are scored as usual,
  but binned nowhere: a "late bucket" would mix event times that no window owns, and its
  PSI would answer no question. Counting them says how much traffic the windows miss.
* A partition that went quiet follows the newest partition: its windows close once that
  one is ``idle_windows`` past them (as if its own clock had moved on).

The watermark moves once per batch, before the batch is binned: a batch is short next to
a window (a 5,000-event batch at 5,000 events/s spans 1 s of a 60 s window), so this
loses nothing in order, and it is what keeps a batch that spans 10,000 windows from
opening them.

**Deltas.** Each batch yields its count deltas (``Observation.deltas``) per (model,
feature, window, partition), tagged with the batch's source coordinates (the offsets it
covered in that partition). The ``drift_deltas`` table keys rows on those coordinates
(ReplacingMergeTree), so a re-sent batch replaces itself, and the ``drift_stats`` view
sums the deltas of a window: no window is emitted whole, a restarted worker needs no
seeding, and the sink inserts the rows of many batches in one insert (re-bundled after a
sink restart, each batch's rows keep their key). Exactly once as far as the batch is: a
batch re-sent with the same coordinates counts once, but one re-cut differently after a
scoring crash (at-least-once outputs) counts the overlap twice, at most one batch per
crash; transactional outputs make it exact. Closed windows are still returned whole
(``Observation.closed``) for this worker's logs and gauges, and for the whole-window
write path the old scoring agent uses (``streams.monitoring.stream``).

**One PSI.** Statistics are computed from summed counts in ClickHouse (the ``drift_stats``
view, migrations 0007 and 0008) and here (``drift_statistics``, for logs, metrics and the
report); both use exactly these formulas, and a unit test holds them to 1e-9 of each other:

* proportions p = counts / total and q = the baseline's, each floored at ``EPSILON`` and
  renormalised to sum to 1; a window with no counted value has PSI, KS and JS 0;
* PSI = Σ (p − q) · ln(p / q) over bins,
* KS = max |CDF_p − CDF_q| on the bins (a binned two-sample KS statistic),
* Jensen-Shannon distance = sqrt(½ KL(p‖m) + ½ KL(q‖m)), m = (p + q)/2, base 2 (0…1).

A window alerts when its PSI is both material and significant: above the feature's
threshold from the registry, and above the PSI that sampling alone reaches one window in
a thousand. Without drift, PSI ≈ χ²(k − 1) · (1/n + 1/m) for n window rows, m baseline
rows and k non-empty bins, so the noise floor is ``critical · (1/n + 1/m)`` with
``critical`` the χ² 0.999 quantile. A 0.1 threshold over 250 rows and 10 bins would
otherwise fire on noise alone about once in 200 windows.

**Missing values.** Rows served from defaults (an unknown entity) are binned at their
default value, as training binned them, so a feature going missing moves its PSI only as
far as its default is from its usual values: a merchant's fraud-label count defaults to
0, its commonest value. So each window also checks its missing share (``missing`` / rows):
it alerts when above the baseline's ``missing_expected`` by more than ``MISSING_MARGIN``
and by more than sampling allows (``Z_999`` standard errors), with the same threshold-0
and 200-row gates. The window's ``alert`` is either rule; ``psi_alert`` and
``missing_alert`` say which.

**Bins.** ``baseline_edges`` draws a baseline's bins from training values: quantiles, and
a value holding several quantiles (the zeros of a flag or of a mostly-zero ratio) gets a
bin of its own: quantiles alone put a 5% flag's ones in one bin with its zeros, and its
PSI is 0 whatever happens to it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import ArrayLike, NDArray

from streams.scoring.metadata import Histogram, ModelMetadata

__all__ = [
    "ALERT_MIN_ROWS",
    "DELTA_COLUMNS",
    "EPSILON",
    "MISSING_MARGIN",
    "SCORE",
    "Baseline",
    "DriftAccumulator",
    "DriftDeltas",
    "HistogramRow",
    "Observation",
    "WindowDrift",
    "baseline_edges",
    "chi2_quantile",
    "drift_statistics",
    "model_baselines",
    "psi",
    "smoothed",
    "summarise",
    "window_table",
]

EPSILON = 1e-4  # the proportion floor; the drift_stats view (migration 0008) uses the same
SCORE = "__score__"  # the pseudo-feature holding the model's score distribution
ALERT_MIN_ROWS = 200
Z_999 = 3.0902  # the standard normal 0.999 quantile
# A window's missing share must exceed the baseline's by this much to alert (migration
# 0008 uses the same): the few rows of entities first seen today stay quiet.
MISSING_MARGIN = 0.05
_NONE = -(2**62)  # "no watermark yet": far below any event time, safe to subtract from


def chi2_quantile(dof: int, z: float = Z_999) -> float:
    """The χ² quantile for ``dof`` degrees of freedom at the normal quantile ``z``
    (Wilson-Hilferty: 3% above the exact value at 1 degree of freedom, under 2% from 3 on)."""
    k = max(dof, 1)
    return float(k * (1 - 2 / (9 * k) + z * math.sqrt(2 / (9 * k))) ** 3)


# ---- the one PSI definition ------------------------------------------------------------


def smoothed(
    observed: ArrayLike, expected: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64]] | None:
    """(p, q): ``observed`` (counts, or proportions) and ``expected`` as proportions, each
    floored at ``EPSILON`` and renormalised; None when nothing was observed."""
    counts = np.asarray(observed, dtype=np.float64)
    total = counts.sum()
    if not total > 0:
        return None
    p = np.maximum(counts / total, EPSILON)
    q = np.maximum(np.asarray(expected, dtype=np.float64), EPSILON)
    return p / p.sum(), q / q.sum()


def psi(observed: ArrayLike, expected: ArrayLike) -> float:
    """Population stability index Σ (p − q) · ln(p / q) of ``observed`` counts (or
    proportions) against ``expected`` proportions on the same bins (see ``smoothed``)."""
    pq = smoothed(observed, expected)
    if pq is None:
        return 0.0
    p, q = pq
    return float(np.sum((p - q) * np.log(p / q)))


def drift_statistics(counts: ArrayLike, expected: ArrayLike) -> tuple[float, float, float]:
    """(PSI, binned KS, Jensen-Shannon distance) of observed ``counts`` vs ``expected``."""
    pq = smoothed(counts, expected)
    if pq is None:
        return 0.0, 0.0, 0.0
    p, q = pq
    value = float(np.sum((p - q) * np.log(p / q)))
    ks = float(np.max(np.abs(np.cumsum(p) - np.cumsum(q))))
    m = (p + q) / 2
    js = 0.5 * np.sum(p * np.log2(p / m)) + 0.5 * np.sum(q * np.log2(q / m))
    return value, ks, math.sqrt(max(float(js), 0.0))


# ---- baselines ---------------------------------------------------------------------------


def baseline_edges(values: ArrayLike, bins: int = 10) -> NDArray[np.float64]:
    """Interior cut points of a training baseline for ``values`` (non-finite ones left out).

    Quantile edges, about equal mass per bin, rounded to 7 decimals; and for each value on
    which several quantiles fall (an atom: the zeros of a flag or of a mostly-zero ratio)
    a cut halfway to the next distinct value, so the atom and what lies above it fall in
    different bins. Quantiles alone give a flag set on 5% of rows the one edge 0: both of
    its values share a bin, and no change of its share moves its PSI. Values rarer than a
    bin's mass stay merged with their neighbours (a bin of 2 training rows in 1,500 would
    make PSI's noise far heavier-tailed than its noise floor assumes).
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return np.zeros(0, dtype=np.float64)
    raw = np.quantile(v, np.linspace(0, 1, bins + 1)[1:-1])
    levels, repeats = np.unique(raw, return_counts=True)
    atoms = levels[repeats > 1]
    distinct = np.unique(v)
    above = np.searchsorted(distinct, atoms, side="right")
    atoms, above = atoms[above < len(distinct)], above[above < len(distinct)]
    following = distinct[above]
    # Where the next distinct value is an edge already, the atom has its bin.
    alone = ~np.isin(following, levels)
    cuts = (atoms[alone] + following[alone]) / 2
    return np.unique(np.round(np.concatenate([raw, cuts]), 7))


@dataclass(frozen=True, slots=True)
class Baseline:
    """One monitored column: training bin edges, expected proportions, alert threshold."""

    name: str
    column: int  # the model input column; -1 for the score
    edges: NDArray[np.float64]  # interior cut points: bins (-inf,e0), [e0,e1), …, [e_last, inf)
    expected: NDArray[np.float64]
    threshold: float  # PSI above which the window alerts; 0 = not alerted (reported only)
    reference_rows: int = 0  # rows the baseline was built from; 0 = unknown (taken as many)
    # Share of the reference rows served from defaults. The trainer fills defaults before
    # drawing the baselines and does not record it, so a sidecar without
    # ``training_data["missing_rates"]`` gives 0: training taken as complete.
    missing_expected: float = 0.0

    @classmethod
    def from_histogram(
        cls,
        name: str,
        column: int,
        histogram: Histogram,
        threshold: float,
        reference_rows: int = 0,
        missing_expected: float = 0.0,
    ) -> Baseline:
        return cls(
            name,
            column,
            np.asarray(histogram.edges, dtype=np.float64),
            np.asarray(histogram.proportions, dtype=np.float64),
            threshold,
            reference_rows,
            missing_expected,
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

    def missing_floor(self, rows: int) -> float:
        """The missing share above which a window of ``rows`` alerts: the expected share
        plus ``MISSING_MARGIN``, or plus ``Z_999`` standard errors of the difference of
        two shares (window and reference) where that is more."""
        r = self.missing_expected
        reference = 1 / self.reference_rows if self.reference_rows > 0 else 0.0
        spread = Z_999 * math.sqrt(r * (1 - r) * (1 / max(rows, 1) + reference))
        return r + max(MISSING_MARGIN, spread)

    def missing_alerts(self, missing: int, rows: int) -> bool:
        """The ``drift_stats`` missing rule: more rows served from defaults than the
        baseline's share allows, with the PSI rule's threshold-0 and row gates."""
        return (
            self.threshold > 0
            and rows >= ALERT_MIN_ROWS
            and missing / max(rows, 1) > self.missing_floor(rows)
        )


def model_baselines(
    metadata: ModelMetadata, thresholds: Mapping[str, float], score_threshold: float = 0.2
) -> list[Baseline]:
    """The model's features in input order (those with a baseline), then its score.

    Feature baselines come from the training rows, the score's from the holdout rows;
    missing shares from ``training_data["missing_rates"]`` where the sidecar has them."""
    train_rows = int(metadata.training_data.get("train_rows", 0))
    holdout_rows = int(metadata.training_data.get("holdout_rows", 0))
    missing_rates = metadata.training_data.get("missing_rates")
    if not isinstance(missing_rates, Mapping):
        missing_rates = {}
    out = [
        Baseline.from_histogram(
            name,
            column,
            metadata.feature_baselines[name],
            thresholds.get(name, 0.2),
            train_rows,
            float(missing_rates.get(name, 0.0)),
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


@dataclass(frozen=True, slots=True)
class _Layout:
    """A model's baselines as arrays, so one batch is binned in a few numpy calls."""

    columns: NDArray[np.int64]  # model input column of each feature baseline
    edges: NDArray[np.float64]  # [features × most edges], padded with NaN (in no comparison)
    edges32: NDArray[np.float32]  # the same as the smallest float32 at or above each edge
    offsets: NDArray[np.int64]  # where each baseline's bins start in the flat counts
    sizes: NDArray[np.int64]  # bins of each baseline
    bins: int  # all bins, the score's included
    score: Baseline | None
    names: tuple[str, ...]
    indices: NDArray[np.int16]  # each baseline's column (-1: the score)
    key: bytes  # equal for layouts that bin features alike (a champion and its shadow)

    @classmethod
    def of(cls, baselines: Sequence[Baseline]) -> _Layout:
        features = [b for b in baselines if b.column >= 0]
        score = next((b for b in baselines if b.column < 0), None)
        if score is not None and baselines[-1] is not score:
            raise ValueError("the score's baseline must come last (see model_baselines)")
        width = max((len(b.edges) for b in features), default=0)
        edges = np.full((len(features), max(width, 1)), np.nan)
        for i, b in enumerate(features):
            edges[i, : len(b.edges)] = b.edges
        # For a float32 value v, v >= e exactly when v >= the smallest float32 >= e: the
        # features are compared in float32, without a float64 copy of the batch.
        edges32 = edges.astype(np.float32)
        below = edges32.astype(np.float64) < edges
        edges32[below] = np.nextafter(edges32[below], np.float32(np.inf))
        sizes = np.array([b.bins for b in baselines], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        columns = np.array([b.column for b in features], dtype=np.int64)
        key = columns.tobytes() + edges.tobytes() + sizes[: len(features)].tobytes()
        return cls(
            columns,
            edges,
            edges32,
            offsets,
            sizes,
            int(offsets[-1]),
            score,
            tuple(b.name for b in baselines),
            np.array([b.column for b in baselines], dtype=np.int16),
            key,
        )

    @property
    def baselines(self) -> int:
        return len(self.names)

    def same_as(self, other: _Layout) -> bool:
        return (
            self.names == other.names
            and self.key == other.key
            and np.array_equal(self.sizes, other.sizes)
        )

    def feature_bins(self, features: NDArray[np.floating[Any]]) -> NDArray[np.integer[Any]]:
        """Each value's bin, [rows × feature baselines]: the number of edges at or below it
        (``searchsorted(side="right")``), one comparison pass per edge over every feature
        at once (a loop over at most the widest baseline's edges, never over rows)."""
        x = features[:, self.columns]
        edges = self.edges32 if x.dtype == np.float32 else self.edges
        out = np.zeros(x.shape, dtype=np.uint8 if edges.shape[1] < 255 else np.int32)
        for e in range(edges.shape[1]):
            np.add(out, x >= edges[:, e], out=out, casting="unsafe")
        return out


# ---- what a batch yields -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HistogramRow:
    """One closed window of one monitored column (a whole ``drift_deltas`` row)."""

    model_version: str
    feature: str
    feature_index: int
    window_start_ms: int
    window_ms: int
    partition: int
    rows: int
    missing: int
    counts: list[int]


DELTA_COLUMNS = (
    "model_version", "feature", "feature_index", "window_start", "window_seconds", "partition",
    "source", "first_offset", "last_offset", "rows", "missing", "counts", "worker_id",
)  # fmt: skip
_TS = pa.timestamp("ms", tz="UTC")


@dataclass(frozen=True, slots=True)
class DriftDeltas:
    """Counts per (model, monitored column, window, partition), columnar: what one batch
    added (``source`` and the batch's offsets set), or whole closed windows (``source``
    "", offsets 0). ``counts`` of row i are ``values[value_offsets[i]:value_offsets[i + 1]]``.
    """

    window_ms: int
    source: str  # what the offsets count (the valid topic); "" for whole windows
    model_version: NDArray[np.str_]
    feature: NDArray[np.str_]
    feature_index: NDArray[np.int16]
    window_start_ms: NDArray[np.int64]
    partition: NDArray[np.int64]
    first_offset: NDArray[np.int64]  # the batch's first and last offset in that partition
    last_offset: NDArray[np.int64]
    rows: NDArray[np.int64]
    missing: NDArray[np.int64]
    values: NDArray[np.int64]
    value_offsets: NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.rows)

    @classmethod
    def empty(cls, window_ms: int, source: str = "") -> DriftDeltas:
        i64 = np.zeros(0, dtype=np.int64)
        return cls(
            window_ms, source, np.zeros(0, dtype=np.str_), np.zeros(0, dtype=np.str_),
            np.zeros(0, dtype=np.int16), i64, i64, i64, i64, i64, i64, i64,
            np.zeros(1, dtype=np.int64),
        )  # fmt: skip

    @classmethod
    def concat(cls, parts: Sequence[DriftDeltas], window_ms: int, source: str) -> DriftDeltas:
        if not parts:
            return cls.empty(window_ms, source)
        if len(parts) == 1:
            return dataclasses.replace(parts[0], window_ms=window_ms, source=source)
        ends = np.cumsum([len(p.values) for p in parts])[:-1]
        shifted = [parts[0].value_offsets] + [
            p.value_offsets[1:] + end for p, end in zip(parts[1:], ends, strict=True)
        ]

        def joined(name: str) -> NDArray[Any]:
            return np.concatenate([getattr(p, name) for p in parts])

        return cls(
            window_ms,
            source,
            joined("model_version"),
            joined("feature"),
            joined("feature_index"),
            joined("window_start_ms"),
            joined("partition"),
            joined("first_offset"),
            joined("last_offset"),
            joined("rows"),
            joined("missing"),
            joined("values"),
            np.concatenate(shifted),
        )

    def counts_of(self, i: int) -> list[int]:
        return [int(c) for c in self.values[self.value_offsets[i] : self.value_offsets[i + 1]]]

    def take(self, order: NDArray[np.int64]) -> DriftDeltas:
        """The rows at ``order`` (a permutation or a selection), counts moved with them."""
        lengths = np.diff(self.value_offsets)[order]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        starts = self.value_offsets[:-1][order] - offsets[:-1]
        gather = np.repeat(starts, lengths) + np.arange(offsets[-1])
        return DriftDeltas(
            self.window_ms, self.source, self.model_version[order], self.feature[order],
            self.feature_index[order], self.window_start_ms[order], self.partition[order],
            self.first_offset[order], self.last_offset[order], self.rows[order],
            self.missing[order], self.values[gather], offsets,
        )  # fmt: skip

    def histogram_rows(self) -> list[HistogramRow]:
        """One ``HistogramRow`` per row (a Python object each: for few rows)."""
        values, bounds = self.values.tolist(), self.value_offsets.tolist()
        columns = zip(
            self.model_version.tolist(), self.feature.tolist(), self.feature_index.tolist(),
            self.window_start_ms.tolist(), self.partition.tolist(), self.rows.tolist(),
            self.missing.tolist(), strict=True,
        )  # fmt: skip
        return [
            HistogramRow(m, f, j, w, self.window_ms, p, n, x, values[bounds[i] : bounds[i + 1]])
            for i, (m, f, j, w, p, n, x) in enumerate(columns)
        ]

    def table(self, worker_id: str) -> pa.Table:
        """The ``drift_deltas`` rows (``DELTA_COLUMNS``) as one Arrow table, ready for
        ``insert_arrow``: the sink can concatenate many batches' tables into one insert."""
        n = len(self.rows)
        return pa.table(
            {
                "model_version": pa.array(self.model_version, type=pa.string()),
                "feature": pa.array(self.feature, type=pa.string()),
                "feature_index": pa.array(self.feature_index, type=pa.int16()),
                "window_start": pa.array(self.window_start_ms, type=pa.int64()).cast(_TS),
                "window_seconds": pa.array(
                    np.full(n, self.window_ms // 1000, dtype=np.uint32), type=pa.uint32()
                ),
                "partition": pa.array(self.partition.astype(np.uint16), type=pa.uint16()),
                "source": pa.array([self.source] * n, type=pa.string()),
                "first_offset": pa.array(self.first_offset.astype(np.uint64), type=pa.uint64()),
                "last_offset": pa.array(self.last_offset.astype(np.uint64), type=pa.uint64()),
                "rows": pa.array(self.rows.astype(np.uint64), type=pa.uint64()),
                "missing": pa.array(self.missing.astype(np.uint64), type=pa.uint64()),
                "counts": pa.ListArray.from_arrays(
                    pa.array(self.value_offsets.astype(np.int32), type=pa.int32()),
                    pa.array(self.values.astype(np.uint64), type=pa.uint64()),
                ),
                "worker_id": pa.array([worker_id] * n, type=pa.string()),
            }
        )


def window_table(rows: Sequence[HistogramRow] | DriftDeltas, worker_id: str) -> pa.Table:
    """Closed windows as whole ``drift_deltas`` rows (source "", offsets 0): the key of a
    window, so re-emitting it (after a seeded restart) replaces the earlier row."""
    if isinstance(rows, DriftDeltas):
        return dataclasses.replace(
            rows, source="", first_offset=rows.rows * 0, last_offset=rows.rows * 0
        ).table(worker_id)
    n = len(rows)
    lengths = np.array([len(r.counts) for r in rows], dtype=np.int64)
    window_ms = rows[0].window_ms if rows else 1000
    if any(r.window_ms != window_ms for r in rows):
        raise ValueError("closed windows of different lengths in one table")
    zeros = np.zeros(n, dtype=np.int64)
    whole = DriftDeltas(
        window_ms,
        "",
        np.array([r.model_version for r in rows], dtype=np.str_),
        np.array([r.feature for r in rows], dtype=np.str_),
        np.array([r.feature_index for r in rows], dtype=np.int16),
        np.array([r.window_start_ms for r in rows], dtype=np.int64),
        np.array([r.partition for r in rows], dtype=np.int64),
        zeros,
        zeros,
        np.array([r.rows for r in rows], dtype=np.int64),
        np.array([r.missing for r in rows], dtype=np.int64),
        np.array([c for r in rows for c in r.counts], dtype=np.int64),
        np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
    )
    return whole.table(worker_id)


@dataclass(frozen=True, slots=True)
class Observation:
    """What one batch did to the accumulator."""

    deltas: DriftDeltas  # the counts it added, per (model, column, window, partition)
    closed: DriftDeltas  # windows it closed, whole, oldest first (``histogram_rows()``)
    late: int  # rows older than their partition's oldest open window: scored, not binned
    future: int  # rows beyond the future limit: scored, not binned
    binned: int  # rows counted in a window


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
    alert: bool  # either rule: psi_alert or missing_alert
    missing_rate: float = 0.0
    missing_floor: float = 0.0
    psi_alert: bool = False
    missing_alert: bool = False


def summarise(
    rows: Sequence[HistogramRow] | DriftDeltas, baselines: Mapping[str, Sequence[Baseline]]
) -> list[WindowDrift]:
    """Statistics of the newest window per model among closed histogram rows, partitions
    of that window summed.

    For this worker's logs and gauges: it sees only its own partitions and only those
    closed together; ``drift_stats`` in ClickHouse has every window, every worker's.
    """
    if isinstance(rows, DriftDeltas):
        rows = _newest_windows(rows).histogram_rows()
    by_name = {(m, b.name): b for m, columns in baselines.items() for b in columns}
    newest: dict[str, int] = {}
    for r in rows:
        newest[r.model_version] = max(
            newest.get(r.model_version, r.window_start_ms), r.window_start_ms
        )
    summed: dict[tuple[str, str, int], tuple[int, int, NDArray[np.int64]]] = {}
    for r in (r for r in rows if r.window_start_ms == newest[r.model_version]):
        key = (r.model_version, r.feature, r.window_start_ms)
        n, gone, counts = summed.get(key, (0, 0, np.zeros(len(r.counts), dtype=np.int64)))
        summed[key] = (n + r.rows, gone + r.missing, counts + np.asarray(r.counts, np.int64))
    out: list[WindowDrift] = []
    for (model, feature, start), (n, gone, counts) in sorted(summed.items()):
        baseline = by_name.get((model, feature))
        if baseline is None:
            continue
        value = drift_statistics(counts, baseline.expected)[0]
        by_psi, by_missing = baseline.alerts(value, n), baseline.missing_alerts(gone, n)
        drift = WindowDrift(
            model, feature, start, n, value, baseline.threshold, baseline.noise_floor(n),
            by_psi or by_missing, gone / max(n, 1), baseline.missing_floor(n), by_psi, by_missing,
        )  # fmt: skip
        out.append(drift)
    return out


def _newest_windows(closed: DriftDeltas) -> DriftDeltas:
    """The rows of each model's newest window (vectorised: a batch may close many)."""
    if not len(closed):
        return closed
    models, model = np.unique(closed.model_version, return_inverse=True)
    newest = np.full(len(models), np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(newest, model, closed.window_start_ms)
    return closed.take(np.flatnonzero(closed.window_start_ms == newest[model]))


# ---- the accumulator -------------------------------------------------------------------------


@dataclass(slots=True)
class _ModelState:
    """One model's open windows: [partition slot × ring cell × bin] counts."""

    layout: _Layout
    baselines: list[Baseline]
    counts: NDArray[np.int64]  # [slots, ring, bins]
    missing: NDArray[np.int64]  # [slots, ring, baselines]
    rows: NDArray[np.int64]  # [slots, ring]

    @classmethod
    def new(cls, baselines: list[Baseline], slots: int, ring: int) -> _ModelState:
        layout = _Layout.of(baselines)
        return cls(
            layout,
            baselines,
            np.zeros((slots, ring, layout.bins), dtype=np.int64),
            np.zeros((slots, ring, layout.baselines), dtype=np.int64),
            np.zeros((slots, ring), dtype=np.int64),
        )

    def grow(self, slots: int) -> None:
        extra = slots - self.rows.shape[0]
        if extra > 0:
            ring = self.rows.shape[1]
            self.counts = np.concatenate(
                [self.counts, np.zeros((extra, ring, self.layout.bins), dtype=np.int64)]
            )
            self.missing = np.concatenate(
                [self.missing, np.zeros((extra, ring, self.layout.baselines), dtype=np.int64)]
            )
            self.rows = np.concatenate([self.rows, np.zeros((extra, ring), dtype=np.int64)])


class DriftAccumulator:
    """Bin counts of the open windows of each partition, for the baselines of each model.

    ``observe`` takes one scored batch: every row's valid-topic partition, event time and
    (source) offset, the features as scored ([rows × model inputs]), the per-feature missing
    mask (served from defaults), and each model's scores. See the module docstring for the
    watermark, the ring of open windows, late and future rows, and why the cost is bounded.
    """

    def __init__(
        self,
        window_ms: int,
        baselines: Mapping[str, list[Baseline]],
        *,
        lateness_windows: int = 1,
        max_open_windows: int = 4,
        max_future_ms: int = 60_000,
        idle_windows: int = 10,
    ) -> None:
        if window_ms <= 0 or max_open_windows < 1 or lateness_windows < 0:
            raise ValueError(
                f"drift windows need window_ms > 0 ({window_ms}), max_open_windows >= 1 "
                f"({max_open_windows}) and lateness_windows >= 0 ({lateness_windows})"
            )
        self.window_ms = window_ms
        self.lateness_windows = lateness_windows
        self.max_open_windows = max_open_windows
        self.max_future_ms = max_future_ms
        self.idle_windows = idle_windows
        # Open windows per partition: the watermark's own and ``lateness`` before it, capped.
        self.ring = min(lateness_windows + 1, max_open_windows)
        self.late_rows = 0
        self.future_rows = 0
        self._partitions = np.zeros(0, dtype=np.int64)  # slot → partition
        self._order = np.zeros(0, dtype=np.int64)  # slots sorted by partition
        self._marks = np.zeros(0, dtype=np.int64)  # slot → watermark (ms), _NONE if none
        self._tops = np.zeros(0, dtype=np.int64)  # slot → newest open window index
        self._models: dict[str, _ModelState] = {}
        self._pending: list[DriftDeltas] = []  # closed outside observe (a model dropped)
        self.set_baselines(baselines)

    # -- configuration ---------------------------------------------------------------------
    @property
    def baselines(self) -> dict[str, list[Baseline]]:
        return {model: state.baselines for model, state in self._models.items()}

    def set_baselines(self, baselines: Mapping[str, list[Baseline]]) -> None:
        """Monitor these models; a model dropped (or re-laid out) has its open windows
        closed, returned by the next ``observe``."""
        slots = len(self._partitions)
        models: dict[str, _ModelState] = {}
        for model, columns in baselines.items():
            if not columns:
                continue
            state = _ModelState.new(list(columns), slots, self.ring)
            old = self._models.get(model)
            if old is not None and old.layout.same_as(state.layout):
                old.baselines = list(columns)
                state = old
            models[model] = state
        for model, old in self._models.items():
            if models.get(model) is not old:
                everything = np.ones(old.rows.shape, dtype=np.bool_)
                self._pending.append(self._windows(model, old, everything, self._tops))
        self._models = models

    def window_of(self, event_ms: NDArray[np.int64]) -> NDArray[np.int64]:
        return (event_ms // self.window_ms) * self.window_ms

    # -- what is open -----------------------------------------------------------------------
    def watermark(self, partition: int) -> int | None:
        slot = self._slot(partition)
        if slot is None or self._marks[slot] == _NONE:
            return None
        return int(self._marks[slot])

    def open_range(self, partition: int) -> tuple[int, int] | None:
        """[first open window's start, newest open window's end) of ``partition``."""
        slot = self._slot(partition)
        if slot is None or self._tops[slot] == _NONE:
            return None
        top = int(self._tops[slot])
        return (top - self.ring + 1) * self.window_ms, (top + 1) * self.window_ms

    def open_windows(self, partition: int | None = None) -> int:
        """Windows holding rows (of any model), for ``partition`` or all partitions."""
        held = np.zeros((len(self._partitions), self.ring), dtype=np.bool_)
        for state in self._models.values():
            held |= state.rows > 0
        if partition is None:
            return int(held.sum())
        slot = self._slot(partition)
        return 0 if slot is None else int(held[slot].sum())

    # -- one batch ---------------------------------------------------------------------------
    def observe(
        self,
        partitions: NDArray[np.int64],
        event_ms: NDArray[np.int64],
        features: NDArray[np.float32],
        feature_missing: NDArray[np.bool_],
        scores: Mapping[str, NDArray[np.float32]],
        *,
        now_ms: int,
        offsets: NDArray[np.int64] | None = None,
        source: str = "",
    ) -> Observation:
        """Move the watermarks, close what left the ring, bin the batch; see the class."""
        closed, self._pending = self._pending, []
        n = len(event_ms)
        if n == 0:
            empty = DriftDeltas.empty(self.window_ms, source)
            return Observation(empty, DriftDeltas.concat(closed, self.window_ms, ""), 0, 0, 0)
        partitions = np.asarray(partitions, dtype=np.int64)
        event_ms = np.asarray(event_ms, dtype=np.int64)
        slots = self._slots_of(partitions)
        future = event_ms > now_ms + self.max_future_ms
        admissible = ~future
        np.maximum.at(self._marks, slots[admissible], event_ms[admissible])
        closed.append(self._advance())
        index = event_ms // self.window_ms
        late = admissible & (index <= self._tops[slots] - self.ring)
        binned = admissible & ~late
        n_late, n_future = int(late.sum()), int(future.sum())
        self.late_rows += n_late
        self.future_rows += n_future
        first = last = None
        if offsets is not None:
            offsets = np.asarray(offsets, dtype=np.int64)
            first = np.full(len(self._partitions), np.iinfo(np.int64).max, dtype=np.int64)
            last = np.full(len(self._partitions), -1, dtype=np.int64)
            np.minimum.at(first, slots, offsets)
            np.maximum.at(last, slots, offsets)
        cells = slots[binned] * self.ring + index[binned] % self.ring
        kept, kept_missing = features[binned], feature_missing[binned]
        shared: dict[bytes, tuple[NDArray[np.int64], NDArray[np.int64]]] = {}
        parts = [
            self._bin(
                model,
                state,
                cells,
                kept,
                kept_missing,
                scores[model][binned],
                first,
                last,
                shared,
            )
            for model, state in self._models.items()
            if model in scores
        ]
        deltas = DriftDeltas.concat(parts, self.window_ms, source)
        whole = DriftDeltas.concat(closed, self.window_ms, "")
        return Observation(deltas, whole, n_late, n_future, int(binned.sum()))

    def seed(
        self,
        model: str,
        partition: int,
        event_ms: NDArray[np.int64],
        features: NDArray[np.float32],
        feature_missing: NDArray[np.bool_],
        scores: NDArray[np.float32],
    ) -> int:
        """Add rows an earlier process already scored to ``partition``'s open windows (the
        whole-window path after a restart); rows outside them are ignored. Returns rows added."""
        state = self._models.get(model)
        slot = self._slot(partition)
        if state is None or slot is None or self._tops[slot] == _NONE:
            return 0
        index = np.asarray(event_ms, dtype=np.int64) // self.window_ms
        top = self._tops[slot]
        inside = (index > top - self.ring) & (index <= top)
        cells = slot * self.ring + index[inside] % self.ring
        self._bin(model, state, cells, features[inside], feature_missing[inside],
                  scores[inside], None, None)  # fmt: skip
        return int(inside.sum())

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop the open windows and watermarks of ``partitions`` (revoked or re-assigned)."""
        for partition in partitions:
            slot = self._slot(partition)
            if slot is None:
                continue
            self._marks[slot] = self._tops[slot] = _NONE
            for state in self._models.values():
                state.counts[slot] = 0
                state.missing[slot] = 0
                state.rows[slot] = 0

    # -- internals ------------------------------------------------------------------------------
    def _slot(self, partition: int) -> int | None:
        found = np.flatnonzero(self._partitions == partition)
        return int(found[0]) if len(found) else None

    def _slots_of(self, partitions: NDArray[np.int64]) -> NDArray[np.int64]:
        """Each row's partition slot; new partitions get one (a loop over new partitions
        only: they come with assignments, not with rows)."""
        known = self._partitions[self._order]
        fresh = np.setdiff1d(partitions, known)
        if len(fresh):
            self._partitions = np.concatenate([self._partitions, fresh])
            self._order = np.argsort(self._partitions, kind="stable")
            none = np.full(len(fresh), _NONE, dtype=np.int64)
            self._marks = np.concatenate([self._marks, none])
            self._tops = np.concatenate([self._tops, none])
            for state in self._models.values():
                state.grow(len(self._partitions))
            known = self._partitions[self._order]
        return self._order[np.searchsorted(known, partitions)]

    def _advance(self) -> DriftDeltas:
        """Tops follow the watermarks (and the newest partition, for quiet ones); ring cells
        whose window changes are closed, returned whole and cleared, oldest window first."""
        seen = self._marks != _NONE
        if not seen.any():
            return DriftDeltas.empty(self.window_ms)
        tops = np.where(seen, np.maximum(self._tops, self._marks // self.window_ms), _NONE)
        behind = max(self.idle_windows + 1 - self.ring, 0)
        tops = np.where(seen, np.maximum(tops, tops[seen].max() - behind), _NONE)
        k = np.arange(self.ring)[None, :]
        old, new = self._tops[:, None], tops[:, None]
        moved = (old != _NONE) & (old - (old - k) % self.ring != new - (new - k) % self.ring)
        closed = DriftDeltas.empty(self.window_ms)
        if moved.any():
            parts = []
            for model, state in self._models.items():
                parts.append(self._windows(model, state, moved, self._tops))
                state.counts[moved] = 0
                state.missing[moved] = 0
                state.rows[moved] = 0
            closed = DriftDeltas.concat(parts, self.window_ms, "")
            # Oldest window first, then partition; lexsort is stable: model, column order.
            closed = closed.take(np.lexsort((closed.partition, closed.window_start_ms)))
        self._tops = tops
        return closed

    def _windows(
        self, model: str, state: _ModelState, cells: NDArray[np.bool_], tops: NDArray[np.int64]
    ) -> DriftDeltas:
        """Whole windows of ``cells`` ([slots × ring] mask) that hold rows, columnar."""
        flat = np.flatnonzero((cells & (state.rows > 0)).ravel())
        zeros = np.zeros(len(self._partitions), dtype=np.int64)
        return self._rows_of(
            model,
            state.layout,
            flat,
            state.rows.ravel(),
            state.counts.reshape(-1, state.layout.bins),
            state.missing.reshape(-1, state.layout.baselines),
            tops,
            zeros,
            zeros,
        )

    def _rows_of(
        self,
        model: str,
        layout: _Layout,
        touched: NDArray[np.int64],
        rows: NDArray[np.int64],
        counts: NDArray[np.int64],
        missing: NDArray[np.int64],
        tops: NDArray[np.int64],
        first: NDArray[np.int64],
        last: NDArray[np.int64],
    ) -> DriftDeltas:
        """A row per (``touched`` ring cell, monitored column): ``rows``, ``counts`` and
        ``missing`` are indexed by cell (slot × ring + k), the window follows from ``tops``."""
        width = layout.baselines
        slot, k = touched // self.ring, touched % self.ring
        top = tops[slot]
        starts = (top - (top - k) % self.ring) * self.window_ms
        m = len(touched)
        lengths = np.tile(layout.sizes, m)
        return DriftDeltas(
            self.window_ms,
            "",
            np.full(m * width, model),
            np.tile(np.array(layout.names), m),
            np.tile(layout.indices, m),
            np.repeat(starts, width),
            np.repeat(self._partitions[slot], width),
            np.repeat(first[slot], width),
            np.repeat(last[slot], width),
            np.repeat(rows[touched], width),
            missing[touched].ravel(),
            counts[touched].ravel(),
            np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        )

    def _bin(
        self,
        model: str,
        state: _ModelState,
        cells: NDArray[np.int64],
        features: NDArray[np.float32],
        missing: NDArray[np.bool_],
        scores: NDArray[np.float32],
        first: NDArray[np.int64] | None,
        last: NDArray[np.int64] | None,
        shared: dict[bytes, tuple[NDArray[np.int64], NDArray[np.int64]]] | None = None,
    ) -> DriftDeltas:
        """Count rows into their ring ``cells`` (slot × ring + cell) and return the deltas
        (when ``first``/``last`` offsets per slot are given).

        Features go through ``_Layout.feature_bins``; NaN (a missing score) is in no bin.
        One ``bincount`` over (cell, bin) does every window at once. Models whose layouts
        bin features alike share that work through ``shared`` (one batch's cache).
        """
        layout = state.layout
        n_cells = state.rows.size
        size, width = layout.bins, layout.baselines
        n = len(layout.columns)
        rows = np.bincount(cells, minlength=n_cells)
        counts = np.zeros((n_cells, size), dtype=np.int64)
        miss = np.zeros((n_cells, width), dtype=np.int64)
        if n:
            found = shared.get(layout.key) if shared is not None else None
            if found is None:
                fsize = int(layout.offsets[n])
                flat = cells[:, None] * fsize + layout.offsets[None, :n]
                flat = flat + layout.feature_bins(features)
                counted = np.bincount(
                    flat[~np.isnan(features[:, layout.columns])], minlength=n_cells * fsize
                )
                where = cells[:, None] * n + np.arange(n)[None, :]
                served = np.bincount(where[missing[:, layout.columns]], minlength=n_cells * n)
                found = counted.reshape(n_cells, fsize), served.reshape(n_cells, n)
                if shared is not None:
                    shared[layout.key] = found
            counts[:, : found[0].shape[1]] = found[0]
            miss[:, :n] = found[1]
        if layout.score is not None:
            finite = ~np.isnan(scores)
            bins = np.searchsorted(layout.score.edges, scores[finite], side="right")
            score_bins = layout.score.bins
            counts[:, layout.offsets[n] :] = np.bincount(
                cells[finite] * score_bins + bins, minlength=n_cells * score_bins
            ).reshape(n_cells, score_bins)
            miss[:, n] = np.bincount(cells[~finite], minlength=n_cells)
        state.rows += rows.reshape(state.rows.shape)
        state.counts += counts.reshape(state.counts.shape)
        state.missing += miss.reshape(state.missing.shape)
        if first is None or last is None:
            return DriftDeltas.empty(self.window_ms)
        return self._rows_of(
            model, layout, np.flatnonzero(rows), rows, counts, miss, self._tops, first, last
        )
