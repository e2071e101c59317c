"""One-date nightly runs read the entity states (dbt_project/macros/entity_state.sql) and
give the marts the windowed events give, bit for bit, night after night.

One lake, two dbt homes: ``kept`` runs night after night with its states; each time a
fresh ``recomputed`` home builds the same date from the windowed events
(``entity_state: false``). Between nights the lake changes the ways a real one does: a
late file lands in an old partition (and in the newest one), an earlier night is rerun,
a file is removed. Every mart row at the date must be the same in both, and the kept
home must have taken the way the test expects (merge or rebuild), or it would not be
testing the states at all.
"""

from __future__ import annotations

import uuid
from datetime import date, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from streams.settings import Settings
from tests.integration.conftest import FEAST_STACK_MARKS

pytestmark = FEAST_STACK_MARKS

END = date(2024, 3, 1)  # the last simulated day
MARTS = ("account_features", "card_features", "merchant_features")


def _build(lake: Path, home: Path, day: date, *, entity_state: bool = True) -> list[str]:
    """One dbt build of ``day``; the states' plan lines it logged."""
    from streams.nightly import _dbt_build

    settings = Settings(home=home, lake_dir=str(lake))
    lines: list[str] = []
    _dbt_build(settings, day, day, progress=lines.append, extra_vars={"entity_state": entity_state})
    return [line for line in lines if "lake partitions to read" in line]


def _compare(kept: Path, recomputed: Path, day: date) -> dict[str, int]:
    """Rows per mart at ``day``; fails on any row in one home and not in the other."""
    rows: dict[str, int] = {}
    with duckdb.connect() as db:
        db.execute(f"attach '{kept / 'features.duckdb'}' as kept (read_only)")
        db.execute(f"attach '{recomputed / 'features.duckdb'}' as recomputed (read_only)")
        for mart in MARTS:
            at = f"where feature_date = date '{day.isoformat()}'"
            a = f"select * from kept.main.{mart} {at}"
            b = f"select * from recomputed.main.{mart} {at}"
            only_kept = db.execute(f"select count(*) from ({a} except all {b})").fetchall()
            only_recomputed = db.execute(f"select count(*) from ({b} except all {a})").fetchall()
            count = db.execute(f"select count(*) from ({a})").fetchall()[0][0]
            assert (only_kept[0][0], only_recomputed[0][0]) == (0, 0), (mart, day)
            rows[mart] = int(count)
    return rows


def _late_file(lake: Path, partition: date, rows: int, seed: int) -> Path:
    """A new lake file in ``partition``: ``rows`` of its events again, as new events (new
    ids, other amounts, later in the day), the way a late batch lands."""
    folder = lake / "transaction" / f"event_date={partition.isoformat()}"
    source = pq.read_table(sorted(folder.glob("*.parquet"))[0]).slice(seed, rows)
    ids = pa.array([str(uuid.UUID(int=seed * 1_000_003 + i)) for i in range(rows)])
    late = source.set_column(source.schema.get_field_index("event_id"), "event_id", ids)
    amount = late.schema.get_field_index("amount")
    late = late.set_column(amount, "amount", pc.multiply(late.column("amount"), 3.0))
    path = folder / f"part-late-{seed}.parquet"
    pq.write_table(late, path)
    return path


@pytest.mark.timeout(900)
def test_the_entity_states_give_the_marts_of_the_windowed_events(tmp_path: Path) -> None:
    from streams.simulate.history import write_history

    lake = tmp_path / "lake"
    write_history(str(lake), END, days=40, accounts=150, seed=11, fraud_rate=0.05)
    kept = tmp_path / "kept"
    night = END + timedelta(days=1)

    def check(day: date, *, expect: str) -> dict[str, int]:
        plans = _build(lake, kept, day)
        assert len(plans) == 5 and all(f": {expect}, " in line for line in plans), plans
        recomputed = tmp_path / f"recomputed-{uuid.uuid4().hex[:8]}"
        assert _build(lake, recomputed, day, entity_state=False) == []
        return _compare(kept, recomputed, day)

    # the first night builds the states from the lake, the next ones merge one day
    first = check(night - timedelta(days=2), expect="rebuild")
    assert min(first.values()) > 0
    check(night - timedelta(days=1), expect="merge")
    check(night, expect="merge")

    # late files: one 20 days back (inside the account's windows, outside the card's),
    # one in the newest partition; then the same night again
    _late_file(lake, END - timedelta(days=20), rows=40, seed=1)
    _late_file(lake, END, rows=40, seed=2)
    assert check(night, expect="merge") != {}

    # an earlier night rerun: its states cannot be taken back, so they are rebuilt; the
    # night after it merges forward again
    check(night - timedelta(days=3), expect="rebuild")
    check(night, expect="merge")

    # a file gone from the lake: rebuilt
    removed = _late_file(lake, END - timedelta(days=2), rows=10, seed=3)
    check(night, expect="merge")
    removed.unlink()
    assert min(check(night, expect="rebuild").values()) > 0
