"""The nightly pipeline end to end on a small simulated lake: real dbt, DuckDB, Feast and chDB."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from streams.errors import FeatureError
from streams.settings import Settings
from tests.integration.conftest import FEAST_STACK_MARKS, local_redis

pytestmark = FEAST_STACK_MARKS

END = date(2024, 3, 1)  # last simulated day
D = END - timedelta(days=1)  # the nightly date under test; END holds events "after" D


def _settings(home: Path, lake: Path, chdb: Path) -> Settings:
    return Settings(home=home, lake_dir=str(lake), clickhouse_dsn=f"chdb://{chdb}")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from streams.clickhouse import connect
    from streams.nightly import run_nightly
    from streams.simulate.history import write_history

    root = tmp_path_factory.mktemp("nightly")
    lake = root / "lake"
    write_history(str(lake), END, days=100, accounts=200, seed=11, fraud_rate=0.02)
    settings = _settings(root / "home", lake, root / "chdb")
    client = connect(settings)
    run = run_nightly(settings, D, start_date=D - timedelta(days=2), client=client)
    yield {"root": root, "lake": lake, "settings": settings, "client": client, "run": run}
    client.close()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def redis_world(world: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The same lake and nightly date, materialised into a real redis-server (started by
    the project's code) instead of SQLite; its runs in a ClickHouse database of its own."""
    from streams.nightly import run_nightly

    root = world["root"]
    with local_redis(root / "redis-home") as fields:
        settings = _settings(root / "redis-home", world["lake"], root / "chdb").model_copy(
            update={**fields, "clickhouse_database": "redis_world"}
        )
        world["client"].command("create database if not exists redis_world")
        run = run_nightly(settings, D, start_date=D - timedelta(days=2), client=world["client"])
        yield {**world, "settings": settings, "run": run, "source": "redis"}


@pytest.fixture(params=["sqlite", "redis"])
def served(request: pytest.FixtureRequest, world: dict[str, Any]) -> dict[str, Any]:
    """The world whose online store is ``sqlite`` (served from the run's export) or
    ``redis`` (served from Redis): the skew tests must pass on both alike."""
    if request.param == "sqlite":
        return {**world, "source": "export"}
    return dict(request.getfixturevalue("redis_world"))


def _mart(settings: Settings, model: str, day: date) -> pa.Table:
    import duckdb

    con = duckdb.connect(str(settings.home / "features.duckdb"), read_only=True)
    try:
        key = model.split("_")[0] + "_id"
        return con.sql(
            f"select * from {model} where feature_date = ? order by {key}", params=[day]
        ).to_arrow_table()
    finally:
        con.close()


def test_nightly_builds_materialises_and_records(world: dict[str, Any]) -> None:
    run, settings, client = world["run"], world["settings"], world["client"]
    assert run.ok and run.nightly_date == D
    assert set(run.rows) == {"account", "card", "merchant"} and min(run.rows.values()) > 0
    assert {"dbt_build", "export", "feast_apply", "materialize"} <= set(run.durations_s)
    recorded = client.query(
        "select status, rows from streamscore.feature_runs where run_id = {r:String}",
        parameters={"r": run.run_id},
    ).result_rows
    assert recorded == [("success", run.rows)]
    # the three backfilled dates are all in the marts
    for day in (D - timedelta(days=2), D):
        assert _mart(settings, "account_features", day).num_rows > 0


def test_feast_online_store_holds_the_same_values(served: dict[str, Any]) -> None:
    from streams.features.online import OnlineFeatures
    from streams.features.runs import latest_successful_run
    from streams.features.store import feature_store

    settings, client = served["settings"], served["client"]
    database = settings.clickhouse_database
    online = OnlineFeatures(
        settings, latest_run=lambda: latest_successful_run(client, database, "fraud_v1")
    )
    assert online.refresh_if_newer() and online.feature_date == D
    assert online.served_source == served["source"]
    assert not online.refresh_if_newer()  # same run: nothing to swap
    accounts = _mart(settings, "account_features", D).column("account_id").to_pylist()[:5]
    names = [f for f in online.entity_feature_names if f.startswith("account__")]
    response = (
        feature_store(settings)
        .get_online_features(
            features=[n.replace("__", ":", 1) for n in names],
            entity_rows=[{"account_id": a} for a in accounts],
            full_feature_names=True,
        )
        .to_dict()
    )
    feast_matrix = np.column_stack([np.asarray(response[n], dtype=np.float32) for n in names])
    ours, missing = online.lookup(accounts, ["nope"] * 5, ["nope"] * 5)
    assert np.array_equal(ours[:, : len(names)], feast_matrix)
    assert missing.tolist() == [[False, True, True]] * 5


