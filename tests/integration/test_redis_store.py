"""The Redis online store for real: Debian's redis-server started by the project's code,
the nightly run materialising into it, the serving side reading runs back from it, and
what happens when it is not started, killed with SIGKILL mid-run, or down for a nightly
run. The skew tests on Redis are in test_nightly.py (``served`` fixture)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest

from streams.errors import FeatureError, InfraError
from streams.features.online import OnlineFeatures, Snapshot
from streams.features.paths import export_path
from streams.infra.process import alive
from streams.infra.redis import LocalRedis
from streams.monitoring.metrics import WorkerMetrics
from streams.settings import Settings
from tests.integration.conftest import FEAST_STACK_MARKS, free_port, local_redis
from tests.planted import PLANTED

pytestmark = FEAST_STACK_MARKS

END = date(2024, 3, 1)
D = END - timedelta(days=1)


@pytest.fixture(scope="module")
def redis_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A small lake and one nightly run for D, materialised into a redis-server of its own."""
    from streams.clickhouse import connect
    from streams.nightly import run_nightly
    from streams.simulate.history import write_history

    root = tmp_path_factory.mktemp("redis-world")
    lake = root / "lake"
    write_history(str(lake), END, days=40, accounts=150, seed=5, fraud_rate=0.02)
    home = root / "home"
    with local_redis(home) as fields:
        settings = Settings(
            home=home, lake_dir=str(lake), clickhouse_dsn=f"chdb://{root / 'chdb'}", **fields
        )
        client = connect(settings)
        run = run_nightly(settings, D, client=client)
        try:
            yield {"root": root, "settings": settings, "client": client, "run": run}
        finally:
            client.close()
    shutil.rmtree(root, ignore_errors=True)


def _tables(snapshot: Snapshot) -> list[dict[str, tuple[float, ...]]]:
    """Each view's rows as id → values (the defaults row left out)."""
    return [
        {key: tuple(table.values[row].tolist()) for key, row in table.index.items()}
        for table in snapshot.tables
    ]


