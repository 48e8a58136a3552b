"""SenML as real producers send it, through real Mosquitto into TimescaleDB: an RFC 8428
pack naming the device alone (metric from the unit), an LwM2M gateway's object paths, a
per-device override set through the admin API (audited), and an unmapped shape in the dead
letters with how to map it."""

from __future__ import annotations

import json
import time
import uuid

import asyncpg
import httpx

from ingest import wire
from tests.conftest import HubProcess, Publisher, wait_for


async def test_device_alone_and_lwm2m_packs_are_stored_and_overrides_apply(
        hub: HubProcess, publisher: Publisher, db: asyncpg.Connection) -> None:
    tag = uuid.uuid4().hex[:8]
    urn = f"urn:dev:ow:{tag}"  # a device registered by its SenML URN
    grid = await db.fetchval("SELECT grid_id FROM devices LIMIT 1")
    await db.execute(
        "INSERT INTO devices (id, kind, model, name, lon, lat, grid_id, metrics) "
        "VALUES ($1, 'environment', 'th_sensor', 'boiler room', 120.4, 31.8, $2, "
        "'{temperature_c,humidity_pct,pm25,water_temp_c}')", urn, grid)
    async with hub.async_client(timeout=10) as client:
        # An override: this device's "ug/m3" is PM2.5, its second temperature sensor the
        # water's. Setting it also reloads the hub's registry (the new device with it).
        r = await client.put(f"/api/devices/{urn}/senml-map", json={
            "map": {"ug/m3": "pm25", "3303/1/5700": "water_temp_c"}})
        assert r.status_code == 200, r.text
        got = (await client.get(f"/api/devices/{urn}/senml-map")).json()
        assert got["map"] == {"ug/m3": "pm25", "3303/1/5700": "water_temp_c"}
        assert got["defaults"]["units"]["Cel"] == "temperature_c"
        bad = await client.put(f"/api/devices/{urn}/senml-map",
                               json={"map": {"Cel": "no spaces allowed"}})
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "senml_map.invalid"
        missing = await client.put("/api/devices/no-such-device/senml-map", json={"map": {}})
        assert missing.status_code == 404
    actor = await db.fetchval("SELECT actor FROM security_events WHERE kind = "
                              "'device.senml_map_changed' AND target = $1", urn)
    assert actor  # the admin token's name, never one from the request
    assert await db.fetchval("SELECT senml_map->>'ug/m3' FROM devices WHERE id = $1",
                             urn) == "pm25"

    now = round(time.time(), 3)
    # RFC 8428 shape: the name is the device, the unit tells the measurements apart
    publisher.publish(wire.senml_topic("gw-test"), json.dumps(
        [{"bn": urn, "bt": now - 2, "u": "Cel", "v": 21.5},
         {"u": "%RH", "v": 44}, {"u": "ug/m3", "v": 18}]))
    # An LwM2M gateway: object/instance/resource paths, a descriptive string resource
    publisher.publish(wire.senml_topic("gw-test"), json.dumps(
        [{"bn": f"{urn}:/3303/0/", "bt": now - 1, "n": "5700", "v": 22.0},
         {"n": "5701", "vs": "Cel"},
         {"bn": f"{urn}:/3303/1/", "n": "5700", "v": 61.0}]))
    # Unknown shape: a generic sensor object without an override
    publisher.publish(wire.senml_topic("gw-test"), json.dumps(
        [{"bn": f"{urn}:/3300/0/", "bt": now, "n": "5700", "v": 3}]))

    async def stored() -> dict[str, float]:
        rows = await db.fetch("SELECT metric, value FROM telemetry WHERE device_id = $1 "
                              "AND ts >= to_timestamp($2)", urn, now - 10)
        got = {r["metric"] + ("@lwm2m" if r["value"] in (22.0, 61.0) else ""): r["value"]
               for r in rows}
        return got if len(got) == 5 else {}

    got = await wait_for(stored)
    assert got == {"temperature_c": 21.5, "humidity_pct": 44.0, "pm25": 18.0,
                   "temperature_c@lwm2m": 22.0, "water_temp_c@lwm2m": 61.0}
    letter = await wait_for(lambda: db.fetchrow(
        "SELECT reason, detail FROM dead_letters WHERE topic = $1 AND detail LIKE $2",
        wire.senml_topic("gw-test"), f"%{urn}%3300%"))
    assert letter["reason"] == "unmapped_name"
    assert f'PUT /api/devices/{urn}/senml-map {{"map": {{"3300/0/5700": "<metric>"}}}}' \
        in letter["detail"]


def test_senml_map_is_for_admins_only(hub: HubProcess) -> None:
    viewer = hub.make_token("operator")
    r = httpx.put(f"{hub.url}/api/devices/x/senml-map", json={"map": {}}, timeout=10,
                  headers={"Authorization": f"Bearer {viewer}"})
    assert r.status_code == 403
