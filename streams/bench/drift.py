"""``streamscore bench drift``: µs per event of the drift accumulator, and its detection power.

Cost: one accumulator with the shapes of the scoring stage (partitions, models, features
with 10-bin baselines, and the score) takes batches in turn: *normal* (event times within
one second), *crossing* (into the next window, so a window closes) and *spread* (event
times over 10,000 windows, a replay or a broken clock). Each is timed with and without
building the ``drift_deltas`` Arrow table; the median of ``--runs`` interleaved runs is
reported. The bounded design makes spread cost about what normal costs.

Detection power (``--detection``, ``detect``): the simulator's traffic, binned against
baselines drawn from its own earlier events, 250 events to a one-minute window: clean
windows, then each injection of ``streams.simulate.drift`` in turn. ``detection_rates``
turns the windows' alerts into the numbers the integration test
(tests/integration/test_drift.py, the whole worker and ``drift_stats``) reports too: per
injection the windows until each affected feature alerts, the share of its windows that
alert, and the false-alarm rate of the unaffected features; and the false-alarm rate
without drift. Features are the event features (``streams.features.event``) and, for
the merchant view, a stand-in for the nightly mart: per-merchant count, mean amount,
foreign share and fraud count over the reference events, unseen merchants served their
defaults (0) and flagged missing, as online. No model: the score is not monitored here.

Prints numbers; asserts nothing (the unit tests measure work, not time, and
tests/unit/test_drift_power.py holds the detection rates to the issue's bounds).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import click
import numpy as np
import orjson
from numpy.typing import NDArray

from streams.monitoring.drift import (
    SCORE,
    Baseline,
    DriftAccumulator,
    Observation,
    baseline_edges,
    summarise,
)
from streams.simulate.drift import KINDS as INJECTIONS
from streams.simulate.drift import DriftInjection

__all__ = ["DEFAULT_SHARES", "detect", "detection_rates", "drift", "run"]

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


# ---- detection power -------------------------------------------------------------------

# Share of accounts (amount, country) or events (missing) drifted. Amounts ×3 for half of
# the accounts give PSI about 0.18 against the 0.2 threshold: three quarters are drifted.
DEFAULT_SHARES: Mapping[str, float] = {"amount": 0.75, "country": 0.5, "missing": 0.5}
MODEL = "power"
_MERCHANT = ("txn_count", "amount_mean", "foreign_ratio", "fraud_count")
_MERCHANT_THRESHOLDS = (0.2, 0.2, 0.1, 0.2)


def detection_rates(
    alerts: Mapping[int, Mapping[str, bool]],
    clean: Sequence[int],
    injections: Sequence[tuple[DriftInjection, Sequence[int]]],
) -> dict[str, Any]:
    """Detection power from ``alerts[window][feature]`` (alerting features only).

    ``clean``: windows without drift; each injection comes with its windows, in order.
    An affected feature's ``windows_to_detect`` is 1 when it alerts in the injection's
    first window (None: never). The score is affected by every injection (the model
    reads the drifted features) and counts on neither side of one; it counts in the
    false alarms without drift.
    """
    quiet = [(w, f) for w in clean if w in alerts for f in alerts[w]]
    raised = sum(alerts[w][f] for w, f in quiet)
    out: dict[str, Any] = {
        "no_drift": {
            "windows": sum(1 for w in clean if w in alerts),
            "window_features": len(quiet),
            "alerts": raised,
            "false_alarm_rate": raised / max(len(quiet), 1),
        },
        "injections": {},
    }
    for injection, windows in injections:
        seen = [w for w in windows if w in alerts]
        names = sorted({f for w in seen for f in alerts[w]})
        affected = [f for f in names if injection.affects(f)]
        others = [(w, f) for w in seen for f in alerts[w] if f != SCORE and f not in affected]
        alerting = {f: sum(alerts[w].get(f, False) for w in seen) for f in affected}
        hits = sum(alerting.values())
        to_detect = {
            f: next((i + 1 for i, w in enumerate(seen) if alerts[w].get(f, False)), None)
            for f in affected
        }
        false = sum(alerts[w][f] for w, f in others)
        out["injections"][injection.kind] = {
            "share": injection.share,
            "windows": len(seen),
            "affected": affected,
            "windows_to_detect": to_detect,
            "max_windows_to_detect": max(
                (n if n is not None else len(seen) + 1 for n in to_detect.values()), default=None
            ),
            "alerting_windows": alerting,
            "detection_rate": hits / max(len(seen) * len(affected), 1),
            "unaffected_window_features": len(others),
            "unaffected_alerts": false,
            "unaffected_false_alarm_rate": false / max(len(others), 1),
        }
    return out


class _StandIn:
    """The features of a batch of simulated events: the event features, then the merchant
    stand-in; account means and merchant rows from the reference events."""

    def __init__(self, events: Sequence[dict[str, Any]], fraud: Sequence[bool]) -> None:
        accounts: dict[str, list[float]] = {}
        merchants: dict[str, list[float]] = {}
        for event, is_fraud in zip(events, fraud, strict=True):
            a = accounts.setdefault(str(event["account_id"]), [0.0, 0.0])
            a[0] += 1
            a[1] += float(event["amount"])
            m = merchants.setdefault(str(event["merchant_id"]), [0.0, 0.0, 0.0, 0.0])
            m[0] += 1
            m[1] += float(event["amount"])
            m[2] += float(event["merchant_country"] != event["card_country"])
            m[3] += float(is_fraud)
        self.account_mean = {k: total / n for k, (n, total) in accounts.items()}
        self.merchant = {
            k: (n, total / n, foreign / n, frauds)
            for k, (n, total, foreign, frauds) in merchants.items()
        }

    @property
    def names(self) -> tuple[str, ...]:
        from streams.features.event import EVENT_FEATURES_V1

        return (*(f.name for f in EVENT_FEATURES_V1), *(f"merchant__{n}" for n in _MERCHANT))

    @property
    def thresholds(self) -> tuple[float, ...]:
        from streams.features.event import EVENT_FEATURES_V1

        return (*(f.drift_threshold for f in EVENT_FEATURES_V1), *_MERCHANT_THRESHOLDS)

    def features(
        self, events: Sequence[dict[str, Any]]
    ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        import pyarrow as pa

        from streams.features.event import INPUT_COLUMNS, compute_event_features

        table = pa.Table.from_pylist([{c: e[c] for c in INPUT_COLUMNS} for e in events])
        means = np.array([self.account_mean.get(str(e["account_id"]), 0.0) for e in events])
        event = compute_event_features(table, means)
        unknown = (0.0,) * len(_MERCHANT)
        rows = [self.merchant.get(str(e["merchant_id"])) for e in events]
        merchant = np.array([r if r is not None else unknown for r in rows], dtype=np.float32)
        missing = np.zeros((len(events), event.shape[1] + len(_MERCHANT)), dtype=np.bool_)
        missing[:, event.shape[1] :] = np.array([r is None for r in rows])[:, None]
        return np.hstack([event, merchant.reshape(len(events), -1)]), missing


def detect(
    *,
    per_window: int = 250,
    clean_windows: int = 100,
    injection_windows: int = 20,
    reference_rows: int = 20_000,
    accounts: int = 800,
    seed: int = 7,
    fraud_rate: float = 0.05,
    shares: Mapping[str, float] = DEFAULT_SHARES,
) -> dict[str, Any]:
    """Detection power on simulated traffic: see the module docstring."""
    from streams.simulate.records import SimulationConfig, simulate_records

    start = datetime(2026, 11, 2, tzinfo=UTC)
    windows = clean_windows + injection_windows * len(INJECTIONS)
    wanted = reference_rows + windows * per_window
    config = SimulationConfig(
        start=start, accounts=accounts, seed=seed, fraud_rate=fraud_rate, labels=False
    )
    events: list[dict[str, Any]] = []
    fraud: list[bool] = []
    for record in simulate_records(config):
        if record.valid and record.event_type == "transaction" and record.event is not None:
            events.append(record.event)
            fraud.append(record.scenario is not None)
            if len(events) == wanted:
                break
    reference, live = events[:reference_rows], events[reference_rows:]
    stand_in = _StandIn(reference, fraud[:reference_rows])
    x_ref, _ = stand_in.features(reference)
    baselines = []
    for j, (name, threshold) in enumerate(zip(stand_in.names, stand_in.thresholds, strict=True)):
        edges = baseline_edges(x_ref[:, j])
        counts = np.bincount(
            np.searchsorted(edges, x_ref[:, j], side="right"), minlength=len(edges) + 1
        )
        baselines.append(Baseline(name, j, edges, counts / counts.sum(), threshold, reference_rows))
    injections = []
    for i, kind in enumerate(INJECTIONS):
        first = clean_windows + i * injection_windows
        span = range(first, first + injection_windows)
        injections.append((DriftInjection(kind, start, shares.get(kind, 0.5)), span))
    for injection, span in injections:
        rows = slice(span.start * per_window, span.stop * per_window)
        live[rows] = [injection.apply(e) for e in live[rows]]
    x, missing = stand_in.features(live)
    acc = DriftAccumulator(MINUTE, {MODEL: baselines}, lateness_windows=0)
    alerting = {b.name for b in baselines if b.threshold > 0}
    alerts: dict[int, dict[str, bool]] = {}
    offsets = np.arange(per_window, dtype=np.int64) * MINUTE // per_window
    for w in range(windows + 1):  # one more: its first event closes the last window
        rows = slice(w * per_window, (w + 1) * per_window) if w < windows else slice(0, 1)
        n = rows.stop - rows.start
        seen = acc.observe(
            np.zeros(n, dtype=np.int64), T0 + w * MINUTE + offsets[:n], x[rows], missing[rows],
            {MODEL: np.full(n, np.nan, dtype=np.float32)}, now_ms=T0 + (windows + 2) * MINUTE,
        )  # fmt: skip
        for drift in summarise(seen.closed, {MODEL: baselines}):
            if drift.feature in alerting:
                window = (drift.window_start_ms - T0) // MINUTE
                alerts.setdefault(window, {})[drift.feature] = drift.alert
    out = detection_rates(alerts, range(clean_windows), injections)
    return {
        "rows_per_window": per_window,
        "clean_windows": clean_windows,
        "injection_windows": injection_windows,
        "reference_rows": reference_rows,
        "features": len(alerting),
        **out,
    }


@click.command("drift")
@click.option("--rows", default=5_000, show_default=True, help="Events per batch.")
@click.option("--partitions", default=4, show_default=True)
@click.option("--features", default=30, show_default=True)
@click.option("--models", default=2, show_default=True, help="Champion plus shadows.")
@click.option("--windows", default=10_000, show_default=True, help="Windows a spread batch spans.")
@click.option("--runs", default=7, show_default=True, help="Interleaved runs (median).")
@click.option("--shared-edges", is_flag=True, help="Every model bins features alike (binned once).")
@click.option(
    "--detection",
    is_flag=True,
    help="Detection power instead: windows to detect each simulate --drift injection and "
    "the false-alarm rates, on simulated traffic (250 events per window).",
)
@click.option("--seed", default=7, show_default=True, help="Simulator seed (--detection).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def drift(
    rows: int,
    partitions: int,
    features: int,
    models: int,
    windows: int,
    runs: int,
    shared_edges: bool,
    detection: bool,
    seed: int,
    as_json: bool,
) -> None:
    """µs per event of drift binning: a normal batch vs one spanning 10,000 windows; or,
    with --detection, how soon and how reliably each injected drift alerts."""
    if detection:
        _print_detection(detect(seed=seed), as_json)
        return
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


def _print_detection(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(orjson.dumps(result).decode())
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        "injection", "share", "affected", "windows to detect (max)", "detection rate",
        "unaffected false alarms",
        title=f"drift detection: {result['rows_per_window']} events per window, "
        f"{result['injection_windows']} windows per injection, {result['features']} alerting "
        f"features, baselines from {result['reference_rows']:,} events",
    )  # fmt: skip
    for kind, found in result["injections"].items():
        most = found["max_windows_to_detect"]
        table.add_row(
            kind,
            f"{found['share']}",
            str(len(found["affected"])),
            "never" if most is None or most > found["windows"] else str(most),
            f"{found['detection_rate']:.1%}",
            f"{found['unaffected_false_alarm_rate']:.2%} ({found['unaffected_alerts']} of "
            f"{found['unaffected_window_features']})",
        )
    console = Console()
    console.print(table)
    clean = result["no_drift"]
    console.print(
        f"no drift: {clean['alerts']} alerts in {clean['window_features']} window-features "
        f"over {clean['windows']} windows: false-alarm rate {clean['false_alarm_rate']:.2%}"
    )
