"""Versioned event schemas: the registry, and fast and reference validators."""

from __future__ import annotations

from streams.schemas.registry import EventSchema, SchemaRegistry, structural_breaks
from streams.schemas.validation import FastValidator, ReferenceValidator, json_path

__all__ = [
    "EventSchema",
    "FastValidator",
    "ReferenceValidator",
    "SchemaRegistry",
    "json_path",
    "structural_breaks",
]
