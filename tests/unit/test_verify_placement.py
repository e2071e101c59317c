"""``streamscore model verify --placement [--json]`` on this CPU machine: every node of
every registered model on CPU, and cuda_capable per variant decided from the graph."""

from __future__ import annotations

import importlib
import json

import pytest
from click.testing import CliRunner

from models import synthetic_feature_service, train_synthetic
from streams.cli.model import model
from streams.features.spec import FeatureServiceSpec
from streams.scoring.providers import CPU
from streams.scoring.registry import edit_registry, promote, registry_path
from streams.settings import Settings

TREES = "ai.onnx.ml:TreeEnsembleClassifier"


def _serving_spec(settings: Settings) -> FeatureServiceSpec:
    """The real feature service when the feature side is built, else a synthetic one."""
    try:
        registry = importlib.import_module("streams.features.registry")
        spec: FeatureServiceSpec = registry.load_feature_service(settings, settings.feature_service)
        return spec
    except (ModuleNotFoundError, AttributeError):
        return synthetic_feature_service(20)


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("models")
    # "auto", as a worker: on this machine the CUDA provider is left out (no driver).
    settings = Settings(models_dir=root, providers="auto")
    spec = _serving_spec(settings)
    train_synthetic(root / "artifacts", "lightgbm", spec=spec, n_estimators=5)
    train_synthetic(root / "artifacts", "mlp", spec=spec, max_iter=3)
    with edit_registry(registry_path(root)) as box:
        box[0] = promote(box[0], "fraud_lightgbm-1", role="champion")
        box[0] = promote(box[0], "fraud_mlp-1", role="shadow")
    return settings


def _verify(settings: Settings, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(model, ["verify", *args], obj=settings, catch_exceptions=False)
    return result.exit_code, result.stdout


def test_verify_placement_json_says_every_node_runs_on_cpu(settings: Settings) -> None:
    code, out = _verify(settings, "--placement", "--json")
    assert code == 0
    report = json.loads(out)  # stdout is the JSON alone
    assert set(report) == {"fraud_lightgbm-1", "fraud_mlp-1"}
    trees = report["fraud_lightgbm-1"]
    assert trees["role"] == "champion" and trees["ok"]
    assert trees["providers"] == [CPU] and trees["provider"] == CPU
    assert list(trees["nodes_by_provider"]) == [CPU] and trees["nodes_by_provider"][CPU] > 0
    assert trees["compute_share_by_provider"] == {CPU: 1.0}
    assert trees["cuda_capable"] is False and trees["without_cuda_kernel"] == [TREES]
    # Each variant's graph on its own: the tree export needs the CPU-only TreeEnsemble, the
    # tensor export is standard operators with CUDA kernels.
    assert "tensor" in trees["variants"]
    for name, variant in trees["variants"].items():
        assert variant["cuda_capable"] is (name == "tensor"), (name, variant)
    assert trees["variants"][trees["variant"]]["without_cuda_kernel"] == [TREES]
    mlp = report["fraud_mlp-1"]
    assert mlp["role"] == "shadow" and mlp["providers"] == [CPU]
    assert mlp["cuda_capable"] is True and mlp["without_cuda_kernel"] == []


def test_verify_placement_prints_nodes_and_capability(settings: Settings) -> None:
    code, out = _verify(settings, "--placement")
    assert code == 0
    assert f"ok fraud_lightgbm-1 (champion) on {CPU}" in out
    assert f"on {CPU} (100% of node time)" in out
    assert f"trees no (no CUDA kernel for {TREES})" in out and "tensor yes" in out
    code, plain = _verify(settings)
    assert (
        code == 0 and "cuda_capable" not in plain and f"ok fraud_mlp-1 (shadow) on {CPU}" in plain
    )


def test_verify_json_reports_a_model_that_fails_to_load(settings: Settings) -> None:
    from streams.errors import ModelError

    onnx_path = settings.models_dir / "artifacts" / "fraud_mlp-1.onnx"
    good = onnx_path.read_bytes()
    onnx_path.write_bytes(good[:100])
    try:
        runner = CliRunner()
        result = runner.invoke(model, ["verify", "--json"], obj=settings)
    finally:
        onnx_path.write_bytes(good)
    assert isinstance(result.exception, ModelError)
    report = json.loads(result.stdout)
    assert report["fraud_mlp-1"]["ok"] is False and "sha256" in report["fraud_mlp-1"]["error"]
    assert report["fraud_lightgbm-1"]["ok"] is True
