"""The live simulator: transactions and late labels as JSON dicts in event-time order.

Days come from the same vectorised model as the history (so the same seed gives the
same events for the same day), then rows become ``transaction.v1`` / ``label.v1``
dicts lazily. Event time is simulated time: it starts at ``start`` and advances at the
population's pace (about 0.5 transactions per account per day), independent of how
fast the caller consumes the iterator. Labels come out when event time reaches their
label time (chargebacks 5-60 days after the transaction). A live stream keeps this
sequence and restamps it on the wall clock (``streams.simulate.records``, ``clock``).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from streams.simulate.model import (
    CHANNELS,
    ENTRY_MODES,
    LABEL_SOURCES,
    SCENARIOS,
    SRC_CHARGEBACK,
    DayEvents,
    DayLabels,
    check_fraud_rate,
    simulate_day,
)
from streams.simulate.population import CATEGORIES, COUNTRIES, Population


@dataclass(frozen=True, slots=True)
class SimEvent:
    """A valid event and its ground truth: the fraud scenario (None for genuine)."""

    event_type: str  # "transaction" or "label"
    event: dict[str, Any]
    scenario: str | None
    time_ms: int


def rfc3339_ms(time_ms: np.ndarray) -> list[str]:
    """Epoch milliseconds → ``2026-03-06T14:03:27.512Z`` strings, vectorised."""
    text = np.datetime_as_string(time_ms.astype("datetime64[ms]"), unit="ms")
    return [t + "Z" for t in text.tolist()]


def transaction_dicts(pop: Population, events: DayEvents) -> list[SimEvent]:
    """Every row of a simulated day as a ``transaction.v1`` dict."""
    mcc = [c.mcc for c in CATEGORIES]
    codes = [c.code for c in COUNTRIES]
    currency = [c.currency for c in COUNTRIES]
    m_country = pop.merchant_country.tolist()
    m_category = pop.merchant_category.tolist()
    home = pop.home.tolist()
    out: list[SimEvent] = []
    columns = zip(
        events.event_id.view("S36").ravel().tolist(),
        rfc3339_ms(events.time_ms),
        events.time_ms.tolist(),
        events.account.tolist(),
        events.card.tolist(),
        events.merchant.tolist(),
        events.amount.tolist(),
        events.channel.tolist(),
        events.entry_mode.tolist(),
        events.device.tolist(),
        events.ip.tolist(),
        events.is_3ds.tolist(),
        events.card_present.tolist(),
        events.geo_lat.tolist(),
        events.geo_lon.tolist(),
        events.scenario.tolist(),
        strict=True,
    )
    for eid, when, ms, acc, card, m, amount, ch, em, dev, ip, tds, cp, lat, lon, sc in columns:
        event: dict[str, Any] = {
            "event_id": eid.decode(),
            "event_type": "transaction",
            "schema_version": 1,
            "event_time": when,
            "account_id": f"acc_{acc:06d}",
            "card_id": pop.card_ids[card],
            "merchant_id": pop.merchant_ids[m],
            "amount": amount,
            "currency": currency[home[acc]],
            "mcc": mcc[m_category[m]],
            "merchant_country": codes[m_country[m]],
            "card_country": codes[home[acc]],
            "channel": CHANNELS[ch],
            "entry_mode": ENTRY_MODES[em],
            "device_id": events.devices[dev] if dev >= 0 else None,
            "ip": events.ips[ip] if ip >= 0 else None,
            "is_3ds": tds,
            "card_present": cp,
        }
        if lat == lat:  # not NaN
            event["geo"] = {"lat": round(lat, 5), "lon": round(lon, 5)}
        out.append(SimEvent("transaction", event, SCENARIOS[sc - 1] if sc else None, ms))
    return out


def label_dicts(pop: Population, events: DayEvents, labels: DayLabels) -> list[SimEvent]:
    """Every label of a simulated day as a ``label.v1`` dict (in row order, not time order)."""
    out: list[SimEvent] = []
    columns = zip(
        labels.event_id.view("S36").ravel().tolist(),
        rfc3339_ms(labels.time_ms),
        labels.time_ms.tolist(),
        labels.row.tolist(),
        labels.is_fraud.tolist(),
        labels.source.tolist(),
        labels.fraud_type.tolist(),
        labels.chargeback_amount.tolist(),
        strict=True,
    )
    tx_ids = events.event_id.view("S36").ravel()
    for eid, when, ms, row, fraud, source, fraud_type, chargeback in columns:
        event: dict[str, Any] = {
            "event_id": eid.decode(),
            "event_type": "label",
            "schema_version": 1,
            "label_time": when,
            "transaction_id": tx_ids[row].decode(),
            "account_id": f"acc_{int(events.account[row]):06d}",
            "is_fraud": fraud,
            "source": LABEL_SOURCES[source],
            "fraud_type": SCENARIOS[fraud_type - 1] if fraud_type else None,
        }
        if source == SRC_CHARGEBACK:
            event["chargeback_amount"] = chargeback
        out.append(SimEvent("label", event, event["fraud_type"], ms))
    return out


def simulate_events(
    population: Population,
    start: datetime,
    fraud_rate: float = 0.005,
    labels: bool = True,
) -> Iterator[SimEvent]:
    """Endless transactions from ``start`` on, with labels interleaved at their label time."""
    check_fraud_rate(fraud_rate)
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    start_ms = int(start.timestamp() * 1000)
    pending: list[tuple[int, int, SimEvent]] = []  # (label time, tie-breaker, label)
    sequence = 0
    day = start.astimezone(UTC).date()
    while True:
        events, day_labels = simulate_day(population, day, fraud_rate)
        live = events.time_ms >= start_ms
        day_ids = set(events.event_id[live].view("S36").ravel().astype(str).tolist())
        if labels:
            for item in label_dicts(population, events, day_labels):
                # Labels of transactions before ``start`` belong to the history, not here.
                if item.time_ms >= start_ms and item.event["transaction_id"] in day_ids:
                    sequence += 1
                    heapq.heappush(pending, (item.time_ms, sequence, item))
        for item in transaction_dicts(population, events):
            if item.time_ms < start_ms:
                continue
            while pending and pending[0][0] <= item.time_ms:
                yield heapq.heappop(pending)[2]
            yield item
        day += timedelta(days=1)
