"""Synthetic feature services and training tables for tests and benchmarks.

The table has the exact shape ``streams.features.training.build_training_set`` returns:
``event_id``, ``event_time``, ``is_fraud`` (int8), then every feature in service order,
with some nulls. Fraud depends non-linearly on a few features so models have
something to learn.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from streams.features.spec import FeatureServiceSpec, FeatureSpec

if TYPE_CHECKING:
    from models.train import TrainResult

_GROUPS = ("account", "card", "merchant", "event")


def synthetic_feature_service(n_features: int = 20, name: str = "fraud_v1") -> FeatureServiceSpec:
    """``n_features`` float32 features named like Feast full names, defaults 0 or -1."""
    features = tuple(
        FeatureSpec(
            name=f"{_GROUPS[i % len(_GROUPS)]}__f{i:03d}",
            default=-1.0 if i % 3 == 0 else 0.0,
            owner="synthetic",
        )
        for i in range(n_features)
    )
    return FeatureServiceSpec(name=name, features=features)


def synthetic_training_table(
    spec: FeatureServiceSpec,
    rows: int = 5000,
    *,
    seed: int = 0,
    start: datetime = datetime(2025, 1, 1, tzinfo=UTC),
    days: int = 30,
    fraud_rate: float = 0.03,
    missing_rate: float = 0.03,
) -> pa.Table:
    rng = np.random.default_rng(seed)
    n = len(spec.features)
    x = rng.normal(size=(rows, n)).astype(np.float32)
    # Fraud signal: a linear part, an interaction and a threshold effect on a few features.
    k = min(n, 6)
    w = rng.normal(size=k)
    logit = x[:, :k] @ w
    if n >= 2:
        logit += 1.5 * x[:, 0] * x[:, 1]
    if n >= 3:
        logit += 2.0 * (x[:, 2] > 1.0)
    logit += np.log(fraud_rate / (1 - fraud_rate)) - 2.0  # features add spread
    label = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    seconds = np.sort(rng.uniform(0, days * 86400, size=rows))
    times = [start + timedelta(seconds=float(s)) for s in seconds]
    missing = rng.random((rows, n)) < missing_rate
    columns: dict[str, pa.Array] = {
        "event_id": pa.array([f"evt-{seed}-{i:08d}" for i in range(rows)], pa.string()),
        "event_time": pa.array(times, pa.timestamp("us", tz="UTC")),
        "is_fraud": pa.array(label, pa.int8()),
    }
    for j, feature in enumerate(spec.features):
        columns[feature.name] = pa.array(x[:, j], pa.float32(), mask=missing[:, j])
    return pa.table(columns)


def train_synthetic(
    out_dir: Path,
    kind: str = "lightgbm",
    *,
    spec: FeatureServiceSpec | None = None,
    rows: int = 5000,
    n_features: int = 20,
    version: str = "1",
    seed: int = 0,
    **config: Any,
) -> TrainResult:
    """Train one artifact on synthetic data (tests, benchmarks); ``config`` goes to TrainConfig."""
    from models.train import TrainConfig, train

    spec = spec or synthetic_feature_service(n_features)
    table = synthetic_training_table(spec, rows, seed=seed)
    return train(spec, table, out_dir, TrainConfig(kind=kind, version=version, **config))  # type: ignore[arg-type]
