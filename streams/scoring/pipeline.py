"""A batch of valid events → feature matrix → every model's scores → prediction rows. Pure.

No Kafka and no ClickHouse here: the scoring agent, ``streamscore replay`` and
``streamscore dlq replay`` all call these functions on batches of ``ValidEvent`` and
send the resulting Arrow table and messages to their sinks.

* ``decode_events`` parses the JSON once (orjson) into the Arrow columns the feature
  service and the predictions table need; a record that cannot be decoded is returned
  in ``failed`` with the reason (it goes to the dead-letter topic, never dropped);
* ``score_events`` looks up entity features for the whole batch, computes the event
  features, scores with every model of the ModelSet and builds the ``predictions``
  rows: one per (event, model), champion rows first. Unknown entities are served their
  declared defaults and flagged per row (``missing_features``, ``missing_entities``).
  A source that holds several nightly runs (the live worker's ``OnlineFeatures``) serves
  each event the run in effect at its event time, and each row records its own
  ``feature_run_id`` and ``feature_date``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from streams.features.online import AsOfVectors
from streams.features.registry import ServiceLayout
from streams.records import ValidEvent as ValidEvent  # moved; re-exported for old callers
from streams.scoring.decide import Decision
from streams.scoring.modelset import ModelScores, ModelSet

_TS = pa.timestamp("ms", tz="UTC")
_TS_US = pa.timestamp("us", tz="UTC")

# Columns the predictions table carries besides the feature-service inputs (absent → null).
CONTEXT_COLUMNS: Mapping[str, pa.DataType] = {
    "event_id": pa.string(),
    "event_type": pa.string(),
    "account_id": pa.string(),
    "card_id": pa.string(),
    "merchant_id": pa.string(),
    "merchant_country": pa.string(),
    "card_country": pa.string(),
    "channel": pa.string(),
    "entry_mode": pa.string(),
    "currency": pa.string(),
    "amount": pa.float64(),
    "card_present": pa.bool_(),
    "is_3ds": pa.bool_(),
}
DECISION_NAMES = tuple(d.name.lower() for d in Decision)


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    """``events[i]`` is row ``i`` of ``table``; ``failed`` could not be decoded (and why)."""

    events: list[ValidEvent]
    table: pa.Table
    failed: list[tuple[ValidEvent, str]] = field(default_factory=list)
    parsed: list[dict[str, Any]] = field(default_factory=list)


def input_columns(layout: ServiceLayout, time_field: str = "event_time") -> dict[str, pa.DataType]:
    """Every column ``score_events`` reads: context, the views' join keys and event inputs."""
    from streams.features.event import INPUT_COLUMNS

    columns = dict(CONTEXT_COLUMNS)
    for view in layout.views:
        columns.setdefault(view.join_key, pa.string())
    for name in INPUT_COLUMNS:
        columns.setdefault(name, pa.string())
    columns[time_field] = _TS
    return columns


def decode_events(
    events: Sequence[ValidEvent],
    columns: Mapping[str, pa.DataType],
    time_field: str = "event_time",
    *,
    parsed: Sequence[dict[str, Any]] | None = None,
) -> DecodedBatch:
    """Parse each record once and build the Arrow columns; undecodable rows go to ``failed``.

    ``parsed``: the events' values already decoded (the fused stage validated them), one
    per event; then nothing is parsed again.
    """
    failed: list[tuple[ValidEvent, str]] = []
    if parsed is not None:
        if len(parsed) != len(events):
            raise ValueError(f"{len(parsed)} parsed values for {len(events)} events")
        return _decoded(list(events), list(parsed), failed, columns, time_field)
    decoded: list[dict[str, Any]] = []
    kept: list[ValidEvent] = []
    loads = orjson.loads
    for event in events:
        try:
            obj = loads(event.value)
        except orjson.JSONDecodeError as exc:
            failed.append((event, f"not JSON on the valid topic: {exc}"))
            continue
        if not isinstance(obj, dict):
            failed.append((event, "not a JSON object on the valid topic"))
            continue
        decoded.append(obj)
        kept.append(event)
    return _decoded(kept, decoded, failed, columns, time_field)


def _decoded(
    kept: list[ValidEvent],
    parsed: list[dict[str, Any]],
    failed: list[tuple[ValidEvent, str]],
    columns: Mapping[str, pa.DataType],
    time_field: str,
) -> DecodedBatch:
    while True:
        arrays, bad = _build_columns(parsed, columns, time_field)
        if arrays is not None:
            return DecodedBatch(kept, pa.table(arrays), failed, parsed)
        for index in sorted(bad, reverse=True):
            failed.append((kept.pop(index), bad[index]))
            parsed.pop(index)


