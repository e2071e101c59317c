"""A realistic N-day history of transactions and labels, written straight into the lake.

Vectorised: each UTC day is drawn by :func:`streams.simulate.model.simulate_day` as
numpy arrays and turned into an Arrow table with ``take`` over the population's
id columns, then handed to :class:`streams.lake.LakeWriter` (same layout and columns
as the live lake sink, provenance columns null). Labels are kept only when they have
arrived by the end of ``end_date``, as a lake snapshot taken that night would hold.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np
import pyarrow as pa

from streams.lake.schema import LABEL_SCHEMA, TRANSACTION_SCHEMA
from streams.lake.writer import LakeWriter
from streams.simulate.exceptions import SimulationError
from streams.simulate.model import (
    CHANNELS,
    ENTRY_MODES,
    LABEL_SOURCES,
    SCENARIOS,
    DayEvents,
    DayLabels,
    check_fraud_rate,
    day_start_ms,
    simulate_day,
)
from streams.simulate.population import CATEGORIES, COUNTRIES, Population, build_population


@dataclass(slots=True)
class HistoryReport:
    """What ``write_history`` put into the lake."""

    lake_root: str
    start_date: date
    end_date: date
    accounts: int
    rows: dict[str, int] = field(default_factory=dict)  # event type -> rows written
    fraud_by_scenario: dict[str, int] = field(default_factory=dict)
    files: int = 0
    seconds: float = 0.0

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


def _string_column(values: tuple[str, ...] | list[str]) -> pa.Array:
    return pa.array(values, type=pa.string())


def _uuid_column(ascii36: np.ndarray) -> pa.Array:
    """(n, 36) ASCII bytes → a string array without building Python strings."""
    n = len(ascii36)
    offsets = np.arange(0, 36 * (n + 1), 36, dtype=np.int32)
    data = np.ascontiguousarray(ascii36).reshape(-1)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))


def _nullable_take(values: pa.Array, index: np.ndarray) -> pa.Array:
    """``values[index]`` with null where ``index`` is -1."""
    indices = pa.array(index, mask=index < 0, type=pa.int64())
    return values.take(indices)


def _nan_to_null(values: np.ndarray) -> pa.Array:
    return pa.array(values, mask=np.isnan(values), type=pa.float64())


class TableBuilder:
    """Turns simulated days into lake tables; holds the population's id columns as Arrow."""

    def __init__(self, population: Population) -> None:
        pop = population
        self.population = pop
        self.account_ids = _string_column(list(pop.account_ids))
        self.card_ids = _string_column(pop.card_ids)
        self.merchant_ids = _string_column(pop.merchant_ids)
        self.mcc = _string_column([c.mcc for c in CATEGORIES]).take(pa.array(pop.merchant_category))
        codes = _string_column([c.code for c in COUNTRIES])
        self.merchant_country = codes.take(pa.array(pop.merchant_country))
        self.home_country = codes.take(pa.array(pop.home))
        self.home_currency = _string_column([c.currency for c in COUNTRIES]).take(
            pa.array(pop.home)
        )
        self.channels = _string_column(list(CHANNELS))
        self.entry_modes = _string_column(list(ENTRY_MODES))
        self.sources = _string_column(list(LABEL_SOURCES))
        self.fraud_types = _string_column(["", *SCENARIOS])

    def transactions(self, events: DayEvents) -> pa.Table:
        n = len(events)
        account = pa.array(events.account)
        merchant = pa.array(events.merchant)
        devices = _string_column(events.devices)
        ips = _string_column(events.ips)
        columns = {
            "event_id": _uuid_column(events.event_id),
            "event_time": pa.array(
                events.time_ms * 1000, type=TRANSACTION_SCHEMA.field("event_time").type
            ),
            "account_id": self.account_ids.take(account),
            "card_id": self.card_ids.take(pa.array(events.card)),
            "merchant_id": self.merchant_ids.take(merchant),
            "amount": pa.array(events.amount, type=pa.float64()),
            "currency": self.home_currency.take(account),
            "mcc": self.mcc.take(merchant),
            "merchant_country": self.merchant_country.take(merchant),
            "card_country": self.home_country.take(account),
            "channel": self.channels.take(pa.array(events.channel)),
            "entry_mode": self.entry_modes.take(pa.array(events.entry_mode)),
            "device_id": _nullable_take(devices, events.device),
            "ip": _nullable_take(ips, events.ip),
            "is_3ds": pa.array(events.is_3ds, type=pa.bool_()),
            "card_present": pa.array(events.card_present, type=pa.bool_()),
            "geo_lat": _nan_to_null(events.geo_lat),
            "geo_lon": _nan_to_null(events.geo_lon),
            "geo_accuracy_m": pa.nulls(n, pa.float64()),
            "merchant_name": pa.nulls(n, pa.string()),
            "wallet": pa.nulls(n, pa.string()),
            "schema_version": pa.array(np.ones(n, dtype=np.int16)),
            "source_topic": pa.nulls(n, pa.string()),
            "source_partition": pa.nulls(n, pa.int32()),
            "source_offset": pa.nulls(n, pa.int64()),
        }
        return pa.Table.from_arrays(list(columns.values()), schema=TRANSACTION_SCHEMA)

    def labels(self, events: DayEvents, labels: DayLabels) -> pa.Table:
        n = len(labels)
        fraud_type = pa.array(labels.fraud_type, mask=labels.fraud_type == 0, type=pa.int64())
        columns = {
            "event_id": _uuid_column(labels.event_id),
            "label_time": pa.array(
                labels.time_ms * 1000, type=LABEL_SCHEMA.field("label_time").type
            ),
            "transaction_id": _uuid_column(events.event_id[labels.row]),
            "account_id": self.account_ids.take(pa.array(events.account[labels.row])),
            "is_fraud": pa.array(labels.is_fraud, type=pa.bool_()),
            "source": self.sources.take(pa.array(labels.source)),
            "fraud_type": self.fraud_types.take(fraud_type),
            "chargeback_amount": _nan_to_null(labels.chargeback_amount),
            "schema_version": pa.array(np.ones(n, dtype=np.int16)),
            "source_topic": pa.nulls(n, pa.string()),
            "source_partition": pa.nulls(n, pa.int32()),
            "source_offset": pa.nulls(n, pa.int64()),
        }
        return pa.Table.from_arrays(list(columns.values()), schema=LABEL_SCHEMA)