def test_rerunning_a_date_gives_the_same_features(world: dict[str, Any]) -> None:
    from streams.features.paths import export_path
    from streams.nightly import run_nightly

    settings = world["settings"]
    before = pq.read_table(export_path(settings, "merchant_features", D))
    rows_before = _mart(settings, "merchant_features", D).num_rows
    again = run_nightly(settings, D, client=world["client"])
    assert again.ok and again.rows == world["run"].rows and again.run_id != world["run"].run_id
    assert pq.read_table(export_path(settings, "merchant_features", D)).equals(before)
    assert _mart(settings, "merchant_features", D).num_rows == rows_before


def test_features_at_d_ignore_events_on_and_after_d(world: dict[str, Any]) -> None:
    from streams.nightly import run_nightly

    root, lake, settings = world["root"], world["lake"], world["settings"]
    leaky = root / "leaky-lake"
    shutil.copytree(lake, leaky)
    # Loud events on D and later for every known account, and a fraud label on D for an
    # event before D: none of it may change any feature at D.
    known = pq.read_table(
        next((lake / "transaction").glob(f"event_date={D - timedelta(days=1)}/*.parquet"))
    )

    def replace(table: pa.Table, name: str, values: list[Any]) -> pa.Table:
        i = table.schema.get_field_index(name)
        return table.set_column(
            i, table.schema.field(i), pa.array(values, table.schema.field(i).type)
        )

    n = known.num_rows
    for k, (day, hour) in enumerate([(D, 0), (D, 13), (D + timedelta(days=5), 1)]):
        extra = replace(
            known, "event_id", [f"00000000-0000-4000-800{k}-{i:012d}" for i in range(n)]
        )
        extra = replace(
            extra, "event_time", [datetime(day.year, day.month, day.day, hour, tzinfo=UTC)] * n
        )
        extra = replace(extra, "amount", [99_999.0] * n)
        part = leaky / "transaction" / f"event_date={day}"
        part.mkdir(parents=True, exist_ok=True)
        pq.write_table(extra, part / f"leak-{k}.parquet")
    labels = pq.read_table(next((lake / "label").glob("*/*.parquet")))
    label_dir = leaky / "label" / f"event_date={D}"
    label_dir.mkdir(parents=True, exist_ok=True)
    fake = replace(labels.slice(0, 1), "event_id", ["00000000-0000-4000-a000-000000000000"])
    fake = replace(fake, "transaction_id", [known.column("event_id")[0].as_py()])
    fake = replace(fake, "is_fraud", [True])
    fake = replace(fake, "label_time", [datetime(D.year, D.month, D.day, tzinfo=UTC)])
    pq.write_table(fake, label_dir / "leak.parquet")

    # Its runs go to a database of their own: recorded in the world's feature_runs, a leaky
    # run (for D + 1) would be the latest run that later tests serve, with no exports there.
    leaky_settings = _settings(root / "leaky-home", leaky, root / "chdb").model_copy(
        update={"clickhouse_database": "leaky_world"}
    )
    world["client"].command("create database if not exists leaky_world")
    run = run_nightly(leaky_settings, D, client=world["client"])
    assert run.ok
    for model in ("account_features", "card_features", "merchant_features"):
        assert _mart(leaky_settings, model, D).equals(_mart(settings, model, D)), model
    # ...while the features of the day after do see them (the test can fail)
    after = run_nightly(leaky_settings, D + timedelta(days=1), client=world["client"])
    assert after.ok
    assert (
        pc.max(
            _mart(leaky_settings, "account_features", D + timedelta(days=1)).column("amount_max_1d")
        ).as_py()
        == 99_999.0
    )


