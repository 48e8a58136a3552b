"""Rollups, retention and device clocks on the real TimescaleDB."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import pytest_asyncio

from core.db import connect, migrate
from ingest import retention, wire
from tests.conftest import (
    HubProcess,
    Publisher,
    create_database,
    drop_database,
    town_doc,
    wait_for,
)

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


@pytest_asyncio.fixture
async def fresh(base_db_url: str) -> AsyncIterator[asyncpg.Connection]:
    name = f"gridhub_ts{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = await create_database(base_db_url, name)
    conn = await connect(url)
    await migrate(conn)
    yield conn
    await conn.close()
    await drop_database(base_db_url, name)


async def _insert(conn: asyncpg.Connection, rows: list[tuple[datetime, str, str, float]]) -> None:
    await conn.executemany(
        "INSERT INTO telemetry (ts, device_id, metric, value, received_at) "
        "VALUES ($1, $2, $3, $4, $1)", rows)


@pytest.mark.parametrize(("done", "earliest", "now", "expected"), [
    (None, None, T0, []),
    # first run: from the earliest reading to the last complete minute, in 1 h steps
    (None, T0, T0 + timedelta(minutes=90, seconds=30),
     [(T0, T0 + timedelta(hours=1)), (T0 + timedelta(hours=1), T0 + timedelta(minutes=90))]),
    # later runs go back by the look-back (10 min) for late readings
    (T0 + timedelta(minutes=30), None, T0 + timedelta(minutes=31, seconds=5),
     [(T0 + timedelta(minutes=20), T0 + timedelta(minutes=31))]),
])
def test_rollup_plan(done: datetime | None, earliest: datetime | None, now: datetime,
                     expected: list[tuple[datetime, datetime]]) -> None:
    assert retention.plan(done, earliest, now, retention.ROLLUPS[0]) == expected


async def test_minute_and_hour_rollups_match_raw_data(fresh: asyncpg.Connection) -> None:
    rows = []
    for minute in range(125):  # two hours and five minutes, 3 readings a minute
        for k, v in enumerate((1.0, 2.0, 6.0)):
            rows.append((T0 + timedelta(minutes=minute, seconds=10 * k), "D1", "pm25",
                         v + minute))
    await _insert(fresh, rows)
    now = T0 + timedelta(minutes=125, seconds=1)
    for r in retention.ROLLUPS:
        await retention.run_rollup(fresh, r, now=now)
    m = await fresh.fetchrow("SELECT min, max, avg, count FROM telemetry_1m WHERE "
                             "bucket = $1", T0 + timedelta(minutes=7))
    assert (m["min"], m["max"], m["avg"], m["count"]) == (8.0, 13.0, 10.0, 3)
    assert await fresh.fetchval("SELECT count(*) FROM telemetry_1m") == 125
    h = await fresh.fetchrow("SELECT min, max, avg, count FROM telemetry_1h WHERE bucket = $1",
                             T0)
    raw = await fresh.fetchrow(
        "SELECT min(value), max(value), avg(value), count(*) FROM telemetry "
        "WHERE ts >= $1 AND ts < $2", T0, T0 + timedelta(hours=1))
    assert (h["min"], h["max"], h["count"]) == (raw["min"], raw["max"], raw["count"])
    assert h["avg"] == pytest.approx(raw["avg"])
    # the hour in progress is not final, so it is not there yet
    assert await fresh.fetchval("SELECT count(*) FROM telemetry_1h") == 2
    # a late reading inside the look-back is picked up by the next run, not counted twice
    await _insert(fresh, [(T0 + timedelta(minutes=120, seconds=55), "D1", "pm25", 1000.0)])
    for r in retention.ROLLUPS:
        await retention.run_rollup(fresh, r, now=now + timedelta(seconds=30))
    late = await fresh.fetchrow("SELECT max, count FROM telemetry_1m WHERE bucket = $1",
                                T0 + timedelta(minutes=120))
    assert (late["max"], late["count"]) == (1000.0, 4)


async def test_rollups_after_a_late_store_and_forward_batch_match_raw_data(
        fresh: asyncpg.Connection) -> None:
    # two devices report on time for three hours; the rollups run every few minutes
    on_time = [(T0 + timedelta(minutes=m, seconds=s), d, "pm25", float(m % 7 + s))
               for m in range(180) for s in (0, 30) for d in ("D1", "D2")]
    await _insert(fresh, on_time)
    now = T0 + timedelta(hours=3, seconds=5)
    for r in retention.ROLLUPS:
        await retention.run_rollup(fresh, r, now=now)
    # D2's gateway was cut off 08:20-08:50: its buffered readings (an extra one a minute,
    # a spike among them) arrive two and a half hours late, long after the look-back
    late = [(T0 + timedelta(minutes=m, seconds=15), "D2", "pm25", 500.0 if m == 33 else 3.0)
            for m in range(20, 50)]
    await fresh.executemany(
        "INSERT INTO telemetry (ts, device_id, metric, value, received_at) "
        "VALUES ($1, $2, $3, $4, $5)", [(*row, now) for row in late])
    later = now + timedelta(minutes=2)
    for r in retention.ROLLUPS:
        await retention.run_rollup(fresh, r, now=later)
    # every finished minute and hour bucket matches the raw rows, both devices
    for table, width in (("telemetry_1m", "1 minute"), ("telemetry_1h", "1 hour")):
        mismatched = await fresh.fetch(
            f"""WITH raw AS (SELECT time_bucket('{width}', ts) AS bucket, device_id, metric,
                                    min(value), max(value), sum(value), count(*)
                             FROM telemetry WHERE ts < $1 GROUP BY 1, 2, 3)
                SELECT * FROM raw FULL JOIN {table} r USING (bucket, device_id, metric)
                WHERE raw.bucket < $1 AND (r.count IS DISTINCT FROM raw.count
                   OR r.max IS DISTINCT FROM raw.max OR r.min IS DISTINCT FROM raw.min
                   OR abs(r.sum - raw.sum) > 1e-9)""", T0 + timedelta(hours=3))
        assert mismatched == [], table
    spike = await fresh.fetchrow("SELECT max, count FROM telemetry_1h WHERE bucket = $1 AND "
                                 "device_id = 'D2'", T0)
    assert (spike["max"], spike["count"]) == (500.0, 120 + 30)
    # the scan moved on: nothing is rebuilt twice
    assert await retention.refresh_late(fresh, later + timedelta(minutes=5)) == 0


async def test_retention_drops_old_chunks_only(fresh: asyncpg.Connection) -> None:
    now = datetime.now(UTC)
    await _insert(fresh, [(now - timedelta(days=40), "D1", "pm25", 1.0),
                          (now - timedelta(days=2), "D1", "pm25", 2.0)])
    dropped = await retention.drop_old_chunks(fresh, "telemetry", timedelta(days=30))
    assert dropped == 1
    assert [r["value"] for r in await fresh.fetch("SELECT value FROM telemetry")] == [2.0]


async def test_device_clock_skew_is_tracked_and_flagged(
        base_db_url: str, db_url: str, mqtt_url: str, publisher: Publisher) -> None:
    dev_ok, dev_off = [d["id"] for d in town_doc()["devices"]
                       if d["model"] == "noise_meter"][:2]
    hub = HubProcess(db_url, mqtt_url, roles="ingest",
                     extra_env={"HUB_CLOCK_SAVE_INTERVAL_S": "1"}).start()
    try:
        for i in range(5):
            now = time.time()
            publisher.publish(wire.telemetry_topic(dev_ok),
                              wire.encode_telemetry(now - 0.01 * i, {"noise_db": 50}))
            # a clock four minutes slow: inside what the decoder accepts, beyond the limit
            publisher.publish(wire.telemetry_topic(dev_off),
                              wire.encode_telemetry(now - 240 + i, {"noise_db": 50}))
        async with hub.async_client() as client:
            async def flagged() -> list[dict[str, object]]:
                r = await client.get("/api/devices/clocks", params={"flagged": "true"})
                return [c for c in r.json() if c["device_id"] == dev_off]

            (off,) = await wait_for(flagged, timeout=15)
            assert 230 < off["skew_s"] < 250  # type: ignore[operator]
            clocks = {c["device_id"]: c for c in (await client.get("/api/devices/clocks")).json()}
            assert clocks[dev_ok]["flagged"] is False and abs(clocks[dev_ok]["skew_s"]) < 5
    finally:
        hub.stop()
