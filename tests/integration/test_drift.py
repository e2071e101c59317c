"""Drift detection power, end to end: worker → drift_histograms → the drift_stats view.

Event time decides the windows, so the test lays live traffic from the world's own
population and fraud rate on a compressed clock (250 events per one-minute window).
100 windows without drift measure the false-alarm rate; then amounts ×3 for 75% of the
accounts from a known window on must alert on the amount features within two windows,
while the other features stay quiet. (Half of the accounts gives PSI ≈ 0.18 against a
0.2 threshold: first alert within two windows, but only a third of windows alert.)

Reported-only features (threshold 0 in the registry) are left out: hour and day, which
cycle within a day and mean nothing on a compressed clock; entity ages, which grow with
the calendar; and label-smoothed merchant fraud rates, which follow the all-merchant
rate's daily swing. Every alerting feature counts, the score included.
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import orjson

from streams.monitoring.drift import SCORE
from streams.settings import Settings
from streams.simulate.drift import DriftInjection
from streams.simulate.records import SimRecord
from tests.integration.conftest import (
    FEAST_STACK_MARKS,
    publish,
    query,
    records,
    stop,
    wait_for_log,
    wait_for_predictions,
)

pytestmark = FEAST_STACK_MARKS

PER_WINDOW = 250
CLEAN_WINDOWS = 100
DRIFT_WINDOWS = 20
AMOUNT_FEATURES = {"event__amount", "event__log_amount", "event__amount_vs_account_mean_30d"}


def on_clock(items: list[SimRecord], base: datetime, drift: DriftInjection) -> list[SimRecord]:
    """Valid events re-timed to PER_WINDOW per minute from ``base``, drift applied."""
    out: list[SimRecord] = []
    step = timedelta(minutes=1) / PER_WINDOW
    for i, item in enumerate(r for r in items if r.expected == "accepted"):
        event = orjson.loads(item.value)
        event["event_time"] = (base + i * step).isoformat().replace("+00:00", "Z")
        event = drift.apply(event)
        out.append(dataclasses.replace(item, value=orjson.dumps(event)))
    return out


def test_drift_alerts_within_two_windows_and_rarely_otherwise(
    scoring_settings: Settings,
    start_scorer: Callable[..., subprocess.Popen[bytes]],
) -> None:
    settings = scoring_settings
    windows = CLEAN_WINDOWS + DRIFT_WINDOWS
    base = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=3)
    drift_at = base + timedelta(minutes=CLEAN_WINDOWS)
    drift = DriftInjection("amount", drift_at, share=0.75, factor=3.0)
    items = on_clock(records(windows * PER_WINDOW, 0.0), base, drift)
    # The compressed clock puts a minute in 250 events, so allow more windows of skew
    # between partitions than the one-window default for real time.
    # (and as many open windows: at most 4 by default). A scoring batch must span fewer
    # windows than that: 500 events are two compressed minutes; a default 5,000-event
    # batch read from a start-up backlog spans 20, and rows behind the open windows are
    # counted late, never binned (the bounded-cost rule).
    worker = start_scorer(
        STREAMSCORE_AGENTS="score,sink",
        STREAMSCORE_DRIFT_LATENESS_WINDOWS="8",
        STREAMSCORE_DRIFT_MAX_OPEN_WINDOWS="9",
        STREAMSCORE_SCORE_BATCH_SIZE="500",
    )
    wait_for_log(worker, "marks loaded")
    # Paced, so that the compressed clock stays ordered across partitions to well within
    # the lateness.
    landed = publish(settings, items, rate=2500)
    wait_for_predictions(settings, set(landed), timeout=300, worker=worker)
    stop(worker)

    champion = query(
        settings, "select model_version from {db}.predictions where model_role = 'champion' limit 1"
    )[0][0]
    rows = query(
        settings,
        "select toUnixTimestamp(window_start), feature, rows, psi, ks, js_distance, alert "
        f"from {{db}}.drift_stats where model_version = '{champion}' and threshold > 0",
    )
    first = int(base.timestamp())
    by_window: dict[int, dict[str, tuple[float, int]]] = {}
    for start, feature, n, psi, ks, js, alert in rows:
        assert 0 <= ks <= 1 and 0 <= js <= 1 and psi >= 0
        # The compressed clock lets a partition fall a few windows behind another (a
        # consume call drains one partition's backlog first); its late rows are dropped.
        assert 0.8 * PER_WINDOW <= n <= PER_WINDOW, (start - int(base.timestamp())) // 60
        by_window.setdefault((start - first) // 60, {})[feature] = (psi, alert)
    flushed = sorted(by_window)
    assert flushed[0] == 0 and len(flushed) >= windows - 9  # the last windows stay open

    clean = [(w, f) for w in flushed if w < CLEAN_WINDOWS for f in by_window[w]]
    false_alarms = [(w, f) for w, f in clean if by_window[w][f][1]]
    false_alarm_rate = len(false_alarms) / len(clean)
    drifted = [w for w in flushed if w >= CLEAN_WINDOWS]
    hits = [(w, f) for w in drifted for f in AMOUNT_FEATURES if by_window[w][f][1]]
    detection_rate = len(hits) / (len(drifted) * len(AMOUNT_FEATURES))
    detected = {
        f: min((w for w, g in hits if g == f), default=None) for f in sorted(AMOUNT_FEATURES)
    }
    # The score follows the amounts (the model uses them): affected, neither side counts it.
    unaffected = [
        (w, f) for w in drifted for f in by_window[w] if f not in AMOUNT_FEATURES | {SCORE}
    ]
    quiet_breaks = [(w, f) for w, f in unaffected if by_window[w][f][1]]
    print(
        f"\nno drift: {len(false_alarms)} alerts in {len(clean)} window-features over "
        f"{CLEAN_WINDOWS} windows, false-alarm rate {false_alarm_rate:.2%}"
        f"\namounts x3 for 75% of the accounts from window {CLEAN_WINDOWS}: first alert per "
        f"feature {detected}, detection rate {detection_rate:.1%} of "
        f"{len(drifted)} windows x {len(AMOUNT_FEATURES)} features; unaffected features "
        f"alerted in {len(quiet_breaks)} of {len(unaffected)} window-features"
        f"\nPSI after the injection: "
        + str({f: [round(by_window[w][f][0], 2) for w in drifted] for f in sorted(AMOUNT_FEATURES)})
    )
    assert false_alarm_rate <= 0.01, false_alarms[:10]
    for feature, window in detected.items():
        assert window is not None and window <= CLEAN_WINDOWS + 1, (feature, window)
    assert detection_rate >= 0.9
    assert len(quiet_breaks) <= 0.01 * len(unaffected), quiet_breaks[:10]
