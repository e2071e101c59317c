"""The MLP export: standard operators only (its StandardScaler is rewritten as Sub and Mul,
so a CUDA session runs every node), with the same probabilities as scikit-learn."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from models.export import sklearn_to_onnx
from streams.scoring.metadata import INPUT_NAME, OUTPUT_NAME


# A few epochs are enough: the test compares two runtimes on one fitted model.
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_mlp_export_has_no_ml_domain_nodes_and_matches_sklearn() -> None:
    rng = np.random.default_rng(3)
    # Features on very different scales, so a scaler left out or applied twice shows.
    x = (rng.normal(size=(2_000, 12)) * np.geomspace(1e-3, 1e4, 12)).astype(np.float32)
    y = (x[:, 0] * 1e3 + x[:, 5] > 0).astype(np.int8)
    pipeline = Pipeline(
        [("scale", StandardScaler()), ("mlp", MLPClassifier((16,), max_iter=50, random_state=0))]
    ).fit(x, y)
    onx = sklearn_to_onnx(pipeline, 12)
    assert [n.op_type for n in onx.graph.node if n.domain == "ai.onnx.ml"] == []
    assert {"Sub", "Mul"} <= {n.op_type for n in onx.graph.node}
    session = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
    scores = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    expected = pipeline.predict_proba(x)[:, 1]
    assert np.abs(scores - expected).max() <= 1e-5
