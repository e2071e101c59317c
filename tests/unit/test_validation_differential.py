"""The hot-path validator (jsonschema-rs) must agree with the reference (jsonschema).

Runs both over every example and a few thousand generated and mutated payloads and
requires identical verdicts, and the same set of failing JSON paths.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.schemas import ReferenceValidator, SchemaRegistry
from streams.schemas.registry import load_examples

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples"

# Values chosen to sit on and around every kind of boundary in the schemas.
MUTANTS: list[Any] = [
    None, True, False, 0, -1, 1, 1.0, 1.5, 2, 7, 90, 90.0001, -180.5, 1e6, 1000000.01, 1e308,
    "", " ", "EUR", "eur", "XXX", "5411", "541", "54111", "DE", "de", "DEU", "pos", "POS",
    "3f1c9a52-8d7e-4b6a-9c1d-2e5f7a8b9c0d", "3F1C9A52-8D7E-4B6A-9C1D-2E5F7A8B9C0D",
    "2026-11-20T14:03:27Z", "2026-13-20T14:03:27Z", "2026-11-20 14:03:27Z", "2026-11-20T24:00:00Z",
    "10.0.0.1", "256.0.0.1", "01.2.3.4", "::1", "2001:db8::1", "gggg::1", "١٢٣٤",
    "a" * 65, "acc_1", "acc 1", [], [1], {}, {"lat": 1, "lon": 2}, {"lat": 91, "lon": 0},
    {"lat": 1}, {"lat": 1, "lon": 2, "x": 3},
]  # fmt: skip


def _mutations(event: dict[str, Any], rng: random.Random, count: int) -> list[Any]:
    keys = list(event)
    out: list[Any] = []
    for _ in range(count):
        mutant = copy.deepcopy(event)
        for _ in range(rng.randint(1, 3)):
            roll = rng.random()
            key = rng.choice(keys)
            if roll < 0.6:
                mutant[key] = rng.choice(MUTANTS)
            elif roll < 0.8:
                mutant.pop(key, None)
            else:
                mutant[rng.choice(["extra", "merchant_name", "wallet", "geo"])] = rng.choice(
                    MUTANTS
                )
        out.append(mutant)
    out.extend([[], "text", 3, None, {}])
    return out


@pytest.mark.parametrize("label", ["transaction/v1", "transaction/v2", "label/v1"])
def test_fast_and_reference_validators_agree(registry: SchemaRegistry, label: str) -> None:
    event_type, version = label.split("/v")
    schema = registry.get(event_type, int(version))
    reference = ReferenceValidator(schema.document)
    examples = [
        orjson.loads(raw)
        for kind in ("valid", "invalid")
        for raw in load_examples(EXAMPLES, event_type, kind).values()
    ]
    rng = random.Random(f"differential-{label}")
    payloads = list(examples)
    for example in examples:
        payloads.extend(_mutations(example, rng, 2500 // len(examples)))
    assert len(payloads) >= 2000
    verdicts = {True: 0, False: 0}
    for payload in payloads:
        fast, ref = schema.fast.is_valid(payload), reference.is_valid(payload)
        assert fast == ref, payload
        verdicts[fast] += 1
        if not fast:
            fast_paths = {v.path for v in schema.fast.violations(payload)}
            ref_paths = {v.path for v in reference.violations(payload)}
            assert fast_paths == ref_paths, payload
    # Both verdicts must be well represented, or the test proves little.
    assert verdicts[True] >= 10 and verdicts[False] >= 1000, verdicts
