"""Alarms over real Mosquitto and TimescaleDB: de-duplication under concurrency, flapping,
storm grouping, alarm -> incident, rule state across a restart, backtest, rules API."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from core.db import connect, create_pool
from ingest import alarms, wire
from tests.conftest import (
    HubProcess,
    Publisher,
    town_database,
    town_doc,
    wait_for,
)

TOWN = town_doc()
GAS = [d for d in TOWN["devices"] if d["model"] == "gas_detector"]
AIR = [d for d in TOWN["devices"] if d["model"] == "air_station"]


@pytest_asyncio.fixture(scope="module")
async def alarm_db(base_db_url: str) -> AsyncIterator[str]:
    async with town_database(base_db_url, "a") as url:
        conn = await connect(url)
        # The storm test's devices report every second, so silence shows within seconds.
        grid = _storm_grid()
        await conn.execute("UPDATE devices SET interval_s = 1 WHERE grid_id = $1", grid)
        await conn.close()
        yield url


def _storm_grid() -> str:
    by_grid: dict[str, int] = {}
    for d in TOWN["devices"]:
        by_grid[d["grid"]] = by_grid.get(d["grid"], 0) + 1
    return max(sorted(by_grid), key=lambda g: by_grid[g])


@pytest.fixture(scope="module")
def alarm_hub(alarm_db: str, mqtt_url: str) -> Iterator[HubProcess]:
    hub = HubProcess(alarm_db, mqtt_url, client_id=f"alarm-{uuid.uuid4().hex[:6]}").start()
    yield hub
    hub.stop()


@pytest_asyncio.fixture
async def adb(alarm_db: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(alarm_db)
    yield conn
    await conn.close()


async def test_concurrent_raises_make_one_alarm(alarm_db: str) -> None:
    pool = await create_pool(alarm_db, 5, 20)
    try:
        results = await asyncio.gather(*(
            alarms.raise_alarm(pool, rule_id="gas_lel_high", device_id=GAS[0]["id"],
                               grid_id=GAS[0]["grid"], severity="critical", value=30.0 + i,
                               message="test", ts=time.time()) for i in range(40)))
        opened = [r for r in results if r[1]]
        assert len(opened) == 1
        rows = await pool.fetch("SELECT count FROM alarms WHERE device_id = $1 AND "
                                "rule_id = 'gas_lel_high' AND state <> 'cleared'",
                                GAS[0]["id"])
        assert len(rows) == 1 and rows[0]["count"] == 40
        await alarms.clear_alarm_for(pool, rule_id="gas_lel_high", device_id=GAS[0]["id"],
                                     ts=time.time())
    finally:
        await pool.close()


async def test_two_ingest_processes_racing_raise_one_alarm(
        alarm_db: str, mqtt_url: str, adb: asyncpg.Connection) -> None:
    group = f"race-{uuid.uuid4().hex[:6]}"
    a = HubProcess(alarm_db, mqtt_url, roles="ingest", share_group=group).start()
    b = HubProcess(alarm_db, mqtt_url, roles="ingest", share_group=group).start()
    dev = GAS[1]
    try:
        pub = Publisher(mqtt_url)
        t = time.time()
        infos = [pub.client.publish(wire.telemetry_topic(dev["id"]),
                                    wire.encode_telemetry(t + i * 0.001, {"gas_lel_pct": 40}),
                                    qos=1) for i in range(30)]
        for info in infos:
            info.wait_for_publish(10)
        pub.close()
        await wait_for(lambda: adb.fetchval(
            "SELECT count(*) = 30 FROM telemetry WHERE device_id = $1", dev["id"]))
        await asyncio.sleep(1.0)
        rows = await adb.fetch("SELECT state, count FROM alarms WHERE device_id = $1 AND "
                               "rule_id = 'gas_lel_high'", dev["id"])
        # both processes saw over-limit readings; the database let one alarm open
        assert len(rows) == 1 and rows[0]["state"] == "active"
        assert 1 <= rows[0]["count"] <= 2
    finally:
        a.stop()
        b.stop()


async def test_flapping_alarm_is_held_active(alarm_hub: HubProcess, publisher: Publisher,
                                             adb: asyncpg.Connection) -> None:
    dev = GAS[2]
    t = time.time() - 60
    for i in range(12):  # six raise/clear cycles within a minute
        publisher.publish(wire.telemetry_topic(dev["id"]), wire.encode_telemetry(
            t + i * 2, {"gas_lel_pct": 40.0 if i % 2 == 0 else 2.0}))
    flagged = await wait_for(lambda: adb.fetchrow(
        "SELECT * FROM alarms WHERE device_id = $1 AND rule_id = 'gas_lel_high' AND "
        "flapping", dev["id"]))
    assert flagged["state"] == "active"  # the last verdict was a clear, held
    cycles = await adb.fetchval("SELECT count(*) FROM alarms WHERE device_id = $1 AND "
                                "rule_id = 'gas_lel_high'", dev["id"])
    assert cycles == 4  # three cycles passed, the fourth raise stays open, then held
    kinds = [r["kind"] for r in await adb.fetch(
        "SELECT kind FROM events WHERE payload->'alarm'->>'id' = $1::text ORDER BY seq",
        str(flagged["id"]))]
    assert "alarm.updated" in kinds and "alarm.cleared" not in kinds


async def test_grid_going_silent_is_one_situation_alarm(
        alarm_hub: HubProcess, publisher: Publisher, adb: asyncpg.Connection) -> None:
    grid = _storm_grid()
    devices = [d for d in TOWN["devices"] if d["grid"] == grid]
    assert len(devices) >= 3
    now = time.time()
    for d in devices:
        metric = d["metrics"][0]
        publisher.publish(wire.telemetry_topic(d["id"]),
                          wire.encode_telemetry(now, {metric: 1.0}))
    situation = await wait_for(lambda: adb.fetchrow(
        "SELECT * FROM alarms WHERE situation = $1 AND state <> 'cleared'",
        f"storm:{grid}"), timeout=20)
    await asyncio.sleep(2.0)
    situation = await adb.fetchrow("SELECT * FROM alarms WHERE id = $1", situation["id"])
    assert situation["members"] == len(devices)
    individual = await adb.fetchval(
        "SELECT count(*) FROM alarms WHERE rule_id = 'device_offline' AND device_id = ANY($1)"
        " AND state <> 'cleared'", [d["id"] for d in devices])
    assert individual == 0
    # they come back: the situation clears
    for d in devices:
        publisher.publish(wire.telemetry_topic(d["id"]),
                          wire.encode_telemetry(time.time(), {d["metrics"][0]: 1.0}))
    await wait_for(lambda: adb.fetchval("SELECT state = 'cleared' FROM alarms WHERE id = $1",
                                        situation["id"]), timeout=10)


async def test_alarms_of_one_grid_join_one_incident_which_shows_when_they_cleared(
        alarm_hub: HubProcess, publisher: Publisher, adb: asyncpg.Connection) -> None:
    grid_gas: dict[str, list[dict[str, Any]]] = {}
    for d in GAS:
        grid_gas.setdefault(d["grid"], []).append(d)
    first, second = next(v for v in grid_gas.values() if len(v) >= 2)[:2]
    t = time.time()
    for d in (first, second):
        publisher.publish(wire.telemetry_topic(d["id"]),
                          wire.encode_telemetry(t, {"gas_lel_pct": 33}))
    ids = await wait_for(lambda: adb.fetch(
        "SELECT incident_id FROM alarms WHERE device_id = ANY($1) AND rule_id = "
        "'gas_lel_high' AND incident_id IS NOT NULL", [first["id"], second["id"]]))
    await asyncio.sleep(1.0)
    ids = await adb.fetch("SELECT incident_id FROM alarms WHERE device_id = ANY($1) AND "
                          "rule_id = 'gas_lel_high'", [first["id"], second["id"]])
    assert len(ids) == 2 and ids[0]["incident_id"] == ids[1]["incident_id"] is not None
    iid = ids[0]["incident_id"]
    for d in (first, second):
        publisher.publish(wire.telemetry_topic(d["id"]),
                          wire.encode_telemetry(t + 1, {"gas_lel_pct": 1}))
    await wait_for(lambda: adb.fetchval(
        "SELECT alarms_cleared FROM incidents WHERE id = $1", iid))
    assert await adb.fetchval("SELECT state FROM incidents WHERE id = $1", iid) not in (
        "closed", "archived")  # a person closes cases


async def test_rule_state_survives_a_restart(alarm_hub: HubProcess, publisher: Publisher,
                                             adb: asyncpg.Connection) -> None:
    dev = AIR[0]
    async with alarm_hub.async_client() as client:
        r = await client.put("/api/rules/pm10_for_10s", json={
            "name": "PM10 持续超标", "kind": "duration", "metric": "pm10",
            "severity": "major", "params": {"mode": "instant", "raise_above": 500,
                                            "for_s": 10}})
        assert r.status_code == 200, r.text
        bad = await client.put("/api/rules/broken", json={
            "name": "x", "kind": "threshold", "metric": "pm10", "params": {"raise_above": 1,
                                                                          "clear_below": 5}})
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "rule.invalid"
    t0 = time.time() - 30
    publisher.publish(wire.telemetry_topic(dev["id"]),
                      wire.encode_telemetry(t0, {"pm10": 600}))
    await wait_for(lambda: adb.fetchval(
        "SELECT state->>'since' IS NOT NULL FROM rule_state WHERE rule_id = 'pm10_for_10s' "
        "AND subject = $1", dev["id"]), timeout=10)
    alarm_hub.stop(kill=True)
    alarm_hub.start()
    # 12 s later in device time, still over: raised only if the pending start survived
    publisher.publish(wire.telemetry_topic(dev["id"]),
                      wire.encode_telemetry(t0 + 12, {"pm10": 610}))
    alarm = await wait_for(lambda: adb.fetchrow(
        "SELECT * FROM alarms WHERE rule_id = 'pm10_for_10s' AND device_id = $1", dev["id"]))
    assert alarm["count"] == 1
    await asyncio.sleep(2.5)  # the active state is saved
    alarm_hub.stop()
    alarm_hub.start()
    publisher.publish(wire.telemetry_topic(dev["id"]),
                      wire.encode_telemetry(t0 + 14, {"pm10": 620}))
    await wait_for(lambda: adb.fetchval(
        "SELECT count(*) FROM telemetry WHERE device_id = $1 AND metric = 'pm10' AND "
        "value = 620", dev["id"]))
    await asyncio.sleep(1.0)
    again = await adb.fetch("SELECT id, count, state FROM alarms WHERE rule_id = "
                            "'pm10_for_10s' AND device_id = $1", dev["id"])
    assert [(a["id"], a["count"], a["state"]) for a in again] == [(alarm["id"], 1, "active")]


async def test_backtest_reports_without_raising(alarm_hub: HubProcess,
                                                adb: asyncpg.Connection) -> None:
    dev = AIR[1]["id"]
    base = time.time() - 3600
    values = [10, 20, 90, 95, 30, 20, 99, 10]  # two excursions over 80
    await adb.executemany(
        "INSERT INTO telemetry (ts, device_id, metric, value, received_at) VALUES "
        "(to_timestamp($1), $2, 'pm25', $3, now())",
        [(base + 60 * i, dev, float(v)) for i, v in enumerate(values)])
    before = await adb.fetchval("SELECT count(*) FROM alarms")
    async with alarm_hub.async_client() as client:
        r = await client.post("/api/rules/backtest", json={
            "rule": {"name": "PM2.5 > 80", "kind": "threshold", "metric": "pm25",
                     "params": {"raise_above": 80, "clear_below": 40}},
            "since": base - 1, "until": base + 3600, "device_ids": [dev]})
        assert r.status_code == 200, r.text
        body = r.json()
        stored = await client.post("/api/rules/backtest", json={
            "rule_id": "gas_lel_high", "since": base - 1, "until": base + 3600,
            "device_ids": [dev]})
        assert stored.status_code == 200 and stored.json()["alarms"] == 0
        assert (await client.post("/api/rules/backtest", json={"since": 0})).status_code == 422
    assert body["readings"] == len(values) and body["alarms"] == 2
    first, second = body["episodes"]
    # microsecond timestamps: compare to the microsecond
    assert first["raised_at"] == pytest.approx(base + 120, abs=1e-5)
    assert first["cleared_at"] == pytest.approx(base + 240, abs=1e-5)
    assert second["raised_at"] == pytest.approx(base + 360, abs=1e-5)
    assert second["cleared_at"] == pytest.approx(base + 420, abs=1e-5)
    assert await adb.fetchval("SELECT count(*) FROM alarms") == before
