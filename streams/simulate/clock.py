"""The live clock: event times of a live stream on the wall clock, at the requested rate.

The population's own pace is slow (about 0.5 transactions per account per day): sent at
1,000 records/s, a minute of traffic would span weeks of simulated time, and everything
downstream that windows by event time (drift, features) would see weeks go by in a
minute. A live stream instead keeps the population's sequence of records (who buys what,
in which order, the fraud incidents, the share of invalid records) and stamps them on
the wall clock: record ``k`` at ``start + k / rate``, ``start`` being the clock's reading
when the first record is stamped. The population's activity is thus compressed to the
requested rate, and N records span N / rate seconds of event time.

The times are a schedule, not readings: a sender that paces itself against the same
start (``streamscore simulate --rate``, the demo) sends each record at about its event
time, and one that falls behind sends records whose event time has passed, as a real
producer with a backlog does. Same clock start, same times: with a fake clock the stream
is reproducible. ``rate`` 0 (as fast as the caller takes them) has no schedule, so each
record gets the clock's reading when it is stamped, never earlier than the previous one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from streams.simulate.exceptions import SimulationError

__all__ = ["LiveClock", "rfc3339_one"]

Clock = Callable[[], float]  # seconds since the epoch, like time.time


class LiveClock:
    """Hands out event times in epoch milliseconds, one per record, never decreasing."""

    def __init__(self, rate: float, clock: Clock = time.time) -> None:
        if not rate >= 0.0:  # also refuses NaN
            raise SimulationError(f"live rate must be >= 0 records/s, got {rate}")
        self.rate = rate
        self._clock = clock
        self._start_ms: int | None = None
        self._last_ms = 0
        self._stamped = 0

    @property
    def start_ms(self) -> int | None:
        """The first record's event time (None before the first stamp)."""
        return self._start_ms

    def next_ms(self) -> int:
        """The event time of the next record."""
        if self._start_ms is None:
            self._start_ms = self._last_ms = round(self._clock() * 1000)
        if self.rate > 0:
            # From the start, not from the previous stamp: no rounding drift over hours.
            stamp = self._start_ms + int(self._stamped * 1000 / self.rate)
        else:
            stamp = max(self._last_ms, round(self._clock() * 1000))
        self._stamped += 1
        self._last_ms = stamp
        return stamp


def rfc3339_one(time_ms: int) -> str:
    """Epoch milliseconds → ``2026-03-06T14:03:27.512Z`` (as ``stream.rfc3339_ms`` writes)."""
    seconds, millis = divmod(time_ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"
