"""Validators for one schema: a fast one for the hot path and the reference one for tests.

The hot path uses ``jsonschema-rs`` (about 1 µs per 20-field event here, against
about 100 µs for ``jsonschema``). ``jsonschema`` stays the reference: a differential
test runs both over every example and thousands of generated payloads and requires
identical verdicts. ``format`` is an annotation in both (Draft 2020-12 default); the
schemas enforce shapes with ``pattern`` so that both engines agree to the letter.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import jsonschema
import jsonschema_rs

from streams.errors import Violation
from streams.text import bounded

# Validators quote the offending value in their messages ("'AAA…' is longer than 200
# characters"), and paths name the event's own keys: both are cut, so a 200 KB string
# in an event makes a short violation. The same cut in both validators keeps them equal.
MAX_PATH_CHARS = 256
MAX_VIOLATION_CHARS = 300


def json_path(parts: Iterable[str | int]) -> str:
    """Render an instance path as JSONPath: ``$.geo.lat``, ``$.items[3]``."""
    out = ["$"]
    for part in parts:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif part.isidentifier():
            out.append(f".{part}")
        else:
            out.append(f"[{part!r}]")
    return "".join(out)


def _violation(path: str, message: str) -> Violation:
    return Violation(bounded(path, MAX_PATH_CHARS), bounded(message, MAX_VIOLATION_CHARS))


class FastValidator:
    """jsonschema-rs over one schema document: ``is_valid`` first, every error only on failure."""

    __slots__ = ("_validator",)

    def __init__(self, document: dict[str, Any]) -> None:
        self._validator = jsonschema_rs.validator_for(document, validate_formats=False)

    def is_valid(self, instance: Any) -> bool:
        return bool(self._validator.is_valid(instance))

    def violations(self, instance: Any) -> tuple[Violation, ...]:
        found = [
            _violation(json_path(error.instance_path), str(error.message))
            for error in self._validator.iter_errors(instance)
        ]
        return tuple(sorted(found, key=lambda v: (v.path, v.message)))


class ReferenceValidator:
    """The card's ``jsonschema`` (Draft 2020-12): slow, authoritative, used by tests and tools."""

    __slots__ = ("_validator",)

    def __init__(self, document: dict[str, Any]) -> None:
        jsonschema.Draft202012Validator.check_schema(document)
        self._validator = jsonschema.Draft202012Validator(document)

    def is_valid(self, instance: Any) -> bool:
        return bool(self._validator.is_valid(instance))

    def violations(self, instance: Any) -> tuple[Violation, ...]:
        found = [
            _violation(json_path(error.absolute_path), error.message)
            for error in self._validator.iter_errors(instance)
        ]
        return tuple(sorted(found, key=lambda v: (v.path, v.message)))


def describe(violations: Sequence[Violation], limit: int = 10) -> str:
    """One line for logs and DLQ headers: the first ``limit`` violations, each cut to
    MAX_PATH_CHARS + MAX_VIOLATION_CHARS (violations made elsewhere may be longer)."""
    each = MAX_PATH_CHARS + MAX_VIOLATION_CHARS
    shown = "; ".join(bounded(str(v), each) for v in violations[:limit])
    more = len(violations) - limit
    return f"{shown}; and {more} more" if more > 0 else shown
