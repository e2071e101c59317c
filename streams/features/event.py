"""Event-level features computed from the transaction itself: one implementation for both paths.

The training set (``training.py``) and the serving path (``online.py``) call
``compute_event_features`` on an Arrow table or batch of transactions, so a feature
cannot be computed one way offline and another way online.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from streams.errors import FeatureError
from streams.features.spec import FeatureSpec

OWNER = "fraud-features@streamscore"
SLA = "real time"
CHANNELS = ("pos", "ecommerce", "atm", "moto", "recurring")
ENTRY_MODES = ("chip", "contactless", "magstripe", "manual", "ecommerce", "token")
# The nightly feature the amount is compared with (full Feast name).
ACCOUNT_MEAN_FEATURE = "account__amount_mean_30d"
INPUT_COLUMNS = (
    "event_time",
    "amount",
    "merchant_country",
    "card_country",
    "channel",
    "entry_mode",
    "card_present",
    "is_3ds",
)
_TIMESTAMP = pa.timestamp("us", tz="UTC")


def _spec(name: str, drift_threshold: float = 0.2) -> FeatureSpec:
    return FeatureSpec(name=f"event__{name}", owner=OWNER, sla=SLA, drift_threshold=drift_threshold)


EVENT_FEATURES_V1: tuple[FeatureSpec, ...] = (
    _spec("amount"),
    _spec("log_amount"),
    # Cyclical in event time: a one-minute window holds one hour of one day, so their drift
    # is reported but never alerts (threshold 0).
    _spec("hour_of_day", 0.0),
    _spec("day_of_week", 0.0),
    _spec("is_night", 0.0),
    _spec("is_foreign", 0.1),
    _spec("card_present", 0.1),
    _spec("is_3ds", 0.1),
    _spec("is_3ds_known", 0.1),
    *(_spec(f"channel_{c}", 0.1) for c in CHANNELS),
    *(_spec(f"entry_mode_{m}", 0.1) for m in ENTRY_MODES),
    _spec("amount_vs_account_mean_30d"),
)

# Versions named by a feature service's ``event_features`` tag.
EVENT_FEATURE_SETS: Mapping[str, tuple[FeatureSpec, ...]] = {"v1": EVENT_FEATURES_V1}


def compute_event_features(
    events: pa.Table | pa.RecordBatch,
    account_amount_mean_30d: npt.ArrayLike,
    version: str = "v1",
) -> npt.NDArray[np.float32]:
    """A float32 matrix [rows × event features] in ``EVENT_FEATURE_SETS[version]`` order.

    ``events`` holds at least ``INPUT_COLUMNS`` (``event_time`` as a UTC timestamp or an
    RFC 3339 string); ``account_amount_mean_30d`` is the account's nightly 30-day mean
    amount per row (the feature default when the account is unknown).
    """
    if version not in EVENT_FEATURE_SETS:
        raise FeatureError(f"unknown event feature set {version!r} (known: v1)")
    missing = [c for c in INPUT_COLUMNS if c not in events.schema.names]
    if missing:
        raise FeatureError(f"events lack columns {missing} needed for event features")
    rows = events.num_rows
    # The nightly value is served as float32; widen that exact value so both paths agree.
    mean_30d = np.asarray(account_amount_mean_30d, dtype=np.float32).astype(np.float64)
    if mean_30d.shape != (rows,):
        raise FeatureError(f"account_amount_mean_30d has shape {mean_30d.shape}, want ({rows},)")

    times = events.column("event_time")
    if not pa.types.is_timestamp(times.type) or times.type.tz is None:
        times = pc.cast(times, _TIMESTAMP) if pa.types.is_string(times.type) else times
        if pa.types.is_timestamp(times.type) and times.type.tz is None:
            times = pc.assume_timezone(times, "UTC")
    hour = _floats(pc.hour(times))
    amount = _floats(events.column("amount"))
    channel = events.column("channel")
    entry_mode = events.column("entry_mode")
    is_3ds = events.column("is_3ds")

    columns = [
        amount,
        np.log1p(amount),
        hour,
        _floats(pc.day_of_week(times)),  # Monday = 0
        (hour < 6).astype(np.float64),
        _floats(pc.not_equal(events.column("merchant_country"), events.column("card_country"))),
        _floats(events.column("card_present")),
        _floats(pc.fill_null(is_3ds, False)),
        _floats(pc.is_valid(is_3ds)),
        *(_floats(pc.equal(channel, c)) for c in CHANNELS),
        *(_floats(pc.equal(entry_mode, m)) for m in ENTRY_MODES),
        np.divide(amount, mean_30d, out=np.zeros(rows), where=mean_30d > 0),
    ]
    return np.column_stack(columns).astype(np.float32, copy=False).reshape(rows, len(columns))


def _floats(values: pa.Array | pa.ChunkedArray) -> npt.NDArray[np.float64]:
    filled = pc.fill_null(pc.cast(values, pa.float64()), 0.0)
    return np.asarray(filled.to_numpy(), dtype=np.float64)
