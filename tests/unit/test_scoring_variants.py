"""Model variants: the sidecar records and hashes each, the loader checks each, the Scorer
picks one per provider and, in auto mode with a GPU, routes each batch by its row count.

No GPU is needed: provider availability is injected (``choose_providers(available=...,
unavailable=...)``) and a two-session scorer is built from an injected SessionPlan whose
"large batch" session is on CPU, so routing is observable from the scores alone.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from models import synthetic_feature_service, synthetic_training_table, train_synthetic
from models.export import artifact_variants
from models.synthetic import variant_check
from models.train import TrainResult, feature_matrix
from streams.errors import ModelError
from streams.scoring import ModelMetadata, Scorer, load_artifact
from streams.scoring.artifact import sha256_of
from streams.scoring.providers import CPU, CUDA, TENSORRT
from streams.scoring.scorer import choose_providers, gpu_unavailable
from streams.scoring.variants import SessionPlan, plan_sessions, routes_to_gpu
from streams.settings import Settings

SPEC = synthetic_feature_service(20)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TrainResult]:
    root = tmp_path_factory.mktemp("variants")
    return {
        "lightgbm": train_synthetic(root, "lightgbm", spec=SPEC, n_estimators=20),
        "mlp": train_synthetic(root, "mlp", spec=SPEC, max_iter=5),
    }


@pytest.fixture
def artifact(trained: dict[str, TrainResult], tmp_path: Path) -> Path:
    """A fresh copy of the LightGBM artifact, both variants, that a test may damage."""
    result = trained["lightgbm"]
    for path in (*result.variant_paths.values(), result.sidecar_path):
        shutil.copy(path, tmp_path / path.name)
    return tmp_path / result.onnx_path.name


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return feature_matrix(synthetic_training_table(SPEC, 600, seed=4), SPEC)


def _sidecar(onnx_path: Path) -> dict[str, Any]:
    return dict(json.loads(onnx_path.with_suffix(".json").read_text()))


def _write_sidecar(onnx_path: Path, data: dict[str, Any]) -> None:
    onnx_path.with_suffix(".json").write_text(json.dumps(data))


# -- the sidecar -----------------------------------------------------------------------------


def test_sidecar_records_both_variants_and_their_hashes(trained: dict[str, TrainResult]) -> None:
    result = trained["lightgbm"]
    meta = ModelMetadata.read(result.sidecar_path)
    assert meta == result.metadata  # round trip
    assert meta.main_variant == "trees" and meta.variant_names == ("trees", "tensor")
    raw = _sidecar(result.onnx_path)
    tensor_path = result.onnx_path.with_name("fraud_lightgbm-1.tensor.onnx")
    assert result.variant_paths == {"trees": result.onnx_path, "tensor": tensor_path}
    assert raw["main_variant"] == "trees"
    assert raw["onnx_sha256"] == sha256_of(result.onnx_path.read_bytes())
    assert raw["variants"] == {
        "tensor": {"file": tensor_path.name, "sha256": sha256_of(tensor_path.read_bytes())}
    }
    files = meta.variant_files()
    assert list(files) == ["trees", "tensor"]
    assert files["trees"].sha256 == meta.onnx_sha256
    card = result.card_path.read_text()
    assert "variant `trees`" in card and files["tensor"].sha256 in card


def test_mlp_has_one_variant(trained: dict[str, TrainResult]) -> None:
    result = trained["mlp"]
    raw = _sidecar(result.onnx_path)
    assert raw["main_variant"] == "default" and raw["variants"] == {}
    assert result.metadata.variant_names == ("default",)
    assert list(result.variant_paths) == ["default"]
    assert not list(result.onnx_path.parent.glob("fraud_mlp-1.*.onnx"))


def test_old_sidecar_without_variants_loads_as_one_default_variant(
    artifact: Path, batch: np.ndarray
) -> None:
    """As written before variants: no streamscore.variant in the ONNX metadata, no
    main_variant or variants in the sidecar, no tensor file."""
    model = onnx.load_model_from_string(artifact.read_bytes())
    kept = [p for p in model.metadata_props if p.key != "streamscore.variant"]
    assert len(kept) == len(model.metadata_props) - 1
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    artifact.write_bytes(model.SerializeToString())
    artifact.with_name("fraud_lightgbm-1.tensor.onnx").unlink()
    data = _sidecar(artifact)
    del data["main_variant"], data["variants"]
    data["onnx_sha256"] = sha256_of(artifact.read_bytes())
    _write_sidecar(artifact, data)
    loaded = load_artifact(artifact, SPEC)
    assert loaded.variant == "default" and loaded.metadata.variant_names == ("default",)
    assert dict(loaded.variants) == {}
    # Pinned to its only variant, or on a GPU plan: the main file, never the tensor file.
    plan = plan_sessions(loaded.metadata, "cuda", (CUDA, CPU))
    assert plan.variant == "default"
    scorer = Scorer(loaded, providers="cpu")
    assert scorer.variant == "default" and scorer.score(batch).shape == (len(batch),)


def test_every_variant_is_hashed_and_held_in_memory(artifact: Path) -> None:
    loaded = load_artifact(artifact, SPEC)
    tensor_path = artifact.with_name("fraud_lightgbm-1.tensor.onnx")
    assert loaded.variants["tensor"] == tensor_path.read_bytes()
    view = loaded.for_variant("tensor")
    assert view.path == tensor_path and view.variant == "tensor"
    assert view.model_bytes == tensor_path.read_bytes() and not view.has_external_data
    assert loaded.for_variant("trees") is loaded
    with pytest.raises(ModelError, match="has no variant 'gpu'; it has trees, tensor"):
        loaded.for_variant("gpu")
    assert artifact_variants(artifact) == [
        ("trees", artifact.read_bytes()),
        ("tensor", tensor_path.read_bytes()),
    ]


def test_tampered_tensor_variant_is_refused_naming_the_file(artifact: Path) -> None:
    tensor_path = artifact.with_name("fraud_lightgbm-1.tensor.onnx")
    data = bytearray(tensor_path.read_bytes())
    data[-20] ^= 0xFF
    tensor_path.write_bytes(bytes(data))
    with pytest.raises(ModelError) as info:
        load_artifact(artifact, SPEC)
    message = str(info.value)
    assert str(tensor_path) in message and "variant 'tensor'" in message
    assert "sha256 expected" in message and sha256_of(bytes(data)) in message
    # A CPU-only scorer would not run the tensor variant, but the artifact is one unit.
    with pytest.raises(ModelError, match="corrupt or was replaced"):
        Scorer.load(artifact, SPEC, providers="cpu")


def test_missing_tensor_variant_is_refused(artifact: Path) -> None:
    tensor_path = artifact.with_name("fraud_lightgbm-1.tensor.onnx")
    tensor_path.unlink()
    with pytest.raises(ModelError, match=r"tensor\.onnx \(variant 'tensor'.*does not exist"):
        load_artifact(artifact, SPEC)


def _resign_tensor(artifact: Path, data: bytes) -> None:
    artifact.with_name("fraud_lightgbm-1.tensor.onnx").write_bytes(data)
    sidecar = _sidecar(artifact)
    sidecar["variants"]["tensor"]["sha256"] = sha256_of(data)
    _write_sidecar(artifact, sidecar)


def test_tree_bytes_passed_off_as_the_tensor_variant_are_refused(artifact: Path) -> None:
    _resign_tensor(artifact, artifact.read_bytes())  # a well-formed forgery
    with pytest.raises(ModelError, match=r"variant expected 'tensor', found 'trees'"):
        load_artifact(artifact, SPEC)


def test_tensor_variant_of_another_model_is_refused(artifact: Path, tmp_path: Path) -> None:
    other = train_synthetic(tmp_path / "other", "lightgbm", spec=SPEC, n_estimators=5, version="9")
    _resign_tensor(artifact, other.variant_paths["tensor"].read_bytes())
    with pytest.raises(ModelError, match=r"version expected '1', found '9'"):
        load_artifact(artifact, SPEC)


@pytest.mark.parametrize(
    "variants, message",
    [
        ({"tensor": {"file": "../evil.onnx", "sha256": "0"}}, "names file '../evil.onnx'"),
        ({"../x": {"file": "x.onnx", "sha256": "0"}}, "not a lower-case identifier"),
        ({"trees": {"file": "fraud_lightgbm-1.onnx", "sha256": "0"}}, "is the main variant"),
        ({"tensor": {"file": "fraud_lightgbm-1.tensor.onnx"}}, "needs a 'file' and a 'sha256'"),
        (["tensor"], "must map each variant name"),
    ],
)
def test_malformed_variants_in_the_sidecar_are_refused(
    artifact: Path, variants: Any, message: str
) -> None:
    data = _sidecar(artifact)
    data["variants"] = variants
    _write_sidecar(artifact, data)
    with pytest.raises(ModelError, match=message) as info:
        load_artifact(artifact, SPEC)
    assert str(artifact.with_suffix(".json")) in str(info.value)


# -- choosing a variant per provider ---------------------------------------------------------


def _gpu_ok(provider: str) -> str | None:
    return None


def _no_gpu(provider: str) -> str | None:
    return "no CUDA driver (libcuda.so.1 not found)"


@pytest.mark.parametrize(
    "setting, gpu, crossover_rows, expected",
    [
        # No usable GPU, whatever the setting: one CPU session on the tree variant.
        ("auto", False, 4096, SessionPlan("trees", (CPU,), "trees")),
        ("cuda", False, None, SessionPlan("trees", (CPU,), "trees")),
        ("cpu", True, 4096, SessionPlan("trees", (CPU,), "trees")),
        # cuda / tensorrt insist: the tensor variant on the GPU for every batch.
        ("cuda", True, 4096, SessionPlan("tensor", (CUDA, CPU), "trees")),
        ("tensorrt", True, None, SessionPlan("tensor", (TENSORRT, CUDA, CPU), "trees")),
    ],
)
def test_the_variant_follows_the_provider(
    trained: dict[str, TrainResult],
    setting: str,
    gpu: bool,
    crossover_rows: int | None,
    expected: SessionPlan,
) -> None:
    choice = choose_providers(setting, [TENSORRT, CUDA, CPU], _gpu_ok if gpu else _no_gpu)
    plan = plan_sessions(
        trained["lightgbm"].metadata, setting, choice.providers, gpu_crossover_rows=crossover_rows
    )
    assert plan == expected
    assert plan.gpu_from_rows is None and plan.on_gpu == (expected.providers[0] != CPU)


def test_auto_with_a_gpu_routes_by_crossover_or_stays_on_cpu(
    trained: dict[str, TrainResult],
) -> None:
    meta = trained["lightgbm"].metadata
    providers = choose_providers("auto", [CUDA, CPU], _gpu_ok).providers
    assert providers == (CUDA, CPU)
    split = plan_sessions(meta, "auto", providers, gpu_crossover_rows=4096)
    assert (split.variant, split.providers, split.cpu_variant) == ("tensor", (CUDA, CPU), "trees")
    assert split.gpu_from_rows == 4096 and split.on_gpu
    assert split.note is not None and "4096+ rows run variant tensor" in split.note
    # Nothing measured: auto never risks being slower than CPU-only.
    unset = plan_sessions(meta, "auto", providers)
    assert (unset.variant, unset.providers, unset.gpu_from_rows) == ("trees", (CPU,), None)
    assert unset.note is not None and "STREAMSCORE_GPU_CROSSOVER_ROWS is unset" in unset.note
    # The MLP has one variant: the same file on both sides.
    mlp = plan_sessions(trained["mlp"].metadata, "auto", providers, gpu_crossover_rows=256)
    assert (mlp.variant, mlp.cpu_variant, mlp.gpu_from_rows) == ("default", "default", 256)


def test_a_pinned_variant_runs_as_asked_and_an_unknown_one_is_refused(
    trained: dict[str, TrainResult],
) -> None:
    meta = trained["lightgbm"].metadata
    pinned = plan_sessions(meta, "auto", (CPU,), variant="tensor")
    assert (pinned.variant, pinned.providers, pinned.cpu_variant) == ("tensor", (CPU,), "tensor")
    with pytest.raises(ModelError, match="has no variant 'fp16'; it has trees, tensor"):
        plan_sessions(meta, "auto", (CPU,), variant="fp16")


@pytest.mark.parametrize(
    "rows, gpu_from_rows, expected",
    [(4095, 4096, False), (4096, 4096, True), (100_000, 4096, True), (100_000, None, False)],
)
def test_routes_to_gpu(rows: int, gpu_from_rows: int | None, expected: bool) -> None:
    assert routes_to_gpu(rows, gpu_from_rows) is expected


# -- the scorer -------------------------------------------------------------------------------


def test_two_session_scorer_sends_small_batches_to_cpu_and_large_ones_to_the_other(
    artifact: Path, batch: np.ndarray
) -> None:
    """The "GPU" session here is the tensor variant on CPU: which session scored a batch
    shows in the scores' last bits (the two graphs round differently)."""
    loaded = load_artifact(artifact, SPEC)
    trees = Scorer(loaded, providers="cpu")
    tensor = Scorer(loaded, providers="cpu", variant="tensor")
    assert not np.array_equal(trees.score(batch), tensor.score(batch))  # tellable apart
    plan = SessionPlan("tensor", (CPU,), "trees", gpu_from_rows=100)
    routed = Scorer(loaded, providers="auto", plan=plan)
    assert routed.variant == "tensor" and routed.gpu_from_rows == 100
    for rows in (1, 64, 99):
        assert np.array_equal(routed.score(batch[:rows]), trees.score(batch[:rows])), rows
    for rows in (100, 101, len(batch)):
        assert np.array_equal(routed.score(batch[:rows]), tensor.score(batch[:rows])), rows
    assert routed.score(batch[:0]).shape == (0,)
    # Either way the scores agree with each other (parity), and defaults are imputed.
    assert np.abs(routed.score(batch) - trees.score(batch)).max() <= 1e-5
    holes = np.zeros(batch.shape, dtype=bool)
    holes[:, 3] = True
    assert np.array_equal(
        routed.score(batch[:50], holes[:50]),
        trees.score(np.where(holes, trees.defaults, batch))[:50],
    )


