"""Topic declarations, settings from the environment, and --help on every command."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from streams.cli.main import COMMANDS, cli
from streams.settings import Settings
from streams.topics import declared_topics, raw_topic, topic_name, valid_topic
from tests.planted import PLANTED


def test_declared_topics_cover_the_flow() -> None:
    specs = {s.name: s for s in declared_topics(["transaction", "label"])}
    assert specs["events.raw"].partitions == 6
    for name in ("events.dlq", "predictions", "review", "events.valid.transaction",
                 "events.valid.label", "labels.raw", "control"):  # fmt: skip
        assert name in specs
    assert specs["control"].partitions == 1  # one order for every worker process
    assert all(s.retention_ms > 0 and s.cleanup_policy == "delete" for s in specs.values())


def test_topic_names_use_the_prefix(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, topic_prefix="t1.")
    assert raw_topic(settings) == "t1.events.raw"
    assert valid_topic(settings, "label") == "t1.events.valid.label"
    assert topic_name(settings, declared_topics([])[0]).startswith("t1.")


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STREAMSCORE_HOME", str(tmp_path))
    monkeypatch.setenv("STREAMSCORE_KAFKA_BOOTSTRAP", "kafka-1:9092,kafka-2:9092")
    settings = Settings()
    assert settings.home == tmp_path
    assert not settings.manages_local_kafka
    assert settings.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert settings.clickhouse_url == f"chdb://{tmp_path / 'chdb'}"
    with pytest.raises(ValidationError):
        settings.kafka_port = 1  # type: ignore[misc]  # frozen


def test_settings_round_trip_through_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    original = Settings(home=tmp_path, topic_prefix="x.", web_enabled=False, agents="ingest")
    for name, value in original.to_env().items():
        monkeypatch.setenv(name, value)
    child = Settings()
    assert child.model_dump(exclude={"worker_id"}) == original.model_dump(exclude={"worker_id"})
    assert "STREAMSCORE_WORKER_ID" not in original.to_env()


def test_settings_refuse_typos_and_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError):
        Settings(topic_prefix="bad prefix/")
    with pytest.raises(ValidationError):
        Settings(max_payload_bytes=0)
    with pytest.raises(ValidationError):
        Settings(no_such_field=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="agents"):
        Settings(agents="ingest,score-everything")
    assert Settings(agents=" lake , ingest").agent_names == {"ingest", "lake"}


def _all_commands(group: click.Group, ctx: click.Context, prefix: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None:
            continue
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from _all_commands(command, ctx, (*prefix, name))


def test_every_command_has_help() -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output
    ctx = click.Context(cli)
    paths = list(_all_commands(cli, ctx))
    assert ("infra", "up") in paths and ("topics", "apply") in paths
    for path in paths:
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output


def test_cli_errors_never_print_a_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import sys

    from streams.cli.main import main

    planted = PLANTED
    monkeypatch.setenv("STREAMSCORE_HOME", str(tmp_path))
    monkeypatch.setenv("STREAMSCORE_CLICKHOUSE_DSN", f"http://analyst:{planted}@127.0.0.1:9/")
    monkeypatch.setattr(sys, "argv", ["streamscore", "db", "migrate"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "cannot open ClickHouse at http://analyst:***@127.0.0.1:9/" in err
    assert planted not in err
