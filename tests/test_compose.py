"""compose.yaml parses and names the services the deployment needs (no Docker engine)."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_compose_services_healthchecks_and_dependencies() -> None:
    doc = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    services = doc["services"]
    assert set(services) >= {"timescaledb", "mosquitto", "hub", "simulators"}
    assert services["timescaledb"]["image"].startswith("timescale/timescaledb:")
    assert services["mosquitto"]["image"].startswith("eclipse-mosquitto:2")
    for name in ("timescaledb", "mosquitto", "hub"):
        assert "test" in services[name]["healthcheck"], name
    deps = services["hub"]["depends_on"]
    assert deps["timescaledb"]["condition"] == "service_healthy"
    assert deps["mosquitto"]["condition"] == "service_healthy"
    assert services["simulators"]["profiles"] == ["sim"]
    assert services["simulators"]["depends_on"]["hub"]["condition"] == "service_healthy"
    env = services["hub"]["environment"]
    assert env["HUB_DATABASE_URL"].startswith("postgresql://")
    assert env["HUB_MQTT_URL"].startswith("mqtt://mosquitto:")
    # the broker config it mounts exists and keeps the latency setting
    conf = (ROOT / "deploy" / "mosquitto.conf").read_text()
    assert "set_tcp_nodelay true" in conf
    assert (ROOT / "deploy" / "Dockerfile").exists()
