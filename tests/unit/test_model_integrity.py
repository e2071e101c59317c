"""Model integrity: every file ONNX Runtime reads is hashed, and only the hashed bytes load.

The model here keeps every tensor in one external data file: main-graph initializers
(which ONNX Runtime takes from memory), a Constant attribute and a subgraph initializer
(which ONNX Runtime would open from disk itself, so the loader copies them into the graph).
``nested=False`` gives the same function with main-graph initializers only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from models import synthetic_feature_service, train_synthetic
from streams.errors import ModelError
from streams.scoring import ModelHolder, ModelMetadata, ModelSet, Scorer, Thresholds, load_artifact
from streams.scoring.artifact import META_PREFIX, artifact_hashes, sha256_of
from streams.scoring.metadata import INPUT_NAME, OUTPUT_NAME, FeatureColumn, sidecar_path
from streams.scoring.registry import RegistryConfig

SPEC = synthetic_feature_service(4)
NAME, VERSION = "fraud_ext", "1"
MODEL_ID = f"{NAME}-{VERSION}"
WEIGHTS = f"{MODEL_ID}.weights"
X = np.random.default_rng(5).normal(size=(32, 4)).astype(np.float32)


def _weights(seed: int) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(4, 1)).astype(np.float32)
    bias = rng.normal(size=(1,)).astype(np.float32)
    scale = rng.uniform(0.5, 2.0, size=(1,)).astype(np.float32)
    return w, bias, scale


def _expected(seed: int, x: NDArray[np.float32] = X) -> NDArray[np.float32]:
    w, bias, scale = _weights(seed)
    logit = ((x @ w + bias) * scale).reshape(-1)
    return (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)


def _graph(seed: int, *, nested: bool = True) -> onnx.ModelProto:
    """score = sigmoid(((features @ w) + bias) * scale), scale applied inside an If branch."""
    w, bias, scale = _weights(seed)
    head = [helper.make_node("MatMul", [INPUT_NAME, "w"], ["xw"])]
    tail = [
        # [N, 1] -> [N] without a shape tensor: ONNX Runtime's shape inference cannot read
        # an external one (loading from a path fails the same way).
        helper.make_node("ReduceMean", ["logit2d"], ["logit"], axes=[1], keepdims=0),
        helper.make_node("Sigmoid", ["logit"], [OUTPUT_NAME]),
    ]
    initializers = [numpy_helper.from_array(w, "w")]
    if not nested:
        head += [
            helper.make_node("Add", ["xw", "bias"], ["z"]),
            helper.make_node("Mul", ["z", "scale"], ["logit2d"]),
        ]
        initializers += [
            numpy_helper.from_array(bias, "bias"),
            numpy_helper.from_array(scale, "scale"),
        ]
        return _model(head + tail, initializers)
    then_branch = helper.make_graph(
        [helper.make_node("Mul", ["z", "scale"], ["scaled"])],
        "then",
        [],
        [helper.make_tensor_value_info("scaled", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(scale, "scale")],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Identity", ["z"], ["unscaled"])],
        "else",
        [],
        [helper.make_tensor_value_info("unscaled", TensorProto.FLOAT, None)],
    )
    head += [
        helper.make_node("Constant", [], ["bias"], value=numpy_helper.from_array(bias, "b")),
        helper.make_node("Add", ["xw", "bias"], ["z"]),
        helper.make_node(
            "If", ["use_scale"], ["logit2d"], then_branch=then_branch, else_branch=else_branch
        ),
    ]
    initializers.append(numpy_helper.from_array(np.array(True), "use_scale"))
    return _model(head + tail, initializers)


def _model(nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto]) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        MODEL_ID,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N"])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    props = {"name": NAME, "version": VERSION, "feature_service": SPEC.name, "n_features": "4"}
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = f"{META_PREFIX}{key}", value
    return model


def _sign(onnx_path: Path) -> None:
    """Write the sidecar the way training does: hashes taken from the files on disk."""
    onnx_sha256, external = artifact_hashes(onnx_path)
    ModelMetadata(
        name=NAME,
        version=VERSION,
        kind="linear",
        feature_service=SPEC.name,
        features=tuple(FeatureColumn(f.name, f.dtype, f.default) for f in SPEC.features),
        thresholds=Thresholds(0.5, 0.9, 0.6, 0.9),
        onnx_sha256=onnx_sha256,
        external_data=external,
    ).write(sidecar_path(onnx_path))


def _write(folder: Path, seed: int, *, sign: bool = True, nested: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / f"{MODEL_ID}.onnx"
    onnx.save_model(
        _graph(seed, nested=nested),
        onnx_path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=WEIGHTS,
        size_threshold=0,
        convert_attribute=True,  # the Constant's tensor goes external too
    )
    if sign:
        _sign(onnx_path)
    return onnx_path


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return _write(tmp_path / "artifacts", seed=1)


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """This test model's tensors: initializers and attribute tensors, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            if attr.HasField("g"):
                yield from _tensors(attr.g)