def test_serving_lookup_equals_training_set(served: dict[str, Any]) -> None:
    import duckdb

    from streams.features.online import OnlineFeatures
    from streams.features.runs import latest_successful_run
    from streams.features.training import build_training_set

    settings = served["settings"]
    start = datetime(D.year, D.month, D.day, tzinfo=UTC)
    training = build_training_set(settings, start - timedelta(days=2), start + timedelta(days=1))
    names = training.schema.names
    assert names[:3] == ["event_id", "event_time", "is_fraud"]
    database = settings.clickhouse_database
    online = OnlineFeatures(
        settings, latest_run=lambda: latest_successful_run(served["client"], database, "fraud_v1")
    )
    assert list(names[3:]) == list(online.layout.spec.names)
    assert training.schema.field("is_fraud").type == pa.int8()
    assert pc.sum(training.column("is_fraud")).as_py() >= 0
    on_d = training.filter(pc.greater_equal(training.column("event_time"), pa.scalar(start)))
    assert on_d.num_rows > 0

    assert online.refresh_if_newer() and online.feature_date == D  # the nightly run, served
    assert online.served_source == served["source"]  # from its export, or from Redis
    con = duckdb.connect(str(settings.home / "features.duckdb"), read_only=True)
    try:
        events = con.sql(
            "select * from stg_transactions where event_date = ? order by event_time, event_id",
            params=[D],
        ).to_arrow_table()
    finally:
        con.close()
    served, missing = online.vectors(events)
    trained = np.column_stack([on_d.column(n).to_numpy() for n in names[3:]])
    assert events.column("event_id").equals(on_d.column("event_id"))
    assert served.dtype == np.float32 and np.array_equal(served, trained)
    assert missing.any(axis=1).sum() < len(missing)  # mostly known entities


def test_training_set_refuses_days_without_nightly_features(world: dict[str, Any]) -> None:
    from streams.features.training import build_training_set

    with pytest.raises(FeatureError, match="backfill"):
        build_training_set(world["settings"], datetime(2024, 1, 1), datetime(2024, 1, 5))


def test_dbt_unit_tests_pass(world: dict[str, Any]) -> None:
    from streams.features.paths import dbt_state_dir
    from streams.nightly import _dbt_executable, dbt_environment

    settings = world["settings"]
    state = dbt_state_dir(settings)
    result = subprocess.run(
        [
            _dbt_executable(), "test", "--select", "test_type:unit",
            "--project-dir", str(settings.dbt_project_dir),
            "--profiles-dir", str(settings.dbt_project_dir),
            "--target-path", str(state / "target-unit"), "--log-path", str(state / "logs"),
        ],
        env=dbt_environment(settings), capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:]
    # int_windowed_transactions, int_known_frauds, int_account_distinct (windowed events and
    # entity state), int_merchant_distinct (both), account_features and merchant_features
    assert "PASS=8" in result.stdout


def test_a_failing_dbt_test_blocks_materialisation(world: dict[str, Any]) -> None:
    from click.testing import CliRunner

    from streams.cli.main import cli
    from streams.features.paths import export_path

    root, lake = world["root"], world["lake"]
    home = root / "bad-home"
    shutil.copytree(world["settings"].home, home)
    bad = root / "bad-lake"
    shutil.copytree(lake, bad)
    part = next((bad / "transaction").glob(f"event_date={D - timedelta(days=3)}/*.parquet"))
    table = pq.read_table(part)
    amounts = table.column("amount").to_pylist()
    amounts[0] = -5.0
    pq.write_table(
        table.set_column(table.schema.get_field_index("amount"), "amount", pa.array(amounts)), part
    )

    settings = _settings(home, bad, root / "chdb")
    online_db = home / "feast" / "online.db"
    exported = export_path(settings, "account_features", D)
    stamps = (online_db.stat().st_mtime_ns, exported.stat().st_mtime_ns)
    env = {
        "STREAMSCORE_HOME": str(home),
        "STREAMSCORE_LAKE_DIR": str(bad),
        "STREAMSCORE_CLICKHOUSE_DSN": f"chdb://{root / 'chdb'}",
    }
    result = CliRunner().invoke(
        cli, ["nightly", "--date", D.isoformat()], env={**os.environ, **env}
    )
    assert result.exit_code != 0
    assert isinstance(result.exception, FeatureError)
    assert "positive_stg_transactions_amount" in str(result.exception)
    assert (online_db.stat().st_mtime_ns, exported.stat().st_mtime_ns) == stamps
    failed = (
        world["client"]
        .query(
            "select count() from streamscore.feature_runs where status = 'failed' "
            "and position(error, 'positive_stg_transactions_amount') > 0"
        )
        .result_rows
    )
    assert failed[0][0] == 1
