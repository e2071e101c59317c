"""Bounded drift cost: watermarks, late and future rows, the cap on open windows, deltas.

The cost test measures work, not time: the Python-level calls (``sys.setprofile`` sees
every Python and C function call, numpy's included) and the peak of traced memory while
the accumulator takes one batch. A batch whose event times span 10,000 windows must cost
no more than twice a normal batch; a per-window loop, the shape of the old design, is
shown to fail the same measure. Timings are in ``streamscore bench drift``.
"""

from __future__ import annotations

import sys
import tracemalloc
from collections.abc import Callable
from types import FrameType
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from streams.monitoring.drift import SCORE, Baseline, DriftAccumulator, Observation

MINUTE = 60_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00Z
ROWS = 5_000
PARTITIONS = 4
FEATURES = 20
MODELS = ("champion-1", "shadow-1")


def columns(features: int = FEATURES) -> list[Baseline]:
    out = [
        Baseline(f"f{i}", i, np.linspace(-2.0, 2.0, 9), np.full(10, 0.1), 0.2, 10_000)
        for i in range(features)
    ]
    out.append(Baseline(SCORE, -1, np.linspace(0.1, 0.9, 9), np.full(10, 0.1), 0.2, 1_000))
    return out


class Batches:
    """Batches of ROWS rows over PARTITIONS partitions, two models, FEATURES features."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.rng = rng
        self.x = rng.normal(size=(ROWS, FEATURES)).astype(np.float32)
        self.missing = rng.random((ROWS, FEATURES)) < 0.05
        self.scores = {m: rng.uniform(size=ROWS).astype(np.float32) for m in MODELS}
        self.partitions = rng.integers(0, PARTITIONS, ROWS).astype(np.int64)
        self.offsets = np.arange(ROWS, dtype=np.int64)
        self.next_offset = 0

    def observe(
        self, acc: DriftAccumulator, event_ms: NDArray[np.int64], now_ms: int
    ) -> Observation:
        offsets = self.offsets + self.next_offset
        self.next_offset += ROWS
        return acc.observe(
            self.partitions, event_ms, self.x, self.missing, self.scores,
            now_ms=now_ms, offsets=offsets, source="valid",
        )  # fmt: skip

    def within(self, start_ms: int, span_ms: int) -> NDArray[np.int64]:
        return np.sort(start_ms + self.rng.integers(0, span_ms, ROWS)).astype(np.int64)


def accumulator(**options: Any) -> DriftAccumulator:
    return DriftAccumulator(MINUTE, {m: columns() for m in MODELS}, **options)


def work(run: Callable[[], Any]) -> tuple[int, int, Any]:
    """(function calls, peak traced bytes, result) of ``run()``."""
    calls = 0

    def count(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    tracemalloc.start()
    tracemalloc.reset_peak()
    sys.setprofile(count)
    try:
        result = run()
    finally:
        sys.setprofile(None)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return calls, peak, result


def test_a_batch_spanning_10000_windows_costs_no_more_than_twice_a_normal_batch() -> None:
    acc = accumulator(lateness_windows=1, max_open_windows=4)
    batches = Batches()
    now = T0 + 20_000 * MINUTE  # the wall clock: every event time here is admissible
    start = T0 + 30 * MINUTE
    batches.observe(acc, batches.within(start - MINUTE, 2 * MINUTE), now)  # two windows open
    calls_normal, peak_normal, normal = work(
        lambda: batches.observe(acc, batches.within(start + 1_000, 1_000), now)
    )
    assert len(normal.closed) == 0 and normal.binned == ROWS
    spread_ms = batches.within(start + 2 * MINUTE, 10_000 * MINUTE)
    assert len(np.unique(spread_ms // MINUTE)) > 3_000  # the batch touches thousands of windows
    calls_spread, peak_spread, spread = work(lambda: batches.observe(acc, spread_ms, now))

    ring, baselines = acc.ring, FEATURES + 1
    bound = PARTITIONS * ring * len(MODELS) * baselines
    assert ring <= 4
    for p in range(PARTITIONS):
        assert acc.open_windows(p) <= ring
    assert 0 < len(spread.closed) <= bound  # the windows open before, nothing else
    assert len(spread.deltas) <= bound
    assert spread.late + spread.binned == ROWS and spread.future == 0
    assert spread.late > 0.99 * ROWS  # all but the newest windows' rows
    assert calls_spread <= 2 * calls_normal, (calls_spread, calls_normal)
    assert peak_spread <= 2 * peak_normal + 256 * 1024, (peak_spread, peak_normal)


def per_window_reference(
    acc: DriftAccumulator, batches: Batches, event_ms: NDArray[np.int64], now: int
) -> None:
    """The old design's shape (a pass per distinct window): what the measure must catch."""
    windows = event_ms // MINUTE
    n = len(event_ms)
    for w in np.unique(windows):
        rows = windows == w
        acc.observe(
            batches.partitions[:n][rows], event_ms[rows], batches.x[:n][rows],
            batches.missing[:n][rows], {m: s[:n][rows] for m, s in batches.scores.items()},
            now_ms=now,
        )  # fmt: skip


