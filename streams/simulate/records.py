"""Raw Kafka records as producers would send them, valid and deliberately broken.

Each :class:`SimRecord` carries the bytes, key and headers to send, plus its ground
truth: ``expected`` is ``"accepted"`` or the DLQ reason the ingestion worker must
give (the constants of :mod:`streams.ingest`), and the fraud scenario if any.

Two clocks. By default (``rate=None``) event times are the population's simulated time
from ``start`` on (see :mod:`streams.simulate.stream`): replays, files, tests. A live
stream (``rate`` set) yields the same records in the same order, each one restamped on
the wall clock by :class:`streams.simulate.clock.LiveClock` (record ``k`` at
``start + k / rate``): a 60 s stream at any rate spans 60 s of event time. Labels keep
their place in that sequence: a label comes out when the simulated stream reaches its
label time (a chargeback 5-60 simulated days after its transaction) and is stamped
with the wall-clock slot where it comes out, so its ``label_time`` is always after its
transaction's ``event_time`` and the delay is compressed by the same factor as
everything else (at 1,000 records/s and 5,000 accounts a simulated day lasts about
3 s). The population's time of day is not carried over: in a live stream
``hour_of_day`` is the wall clock's.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import orjson

from streams.headers import EVENT_TYPE, SCHEMA_ID, SCHEMA_VERSION
from streams.ingest import (
    NOT_AN_OBJECT,
    NOT_JSON,
    NOT_UTF8,
    PAYLOAD_TOO_LARGE,
    SCHEMA_VIOLATION,
    TOO_DEEPLY_NESTED,
)
from streams.simulate.clock import Clock, LiveClock, rfc3339_one
from streams.simulate.drift import DriftInjection
from streams.simulate.exceptions import SimulationError
from streams.simulate.population import build_population
from streams.simulate.stream import SimEvent, simulate_events

ACCEPTED = "accepted"
# The registry's reason for an event type it does not know (no constant in ingest.py).
UNKNOWN_EVENT_TYPE = "unknown_event_type"
SCHEMA_IDS = {
    "transaction": "https://streamscore.dev/schemas/transaction.v1.json",
    "label": "https://streamscore.dev/schemas/label.v1.json",
}

Header = tuple[str, bytes]

# kind -> (expected DLQ reason, representable as one line of JSON text)
INVALID_KINDS: dict[str, tuple[str, bool]] = {
    "bad_currency": (SCHEMA_VIOLATION, True),
    "negative_amount": (SCHEMA_VIOLATION, True),
    "missing_field": (SCHEMA_VIOLATION, True),
    "wrong_type": (SCHEMA_VIOLATION, True),
    "bad_mcc": (SCHEMA_VIOLATION, True),
    "not_json": (NOT_JSON, False),
    "not_utf8": (NOT_UTF8, False),
    "not_an_object": (NOT_AN_OBJECT, True),
    "unknown_event_type": (UNKNOWN_EVENT_TYPE, True),
    "payload_too_large": (PAYLOAD_TOO_LARGE, True),
    "too_deeply_nested": (TOO_DEEPLY_NESTED, True),
}
# Schema violations are what real producers get wrong most often.
_KIND_WEIGHTS = {
    "bad_currency": 3,
    "negative_amount": 3,
    "missing_field": 3,
    "wrong_type": 3,
    "bad_mcc": 2,
    "not_json": 1,
    "not_utf8": 1,
    "not_an_object": 1,
    "unknown_event_type": 1,
    "payload_too_large": 1,
    "too_deeply_nested": 1,
}


@dataclass(frozen=True, slots=True)
class SimRecord:
    """One raw record to publish, with the verdict ingestion must reach."""

    key: bytes | None
    value: bytes
    headers: tuple[Header, ...]
    event_type: str  # the type the record claims to be
    expected: str  # ACCEPTED or a DLQ reason
    scenario: str | None = None  # fraud scenario (transactions) or fraud type (labels)
    invalid_kind: str | None = None
    event: dict[str, Any] | None = None  # the valid event, for valid records

    @property
    def valid(self) -> bool:
        return self.expected == ACCEPTED


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    """What to simulate; every field is checked when the iterator starts."""

    start: datetime
    accounts: int = 10_000
    seed: int = 7
    fraud_rate: float = 0.005
    invalid_fraction: float = 0.0
    labels: bool = True
    text_only: bool = False  # only invalid kinds that are one line of JSON text (JSONL output)
    max_payload_bytes: int = 256 * 1024
    max_nesting_depth: int = 32
    drift: DriftInjection | None = None  # injected from a known time on
    # None: the population's simulated clock from ``start``. A number: live, event times on
    # the wall clock at this many records/s (0: the clock's reading as each is made).
    rate: float | None = None

    def check(self) -> None:
        if self.rate is not None and not self.rate >= 0.0:
            raise SimulationError(f"live rate must be >= 0 records/s, got {self.rate}")
        if not 0.0 <= self.invalid_fraction < 1.0:
            raise SimulationError(
                f"invalid fraction must be in [0, 1), got {self.invalid_fraction}"
            )
        if self.max_payload_bytes < 1024 or self.max_nesting_depth < 2:
            raise SimulationError(
                f"limits too small: max_payload_bytes={self.max_payload_bytes} (>= 1024), "
                f"max_nesting_depth={self.max_nesting_depth} (>= 2)"
            )


def schema_headers(event_type: str, version: int = 1) -> tuple[Header, ...]:
    return (
        (SCHEMA_ID, SCHEMA_IDS[event_type].encode()),
        (EVENT_TYPE, event_type.encode()),
        (SCHEMA_VERSION, str(version).encode()),
    )


def valid_record(item: SimEvent) -> SimRecord:
    return SimRecord(
        key=item.event["account_id"].encode(),
        value=orjson.dumps(item.event),
        headers=schema_headers(item.event_type),
        event_type=item.event_type,
        expected=ACCEPTED,
        scenario=item.scenario,
        event=item.event,
    )


def invalid_record(kind: str, event: dict[str, Any], config: SimulationConfig) -> SimRecord:
    """A broken version of a valid transaction ``event`` (the original is left alone)."""
    reason, _ = INVALID_KINDS[kind]
    bad = dict(event)
    headers = schema_headers("transaction")
    if kind == "bad_currency":
        bad["currency"] = "EURO"
    elif kind == "negative_amount":
        bad["amount"] = -abs(float(bad["amount"]))
    elif kind == "missing_field":
        del bad["merchant_id"]
    elif kind == "wrong_type":
        bad["amount"] = f"{bad['amount']:.2f}"
    elif kind == "bad_mcc":
        bad["mcc"] = "54A1"
    elif kind == "unknown_event_type":
        bad["event_type"] = "refund"
        headers = ((EVENT_TYPE, b"refund"),)
    elif kind == "payload_too_large":
        bad["padding"] = "x" * config.max_payload_bytes
    value = orjson.dumps(bad)
    if kind == "not_json":
        value = value[: len(value) // 2]  # a producer that died mid-write
    elif kind == "not_utf8":
        value = value.replace(b'"merchant_id":"', b'"merchant_id":"\xff\xfe', 1)  # Latin-1 leak
    elif kind == "not_an_object":
        value = orjson.dumps([bad])
    elif kind == "too_deeply_nested":
        depth = config.max_nesting_depth + 5
        value = value[:-1] + b',"geo":' + b"[" * depth + b"]" * depth + b"}"
    return SimRecord(
        key=str(event["account_id"]).encode(),
        value=value,
        headers=headers,
        event_type="refund" if kind == "unknown_event_type" else "transaction",
        expected=reason,
        invalid_kind=kind,
    )


def restamped(item: SimEvent, time_ms: int) -> SimEvent:
    """``item`` with its event time (``event_time`` or ``label_time``) set to ``time_ms``."""
    name = "event_time" if item.event_type == "transaction" else "label_time"
    event = dict(item.event)
    event[name] = rfc3339_one(time_ms)  # same key, same place: only the time's bytes change
    return SimEvent(item.event_type, event, item.scenario, time_ms)


def simulate_records(config: SimulationConfig, clock: Clock = time.time) -> Iterator[SimRecord]:
    """Endless raw records: valid events in event-time order with invalid ones mixed in.

    An invalid record is a broken copy of the next transaction (which still follows,
    valid), inserted with the probability that makes ``invalid_fraction`` of all
    records invalid. Same config ⇒ same records, byte for byte; a live stream
    (``config.rate`` set) also needs the same ``clock`` readings, and differs from the
    simulated-clock stream of the same config only in its event times.
    """
    config.check()
    population = build_population(config.accounts, config.seed)
    rng = np.random.default_rng([config.seed, config.accounts, 2])
    kinds = [k for k in INVALID_KINDS if INVALID_KINDS[k][1] or not config.text_only]
    weights = np.array([_KIND_WEIGHTS[k] for k in kinds], dtype=np.float64)
    weights /= weights.sum()
    insert_p = config.invalid_fraction / (1.0 - config.invalid_fraction)
    live = LiveClock(config.rate, clock) if config.rate is not None else None
    for item in simulate_events(population, config.start, config.fraud_rate, config.labels):
        if item.event_type == "transaction" and insert_p and rng.random() < insert_p:
            kind = kinds[int(rng.choice(len(kinds), p=weights))]
            # A live invalid record takes its own slot: every record counts towards the rate.
            broken = item if live is None else restamped(item, live.next_ms())
            yield invalid_record(kind, broken.event, config)
        if live is not None:
            item = restamped(item, live.next_ms())
        if config.drift is not None and item.event_type == "transaction":
            drifted = config.drift.apply(item.event)
            if drifted is not item.event:
                item = dataclasses.replace(item, event=drifted)
        yield valid_record(item)
