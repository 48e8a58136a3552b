"""Dispatch over the real database and a running hub: the case-log chain, SLA timers across
a restart, escalation, override with a reason, preemption, and the Open311 endpoint.

Each test module runs its own hub on a database of its own with SLA clocks shrunk
(HUB_SLA_TIME_SCALE) so that minutes pass in seconds.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio

from core.db import connect
from ingest import wire
from tests.conftest import (
    HubProcess,
    Publisher,
    town_database,
    town_doc,
    wait_for,
)

TOWN = town_doc()
# 0.002: a priority-2 case must be dispatched within 2.4 s (20 min), warned at 1.9 s;
# a priority-3 dispatch must be accepted within 1.8 s (15 min).
SCALE = "0.002"


@pytest_asyncio.fixture(scope="module")
async def flow_db(base_db_url: str) -> AsyncIterator[str]:
    async with town_database(base_db_url, "d") as url:
        yield url


@pytest.fixture(scope="module")
def flow_hub(flow_db: str, mqtt_url: str) -> Iterator[HubProcess]:
    hub = HubProcess(flow_db, mqtt_url, extra_env={"HUB_SLA_TIME_SCALE": SCALE}).start()
    yield hub
    hub.stop()


@pytest_asyncio.fixture
async def fdb(flow_db: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(flow_db)
    yield conn
    await conn.close()


def _somewhere(i: int = 0) -> dict[str, float]:
    d = TOWN["devices"][i]
    return {"lon": d["lon"], "lat": d["lat"]}


async def _create(client: httpx.AsyncClient, **kw: Any) -> dict[str, Any]:
    body = {"category": "city_order", "qualification": "city_management", "priority": 3,
            "title": "测试案件", **_somewhere(), **kw}
    r = await client.post("/api/incidents", json=body)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


async def _events(db: asyncpg.Connection, kind: str, incident_id: int, stage: str) -> int:
    return int(await db.fetchval(
        "SELECT count(*) FROM events WHERE kind = $1 AND (payload->'incident'->>'id')::bigint"
        " = $2 AND payload->>'stage' = $3", kind, incident_id, stage))


async def test_case_log_is_a_verifiable_chain_that_shows_tampering(
        flow_hub: HubProcess, fdb: asyncpg.Connection) -> None:
    # Every step is recorded under the caller's login: the hub's admin token reports, a
    # second operator's token cancels; a name in the body is ignored.
    operator2 = {"Authorization": "Bearer " + flow_hub.make_token(
        "operator", name=f"operator2-{uuid.uuid4().hex[:6]}")}
    me = httpx.get(flow_hub.url + "/api/me", headers=operator2).json()["name"]
    async with flow_hub.async_client() as client:
        inc = await _create(client, qualification="no_such_department")
        iid = inc["id"]
        r = await client.post(f"/api/incidents/{iid}/actions", headers=operator2,
                              json={"action": "cancel", "actor": "operator1", "reason": "重复上报"})
        assert r.status_code == 200, r.text
        # an illegal step is refused with a stable code and logs nothing
        r = await client.post(f"/api/incidents/{iid}/actions", json={"action": "close"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "case.illegal_transition"
        detail = (await client.get(f"/api/incidents/{iid}")).json()
        assert [e["action"] for e in detail["log"]] == ["report", "register", "cancel"]
        assert [e["actor"] for e in detail["log"]] == ["test-admin", "test-admin", me]
        ok = (await client.get(f"/api/incidents/{iid}/log/verify")).json()
        assert ok["ok"] is True and ok["entries"] == 3, ok

        await fdb.execute("UPDATE case_log SET actor = 'someone_else' WHERE incident_id = $1 "
                          "AND seq = 2", iid)
        bad = (await client.get(f"/api/incidents/{iid}/log/verify")).json()
        assert bad["ok"] is False and bad["first_bad_seq"] == 2
        await fdb.execute("UPDATE case_log SET actor = 'test-admin' WHERE incident_id = $1 "
                          "AND seq = 2", iid)
        assert (await client.get(f"/api/incidents/{iid}/log/verify")).json()["ok"] is True
        # deleting the newest entry leaves a valid-looking chain, but not the recorded head
        await fdb.execute("DELETE FROM case_log WHERE incident_id = $1 AND seq = 3", iid)
        cut = (await client.get(f"/api/incidents/{iid}/log/verify")).json()
        assert cut["ok"] is False and cut["head_ok"] is False


async def test_sla_warning_and_breach_fire_once_across_a_restart(
        flow_hub: HubProcess, fdb: asyncpg.Connection) -> None:
    async with flow_hub.async_client() as client:
        # nobody holds this qualification: the case waits, and its dispatch clock runs out
        inc = await _create(client, priority=2, qualification="no_such_department")
    iid = inc["id"]
    assert inc["sla"]["dispatch"]["state"] == "ok"
    flow_hub.stop(kill=True)  # down before the warning (1.9 s) and the breach (2.4 s)
    await asyncio.sleep(3.0)
    flow_hub.start()
    await wait_for(lambda: _events(fdb, "sla.breached", iid, "dispatch"), timeout=10)
    assert await _events(fdb, "sla.warned", iid, "dispatch") == 1
    sla = await fdb.fetchval("SELECT sla FROM incidents WHERE id = $1", iid)
    assert sla["dispatch"]["state"] == "breached"
    assert sla["register"]["state"] == "met"
    # another restart fires nothing again
    flow_hub.stop()
    flow_hub.start()
    await asyncio.sleep(1.5)
    assert await _events(fdb, "sla.breached", iid, "dispatch") == 1
    assert await _events(fdb, "sla.warned", iid, "dispatch") == 1


async def test_unaccepted_dispatch_escalates_to_the_next_candidate(
        flow_hub: HubProcess, fdb: asyncpg.Connection) -> None:
    async with flow_hub.async_client() as client:
        inc = await _create(client, priority=3, qualification="environment",
                            title="污水直排")
    iid = inc["id"]
    first = await wait_for(lambda: fdb.fetchrow(
        "SELECT * FROM assignments WHERE incident_id = $1 ORDER BY id LIMIT 1", iid))
    # nobody signs: after the accept time-out (1.8 s here) it goes to another unit
    second = await wait_for(lambda: fdb.fetchrow(
        "SELECT * FROM assignments WHERE incident_id = $1 AND id > $2 ORDER BY id LIMIT 1",
        iid, first["id"]), timeout=15)
    assert second["unit_id"] != first["unit_id"]
    assert await fdb.fetchval("SELECT status FROM assignments WHERE id = $1",
                              first["id"]) == "escalated"
    alert = await fdb.fetchrow("SELECT * FROM supervisor_alerts WHERE incident_id = $1 "
                               "AND kind = 'escalated'", iid)
    assert alert is not None and first["unit_id"] in alert["message"]
    actions = [r["action"] for r in await fdb.fetch(
        "SELECT action FROM case_log WHERE incident_id = $1 ORDER BY seq", iid)]
    assert actions[:5] == ["report", "register", "dispatch", "decline", "dispatch"]
    assert await fdb.fetchval("SELECT status FROM units WHERE id = $1",
                              first["unit_id"]) == "available"


async def test_operator_override_needs_a_reason_and_is_logged(
        flow_hub: HubProcess, fdb: asyncpg.Connection) -> None:
    name3 = f"operator3-{uuid.uuid4().hex[:6]}"
    operator3 = {"Authorization": "Bearer " + flow_hub.make_token("operator", name=name3)}
    async with flow_hub.async_client() as client:
        inc = await _create(client, priority=4, qualification="city_management",
                            title="乱堆乱放")
        iid = inc["id"]
        picked = await wait_for(lambda: fdb.fetchrow(
            "SELECT unit_id FROM assignments WHERE incident_id = $1 AND status = 'active'",
            iid))
        other = await fdb.fetchval(
            "SELECT id FROM units WHERE status = 'available' AND id <> $1 AND "
            "'city_management' = ANY(qualifications) ORDER BY id LIMIT 1", picked["unit_id"])
        r = await client.post(f"/api/incidents/{iid}/assign", headers=operator3, json={
            "unit_id": other, "reason_code": "because"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "dispatch.override_reason"
        r = await client.post(f"/api/incidents/{iid}/assign", headers=operator3, json={
            "unit_id": other, "reason_code": "local_knowledge", "note": "熟悉该商户"})
        assert r.status_code == 200, r.text
        assert r.json()["unit_id"] == other and "local_knowledge" in r.json()["override_reason"]
    statuses = dict(await fdb.fetch(
        "SELECT unit_id, status FROM assignments WHERE incident_id = $1", iid))
    assert statuses[picked["unit_id"]] == "superseded" and statuses[other] == "active"
    log = await fdb.fetch("SELECT action, actor, reason FROM case_log WHERE incident_id = $1 "
                          "ORDER BY seq", iid)
    assert [r["action"] for r in log][-2:] == ["withdraw", "dispatch"]
    assert log[-1]["actor"] == name3 and "熟悉该商户" in log[-1]["reason"]


async def test_critical_case_preempts_a_unit_en_route_to_a_minor_one(
        flow_hub: HubProcess, fdb: asyncpg.Connection, publisher: Publisher) -> None:
    fire_units = [u["id"] for u in TOWN["units"] if "fire" in u["qualifications"]]
    keep = fire_units[0]
    # only one fire-qualified unit on duty, with a fresh position
    await fdb.execute("UPDATE units SET status = 'off_duty' WHERE id = ANY($1) AND id <> $2",
                      fire_units, keep)
    unit = next(u for u in TOWN["units"] if u["id"] == keep)
    publisher.publish(wire.gps_topic(keep), wire.encode_gps(time.time(), unit["lat"],
                                                             unit["lon"], 0.0))
    async with flow_hub.async_client() as client:
        low = await _create(client, priority=4, qualification="fire", title="消防通道占用",
                            **_somewhere(5))
        await wait_for(lambda: fdb.fetchval(
            "SELECT 1 FROM assignments WHERE incident_id = $1 AND unit_id = $2 AND "
            "status = 'active'", low["id"], keep))
        r = await client.post(f"/api/incidents/{low['id']}/actions",
                              json={"action": "accept"})
        assert r.status_code == 200 and r.json()["state"] == "accepted"
        high = await _create(client, priority=1, qualification="fire", title="厂房冒烟",
                             **_somewhere(9))
    got = await wait_for(lambda: fdb.fetchrow(
        "SELECT * FROM assignments WHERE incident_id = $1 AND status = 'active'", high["id"]))
    assert got["unit_id"] == keep
    assert await fdb.fetchval(
        "SELECT status FROM assignments WHERE incident_id = $1 AND unit_id = $2 "
        "ORDER BY id LIMIT 1", low["id"], keep) == "preempted"
    low_log = [r["action"] for r in await fdb.fetch(
        "SELECT action FROM case_log WHERE incident_id = $1 ORDER BY seq", low["id"])]
    assert low_log[-1] == "withdraw"
    assert await fdb.fetchval("SELECT state FROM incidents WHERE id = $1",
                              low["id"]) == "registered"
    assert await fdb.fetchval("SELECT count(*) FROM supervisor_alerts WHERE incident_id = $1 "
                              "AND kind = 'preempted'", low["id"]) == 1
    await fdb.execute("UPDATE units SET status = 'available' WHERE id = ANY($1) AND "
                      "status = 'off_duty'", fire_units)


async def test_open311_citizen_report(flow_hub: HubProcess, fdb: asyncpg.Connection) -> None:
    async with flow_hub.async_client() as client:
        services = (await client.get("/open311/v2/services.json")).json()
        codes = {s["service_code"] for s in services}
        assert {"noise", "city_order", "safety_hazard"} <= codes
        assert all(s["type"] == "realtime" for s in services)
        spot = _somewhere(3)
        key = (await client.post("/api/open311/keys", json={"app_name": "flow-test"})).json()
        r = await client.post("/open311/v2/requests.json", data={
            "api_key": key["api_key"],
            "service_code": "noise", "lat": str(spot["lat"]), "long": str(spot["lon"]),
            "description": "夜间施工噪声", "first_name": "王", "phone": "13800000000",
            "address_string": "马镇社区"})
        assert r.status_code == 201, r.text
        (created,) = r.json()
        rid = created["service_request_id"]
        (req,) = (await client.get(f"/open311/v2/requests/{rid}.json")).json()
        assert req["status"] == "open" and req["service_code"] == "noise"
        assert req["lat"] == spot["lat"] and req["requested_datetime"].endswith("Z")
        listed = (await client.get("/open311/v2/requests.json",
                                   params={"service_code": "noise", "status": "open"})).json()
        assert rid in {x["service_request_id"] for x in listed}
        row = await fdb.fetchrow("SELECT source, state, grid_id, reporter, description "
                                 "FROM incidents WHERE id = $1", int(rid))
        assert row["source"] == "open311" and row["state"] == "reported" and row["grid_id"]
        # The caller's name and phone are in the contact table, not on the case.
        assert row["reporter"] == "open311:flow-test"
        assert "13800000000" not in row["description"]
        bad = await client.post("/open311/v2/requests.json", data={
            "api_key": key["api_key"], "service_code": "noise", "lat": "95", "long": "120"})
        assert bad.status_code == 400 and bad.json()[0]["code"] == 400
        unknown = await client.post("/open311/v2/requests.json", data={
            "api_key": key["api_key"], "service_code": "nope", "lat": "31", "long": "120"})
        assert unknown.status_code == 404
        missing = await client.get("/open311/v2/requests/999999.json")
        assert missing.status_code == 404 and missing.json()[0]["code"] == 404
