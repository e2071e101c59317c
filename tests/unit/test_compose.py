"""infra/compose.yaml stays valid and says what the code does: services, health checks and
pinned overridable tags; the ClickHouse users (a writer that owns the project's database,
a read-only analyst whose profile caps what streamscore sends); Prometheus scraping every
process the worker's supervisor starts; Grafana provisioned with both data sources.

No Docker engine runs here: the files are parsed and checked against the code.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from streams.clickhouse.migrations import _LEDGER, load_migrations
from streams.runtime.supervisor import topology
from streams.settings import Settings
from streams.sql import MAX_ROWS_LIMIT, QueryLimits, ReadOnlySQL

INFRA = Path(__file__).resolve().parents[2] / "infra"
COMPOSE = INFRA / "compose.yaml"
USERS = INFRA / "clickhouse" / "users.d"


@pytest.fixture(autouse=True)
def _no_developer_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings here come from arguments only, never from the developer's STREAMSCORE_*."""
    for name in list(os.environ):
        if name.startswith("STREAMSCORE_"):
            monkeypatch.delenv(name)


def services() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text())["services"])


def mounts(service: str) -> dict[str, str]:
    """Container path → host path (relative to infra/) of a service's bind mounts."""
    out = {}
    for volume in services()[service].get("volumes", []):
        source, target, *_mode = volume.split(":")
        if source.startswith("./"):
            out[target] = source
    return out


def default(value: str) -> str:
    """``${VAR:-default}`` → ``default`` (what compose uses when VAR is unset)."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


# ---- services ------------------------------------------------------------------------------


def test_compose_declares_healthy_pinned_overridable_services() -> None:
    found = services()
    assert set(found) == {"kafka", "clickhouse", "redis", "prometheus", "grafana"}
    for name, service in found.items():
        match = re.fullmatch(r"\$\{(\w+)_IMAGE:-([\w./-]+):([\w.-]+)\}", service["image"])
        assert match is not None, f"{name}: image is not ${{X_IMAGE:-repo:tag}}"
        tag = match.group(3)
        assert tag != "latest" and re.search(r"\d", tag), f"{name}: tag {tag} is not pinned"
        assert service["healthcheck"]["test"], name
        for port in service.get("ports", []):  # published on loopback unless asked
            assert port.startswith("${BIND_ADDRESS:-127.0.0.1}:"), f"{name}: {port}"
    assert "3.9" in found["kafka"]["image"]
    assert found["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    # Named volumes are declared, bind mounts exist.
    declared = set(yaml.safe_load(COMPOSE.read_text())["volumes"])
    for name, service in found.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (INFRA / source).exists(), f"{name}: {source}"
            else:
                assert source in declared, f"{name}: {source}"


def documented_environment() -> dict[str, str]:
    """The ``STREAMSCORE_*=value`` assignments in compose.yaml's header comment."""
    header = [line for line in COMPOSE.read_text().splitlines() if line.startswith("#")]
    return dict(re.findall(r"(STREAMSCORE_\w+)=(\S+)", "\n".join(header)))