def test_the_work_measure_catches_a_loop_over_windows() -> None:
    acc = accumulator()
    batches = Batches()
    now = T0 + 20_000 * MINUTE
    start = T0 + 30 * MINUTE
    calls_normal, _, _ = work(lambda: batches.observe(acc, batches.within(start, 1_000), now))
    spread = batches.within(start + MINUTE, 10_000 * MINUTE)[:1_000]
    calls_loop, _, _ = work(lambda: per_window_reference(acc, batches, spread, now))
    assert calls_loop > 20 * calls_normal


def test_a_far_future_event_is_counted_and_does_not_move_the_watermark() -> None:
    acc = accumulator(max_future_ms=60_000)
    b = Batches()
    now = T0 + 10 * MINUTE
    event_ms = b.within(now - 30_000, 20_000)
    event_ms[7] = now + 20 * 24 * 60 * MINUTE  # 20 days ahead
    event_ms[8] = now + 30_000  # ahead, but within the limit
    first = b.observe(acc, event_ms, now)
    assert (first.future, first.late, first.binned) == (1, 0, ROWS - 1)
    assert acc.future_rows == 1
    partition = int(b.partitions[7])
    mark = acc.watermark(partition)
    assert mark is not None and mark < now + 60_000
    # The rows that follow, on the wall clock, still land in their windows.
    second = b.observe(acc, b.within(now - 10_000, 10_000), now)
    assert (second.late, second.future, second.binned) == (0, 0, ROWS)


def test_late_rows_are_counted_against_their_own_partitions_watermark() -> None:
    acc = accumulator(lateness_windows=1)
    x = np.zeros((4, FEATURES), dtype=np.float32)
    missing = np.zeros((4, FEATURES), dtype=np.bool_)
    scores = {m: np.zeros(4, dtype=np.float32) for m in MODELS}
    now = T0 + 1_000 * MINUTE

    def batch(partitions: list[int], minutes: list[float]) -> Observation:
        event_ms = np.array([T0 + int(m * MINUTE) for m in minutes], dtype=np.int64)
        n = len(partitions)
        return acc.observe(
            np.array(partitions), event_ms, x[:n], missing[:n],
            {m: s[:n] for m, s in scores.items()}, now_ms=now,
        )  # fmt: skip

    batch([0, 1], [5.5, 0.5])
    # Partition 1's clock is at minute 0: minute 0 is open there. Partition 0's is at 5:
    # minute 4 is its oldest open window (lateness 1), minutes 2 and 3 are late.
    result = batch([1, 0, 0, 0], [0.2, 2.0, 4.5, 3.9])
    assert (result.late, result.binned) == (2, 2)
    assert acc.late_rows == 2 and acc.future_rows == 0
    assert acc.open_range(0) == (T0 + 4 * MINUTE, T0 + 6 * MINUTE)
    assert acc.open_range(1) == (T0 - MINUTE, T0 + MINUTE)
    # A quiet partition follows the newest one, 10 windows behind: partition 1's minute 0
    # closes when partition 0 reaches minute 11, and its rows there are late from then on.
    assert set(batch([0], [10.5]).closed.partition.tolist()) == {0}  # its own windows only
    idle = batch([0, 1], [11.5, 0.7])
    assert set(idle.closed.partition.tolist()) == {1}
    assert set(idle.closed.window_start_ms.tolist()) == {T0} and idle.late == 1


def test_the_cap_closes_the_oldest_windows_first() -> None:
    acc = accumulator(lateness_windows=10, max_open_windows=3)
    assert acc.ring == 3  # the lateness is capped
    b = Batches()
    now = T0 + 10_000 * MINUTE
    # Windows 0, 1, 2 of every partition open, one batch each.
    for w in range(3):
        assert len(b.observe(acc, b.within(T0 + w * MINUTE, MINUTE), now).closed) == 0
    assert all(acc.open_windows(p) == 3 for p in range(PARTITIONS))
    # A fourth window: window 0 closes, every partition's, whole.
    fourth = b.observe(acc, b.within(T0 + 3 * MINUTE, MINUTE), now)
    assert set(fourth.closed.window_start_ms.tolist()) == {T0}
    assert len(fourth.closed) == PARTITIONS * len(MODELS) * (FEATURES + 1)
    assert set(fourth.closed.rows.tolist()) == {int(n) for n in np.bincount(b.partitions)}
    # A jump: windows 1, 2 and 3 close, oldest first, then partition, model, column.
    jump = b.observe(acc, b.within(T0 + 50 * MINUTE, MINUTE), now)
    rows = jump.closed.histogram_rows()
    keys = [(r.window_start_ms, r.partition) for r in rows]
    assert keys == sorted(keys)
    assert sorted({r.window_start_ms for r in rows}) == [T0 + w * MINUTE for w in (1, 2, 3)]
    order = [
        (r.model_version, r.feature) for r in rows if keys[0] == (r.window_start_ms, r.partition)
    ]
    assert order == [(m, c.name) for m in MODELS for c in columns()]
    assert all(acc.open_windows(p) == 1 for p in range(PARTITIONS))


