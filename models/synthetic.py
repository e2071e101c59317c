"""Synthetic feature services and training tables for tests and benchmarks.

The table has the exact shape ``streams.features.training.build_training_set`` returns:
``event_id``, ``event_time``, ``is_fraud`` (int8), then every feature in service order,
with some nulls. Fraud depends non-linearly on a few features so models have
something to learn.

``variant_check`` trains one model and returns every ONNX variant as served, with the
native model's probabilities on the holdout: what a GPU check compares each variant on
each provider against (``benchmarks/gpu_check.sh``).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

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


@dataclass(frozen=True)
class VariantCheck:
    """Every variant of one trained model and the reference to hold each against.

    ``variants``: ``(variant name, ONNX bytes)``, main first, as ``load_artifact`` read
    and hashed them (LightGBM: ``trees``, ``tensor``; MLP: ``default``). ``x`` is the
    time holdout (float32, no NaN: training imputes each feature's default, as serving
    does) and ``reference`` the native model's positive-class probability on it; every
    variant on every provider must be within ``tolerance`` (max abs difference).
    """

    model_id: str
    kind: str
    variants: tuple[tuple[str, bytes], ...]
    x: NDArray[np.float32]
    reference: NDArray[np.float64]
    tolerance: float


def variant_check(
    kind: str = "lightgbm",
    *,
    rows: int = 5000,
    n_features: int = 20,
    seed: int = 0,
    **config: Any,
) -> VariantCheck:
    """Train ``kind`` on synthetic data in a temporary folder; its variants and reference.

    ``config`` goes to TrainConfig (e.g. ``n_estimators=200``).
    """
    from models.export import artifact_variants
    from models.train import PARITY_TOLERANCE, TrainConfig, feature_matrix, time_split

    spec = synthetic_feature_service(n_features)
    table = synthetic_training_table(spec, rows, seed=seed)
    with tempfile.TemporaryDirectory(prefix="streamscore-variants-") as tmp:
        result = train_synthetic(Path(tmp), kind, spec=spec, rows=rows, seed=seed, **config)
        variants = tuple(artifact_variants(result.onnx_path))
    holdout = config.get("holdout_fraction", TrainConfig.holdout_fraction)
    train_mask, _ = time_split(table.column("event_time").to_numpy(), holdout)
    x = feature_matrix(table, spec)[~train_mask]
    reference = np.asarray(result.model.predict_proba(x)[:, 1], dtype=np.float64)
    return VariantCheck(result.metadata.model_id, kind, variants, x, reference, PARITY_TOLERANCE)
