"""Feature metadata read from the dbt mart YAML files: the one source of truth.

Both the Feast repo (``features/feature_views.py``) and the registry read it from here, so
owner, SLA, drift threshold and default of a feature are declared once, next to its SQL.
A mart's model-level ``meta`` holds the values most of its columns share; a column
inherits each of them unless its own ``meta`` overrides it (dbt itself does not inherit
model ``meta`` into columns: this module is where that rule lives).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from streams.errors import ConfigError

__all__ = ["MARTS", "REQUIRED_META", "Mart", "MartColumn", "load_marts"]

MARTS = "models/marts"
REQUIRED_META = ("owner", "sla", "drift_threshold")
# What a column inherits from its model's meta; feast_entity / feast_ttl_days stay the model's.
COLUMN_META = (*REQUIRED_META, "default")


@dataclass(frozen=True, slots=True)
class MartColumn:
    """One feature column of a mart, with its ``meta``."""

    name: str
    data_type: str
    description: str
    owner: str
    sla: str
    drift_threshold: float
    default: float


@dataclass(frozen=True, slots=True)
class Mart:
    """A feature mart: one Feast entity's features as of each ``feature_date``."""

    model: str
    entity: str
    join_key: str
    ttl_days: int
    description: str
    features: tuple[MartColumn, ...]

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.features)


def load_marts(dbt_project_dir: Path) -> dict[str, Mart]:
    """Every mart whose model ``meta`` names a ``feast_entity``, keyed by that entity."""
    folder = Path(dbt_project_dir) / MARTS
    if not folder.is_dir():
        raise ConfigError(f"no dbt marts folder at {folder} (STREAMSCORE_DBT_PROJECT_DIR)")
    marts: dict[str, Mart] = {}
    for path in sorted(folder.glob("*.yml")):
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for model in document.get("models", []):
            mart = _mart(model, path)
            if mart is None:
                continue
            if mart.entity in marts:
                raise ConfigError(
                    f"{path}: entity {mart.entity!r} already has mart {marts[mart.entity].model}"
                )
            marts[mart.entity] = mart
    return marts


def _meta(node: dict[str, Any]) -> dict[str, Any]:
    # dbt ≥1.10 puts meta under config; accept the older top-level key too.
    meta = dict(node.get("meta") or {})
    meta.update((node.get("config") or {}).get("meta") or {})
    return meta


def _mart(model: dict[str, Any], path: Path) -> Mart | None:
    meta = _meta(model)
    entity = meta.get("feast_entity")
    if not entity:
        return None
    join_key = f"{entity}_id"
    inherited = {key: meta[key] for key in COLUMN_META if key in meta}
    features: list[MartColumn] = []
    for column in model.get("columns", []):
        name = str(column["name"])
        if name in (join_key, "feature_date"):
            continue
        column_meta = {**inherited, **_meta(column)}
        missing = [key for key in REQUIRED_META if key not in column_meta]
        if missing:
            raise ConfigError(
                f"{path}: column {model['name']}.{name} lacks meta {', '.join(missing)}; every "
                "feature column declares owner, sla and drift_threshold or inherits them from "
                "the model's meta"
            )
        features.append(
            MartColumn(
                name=name,
                data_type=str(column.get("data_type", "double")),
                description=str(column.get("description", "")),
                owner=str(column_meta["owner"]),
                sla=str(column_meta["sla"]),
                drift_threshold=float(column_meta["drift_threshold"]),
                default=float(column_meta.get("default", 0.0)),
            )
        )
    return Mart(
        model=str(model["name"]),
        entity=str(entity),
        join_key=join_key,
        ttl_days=int(meta.get("feast_ttl_days", 2)),
        description=str(model.get("description", "")),
        features=tuple(features),
    )
