"""Alarm internals over real Mosquitto and TimescaleDB (issue 13): a rule over its cap groups
its raises (every one visible), a slow device clock never raises "offline", a storm
situation clears after a restart, rule edits and operators' clears are reconciled, an
out-of-order spike within the reorder window raises, backtests run in a child process."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from core.db import connect
from core.errors import Conflict, InvalidInput
from ingest import backtest, backtest_job, rules, wire
from ingest.backtest_job import Backtests
from tests.conftest import HubProcess, Publisher, town_database, town_doc, wait_for

TOWN = town_doc()
GAS = [d for d in TOWN["devices"] if d["model"] == "gas_detector"]
AIR = [d for d in TOWN["devices"] if d["model"] == "air_station"]
N_DETECTORS = 150
CAP = 100  # ingest/watch.py CAP_RAISES: gas_lel_high sets no cap of its own
NEW_GRID = "G01-01"
SPIKE_DEV = GAS[0]["id"]
SKEWED = AIR[2]["id"]
REALARM_S = 2.0


def _grid_of_most() -> str:
    by_grid: dict[str, int] = {}
    for d in TOWN["devices"]:
        by_grid[d["grid"]] = by_grid.get(d["grid"], 0) + 1
    return max(sorted(by_grid), key=lambda g: by_grid[g])


STORM_GRID = _grid_of_most()
STORM_DEVS = [d["id"] for d in TOWN["devices"] if d["grid"] == STORM_GRID]
DETECTORS = [f"TGAS-{i:04d}" for i in range(N_DETECTORS)]


@pytest_asyncio.fixture(scope="module")
async def storm_db(base_db_url: str) -> AsyncIterator[str]:
    async with town_database(base_db_url, "st") as url:
        conn = await connect(url)
        # 150 more gas detectors, in a grid away from the storm grid
        await conn.executemany(
            """INSERT INTO devices (id, kind, model, name, lon, lat, grid_id, metrics,
                                    interval_s) VALUES ($1, 'safety', 'gas_detector', $1,
                                    120.38, 31.84, $2, '{gas_lel_pct}', 600)""",
            [(d, NEW_GRID) for d in DETECTORS])
        # silence shows within seconds for the storm grid and the skewed device
        await conn.execute("UPDATE devices SET interval_s = 1 WHERE grid_id = $1 OR id = $2",
                           STORM_GRID, SKEWED)
        await conn.execute("""UPDATE devices SET props = props || '{"test": "spike"}'
                              WHERE id = $1""", SPIKE_DEV)
        await conn.close()
        yield url


@pytest.fixture(scope="module")
def storm_hub(storm_db: str, mqtt_url: str) -> Iterator[HubProcess]:
    hub = HubProcess(storm_db, mqtt_url, extra_env={
        "HUB_ALARM_REALARM_S": str(REALARM_S), "HUB_BACKTEST_MAX_ROWS": "50"}).start()
    yield hub
    hub.stop()


@pytest_asyncio.fixture
async def db(storm_db: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(storm_db)
    yield conn
    await conn.close()


def _send(pub: Publisher, device: str, ts: float, values: dict[str, float]) -> None:
    pub.publish(wire.telemetry_topic(device), wire.encode_telemetry(ts, values))


async def test_detectors_over_the_cap_are_all_visible_in_one_grouped_alarm(
        storm_hub: HubProcess, publisher: Publisher, db: asyncpg.Connection) -> None:
    t = time.time()
    for i, d in enumerate(DETECTORS):
        _send(publisher, d, t + i * 0.001, {"gas_lel_pct": 40.0})
    group = await wait_for(lambda: db.fetchrow(
        "SELECT * FROM alarms WHERE device_id = 'cap:gas_lel_high' AND state <> 'cleared' "
        "AND members = $1", N_DETECTORS - CAP), timeout=20)
    own = await db.fetch("SELECT device_id FROM alarms WHERE rule_id = 'gas_lel_high' AND "
                         "device_id = ANY($1) AND state <> 'cleared'", DETECTORS)
    members = await db.fetch("SELECT device_id FROM alarm_members WHERE alarm_id = $1 AND "
                             "cleared_at IS NULL", group["id"])
    assert len(own) == CAP
    # every detector is seen: its own alarm or a member of the group, never both, none lost
    assert sorted([r["device_id"] for r in own] + [r["device_id"] for r in members]) \
        == DETECTORS
    assert group["severity"] == "critical" and group["situation"] == "cap:gas_lel_high"
    # the live feed carries the count (the console's alarm row shows it)
    shown = await db.fetchval(
        """SELECT (payload->'alarm'->>'members')::int FROM events
           WHERE payload->'alarm'->>'id' = $1::text ORDER BY seq DESC LIMIT 1""",
        str(group["id"]))
    assert shown == N_DETECTORS - CAP
    async with storm_hub.async_client() as client:
        r = await client.get(f"/api/rules/alarm-groups/{group['id']}")
        assert r.status_code == 200, r.text
        assert len(r.json()["members"]) == N_DETECTORS - CAP
        assert (await client.get("/api/rules/alarm-groups/999999")).status_code == 404
    # the gas is gone: members leave, the group clears with its last one, own alarms clear
    for i, d in enumerate(DETECTORS):
        _send(publisher, d, t + 1 + i * 0.001, {"gas_lel_pct": 1.0})
    await wait_for(lambda: db.fetchval(
        "SELECT state = 'cleared' FROM alarms WHERE id = $1", group["id"]), timeout=20)
    await wait_for(lambda: db.fetchval(
        "SELECT count(*) = 0 FROM alarms WHERE device_id = ANY($1) AND state <> 'cleared'",
        DETECTORS), timeout=20)


async def test_a_healthy_device_with_a_slow_clock_never_alarms(
        storm_hub: HubProcess, publisher: Publisher, db: asyncpg.Connection) -> None:
    # interval 1 s, factor 3: judged on device time, 300 s behind, it would raise at once
    for _ in range(8):
        _send(publisher, SKEWED, time.time() - 300.0, {"pm25": 10.0})
        await asyncio.sleep(0.7)
    assert await db.fetchval("SELECT count(*) FROM alarms WHERE rule_id = 'device_offline' "
                             "AND device_id = $1", SKEWED) == 0
    # and once it really stops, it does (the rule is live for it)
    await wait_for(lambda: db.fetchval(
        "SELECT count(*) > 0 FROM alarms WHERE rule_id = 'device_offline' AND "
        "device_id = $1", SKEWED), timeout=10)
    _send(publisher, SKEWED, time.time() - 300.0, {"pm25": 10.0})


async def test_storm_situation_clears_after_a_restart(
        storm_hub: HubProcess, publisher: Publisher, db: asyncpg.Connection) -> None:
    for d in STORM_DEVS:
        metric = next(x for x in TOWN["devices"] if x["id"] == d)["metrics"][0]
        _send(publisher, d, time.time(), {metric: 1.0})
    situation = await wait_for(lambda: db.fetchrow(
        "SELECT * FROM alarms WHERE situation = $1 AND state <> 'cleared' AND members = $2",
        f"storm:{STORM_GRID}", len(STORM_DEVS)), timeout=20)
    listed = await db.fetchval("SELECT count(*) FROM alarm_members WHERE alarm_id = $1 AND "
                               "cleared_at IS NULL", situation["id"])
    assert listed == len(STORM_DEVS)
    storm_hub.stop(kill=True)  # no goodbye: what it knew is in the database
    storm_hub.start()
    for d in STORM_DEVS:
        metric = next(x for x in TOWN["devices"] if x["id"] == d)["metrics"][0]
        _send(publisher, d, time.time(), {metric: 1.0})
    await wait_for(lambda: db.fetchval("SELECT state = 'cleared' FROM alarms WHERE id = $1",
                                       situation["id"]), timeout=15)
    # they keep reporting so later tests see no new storm
    for d in STORM_DEVS:
        await db.execute("UPDATE devices SET interval_s = 600 WHERE id = $1", d)


async def _put_rule(hub: HubProcess, rule_id: str, body: dict[str, Any]) -> None:
    async with hub.async_client() as client:
        r = await client.put(f"/api/rules/{rule_id}", json=body)
        assert r.status_code == 200, r.text


async def test_rule_edit_and_operator_clear_are_reconciled(
        storm_hub: HubProcess, publisher: Publisher, db: asyncpg.Connection) -> None:
    dev = AIR[3]["id"]
    body = {"name": "PM10 high", "kind": "threshold", "metric": "pm10",
            "params": {"raise_above": 500, "clear_below": 100}}
    await _put_rule(storm_hub, "pm10_edit", body)
    t = time.time()
    _send(publisher, dev, t, {"pm10": 600})
    first = await wait_for(lambda: db.fetchrow(
        "SELECT * FROM alarms WHERE rule_id = 'pm10_edit' AND device_id = $1 AND "
        "state <> 'cleared'", dev))
    # edited: its state starts afresh, but the open alarm is taken back and clears
    await _put_rule(storm_hub, "pm10_edit", {**body, "params": {"raise_above": 550,
                                                               "clear_below": 100}})
    _send(publisher, dev, t + 1, {"pm10": 50})
    await wait_for(lambda: db.fetchval("SELECT state = 'cleared' FROM alarms WHERE id = $1",
                                       first["id"]))
    # raised again; an operator clears it while it still holds: it comes back after the
    # re-alarm interval, with no new reading needed
    _send(publisher, dev, t + 2, {"pm10": 700})
    second = await wait_for(lambda: db.fetchrow(
        "SELECT * FROM alarms WHERE rule_id = 'pm10_edit' AND device_id = $1 AND "
        "state <> 'cleared'", dev))
    async with storm_hub.async_client() as client:
        r = await client.post(f"/api/alarms/{second['id']}/clear",
                              json={"by": "admin", "reason": "checked on site"})
        assert r.status_code == 200, r.text
    cleared_at = time.monotonic()
    third = await wait_for(lambda: db.fetchrow(
        "SELECT * FROM alarms WHERE rule_id = 'pm10_edit' AND device_id = $1 AND "
        "state <> 'cleared'", dev), timeout=15)
    assert third["id"] != second["id"] and "operator" in third["message"]
    assert time.monotonic() - cleared_at >= REALARM_S - 0.5
    _send(publisher, dev, t + 3, {"pm10": 50})
    await wait_for(lambda: db.fetchval("SELECT state = 'cleared' FROM alarms WHERE id = $1",
                                       third["id"]))


async def test_out_of_order_gas_spike_within_the_window_raises(
        storm_hub: HubProcess, publisher: Publisher, db: asyncpg.Connection) -> None:
    await _put_rule(storm_hub, "gas_spike", {
        "name": "gas spike", "kind": "threshold", "metric": "gas_lel_pct",
        "device_filter": {"test": "spike"}, "params": {"raise_above": 25, "clear_below": 10}})
    t = time.time()
    _send(publisher, SPIKE_DEV, t, {"gas_lel_pct": 2.0})
    _send(publisher, SPIKE_DEV, t + 1.0, {"gas_lel_pct": 2.0})
    await wait_for(lambda: db.fetchval(
        "SELECT count(*) = 2 FROM telemetry WHERE device_id = $1 AND ts >= to_timestamp($2)",
        SPIKE_DEV, t - 0.001))
    await asyncio.sleep(0.3)  # evaluated; the gateway's late spike comes now
    _send(publisher, SPIKE_DEV, t + 0.5, {"gas_lel_pct": 60.0})
    alarm = await wait_for(lambda: db.fetchrow(
        "SELECT * FROM alarms WHERE rule_id = 'gas_spike' AND device_id = $1", SPIKE_DEV))
    assert alarm["raised_at"].timestamp() == pytest.approx(t + 0.5, abs=1e-3)
    # the reading after it (device time) was under the clear level: cleared at its time
    await wait_for(lambda: db.fetchval("SELECT state = 'cleared' FROM alarms WHERE id = $1",
                                       alarm["id"]))


async def test_backtests_run_in_a_child_process_with_caps_and_cancel(
        storm_hub: HubProcess, storm_db: str, db: asyncpg.Connection) -> None:
    dev = AIR[5]["id"]
    base = time.time() - 7200
    await db.executemany(
        "INSERT INTO telemetry (ts, device_id, metric, value, received_at) VALUES "
        "(to_timestamp($1), $2, 'pm25', $3, now())",
        [(base + 10 * i, dev, 90.0 if i % 10 == 0 else 10.0) for i in range(100)])
    req = {"rule": {"name": "PM2.5 > 80", "kind": "threshold", "metric": "pm25",
                    "params": {"raise_above": 80, "clear_below": 40}},
           "since": base - 1, "until": base + 3600, "device_ids": [dev]}
    async with storm_hub.async_client() as client:
        r = await client.post("/api/rules/backtest", json=req)  # this hub caps at 50 rows
        assert r.status_code == 422 and r.json()["error"]["code"] == "backtest.too_many_rows"
        r = await client.post("/api/rules/backtest", json={**req, "until": base + 400})
        assert r.status_code == 200, r.text
        assert (r.json()["readings"], r.json()["alarms"]) == (40, 4)
        r = await client.delete("/api/rules/backtest/nothing-running")
        assert r.status_code == 404
    rule = rules.Rule(id="bt", name="bt", kind="threshold", metric="pm25", device_model=None,
                      params={"raise_above": 80, "clear_below": 40})
    jobs = Backtests(storm_db, 1000, 30.0, 2)
    done = await jobs.run("a", rule, base - 1, base + 3600, None, [dev])
    assert done["readings"] == 100 and len(done["episodes"]) == 10
    assert done["pid"] != os.getpid()  # evaluated in another process
    # the test server is on this machine and the tests' user may renice it (root, or the
    # server's own user): the backend that read for the backtest ran at the lowest priority
    assert done["backend_lowered"].startswith("nice 19")
    # cancelled while running: the child is killed, the caller told
    task = asyncio.create_task(jobs.run("b", rule, base - 1, base + 3600, None, [dev]))
    await wait_for(lambda: asyncio.sleep(0, "b" in jobs.running), interval=0.005)
    proc = jobs.running["b"]
    assert jobs.cancel("b")
    with pytest.raises(Conflict) as cancelled:
        await task
    assert cancelled.value.code == "backtest.cancelled" and proc.returncode is not None
    # over the time cap: killed, the caller told
    slow = Backtests(storm_db, 1000, 0.01, 2)
    with pytest.raises(InvalidInput) as timed_out:
        await slow.run("c", rule, base - 1, base + 3600, None, [dev])
    assert timed_out.value.code == "backtest.timeout" and slow.running == {}


async def test_a_backtest_reads_blocks_of_devices_and_finds_what_each_alone_would(
        storm_db: str, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    """Devices are read a block per query (not a query each): the episodes are those of
    the pure backtest over each device's own series, the cap still counts every reading,
    and the answer says what the backtest cost."""
    devs = [d["id"] for d in AIR[6:11]]
    base = round(time.time() - 5400)  # whole seconds: stored exactly (microseconds)
    series = {d: [(base + 10 * i + k, 95.0 if (i + k) % 7 == 0 else 5.0) for i in range(30)]
              for k, d in enumerate(devs)}
    await db.executemany(
        "INSERT INTO telemetry (ts, device_id, metric, value, received_at) VALUES "
        "(to_timestamp($1), $2, 'pm25', $3, now())",
        [(ts, d, v) for d, pts in series.items() for ts, v in pts])
    rule = {"id": "blk", "name": "blk", "kind": "threshold", "metric": "pm25",
            "device_model": None, "params": {"raise_above": 80, "clear_below": 40},
            "severity": "warning"}
    req = {"database_url": storm_db, "max_rows": 1000, "rule": rule, "since": base - 1,
           "until": base + 400, "model": None, "device_ids": devs}
    monkeypatch.setattr(backtest_job, "DEVICES_PER_QUERY", 2)
    done = await backtest_job._child(req)
    assert done["ok"] and done["readings"] == 150 and done["queries"] == 3
    want = backtest.backtest(rules.Rule(**{k: rule[k] for k in (
        "id", "name", "kind", "metric", "device_model", "params", "severity")}), series)
    assert done["episodes"] == [dataclasses.asdict(e) for e in want] and want
    assert done["cpu_s"]["child"] > 0 and done["cpu_s"]["backend"] is not None
    over = await backtest_job._child({**req, "max_rows": 149})
    assert not over["ok"] and over["code"] == "backtest.too_many_rows"


async def test_a_backtests_backend_is_left_alone_when_the_server_is_elsewhere(
        db: asyncpg.Connection) -> None:
    """Another host's (or container's) backend pid means nothing here: never reniced."""
    pid = await db.fetchval("SELECT pg_backend_pid()")
    before = os.getpriority(os.PRIO_PROCESS, pid)
    answer = await backtest_job._lower_backend(db, "postgresql://u@db.internal:5432/x")
    assert answer == ("not local", None)
    assert os.getpriority(os.PRIO_PROCESS, pid) == before