_CONVERSION_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError)


def _build_columns(
    parsed: list[dict[str, Any]], columns: Mapping[str, pa.DataType], time_field: str
) -> tuple[dict[str, pa.Array] | None, dict[int, str]]:
    """The Arrow columns, each built once; or None and the rows of the first column that
    does not convert, with why (normally never: the events validated)."""
    arrays: dict[str, pa.Array] = {}
    for name, dtype in columns.items():
        values = [p.get(name) for p in parsed]

        def convert(items: list[Any], name: str = name, dtype: pa.DataType = dtype) -> pa.Array:
            return _time_column(items) if name == time_field else pa.array(items, type=dtype)

        try:
            arrays[name] = convert(values)
        except _CONVERSION_ERRORS:
            bad: dict[int, str] = {}
            for i, value in enumerate(values):
                try:
                    convert([value])
                except _CONVERSION_ERRORS:
                    bad[i] = f"field {name!r} = {value!r} is not a valid {dtype}"
            if not bad:  # each row converts alone: not a row's fault, so do not loop
                raise
            return None, bad
    return arrays, {}


def _time_column(values: list[Any]) -> pa.Array:
    """RFC 3339 strings → UTC ms timestamps (vectorised; per-row fallback for odd precision)."""
    strings = pa.array(values, type=pa.string())
    if strings.null_count:
        raise ValueError("event time is missing")
    try:
        return pc.cast(pc.cast(strings, _TS_US), _TS, safe=False)
    except pa.ArrowInvalid:
        parsed = [datetime.fromisoformat(v) for v in values]
        if any(p.tzinfo is None for p in parsed):
            raise ValueError("event time has no UTC offset") from None
        return pa.array(parsed, type=_TS)


@dataclass(frozen=True, slots=True)
class ScoredEvents:
    """``predictions`` holds len(models) × events rows, model blocks in ModelSet order."""

    predictions: pa.Table
    models: list[ModelScores]
    features: NDArray[np.float32]  # [events × features], as scored
    feature_missing: NDArray[np.bool_]  # [events × features]: served from defaults
    missing_entities: list[list[str]]
    decided_row: NDArray[np.intp]  # per event: its row in ``predictions`` that was acted on
    timings_ms: dict[str, float]
    stale_events: int = 0  # events older than every run the source held (served the oldest)

    @property
    def n_events(self) -> int:
        return int(self.features.shape[0])

    def decided(self) -> tuple[NDArray[np.float32], NDArray[np.int8], NDArray[np.bool_], list[str]]:
        """Per event: acted-on score, decision code, human-review flag and model id."""
        n = self.n_events
        score = np.zeros(n, dtype=np.float32)
        decision = np.zeros(n, dtype=np.int8)
        review = np.zeros(n, dtype=np.bool_)
        model = np.full(n, "", dtype=object)
        for m in self.models:
            rows = m.decided
            score[rows] = m.scores[rows]
            decision[rows] = m.decisions.decision[rows]
            review[rows] = m.decisions.human_review[rows]
            model[rows] = m.model_id
        return score, decision, review, model.tolist()


class FeatureSource(Protocol):
    """What ``score_events`` needs of OnlineFeatures (a protocol, so tests can pass a table)."""

    @property
    def layout(self) -> ServiceLayout: ...
    @property
    def run_id(self) -> str | None: ...
    @property
    def feature_date(self) -> Any: ...
    def vectors(
        self, events: pa.Table | pa.RecordBatch
    ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]: ...


@runtime_checkable
class AsOfFeatureSource(FeatureSource, Protocol):
    """A source holding several nightly runs: each event served the run in effect at its
    time (``OnlineFeatures.vectors_as_of``). One serving one run needs only ``vectors``."""

    def vectors_as_of(
        self, events: pa.Table | pa.RecordBatch, times_ms: NDArray[np.int64]
    ) -> AsOfVectors: ...


def served_vectors(
    features: FeatureSource, table: pa.Table, time_field: str = "event_time"
) -> AsOfVectors:
    """``table``'s feature vectors and the run that served each row."""
    if isinstance(features, AsOfFeatureSource):
        times = table.column(time_field).cast(pa.int64()).to_numpy()
        return features.vectors_as_of(table, times)
    x, missing = features.vectors(table)
    return AsOfVectors(x, missing, (features.run_id or "",), (features.feature_date,))


