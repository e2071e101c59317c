"""The marts' ``uses_only_past_events`` dbt test fails the nightly build of a leaking model.

A copy of the dbt project whose shared windowed model also pairs events *on* the feature
date with it: the build must fail on all three marts' leakage tests (merchant_features has
no days_since_last_txn, so only the test's recount of events from staging can catch it),
while the unbroken project builds the same lake cleanly.
"""

from __future__ import annotations

import shutil
from datetime import date, timedelta
from pathlib import Path

import pytest

from streams.errors import FeatureError
from streams.settings import Settings
from tests.integration.conftest import FEAST_STACK_MARKS

pytestmark = FEAST_STACK_MARKS

END = date(2024, 3, 1)
BOUNDARY = "on transactions.event_time < feature_dates.feature_date\n"
LEAK = "on transactions.event_time < feature_dates.feature_date + interval '1 day'\n"


def _project_copy(root: Path, to: Path) -> Path:
    shutil.copytree(root / "dbt_project", to, ignore=shutil.ignore_patterns("target", "logs"))
    return to


def test_a_leaking_mart_fails_its_use_only_past_events_test(root: Path, tmp_path: Path) -> None:
    from streams.nightly import _dbt_build
    from streams.simulate.history import write_history

    lake = tmp_path / "lake"
    write_history(str(lake), END, days=30, accounts=120, seed=3, fraud_rate=0.05)
    start, end = END - timedelta(days=3), END - timedelta(days=1)

    def build(project: Path, home: Path) -> None:
        settings = Settings(home=home, lake_dir=str(lake), dbt_project_dir=project)
        _dbt_build(settings, start, end, progress=lambda _: None)

    build(_project_copy(root, tmp_path / "clean"), tmp_path / "clean-home")

    leaky = _project_copy(root, tmp_path / "leaky")
    model = leaky / "models" / "intermediate" / "int_windowed_transactions.sql"
    sql = model.read_text()
    assert sql.count(BOUNDARY) == 1  # the boundary this test breaks is still written so
    model.write_text(sql.replace(BOUNDARY, LEAK))
    with pytest.raises(FeatureError) as failed:
        build(leaky, tmp_path / "leaky-home")
    message = str(failed.value)
    for mart in ("account", "card", "merchant"):
        assert f"test {mart}_features_use_only_past_events failed" in message, message


STATE_BOUNDARIES = (
    # the lake files a state reads: partitions before D
    """~ ") where lake_date < date '" ~ day ~ "'\"""",
    # their events: days before D
    "        and event_date < date '{{ day }}'\n",
    # a mart's days from its daily state
    "and event_date < date '{{ day }}'\n{%- endmacro %}",
)


def test_a_leaking_entity_state_fails_the_marts_use_only_past_events_tests(
    root: Path, tmp_path: Path
) -> None:
    """The same guard on a one-date run, which reads the entity states
    (macros/entity_state.sql) instead of the windowed model: states that also take the
    events of D fail all three marts' tests; the unbroken states build cleanly."""
    from streams.nightly import _dbt_build
    from streams.simulate.history import write_history

    lake = tmp_path / "lake"
    write_history(str(lake), END, days=30, accounts=120, seed=3, fraud_rate=0.05)
    night = END - timedelta(days=1)  # the lake holds events on D

    def build(project: Path, home: Path) -> None:
        settings = Settings(home=home, lake_dir=str(lake), dbt_project_dir=project)
        _dbt_build(settings, night, night, progress=lambda _: None)

    build(_project_copy(root, tmp_path / "clean"), tmp_path / "clean-home")

    leaky = _project_copy(root, tmp_path / "leaky")
    macros = leaky / "macros" / "entity_state.sql"
    sql = macros.read_text()
    for boundary in STATE_BOUNDARIES:  # each still written so, then up to D itself
        assert sql.count(boundary) == 1, boundary
        sql = sql.replace(boundary, boundary.replace(" < ", " <= "))
    macros.write_text(sql)
    with pytest.raises(FeatureError) as failed:
        build(leaky, tmp_path / "leaky-home")
    message = str(failed.value)
    for mart in ("account", "card", "merchant"):
        assert f"test {mart}_features_use_only_past_events failed" in message, message
