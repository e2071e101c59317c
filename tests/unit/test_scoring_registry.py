"""registry.yaml: roles, promote/rollback history, atomic rewrite, canary routing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streams.errors import ConfigError
from streams.scoring.modelset import traffic_buckets
from streams.scoring.registry import (
    RegistryConfig,
    artifact_path,
    edit_registry,
    load_registry,
    promote,
    retire,
    rollback,
    save_registry,
)

ROOT = Path(__file__).resolve().parents[2]


def test_committed_registry_is_valid_and_has_no_champion_yet() -> None:
    config = load_registry(ROOT / "models" / "registry.yaml")
    assert config.champion is None
    assert config.challengers == ()


def test_promote_keeps_history_and_rollback_restores_previous(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    with edit_registry(path) as box:
        box[0] = promote(box[0], "fraud_lgbm-1")
    with edit_registry(path) as box:
        box[0] = promote(box[0], "fraud_lgbm-2")
        box[0] = promote(box[0], "fraud_mlp-1", role="shadow")
        box[0] = promote(box[0], "fraud_lgbm-3", role="canary", share=0.1)
    config = load_registry(path)
    assert config.champion == "fraud_lgbm-2"
    assert config.history == ("fraud_lgbm-1",)
    assert [(c.model, c.role, c.share) for c in config.challengers] == [
        ("fraud_mlp-1", "shadow", 0.0),
        ("fraud_lgbm-3", "canary", 0.1),
    ]
    # Promoting the canary makes it champion and takes it out of the challengers.
    config = promote(config, "fraud_lgbm-3")
    assert config.champion == "fraud_lgbm-3"
    assert [c.model for c in config.challengers] == ["fraud_mlp-1"]
    config = rollback(config)
    assert config.champion == "fraud_lgbm-2" and config.history == ("fraud_lgbm-1",)
    config = rollback(config)
    assert config.champion == "fraud_lgbm-1" and config.history == ()
    with pytest.raises(ConfigError, match="nothing to roll back"):
        rollback(config)


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    save_registry(path, RegistryConfig(champion="m-1"))
    text = path.read_text()
    assert text.startswith("# Model registry")
    assert load_registry(path).champion == "m-1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["registry.yaml"]


@pytest.mark.parametrize(
    "body, message",
    [
        ("champion: m-1\nchallengers: [{model: m-2, role: canary}]\n", "share"),
        ("champion: m-1\nchallengers: [{model: m-2, role: shadow, share: 0.5}]\n", "no share"),
        ("champion: m-1\nchalengers: []\n", "chalengers"),
        ("champion: ../../etc/passwd-1\n", "model id"),
        ("champion: m-1\nchallengers: [{model: m-1, role: shadow}]\n", "both champion"),
        (
            "champion: m-1\nchallengers: [{model: a-1, role: canary, share: 0.6},"
            " {model: b-1, role: canary, share: 0.6}]\n",
            "add up",
        ),
        ("challengers: [{model: m-2, role: shadow}]\n", "need a champion"),
        ("champion: [unclosed\n", "invalid"),
    ],
)
def test_invalid_registry_is_a_config_error(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "registry.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message):
        load_registry(path)


def test_promote_errors_and_retire(tmp_path: Path) -> None:
    config = promote(RegistryConfig(), "m-1")
    with pytest.raises(ConfigError, match="already the champion"):
        promote(config, "m-1")
    with pytest.raises(ConfigError, match="is the champion"):
        promote(config, "m-1", role="shadow")
    config = promote(config, "m-2", role="shadow")
    assert retire(config, "m-2").challengers == ()
    with pytest.raises(ConfigError, match="not a challenger"):
        retire(config, "m-3")


def test_artifact_path_cannot_escape(tmp_path: Path) -> None:
    assert artifact_path(tmp_path, "m-1") == tmp_path / "artifacts" / "m-1.onnx"
    with pytest.raises(ValueError, match="model id"):
        artifact_path(tmp_path, "../x-1")


def test_traffic_buckets_are_deterministic_and_uniform() -> None:
    ids = [f"evt-{i}" for i in range(20_000)]
    a, b = traffic_buckets(ids), traffic_buckets(list(ids))
    assert np.array_equal(a, b)
    assert ((a >= 0) & (a < 1)).all()
    assert abs((a < 0.05).mean() - 0.05) < 0.01
