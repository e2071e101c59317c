"""Feast data sources: the dbt feature marts exported to Parquet, one file per feature date.

Feast's DuckDB offline store needs ibis, which this build does not ship, so the marts are
exported (``streamscore nightly``) to ``data/<mart>/<YYYY-MM-DD>.parquet`` for the file
offline store. Paths are relative: Feast resolves them against the repo path that
streamscore configures (``$STREAMSCORE_HOME/feast``).
"""

from __future__ import annotations

from pathlib import Path

from feast import FileSource
from feast.data_format import ParquetFormat

from streams.features.dbt_meta import load_marts

# The dbt project next to this repo holds the marts' metadata (one source of truth).
DBT_PROJECT = Path(__file__).resolve().parent.parent / "dbt_project"
MARTS = load_marts(DBT_PROJECT)

SOURCES = {
    entity: FileSource(
        name=mart.model,
        path=f"data/{mart.model}",
        file_format=ParquetFormat(),
        timestamp_field="event_timestamp",
        description=mart.description,
        tags={"dbt_model": mart.model},
    )
    for entity, mart in MARTS.items()
}

account_features_source = SOURCES["account"]
card_features_source = SOURCES["card"]
merchant_features_source = SOURCES["merchant"]
