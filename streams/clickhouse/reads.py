"""What a scoring process reads from ClickHouse, directly or through the process holding chDB.

A scoring process reads two things: which nightly feature run is live (``feature_runs``)
and, when a partition is assigned, the highest raw offsets already written (so it does
not re-send decisions the sink has stored). It writes nothing to ClickHouse: its rows go
to the sink stage on Kafka.

* :class:`GatewayReads` asks ClickHouse itself: a ClickHouse server, or chDB in the
  process that holds the data path (the single-process worker).
* :class:`EndpointReads` asks the process that holds chDB (the sink process of
  ``streamscore worker --scorers N``) through its ``POST /sql``, with the token it writes
  to ``<home>/sql.token``. chDB lets one process open a data path; this is how the others
  read it. While that process (re)starts, a read waits up to ``wait_s`` and then raises
  :class:`~streams.errors.SinkError`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from streams.clickhouse.client import quote_identifier
from streams.errors import ConfigError, SinkError, StreamscoreError
from streams.features.runs import NightlyRun, latest_run_sql, run_from_row

if TYPE_CHECKING:
    from streams.clickhouse.gateway import ClickHouseGateway
    from streams.settings import Settings

__all__ = [
    "ClickHouseReads",
    "EndpointReads",
    "GatewayReads",
    "latest_run",
    "live_marks",
    "reads_for",
]

RawPartition = tuple[str, int]
Rows = Sequence[Sequence[Any]]
Post = Callable[[str, Mapping[str, Any], str, float], Mapping[str, Any]]


class ClickHouseReads(Protocol):
    """Rows of one read-only query with server-bound ``{name:Type}`` parameters."""

    database: str

    def rows(self, sql: str, parameters: Mapping[str, Any]) -> Rows: ...


class GatewayReads:
    """Reads on this process's own ClickHouse client."""

    def __init__(self, gateway: ClickHouseGateway) -> None:
        self.gateway = gateway
        self.database = gateway.database

    def rows(self, sql: str, parameters: Mapping[str, Any]) -> Rows:
        return self.gateway.query(sql, parameters).result_rows


class EndpointReads:
    """Reads through the chDB holder's ``POST /sql`` (read-only, checked, limited)."""

    def __init__(
        self,
        settings: Settings,
        *,
        wait_s: float = 60.0,
        post: Post | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        from streams.sql.route import post_query

        self.database = settings.clickhouse_database
        self.url = f"http://127.0.0.1:{settings.sql_owner_port or settings.web_port}/sql"
        self.home = settings.home
        self.wait_s = wait_s
        self._post = post or post_query
        self._sleep = sleep

    def rows(self, sql: str, parameters: Mapping[str, Any]) -> Rows:
        from streams.sql.session import MAX_ROWS_LIMIT
        from streams.web.token import read_token

        request = {
            "sql": sql, "parameters": dict(parameters), "format": "json", "max_rows": MAX_ROWS_LIMIT
        }  # fmt: skip
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                # Read each time: a restarted holder writes a new token.
                payload = self._post(self.url, request, read_token(self.home), 30.0)
            except (OSError, ConfigError) as exc:  # not up yet, or no token written yet
                if time.monotonic() >= deadline:
                    raise SinkError(
                        f"no answer from the process holding chDB at {self.url} within "
                        f"{self.wait_s:.0f} s ({exc}); is the sink process "
                        "(`streamscore worker`) running with this STREAMSCORE_HOME?"
                    ) from exc
                self._sleep(0.25)
                continue
            except StreamscoreError as exc:  # it answered, and refused
                raise SinkError(str(exc)) from exc
            if payload.get("truncated"):
                raise SinkError(f"{self.url} cut the answer to {sql[:80]!r}: too many rows")
            return [list(row) for row in payload["rows"]]


def reads_for(settings: Settings, gateway: ClickHouseGateway | None) -> ClickHouseReads:
    """The process's own client when it has one, else the chDB holder's endpoint."""
    return GatewayReads(gateway) if gateway is not None else EndpointReads(settings)


def latest_run(reads: ClickHouseReads, feature_service: str) -> NightlyRun | None:
    """The successful run with the newest nightly date (newest finish among reruns)."""
    rows = reads.rows(latest_run_sql(reads.database), {"service": feature_service})
    return run_from_row(rows[0]) if rows else None


def live_marks(
    reads: ClickHouseReads, event_type: str, partitions: Sequence[int]
) -> dict[int, dict[RawPartition, int]]:
    """Per valid partition in ``partitions`` (each one present): the highest raw offset per
    raw partition among the live rows read from it. One query for a whole assignment."""
    rows = reads.rows(
        "select handoff_partition, topic, partition, max(offset) "  # noqa: S608 - checked identifiers
        f"from {quote_identifier(reads.database)}.predictions "
        "where run = 'live' and event_type = {event_type:String} "
        "and handoff_partition in {partitions:Array(UInt16)} "
        "group by handoff_partition, topic, partition",
        {"event_type": event_type, "partitions": sorted(set(partitions))},
    )
    marks: dict[int, dict[RawPartition, int]] = {int(p): {} for p in partitions}
    for handoff, topic, partition, offset in rows:
        marks.setdefault(int(handoff), {})[(str(topic), int(partition))] = int(offset)
    return marks
