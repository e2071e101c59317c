"""Drift statistics and the windowed accumulator (pure)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from numpy.typing import NDArray
from scipy.stats import chi2

from streams.monitoring.drift import (
    MISSING_MARGIN,
    Baseline,
    DriftAccumulator,
    HistogramRow,
    Observation,
    baseline_edges,
    chi2_quantile,
    drift_statistics,
    model_baselines,
    psi,
    summarise,
)

MINUTE = 60_000
NOW = 10**12  # the wall clock the tests pass: far ahead of their event times


def test_statistics_are_zero_for_the_baseline_and_grow_with_a_shift() -> None:
    expected = np.array([0.25, 0.25, 0.25, 0.25])
    same = drift_statistics(np.array([250, 250, 250, 250]), expected)
    assert same == (0.0, 0.0, 0.0)
    value, ks, js = drift_statistics(np.array([100, 100, 300, 500]), expected)
    p = np.array([0.1, 0.1, 0.3, 0.5])
    assert math.isclose(value, float(np.sum((p - expected) * np.log(p / expected))), rel_tol=1e-9)
    assert math.isclose(ks, 0.3, rel_tol=1e-9)  # CDFs 0.1/0.25, 0.2/0.5 → max gap 0.3
    assert 0 < js < 1
    # An empty bin is floored, not infinite.
    assert math.isfinite(drift_statistics(np.array([0, 0, 0, 10]), expected)[0])
    assert drift_statistics(np.array([0, 0, 0, 0]), expected) == (0.0, 0.0, 0.0)


def test_psi_takes_counts_or_proportions_alike() -> None:
    expected = np.array([0.5, 0.3, 0.2, 0.0])
    counts = np.array([40, 40, 20, 0])
    assert psi(counts, expected) == drift_statistics(counts, expected)[0]
    assert math.isclose(psi(counts / counts.sum(), expected), psi(counts, expected), rel_tol=1e-12)
    assert psi(counts, expected) > 0 and psi([0, 0, 0, 0], expected) == 0.0


def baselines() -> dict[str, list[Baseline]]:
    edges = np.array([0.0, 10.0])  # bins (-inf, 0), [0, 10), [10, inf)
    expected = np.array([0.1, 0.8, 0.1])
    return {
        "m": [
            Baseline("amount", 0, edges, expected, 0.2),
            Baseline("__score__", -1, edges, expected, 0.2),
        ]
    }


def observe(
    acc: DriftAccumulator,
    partitions: list[int],
    event_ms: list[int],
    values: list[float] | None = None,
    *,
    now_ms: int = NOW,
    offsets: list[int] | None = None,
) -> Observation:
    """One batch of model "m" with one feature; the score equals the feature."""
    n = len(event_ms)
    x = np.array(values if values is not None else [5.0] * n, dtype=np.float32)[:, None]
    return acc.observe(
        np.array(partitions, dtype=np.int64),
        np.array(event_ms, dtype=np.int64),
        x,
        np.zeros((n, 1), dtype=np.bool_),
        {"m": x[:, 0].copy()},
        now_ms=now_ms,
        offsets=None if offsets is None else np.array(offsets, dtype=np.int64),
        source="valid",
    )


def test_windows_close_on_each_partitions_own_clock_and_late_rows_are_counted() -> None:
    acc = DriftAccumulator(MINUTE, baselines(), lateness_windows=1, idle_windows=10)
    x = np.array([[5.0], [15.0], [-1.0], [5.0]], dtype=np.float32)
    missing = np.array([[False], [False], [True], [False]])
    scores = np.array([1.0, 2.0, np.nan, 3.0], dtype=np.float32)
    first = acc.observe(
        np.array([0, 0, 0, 1]),
        np.array([1_000, 2_000, 3_000, 4_000]),
        x,
        missing,
        {"m": scores},
        now_ms=NOW,
    )
    assert len(first.closed) == 0 and (first.binned, first.late, first.future) == (4, 0, 0)
    # Partition 0 moves two windows on; partition 1 does not: only partition 0's window closes.
    moved = observe(acc, [0], [125_000])
    rows = moved.closed.histogram_rows()
    assert {(r.partition, r.feature) for r in rows} == {(0, "amount"), (0, "__score__")}
    amount = next(r for r in rows if r.feature == "amount")
    assert (amount.rows, amount.missing, amount.counts) == (3, 1, [1, 1, 1])
    score = next(r for r in rows if r.feature == "__score__")
    assert (score.missing, score.counts) == (1, [0, 2, 0])  # the NaN score is missing
    # A row for the closed window is late: counted, not added.
    late = observe(acc, [0], [5_000])
    assert (late.late, late.binned, acc.late_rows) == (1, 0, 1)
    # Partition 1 went quiet: it closes once the newest partition is 10 windows on.
    quiet = observe(acc, [0], [4_000 + 10 * MINUTE])
    assert set(quiet.closed.partition.tolist()) == {0}
    idle = observe(acc, [0], [4_000 + 11 * MINUTE])
    assert set(idle.closed.partition.tolist()) == {1}


def test_chi2_quantile_is_close_to_the_exact_value() -> None:
    for dof in (1, 2, 3, 5, 9, 20, 50):
        exact = float(chi2.ppf(0.999, dof))
        tolerance = 0.035 if dof < 5 else 0.015
        assert abs(chi2_quantile(dof) - exact) / exact < tolerance, dof


def test_noise_floor_is_the_0999_quantile_of_psi_without_drift() -> None:
    """Draw windows from the baseline itself: about one in a thousand passes the floor."""
    rng = np.random.default_rng(3)
    expected = np.full(10, 0.1)
    baseline = Baseline("f", 0, np.arange(1.0, 10.0), expected, threshold=0.05, reference_rows=0)
    rows = 250
    psis = np.array(
        [drift_statistics(rng.multinomial(rows, expected), expected)[0] for _ in range(20_000)]
    )
    above = float(np.mean(psis > baseline.noise_floor(rows)))
    assert 0.0002 <= above <= 0.003, above
    # while a 0.05 threshold alone fires on noise in more than one window in ten
    assert float(np.mean(psis > baseline.threshold)) > 0.1


def test_a_window_alerts_only_when_material_significant_and_large_enough() -> None:
    expected = np.array([0.0, 0.25, 0.25, 0.25, 0.25])
    baseline = Baseline("f", 0, np.arange(0.0, 4.0), expected, threshold=0.1, reference_rows=1000)
    assert baseline.critical == chi2_quantile(3)  # empty bins carry no degree of freedom
    floor = baseline.noise_floor(250)
    assert floor == baseline.critical * (1 / 250 + 1 / 1000)
    assert baseline.alerts(max(floor, 0.1) + 0.01, 250)
    assert not baseline.alerts(max(floor, 0.1) + 0.01, 199)  # too few rows
    assert not baseline.alerts(0.099, 10_000)  # significant, not material
    small = Baseline("f", 0, np.arange(0.0, 4.0), expected, threshold=0.01, reference_rows=1000)
    assert not small.alerts(small.noise_floor(250) * 0.99, 250)  # material, not significant
    silent = Baseline("f", 0, np.arange(0.0, 4.0), expected, threshold=0.0)
    assert not silent.alerts(5.0, 10_000)  # threshold 0: reported, never alerted


def test_summarise_sums_partitions_of_a_window_and_applies_the_alert_rule() -> None:
    expected = np.full(4, 0.25)
    baseline = Baseline("f", 0, np.array([1.0, 2.0, 3.0]), expected, 0.2, reference_rows=5000)
    shifted = [0, 0, 50, 100]  # all mass in the top bins
    rows = [
        HistogramRow("m", "f", 0, 60_000, 60_000, 0, 150, 0, shifted),
        HistogramRow("m", "f", 0, 60_000, 60_000, 1, 150, 0, shifted),
        HistogramRow("m", "f", 0, 120_000, 60_000, 0, 150, 0, shifted),  # another window
        HistogramRow("other", "f", 0, 60_000, 60_000, 0, 150, 0, shifted),  # no baseline
    ]
    [newest] = summarise(rows, {"m": [baseline]})  # the newest window of each model
    assert (newest.window_start_ms, newest.rows) == (120_000, 150)
    assert not newest.alert  # a large shift, but 150 rows are too few to alert
    [both] = summarise(rows[:2], {"m": [baseline]})
    assert (both.window_start_ms, both.rows) == (60_000, 300)  # partitions summed
    value = drift_statistics(np.array([0, 0, 100, 200]), expected)[0]
    assert math.isclose(both.psi, value) and both.psi > 1
    assert both.alert
    assert both.noise_floor == baseline.noise_floor(300)


def _binning_case() -> tuple[
    list[Baseline], NDArray[np.float32], NDArray[np.bool_], NDArray[np.float32]
]:
    rng = np.random.default_rng(5)
    columns = [
        Baseline("a", 0, np.array([-1.0, 0.0, 1.0]), np.full(4, 0.25), 0.2),
        Baseline("b", 2, np.array([0.5]), np.full(2, 0.5), 0.2),  # fewer edges: padded
        Baseline("c", 1, np.array([0.0, 1.0, 2.0, 3.0, 4.0]), np.full(6, 1 / 6), 0.2),
        Baseline("__score__", -1, np.array([0.1, 0.5]), np.full(3, 1 / 3), 0.2),
    ]
    x = rng.normal(0, 2, size=(500, 3)).astype(np.float32)
    x[::7, 0] = 0.0  # on an edge: counts in the bin to its right
    x[::11, 2] = np.nan
    missing = np.zeros((500, 3), dtype=np.bool_)
    missing[::13, 1] = True
    scores = rng.uniform(0, 1, 500).astype(np.float32)
    scores[::17] = np.nan
    return columns, x, missing, scores


def test_batch_binning_matches_searchsorted_per_column() -> None:
    columns, x, missing, scores = _binning_case()
    acc = DriftAccumulator(MINUTE, {"m": columns})
    zeros = np.zeros(500, dtype=np.int64)
    acc.observe(zeros, zeros, x, missing, {"m": scores}, now_ms=NOW)
    later = np.array([10 * MINUTE])
    closed = acc.observe(
        np.zeros(1, dtype=np.int64), later, x[:1], missing[:1], {"m": scores[:1]}, now_ms=NOW
    ).closed
    rows = {r.feature: r for r in closed.histogram_rows()}
    for b in columns:
        values = scores if b.column < 0 else x[:, b.column]
        finite = values[~np.isnan(values)]
        want = np.bincount(np.searchsorted(b.edges, finite, side="right"), minlength=b.bins)
        assert rows[b.name].counts == want.tolist(), b.name
        assert rows[b.name].feature_index == b.column
    assert rows["c"].missing == 39 and rows["__score__"].missing == 30
    assert {r.rows for r in rows.values()} == {500}


def test_float32_features_bin_exactly_as_float64_comparisons() -> None:
    """Features are compared in float32 against each edge's float32 ceiling: the same
    bins as comparing in float64, also next to edges float32 cannot represent."""
    edges = np.array([-0.1, 0.0, 0.1, 1 / 3, 1e-8])[[0, 1, 4, 2, 3]]  # sorted
    values = []
    for e in edges:
        f = np.float32(e)
        values += [f, np.nextafter(f, np.float32(-np.inf)), np.nextafter(f, np.float32(np.inf))]
    values += [np.float32(-0.0), np.float32(np.inf), np.float32(-np.inf), np.float32(5.0)]
    x = np.array(values, dtype=np.float32)
    n = len(x)
    columns = [
        Baseline("a", 0, edges, np.full(len(edges) + 1, 1 / (len(edges) + 1)), 0.2),
        Baseline("b", 1, edges[:2], np.full(3, 1 / 3), 0.2),  # padded: +inf lands in its top bin
    ]
    acc = DriftAccumulator(MINUTE, {"m": columns})
    features = np.stack([x, x], axis=1)
    zeros = np.zeros(n, dtype=np.int64)
    acc.observe(zeros, zeros, features, np.zeros((n, 2), np.bool_), {"m": x}, now_ms=NOW)
    closed = acc.observe(
        zeros[:1], zeros[:1] + 10 * MINUTE, features[:1], np.zeros((1, 2), np.bool_),
        {"m": x[:1]}, now_ms=NOW,
    ).closed.histogram_rows()  # fmt: skip
    rows = {r.feature: r.counts for r in closed}
    for b in columns:
        want = np.bincount(
            np.searchsorted(b.edges, x.astype(np.float64), side="right"), minlength=b.bins
        )
        assert rows[b.name] == want.tolist(), b.name


def test_baseline_edges_give_a_rare_flag_and_an_atom_bins_of_their_own() -> None:
    rng = np.random.default_rng(9)
    flag = (rng.random(20_000) < 0.05).astype(np.float64)
    # Plain quantiles of a 5% flag: the one edge 0, both values in one bin (PSI always 0).
    plain = np.unique(np.round(np.quantile(flag, np.linspace(0, 1, 11)[1:-1]), 7))
    assert plain.tolist() == [0.0]
    edges = baseline_edges(flag)
    counts = np.bincount(np.searchsorted(edges, flag, side="right"), minlength=len(edges) + 1)
    assert np.count_nonzero(counts) == 2 and counts[-1] == int(flag.sum())
    # A mostly-zero ratio: the zeros apart from the rest, the rest still in quantiles.
    ratio = np.where(rng.random(20_000) < 0.93, 0.0, rng.random(20_000))
    edges = baseline_edges(ratio)
    zeros = np.searchsorted(edges, 0.0, side="right")
    assert edges[zeros] <= ratio[ratio > 0].min()  # the next bin starts at the positives
    counts = np.bincount(np.searchsorted(edges, ratio, side="right"), minlength=len(edges) + 1)
    assert counts[zeros] == int((ratio == 0).sum())
    # A count: an atom whose next value is an edge already gets no extra cut.
    assert baseline_edges(rng.integers(0, 7, 20_000)).tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert baseline_edges(np.array([np.nan, np.inf])).tolist() == []


def test_baseline_edges_leave_continuous_values_to_quantiles() -> None:
    values = np.random.default_rng(4).normal(size=10_000)
    want = np.unique(np.round(np.quantile(values, np.linspace(0, 1, 11)[1:-1]), 7))
    assert np.array_equal(baseline_edges(values), want)


def test_a_flag_whose_share_moves_alerts_with_its_new_bins() -> None:
    rng = np.random.default_rng(2)
    flag = (rng.random(20_000) < 0.05).astype(np.float64)
    edges = baseline_edges(flag)
    counts = np.bincount(np.searchsorted(edges, flag, side="right"), minlength=len(edges) + 1)
    baseline = Baseline("is_foreign", 0, edges, counts / counts.sum(), 0.1, 20_000)
    window = (rng.random(250) < 0.5).astype(np.float64)  # half the window now foreign
    live = np.bincount(np.searchsorted(edges, window, side="right"), minlength=len(edges) + 1)
    value = drift_statistics(live, baseline.expected)[0]
    assert baseline.alerts(value, 250), value


def test_the_missing_rule_is_material_significant_and_gated() -> None:
    edges = np.array([0.0, 1.0])
    none = Baseline("f", 0, edges, np.array([0.0, 0.8, 0.2]), 0.2, reference_rows=10_000)
    assert none.missing_floor(250) == MISSING_MARGIN  # nothing expected: the margin alone
    assert none.missing_alerts(int(0.06 * 250), 250)
    assert not none.missing_alerts(int(0.04 * 250), 250)  # 4%: below the margin
    assert not none.missing_alerts(150, 199)  # too few rows
    silent = dataclasses.replace(none, threshold=0.0)
    assert not silent.missing_alerts(250, 250)  # reported, never alerted
    # An expected share of 30%: sampling (two shares' standard error) outweighs the margin.
    some = dataclasses.replace(none, missing_expected=0.3)
    spread = 3.0902 * math.sqrt(0.3 * 0.7 * (1 / 250 + 1 / 10_000))
    assert spread > MISSING_MARGIN
    assert math.isclose(some.missing_floor(250), 0.3 + spread, rel_tol=1e-12)
    assert not some.missing_alerts(int((0.3 + 0.07) * 250), 250)  # margin, not significant
    assert some.missing_alerts(int((0.3 + spread) * 250) + 1, 250)


def test_a_feature_going_missing_at_its_default_alerts_on_its_missing_share() -> None:
    """80% of training rows are 0, the default: half the window served from defaults moves
    PSI to about 0.08, under the 0.2 threshold; the missing share says what happened."""
    expected = np.array([0.0, 0.8, 0.1, 0.1])
    baseline = Baseline("fraud_labels", 0, np.array([0.0, 0.5, 2.0]), expected, 0.2, 20_000)
    rng = np.random.default_rng(1)
    served = rng.multinomial(125, expected)  # the half still served from the store
    counts = served + np.array([0, 125, 0, 0])  # the other half at the default 0
    row = HistogramRow("m", "fraud_labels", 0, 60_000, 60_000, 0, 250, 125, counts.tolist())
    [window] = summarise([row], {"m": [baseline]})
    assert window.psi < baseline.threshold and not window.psi_alert
    assert window.missing_rate == 0.5 and window.missing_alert and window.alert
    assert window.missing_floor == baseline.missing_floor(250)
    quiet = dataclasses.replace(row, missing=2)
    [normal] = summarise([quiet], {"m": [baseline]})
    assert not normal.missing_alert and not normal.alert


def test_model_baselines_take_missing_shares_from_the_sidecar_when_it_has_them() -> None:
    from streams.scoring.decide import Thresholds
    from streams.scoring.metadata import FeatureColumn, Histogram, ModelMetadata

    def meta(training: dict[str, object]) -> ModelMetadata:
        return ModelMetadata(
            name="m", version="1", kind="lightgbm", feature_service="s",
            features=(FeatureColumn("a", "float32", 0.0), FeatureColumn("b", "float32", 0.0)),
            thresholds=Thresholds(0.5, 0.9, 0.6, 0.7), onnx_sha256="",
            training_data={"train_rows": 100, **training},
            feature_baselines={"a": Histogram((0.0,), (0.5, 0.5)),
                               "b": Histogram((0.0,), (0.5, 0.5))},
        )  # fmt: skip

    found = model_baselines(meta({"missing_rates": {"a": 0.25}}), {})
    assert [(b.name, b.missing_expected, b.reference_rows) for b in found] == [
        ("a", 0.25, 100),
        ("b", 0.0, 100),
    ]
    assert all(b.missing_expected == 0.0 for b in model_baselines(meta({}), {}))
