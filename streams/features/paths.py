"""Where the nightly feature pipeline keeps its state under ``STREAMSCORE_HOME``."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

from streams.errors import FeatureError
from streams.settings import Settings

__all__ = [
    "dbt_state_dir",
    "duckdb_path",
    "export_path",
    "feast_dir",
    "run_dir",
    "run_export_path",
    "runs_dir",
]

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def duckdb_path(settings: Settings) -> Path:
    """The DuckDB file dbt builds the marts in."""
    return settings.home / "features.duckdb"


def feast_dir(settings: Settings) -> Path:
    """Feast's repo path at run time: registry, SQLite online store, exported Parquet."""
    return settings.home / "feast"


def export_path(settings: Settings, model: str, feature_date: date) -> Path:
    """The Parquet file holding one mart's rows for one feature date (what Feast reads; a
    rerun or a backfill of that date overwrites it)."""
    return feast_dir(settings) / "data" / model / f"{feature_date.isoformat()}.parquet"


def runs_dir(settings: Settings) -> Path:
    """The folder of every kept nightly run's served features, one folder per run id."""
    return feast_dir(settings) / "runs"


def run_dir(settings: Settings, run_id: str) -> Path:
    """The folder holding what run ``run_id`` served (never rewritten; see run_exports)."""
    if not _RUN_ID.match(run_id) or ".." in run_id:
        raise FeatureError(f"nightly run id {run_id!r} is not a plain name: no folder for it")
    return runs_dir(settings) / run_id


def run_export_path(settings: Settings, run_id: str, model: str) -> Path:
    """One mart's rows as run ``run_id`` exported them for its nightly date."""
    return run_dir(settings, run_id) / f"{model}.parquet"


def dbt_state_dir(settings: Settings) -> Path:
    """dbt's target and log folders: per home, so parallel homes never share them."""
    return settings.home / "dbt"
