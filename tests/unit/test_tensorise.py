"""The tensor variant of a LightGBM (models/tensorise.py) scores as the native model does.

Parity is checked on fresh rows and on rows placed exactly at, just above and just below
every split threshold (where float32 rounding would show), with LightGBM's missing-value
rules (None, NaN and Zero nodes, tiny values), single-leaf trees, and the project's own
LightGBM options (models.train._fit). Refusals: categorical splits, multiclass, features
out of range. No GPU needed: the graph is run on CPU and its operators are checked
against those the CUDA provider implements.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from numpy.typing import NDArray

from models import TrainConfig, synthetic_feature_service, train_synthetic
from models.tensorise import CUDA_KERNEL_OPS, TENSOR_OPSET, round_down_to_float32, tensorise
from models.train import _fit, feature_matrix
from streams.errors import ModelError
from streams.scoring import Scorer, load_artifact
from streams.scoring.metadata import INPUT_NAME, OUTPUT_NAME

TOLERANCE = 1e-5


def _data(seed: int, rows: int, n_features: int) -> tuple[NDArray[np.float32], NDArray[np.int8]]:
    """Half the columns coarse (many rows share each value, so ties at thresholds happen
    in training too), half continuous; the label depends on a few of them."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, n_features)).astype(np.float32)
    x[:, ::2] = np.round(x[:, ::2], 1)
    logit = x[:, 0] + x[:, 1] * x[:, min(2, n_features - 1)] - 1.0
    y = (rng.random(rows) < 1 / (1 + np.exp(-2 * logit))).astype(np.int8)
    return x, y


def _lightgbm(
    x: NDArray[np.float32], y: NDArray[np.int8], trees: int, leaves: int, **extra: Any
) -> Any:
    config = TrainConfig(
        kind="lightgbm", n_estimators=trees, num_leaves=leaves, seed=3, extra=extra
    )
    return _fit(config, x, y)


def _splits(dump: dict[str, Any]) -> list[tuple[int, float]]:
    found: list[tuple[int, float]] = []
    stack = [t["tree_structure"] for t in dump["tree_info"]]
    while stack:
        node = stack.pop()
        if "leaf_value" not in node:
            found.append((int(node["split_feature"]), float(node["threshold"])))
            stack += [node["left_child"], node["right_child"]]
    return found


def _at_thresholds(dump: dict[str, Any], base: NDArray[np.float32]) -> NDArray[np.float32]:
    """Copies of ``base`` with one feature set at, above and below each split's threshold."""
    rows: list[NDArray[np.float32]] = []
    up, down = np.float32(np.inf), np.float32(-np.inf)
    for feature, threshold in _splits(dump):
        t32 = round_down_to_float32(threshold)
        with np.errstate(over="ignore"):
            nearest = np.float32(threshold)
        for value in (t32, np.nextafter(t32, up), np.nextafter(t32, down), nearest):
            row = base.copy()
            row[feature] = value
            rows.append(row)
    return np.stack(rows)


def _scores(model: onnx.ModelProto, x: NDArray[np.float32]) -> NDArray[np.float32]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run([OUTPUT_NAME], {INPUT_NAME: x})[0])


def _max_diff(model: Any, onx: onnx.ModelProto, x: NDArray[np.float32]) -> float:
    native = model.predict_proba(x)[:, 1]
    got = _scores(onx, x)
    assert got.dtype == np.float32 and got.shape == (len(x),)
    return float(np.abs(got.astype(np.float64) - native).max())