def test_deltas_add_up_to_the_closed_windows_and_carry_the_batch_coordinates() -> None:
    acc = accumulator(lateness_windows=2, max_open_windows=4)
    b = Batches(seed=4)
    now = T0 + 10_000 * MINUTE
    summed: dict[tuple[str, str, int, int], NDArray[np.int64]] = {}
    rows: dict[tuple[str, str, int, int], int] = {}
    closed: list[Any] = []
    for i in range(12):
        first_offset = b.next_offset
        seen = b.observe(acc, b.within(T0 + i * 20_000, 70_000), now)
        d = seen.deltas
        assert d.source == "valid" and len(d) > 0
        for j in range(len(d)):
            p = int(d.partition[j])
            mine = b.offsets[b.partitions == p] + first_offset
            assert (d.first_offset[j], d.last_offset[j]) == (mine.min(), mine.max())
            key = (str(d.model_version[j]), str(d.feature[j]), int(d.window_start_ms[j]), p)
            counts = np.array(d.counts_of(j), dtype=np.int64)
            summed[key] = summed.get(key, 0) + counts
            rows[key] = rows.get(key, 0) + int(d.rows[j])
        closed.extend(seen.closed.histogram_rows())
    closed.extend(b.observe(acc, b.within(now, 1), now + 1).closed.histogram_rows())
    whole = {(r.model_version, r.feature, r.window_start_ms, r.partition): r for r in closed}
    assert set(whole) == set(summed)
    for key, r in whole.items():
        assert r.counts == summed[key].tolist() and r.rows == rows[key], key


def test_forget_drops_a_partitions_windows_and_clock() -> None:
    acc = accumulator()
    b = Batches()
    now = T0 + 100 * MINUTE
    b.observe(acc, b.within(T0 + 50 * MINUTE, 1_000), now)
    acc.forget([0, 99])  # 99 was never seen
    assert acc.open_windows(0) == 0 and acc.watermark(0) is None
    assert acc.open_windows(1) == 1
    # Its next owner starts a clock from its own rows: old times are not late there.
    again = b.observe(acc, b.within(T0 + 50 * MINUTE, 1_000), now)
    assert again.late == 0 and len(again.closed) == 0


def test_a_dropped_model_closes_its_windows_on_the_next_batch() -> None:
    acc = accumulator()
    b = Batches()
    now = T0 + 100 * MINUTE
    b.observe(acc, b.within(T0, 1_000), now)
    acc.set_baselines({MODELS[0]: columns()})  # the shadow is retired
    after = b.observe(acc, b.within(T0 + 1_000, 1_000), now)
    assert set(after.closed.model_version.tolist()) == {MODELS[1]}
    assert set(after.deltas.model_version.tolist()) == {MODELS[0]}


def test_seed_adds_only_inside_the_open_windows() -> None:
    acc = accumulator(lateness_windows=1)
    b = Batches()
    now = T0 + 100 * MINUTE
    b.observe(acc, b.within(T0 + 10 * MINUTE, 1_000), now)  # open: minutes 9 and 10
    event_ms = np.array([T0 + 8 * MINUTE, T0 + 9 * MINUTE, T0 + 10 * MINUTE + 5, T0 + 11 * MINUTE])
    x = np.zeros((4, FEATURES), dtype=np.float32)
    added = acc.seed(
        MODELS[0], 0, event_ms, x, np.zeros((4, FEATURES), np.bool_), np.zeros(4, np.float32)
    )
    assert added == 2
    assert (
        acc.seed(
            "unknown", 0, event_ms, x, np.zeros((4, FEATURES), np.bool_), np.zeros(4, np.float32)
        )
        == 0
    )


@pytest.mark.parametrize(
    ("lateness", "cap", "ring"), [(0, 4, 1), (1, 4, 2), (3, 4, 4), (8, 4, 4), (8, 1, 1)]
)
def test_the_ring_is_the_lateness_capped_by_the_open_windows(
    lateness: int, cap: int, ring: int
) -> None:
    assert accumulator(lateness_windows=lateness, max_open_windows=cap).ring == ring


def test_bad_window_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_open_windows >= 1"):
        accumulator(max_open_windows=0)
