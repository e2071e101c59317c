"""Errors of the simulator, all under :class:`streams.errors.StreamscoreError`."""

from __future__ import annotations

from streams.errors import StreamscoreError


class SimulationError(StreamscoreError):
    """A simulator argument is out of range (fraud rate, population size, duration...)."""