@pytest.mark.parametrize(
    "seed, n_features, trees, leaves",
    [(0, 5, 30, 7), (1, 20, 60, 31), (2, 40, 25, 63)],
    ids=["5f-30x7", "20f-60x31", "40f-25x63"],
)
def test_parity_on_fresh_rows_and_at_every_threshold(
    seed: int, n_features: int, trees: int, leaves: int
) -> None:
    x, y = _data(seed, 4000, n_features)
    model = _lightgbm(x, y, trees, leaves)
    dump = model.booster_.dump_model()
    onx = tensorise(dump, n_features)
    fresh, _ = _data(seed + 100, 2000, n_features)
    ties = _at_thresholds(dump, fresh[0])
    assert len(ties) >= 4 * trees  # every tree split at least once
    assert _max_diff(model, onx, fresh) <= TOLERANCE
    assert _max_diff(model, onx, ties) <= TOLERANCE
    # The rows at and just above a threshold often land in different leaves, so a
    # threshold rounded the wrong way would show in the scores above.
    leaves_hit = model.predict(ties, pred_leaf=True).reshape(-1, 4, trees)
    split_here = (leaves_hit[:, 0] != leaves_hit[:, 1]).any(axis=1)
    assert split_here.sum() >= trees, split_here.sum()


def test_tiny_values_and_zero_read_as_zero_like_lightgbm() -> None:
    """LightGBM's predictor reads |x| <= 1e-35 as 0.0 (thresholds at +-1e-35 are common)."""
    x, y = _data(4, 4000, 6)
    x[::3, 1] = 0.0  # a zero bin, so splits at -1e-35 / +1e-35 appear
    model = _lightgbm(x, y, 40, 15)
    onx = tensorise(model.booster_.dump_model(), 6)
    fresh, _ = _data(5, 200, 6)
    probes = []
    for value in (0.0, -0.0, 1e-35, -1e-35, 1e-36, -1e-36, 2e-35, -2e-35, 1e-30, -1e-30):
        rows = fresh.copy()
        rows[:, 1] = np.float32(value)
        probes.append(rows)
    assert _max_diff(model, onx, np.vstack(probes)) <= TOLERANCE


@pytest.mark.parametrize("missing", ["none", "nan", "zero"])
def test_missing_value_rules_per_node_type(missing: str) -> None:
    """None nodes compare NaN as 0.0; NaN and Zero nodes send NaN (and 0 on Zero nodes)
    their default direction. The serving path never sends NaN (Scorer.prepare imputes),
    but the graph must not depend on that."""
    x, y = _data(6, 4000, 8)
    rng = np.random.default_rng(6)
    extra: dict[str, Any] = {}
    if missing == "nan":
        x = np.where(rng.random(x.shape) < 0.15, np.float32(np.nan), x)
    elif missing == "zero":
        x = np.where(rng.random(x.shape) < 0.15, np.float32(0.0), x)
        extra["zero_as_missing"] = True
    model = _lightgbm(x, y, 40, 15, **extra)
    dump = model.booster_.dump_model()
    types = {
        node["missing_type"]
        for tree in dump["tree_info"]
        for node in _internal_nodes(tree["tree_structure"])
    }
    assert types == {missing.capitalize() if missing != "nan" else "NaN"}
    onx = tensorise(dump, 8)
    fresh, _ = _data(7, 2000, 8)
    fresh = np.where(rng.random(fresh.shape) < 0.2, np.float32(np.nan), fresh)
    fresh = np.where(rng.random(fresh.shape) < 0.1, np.float32(0.0), fresh)
    assert np.isnan(fresh).any() and (fresh == 0).any()
    assert _max_diff(model, onx, fresh) <= TOLERANCE
    assert _max_diff(model, onx, _at_thresholds(dump, fresh[0])) <= TOLERANCE


def _internal_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    if "leaf_value" in node:
        return []
    return [node, *_internal_nodes(node["left_child"]), *_internal_nodes(node["right_child"])]


def test_single_leaf_trees() -> None:
    x, y = _data(8, 500, 4)
    # No leaf may hold fewer rows than exist: every tree is one leaf (the prior).
    model = _lightgbm(x, y, 5, 7, min_child_samples=10_000)
    dump = model.booster_.dump_model()
    assert all("leaf_value" in t["tree_structure"] for t in dump["tree_info"])
    assert _max_diff(model, tensorise(dump, 4), x[:50]) <= TOLERANCE