def score_events(
    batch: DecodedBatch,
    features: FeatureSource,
    models: ModelSet,
    *,
    run: str,
    worker_id: str,
    picked_up_ms: int,
    time_field: str = "event_time",
) -> ScoredEvents:
    """Features, scores and decisions for every model, as ``predictions`` rows."""
    table = batch.table
    n = table.num_rows
    t0 = time.perf_counter()
    served = served_vectors(features, table, time_field)
    x, missing = served.x, served.missing
    t1 = time.perf_counter()
    event_ids = table.column("event_id").to_pylist()
    each = models.score_each(event_ids, x)
    t2 = time.perf_counter()
    layout = features.layout
    per_entity = np.array([len(v.features) for v in layout.views], dtype=np.int64)
    missing_count = (missing.astype(np.int64) @ per_entity).astype(np.uint16)
    names = np.array([v.name for v in layout.views], dtype=object)
    missing_entities = (
        [list(names[row]) for row in missing] if missing.any() else [[] for _ in range(n)]
    )

    k = len(each)
    scored_at = int(time.time() * 1000)
    ingested = np.array([e.ingested_at_ms for e in batch.events], dtype=np.int64)
    produced = np.array([e.produced_at_ms for e in batch.events], dtype=np.int64)
    queue_ms = np.maximum(picked_up_ms - ingested, 0).astype(np.float32)

    def tiled(name: str) -> pa.Array:
        column = table.column(name).combine_chunks() if name in table.column_names else None
        if column is None:
            return pa.nulls(n * k, type=pa.string())
        return pa.concat_arrays([column] * k) if k > 1 else column

    def repeat(values: NDArray[Any], dtype: pa.DataType) -> pa.Array:
        return pa.array(np.tile(values, k), type=dtype)

    def per_model(pick: Any, dtype: pa.DataType) -> pa.Array:
        return pa.array(np.concatenate([pick(m) for m in each]), type=dtype)

    def constant(value: Any, dtype: pa.DataType) -> pa.Array:
        return pa.array([value] * (n * k), type=dtype)

    def by_run(values: tuple[Any, ...], dtype: pa.DataType) -> pa.Array:
        """Each row's value of the run that served it (one run: a constant)."""
        if served.index is None:
            return constant(values[0], dtype)
        return pa.array(values, type=dtype).take(pa.array(np.tile(served.index, k)))

    flat = np.tile(np.ascontiguousarray(x, dtype=np.float32).ravel(), k)
    width = x.shape[1]
    feature_lists = pa.ListArray.from_arrays(
        pa.array(np.arange(0, n * k * width + 1, width, dtype=np.int32)), pa.array(flat)
    )
    entity_offsets = np.concatenate([[0], np.cumsum([len(m) for m in missing_entities] * k)])
    entity_values = [name for _ in range(k) for row in missing_entities for name in row]
    sources = [e.source for e in batch.events]
    model_meta = {
        m.model_id: (m.role, models.champion if i == 0 else models.challengers[i - 1].scorer)
        for i, m in enumerate(each)
    }
    timings = {"feature_ms": (t1 - t0) * 1000, "model_ms": (t2 - t1) * 1000}
    columns: dict[str, pa.Array] = {
        "event_id": tiled("event_id"),
        "event_time": tiled(time_field).cast(_TS),
        "event_type": tiled("event_type"),
        "account_id": tiled("account_id"),
        "card_id": tiled("card_id"),
        "merchant_id": tiled("merchant_id"),
        "merchant_country": tiled("merchant_country"),
        "card_country": tiled("card_country"),
        "channel": tiled("channel"),
        "amount": tiled("amount"),
        "currency": tiled("currency"),
        "model_name": per_model(
            lambda m: np.full(n, model_meta[m.model_id][1].metadata.name, dtype=object), pa.string()
        ),
        "model_version": per_model(lambda m: np.full(n, m.model_id, dtype=object), pa.string()),
        "model_role": per_model(lambda m: np.full(n, m.role, dtype=object), pa.string()),
        "decided": per_model(lambda m: m.decided, pa.bool_()),
        "score": per_model(lambda m: m.scores, pa.float32()),
        "decision": per_model(lambda m: m.decisions.decision, pa.int8()),
        "human_review": per_model(lambda m: m.decisions.human_review, pa.bool_()),
        "missing_features": repeat(missing_count, pa.uint16()),
        "missing_entities": pa.ListArray.from_arrays(
            pa.array(entity_offsets, type=pa.int32()), pa.array(entity_values, type=pa.string())
        ),
        "features": feature_lists,
        "feature_run_id": by_run(served.run_ids, pa.string()),
        "feature_date": by_run(served.feature_dates, pa.date32()),
        "queue_ms": repeat(queue_ms, pa.float32()),
        "feature_ms": constant(timings["feature_ms"], pa.float32()),
        "model_ms": constant(timings["model_ms"], pa.float32()),
        "produced_at": repeat(produced, pa.int64()).cast(_TS),
        "ingested_at": repeat(ingested, pa.int64()).cast(_TS),
        "scored_at": constant(scored_at, pa.int64()).cast(_TS),
        "topic": repeat(np.array([s[0] for s in sources], dtype=object), pa.string()),
        "partition": repeat(np.array([s[1] for s in sources]), pa.uint16()),
        "offset": repeat(np.array([s[2] for s in sources]), pa.uint64()),
        "handoff_partition": repeat(
            np.array([e.handoff_partition for e in batch.events]), pa.uint16()
        ),
        "handoff_offset": repeat(np.array([e.handoff_offset for e in batch.events]), pa.uint64()),
        "worker_id": constant(worker_id, pa.string()),
        "run": constant(run, pa.string()),
    }
    decided_row = np.zeros(n, dtype=np.intp)
    for block, m in enumerate(each):
        rows = np.flatnonzero(m.decided)
        decided_row[rows] = block * n + rows
    feature_missing = np.zeros(x.shape, dtype=np.bool_)
    entity_columns = int(per_entity.sum())
    feature_missing[:, :entity_columns] = np.repeat(missing, per_entity, axis=1)
    return ScoredEvents(
        pa.table(columns), each, x, feature_missing, missing_entities, decided_row, timings,
        served.stale,
    )  # fmt: skip


