"""``streamscore model`` commands against a temporary models directory."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from click.testing import CliRunner

from models import synthetic_feature_service, train_synthetic
from streams.cli.model import model
from streams.features.spec import FeatureServiceSpec
from streams.scoring.registry import load_registry
from streams.settings import Settings


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
    # No ClickHouse answers there: promote must refuse a new champion without --force.
    settings = Settings(
        models_dir=root, providers="cpu", clickhouse_dsn="http://127.0.0.1:9",
        kafka_bootstrap="127.0.0.1:9",  # promote/rollback broadcast: never a real broker
    )  # fmt: skip
    spec = _serving_spec(settings)
    for kind, version in (("lightgbm", "1"), ("lightgbm", "2")):
        train_synthetic(root / "artifacts", kind, spec=spec, version=version, n_estimators=5)
    return settings


def _run(settings: Settings, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(model, list(args), obj=settings, catch_exceptions=False)
    return result.exit_code, result.output


def test_verify_without_champion_says_so(tmp_path: Path) -> None:
    code, out = _run(Settings(models_dir=tmp_path), "verify")
    assert code == 0 and "no champion yet" in out


def test_promote_list_verify_rollback(settings: Settings) -> None:
    path = settings.models_dir / "registry.yaml"
    assert _run(settings, "promote", "fraud_lightgbm-1")[0] == 0  # first: nothing to compare
    code, out = _run(settings, "promote", "fraud_lightgbm-2")
    assert code == 1 and "cannot read the comparison" in out and "--force" in out
    assert load_registry(path).champion == "fraud_lightgbm-1"
    code, out = _run(settings, "promote", "fraud_lightgbm-2", "--force")
    assert code == 0 and "--force" in out
    assert load_registry(path).champion == "fraud_lightgbm-2"
    code, out = _run(settings, "list")
    assert code == 0 and "champion" in out and "fraud_lightgbm-1" in out
    code, out = _run(settings, "verify")
    assert code == 0 and "ok fraud_lightgbm-2 (champion) on CPUExecutionProvider" in out
    code, out = _run(settings, "rollback")
    assert code == 0 and load_registry(path).champion == "fraud_lightgbm-1"
    assert load_registry(path).history == ()


def test_promote_refuses_a_corrupt_artifact(settings: Settings, tmp_path: Path) -> None:
    from streams.errors import ModelError

    onnx_path = settings.models_dir / "artifacts" / "fraud_lightgbm-2.onnx"
    good = onnx_path.read_bytes()
    before = load_registry(settings.models_dir / "registry.yaml")
    onnx_path.write_bytes(good[: len(good) // 2])
    try:
        with pytest.raises(ModelError, match="corrupt"):
            _run(settings, "promote", "fraud_lightgbm-2", "--shadow")
    finally:
        onnx_path.write_bytes(good)
    assert load_registry(settings.models_dir / "registry.yaml") == before
