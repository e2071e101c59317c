"""infra/compose.yaml stays valid: the services, health checks and overridable tags."""

from __future__ import annotations

from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "infra" / "compose.yaml"


def test_compose_declares_healthy_overridable_services() -> None:
    spec = yaml.safe_load(COMPOSE.read_text())
    services = spec["services"]
    assert set(services) == {"kafka", "clickhouse", "redis"}
    for name, service in services.items():
        assert service["image"].startswith("${") and ":-" in service["image"], name
        assert service["healthcheck"]["test"], name
    assert "3.9" in services["kafka"]["image"]
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_the_analyst_user_caps_every_limit_streamscore_sends() -> None:
    """The compose server's analyst profile allows what ReadOnlySQL sends and no more."""
    import xml.etree.ElementTree as ET

    from streams.sql import MAX_ROWS_LIMIT, QueryLimits

    users = COMPOSE.parent / "clickhouse" / "users.d" / "analyst.xml"
    mount = "./clickhouse/users.d/analyst.xml:/etc/clickhouse-server/users.d/analyst.xml:ro"
    assert mount in yaml.safe_load(COMPOSE.read_text())["services"]["clickhouse"]["volumes"]
    root = ET.parse(users).getroot()
    profile = root.find("profiles/analyst")
    assert profile is not None and profile.findtext("readonly") == "2"
    constraints = profile.find("constraints")
    assert constraints is not None
    sent = QueryLimits().session_settings(MAX_ROWS_LIMIT)
    for name, value in sent.items():
        rule = constraints.find(name)
        assert rule is not None, f"{name} is not constrained"
        if isinstance(value, str):  # overflow modes: fixed, and to what streamscore sends
            assert rule.find("const") is not None and profile.findtext(name) == value
        else:
            assert float(value) <= float(rule.findtext("max") or 0), name
    user = root.find("users/analyst")
    assert user is not None and user.findtext("profile") == "analyst"
    assert [q.text for q in user.findall("grants/query")] == ["GRANT SELECT ON streamscore.*"]
    assert user.find("password").get("from_env") == "CLICKHOUSE_ANALYST_PASSWORD"  # type: ignore[union-attr]