def _locations(model: onnx.ModelProto) -> dict[str, str]:
    """tensor name -> external location, for every external tensor."""
    out: dict[str, str] = {}
    for tensor in _tensors(model.graph):
        if tensor.data_location == TensorProto.EXTERNAL:
            out[tensor.name] = {e.key: e.value for e in tensor.external_data}["location"]
    return out


def _set_location(onnx_path: Path, tensor_name: str, location: str) -> None:
    model = onnx.load_model(onnx_path, load_external_data=False)
    for tensor in _tensors(model.graph):
        if tensor.name == tensor_name:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
    onnx_path.write_bytes(model.SerializeToString())


def test_every_tensor_is_external_and_the_sidecar_hashes_the_weights_file(model: Path) -> None:
    proto = onnx.load_model(model, load_external_data=False)
    assert _locations(proto) == dict.fromkeys(("w", "use_scale", "b", "scale"), WEIGHTS)
    raw = json.loads(sidecar_path(model).read_text())
    weights = (model.parent / WEIGHTS).read_bytes()
    assert raw["external_data"] == {WEIGHTS: sha256_of(weights)}
    assert raw["onnx_sha256"] == sha256_of(model.read_bytes())


def test_model_with_external_data_loads_and_scores(model: Path) -> None:
    artifact = load_artifact(model, SPEC)
    assert artifact.has_external_data
    assert artifact.external_data == {WEIGHTS: (model.parent / WEIGHTS).read_bytes()}
    scorer = Scorer(artifact, providers="cpu")
    np.testing.assert_allclose(scorer.score(X), _expected(1), rtol=1e-5, atol=1e-6)


NESTED = pytest.mark.parametrize("nested", [True, False], ids=["subgraph", "initializers-only"])


