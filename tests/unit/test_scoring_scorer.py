"""Scorer: provider read-back, defaults for missing values, IO binding, model sets and swaps."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest

from models import synthetic_feature_service, synthetic_training_table, train_synthetic
from models.train import feature_matrix
from streams.errors import ConfigError, ModelError
from streams.scoring import Decision, ModelHolder, ModelSet, Scorer, select_providers
from streams.scoring.providers import CPU, CUDA, TENSORRT
from streams.scoring.registry import RegistryConfig
from streams.scoring.scorer import ProviderChoice, choose_providers, gpu_unavailable

SPEC = synthetic_feature_service(20)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    train_synthetic(root / "artifacts", "lightgbm", n_estimators=20)
    train_synthetic(root / "artifacts", "lightgbm", n_estimators=10, version="2")
    train_synthetic(root / "artifacts", "mlp", max_iter=5)
    return root


@pytest.fixture(scope="module")
def lgbm(models_dir: Path) -> Scorer:
    return Scorer.load(models_dir / "artifacts" / "fraud_lightgbm-1.onnx", SPEC, providers="cpu")


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return feature_matrix(synthetic_training_table(SPEC, 512, seed=3), SPEC)


@pytest.mark.parametrize(
    "setting, available, expected",
    [
        ("auto", [TENSORRT, CUDA, CPU], [CUDA, CPU]),
        ("auto", [CPU], [CPU]),
        ("cpu", [TENSORRT, CUDA, CPU], [CPU]),
        ("cuda", [CPU], [CPU]),
        ("tensorrt", [TENSORRT, CUDA, CPU], [TENSORRT, CUDA, CPU]),
        ("CUDA", [CUDA], [CUDA, CPU]),
    ],
)
def test_select_providers(setting: str, available: list[str], expected: list[str]) -> None:
    assert select_providers(setting, available) == expected


def test_unknown_provider_setting_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="STREAMSCORE_PROVIDERS='gpu'"):
        select_providers("gpu", [CPU])


def _no_gpu(provider: str) -> str | None:
    return "no CUDA driver (libcuda.so.1 not found)"


def _gpu_everywhere(provider: str) -> str | None:
    return None


def test_choose_providers_leaves_out_gpu_providers_that_cannot_initialise() -> None:
    everything = [TENSORRT, CUDA, CPU]
    none = choose_providers("auto", everything, _no_gpu)
    assert none.providers == (CPU,)
    assert none.skipped == f"{CUDA} left out: no CUDA driver (libcuda.so.1 not found)"
    assert not none.gpu_asked  # "auto" did not insist on a GPU
    assert choose_providers("auto", everything, _gpu_everywhere) == ProviderChoice((CUDA, CPU))
    asked = choose_providers("tensorrt", everything, _no_gpu)
    assert asked.providers == (CPU,) and asked.gpu_asked
    assert asked.skipped is not None and TENSORRT in asked.skipped and CUDA in asked.skipped
    # TensorRT missing, CUDA there: CUDA stays.
    trt_only = choose_providers(
        "tensorrt", everything, lambda p: "libnvinfer.so.10 not found" if p == TENSORRT else None
    )
    assert trt_only.providers == (CUDA, CPU)


def test_choose_providers_never_probes_for_cpu_or_providers_the_build_lacks() -> None:
    def probe(provider: str) -> str | None:
        raise AssertionError(f"probed {provider}")

    assert choose_providers("cpu", [TENSORRT, CUDA, CPU], probe) == ProviderChoice((CPU,))
    assert choose_providers("auto", [CPU], probe) == ProviderChoice((CPU,))


def test_probe_agrees_with_onnx_runtime_and_nothing_reaches_stderr(
    models_dir: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.INFO, logger="streams.scoring")
    capfd.readouterr()
    scorer = Scorer.load(models_dir / "artifacts" / "fraud_mlp-1.onnx", SPEC, providers="auto")
    err = capfd.readouterr().err
    # ONNX Runtime's red "Failed to load library libonnxruntime_providers_cuda.so" and its
    # "Failed to create CUDAExecutionProvider" warning are what a CPU host used to print.
    assert "onnxruntime" not in err and "ExecutionProvider" not in err, err
    reason = gpu_unavailable(CUDA) if CUDA in ort.get_available_providers() else "not built"
    if reason is None:  # a usable GPU: the probe must not be wrong about it
        assert scorer.provider == CUDA and scorer.on_gpu
    else:
        assert scorer.providers == (CPU,) and scorer.requested_providers == (CPU,)
        assert not scorer.on_gpu
    lines = [r for r in caplog.records if "fraud_mlp-1" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]  # one line per model
    assert f"provider in use {scorer.provider}" in lines[0].getMessage()
    if reason is not None and CUDA in ort.get_available_providers():
        assert reason in lines[0].getMessage() and lines[0].levelno == logging.INFO
    print(f"CUDA here: {reason or 'usable'}; running on {scorer.provider}")


def test_missing_mask_and_nan_take_declared_defaults(lgbm: Scorer, batch: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    missing = rng.random(batch.shape) < 0.2
    garbage = np.where(missing, np.float32(1e6), batch)
    expected = lgbm.score(np.where(missing, lgbm.defaults, batch))
    assert np.array_equal(lgbm.score(garbage, missing), expected)
    with_nan = np.where(missing, np.float32(np.nan), batch)
    assert np.array_equal(lgbm.score(with_nan), expected)
    # The caller's matrix is not modified.
    assert (garbage[missing] == 1e6).all()


def test_scores_are_float32_per_row_and_shapes_are_checked(lgbm: Scorer, batch: np.ndarray) -> None:
    scores = lgbm.score(batch)
    assert scores.dtype == np.float32 and scores.shape == (len(batch),)
    assert ((scores >= 0) & (scores <= 1)).all()
    assert lgbm.score(batch[:0]).shape == (0,)
    assert np.array_equal(lgbm.score(batch.astype(np.float64)), scores)
    with pytest.raises(ModelError, match=r"\[rows, 20\]"):
        lgbm.score(batch[:, :19])
    with pytest.raises(ModelError, match="mask shape"):
        lgbm.score(batch, np.zeros((len(batch), 19), dtype=bool))


def test_io_binding_path_gives_the_same_scores(models_dir: Path, batch: np.ndarray) -> None:
    path = models_dir / "artifacts" / "fraud_mlp-1.onnx"
    from streams.scoring import load_artifact

    plain = Scorer(load_artifact(path, SPEC), providers="cpu", io_binding=False)
    bound = Scorer(load_artifact(path, SPEC), providers="cpu", io_binding=True)
    assert np.array_equal(plain.score(batch), bound.score(batch))


def test_same_batch_same_decisions_across_provider_settings(
    models_dir: Path, batch: np.ndarray
) -> None:
    path = models_dir / "artifacts" / "fraud_lightgbm-1.onnx"
    a = Scorer.load(path, SPEC, providers="cpu")
    b = Scorer.load(path, SPEC, providers="auto")  # CUDA where it works, else CPU
    scores_a, decisions_a = a.decide(batch)
    scores_b, decisions_b = b.decide(batch)
    assert np.allclose(scores_a, scores_b, atol=1e-5)
    assert np.array_equal(decisions_a.decision, decisions_b.decision)
    assert np.array_equal(decisions_a.human_review, decisions_b.human_review)


def _settings(models_dir: Path) -> SimpleNamespace:
    return SimpleNamespace(
        models_dir=models_dir, providers="cpu", intra_op_threads=1, gpu_crossover_rows=None
    )


def test_model_set_shadow_scores_everything_canary_decides_its_share(
    models_dir: Path, batch: np.ndarray
) -> None:
    config = RegistryConfig.model_validate(
        {
            "champion": "fraud_lightgbm-1",
            "challengers": [
                {"model": "fraud_mlp-1", "role": "shadow"},
                {"model": "fraud_lightgbm-2", "role": "canary", "share": 0.25},
            ],
        }
    )
    models = ModelSet.from_registry(_settings(models_dir), SPEC, config)
    ids = [f"evt-{i}" for i in range(len(batch))]
    out = models.score(ids, batch)
    assert models.model_ids == ("fraud_lightgbm-1", "fraud_mlp-1", "fraud_lightgbm-2")
    assert set(out.challenger_scores) == {"fraud_mlp-1", "fraud_lightgbm-2"}
    routed = out.decided_by == 2
    assert 0.15 < routed.mean() < 0.35  # about a quarter of the traffic
    assert not (out.decided_by == 1).any()  # a shadow never decides
    canary_scores = out.challenger_scores["fraud_lightgbm-2"]
    assert np.array_equal(out.scores[routed], canary_scores[routed])
    assert np.array_equal(out.scores[~routed], models.champion.score(batch)[~routed])
    # Routing is a function of the event id alone.
    again = models.score(ids[::-1], batch[::-1])
    assert np.array_equal(again.decided_by[::-1], out.decided_by)
    assert set(out.decided_by_ids()) == {"fraud_lightgbm-1", "fraud_lightgbm-2"}
    assert set(out.decisions.decision.tolist()) <= {int(d) for d in Decision}


def test_failed_reload_keeps_the_old_model_serving(models_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(models_dir, tmp_path / "m")
    settings = _settings(tmp_path / "m")
    config = RegistryConfig(champion="fraud_lightgbm-1")
    holder = ModelHolder()
    with pytest.raises(ModelError, match="no model set"):
        _ = holder.current
    first = holder.swap(lambda: ModelSet.from_registry(settings, SPEC, config))
    # Corrupt the artifact on disk, then try to reload it: the swap must not happen.
    onnx_path = tmp_path / "m" / "artifacts" / "fraud_lightgbm-1.onnx"
    onnx_path.write_bytes(onnx_path.read_bytes()[:-100])
    with pytest.raises(ModelError, match="corrupt"):
        holder.swap(lambda: ModelSet.from_registry(settings, SPEC, config))
    assert holder.current is first
    x = np.zeros((4, 20), dtype=np.float32)
    assert holder.current.score(["a", "b", "c", "d"], x).scores.shape == (4,)
    # A good reload does swap.
    good = RegistryConfig(champion="fraud_mlp-1")
    second = holder.swap(lambda: ModelSet.from_registry(settings, SPEC, good))
    assert holder.current is second and second.champion.model_id == "fraud_mlp-1"


def test_model_set_without_champion_is_refused(models_dir: Path) -> None:
    with pytest.raises(ModelError, match="no champion yet"):
        ModelSet.from_registry(_settings(models_dir), SPEC, RegistryConfig())
