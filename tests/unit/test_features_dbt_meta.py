"""Hoisting column ``meta`` to the model level changes no feature's resolved metadata.

``RESOLVED`` was captured from ``load_marts`` on the marts YAML *before* owner, sla,
drift_threshold and default moved to the model's ``meta`` (every column then spelled all
four out). Each column now inherits the model's values unless it overrides them; this file
proves the resolved metadata, and the tags the Feast views carry, are exactly as before.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.errors import ConfigError
from streams.features.dbt_meta import load_marts

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

FRAUD = "fraud-features@streamscore"
RISK = "merchant-risk@streamscore"
SLA = "daily by 03:00 UTC"

# entity -> (model, ttl_days); entity -> (name, data_type, owner, sla, drift_threshold, default)
MARTS = {
    "account": ("account_features", 2),
    "card": ("card_features", 2),
    "merchant": ("merchant_features", 2),
}
RESOLVED: dict[str, tuple[tuple[str, str, str, str, float, float], ...]] = {
    "account": (
        ("txn_count_1d", "bigint", FRAUD, SLA, 0.3, 0.0),
        ("amount_sum_1d", "double", FRAUD, SLA, 0.3, 0.0),
        ("amount_mean_1d", "double", FRAUD, SLA, 0.3, 0.0),
        ("amount_std_1d", "double", FRAUD, SLA, 0.3, 0.0),
        ("amount_max_1d", "double", FRAUD, SLA, 0.3, 0.0),
        ("distinct_merchants_1d", "bigint", FRAUD, SLA, 0.3, 0.0),
        ("distinct_countries_1d", "bigint", FRAUD, SLA, 0.3, 0.0),
        ("distinct_devices_1d", "bigint", FRAUD, SLA, 0.3, 0.0),
        ("night_ratio_1d", "double", FRAUD, SLA, 0.1, 0.0),
        ("foreign_ratio_1d", "double", FRAUD, SLA, 0.1, 0.0),
        ("cnp_ratio_1d", "double", FRAUD, SLA, 0.1, 0.0),
        ("ecommerce_ratio_1d", "double", FRAUD, SLA, 0.1, 0.0),
        ("txn_count_7d", "bigint", FRAUD, SLA, 0.2, 0.0),
        ("amount_sum_7d", "double", FRAUD, SLA, 0.2, 0.0),
        ("amount_mean_7d", "double", FRAUD, SLA, 0.2, 0.0),
        ("amount_std_7d", "double", FRAUD, SLA, 0.2, 0.0),
        ("amount_max_7d", "double", FRAUD, SLA, 0.2, 0.0),
        ("distinct_merchants_7d", "bigint", FRAUD, SLA, 0.2, 0.0),
        ("distinct_countries_7d", "bigint", FRAUD, SLA, 0.2, 0.0),
        ("distinct_devices_7d", "bigint", FRAUD, SLA, 0.2, 0.0),
        ("night_ratio_7d", "double", FRAUD, SLA, 0.1, 0.0),
        ("foreign_ratio_7d", "double", FRAUD, SLA, 0.1, 0.0),
        ("cnp_ratio_7d", "double", FRAUD, SLA, 0.1, 0.0),
        ("ecommerce_ratio_7d", "double", FRAUD, SLA, 0.1, 0.0),
        ("txn_count_30d", "bigint", FRAUD, SLA, 0.2, 0.0),
        ("amount_sum_30d", "double", FRAUD, SLA, 0.2, 0.0),
        ("amount_mean_30d", "double", FRAUD, SLA, 0.2, 0.0),
        ("amount_std_30d", "double", FRAUD, SLA, 0.2, 0.0),
        ("amount_max_30d", "double", FRAUD, SLA, 0.2, 0.0),
        ("distinct_merchants_30d", "bigint", FRAUD, SLA, 0.2, 0.0),
        ("distinct_countries_30d", "bigint", FRAUD, SLA, 0.2, 0.0),
        ("distinct_devices_30d", "bigint", FRAUD, SLA, 0.2, 0.0),
        ("night_ratio_30d", "double", FRAUD, SLA, 0.1, 0.0),
        ("foreign_ratio_30d", "double", FRAUD, SLA, 0.1, 0.0),
        ("cnp_ratio_30d", "double", FRAUD, SLA, 0.1, 0.0),
        ("ecommerce_ratio_30d", "double", FRAUD, SLA, 0.1, 0.0),
        ("txn_count_90d", "bigint", FRAUD, SLA, 0.2, 0.0),
        ("amount_sum_90d", "double", FRAUD, SLA, 0.2, 0.0),
        ("amount_mean_90d", "double", FRAUD, SLA, 0.2, 0.0),
        ("amount_std_90d", "double", FRAUD, SLA, 0.2, 0.0),
        ("amount_max_90d", "double", FRAUD, SLA, 0.2, 0.0),
        ("distinct_merchants_90d", "bigint", FRAUD, SLA, 0.2, 0.0),
        ("distinct_countries_90d", "bigint", FRAUD, SLA, 0.2, 0.0),
        ("distinct_devices_90d", "bigint", FRAUD, SLA, 0.2, 0.0),
        ("night_ratio_90d", "double", FRAUD, SLA, 0.1, 0.0),
        ("foreign_ratio_90d", "double", FRAUD, SLA, 0.1, 0.0),
        ("cnp_ratio_90d", "double", FRAUD, SLA, 0.1, 0.0),
        ("ecommerce_ratio_90d", "double", FRAUD, SLA, 0.1, 0.0),
        ("distinct_cards_30d", "bigint", FRAUD, SLA, 0.2, 0.0),
        ("distinct_cards_90d", "bigint", FRAUD, SLA, 0.2, 0.0),
        ("active_days_7d", "bigint", FRAUD, SLA, 0.2, 0.0),
        ("active_days_30d", "bigint", FRAUD, SLA, 0.2, 0.0),
        ("active_days_90d", "bigint", FRAUD, SLA, 0.2, 0.0),
        ("fraud_labels_90d", "bigint", FRAUD, SLA, 0.2, 0.0),
        ("days_since_first_seen", "double", FRAUD, SLA, 0.0, 0.0),
        ("days_since_last_txn", "double", FRAUD, SLA, 0.2, 0.0),
        ("velocity_count_1d_vs_30d", "double", FRAUD, SLA, 0.2, 0.0),
        ("velocity_amount_7d_vs_90d", "double", FRAUD, SLA, 0.2, 0.0),
    ),
    "card": (
        ("txn_count_1d", "bigint", FRAUD, SLA, 0.3, 0.0),
        ("amount_sum_1d", "double", FRAUD, SLA, 0.3, 0.0),
        ("amount_mean_1d", "double", FRAUD, SLA, 0.3, 0.0),
        ("amount_std_1d", "double", FRAUD, SLA, 0.3, 0.0),
        ("amount_max_1d", "double", FRAUD, SLA, 0.3, 0.0),
        ("distinct_merchants_1d", "bigint", FRAUD, SLA, 0.3, 0.0),
        ("distinct_countries_1d", "bigint", FRAUD, SLA, 0.3, 0.0),
        ("night_ratio_1d", "double", FRAUD, SLA, 0.1, 0.0),
        ("foreign_ratio_1d", "double", FRAUD, SLA, 0.1, 0.0),
        ("cnp_ratio_1d", "double", FRAUD, SLA, 0.1, 0.0),
        ("txn_count_7d", "bigint", FRAUD, SLA, 0.2, 0.0),
        ("amount_sum_7d", "double", FRAUD, SLA, 0.2, 0.0),
        ("amount_mean_7d", "double", FRAUD, SLA, 0.2, 0.0),
        ("amount_std_7d", "double", FRAUD, SLA, 0.2, 0.0),
        ("amount_max_7d", "double", FRAUD, SLA, 0.2, 0.0),
        ("distinct_merchants_7d", "bigint", FRAUD, SLA, 0.2, 0.0),
        ("distinct_countries_7d", "bigint", FRAUD, SLA, 0.2, 0.0),
        ("night_ratio_7d", "double", FRAUD, SLA, 0.1, 0.0),
        ("foreign_ratio_7d", "double", FRAUD, SLA, 0.1, 0.0),
        ("cnp_ratio_7d", "double", FRAUD, SLA, 0.1, 0.0),
        ("txn_count_30d", "bigint", FRAUD, SLA, 0.2, 0.0),
        ("amount_sum_30d", "double", FRAUD, SLA, 0.2, 0.0),
        ("amount_mean_30d", "double", FRAUD, SLA, 0.2, 0.0),
        ("amount_std_30d", "double", FRAUD, SLA, 0.2, 0.0),
        ("amount_max_30d", "double", FRAUD, SLA, 0.2, 0.0),
        ("distinct_merchants_30d", "bigint", FRAUD, SLA, 0.2, 0.0),
        ("distinct_countries_30d", "bigint", FRAUD, SLA, 0.2, 0.0),
        ("night_ratio_30d", "double", FRAUD, SLA, 0.1, 0.0),
        ("foreign_ratio_30d", "double", FRAUD, SLA, 0.1, 0.0),
        ("cnp_ratio_30d", "double", FRAUD, SLA, 0.1, 0.0),
        ("distinct_devices_30d", "bigint", FRAUD, SLA, 0.2, 0.0),
        ("days_since_first_seen", "double", FRAUD, SLA, 0.0, 0.0),
        ("days_since_last_txn", "double", FRAUD, SLA, 0.2, 0.0),
        ("velocity_count_1d_vs_30d", "double", FRAUD, SLA, 0.2, 0.0),
    ),
    "merchant": (
        ("txn_count_7d", "bigint", RISK, SLA, 0.2, 0.0),
        ("amount_sum_7d", "double", RISK, SLA, 0.2, 0.0),
        ("amount_mean_7d", "double", RISK, SLA, 0.2, 0.0),
        ("amount_std_7d", "double", RISK, SLA, 0.2, 0.0),
        ("amount_max_7d", "double", RISK, SLA, 0.2, 0.0),
        ("distinct_accounts_7d", "bigint", RISK, SLA, 0.2, 0.0),
        ("foreign_ratio_7d", "double", RISK, SLA, 0.1, 0.0),
        ("cnp_ratio_7d", "double", RISK, SLA, 0.1, 0.0),
        ("txn_count_30d", "bigint", RISK, SLA, 0.2, 0.0),
        ("amount_sum_30d", "double", RISK, SLA, 0.2, 0.0),
        ("amount_mean_30d", "double", RISK, SLA, 0.2, 0.0),
        ("amount_std_30d", "double", RISK, SLA, 0.2, 0.0),
        ("amount_max_30d", "double", RISK, SLA, 0.2, 0.0),
        ("distinct_accounts_30d", "bigint", RISK, SLA, 0.2, 0.0),
        ("foreign_ratio_30d", "double", RISK, SLA, 0.1, 0.0),
        ("cnp_ratio_30d", "double", RISK, SLA, 0.1, 0.0),
        ("txn_count_90d", "bigint", RISK, SLA, 0.2, 0.0),
        ("amount_sum_90d", "double", RISK, SLA, 0.2, 0.0),
        ("amount_mean_90d", "double", RISK, SLA, 0.2, 0.0),
        ("amount_std_90d", "double", RISK, SLA, 0.2, 0.0),
        ("amount_max_90d", "double", RISK, SLA, 0.2, 0.0),
        ("distinct_accounts_90d", "bigint", RISK, SLA, 0.2, 0.0),
        ("foreign_ratio_90d", "double", RISK, SLA, 0.1, 0.0),
        ("cnp_ratio_90d", "double", RISK, SLA, 0.1, 0.0),
        ("fraud_labels_30d", "bigint", RISK, SLA, 0.2, 0.0),
        ("fraud_labels_90d", "bigint", RISK, SLA, 0.2, 0.0),
        ("fraud_rate_smoothed_30d", "double", RISK, SLA, 0.0, 0.0),
        ("fraud_rate_smoothed_90d", "double", RISK, SLA, 0.0, 0.0),
        ("days_since_first_seen", "double", RISK, SLA, 0.0, 0.0),
    ),
}


def test_every_column_resolves_to_the_metadata_it_had_before(root: Path) -> None:
    marts = load_marts(root / "dbt_project")
    assert {e: (m.model, m.ttl_days) for e, m in marts.items()} == MARTS
    resolved = {
        entity: tuple(
            (c.name, c.data_type, c.owner, c.sla, c.drift_threshold, c.default)
            for c in mart.features
        )
        for entity, mart in marts.items()
    }
    assert resolved == RESOLVED


def test_feast_views_carry_the_same_tags_per_feature(root: Path) -> None:
    from streams.features.store import load_definitions

    views = {view.name: view for view in load_definitions(root / "features").feature_views}
    assert sorted(views) == sorted(RESOLVED)
    for entity, columns in RESOLVED.items():
        tags = [(field.name, dict(field.tags)) for field in views[entity].features]
        assert tags == [
            (name, {"owner": o, "sla": s, "drift_threshold": str(d), "default": str(v)})
            for name, _, o, s, d, v in columns
        ], entity


def _marts_yaml(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "models" / "marts"
    folder.mkdir(parents=True)
    (folder / "x.yml").write_text(text)
    return tmp_path


def test_a_column_inherits_the_model_meta_unless_it_overrides_it(tmp_path: Path) -> None:
    project = _marts_yaml(
        tmp_path,
        "models:\n"
        "  - name: x_features\n"
        "    config:\n"
        "      meta: {feast_entity: x, owner: team, sla: hourly, drift_threshold: 0.2,"
        " default: -1}\n"
        "    columns:\n"
        "      - name: x_id\n"
        "      - name: feature_date\n"
        "      - name: plain\n"
        "      - name: tight\n"
        "        config: {meta: {drift_threshold: 0.1}}\n"
        "      - name: legacy\n"
        "        meta: {owner: other, default: 0}\n",
    )
    [mart] = load_marts(project).values()
    got = {c.name: (c.owner, c.sla, c.drift_threshold, c.default) for c in mart.features}
    assert got == {
        "plain": ("team", "hourly", 0.2, -1.0),
        "tight": ("team", "hourly", 0.1, -1.0),
        "legacy": ("other", "hourly", 0.2, 0.0),
    }


def test_only_feature_metadata_is_inherited(tmp_path: Path) -> None:
    # feast_entity / feast_ttl_days are the model's own; a column does not pick them up,
    # and a key the model does not declare is still required of each column.
    project = _marts_yaml(
        tmp_path,
        "models:\n"
        "  - name: x_features\n"
        "    config: {meta: {feast_entity: x, feast_ttl_days: 3, owner: team}}\n"
        "    columns:\n"
        "      - name: f\n"
        "        config: {meta: {sla: hourly}}\n",
    )
    with pytest.raises(ConfigError, match=r"x_features\.f lacks meta drift_threshold"):
        load_marts(project)
