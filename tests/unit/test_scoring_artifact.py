"""Loading refuses corrupt, truncated, mismatched and path-traversing artifacts."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import onnx
import pytest

from models import synthetic_feature_service, train_synthetic
from models.train import TrainResult
from streams.errors import ModelError
from streams.features.spec import FeatureServiceSpec
from streams.scoring import load_artifact
from streams.scoring.artifact import sha256_of

SPEC = synthetic_feature_service(20)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    return train_synthetic(tmp_path_factory.mktemp("art"), "lightgbm", n_estimators=20)


@pytest.fixture
def artifact(trained: TrainResult, tmp_path: Path) -> Path:
    """A fresh copy of the trained artifact (every variant) that each test may damage."""
    for p in (*trained.variant_paths.values(), trained.sidecar_path):
        shutil.copy(p, tmp_path / p.name)
    return tmp_path / trained.onnx_path.name


def _resign(onnx_path: Path, data: bytes, external: dict[str, str] | None = None) -> None:
    """Write new model bytes and a sidecar sha that matches them (a well-formed forgery)."""
    onnx_path.write_bytes(data)
    sidecar = onnx_path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    meta["onnx_sha256"] = sha256_of(data)
    if external is not None:
        meta["external_data"] = external
    sidecar.write_text(json.dumps(meta))


def test_good_artifact_loads(artifact: Path) -> None:
    loaded = load_artifact(artifact, SPEC)
    assert loaded.metadata.model_id == "fraud_lightgbm-1"
    assert loaded.metadata.feature_names == SPEC.names
    assert not loaded.has_external_data


def test_bad_sha_is_refused_naming_file_expected_and_found(artifact: Path) -> None:
    data = bytearray(artifact.read_bytes())
    data[-10] ^= 0xFF
    artifact.write_bytes(bytes(data))
    with pytest.raises(ModelError) as info:
        load_artifact(artifact, SPEC)
    message = str(info.value)
    assert str(artifact) in message and "sha256 expected" in message
    assert sha256_of(bytes(data)) in message


def test_truncated_file_is_refused(artifact: Path) -> None:
    artifact.write_bytes(artifact.read_bytes()[:1000])
    with pytest.raises(ModelError, match="corrupt or was replaced"):
        load_artifact(artifact, SPEC)


def test_truncated_file_with_matching_sha_is_still_refused(artifact: Path) -> None:
    _resign(artifact, artifact.read_bytes()[:1000])
    with pytest.raises(ModelError, match=r"not a valid ONNX|no graph|does not belong"):
        load_artifact(artifact, SPEC)


def test_missing_or_corrupt_sidecar(artifact: Path) -> None:
    sidecar = artifact.with_suffix(".json")
    sidecar.write_text("{not json")
    with pytest.raises(ModelError, match="not readable JSON"):
        load_artifact(artifact, SPEC)
    sidecar.unlink()
    with pytest.raises(ModelError, match="does not exist"):
        load_artifact(artifact, SPEC)


def test_wrong_feature_order_is_refused(artifact: Path) -> None:
    features = list(SPEC.features)
    features[3], features[4] = features[4], features[3]
    with pytest.raises(ModelError) as info:
        load_artifact(artifact, FeatureServiceSpec(SPEC.name, tuple(features)))
    message = str(info.value)
    assert "position 3" in message
    assert f"expected {features[3].name!r}, found {SPEC.features[3].name!r}" in message


def test_wrong_feature_service_count_or_default_is_refused(artifact: Path) -> None:
    with pytest.raises(ModelError, match="'fraud_v2'"):
        load_artifact(artifact, FeatureServiceSpec("fraud_v2", SPEC.features))
    with pytest.raises(ModelError, match="expects 20 features"):
        load_artifact(artifact, FeatureServiceSpec(SPEC.name, SPEC.features[:-1]))
    changed = (replace(SPEC.features[0], default=42.0), *SPEC.features[1:])
    with pytest.raises(ModelError, match="missing-value default"):
        load_artifact(artifact, FeatureServiceSpec(SPEC.name, changed))


def test_onnx_from_another_model_is_refused_even_with_matching_sha(
    artifact: Path, tmp_path: Path
) -> None:
    other = train_synthetic(tmp_path / "other", "lightgbm", n_estimators=5, version="9")
    _resign(artifact, other.onnx_path.read_bytes())
    with pytest.raises(ModelError, match=r"version expected '1', found '9'"):
        load_artifact(artifact, SPEC)


def _with_external(artifact: Path, location: str) -> None:
    model = onnx.load_model_from_string(artifact.read_bytes())
    tensor = model.graph.initializer[0]
    for field in ("raw_data", "float_data", "int64_data", "int32_data", "double_data"):
        tensor.ClearField(field)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entries = {"location": location, "offset": "0", "length": "4"} if location else {}
    for key, value in entries.items():
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    _resign(artifact, model.SerializeToString())


@pytest.mark.parametrize(
    "location, message",
    [
        ("../../etc/passwd", "climbs out"),
        ("sub/../../secret.bin", "climbs out"),
        ("/etc/passwd", "absolute path"),
        ("C:\\Windows\\win.ini", "absolute path"),
        ("", "no location"),
    ],
)
def test_external_data_outside_model_dir_is_refused(
    artifact: Path, location: str, message: str
) -> None:
    _with_external(artifact, location)
    with pytest.raises(ModelError, match=message) as info:
        load_artifact(artifact, SPEC)
    assert str(artifact) in str(info.value)


def test_external_data_symlink_escape_is_refused(artifact: Path, tmp_path: Path) -> None:
    outside = tmp_path.parent / f"{tmp_path.name}-outside.bin"
    outside.write_bytes(b"\0" * 8)
    (artifact.parent / "weights.bin").symlink_to(outside)
    _with_external(artifact, "weights.bin")
    with pytest.raises(ModelError, match="outside"):
        load_artifact(artifact, SPEC)


def test_external_data_inside_model_dir_is_allowed_when_the_sidecar_hashes_it(
    artifact: Path,
) -> None:
    weights = b"\0" * 8
    (artifact.parent / "weights.bin").write_bytes(weights)
    _with_external(artifact, "weights.bin")
    with pytest.raises(ModelError, match=r"reads external data from \['weights.bin'\]"):
        load_artifact(artifact, SPEC)
    _resign(artifact, artifact.read_bytes(), {"weights.bin": sha256_of(weights)})
    loaded = load_artifact(artifact, SPEC)
    assert loaded.has_external_data
    assert loaded.external_data == {"weights.bin": weights}
