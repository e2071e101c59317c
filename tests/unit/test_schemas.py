"""Schema registry: loading, resolution, backward compatibility, refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import orjson
import pytest

from streams.errors import EventRejected, IncompatibleSchemaError, SchemaError
from streams.headers import EVENT_TYPE, SCHEMA_ID, SCHEMA_VERSION
from streams.schemas import SchemaRegistry, structural_breaks
from streams.schemas.registry import load_examples

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples"


def test_loads_every_schema_with_ids(registry: SchemaRegistry) -> None:
    assert registry.event_types == ("label", "transaction")
    labels = [s.label for s in registry.schemas]
    assert labels == ["label/v1", "transaction/v1", "transaction/v2"]
    for schema in registry.schemas:
        assert schema.schema_id.endswith(f"/{schema.event_type}.v{schema.version}.json")
    assert registry.latest("transaction").version == 2
    assert registry.get("transaction", 1).key_field == "account_id"


def test_transaction_schema_has_about_twenty_fields(registry: SchemaRegistry) -> None:
    assert len(registry.get("transaction", 1).document["properties"]) >= 19


@pytest.mark.parametrize("event_type", ["transaction", "label"])
def test_every_older_valid_example_validates_under_every_newer_version(
    registry: SchemaRegistry, event_type: str
) -> None:
    chain = [registry.get(event_type, v) for v in range(1, registry.latest(event_type).version + 1)]
    examples = {k: orjson.loads(v) for k, v in load_examples(EXAMPLES, event_type, "valid").items()}
    checked = 0
    for index, older in enumerate(chain):
        for name, event in examples.items():
            if not older.fast.is_valid(event):
                continue
            for newer in chain[index + 1 :]:
                assert newer.fast.violations(event) == (), (name, older.label, newer.label)
                checked += 1
    assert checked >= (3 if event_type == "transaction" else 0)


def _copy_schemas(tmp_path: Path) -> Path:
    target = tmp_path / "schemas"
    shutil.copytree(Path(__file__).resolve().parents[2] / "schemas", target)
    return target


def test_refuses_a_new_version_that_adds_a_required_field(tmp_path: Path) -> None:
    folder = _copy_schemas(tmp_path)
    v2 = json.loads((folder / "transaction.v2.json").read_text())
    v2["required"].append("wallet")
    (folder / "transaction.v2.json").write_text(json.dumps(v2))
    with pytest.raises(IncompatibleSchemaError, match=r"new required properties \['wallet'\]"):
        SchemaRegistry.load(folder)


def test_refuses_a_new_version_that_rejects_an_old_example(tmp_path: Path) -> None:
    folder = _copy_schemas(tmp_path)
    v2 = json.loads((folder / "transaction.v2.json").read_text())
    v2["properties"]["amount"]["maximum"] = 100  # old examples with amount 899.99 break
    (folder / "transaction.v2.json").write_text(json.dumps(v2))
    with pytest.raises(IncompatibleSchemaError, match="maximum tightened"):
        SchemaRegistry.load(folder)


def test_structural_breaks_finds_narrowed_enum_and_removed_property() -> None:
    old = {"type": "object", "additionalProperties": False, "properties": {
        "c": {"enum": ["a", "b"]}, "gone": {"type": "string"}}}  # fmt: skip
    new = {"type": "object", "additionalProperties": False, "properties": {"c": {"enum": ["a"]}}}
    problems = structural_breaks(old, new)
    assert any("enum narrowed" in p for p in problems)
    assert any("$.gone: property removed" in p for p in problems)
    assert structural_breaks(old, old) == []


def test_refuses_broken_schema_files(tmp_path: Path) -> None:
    folder = _copy_schemas(tmp_path)
    (folder / "transaction.v2.json").write_text("{not json")
    with pytest.raises(SchemaError, match="not valid JSON"):
        SchemaRegistry.load(folder)
    folder = _copy_schemas(tmp_path / "b")
    (folder / "transaction.v3.json").write_text("{}")
    with pytest.raises(SchemaError, match=r"2020-12|\$id|x-streamscore"):
        SchemaRegistry.load(folder)


def test_refuses_a_version_gap(tmp_path: Path) -> None:
    folder = _copy_schemas(tmp_path)
    v2 = json.loads((folder / "transaction.v2.json").read_text())
    v2["$id"] = v2["$id"].replace("v2", "v4")
    v2["x-streamscore"]["version"] = 4
    (folder / "transaction.v2.json").unlink()
    (folder / "transaction.v4.json").write_text(json.dumps(v2))
    with pytest.raises(SchemaError, match="gap"):
        SchemaRegistry.load(folder)


def test_resolve_by_fields_header_and_conflicts(registry: SchemaRegistry) -> None:
    event = {"event_type": "transaction", "schema_version": 1}
    assert registry.resolve(event).label == "transaction/v1"
    v2_id = registry.get("transaction", 2).schema_id.encode()
    assert registry.resolve({"event_type": "transaction"}, [(SCHEMA_ID, v2_id)]).version == 2
    assert registry.resolve({}, [(EVENT_TYPE, b"label")]).label == "label/v1"
    with pytest.raises(EventRejected) as mismatch:
        registry.resolve(event, [(SCHEMA_ID, v2_id)])
    assert mismatch.value.reason == "schema_mismatch"
    with pytest.raises(EventRejected) as unknown:
        registry.resolve({"event_type": "alien"})
    assert unknown.value.reason == "unknown_event_type"
    with pytest.raises(EventRejected) as newer:
        registry.resolve({"event_type": "transaction", "schema_version": 9})
    assert newer.value.reason == "unknown_schema_version"
    with pytest.raises(EventRejected) as no_type:
        registry.resolve({"amount": 1})
    assert no_type.value.reason == "unknown_event_type"


def test_schema_version_header_is_plain_digits(registry: SchemaRegistry) -> None:
    event = {"event_type": "transaction"}
    assert registry.resolve(event, [(SCHEMA_VERSION, b"2")]).version == 2
    # int() would read these as 2; a header that is not plain digits is refused instead.
    for raw in (b" 2", b"2 ", b"+2", b"0_2", b"\xd9\xa2", b"2" * 10):
        with pytest.raises(EventRejected) as caught:
            registry.resolve(event, [(SCHEMA_VERSION, raw)])
        assert caught.value.reason == "schema_mismatch"


def test_rejections_quote_header_and_payload_values_cut(registry: SchemaRegistry) -> None:
    huge = b"x" * 100_000
    cases = [
        ({}, [(SCHEMA_ID, huge)], "unknown_schema"),
        ({"event_type": "transaction"}, [(EVENT_TYPE, huge)], "schema_mismatch"),
        ({"event_type": "y" * 100_000}, [(EVENT_TYPE, b"transaction")], "schema_mismatch"),
        ({"event_type": "z" * 100_000}, [], "unknown_event_type"),
        ({"event_type": "transaction"}, [(SCHEMA_VERSION, huge)], "schema_mismatch"),
    ]
    for event, headers, reason in cases:
        with pytest.raises(EventRejected) as caught:
            registry.resolve(event, headers)
        assert caught.value.reason == reason
        assert len(caught.value.message) < 400, caught.value.message
        assert "…[truncated, 100000 " in caught.value.message
