"""The schema registry: every versioned JSON Schema in ``schemas/``, loaded and checked at start-up.

File names are ``<event_type>.v<version>.json``. Each schema carries ``$id`` and an
``x-streamscore`` block (event type, version, partition key field, event-time field).
Loading refuses a broken file, and refuses a new version that would reject events the
previous version accepted: structurally (no new required field, no removed property,
no narrowed enum, no changed type) and by example (every ``examples/<type>/valid``
payload of an older version must validate under each newer version).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from streams.errors import EventRejected, IncompatibleSchemaError, SchemaError
from streams.headers import EVENT_TYPE, SCHEMA_ID, SCHEMA_VERSION
from streams.schemas.validation import FastValidator, ReferenceValidator, describe
from streams.text import bounded

_FILE_NAME = re.compile(r"^(?P<type>[a-z][a-z0-9_]*)\.v(?P<version>[1-9][0-9]*)\.json$")
# Header values are read before anything else is known about them: longer than these
# they cannot be one of ours, and are refused without being decoded or parsed.
_MAX_ID_BYTES = 1024
_MAX_VERSION_DIGITS = 9
# How much of a header or payload value a rejection message quotes.
QUOTE_CHARS = 64


@dataclass(frozen=True, slots=True)
class EventSchema:
    """One version of one event type."""

    event_type: str
    version: int
    schema_id: str
    document: dict[str, Any] = field(repr=False)
    key_field: str
    time_field: str
    path: Path
    fast: FastValidator = field(repr=False, compare=False)

    @property
    def label(self) -> str:
        """``transaction/v2``: short form for logs and metrics."""
        return f"{self.event_type}/v{self.version}"


def _read_schema(path: Path) -> EventSchema:
    match = _FILE_NAME.match(path.name)
    if match is None:
        raise SchemaError(f"{path}: schema file names must look like <event_type>.v<N>.json")
    try:
        document = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise SchemaError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise SchemaError(f"{path}: a schema must be a JSON object")
    try:
        ReferenceValidator(document)  # checks the document against the 2020-12 metaschema
    except Exception as exc:  # jsonschema.SchemaError and friends
        raise SchemaError(f"{path}: not a valid Draft 2020-12 schema: {exc}") from exc
    if document.get("$schema") != "https://json-schema.org/draft/2020-12/schema":
        raise SchemaError(f"{path}: $schema must be https://json-schema.org/draft/2020-12/schema")
    schema_id = document.get("$id")
    if not isinstance(schema_id, str) or not schema_id.endswith("/" + path.name):
        raise SchemaError(f"{path}: $id must be set and end with /{path.name}, got {schema_id!r}")
    meta = document.get("x-streamscore")
    if not isinstance(meta, dict):
        raise SchemaError(f"{path}: missing the x-streamscore block (event_type, version, key)")
    event_type, version = match["type"], int(match["version"])
    if meta.get("event_type") != event_type or meta.get("version") != version:
        raise SchemaError(
            f"{path}: x-streamscore says {meta.get('event_type')}/v{meta.get('version')}, "
            f"the file name says {event_type}/v{version}"
        )
    properties = document.get("properties", {})
    for role in ("key", "time_field"):
        name = meta.get(role)
        if name not in properties or name not in document.get("required", []):
            raise SchemaError(f"{path}: x-streamscore.{role}={name!r} must be a required property")
    return EventSchema(
        event_type=event_type,
        version=version,
        schema_id=schema_id,
        document=document,
        key_field=meta["key"],
        time_field=meta["time_field"],
        path=path,
        fast=FastValidator(document),
    )


def structural_breaks(
    old: Mapping[str, Any], new: Mapping[str, Any], where: str = "$"
) -> list[str]:
    """Ways in which ``new`` would reject data that ``old`` accepted (a conservative check)."""
    problems: list[str] = []
    if old.get("type") != new.get("type"):
        problems.append(f"{where}: type changed from {old.get('type')!r} to {new.get('type')!r}")
    added = set(new.get("required", [])) - set(old.get("required", []))
    if added:
        problems.append(f"{where}: new required properties {sorted(added)}")
    if (
        "enum" in old
        and "enum" in new
        and not set(map(repr, old["enum"])) <= set(map(repr, new["enum"]))
    ):
        problems.append(f"{where}: enum narrowed, lost {sorted(map(repr, old['enum']))}")
    old_props: Mapping[str, Any] = old.get("properties", {})
    new_props: Mapping[str, Any] = new.get("properties", {})
    for name, old_sub in old_props.items():
        if name not in new_props:
            if new.get("additionalProperties") is False:
                problems.append(f"{where}.{name}: property removed")
            continue
        if isinstance(old_sub, Mapping) and isinstance(new_sub := new_props[name], Mapping):
            problems.extend(structural_breaks(old_sub, new_sub, f"{where}.{name}"))
    for key in ("maxLength", "maximum", "maxItems"):
        if key in new and (key not in old or new[key] < old[key]):
            problems.append(f"{where}: {key} tightened to {new[key]}")
    for key in ("minLength", "minimum", "exclusiveMinimum", "minItems"):
        if key in new and (key not in old or new[key] > old[key]):
            problems.append(f"{where}: {key} tightened to {new[key]}")
    if new.get("pattern") != old.get("pattern") and "pattern" in new:
        problems.append(f"{where}: pattern changed")
    return problems


def load_examples(examples_dir: Path, event_type: str, kind: str) -> dict[str, bytes]:
    """``schemas/examples/<type>/<kind>/*.json`` as name → raw bytes."""
    folder = examples_dir / event_type / kind
    return {p.stem: p.read_bytes() for p in sorted(folder.glob("*.json"))}


class SchemaRegistry:
    """All event schemas, resolved by ``schema-id`` header or ``event_type``/``schema_version``."""

    def __init__(self, schemas: Iterable[EventSchema]) -> None:
        self._by_id: dict[str, EventSchema] = {}
        self._by_type: dict[str, dict[int, EventSchema]] = {}
        for schema in schemas:
            if schema.schema_id in self._by_id:
                raise SchemaError(f"duplicate $id {schema.schema_id} ({schema.path})")
            self._by_id[schema.schema_id] = schema
            self._by_type.setdefault(schema.event_type, {})[schema.version] = schema
        for event_type, versions in self._by_type.items():
            expected = list(range(1, max(versions) + 1))
            if sorted(versions) != expected:
                raise SchemaError(f"{event_type}: versions {sorted(versions)} have a gap")

    @classmethod
    def load(cls, schemas_dir: Path, check_compatibility: bool = True) -> SchemaRegistry:
        """Load every ``*.v*.json`` under ``schemas_dir`` and check each version chain."""
        if not schemas_dir.is_dir():
            raise SchemaError(f"schema folder {schemas_dir} does not exist")
        files = sorted(p for p in schemas_dir.glob("*.json") if _FILE_NAME.match(p.name))
        if not files:
            raise SchemaError(f"no <type>.v<N>.json schema files in {schemas_dir}")
        registry = cls(_read_schema(p) for p in files)
        if check_compatibility:
            registry.check_compatibility(schemas_dir / "examples")
        return registry

    def check_compatibility(self, examples_dir: Path) -> None:
        """Raise IncompatibleSchemaError if any version rejects what an older one accepted."""
        for event_type, versions in self._by_type.items():
            chain = [versions[v] for v in sorted(versions)]
            valid_examples = load_examples(examples_dir, event_type, "valid")
            for older_index, older in enumerate(chain):
                accepted = {
                    name: orjson.loads(raw)
                    for name, raw in valid_examples.items()
                    if older.fast.is_valid(orjson.loads(raw))
                }
                for newer in chain[older_index + 1 :]:
                    problems = structural_breaks(older.document, newer.document)
                    for name, example in accepted.items():
                        broken = newer.fast.violations(example)
                        if broken:
                            problems.append(
                                f"example {name} valid under v{older.version} fails: "
                                f"{describe(broken)}"
                            )
                    if problems:
                        raise IncompatibleSchemaError(
                            f"{newer.label} is not backward compatible with {older.label}: "
                            + "; ".join(problems)
                        )

    @property
    def event_types(self) -> tuple[str, ...]:
        return tuple(sorted(self._by_type))

    @property
    def schemas(self) -> tuple[EventSchema, ...]:
        return tuple(self._by_id[k] for k in sorted(self._by_id))

    def latest(self, event_type: str) -> EventSchema:
        versions = self._by_type.get(event_type)
        if not versions:
            raise SchemaError(f"unknown event type {event_type!r}; known: {self.event_types}")
        return versions[max(versions)]

    def get(self, event_type: str, version: int) -> EventSchema:
        try:
            return self._by_type[event_type][version]
        except KeyError:
            raise SchemaError(f"no schema {event_type}/v{version}") from None

    def resolve(
        self, event: Mapping[str, Any], headers: Sequence[tuple[str, bytes | None]] = ()
    ) -> EventSchema:
        """Find the schema an event was written against, or raise EventRejected.

        A ``schema-id`` header wins; ``event-type``/``schema-version`` headers come next;
        the event's own ``event_type``/``schema_version`` fields last. When a header and
        the payload disagree the event is rejected rather than guessed at.
        """
        header = {k: v for k, v in headers if k in (SCHEMA_ID, EVENT_TYPE, SCHEMA_VERSION)}
        field_type = event.get("event_type")
        field_version = event.get("schema_version")
        raw_id = header.get(SCHEMA_ID)
        if raw_id:
            schema_id = _header_text(raw_id)
            schema = self._by_id.get(schema_id)
            if schema is None:
                raise EventRejected("unknown_schema", f"unknown schema-id header {_quoted(raw_id)}")
            if field_type is not None and field_type != schema.event_type:
                raise EventRejected(
                    "schema_mismatch",
                    f"schema-id header says {schema.event_type}, "
                    f"payload says {_quoted(field_type)}",
                    schema_id=schema_id,
                )
            if isinstance(field_version, int) and field_version != schema.version:
                raise EventRejected(
                    "schema_mismatch",
                    f"schema-id header says v{schema.version}, "
                    f"payload says v{_quoted(field_version)}",
                    schema_id=schema_id,
                )
            return schema
        raw_type = header.get(EVENT_TYPE)
        event_type = _header_text(raw_type) if raw_type else field_type
        if raw_type and field_type is not None and event_type != field_type:
            raise EventRejected(
                "schema_mismatch",
                f"event-type header {_quoted(raw_type)}, payload {_quoted(field_type)}",
            )
        if not isinstance(event_type, str):
            raise EventRejected(
                "unknown_event_type", "no event_type field (string) and no event-type header"
            )
        versions = self._by_type.get(event_type)
        if versions is None:
            raise EventRejected(
                "unknown_event_type",
                f"unknown event type {_quoted(event_type)}; known: {', '.join(self.event_types)}",
            )
        raw_version = header.get(SCHEMA_VERSION)
        version: object = field_version
        if raw_version:
            # Plain ASCII digits only: int() would also take whitespace, signs and "_",
            # and a megabyte of digits is no version either.
            if len(raw_version) > _MAX_VERSION_DIGITS or not raw_version.isdigit():
                raise EventRejected(
                    "schema_mismatch",
                    f"schema-version header {_quoted(raw_version)} is no integer "
                    f"(at most {_MAX_VERSION_DIGITS} digits)",
                )
            version = int(raw_version)
        if isinstance(version, float) and version.is_integer():
            version = int(version)
        if isinstance(version, int) and not isinstance(version, bool):
            if version in versions:
                return versions[version]
            if version > max(versions):
                raise EventRejected(
                    "unknown_schema_version",
                    f"{event_type} v{version} is newer than this worker knows "
                    f"(latest v{max(versions)})",
                )
        # Missing or malformed version: validate against the latest, which reports the field.
        return versions[max(versions)]


def _header_text(raw: bytes) -> str:
    """A schema-id or event-type header as text. One longer than any id or type is
    none of ours: it is not decoded whole, and its cut form (marker included) matches
    nothing, so it is rejected like any unknown value."""
    if len(raw) <= _MAX_ID_BYTES:
        return raw.decode("utf-8", "replace")
    return bounded(raw, QUOTE_CHARS)


def _quoted(value: object) -> str:
    """A header or payload value for a rejection message: quoted, cut at QUOTE_CHARS."""
    if isinstance(value, str | bytes):
        return bounded(value, QUOTE_CHARS, quote=True)
    # A number, or a list or object sent where a string belongs: render, then cut.
    return bounded(repr(value), QUOTE_CHARS)