def _series(metrics: WorkerMetrics) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in metrics.exposition().decode().splitlines():
        if line.startswith(("streamscore_feature_store_up", "streamscore_features_age_seconds")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def _dead_redis(settings: Settings, **extra: Any) -> Settings:
    """``settings`` pointed at a port where no Redis was started."""
    port = free_port()
    update = {"redis_port": port, "redis_url": f"redis://127.0.0.1:{port}/0", **extra}
    return settings.model_copy(update=update)


def test_infra_up_redis_is_idempotent_asks_a_password_and_goes_down(
    tmp_path: Path, broker_settings: Settings
) -> None:
    port = free_port()
    env = dict(
        os.environ,
        STREAMSCORE_HOME=str(tmp_path),
        STREAMSCORE_KAFKA_BOOTSTRAP=broker_settings.bootstrap_servers,  # no broker to start
        STREAMSCORE_REDIS_PORT=str(port),
        STREAMSCORE_REDIS_URL=f"redis://127.0.0.1:{port}/0",
        STREAMSCORE_REDIS_PASSWORD=PLANTED,
    )

    def cli(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "streams.cli.main", "infra", *args],
            env={**env, **extra}, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    settings = Settings(
        home=tmp_path, redis_port=port, redis_url=f"redis://127.0.0.1:{port}/0",
        redis_password=PLANTED,
    )  # fmt: skip
    redis = LocalRedis(settings)
    first = cli("up", "--redis")
    assert first.returncode == 0, first.stderr
    try:
        pid = redis.pid()
        assert pid is not None and f"redis started: redis://127.0.0.1:{port}/0 (pid {pid}" in (
            first.stdout
        )
        second = cli("up", "--redis")
        assert second.returncode == 0 and "redis already running" in second.stdout
        assert redis.pid() == pid  # the same server, not a second one
        status = cli("status")
        assert "redis: running (local, state " in status.stdout and "keys: 0" in status.stdout
        # Its own port, data, log and pid under the state folder; the password in a file
        # only its owner reads, never on the command line.
        assert (tmp_path / "redis" / "data").is_dir() and redis.log_file.is_file()
        assert redis.pid_file.read_text().strip() == str(pid)
        assert redis.config_file.stat().st_mode & 0o077 == 0
        assert PLANTED in redis.config_file.read_text()  # the server's secrets file, by design
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
        assert str(redis.config_file) in cmdline and PLANTED not in cmdline
        assert redis.ping() == ""
        anonymous = LocalRedis(settings.model_copy(update={"redis_password": None}))
        assert "AuthenticationError" in anonymous.ping() or "NOAUTH" in anonymous.ping()
        # A port another program holds is named, and nothing is started.
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            busy = taken.getsockname()[1]
            elsewhere = Settings(
                home=tmp_path / "other", redis_port=busy, redis_url=f"redis://127.0.0.1:{busy}/0"
            )
            with pytest.raises(InfraError, match=f"port {busy} is taken by another program"):
                LocalRedis(elsewhere).up()
    finally:
        down = cli("down")
    assert down.returncode == 0 and "redis stopped" in down.stdout
    assert not alive(pid) and redis.pid() is None
    again = cli("down")
    assert again.returncode == 0 and "redis stopped" not in again.stdout
    wanted = cli("status", STREAMSCORE_ONLINE_STORE="redis")
    assert wanted.returncode == 1 and "redis: not running" in wanted.stdout
    assert PLANTED not in first.stdout + first.stderr + status.stdout + wanted.stdout
    # redis.conf holds the password on purpose (owner-only); it is not a log, so it goes
    # before the planted-password scan of everything the tests leave behind.
    redis.config_file.unlink()


def test_serving_reads_the_run_from_redis_as_its_export_holds_it(
    redis_world: dict[str, Any],
) -> None:
    settings, run = redis_world["settings"], redis_world["run"]
    online = OnlineFeatures(settings, latest_run=lambda: run)
    assert online.refresh_if_newer() and online.served_source == "redis"
    assert online.store_up is True
    from_redis = OnlineFeatures(settings, latest_run=lambda: run).fetch_newer()
    assert from_redis is not None and from_redis.source == "redis"
    redis_rows = _tables(from_redis)
    assert [len(t) for t in redis_rows] == [run.rows[v.name] for v in online.layout.views]
    # Every id of the run's export, every float32 value, as the export serves them.
    export = OnlineFeatures(settings, latest_run=lambda: None)
    export.load(D)
    assert export.served_source == "export"
    for view, rows in zip(online.layout.views, redis_rows, strict=True):
        ids = pq.read_table(export_path(settings, view.model, D)).column(view.join_key)
        assert sorted(rows) == sorted(ids.to_pylist())
        lookup = {
            v.name: ids.to_pylist() if v is view else ["nope"] * len(ids)
            for v in online.layout.views
        }
        served, missing = export.lookup_entities(lookup)
        first = sum(len(v.features) for v in online.layout.views[: online.layout.views.index(view)])
        block = served[:, first : first + len(view.features)]
        assert not missing[:, online.layout.views.index(view)].any()
        assert [tuple(r) for r in block.tolist()] == [rows[i] for i in ids.to_pylist()]


def test_redis_not_started_at_start_up_serves_the_kept_export_and_says_so(
    redis_world: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = redis_world["run"]
    dead = _dead_redis(redis_world["settings"])
    caplog.set_level(logging.INFO)
    online = OnlineFeatures(dead, latest_run=lambda: run)
    assert online.refresh_if_newer() and online.run_id == run.run_id
    assert online.served_source == "export" and online.store_up is False
    url = f"redis://127.0.0.1:{dead.redis_port}/0"
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"the Redis online store at {url} does not answer" in m for m in warned)
    assert any(f"serving nightly run {run.run_id} from its local export" in m for m in warned)
    metrics = WorkerMetrics()
    metrics.watch_features(online)
    series = _series(metrics)
    assert series['streamscore_feature_store_up{store="redis"}'] == 0.0
    assert series['streamscore_features_age_seconds{source="export"}'] > 0
    assert online.lookup(["nope"], ["nope"], ["nope"])[1].all()  # serving, with defaults

    # On a machine without the run's export there is nothing to serve: it says so, and
    # the caller (the scoring stage) stops before consuming anything.
    elsewhere = dead.model_copy(update={"home": tmp_path / "scoring-machine"})
    with pytest.raises(FeatureError) as caught:
        OnlineFeatures(elsewhere, latest_run=lambda: run).refresh_if_newer()
    assert f"Redis online store at {url} does not answer" in str(caught.value)
    assert "kept no export here" in str(caught.value)


def test_redis_killed_mid_run_keeps_the_served_run_and_says_so(
    redis_world: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    settings, run = redis_world["settings"], redis_world["run"]
    redis = LocalRedis(settings)
    latest = [run]
    online = OnlineFeatures(settings, latest_run=lambda: latest[-1])
    loaded = online.fetch_newer()
    assert loaded is not None and loaded.source == "redis"
    online.use(loaded)
    metrics = WorkerMetrics()
    metrics.watch_features(online)
    assert _series(metrics)['streamscore_feature_store_up{store="redis"}'] == 1.0
    account = next(iter(loaded.tables[0].index))
    before = online.lookup([account], ["nope"], ["nope"])[0]

    pid = redis.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    caplog.set_level(logging.INFO)
    assert online.fetch_newer() is None  # the reload timer's check: the same run, Redis gone
    assert _series(metrics)['streamscore_feature_store_up{store="redis"}'] == 0.0
    url = redis.url
    assert any(
        r.levelno == logging.WARNING
        and f"Redis online store at {url} does not answer" in r.getMessage()
        for r in caplog.records
    )
    # A newer run cannot be read: the served one stays, and the failure is a WARNING.
    newer = replace(run, run_id="run-after-the-kill", finished_at=datetime.now(UTC))
    latest.append(newer)
    assert online.fetch_newer() is None and online.run_id == run.run_id
    assert any(
        r.levelno == logging.WARNING
        and f"feature reload failed, keeping nightly run {run.run_id}" in r.getMessage()
        and "does not answer" in r.getMessage()
        for r in caplog.records
    )
    assert (online.lookup([account], ["nope"], ["nope"])[0] == before).all()
    assert _series(metrics)['streamscore_features_age_seconds{source="redis"}'] > 0

    # Started again by the same code on the same data (the append-only file): the next
    # reload reads the newer run from Redis.
    assert redis.up().detail == "started"
    snapshot = online.fetch_newer()
    assert snapshot is not None and snapshot.source == "redis"
    online.use(snapshot)
    assert online.run_id == newer.run_id and online.store_up is True
    assert (online.lookup([account], ["nope"], ["nope"])[0] == before).all()
    assert _series(metrics)['streamscore_feature_store_up{store="redis"}'] == 1.0
    assert "answers again" in caplog.text


def test_a_nightly_run_with_redis_down_fails_loudly_and_is_recorded(
    redis_world: dict[str, Any],
) -> None:
    from streams.nightly import run_nightly

    client = redis_world["client"]
    port = free_port()
    dead = redis_world["settings"].model_copy(
        update={
            "redis_port": port,
            "redis_url": f"redis://default:{PLANTED}@127.0.0.1:{port}/0",
            "redis_password": None,
        }
    )
    with pytest.raises(FeatureError) as caught:
        run_nightly(dead, D, client=client)
    message = str(caught.value)
    shown = f"the Redis online store at redis://default:***@127.0.0.1:{port}/0 does not answer"
    assert shown in message and "recorded as failed in feature_runs" in message
    assert PLANTED not in message
    rows = client.query(
        "select status, error, durations_s from streamscore.feature_runs "
        "where status = 'failed' and position(error, {shown:String}) > 0",
        parameters={"shown": shown},
    ).result_rows
    assert len(rows) == 1 and PLANTED not in rows[0][1]
    assert "dbt_build" not in rows[0][2]  # refused before dbt ran


def test_demo_on_redis_serves_features_from_redis_and_stops_what_it_started(
    tmp_path: Path, broker_settings: Settings
) -> None:
    port = free_port()
    env = dict(
        os.environ,
        STREAMSCORE_HOME=str(tmp_path),
        STREAMSCORE_KAFKA_BOOTSTRAP=broker_settings.bootstrap_servers,
        STREAMSCORE_ONLINE_STORE="redis",
        STREAMSCORE_REDIS_PORT=str(port),
        STREAMSCORE_REDIS_URL=f"redis://127.0.0.1:{port}/0",
    )
    result = subprocess.run(
        [
            sys.executable, "-m", "streams.cli.main", "demo", "--accounts", "800",
            "--seconds", "10", "--history-days", "30", "--json",
        ],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = orjson.loads(result.stdout.strip().splitlines()[-1])
    assert summary["complete"] and summary["scored"] == summary["expected_scored"] > 0
    assert summary["dead"] == summary["expected_dead"]
    assert summary["online_store"] == "redis" and "redis" in summary["durations_s"]
    assert summary["features_from"] and set(summary["features_from"]) == {"redis"}
    redis = LocalRedis(Settings(home=tmp_path, redis_port=port))
    assert redis.pid() is None and not redis.pid_file.exists()  # the demo stopped it
    assert "Ready to accept connections" in redis.log_file.read_text()
