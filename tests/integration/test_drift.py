"""Drift detection power, end to end: worker → drift_deltas → the drift_stats view.

Event time decides the windows, so the test lays live traffic from the world's own
population and fraud rate on a compressed clock (250 events per one-minute window).
100 windows without drift measure the false-alarm rate; then each injection of
``streamscore simulate --drift`` in turn, 20 windows each: amounts ×3 for 75% of the
accounts, new merchant countries for half of them, and unseen merchants for half of
the events (every merchant feature served from defaults). A window depends only on its
own events, so one stream holds all three. Each injection's affected features
(``DriftInjection.affects``) must alert within two windows of it and in most of its
windows, while the other features stay quiet. (Half of the accounts ×3 gives PSI ≈ 0.18
against a 0.2 threshold: first alert within two windows, but only a third of windows
alert.) ``streams.bench.drift.detection_rates`` computes the numbers, the same as
``streamscore bench drift --detection`` reports.

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

from streams.bench.drift import DEFAULT_SHARES, detection_rates
from streams.settings import Settings
from streams.simulate.drift import AMOUNT_FEATURES, KINDS, DriftInjection
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


def on_clock(
    items: list[SimRecord], base: datetime, injections: list[tuple[DriftInjection, range]]
) -> list[SimRecord]:
    """Valid events re-timed to PER_WINDOW per minute from ``base``, each injection
    applied to the events of its windows."""
    out: list[SimRecord] = []
    step = timedelta(minutes=1) / PER_WINDOW
    valid = [r for r in items if r.expected == "accepted"]
    for i, item in enumerate(valid):
        event = orjson.loads(item.value)
        event["event_time"] = (base + i * step).isoformat().replace("+00:00", "Z")
        for injection, windows in injections:
            if i // PER_WINDOW in windows:
                event = injection.apply(event)
        out.append(dataclasses.replace(item, value=orjson.dumps(event)))
    return out


def test_each_injection_alerts_within_two_windows_and_rarely_otherwise(
    scoring_settings: Settings,
    start_scorer: Callable[..., subprocess.Popen[bytes]],
) -> None:
    settings = scoring_settings
    windows = CLEAN_WINDOWS + DRIFT_WINDOWS * len(KINDS)
    base = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=4)
    injections = []
    for i, kind in enumerate(KINDS):
        first = CLEAN_WINDOWS + i * DRIFT_WINDOWS
        at = base + timedelta(minutes=first)
        span = range(first, first + DRIFT_WINDOWS)
        injections.append((DriftInjection(kind, at, share=DEFAULT_SHARES[kind]), span))
    # 2% more records than needed: the valid ones fill every window.
    items = on_clock(records(windows * PER_WINDOW * 102 // 100, 0.0), base, injections)
    items = items[: windows * PER_WINDOW]
    assert len(items) == windows * PER_WINDOW
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
        "select toUnixTimestamp(window_start), feature, rows, psi, ks, js_distance, alert, "
        "psi_alert, missing_alert, missing_rate "
        f"from {{db}}.drift_stats where model_version = '{champion}' and threshold > 0",
    )
    start = int(base.timestamp())
    alerts: dict[int, dict[str, bool]] = {}
    psis: dict[int, dict[str, float]] = {}
    missing: dict[int, dict[str, float]] = {}
    for moment, feature, n, psi, ks, js, alert, by_psi, by_missing, missing_rate in rows:
        assert 0 <= ks <= 1 and 0 <= js <= 1 and psi >= 0 and 0 <= missing_rate <= 1
        assert bool(alert) == bool(by_psi or by_missing)
        # The compressed clock lets a partition fall a few windows behind another (a
        # consume call drains one partition's backlog first); its late rows are dropped.
        window = (moment - start) // 60
        assert 0.8 * PER_WINDOW <= n <= PER_WINDOW, window
        alerts.setdefault(window, {})[feature] = bool(alert)
        psis.setdefault(window, {})[feature] = psi
        missing.setdefault(window, {})[feature] = missing_rate
    flushed = sorted(alerts)
    assert flushed[0] == 0 and len(flushed) >= windows - 9  # the last windows stay open

    rates = detection_rates(alerts, range(CLEAN_WINDOWS), injections)
    clean = rates["no_drift"]
    lines = [
        f"\nno drift: {clean['alerts']} alerts in {clean['window_features']} window-features "
        f"over {clean['windows']} windows, false-alarm rate {clean['false_alarm_rate']:.2%}"
    ]
    for injection, span in injections:
        found = rates["injections"][injection.kind]
        drifted = [w for w in span if w in alerts]
        lines.append(
            f"{injection.kind} (share {injection.share}) from window {span.start}: "
            f"{len(found['affected'])} affected features, windows to detect "
            f"{found['windows_to_detect']}, detection rate {found['detection_rate']:.1%} "
            f"of {found['windows']} windows; unaffected features alerted in "
            f"{found['unaffected_alerts']} of {found['unaffected_window_features']} "
            f"window-features ({found['unaffected_false_alarm_rate']:.2%})"
        )
        lines.append(
            "  PSI / missing share after it: "
            + str(
                {
                    f: (
                        [round(psis[w][f], 2) for w in drifted[:5]],
                        round(max(missing[w][f] for w in drifted), 2),
                    )
                    for f in found["affected"][:4]
                }
            )
        )
    print("\n".join(lines))

    assert clean["false_alarm_rate"] <= 0.01, clean
    by_kind = rates["injections"]
    assert sorted(by_kind["amount"]["affected"]) == sorted(AMOUNT_FEATURES)
    assert by_kind["country"]["affected"] == ["event__is_foreign"]
    assert len(by_kind["missing"]["affected"]) >= 20  # every alerting merchant feature
    for kind, found in by_kind.items():
        for feature, window in found["windows_to_detect"].items():
            assert window is not None and window <= 2, (kind, feature, window)
        assert found["detection_rate"] >= 0.9, (kind, found["alerting_windows"])
        assert found["unaffected_false_alarm_rate"] <= 0.01, (kind, found)