def test_the_documented_settings_are_valid_and_name_the_compose_users(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = documented_environment()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("STREAMSCORE_HOME", str(tmp_path))
    settings = Settings()
    clickhouse = services()["clickhouse"]["environment"]
    assert settings.clickhouse_url == "http://localhost:8123/" + clickhouse["CLICKHOUSE_DB"]
    assert settings.clickhouse_database == clickhouse["CLICKHOUSE_DB"]
    writer = ET.parse(USERS / "writer.xml").getroot().find(f"users/{settings.clickhouse_user}")
    analyst = ET.parse(USERS / "analyst.xml").getroot()
    assert writer is not None and analyst.find(f"users/{settings.clickhouse_analyst_user}")
    # The passwords documented are the ones compose gives the server by default.
    assert settings.clickhouse_password is not None
    assert settings.clickhouse_password.get_secret_value() == default(
        clickhouse["CLICKHOUSE_WRITER_PASSWORD"]
    )
    assert settings.clickhouse_analyst_password is not None
    assert settings.clickhouse_analyst_password.get_secret_value() == default(
        clickhouse["CLICKHOUSE_ANALYST_PASSWORD"]
    )
    assert settings.bootstrap_servers == "localhost:9092"
    assert "writer-change-me" not in repr(settings)  # shown masked, as every secret


# ---- ClickHouse users ----------------------------------------------------------------------


def grants(user: ET.Element) -> tuple[set[str], str]:
    """(privileges, on what) of a user's single GRANT query."""
    (query,) = [q.text or "" for q in user.findall("grants/query")]
    match = re.fullmatch(r"GRANT (.+) ON (\S+)", query.strip())
    assert match is not None, query
    return {p.strip() for p in match.group(1).split(",")}, match.group(2)


def required_privileges(statement: str) -> set[str]:
    """What ClickHouse checks before running one migration statement."""
    lines = [line for line in statement.splitlines() if not line.strip().startswith("--")]
    text = " ".join(" ".join(lines).lower().split())
    rules = [
        (r"create table if not exists \S+ \(", {"CREATE TABLE"}),
        (r"create view if not exists \S+ as ", {"CREATE VIEW"}),
        (r"create or replace view \S+ as ", {"CREATE VIEW", "DROP VIEW"}),
        (r"insert into \S+ \([^)]*\) select ", {"INSERT", "SELECT"}),
    ]
    for pattern, privileges in rules:
        if re.match(pattern, text):
            return privileges
    clauses = re.match(r"alter table \S+ (.*)", text)
    if clauses and all(c.strip().startswith("add column ") for c in _top_level(clauses.group(1))):
        return {"ALTER ADD COLUMN"}
    raise AssertionError(f"no rule for a migration statement: grant what it needs: {text[:120]}")


def _top_level(text: str) -> list[str]:
    """``text`` split at the commas outside parentheses (``Map(String, UInt32)`` is one)."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


def test_the_writer_may_run_every_migration_in_the_project_database_only() -> None:
    environment = services()["clickhouse"]["environment"]
    database = environment["CLICKHOUSE_DB"]
    writer = ET.parse(USERS / "writer.xml").getroot().find("users/streamscore")
    assert writer is not None
    privileges, target = grants(writer)
    assert target == f"{database}.*"
    # connect(): create database if not exists; the sinks insert, the marks and the nightly
    # run log are read back.
    needed = {"CREATE DATABASE", "INSERT", "SELECT"} | required_privileges(_LEDGER)
    for migration in load_migrations():
        for statement in migration.statements(f"`{database}`"):
            needed |= required_privileges(statement)
    assert needed <= privileges, sorted(needed - privileges)
    assert privileges - needed == set(), "grant only what the code needs"
    assert writer.find("access_management") is None
    assert writer.find("password").get("from_env") == "CLICKHOUSE_WRITER_PASSWORD"  # type: ignore[union-attr]
    assert writer.findtext("profile") == "default"
    assert "CLICKHOUSE_WRITER_PASSWORD" in environment


def test_required_privileges_refuses_statements_it_has_no_rule_for() -> None:
    for statement in (
        "alter table `d`.t add column if not exists x UInt8",
        "alter table `d`.t add column m Map(String, UInt32) after w, add column c Bool",
    ):
        assert required_privileges(statement) == {"ALTER ADD COLUMN"}
    for statement in (
        "drop table `d`.t",
        "alter table `d`.t add column x UInt8, drop column y",
        "rename table `d`.a to `d`.b",
    ):
        with pytest.raises(AssertionError, match="no rule"):
            required_privileges(statement)


class RecordingClient:
    """A clickhouse-connect client that records the session ReadOnlySQL sets up."""

    def __init__(self) -> None:
        self.settings: dict[str, Any] = {}
        self.commands: list[str] = []

    def set_client_setting(self, name: str, value: Any) -> None:
        self.settings[name] = value

    def command(self, sql: str) -> None:
        self.commands.append(sql)

    def close(self) -> None:
        pass


def server_session_settings(settings: Settings) -> dict[str, Any]:
    """What ReadOnlySQL sends with every analyst query to a ClickHouse server."""
    client = RecordingClient()
    sql = ReadOnlySQL(settings, QueryLimits.from_settings(settings), connect=lambda: client)  # type: ignore[arg-type, return-value]
    with sql.session(MAX_ROWS_LIMIT, readonly=1):
        pass
    assert client.settings, "no settings recorded: is the DSN a server's?"
    return client.settings


@pytest.mark.parametrize(
    "limits",
    [{}, {"sql_timeout_s": 5.0, "sql_max_memory_bytes": 2**20}],
    ids=["defaults", "lowered"],
)
def test_the_analyst_profile_accepts_what_streamscore_sends_and_caps_it(
    tmp_path: Path, limits: dict[str, Any]
) -> None:
    """readonly = 2 (the server path sends its limits as settings, which readonly = 1
    refuses); each limit sent is constrained to at most what is sent, the overflow modes
    fixed to what is sent; SELECT on the project's database only."""
    settings = Settings(
        home=tmp_path,
        clickhouse_dsn="http://localhost:8123/streamscore",
        clickhouse_analyst_user="analyst",
        clickhouse_analyst_password="x",
        **limits,
    )
    sent = server_session_settings(settings)
    assert mounts("clickhouse")["/etc/clickhouse-server/users.d/analyst.xml"] == (
        "./clickhouse/users.d/analyst.xml"
    )
    root = ET.parse(USERS / "analyst.xml").getroot()
    profile = root.find("profiles/analyst")
    assert profile is not None and profile.findtext("readonly") == "2"
    # ClickHouse refuses changing readonly in readonly mode; sending the same is no change.
    assert str(sent.pop("readonly")) == profile.findtext("readonly")
    constraints = profile.find("constraints")
    assert constraints is not None
    for name, value in sent.items():
        rule = constraints.find(name)
        assert rule is not None, f"{name} is not constrained"
        if isinstance(value, str):  # overflow modes: fixed, and to what streamscore sends
            assert rule.find("const") is not None and profile.findtext(name) == value
        else:
            assert float(value) <= float(rule.findtext("max") or 0), name
            assert float(profile.findtext(name) or 0) <= float(rule.findtext("max") or 0)
    user = root.find("users/analyst")
    assert user is not None and user.findtext("profile") == "analyst"
    assert grants(user) == ({"SELECT"}, "streamscore.*")
    assert user.find("password").get("from_env") == "CLICKHOUSE_ANALYST_PASSWORD"  # type: ignore[union-attr]
    assert "CLICKHOUSE_ANALYST_PASSWORD" in services()["clickhouse"]["environment"]


def test_every_users_file_is_mounted() -> None:
    mounted = mounts("clickhouse")
    for path in USERS.glob("*.xml"):
        ET.parse(path)  # well-formed
        assert mounted[f"/etc/clickhouse-server/users.d/{path.name}"] == (
            f"./clickhouse/users.d/{path.name}"
        )


# ---- Prometheus ----------------------------------------------------------------------------


def targets_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "infra_targets", INFRA / "prometheus" / "targets.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prometheus_scrapes_the_committed_targets_on_the_hosts_network() -> None:
    prometheus = services()["prometheus"]
    # The worker's web server binds to 127.0.0.1: only the host's network reaches it.
    assert prometheus["network_mode"] == "host"
    assert services()["grafana"]["network_mode"] == "host"
    mounted = mounts("prometheus")
    config = yaml.safe_load((INFRA / mounted["/etc/prometheus/prometheus.yml"]).read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "streamscore"]
    assert job["metrics_path"] == "/metrics"
    (sd,) = job["file_sd_configs"]
    (pattern,) = sd["files"]
    folder, glob = pattern.rsplit("/", 1)
    local = INFRA / mounted[folder]
    assert sorted(local.glob(glob)) == [local / "streamscore.json"]


def test_the_committed_targets_are_the_supervisors_processes(tmp_path: Path) -> None:
    """targets/streamscore.json is targets.py's answer for STREAMSCORE_SCORERS=2: one
    target per process, on the port the supervisor gives it."""
    module = targets_module()
    settings = Settings(home=tmp_path, scorers=2)
    committed = json.loads((INFRA / "prometheus" / "targets" / "streamscore.json").read_text())
    assert committed == module.targets(settings)
    ports = {
        p.name: int(p.env.get("STREAMSCORE_WEB_PORT", settings.web_port))
        for p in topology(settings)
    }
    assert ports == {"stages": 6066, "score-0": 6067, "score-1": 6068}
    assert {g["labels"]["process"]: g["targets"] for g in committed} == {
        name: [f"127.0.0.1:{port}"] for name, port in ports.items()
    }


def test_targets_follow_the_topology(tmp_path: Path) -> None:
    module = targets_module()
    one = module.targets(Settings(home=tmp_path, scorers=0, web_port=7000))
    assert one == [{"targets": ["127.0.0.1:7000"], "labels": {"process": "worker"}}]
    many = module.targets(Settings(home=tmp_path, scorers=4, web_port=7000))
    assert [g["targets"][0] for g in many] == [f"127.0.0.1:{7000 + i}" for i in range(5)]
    scorers_only = module.targets(Settings(home=tmp_path, scorers=2, agents="score"))
    assert [g["labels"]["process"] for g in scorers_only] == ["score-0", "score-1"]
    off = module.targets(Settings(home=tmp_path, scorers=0, web_enabled=False))
    assert off == []


# ---- Grafana -------------------------------------------------------------------------------


def test_grafana_is_provisioned_with_both_sources_and_the_dashboard() -> None:
    grafana = services()["grafana"]
    environment = grafana["environment"]
    assert re.fullmatch(
        r"grafana-clickhouse-datasource@\$\{\w+:-\d+\.\d+\.\d+\}",
        environment["GF_PLUGINS_PREINSTALL_SYNC"],
    )
    assert set(grafana["depends_on"]) == {"prometheus", "clickhouse"}
    mounted = mounts("grafana")
    provisioning = INFRA / mounted["/etc/grafana/provisioning"]
    sources = yaml.safe_load((provisioning / "datasources" / "streamscore.yaml").read_text())
    by_type = {s["type"]: s for s in sources["datasources"]}
    listen = next(
        a for a in services()["prometheus"]["command"] if a.startswith("--web.listen-address=")
    )
    assert by_type["prometheus"]["url"].endswith(":" + default(listen).rsplit(":", 1)[1])
    clickhouse = by_type["grafana-clickhouse-datasource"]["jsonData"]
    assert (clickhouse["protocol"], clickhouse["port"]) == ("http", 8123)
    assert clickhouse["username"] == "analyst"  # read-only, SELECT on streamscore.* only
    secret = by_type["grafana-clickhouse-datasource"]["secureJsonData"]["password"]
    assert secret == "$CLICKHOUSE_ANALYST_PASSWORD"
    assert default(environment["CLICKHOUSE_ANALYST_PASSWORD"]) == default(
        services()["clickhouse"]["environment"]["CLICKHOUSE_ANALYST_PASSWORD"]
    )
    profile = ET.parse(USERS / "analyst.xml").getroot().find("profiles/analyst")
    assert profile is not None
    cap = float(profile.findtext("constraints/max_execution_time/max") or 0)
    assert 0 < clickhouse["queryTimeout"] <= cap  # the plugin sets max_execution_time
    providers = yaml.safe_load((provisioning / "dashboards" / "streamscore.yaml").read_text())
    (provider,) = providers["providers"]
    dashboards = INFRA / mounted[provider["options"]["path"]]
    assert (dashboards / "streamscore.json").exists()
    home = environment["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == provider["options"]["path"] + "/streamscore.json"
