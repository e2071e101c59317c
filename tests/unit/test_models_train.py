"""Training and export: time holdout, ONNX/native parity, sidecar, model card, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pytest

from models import (
    TrainConfig,
    next_version,
    synthetic_feature_service,
    synthetic_training_table,
    train,
)
from models.train import feature_matrix, time_split
from streams.errors import ModelError
from streams.scoring import INPUT_NAME, OUTPUT_NAME, ModelMetadata

SPEC = synthetic_feature_service(20)


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return synthetic_training_table(SPEC, 5000, seed=0)


def _holdout(table: pa.Table) -> np.ndarray:
    train_mask, _ = time_split(table.column("event_time").to_numpy(), 0.2)
    return feature_matrix(table, SPEC)[~train_mask]


@pytest.mark.parametrize(
    "config",
    [TrainConfig(kind="lightgbm", n_estimators=40), TrainConfig(kind="mlp", max_iter=15)],
    ids=["lightgbm", "mlp"],
)
def test_onnx_matches_native_model_on_holdout(
    table: pa.Table, tmp_path: Path, config: TrainConfig
) -> None:
    result = train(SPEC, table, tmp_path, config)
    x_hold = _holdout(table)
    session = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [INPUT_NAME]
    assert [o.name for o in session.get_outputs()] == [OUTPUT_NAME]
    onnx_scores = session.run([OUTPUT_NAME], {INPUT_NAME: x_hold})[0]
    assert onnx_scores.dtype == np.float32 and onnx_scores.shape == (len(x_hold),)
    native = result.model.predict_proba(x_hold)[:, 1]
    assert np.abs(onnx_scores - native).max() <= 1e-5
    assert result.parity_max_abs_diff <= 1e-5


def test_sidecar_and_model_card(table: pa.Table, tmp_path: Path) -> None:
    result = train(SPEC, table, tmp_path, TrainConfig(kind="lightgbm", n_estimators=40))
    assert result.onnx_path == tmp_path / "fraud_lightgbm-1.onnx"
    meta = ModelMetadata.read(result.sidecar_path)
    assert meta == result.metadata
    assert meta.feature_service == "fraud_v1"
    assert meta.feature_names == SPEC.names
    assert [f.default for f in meta.features] == [f.default for f in SPEC.features]
    assert meta.metrics["roc_auc"] > 0.75  # the synthetic signal is learnable
    assert {"pr_auc", "recall_at_1pct_fpr", "holdout_rows"} <= set(meta.metrics)
    t = meta.thresholds
    assert t.review <= t.low_confidence_low <= t.low_confidence_high == t.decline
    assert set(meta.feature_baselines) == set(SPEC.names)
    for hist in (*meta.feature_baselines.values(), meta.score_baseline):
        assert hist is not None
        assert len(hist.proportions) == len(hist.edges) + 1
        assert abs(sum(hist.proportions) - 1) < 1e-4
    assert meta.training_data["holdout_from"] > meta.training_data["start"]
    assert meta.training_data["train_rows"] + meta.training_data["holdout_rows"] == 5000
    raw = json.loads(result.sidecar_path.read_text())
    assert raw["features"][0] == {"name": SPEC.names[0], "dtype": "float32", "default": -1.0}
    card = result.card_path.read_text()
    assert "# Model card: fraud_lightgbm-1" in card and meta.onnx_sha256 in card


@pytest.mark.parametrize(
    "config",
    [TrainConfig(kind="lightgbm", n_estimators=20), TrainConfig(kind="mlp", max_iter=5)],
    ids=["lightgbm", "mlp"],
)
def test_training_is_reproducible(table: pa.Table, tmp_path: Path, config: TrainConfig) -> None:
    a = train(SPEC, table, tmp_path / "a", config)
    b = train(SPEC, table, tmp_path / "b", config)
    assert a.onnx_path.read_bytes() == b.onnx_path.read_bytes()
    assert a.sidecar_path.read_bytes() == b.sidecar_path.read_bytes()


def test_time_split_has_no_overlap(table: pa.Table) -> None:
    times = table.column("event_time").to_numpy()
    train_mask, cut = time_split(times, 0.2)
    assert (times[train_mask] < cut).all() and (times[~train_mask] >= cut).all()
    assert 0.75 < train_mask.mean() < 0.85


def test_wrong_training_columns_are_refused(table: pa.Table, tmp_path: Path) -> None:
    swapped = table.select([0, 1, 2, 4, 3, *range(5, table.num_columns)])
    with pytest.raises(ModelError, match="column 3: expected"):
        train(SPEC, swapped, tmp_path, TrainConfig())
    with pytest.raises(ModelError, match="column 1: expected 'event_time'"):
        train(SPEC, table.drop_columns(["event_time"]), tmp_path, TrainConfig())


def test_single_class_split_is_refused(table: pa.Table, tmp_path: Path) -> None:
    no_fraud = table.set_column(2, "is_fraud", pa.array(np.zeros(5000, np.int8)))
    with pytest.raises(ModelError, match="both fraud and legitimate"):
        train(SPEC, no_fraud, tmp_path, TrainConfig())


def test_next_version(tmp_path: Path) -> None:
    assert next_version(tmp_path, "fraud_mlp") == "1"
    for name in ("fraud_mlp-1.onnx", "fraud_mlp-7.onnx", "fraud_mlp-x.onnx", "fraud_lgbm-9.onnx"):
        (tmp_path / name).touch()
    assert next_version(tmp_path, "fraud_mlp") == "8"