def write_history(
    lake_root: str,
    end_date: date,
    days: int = 90,
    accounts: int = 10_000,
    seed: int = 7,
    fraud_rate: float = 0.005,
    progress: Callable[[int, int], None] | None = None,
) -> HistoryReport:
    """Write ``days`` days of transactions ending with ``end_date`` (UTC) and their labels.

    Rewriting the same arguments replaces the same files (batch ids are derived from
    seed, size and date). ``progress(done_days, days)`` is called after each day.
    """
    if days < 1:
        raise SimulationError(f"days must be at least 1, got {days}")
    check_fraud_rate(fraud_rate)
    started = time.perf_counter()
    population = build_population(accounts, seed)
    builder = TableBuilder(population)
    writer = LakeWriter(lake_root)
    start_date = end_date - timedelta(days=days - 1)
    cutoff_ms = day_start_ms(end_date + timedelta(days=1))
    report = HistoryReport(lake_root, start_date, end_date, accounts)
    report.rows = {"transaction": 0, "label": 0}
    report.fraud_by_scenario = dict.fromkeys(SCENARIOS, 0)
    label_tables: list[pa.Table] = []
    tag = f"history-s{seed}-a{accounts}-r{fraud_rate:g}"
    for i in range(days):
        day = start_date + timedelta(days=i)
        events, labels = simulate_day(population, day, fraud_rate)
        written = writer.write_batch(
            "transaction", builder.transactions(events), batch_id=f"{tag}-{day.isoformat()}"
        )
        report.rows["transaction"] += written.rows
        report.files += len(written.files)
        counts = np.bincount(events.scenario, minlength=len(SCENARIOS) + 1)
        for code, name in enumerate(SCENARIOS, start=1):
            report.fraud_by_scenario[name] += int(counts[code])
        arrived = labels.time_ms < cutoff_ms
        if arrived.any():
            kept = DayLabels(
                row=labels.row[arrived],
                time_ms=labels.time_ms[arrived],
                is_fraud=labels.is_fraud[arrived],
                source=labels.source[arrived],
                fraud_type=labels.fraud_type[arrived],
                chargeback_amount=labels.chargeback_amount[arrived],
                event_id=labels.event_id[arrived],
            )
            label_tables.append(builder.labels(events, kept))
        if progress is not None:
            progress(i + 1, days)
    if label_tables:
        # One batch: the writer splits it by label date into one file per day.
        written = writer.write_batch(
            "label",
            pa.concat_tables(label_tables),
            batch_id=f"{tag}-labels-{end_date.isoformat()}-{days}d",
        )
        report.rows["label"] = written.rows
        report.files += len(written.files)
    report.seconds = time.perf_counter() - started
    return report
