"""The event lake: validated events as hive-partitioned Parquet, written exactly once.

``schema`` is the contract (one flat Arrow schema per event type), ``writer`` the
atomic, manifest-committed writer that the lake sink and the history simulator share.
"""

from __future__ import annotations

from streams.lake.exceptions import LakeError, LakeInputError
from streams.lake.schema import (
    LABEL_SCHEMA,
    SCHEMAS,
    TRANSACTION_SCHEMA,
    conform,
    event_dates,
    schema_for,
    to_table,
)
from streams.lake.writer import BatchReport, LakeWriter, RecoverReport, SourceRange

__all__ = [
    "LABEL_SCHEMA",
    "SCHEMAS",
    "TRANSACTION_SCHEMA",
    "BatchReport",
    "LakeError",
    "LakeInputError",
    "LakeWriter",
    "RecoverReport",
    "SourceRange",
    "conform",
    "event_dates",
    "schema_for",
    "to_table",
]
