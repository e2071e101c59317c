"""Realistic, seeded card traffic: a live stream of raw records and a vectorised lake history.

``population`` (who and where), ``model`` (one day, vectorised, with fraud ground
truth), ``stream`` (events as JSON dicts on the simulated clock), ``clock`` (the live
clock: the same events stamped on the wall clock at a rate), ``records`` (raw Kafka
records, valid and invalid with the expected DLQ reason), ``history`` (N days straight
into the lake).
"""

from __future__ import annotations

from streams.simulate.clock import LiveClock
from streams.simulate.exceptions import SimulationError
from streams.simulate.history import HistoryReport, write_history
from streams.simulate.model import SCENARIOS, simulate_day
from streams.simulate.population import Population, build_population
from streams.simulate.records import (
    ACCEPTED,
    INVALID_KINDS,
    SimRecord,
    SimulationConfig,
    simulate_records,
)
from streams.simulate.stream import SimEvent, simulate_events

__all__ = [
    "ACCEPTED",
    "INVALID_KINDS",
    "SCENARIOS",
    "HistoryReport",
    "LiveClock",
    "Population",
    "SimEvent",
    "SimRecord",
    "SimulationConfig",
    "SimulationError",
    "build_population",
    "simulate_day",
    "simulate_events",
    "simulate_records",
    "write_history",
]
