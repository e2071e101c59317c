"""Scored batches on Kafka (Arrow IPC per valid partition) and the sink's copy marks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from streams.sinks.scored import RowMarks, decode_scored, encode_scored


def _rows(
    events: list[tuple[int, str, int, int]], models: tuple[str, ...] = ("a-1", "b-1")
) -> pa.Table:
    """(valid partition, raw topic, raw partition, raw offset) per event, a row per model."""
    rows = [(hp, t, p, o, m) for m in models for hp, t, p, o in events]
    return pa.table(
        {
            "handoff_partition": pa.array([r[0] for r in rows], pa.uint16()),
            "topic": pa.array([r[1] for r in rows], pa.string()),
            "partition": pa.array([r[2] for r in rows], pa.uint16()),
            "offset": pa.array([r[3] for r in rows], pa.uint64()),
            "model_version": pa.array([r[4] for r in rows], pa.string()),
            "features": pa.array([[float(r[3])] * 3 for r in rows], pa.list_(pa.float32())),
        }
    )


def test_a_batch_becomes_one_message_per_valid_partition_and_back() -> None:
    table = _rows([(0, "raw", 1, 10), (2, "raw", 1, 11), (0, "raw", 3, 5)])
    encoded = encode_scored(table)
    assert [p for p, _ in encoded] == [0, 2]
    back = {p: decode_scored(value) for p, value in encoded}
    assert back[0].num_rows == 4 and back[2].num_rows == 2
    assert set(back[0].column("handoff_partition").to_pylist()) == {0}
    assert back[0].schema == table.schema
    assert back[2].column("features").to_pylist() == [[11.0] * 3, [11.0] * 3]


def test_marks_drop_a_rescored_batch_and_keep_every_models_row() -> None:
    marks = RowMarks()
    marks.load(0, {("raw", 1): 9})
    first = marks.take(0, _rows([(0, "raw", 1, o) for o in (8, 9, 10, 11)]))
    # 8 and 9 were written before the crash (loaded marks); both models' rows of 10 and 11 stay.
    assert first.column("offset").to_pylist() == [10, 11, 10, 11]
    assert first.column("model_version").to_pylist() == ["a-1", "a-1", "b-1", "b-1"]
    # The scoring stage crashed and sent 10..12 again: only 12 is new.
    again = marks.take(0, _rows([(0, "raw", 1, o) for o in (10, 11, 12)]))
    assert again.column("offset").to_pylist() == [12, 12]
    # Another raw partition and another valid partition are tracked apart.
    other = marks.take(0, _rows([(0, "raw", 2, 0)]))
    assert other.num_rows == 2
    elsewhere = marks.take(3, _rows([(3, "raw", 1, 1)]))
    assert elsewhere.num_rows == 2
    assert marks.get(0) == {("raw", 1): 12, ("raw", 2): 0}
    marks.forget([0])
    assert marks.get(0) == {}


class _Message:
    """What the sink reads of a confluent-kafka message."""

    def __init__(self, partition: int, offset: int, value: bytes, headers: Any = None) -> None:
        self._partition, self._offset, self._value, self._headers = (
            partition, offset, value, headers,
        )  # fmt: skip

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value

    def headers(self) -> Any:
        return self._headers


def test_the_sink_splits_rows_from_drift_deltas_and_drops_copies(tmp_path: Path) -> None:
    from streams.agents.sink import PredictionsSinkStage
    from streams.settings import Settings
    from streams.sinks.scored import DRIFT_HEADERS, encode_rows, encode_table

    stage = PredictionsSinkStage(Settings(home=tmp_path), gateway=None)  # type: ignore[arg-type]
    [(_, first)] = encode_scored(_rows([(1, "raw", 0, o) for o in (1, 2)]))
    [(_, again)] = encode_scored(_rows([(1, "raw", 0, o) for o in (2, 3)]))  # re-scored 2
    [(_, deltas)] = encode_table(pa.table({"feature": ["amount"], "count": [3]}))
    headers, models = encode_rows("models", ["model_version", "thresholds"], [["m-1", {"t": 0.5}]])
    foreign = [(k, b"users" if k == "streamscore.table" else v) for k, v in headers]
    messages = [
        _Message(1, 0, first),
        _Message(1, 1, deltas, DRIFT_HEADERS),
        _Message(0, 0, models, headers),
        _Message(0, 1, models, foreign),  # not a table the sink writes rows to: skipped
        _Message(1, 2, again),
    ]
    gathered = stage.prepare(messages)  # type: ignore[arg-type]
    rows, drift = gathered.rows, gathered.deltas
    assert rows is not None and rows.column("offset").to_pylist() == [1, 2, 1, 2, 3, 3]
    assert gathered.dropped == 2  # both models' rows of offset 2, sent again
    assert drift is not None and drift.to_pylist() == [{"feature": "amount", "count": 3}]
    assert gathered.other == [("models", ["model_version", "thresholds"], [["m-1", {"t": 0.5}]])]
