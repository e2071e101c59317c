"""Fixtures shared by unit tests that open an in-process chDB."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from streams.settings import Settings


@pytest.fixture(scope="module")
def chdb_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The session's chDB path (one engine per process) and a database of the module's own."""
    path: Path = tmp_path_factory.getbasetemp() / "chdb"
    database = f"t_{uuid.uuid4().hex[:8]}"
    return Settings(clickhouse_dsn=f"chdb://{path}", clickhouse_database=database)
