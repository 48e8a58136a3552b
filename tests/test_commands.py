"""Commands to patrol phones: the pure mapping from events, and the dispatch leader sending
them over the real broker when it assigns a case."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from core.events import Envelope
from dispatch.commands import command_for
from simulators.crews import Crews, listen_for_commands
from simulators.patrol import Fleet
from simulators.patrol_roads import RoadGraph
from tests.conftest import HubProcess, gateway_url, town_doc


def _env(seq: int, kind: str, payload: dict[str, Any]) -> Envelope:
    return Envelope.make(seq, 1_700_000_000.0 + seq, kind, payload)


INCIDENT = {"id": 12, "category": "city_order", "priority": 2, "qualification": "city_management",
            "title": "占道经营", "description": "", "lon": 116.1, "lat": 27.2, "grid_id": "g-01",
            "state": "dispatched", "sla": {}, "assigned_unit": "patrol-03"}


def test_an_assignment_sends_the_unit_a_dispatch_command() -> None:
    cmd = command_for(_env(41, "unit.assigned", {
        "incident": INCIDENT, "unit": {"id": "patrol-03"},
        "assignment": {"id": 7, "eta_s": 240.0, "reason": "nearest qualified"}}))
    assert cmd is not None and cmd.unit_id == "patrol-03"
    assert cmd.payload["id"] == "41" and cmd.payload["type"] == "dispatch"
    assert cmd.payload["incident"]["id"] == 12 and cmd.payload["incident"]["lon"] == 116.1
    assert "sla" not in cmd.payload["incident"]  # only what the phone needs
    assert cmd.payload["assignment_id"] == 7 and cmd.payload["eta_s"] == 240.0


def test_a_withdrawal_tells_the_unit_taken_off_the_case() -> None:
    cmd = command_for(_env(42, "incident.updated", {
        "incident": {**INCIDENT, "state": "registered"}, "action": "withdraw",
        "released_unit": "patrol-03"}))
    assert cmd is not None and cmd.unit_id == "patrol-03"
    assert cmd.payload == {"id": "42", "type": "withdraw", "ts": 1_700_000_042.0,
                           "incident_id": 12, "action": "withdraw"}


def test_other_events_send_nothing() -> None:
    assert command_for(_env(1, "incident.updated", {"incident": INCIDENT,
                                                    "action": "accept"})) is None
    assert command_for(_env(2, "incident.updated", {"incident": INCIDENT, "action": "withdraw",
                                                    "released_unit": ""})) is None
    assert command_for(_env(3, "alarm.raised", {"alarm": {"id": 1}})) is None


async def test_the_assigned_units_phone_receives_its_dispatch_command(
        hub: HubProcess, mqtt_url: str) -> None:
    """The hub sends the command; the simulated phones (simulators/crews.py, a fleet
    account on the real broker) receive it and count it."""
    town = town_doc()
    fleet = Fleet(RoadGraph.from_town(town), town["units"], seed=1, now=time.time())
    crews = Crews(hub.url, fleet)
    got: list[tuple[str, dict[str, Any]]] = []
    real = crews.on_command

    def on_command(unit_id: str, payload: bytes) -> None:
        got.append((unit_id, json.loads(payload)))
        real(unit_id, payload)

    crews.on_command = on_command  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    listener = listen_for_commands(gateway_url(mqtt_url), crews, loop,
                                   f"test-phones-{uuid.uuid4().hex[:8]}")
    try:
        await asyncio.sleep(1.0)  # subscribed (QoS 1 from here on)
        title = f"命令测试 {uuid.uuid4().hex[:6]}"
        dev = town["devices"][3]
        async with hub.async_client() as client:
            r = await client.post("/api/incidents", json={
                "category": "city_order", "qualification": "city_management", "priority": 3,
                "title": title, "lon": dev["lon"], "lat": dev["lat"], "reporter": "operator1"})
            assert r.status_code == 201, r.text
            incident_id = r.json()["id"]
            deadline = loop.time() + 15
            mine: list[tuple[str, dict[str, Any]]] = []
            while not mine:
                assert loop.time() < deadline, f"no dispatch command for {title}: {got}"
                await asyncio.sleep(0.1)
                # Other test hubs share the broker (and the town's unit ids): ours by title.
                mine = [(u, c) for u, c in got if c["type"] == "dispatch"
                        and c["incident"]["title"] == title]
            inc = (await client.get(f"/api/incidents/{incident_id}")).json()
        unit, cmd = mine[0]
        assigned = inc.get("assigned_unit") or inc["incident"]["assigned_unit"]
        assert unit == assigned
        assert cmd["incident"]["id"] == incident_id and cmd["id"].isdigit()
        assert crews.commands["dispatch"] >= 1
        # The same command again (a QoS 1 redelivery) is acted on once.
        before = sum(crews.commands.values())
        real(unit, json.dumps(cmd).encode())
        assert sum(crews.commands.values()) == before
    finally:
        listener.disconnect()
        listener.loop_stop()
