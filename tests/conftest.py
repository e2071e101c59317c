"""Shared test configuration: paths and the schema registry used across unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def registry():  # type: ignore[no-untyped-def]
    from streams.schemas import SchemaRegistry

    return SchemaRegistry.load(ROOT / "schemas")
