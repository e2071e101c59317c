"""The scoring pipeline's pure parts: decoding, every model's rows, dedup marks and tokens."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pytest

from models import synthetic_feature_service, synthetic_training_table, train_synthetic
from models.train import feature_matrix
from streams.errors import ConfigError
from streams.ingest import RawRecord
from streams.replay import original_record, parse_offsets
from streams.scoring.modelset import ModelSet
from streams.scoring.pipeline import (
    ValidEvent,
    decode_events,
    prediction_messages,
    review_messages,
    score_events,
)
from streams.scoring.registry import RegistryConfig
from streams.sinks.clickhouse import SourceMarks, dedup_token, insert_settings

SPEC = synthetic_feature_service(20)
COLUMNS = {
    "event_id": pa.string(),
    "account_id": pa.string(),
    "merchant_id": pa.string(),
    "amount": pa.float64(),
    "event_time": pa.timestamp("ms", tz="UTC"),
}


def event(
    i: int, partition: int = 0, source: tuple[str, int, int] | None = None, **body: Any
) -> ValidEvent:
    payload = {
        "event_id": f"evt-{i}",
        "account_id": f"acc-{i % 7}",
        "merchant_id": "m-1",
        "amount": 10.0 + i,
        "event_time": "2026-11-20T14:03:27.512Z",
        **body,
    }
    return ValidEvent(
        partition,
        100 + i,
        source or ("raw", 1, 1000 + i),
        1_000,
        2_000,
        b"k",
        orjson.dumps(payload),
    )


def test_decode_keeps_good_rows_in_order_and_returns_the_bad_with_reasons() -> None:
    events = [
        event(0),
        ValidEvent(0, 101, ("raw", 0, 1), 0, 0, None, b"{not json"),
        ValidEvent(0, 102, ("raw", 0, 2), 0, 0, None, b"[1, 2]"),
        event(3, amount="a lot"),
        event(4, event_time="2026-11-20T14:03:27.123456789+02:00"),
        event(5, event_time="yesterday"),
        event(6),
    ]
    decoded = decode_events(events, COLUMNS)
    assert [e.handoff_offset for e in decoded.events] == [100, 104, 106]
    reasons = {e.handoff_offset: why for e, why in decoded.failed}
    assert set(reasons) == {101, 102, 103, 105}
    assert "amount" in reasons[103] and "event_time" in reasons[105]
    times = decoded.table.column("event_time").to_pylist()
    assert times[1].hour == 12  # +02:00 converted to UTC, nanoseconds cut to ms
    assert decoded.table.column("amount").to_pylist() == [10.0, 14.0, 16.0]


def test_decoding_from_already_parsed_values_gives_the_same_batch_without_parsing() -> None:
    events = [event(0), event(1, amount="a lot"), event(2)]
    parsed = [orjson.loads(e.value) for e in events]
    again = decode_events(events, COLUMNS)
    # Values that are not JSON prove nothing is parsed: the dicts are what is read.
    blind = [e._replace(value=b"not json") for e in events]
    given = decode_events(blind, COLUMNS, parsed=parsed)
    assert given.table.equals(again.table) and given.parsed == again.parsed
    assert [e.handoff_offset for e, _ in given.failed] == [101]  # a bad field still fails
    with pytest.raises(ValueError, match="2 parsed values for 3 events"):
        decode_events(events, COLUMNS, parsed=parsed[:2])


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> ModelSet:
    root: Path = tmp_path_factory.mktemp("models")
    train_synthetic(root / "artifacts", "lightgbm", n_estimators=10)
    train_synthetic(root / "artifacts", "mlp", max_iter=5)
    train_synthetic(root / "artifacts", "lightgbm", n_estimators=5, version="2")
    config = RegistryConfig.model_validate(
        {
            "champion": "fraud_lightgbm-1",
            "challengers": [
                {"model": "fraud_mlp-1", "role": "shadow"},
                {"model": "fraud_lightgbm-2", "role": "canary", "share": 0.3},
            ],
        }
    )
    settings = SimpleNamespace(
        models_dir=root, providers="cpu", intra_op_threads=1, gpu_crossover_rows=None
    )
    return ModelSet.from_registry(settings, SPEC, config)


class FakeFeatures:
    """Two entities over the synthetic service's 20 features; account 'acc-0' is unknown."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = x
        views = [
            SimpleNamespace(name="account", join_key="account_id", features=SPEC.features[:12]),
            SimpleNamespace(name="merchant", join_key="merchant_id", features=SPEC.features[12:]),
        ]
        self.layout = SimpleNamespace(views=views)
        self.run_id = "run-1"
        self.feature_date = date(2026, 11, 20)

    def vectors(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        n = table.num_rows
        missing = np.zeros((n, 2), dtype=np.bool_)
        missing[:, 0] = np.array(table.column("account_id").to_pylist()) == "acc-0"
        return self.x[:n], missing


def test_every_model_gets_one_row_per_event_and_exactly_one_model_decides(models: ModelSet) -> None:
    n = 200
    x = feature_matrix(synthetic_training_table(SPEC, n, seed=5), SPEC)
    decoded = decode_events([event(i) for i in range(n)], COLUMNS)
    scored = score_events(
        decoded,
        FakeFeatures(x),
        models,
        run="live",
        worker_id="w1",
        picked_up_ms=2_500,  # type: ignore[arg-type]
    )
    rows = scored.predictions
    assert rows.num_rows == 3 * n
    assert rows.column("model_version").to_pylist()[::n] == list(models.model_ids)
    decided = np.array(rows.column("decided").to_pylist()).reshape(3, n)
    assert (decided.sum(axis=0) == 1).all()  # exactly one acted-on row per event
    assert not decided[1].any()  # the shadow never decides
    assert 0.15 < decided[2].mean() < 0.45  # the canary's share
    # The old API and the new one agree on who decides and on the scores.
    legacy = models.score([f"evt-{i}" for i in range(n)], x)
    assert np.array_equal(np.argmax(decided, axis=0), legacy.decided_by)
    champion = np.array(rows.column("score").to_pylist()[:n], dtype=np.float32)
    assert np.array_equal(champion, models.champion.score(x))
    # Unknown accounts are flagged per row with the entity's feature count.
    unknown = [i for i in range(n) if i % 7 == 0]
    missing = rows.column("missing_features").to_pylist()[:n]
    assert [i for i, m in enumerate(missing) if m] == unknown
    assert {missing[i] for i in unknown} == {12}
    assert rows.column("missing_entities").to_pylist()[0] == ["account"]
    vectors = rows.column("features").to_pylist()
    assert np.allclose(vectors[n + 3], x[3])  # the shadow's row carries the same vector
    assert rows.column("queue_ms").to_pylist()[0] == 500.0
    assert rows.column("offset").to_pylist()[:2] == [1000, 1001]

    messages = prediction_messages(decoded, scored)
    assert len(messages) == n
    body = orjson.loads(messages[0][1])
    assert body["model_version"] in models.model_ids and set(body["challengers"]) == set(
        models.model_ids[1:]
    )
    assert body["produced_at_ms"] == decoded.events[0].produced_at_ms
    assert body["decided_at_ms"] >= body["produced_at_ms"]
    review = review_messages(decoded, scored, SPEC.names)
    flagged = int(np.array(rows.column("human_review").to_pylist())[scored.decided_row].sum())
    assert len(review) == flagged


def test_source_marks_drop_redeliveries_and_survive_a_reload() -> None:
    marks = SourceMarks()
    first = [event(i, partition=0, source=("raw", 1, 10 + i)) for i in range(5)]
    assert marks.select(first) == [0, 1, 2, 3, 4]
    # Ingestion crashed and re-sent offsets 12..14 at new hand-off offsets, then 15.
    again = [event(i, partition=0, source=("raw", 1, o)) for i, o in enumerate([12, 13, 14, 15])]
    assert marks.select(again) == [3]
    # Another raw partition and another hand-off partition are tracked apart.
    assert marks.select([event(0, partition=0, source=("raw", 2, 0))]) == [0]
    assert marks.select([event(0, partition=1, source=("raw", 1, 0))]) == [0]
    saved = marks.get(0)
    restarted = SourceMarks()
    restarted.load(0, saved)
    assert restarted.select(again) == []


def test_dedup_token_is_deterministic_and_names_ranges_and_versions() -> None:
    a = dedup_token("valid", [(1, 5), (0, 3), (1, 9), (0, 4)], ["m-1", "m-2"])
    b = dedup_token("valid", [(0, 4), (1, 9), (0, 3), (1, 5)], ["m-1", "m-2"])
    assert a == b == "valid|0:3-4,1:5-9|m-1,m-2"
    assert dedup_token("valid", [(0, 3)], ["m-1"]) != dedup_token("valid", [(0, 3)], ["m-2"])
    assert insert_settings(a, True)["insert_deduplication_token"] == a
    assert insert_settings(a, False) == {"insert_deduplicate": 0}


def test_parse_offsets() -> None:
    assert parse_offsets("0:100, 3:250") == {0: 100, 3: 250}
    for bad in ("0", "a:1", "0:-1", ""):
        with pytest.raises(ConfigError):
            parse_offsets(bad)


def test_original_record_restores_coordinates_and_headers_of_a_dead_letter() -> None:
    dead = RawRecord(
        "dlq", 2, 7, 5, b"key", b"payload",
        (("schema-id", b"transaction.v1"), ("dlq.source.topic", b"raw"),
         ("dlq.source.partition", b"4"), ("dlq.source.offset", b"99"),
         ("dlq.source.timestamp", b"123"), ("dlq.error.class", b"schema_violation")),
    )  # fmt: skip
    original = original_record(dead)
    assert (original.topic, original.partition, original.offset) == ("raw", 4, 99)
    assert original.timestamp_ms == 123 and original.value == b"payload"
    assert original.headers == (("schema-id", b"transaction.v1"),)
    with pytest.raises(ConfigError, match=r"lacks dlq\.source"):
        original_record(RawRecord("dlq", 0, 1, 0, None, b"x", ()))
    forged = tuple((k, b"-4" if k == "dlq.source.partition" else v) for k, v in dead.headers)
    with pytest.raises(ConfigError, match="malformed"):  # not replayed to partition -4
        original_record(dead._replace(headers=forged))
