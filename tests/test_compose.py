"""compose.yaml parses and names the services the deployment needs (no Docker engine)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hub import mosquitto_conf

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
    assert env["HUB_MQTT_URL"].startswith("mqtt://hub:")
    # the broker config it mounts exists and keeps the latency setting
    conf = (ROOT / "deploy" / "mosquitto.conf").read_text()
    assert "set_tcp_nodelay true" in conf
    # no anonymous clients: files rendered by the one-shot setup before the broker starts
    assert "allow_anonymous false" in conf
    assert "password_file /mosquitto/auth/passwords" in conf
    assert "acl_file /mosquitto/auth/acl" in conf
    # client ids bound to accounts, as scripts/mosquitto.conf.in does (docs/MQTT.md)
    assert "plugin /usr/lib/mosquitto_dynamic_security.so" in conf
    assert "plugin_opt_config_file /mosquitto/auth/client-ids.json" in conf
    # one template: the mounted file is its current rendering for compose, not a hand copy
    # (regenerate with `python -m hub.mosquitto_conf --compose`)
    assert conf == mosquitto_conf.render(mosquitto_conf.COMPOSE)
    setup = services["setup"]
    assert services["mosquitto"]["depends_on"]["setup"]["condition"] == (
        "service_completed_successfully")
    assert "mosquitto-auth:/mosquitto/auth:ro" in services["mosquitto"]["volumes"]
    assert "mosquitto-auth:/mosquitto/auth" in setup["volumes"]
    assert setup["environment"]["HUB_MQTT_PASSWORD_FILE"] == "/mosquitto/auth/passwords"
    assert setup["environment"]["HUB_MQTT_CLIENT_IDS_FILE"] == (
        "/mosquitto/auth/client-ids.json")
    script = " ".join(setup["command"])
    assert "mqtt-accounts setup --account service:hub:" in script
    assert "--account fleet:gw-sim:" in script
    assert "create-user admin --role admin" in script
    # secrets have no defaults: compose refuses to start without them
    text = (ROOT / "compose.yaml").read_text(encoding="utf-8")
    for var in ("GRIDHUB_DB_PASSWORD", "GRIDHUB_MQTT_HUB_PASSWORD", "GRIDHUB_MQTT_SIM_PASSWORD",
                "GRIDHUB_ADMIN_PASSWORD", "GRIDHUB_SIM_API_TOKEN"):
        assert f"${{{var}:?" in text, var
    assert "@mosquitto:1883" in env["HUB_MQTT_URL"]  # the hub logs in
    sim_env = services["simulators"]["environment"]
    assert sim_env["HUB_SIM_MQTT_URL"].startswith("mqtt://gw-sim:")
    assert sim_env["HUB_API_TOKEN"]
    # the image runs the code from its tree (/app; pip installs the dependencies only) and
    # serves uPlot (device charts): installed from the lockfile, copied into that tree's
    # frontend/node_modules where hub/views.py looks for it
    docker = (ROOT / "deploy" / "Dockerfile").read_text(encoding="utf-8")
    assert "WORKDIR /app" in docker and "ENV PYTHONPATH=/app" in docker
    assert "COPY frontend/package.json frontend/package-lock.json" in docker
    assert "npm ci" in docker and " frontend/node_modules/uplot/dist" in docker
    assert 'NODE_MODULES / "uplot" / "dist"' in (ROOT / "hub" / "views.py").read_text()


def test_compose_scales_ingest_and_web_replicas_by_role() -> None:
    doc = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    services = doc["services"]
    roles = {}
    for name in ("ingest", "web", "dispatch"):
        svc = services[name]
        assert svc["profiles"] == ["scale"], name
        assert svc["deploy"]["replicas"] >= 2, name
        command = " ".join(svc["command"])
        roles[name] = command.split("--roles")[1].split()[0]
        assert svc["depends_on"]["init"]["condition"] == "service_completed_successfully"
        assert svc["environment"]["HUB_DATABASE_URL"].startswith("postgresql://")
        assert "test" in svc["healthcheck"]
        assert "ports" not in svc or name == "web", f"{name} replicas must not share a port"
    assert roles == {"ingest": "ingest", "web": "web", "dispatch": "dispatch"}
    # replicas share the subscription, each under its own client id
    ingest = services["ingest"]
    assert ingest["environment"]["HUB_MQTT_SHARE_GROUP"]
    assert "HUB_MQTT_CLIENT_ID=" in " ".join(ingest["command"])
    assert "$$(hostname)" in " ".join(ingest["command"])
    # ...and one rule evaluator's session, the same id in every replica
    rules_id = ingest["environment"]["HUB_MQTT_RULES_CLIENT_ID"]
    assert rules_id and "$" not in rules_id
    # the all-in-one hub is the default, lossless layout: a plain subscription
    assert not services["hub"]["environment"].get("HUB_MQTT_SHARE_GROUP")
    # web replicas get a range of host ports, not one fixed port
    assert all("-" in p.split(":")[1] for p in services["web"]["ports"])
    assert services["init"]["command"][-2:] == ["load-town", "--if-empty"]
    # the all-in-one hub stays the default
    assert "profiles" not in services["hub"]


def test_compose_demo_backfills_its_history_like_hubctl_demo() -> None:
    """With the "sim" profile, the demo's past is written as ./hubctl demo writes it
    (scripts/lib.sh run_demo): the cases before the hub starts, the readings beside it;
    without the profile the hub does not wait for (nor run) any backfill."""
    doc = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    services = doc["services"]
    cases, readings, hub = services["history"], services["history-readings"], services["hub"]
    assert cases["profiles"] == readings["profiles"] == services["simulators"]["profiles"]
    script = " ".join(cases["command"])
    assert script.index("load-town --if-empty") < script.index(
        "simulators.backfill --part cases")
    assert readings["command"] == ["python", "-m", "simulators.backfill", "--part",
                                   "readings"]
    # the hub starts after the cases (its dispatcher must not meet their events), but
    # only waits for them when the profile is on
    dep = hub["depends_on"]["history"]
    assert dep == {"condition": "service_completed_successfully", "required": False}
    assert "profiles" not in hub
    # the database is migrated (by setup) before the cases are written
    assert cases["depends_on"]["setup"]["condition"] == "service_completed_successfully"
    assert readings["depends_on"]["hub"]["condition"] == "service_healthy"
    for svc in (cases, readings):
        env = svc["environment"]
        assert env["HUB_DATABASE_URL"] == hub["environment"]["HUB_DATABASE_URL"]
        # the same setting as ./hubctl demo (HUB_DEMO_HISTORY_DAYS), 14 days unless set
        assert env["HUB_DEMO_HISTORY_DAYS"] == "${GRIDHUB_DEMO_HISTORY_DAYS:-14}"
        assert svc["restart"] == "no"
    # the same parts, in the same order, as the local demo runs them
    lib = (ROOT / "scripts" / "lib.sh").read_text(encoding="utf-8")
    demo = lib[lib.index("run_demo()"):]
    assert demo.index("backfill --part cases") < demo.index("hub serve") < demo.index(
        "backfill --part readings")


def test_broker_template_renders_every_placeholder_or_fails():
    """A line whose value is None is left out (compose needs no pid file); a placeholder
    without a value stops the rendering instead of starting a broker on a broken file."""
    template = "a @X@\npid_file @PID@\nb\n"
    assert mosquitto_conf.render({"X": "1", "PID": None}, template) == "a 1\nb\n"
    with pytest.raises(ValueError, match="PID"):
        mosquitto_conf.render({"X": "1"}, template)
