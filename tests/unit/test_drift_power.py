"""Drift detection power on simulated traffic, without a broker (``bench drift --detection``).

The simulator's events, 250 to a one-minute window, binned by the accumulator against
baselines drawn (``baseline_edges``) from 20,000 earlier events of the same population:
100 clean windows, then each ``simulate --drift`` injection for 20 windows. Every
affected feature must alert within two windows and in at least 90% of its injection's
windows; the unaffected features, and every feature without drift, alert in at most 1%
of their windows. The whole worker and the ``drift_stats`` view are measured against
the same bounds by tests/integration/test_drift.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from streams.bench.drift import DEFAULT_SHARES, detect, detection_rates
from streams.monitoring.drift import SCORE
from streams.simulate.drift import AMOUNT_FEATURES, KINDS, DriftInjection


@pytest.fixture(scope="module")
def power() -> dict[str, Any]:
    return detect()


def test_every_injection_is_detected_within_two_windows(power: dict[str, Any]) -> None:
    clean = power["no_drift"]
    print(
        f"\nno drift: {clean['alerts']} alerts in {clean['window_features']} window-features, "
        f"false-alarm rate {clean['false_alarm_rate']:.2%}"
    )
    for kind, found in power["injections"].items():
        print(
            f"{kind} (share {found['share']}): windows to detect {found['windows_to_detect']}, "
            f"detection rate {found['detection_rate']:.1%}; unaffected features "
            f"{found['unaffected_alerts']} alerts in {found['unaffected_window_features']} "
            f"window-features ({found['unaffected_false_alarm_rate']:.2%})"
        )
    assert clean["windows"] == 100 and clean["false_alarm_rate"] <= 0.01
    assert list(power["injections"]) == list(KINDS)
    injections = power["injections"]
    assert injections["amount"]["affected"] == sorted(AMOUNT_FEATURES)
    assert injections["country"]["affected"] == ["event__is_foreign"]
    assert len(injections["missing"]["affected"]) == 4  # the merchant stand-in's features
    for kind, found in injections.items():
        assert found["windows"] == 20
        assert found["max_windows_to_detect"] <= 2, (kind, found["windows_to_detect"])
        for feature, alerted in found["alerting_windows"].items():
            # Each feature, not only on average: the merchant fraud count (0, its default,
            # for 62% of reference rows) alerts on its missing share, rarely on its PSI.
            assert alerted >= 18, (kind, feature, alerted)
        assert found["unaffected_false_alarm_rate"] <= 0.01, (kind, found)


def test_detection_rates_count_windows_and_sides() -> None:
    injection = DriftInjection.parse(f"country:share={DEFAULT_SHARES['country']}")
    alerts = {
        0: {"event__is_foreign": False, "event__amount": True, SCORE: False},
        1: {"event__is_foreign": False, "event__amount": False, SCORE: False},
        2: {"event__is_foreign": False, "event__amount": False, SCORE: True},
        3: {"event__is_foreign": True, "event__amount": True, SCORE: True},
        # window 4 never closed (absent)
    }
    rates = detection_rates(alerts, range(2), [(injection, range(2, 5))])
    assert rates["no_drift"] == {
        "windows": 2, "window_features": 6, "alerts": 1, "false_alarm_rate": 1 / 6,
    }  # fmt: skip
    found = rates["injections"]["country"]
    assert found["affected"] == ["event__is_foreign"]
    assert found["windows_to_detect"] == {"event__is_foreign": 2}
    assert found["alerting_windows"] == {"event__is_foreign": 1}
    assert found["detection_rate"] == 0.5
    # The score is affected by every injection: on neither side of one.
    assert (found["unaffected_alerts"], found["unaffected_window_features"]) == (1, 2)
    never = detection_rates({5: {"event__is_foreign": False}}, [], [(injection, range(5, 6))])
    assert never["injections"]["country"]["windows_to_detect"] == {"event__is_foreign": None}
    assert never["injections"]["country"]["max_windows_to_detect"] == 2  # beyond its windows