@NESTED
def test_session_opens_no_file(
    nested: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every file gone after the check, the session still builds: it reads none."""
    model = _write(tmp_path / "artifacts", seed=1, nested=nested)
    artifact = load_artifact(model, SPEC)
    # Other weights of the same name in the working directory, where ONNX Runtime looks
    # for a bytes-loaded model's files (and, in 1.31, for a subgraph's even from a path).
    stray = tmp_path / "cwd"
    _write(stray, seed=2, sign=False, nested=nested)
    monkeypatch.chdir(stray)
    for path in model.parent.iterdir():
        path.unlink()
    scorer = Scorer(artifact, providers="cpu")
    np.testing.assert_allclose(scorer.score(X), _expected(1), rtol=1e-5, atol=1e-6)


@NESTED
def test_files_swapped_between_check_and_session_are_not_served(
    nested: bool, tmp_path: Path
) -> None:
    """Phase 1 reads and hashes; the files are then replaced (and re-signed); phase 2 must
    build its session from the bytes phase 1 checked, not from what is on disk now."""
    model = _write(tmp_path / "artifacts", seed=1, nested=nested)
    artifact = load_artifact(model, SPEC)
    _write(model.parent, seed=2, nested=nested)
    scorer = Scorer(artifact, providers="cpu")
    np.testing.assert_allclose(scorer.score(X), _expected(1), rtol=1e-5, atol=1e-6)
    # The swap did land on disk: a fresh load serves the new weights.
    fresh = Scorer.load(model, SPEC, providers="cpu")
    np.testing.assert_allclose(fresh.score(X), _expected(2), rtol=1e-5, atol=1e-6)
    assert not np.allclose(_expected(1), _expected(2), atol=1e-3)


def test_tampered_external_data_is_refused_naming_the_file(model: Path) -> None:
    weights = model.parent / WEIGHTS
    expected = sha256_of(weights.read_bytes())
    data = bytearray(weights.read_bytes())
    data[0] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError) as info:
        load_artifact(model, SPEC)
    message = str(info.value)
    assert f"external data file {weights.resolve()}" in message
    assert f"location {WEIGHTS!r} of model file {model}" in message
    assert f"sha256 expected {expected}" in message
    assert f"found {sha256_of(bytes(data))}" in message
    assert "the model was not loaded" in message


def test_tampered_onnx_is_refused(model: Path) -> None:
    proto = onnx.load_model(model, load_external_data=False)
    proto.graph.node[-1].op_type = "Relu"
    model.write_bytes(proto.SerializeToString())
    with pytest.raises(ModelError, match=rf"model file {model} is corrupt or was replaced"):
        load_artifact(model, SPEC)


def test_missing_external_file_is_refused(model: Path) -> None:
    (model.parent / WEIGHTS).unlink()
    with pytest.raises(ModelError, match=rf"{WEIGHTS}'.*does not exist; the model was not loaded"):
        load_artifact(model, SPEC)


def test_sidecar_without_external_hashes_is_refused(model: Path) -> None:
    """A sidecar from before external data was hashed cannot vouch for such a model."""
    sidecar = sidecar_path(model)
    raw = json.loads(sidecar.read_text())
    del raw["external_data"]
    sidecar.write_text(json.dumps(raw))
    assert ModelMetadata.read(sidecar).external_data == {}
    with pytest.raises(ModelError, match=rf"reads external data from \['{WEIGHTS}'\]"):
        load_artifact(model, SPEC)


def test_sidecar_hashing_a_file_the_model_does_not_use_is_refused(model: Path) -> None:
    sidecar = sidecar_path(model)
    raw = json.loads(sidecar.read_text())
    raw["external_data"]["other.bin"] = "0" * 64
    sidecar.write_text(json.dumps(raw))
    with pytest.raises(ModelError, match=r"hashes external data \['other.bin'\]"):
        load_artifact(model, SPEC)


def test_malformed_external_data_field_is_refused(model: Path) -> None:
    sidecar = sidecar_path(model)
    raw = json.loads(sidecar.read_text())
    raw["external_data"] = [WEIGHTS]
    sidecar.write_text(json.dumps(raw))
    with pytest.raises(ModelError, match="'external_data' must map"):
        load_artifact(model, SPEC)


@pytest.mark.parametrize(
    "location, message",
    [
        (f"../{WEIGHTS}", "climbs out"),
        ("ABSOLUTE", "absolute path"),  # the weights file's own absolute path
        (f"./{WEIGHTS}", "not in plain form"),
        (f"sub//{WEIGHTS}", "not in plain form"),
        ("*/_ORT_MEM_ADDR_/*", "raw memory address"),
    ],
)
def test_escaping_or_ambiguous_location_is_refused(
    model: Path, location: str, message: str
) -> None:
    """Refused even with the file really there and a sidecar that hashes it."""
    if location == "ABSOLUTE":
        location = str(model.parent / WEIGHTS)
    target = model.parent / location
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        target.write_bytes((model.parent / WEIGHTS).read_bytes())
    _set_location(model, "scale", location)  # a subgraph tensor, the one ORT would open
    _sign_with_location(model, location)
    with pytest.raises(ModelError, match=message) as info:
        load_artifact(model, SPEC)
    assert "'scale'" in str(info.value) and str(model) in str(info.value)


def _sign_with_location(onnx_path: Path, location: str) -> None:
    """A sidecar whose hashes cover ``location`` too (artifact_hashes itself would refuse)."""
    sidecar = sidecar_path(onnx_path)
    raw = json.loads(sidecar.read_text())
    raw["onnx_sha256"] = sha256_of(onnx_path.read_bytes())
    raw["external_data"][location] = raw["external_data"][WEIGHTS]
    sidecar.write_text(json.dumps(raw))


def test_symlink_out_of_the_folder_is_refused(model: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.weights"
    outside.write_bytes((model.parent / WEIGHTS).read_bytes())
    (model.parent / "linked.weights").symlink_to(outside)
    _set_location(model, "w", "linked.weights")
    _sign_with_location(model, "linked.weights")
    with pytest.raises(ModelError, match=rf"resolves to {outside} outside"):
        load_artifact(model, SPEC)


def test_tensor_beyond_the_end_of_its_file_is_refused(model: Path) -> None:
    proto = onnx.load_model(model, load_external_data=False)
    for entry in proto.graph.initializer[0].external_data:
        if entry.key == "offset":
            entry.value = str(len((model.parent / WEIGHTS).read_bytes()))
    model.write_bytes(proto.SerializeToString())
    _sign(model)
    with pytest.raises(ModelError, match=r"tensor 'w' in external data .* spans bytes"):
        load_artifact(model, SPEC)


def test_session_model_inlines_what_onnxruntime_would_open_itself(model: Path) -> None:
    artifact = load_artifact(model, SPEC)
    # Main-graph initializers stay external (served from memory); the Constant and the
    # subgraph initializer are copied in from the hashed buffer.
    partial = onnx.load_model_from_string(artifact.session_model(initializers_in_memory=True))
    assert _locations(partial) == dict.fromkeys(("w", "use_scale"), WEIGHTS)
    # Without the in-memory API everything is copied in and the graph stands alone.
    whole = artifact.session_model(initializers_in_memory=False)
    assert _locations(onnx.load_model_from_string(whole)) == {}
    (model.parent / WEIGHTS).unlink()
    session = ort.InferenceSession(whole, providers=["CPUExecutionProvider"])
    out = session.run([OUTPUT_NAME], {INPUT_NAME: X})[0]
    np.testing.assert_allclose(out, _expected(1), rtol=1e-5, atol=1e-6)


def test_model_without_external_data_reaches_onnxruntime_as_the_hashed_bytes(
    tmp_path: Path,
) -> None:
    trained = train_synthetic(tmp_path, "lightgbm", n_features=4, rows=2000, n_estimators=5)
    raw = json.loads(trained.sidecar_path.read_text())
    assert raw["external_data"] == {}
    assert raw["onnx_sha256"] == sha256_of(trained.onnx_path.read_bytes())
    artifact = load_artifact(trained.onnx_path, SPEC)
    assert not artifact.has_external_data
    assert artifact.session_model(initializers_in_memory=True) is artifact.model_bytes


def test_failed_reload_names_the_file_and_keeps_the_old_models(
    model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = SimpleNamespace(
        models_dir=model.parent.parent, providers="cpu", intra_op_threads=1, gpu_crossover_rows=None
    )
    config = RegistryConfig(champion=MODEL_ID)
    holder = ModelHolder()
    first = holder.swap(lambda: ModelSet.from_registry(settings, SPEC, config))
    weights = model.parent / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with (
        caplog.at_level(logging.ERROR, logger="streams.scoring"),
        pytest.raises(ModelError, match=rf"external data file {weights.resolve()}"),
    ):
        holder.swap(lambda: ModelSet.from_registry(settings, SPEC, config))
    assert holder.current is first
    assert f"model reload failed, still serving {MODEL_ID}" in caplog.text
    np.testing.assert_allclose(
        holder.current.score([str(i) for i in range(len(X))], X).scores,
        _expected(1),
        rtol=1e-5,
        atol=1e-6,
    )


def test_model_card_lists_each_external_data_hash(model: Path) -> None:
    from models.train import model_card

    meta = ModelMetadata.read(sidecar_path(model))
    digest = sha256_of((model.parent / WEIGHTS).read_bytes())
    assert f"external data `{WEIGHTS}`, sha256 `{digest}`" in model_card(meta)