def test_graph_uses_only_operators_with_cuda_kernels() -> None:
    x, y = _data(9, 2000, 6)
    x = np.where(np.random.default_rng(9).random(x.shape) < 0.1, np.float32(np.nan), x)
    onx = tensorise(_lightgbm(x, y, 10, 7).booster_.dump_model(), 6)  # NaN nodes: every op
    onnx.checker.check_model(onx, full_check=True)
    ops = {node.op_type for node in onx.graph.node}
    assert ops <= CUDA_KERNEL_OPS, ops - CUDA_KERNEL_OPS
    assert {"Concat", "And", "MatMul", "Gather"} <= ops  # the missing-flag path is in it
    assert [(o.domain, o.version) for o in onx.opset_import] == [("", TENSOR_OPSET)]
    assert not any(n.domain for n in onx.graph.node)  # no ai.onnx.ml operator
    assert [i.name for i in onx.graph.input] == [INPUT_NAME]
    assert [o.name for o in onx.graph.output] == [OUTPUT_NAME]


def test_round_down_to_float32() -> None:
    rng = np.random.default_rng(10)
    values = np.concatenate(
        [rng.normal(size=2000) * 10.0 ** rng.integers(-40, 40, size=2000), [1e300, -1e300]]
    )
    for value in values:
        t32 = round_down_to_float32(float(value))
        assert float(t32) <= value
        with np.errstate(over="ignore"):
            above = np.nextafter(t32, np.float32(np.inf))
        assert float(above) > value
    assert round_down_to_float32(0.5) == np.float32(0.5)  # exact values stay
    with pytest.raises(ValueError, match="NaN"):
        round_down_to_float32(float("nan"))


def test_categorical_splits_are_refused_at_export() -> None:
    x, y = _data(11, 3000, 4)
    x[:, 0] = np.random.default_rng(11).integers(0, 6, size=len(x))
    y = (x[:, 0] % 2 == 0).astype(np.int8)
    import lightgbm as lgb

    model = lgb.LGBMClassifier(n_estimators=5, num_leaves=7, deterministic=True, verbose=-1)
    model.fit(x, y, categorical_feature=[0])
    dump = model.booster_.dump_model()
    assert any(t["num_cat"] for t in dump["tree_info"])  # it did split on categories
    with pytest.raises(ModelError, match="categorical"):
        tensorise(dump, 4)


def test_multiclass_and_out_of_range_features_are_refused() -> None:
    x, _ = _data(12, 600, 4)
    three = np.random.default_rng(12).integers(0, 3, size=len(x)).astype(np.int8)
    with pytest.raises(ModelError, match="only binary models"):
        tensorise(_lightgbm(x, three, 3, 4).booster_.dump_model(), 4)
    x, y = _data(13, 2000, 4)
    with pytest.raises(ModelError, match="only 2 features are declared"):
        tensorise(_lightgbm(x, y, 5, 7).booster_.dump_model(), 2)


def test_training_writes_a_tensor_variant_that_serves_like_the_tree_variant(
    tmp_path: Path,
) -> None:
    """Through train(): the parity check, the served Scorer, and NaN imputed first."""
    spec = synthetic_feature_service(20)
    result = train_synthetic(tmp_path, "lightgbm", spec=spec, n_estimators=40)
    assert set(result.variant_parity) == {"trees", "tensor"}
    assert max(result.variant_parity.values()) <= TOLERANCE
    assert result.metadata.metrics["onnx_parity_max_abs_diff_tensor"] <= TOLERANCE
    artifact = load_artifact(result.onnx_path, spec)
    trees = Scorer(artifact, providers="cpu")
    tensor = Scorer(artifact, providers="cpu", variant="tensor")
    assert (trees.variant, tensor.variant) == ("trees", "tensor")
    from models import synthetic_training_table

    x = feature_matrix(synthetic_training_table(spec, 1000, seed=21), spec)
    native = result.model.predict_proba(x)[:, 1]
    assert np.abs(tensor.score(x) - native).max() <= TOLERANCE
    assert np.abs(tensor.score(x) - trees.score(x)).max() <= TOLERANCE
    holes = np.random.default_rng(22).random(x.shape) < 0.1
    with_nan = np.where(holes, np.float32(np.nan), x)
    assert np.array_equal(tensor.score(with_nan), tensor.score(np.where(holes, tensor.defaults, x)))
