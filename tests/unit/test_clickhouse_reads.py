"""A scoring process's ClickHouse reads: through the chDB holder's /sql, as on its own client."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest

from streams.clickhouse.reads import EndpointReads, latest_run, live_marks
from streams.errors import SinkError, StreamscoreError
from streams.features.runs import run_from_row
from streams.settings import Settings
from streams.web.token import issue_token

RUN_AS_JSON = [
    "run-7", "2026-11-30", "fraud_v1", "success", "2026-12-01 02:00:00", "2026-12-01 02:01:10",
    {"dbt": 10}, {"dbt": 1.5}, "",
]  # fmt: skip


class Endpoint:
    """The holder's POST /sql: fails ``down`` times (not up yet), then answers ``rows``."""

    def __init__(self, rows: list[list[Any]], down: int = 0, truncated: bool = False) -> None:
        self.rows, self.down, self.truncated = rows, down, truncated
        self.requests: list[tuple[str, Mapping[str, Any], str]] = []

    def __call__(
        self, url: str, request: Mapping[str, Any], token: str, timeout: float
    ) -> Mapping[str, Any]:
        self.requests.append((url, request, token))
        if self.down:
            self.down -= 1
            raise ConnectionRefusedError(111, "Connection refused")
        return {"rows": self.rows, "truncated": self.truncated}


def _reads(tmp_path: Path, endpoint: Endpoint, wait_s: float = 5.0) -> EndpointReads:
    settings = Settings(home=tmp_path, web_port=7001, sql_owner_port=7000)
    return EndpointReads(settings, wait_s=wait_s, post=endpoint, sleep=lambda _: None)


def test_the_live_run_is_read_through_the_holders_endpoint_with_its_token(tmp_path: Path) -> None:
    token = issue_token(tmp_path)
    endpoint = Endpoint([RUN_AS_JSON], down=3)  # the holder is still starting
    run = latest_run(_reads(tmp_path, endpoint), "fraud_v1")
    assert run is not None
    assert (run.run_id, run.nightly_date, run.finished_at) == (
        "run-7", date(2026, 11, 30), datetime(2026, 12, 1, 2, 1, 10)
    )  # fmt: skip
    assert run.rows == {"dbt": 10} and run.durations_s == {"dbt": 1.5}
    url, request, sent = endpoint.requests[-1]
    assert url == "http://127.0.0.1:7000/sql" and sent == token  # the holder's port, not ours
    assert request["parameters"] == {"service": "fraud_v1"}
    assert "{service:String}" in request["sql"] and "fraud_v1" not in request["sql"]
    assert len(endpoint.requests) == 4


def test_no_run_yet_is_none_and_marks_come_back_as_ints(tmp_path: Path) -> None:
    issue_token(tmp_path)
    assert latest_run(_reads(tmp_path, Endpoint([])), "fraud_v1") is None
    endpoint = Endpoint([[3, "raw", 0, 41], [3, "raw", 1, 7], [5, "raw", 2, 9]])
    marks = live_marks(_reads(tmp_path, endpoint), "transaction", [5, 3, 4])
    # One query for the whole assignment; a partition with no rows yet has empty marks.
    assert marks == {3: {("raw", 0): 41, ("raw", 1): 7}, 4: {}, 5: {("raw", 2): 9}}
    assert len(endpoint.requests) == 1
    assert endpoint.requests[0][1]["parameters"]["partitions"] == [3, 4, 5]


def test_a_holder_that_never_answers_is_a_sink_error_naming_where(tmp_path: Path) -> None:
    issue_token(tmp_path)
    endpoint = Endpoint([], down=10**9)
    with pytest.raises(SinkError, match=r"127\.0\.0\.1:7000/sql within 0 s"):
        live_marks(_reads(tmp_path, endpoint, wait_s=0.0), "transaction", [0])


def test_a_refusal_is_raised_at_once_and_a_cut_answer_is_never_taken(tmp_path: Path) -> None:
    issue_token(tmp_path)

    def refuse(url: str, request: Mapping[str, Any], token: str, timeout: float) -> Any:
        raise StreamscoreError("the worker refused the query: table does not exist")

    reads = EndpointReads(Settings(home=tmp_path), wait_s=60, post=refuse, sleep=_no_sleep)
    with pytest.raises(SinkError, match="table does not exist"):
        reads.rows("select 1", {})
    with pytest.raises(SinkError, match="too many rows"):
        _reads(tmp_path, Endpoint([["raw", 0, 1]], truncated=True)).rows("select 1", {})


def _no_sleep(_: float) -> None:
    raise AssertionError("a refusal must not be retried")


def test_a_row_from_clickhouse_itself_keeps_its_types() -> None:
    row = [
        "run-1", date(2026, 11, 29), "fraud_v1", "success", datetime(2026, 11, 30, 2),
        datetime(2026, 11, 30, 3), {"dbt": 3}, {"dbt": 0.5}, "",
    ]  # fmt: skip
    run = run_from_row(row)
    assert run.nightly_date == date(2026, 11, 29) and run.started_at == datetime(2026, 11, 30, 2)