def prediction_messages(
    batch: DecodedBatch, scored: ScoredEvents
) -> list[tuple[bytes | None, bytes]]:
    """One message per event for the decisions (``predictions``) topic: the acted-on
    decision, the challengers' scores, when the event was produced and decided.

    Delivery is at least once: after a crash a reader may see an event's decision twice,
    with the same event id and model version; it keys on them.
    """
    score, decision, review, model = scored.decided()
    decided_at = int(time.time() * 1000)
    challengers = [m for m in scored.models if m.role != "champion"]
    out: list[tuple[bytes | None, bytes]] = []
    dumps = orjson.dumps
    table = batch.table
    event_ids = table.column("event_id").to_pylist()
    for i, event in enumerate(batch.events):
        body: dict[str, Any] = {
            "event_id": event_ids[i],
            "model_version": model[i],
            "score": float(score[i]),
            "decision": DECISION_NAMES[decision[i]],
            "human_review": bool(review[i]),
            "missing_entities": scored.missing_entities[i],
            "produced_at_ms": event.produced_at_ms,
            "decided_at_ms": decided_at,
            "source": {
                "topic": event.source[0],
                "partition": event.source[1],
                "offset": event.source[2],
            },
        }
        if challengers:
            body["challengers"] = {m.model_id: float(m.scores[i]) for m in challengers}
        out.append((event.key, dumps(body)))
    return out


def review_messages(
    batch: DecodedBatch, scored: ScoredEvents, feature_names: Sequence[str]
) -> list[tuple[bytes | None, bytes]]:
    """Full context for each event routed to human review: event, every score, named features."""
    score, decision, review, model = scored.decided()
    out: list[tuple[bytes | None, bytes]] = []
    for i in np.flatnonzero(review):
        event = batch.events[i]
        body = {
            "event": batch.parsed[i] if batch.parsed else None,
            "decision": DECISION_NAMES[decision[i]],
            "score": float(score[i]),
            "model_version": model[i],
            "scores": {m.model_id: float(m.scores[i]) for m in scored.models},
            "missing_entities": scored.missing_entities[i],
            "features": dict(zip(feature_names, scored.features[i].tolist(), strict=True)),
            "source": {
                "topic": event.source[0],
                "partition": event.source[1],
                "offset": event.source[2],
            },
        }
        out.append((event.key, orjson.dumps(body)))
    return out
