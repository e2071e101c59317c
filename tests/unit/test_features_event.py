"""Event-level features, hand-computed."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from streams.errors import FeatureError
from streams.features.event import EVENT_FEATURES_V1, compute_event_features


def _events(event_time: pa.Array) -> pa.Table:
    return pa.table(
        {
            "event_time": event_time,
            "amount": [10.0, 250.0],
            "merchant_country": ["DE", "US"],
            "card_country": ["DE", "DE"],
            "channel": ["pos", "ecommerce"],
            "entry_mode": ["chip", "ecommerce"],
            "card_present": [True, False],
            "is_3ds": pa.array([None, True], pa.bool_()),
        }
    )


def test_hand_computed_rows() -> None:
    events = _events(pa.array(["2024-01-01T03:04:05Z", "2024-01-06T23:30:00+02:00"]))
    matrix = compute_event_features(events, [5.0, 0.0])
    row = dict(zip([f.name for f in EVENT_FEATURES_V1], matrix[0], strict=True))
    other = dict(zip([f.name for f in EVENT_FEATURES_V1], matrix[1], strict=True))
    assert matrix.dtype == np.float32 and matrix.shape == (2, len(EVENT_FEATURES_V1))
    assert row["event__log_amount"] == np.float32(math.log1p(10.0))
    assert (row["event__hour_of_day"], row["event__is_night"], row["event__day_of_week"]) == (
        3,
        1,
        0,
    )
    assert (row["event__is_3ds"], row["event__is_3ds_known"]) == (0, 0)
    assert row["event__amount_vs_account_mean_30d"] == 2.0
    assert (other["event__hour_of_day"], other["event__day_of_week"]) == (21, 5)  # UTC
    assert other["event__is_foreign"] == 1 and other["event__channel_ecommerce"] == 1
    assert other["event__amount_vs_account_mean_30d"] == 0.0  # unknown account: no ratio


def test_timestamps_and_strings_give_the_same_features() -> None:
    strings = _events(pa.array(["2024-01-01T03:04:05Z", "2024-01-06T21:30:00Z"]))
    stamps = _events(pa.array([1704078245_000000, 1704576600_000000], pa.timestamp("us", tz="UTC")))
    naive = _events(pa.array([1704078245_000000, 1704576600_000000], pa.timestamp("us")))
    means = np.array([3.3, 7.7])
    expected = compute_event_features(strings, means)
    assert np.array_equal(compute_event_features(stamps, means), expected)
    assert np.array_equal(compute_event_features(naive, means), expected)


def test_missing_input_column_is_named() -> None:
    events = _events(pa.array(["2024-01-01T03:04:05Z"] * 2)).drop_columns(["channel"])
    with pytest.raises(FeatureError, match="channel"):
        compute_event_features(events, [0.0, 0.0])
