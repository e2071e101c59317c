"""Feast feature views: one per entity, schema and tags built from the dbt mart YAML.

Feature order, dtypes and tags (owner, sla, drift_threshold, default) come from
``dbt_project/models/marts/*.yml``; nothing is restated here.
"""

from __future__ import annotations

from datetime import timedelta

from data_sources import MARTS, SOURCES
from entities import ENTITIES
from feast import FeatureView, Field
from feast.types import Float64, Int64

_DTYPES = {"bigint": Int64, "integer": Int64, "hugeint": Int64}


def _view(entity: str) -> FeatureView:
    mart = MARTS[entity]
    return FeatureView(
        name=entity,
        entities=[ENTITIES[entity]],
        ttl=timedelta(days=mart.ttl_days),
        schema=[
            Field(
                name=column.name,
                dtype=_DTYPES.get(column.data_type, Float64),
                description=column.description,
                tags={
                    "owner": column.owner,
                    "sla": column.sla,
                    "drift_threshold": str(column.drift_threshold),
                    "default": str(column.default),
                },
            )
            for column in mart.features
        ],
        source=SOURCES[entity],
        online=True,
        description=mart.description,
        tags={"dbt_model": mart.model, "join_key": mart.join_key},
    )


account = _view("account")
card = _view("card")
merchant = _view("merchant")
