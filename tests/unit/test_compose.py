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
