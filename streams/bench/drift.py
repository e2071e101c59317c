"""``streamscore bench drift``: µs per event of the drift accumulator, normal vs spread batches.

One accumulator with the shapes of the scoring stage (partitions, models, features with
10-bin baselines, and the score) takes batches in turn: *normal* (event times within one
second), *crossing* (into the next window, so a window closes) and *spread* (event times
over 10,000 windows, a replay or a broken clock). Each is timed with and without building
the ``drift_deltas`` Arrow table; the median of ``--runs`` interleaved runs is reported.
The bounded design makes spread cost about what normal costs. Prints numbers; asserts
nothing (the unit tests measure work, not time).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import click
import numpy as np
import orjson
from numpy.typing import NDArray

from streams.monitoring.drift import SCORE, Baseline, DriftAccumulator, Observation

__all__ = ["drift", "run"]

MINUTE = 60_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00Z
KINDS = ("normal", "crossing", "spread")


def _columns(features: int, shift: float = 0.0) -> list[Baseline]:
    out = [
        Baseline(f"f{i}", i, np.linspace(-2.0, 2.0, 9) + shift, np.full(10, 0.1), 0.2, 100_000)
        for i in range(features)
    ]
    out.append(Baseline(SCORE, -1, np.linspace(0.1, 0.9, 9), np.full(10, 0.1), 0.2, 10_000))
    return out


def run(
    *,
    rows: int = 5_000,
    partitions: int = 4,
    features: int = 30,
    models: int = 2,
    windows: int = 10_000,
    runs: int = 7,
    lateness_windows: int = 1,
    max_open_windows: int = 4,
    shared: bool = False,
) -> dict[str, Any]:
    """Median µs per event of each batch kind, and what the spread batch did."""
    rng = np.random.default_rng(0)
    names = [f"model-{i}" for i in range(models)]
    acc = DriftAccumulator(
        MINUTE,
        # Edges of their own per model unless shared: a shadow trained on other rows.
        {m: _columns(features, 0.0 if shared else 0.01 * i) for i, m in enumerate(names)},
        lateness_windows=lateness_windows,
        max_open_windows=max_open_windows,
    )
    x = rng.normal(size=(rows, features)).astype(np.float32)
    missing = rng.random((rows, features)) < 0.05
    scores = {m: rng.uniform(size=rows).astype(np.float32) for m in names}
    parts = rng.integers(0, partitions, rows).astype(np.int64)
    offsets = np.arange(rows, dtype=np.int64)
    clock = {"t": T0, "offset": 0}
    now = T0 + 10**12

    def batch(event_ms: NDArray[np.int64], table: bool) -> Observation:
        clock["offset"] += rows
        seen = acc.observe(
            parts, event_ms, x, missing, scores,
            now_ms=now, offsets=offsets + clock["offset"], source="valid",
        )  # fmt: skip
        if table:
            seen.deltas.table("bench")
        return seen

    def times(kind: str) -> NDArray[np.int64]:
        t = clock["t"]
        if kind == "normal":
            out = t + rng.integers(0, 1_000, rows)
        elif kind == "crossing":
            clock["t"] = t = t + MINUTE
            out = t + rng.integers(0, 1_000, rows)
        else:
            out = t + MINUTE + rng.integers(0, windows * MINUTE, rows)
            clock["t"] = t + (windows + 1) * MINUTE
        return np.sort(out).astype(np.int64)

    def timed(event_ms: NDArray[np.int64], table: bool) -> tuple[float, Observation]:
        start = time.perf_counter()
        seen = batch(event_ms, table)
        return (time.perf_counter() - start) * 1e6 / rows, seen

    samples: dict[str, list[float]] = {f"{k}{s}": [] for k in KINDS for s in ("", "_table")}
    last: dict[str, Observation] = {}
    for _ in range(2):  # warm: two windows open, shapes cached
        batch(times("crossing"), True)
    for _ in range(runs):
        for kind in KINDS:
            for suffix, table in (("", False), ("_table", True)):
                us, seen = timed(times(kind), table)
                samples[f"{kind}{suffix}"].append(us)
                last[kind] = seen
                batch(times("crossing"), False)  # back to a steady state: two windows open
    out: dict[str, Any] = {
        "rows": rows,
        "partitions": partitions,
        "features": features,
        "models": models,
        "windows_spanned": windows,
        "ring": acc.ring,
        "runs": runs,
        "shared_edges": shared,
    }
    for name, values in samples.items():
        out[f"{name}_us_per_event"] = round(statistics.median(values), 3)
    out["spread_vs_normal"] = round(
        out["spread_table_us_per_event"] / out["normal_table_us_per_event"], 2
    )
    spread = last["spread"]
    out["spread_late_rows"] = spread.late
    out["spread_closed_rows"] = len(spread.closed)
    out["spread_delta_rows"] = len(spread.deltas)
    out["normal_delta_rows"] = len(last["normal"].deltas)
    out["open_windows"] = acc.open_windows()
    return out


@click.command("drift")
@click.option("--rows", default=5_000, show_default=True, help="Events per batch.")
@click.option("--partitions", default=4, show_default=True)
@click.option("--features", default=30, show_default=True)
@click.option("--models", default=2, show_default=True, help="Champion plus shadows.")
@click.option("--windows", default=10_000, show_default=True, help="Windows a spread batch spans.")
@click.option("--runs", default=7, show_default=True, help="Interleaved runs (median).")
@click.option("--shared-edges", is_flag=True, help="Every model bins features alike (binned once).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def drift(
    rows: int,
    partitions: int,
    features: int,
    models: int,
    windows: int,
    runs: int,
    shared_edges: bool,
    as_json: bool,
) -> None:
    """µs per event of drift binning: a normal batch vs one spanning 10,000 windows."""
    result = run(
        rows=rows,
        partitions=partitions,
        features=features,
        models=models,
        windows=windows,
        runs=runs,
        shared=shared_edges,
    )
    if as_json:
        click.echo(orjson.dumps(result).decode())
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        "batch", "µs/event", "µs/event with delta table",
        title=f"drift: {rows} rows, {partitions} partitions, {models} models, "
        f"{features} features + score, {runs} runs (median)",
    )  # fmt: skip
    for kind in KINDS:
        table.add_row(
            kind if kind != "spread" else f"spread over {windows:,} windows",
            f"{result[f'{kind}_us_per_event']:.3f}",
            f"{result[f'{kind}_table_us_per_event']:.3f}",
        )
    console = Console()
    console.print(table)
    console.print(
        f"spread/normal {result['spread_vs_normal']}×; the spread batch: "
        f"{result['spread_late_rows']} late rows, {result['spread_closed_rows']} closed rows, "
        f"{result['spread_delta_rows']} delta rows (normal: {result['normal_delta_rows']}); "
        f"open windows now {result['open_windows']} (≤ {result['ring']} per partition)"
    )
