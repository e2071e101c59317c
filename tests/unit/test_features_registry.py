"""The registry and the Feast repo follow the dbt YAML: one source of truth for feature metadata."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from streams.features.dbt_meta import load_marts
from streams.features.event import EVENT_FEATURES_V1
from streams.settings import Settings

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _dbt_meta(root: Path) -> dict[str, dict[str, object]]:
    meta: dict[str, dict[str, object]] = {}
    for path in sorted((root / "dbt_project" / "models" / "marts").glob("*.yml")):
        for model in yaml.safe_load(path.read_text())["models"]:
            entity = model["config"]["meta"]["feast_entity"]
            # a feature column inherits the model's owner/sla/drift_threshold/default
            inherited = {
                key: value
                for key, value in model["config"]["meta"].items()
                if key in ("owner", "sla", "drift_threshold", "default")
            }
            for column in model["columns"]:
                if column["name"] in (f"{entity}_id", "feature_date"):
                    continue
                own = column.get("config", {}).get("meta", {})
                meta[f"{entity}__{column['name']}"] = {**inherited, **own}
    return meta


def test_registry_tags_match_dbt_meta(root: Path, tmp_path: Path) -> None:
    from streams.features.registry import load_feature_service

    spec = load_feature_service(Settings(home=tmp_path), "fraud_v1")
    expected = _dbt_meta(root)
    entity = [f for f in spec.features if not f.name.startswith("event__")]
    assert [f.name for f in entity] == list(expected)  # same features, same order
    for feature in entity:
        meta = expected[feature.name]
        assert (feature.owner, feature.sla, feature.drift_threshold, feature.default) == (
            meta["owner"], meta["sla"], meta["drift_threshold"], meta.get("default", 0.0),
        ), feature.name  # fmt: skip
    assert spec.features[len(entity) :] == EVENT_FEATURES_V1
    assert len(spec.names) == len(set(spec.names)) > 120


def test_feast_views_carry_the_dbt_tags(root: Path) -> None:
    from streams.features.store import load_definitions

    definitions = load_definitions(root / "features")
    expected = _dbt_meta(root)
    for view in definitions.feature_views:
        for field in view.features:
            meta = expected[f"{view.name}__{field.name}"]
            assert field.tags["owner"] == meta["owner"]
            assert float(field.tags["drift_threshold"]) == meta["drift_threshold"]
    service = definitions.feature_service("fraud_v1")
    assert [p.name for p in service.feature_view_projections] == ["account", "card", "merchant"]


def test_every_feature_column_declares_owner_sla_and_drift(root: Path) -> None:
    marts = load_marts(root / "dbt_project")
    assert sorted(marts) == ["account", "card", "merchant"]
    assert sum(len(m.features) for m in marts.values()) >= 120
    assert all(
        c.owner and c.sla and 0 <= c.drift_threshold < 1 for m in marts.values() for c in m.features
    )


def test_a_feature_without_meta_is_an_error(tmp_path: Path) -> None:
    from streams.errors import ConfigError

    marts = tmp_path / "models" / "marts"
    marts.mkdir(parents=True)
    (marts / "x.yml").write_text(
        "models:\n  - name: x_features\n    config: {meta: {feast_entity: x}}\n"
        "    columns:\n      - name: txn_count_1d\n        config: {meta: {owner: me}}\n"
    )
    with pytest.raises(ConfigError, match="lacks meta sla, drift_threshold"):
        load_marts(tmp_path)