def test_cpu_only_scorer_is_one_session_on_the_tree_variant(
    artifact: Path, batch: np.ndarray
) -> None:
    for setting in ("auto", "cpu"):
        scorer = Scorer.load(artifact, SPEC, providers=setting, gpu_crossover_rows=256)
        if setting == "auto" and gpu_unavailable(CUDA) is None and scorer.on_gpu:
            assert scorer.variant == "tensor" and scorer.gpu_from_rows == 256  # a real GPU
            continue
        assert scorer.variant == "trees" and scorer.gpu_from_rows is None
        assert scorer._cpu_session is None
        assert scorer.session.get_providers() == [CPU]


def test_gpu_session_that_lands_on_cpu_reopens_on_the_cpu_variant(
    artifact: Path, batch: np.ndarray
) -> None:
    """ONNX Runtime may put a CUDA session on CPU (no usable driver or libraries): the
    tensor variant would then run on CPU, several times slower than the trees."""
    plan = SessionPlan("tensor", (CUDA, CPU), "trees", gpu_from_rows=100)
    scorer = Scorer(load_artifact(artifact, SPEC), providers="auto", plan=plan)
    if CUDA in ort.get_available_providers() and gpu_unavailable(CUDA) is None:
        # A usable GPU: no fallback, the plan runs as made.
        assert scorer.variant == "tensor" and scorer.gpu_from_rows == 100 and scorer.on_gpu
        return
    assert scorer.variant == "trees" and scorer.gpu_from_rows is None
    assert scorer.session.get_providers() == [CPU] and not scorer.on_gpu
    trees = Scorer.load(artifact, SPEC, providers="cpu")
    assert np.array_equal(scorer.score(batch), trees.score(batch))


# -- the setting and the GPU-check helper ----------------------------------------------------


def test_crossover_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STREAMSCORE_GPU_CROSSOVER_ROWS", raising=False)
    assert Settings().gpu_crossover_rows is None
    monkeypatch.setenv("STREAMSCORE_GPU_CROSSOVER_ROWS", "4096")
    settings = Settings()
    assert settings.gpu_crossover_rows == 4096
    assert settings.to_env()["STREAMSCORE_GPU_CROSSOVER_ROWS"] == "4096"  # reaches workers
    monkeypatch.setenv("STREAMSCORE_GPU_CROSSOVER_ROWS", "0")
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        Settings()


def test_variant_check_gives_every_variant_and_the_native_reference() -> None:
    check = variant_check("lightgbm", rows=2000, n_estimators=10)
    assert [name for name, _ in check.variants] == ["trees", "tensor"]
    assert check.x.dtype == np.float32 and not np.isnan(check.x).any()
    assert check.reference.shape == (len(check.x),) and check.tolerance == 1e-5
    for name, data in check.variants:
        session = ort.InferenceSession(data, providers=[CPU])
        scores = session.run(["score"], {"features": check.x})[0]
        assert np.abs(scores - check.reference).max() <= check.tolerance, name
