"""The whole path once, across real Mosquitto, real PostgreSQL+TimescaleDB and the hub:

a sensor publishes over MQTT -> the reading lands in the hypertable -> a threshold rule
raises an alarm -> an incident is opened -> the nearest available qualified squad is
assigned -> a websocket client sees the alarm and the assignment live.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
import websockets

from core.db import connect
from ingest import wire
from tests.conftest import (
    HubProcess,
    Publisher,
    town_database,
    town_doc,
    wait_for,
)


def _offset(lon: float, lat: float, east_m: float, north_m: float) -> tuple[float, float]:
    return (lon + east_m / (111_320 * math.cos(math.radians(lat))), lat + north_m / 110_540)


async def _collect(ws: Any, into: list[dict[str, Any]], stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 0.5))
        except TimeoutError:
            continue
        if msg["type"] == "batch":
            into.extend(msg["events"])


@pytest_asyncio.fixture(scope="module")
async def skeleton_db(base_db_url: str) -> AsyncIterator[str]:
    """A town of its own: no other test has sent its squads anywhere."""
    async with town_database(base_db_url, "s") as url:
        yield url


@pytest.fixture(scope="module")
def skeleton_hub(skeleton_db: str, mqtt_url: str) -> Iterator[HubProcess]:
    hub = HubProcess(skeleton_db, mqtt_url).start()
    yield hub
    hub.stop()


@pytest_asyncio.fixture
async def sdb(skeleton_db: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(skeleton_db)
    yield conn
    await conn.close()


async def test_reading_to_alarm_to_assignment_live(
    skeleton_hub: HubProcess, publisher: Publisher, sdb: asyncpg.Connection
) -> None:
    hub, db = skeleton_hub, sdb
    town = town_doc()
    gas = next(d for d in town["devices"] if d["model"] == "gas_detector")
    # Other tests in the session may have sent some squads out: use the free ones.
    free = {r["id"] for r in await db.fetch(
        "SELECT id FROM units WHERE status = 'available' AND 'work_safety' = ANY(qualifications)")}
    squads = [u for u in town["units"] if u["id"] in free]
    assert len(squads) >= 2
    near, far = squads[0], squads[1:]
    now = time.time()
    # Put one qualified squad 150 m from the detector, the others 5+ km away, all fresh.
    for i, unit in enumerate(squads):
        lon, lat = (_offset(gas["lon"], gas["lat"], 150, 0) if unit is near
                    else _offset(gas["lon"], gas["lat"], 5000 + 500 * i, 5000))
        publisher.publish(wire.gps_topic(unit["id"]), wire.encode_gps(now, lat, lon, 0.0))
    await wait_for(lambda: db.fetchval(
        "SELECT count(*) = $2 FROM units WHERE id = ANY($1) AND position_ts IS NOT NULL",
        [u["id"] for u in squads], len(squads)))

    async with websockets.connect(f"ws://127.0.0.1:{hub.port}/ws/live",
                                  additional_headers=hub.headers) as ws:
        await ws.send(json.dumps({"type": "hello", "last_seq": None}))
        snapshot = json.loads(await ws.recv())
        assert snapshot["type"] == "snapshot"
        assert len(snapshot["units"]) == len(town["units"])
        events: list[dict[str, Any]] = []
        stop = asyncio.Event()
        collector = asyncio.create_task(_collect(ws, events, stop))

        t_pub = time.time()
        publisher.publish(wire.telemetry_topic(gas["id"]),
                          wire.encode_telemetry(t_pub, {"gas_lel_pct": 42.0}))

        # 1. the reading is in the hypertable
        row = await wait_for(lambda: db.fetchrow(
            "SELECT value, received_at FROM telemetry WHERE device_id = $1 AND "
            "metric = 'gas_lel_pct' AND value = 42.0", gas["id"]))
        assert row["value"] == 42.0
        assert await db.fetchval(
            "SELECT hypertable_name FROM timescaledb_information.hypertables "
            "WHERE hypertable_name = 'telemetry'") == "telemetry"
        # 2. the alarm
        alarm = await wait_for(lambda: db.fetchrow(
            "SELECT * FROM alarms WHERE device_id = $1 AND rule_id = 'gas_lel_high'",
            gas["id"]))
        assert alarm["state"] == "active" and alarm["severity"] == "critical"
        # 3. the incident, opened from the alarm at the device's grid
        incident = await wait_for(lambda: db.fetchrow(
            "SELECT i.* FROM incidents i JOIN alarms a ON a.incident_id = i.id "
            "WHERE a.id = $1", alarm["id"]))
        assert incident["category"] == "gas_leak"
        assert incident["qualification"] == "work_safety"
        assert incident["grid_id"] == gas["grid"]
        # 4. the assignment: the nearest available squad with the qualification
        assignment = await wait_for(lambda: db.fetchrow(
            "SELECT * FROM assignments WHERE incident_id = $1", incident["id"]))
        assert assignment["unit_id"] == near["id"], assignment["reason"]
        rec = json.loads(assignment["recommendation"]) if isinstance(
            assignment["recommendation"], str) else assignment["recommendation"]
        ranked = [c["unit_id"] for c in rec["candidates"]]
        assert ranked[0] == near["id"]
        assert set(ranked) >= {u["id"] for u in far if u["id"] in ranked}
        state = await db.fetchval("SELECT state FROM incidents WHERE id = $1", incident["id"])
        assert state == "dispatched"
        log_actions = [r["action"] for r in await db.fetch(
            "SELECT action FROM case_log WHERE incident_id = $1 ORDER BY seq",
            incident["id"])]
        assert log_actions == ["report", "register", "dispatch"]

        # 5. the websocket client saw the alarm, the incident and the assignment, in order
        def kinds_seen() -> list[str]:
            return [e["kind"] for e in events]

        async def seen_assignment() -> bool:
            return "unit.assigned" in kinds_seen()

        await wait_for(seen_assignment, timeout=10)
        stop.set()
        await collector
        kinds = kinds_seen()
        assert kinds.index("alarm.raised") < kinds.index("incident.opened") < kinds.index(
            "unit.assigned")
        assigned = next(e for e in events if e["kind"] == "unit.assigned")
        assert assigned["data"]["unit"]["id"] == near["id"]
        assert assigned["data"]["unit"]["status"] == "dispatched"
        assert assigned["data"]["incident"]["state"] == "dispatched"
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
