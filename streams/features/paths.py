"""Where the nightly feature pipeline keeps its state under ``STREAMSCORE_HOME``."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from streams.settings import Settings


def duckdb_path(settings: Settings) -> Path:
    """The DuckDB file dbt builds the marts in."""
    return settings.home / "features.duckdb"


def feast_dir(settings: Settings) -> Path:
    """Feast's repo path at run time: registry, SQLite online store, exported Parquet."""
    return settings.home / "feast"


def export_path(settings: Settings, model: str, feature_date: date) -> Path:
    """The Parquet file holding one mart's rows for one feature date."""
    return feast_dir(settings) / "data" / model / f"{feature_date.isoformat()}.parquet"


def dbt_state_dir(settings: Settings) -> Path:
    """dbt's target and log folders: per home, so parallel homes never share them."""
    return settings.home / "dbt"
