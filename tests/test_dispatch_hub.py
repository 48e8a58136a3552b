"""The running hub decides through the decision core (dispatch/planner.py), on the real
database: its leader plans jointly where the old one-case-at-a-time path would not, and
an override gives the same recorded recommendation whichever node serves it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest_asyncio

from core.db import connect, create_pool
from dispatch import decisions, planner, service, store
from dispatch.engine import rank
from dispatch.model import DispatchPolicy
from dispatch.reasons import reason
from tests.conftest import HubProcess, town_database, town_doc, wait_for

TOWN = town_doc()
# Positions are set by the test, not reported live: the hubs must not call them stale.
FRESH_ENV = {"HUB_POSITION_STALE_AFTER_S": "86400"}
# The hubs' policy as their settings make it (settings defaults + the staleness above).
POLICY = DispatchPolicy(stale_after_s=86400.0, preempt_up_to_priority=2,
                        preempt_penalty_s=360.0, replan_gain_s=240.0)


@pytest_asyncio.fixture
async def town_db(base_db_url: str) -> AsyncIterator[str]:
    async with town_database(base_db_url, "j") as url:
        yield url


def _roads_by_length() -> list[list[list[float]]]:
    lines = [f["geometry"]["coordinates"] for f in TOWN["roads"]["features"]
             if f["geometry"]["type"] == "LineString" and len(f["geometry"]["coordinates"]) > 4]
    return sorted(lines, key=len, reverse=True)


def _along(coords: list[list[float]], f: float) -> tuple[float, float]:
    k = min(len(coords) - 1, round(f * (len(coords) - 1)))
    return float(coords[k][0]), float(coords[k][1])


def _greedy(state: planner.DispatchState, graph: Any, now: float) -> dict[str, str]:
    """What the hub used to do: each waiting case, most urgent then oldest, takes the
    ranking's pick among the units still free (service.dispatch_incident)."""
    out: dict[str, str] = {}
    units = list(state.units)
    for inc in sorted((i for i in state.incidents if i.assigned_unit is None),
                      key=lambda i: (i.priority, i.opened_at, i.id)):
        pick = rank(inc, units, graph, now, POLICY).pick
        if pick is not None:
            out[inc.id] = pick
            units = [u for u in units if u.id != pick]
    return out


async def test_the_leader_plans_jointly_where_greedy_would_not(town_db: str,
                                                               mqtt_url: str) -> None:
    """Two water cases wait while no dispatcher leads; two water units are on one road,
    placed so that the old greedy path would send the nearer unit to the older case and
    the other one far. The leader, on taking over, sends them the jointly cheaper way."""
    water = [u["id"] for u in TOWN["units"] if "water" in u["qualifications"]]
    u1, u2 = water[0], water[1]
    conn = await connect(town_db)
    pool = await create_pool(town_db)
    hub: HubProcess | None = None
    try:
        await conn.execute("UPDATE units SET status = 'off_duty' WHERE id = ANY($1) "
                           "AND NOT id = ANY($2)", water, [u1, u2])
        graph = await decisions.load_road_graph(pool)
        found: dict[str, str] | None = None
        for road in _roads_by_length()[:30]:
            # On one road: U2 at the start, case 1 at 45 %, U1 at 55 %, case 2 at the end.
            (lon2, lat2), (lon1, lat1) = _along(road, 0.0), _along(road, 0.55)
            await conn.execute(
                "UPDATE units SET lon = $2, lat = $3, position_ts = now(), status = 'available'"
                " WHERE id = $1", u2, lon2, lat2)
            await conn.execute(
                "UPDATE units SET lon = $2, lat = $3, position_ts = now(), status = 'available'"
                " WHERE id = $1", u1, lon1, lat1)
            await conn.execute("UPDATE incidents SET state = 'cancelled' WHERE state = "
                               "'registered'")
            ids = []
            for f in (0.45, 1.0):
                lon, lat = _along(road, f)
                inc = await service.open_incident(
                    pool, category="water", qualification="water", priority=3,
                    title="管道破裂", description="", lon=lon, lat=lat, source="operator",
                    reporter="operator1")
                ids.append(str(inc["id"]))
            now = time.time()
            state = await store.dispatch_state(conn)
            joint = planner.decide(state, planner.Replan(), now, POLICY, graph)
            planned = {d.incident_id: d.unit_id for d in joint.dispatches}
            if len(planned) == 2 and planned != _greedy(state, graph, now):
                found = planned
                break
        assert found is not None, "no road in the town separates joint from greedy"

        hub = HubProcess(town_db, mqtt_url, roles="dispatch", extra_env=FRESH_ENV).start()

        async def both() -> dict[str, str] | None:
            rows = await conn.fetch(
                "SELECT incident_id::text AS i, unit_id FROM assignments WHERE "
                "incident_id = ANY($1::bigint[]) AND status = 'active'", [int(i) for i in ids])
            return {r["i"]: r["unit_id"] for r in rows} if len(rows) == 2 else None

        got = await wait_for(both, timeout=20)
        assert got == found
        rec = await conn.fetchval("SELECT recommendation FROM assignments WHERE incident_id = "
                                  "$1 AND status = 'active'", int(ids[0]))
        assert rec["why"]["code"] == "assign.joint"
        assert {c["unit_id"] for c in rec["candidates"]} == {u1, u2}
        assert all(c["codes"][0]["code"] == "cand.eta_road" for c in rec["candidates"])
    finally:
        if hub is not None:
            hub.stop()
        await pool.close()
        await conn.close()


async def _override_scene(url: str) -> str:
    """The same scene in a fresh town: every unit at its start position (fresh), one
    city-management case registered. Returns the incident id."""
    conn = await connect(url)
    pool = await create_pool(url)
    try:
        await conn.execute("UPDATE units SET position_ts = now() WHERE lon IS NOT NULL")
        spot = TOWN["devices"][4]
        inc = await service.open_incident(
            pool, category="city_order", qualification="city_management", priority=3,
            title="占道经营", description="", lon=spot["lon"], lat=spot["lat"],
            source="operator", reporter="operator1")
        return str(inc["id"])
    finally:
        await pool.close()
        await conn.close()


async def _recorded(url: str, incident_id: str, unit_id: str) -> dict[str, Any]:
    conn = await connect(url)
    try:
        rec = await conn.fetchval(
            "SELECT recommendation FROM assignments WHERE incident_id = $1 AND unit_id = $2 "
            "AND status = 'active'", int(incident_id), unit_id)
        return dict(rec)
    finally:
        await conn.close()


async def test_an_override_records_the_same_recommendation_on_any_node(
        base_db_url: str, mqtt_url: str) -> None:
    """One town and scene twice. In the first, the override goes to a web-only node (a
    dispatch leader runs beside it); in the second, to another web-only node beside the
    leader. Both web nodes and the leader node answer with the settings' policy and the
    road graph, so the ranking recorded is the same, by road."""
    async with town_database(base_db_url, "o1") as a, town_database(base_db_url, "o2") as b:
        scene_a, scene_b = await asyncio.gather(_override_scene(a), _override_scene(b))
        assert scene_a == scene_b
        iid = scene_a
        targets = []
        procs = [HubProcess(a, mqtt_url, roles="web", extra_env=FRESH_ENV),
                 HubProcess(a, mqtt_url, roles="dispatch", extra_env=FRESH_ENV),
                 HubProcess(b, mqtt_url, roles="web", extra_env=FRESH_ENV),
                 HubProcess(b, mqtt_url, roles="dispatch,web", extra_env=FRESH_ENV)]
        try:
            await asyncio.gather(*(asyncio.to_thread(p.start) for p in procs))
            recs = []
            # a: a web-only node; b: the other web-only node, then the leader's own web.
            for node, url in ((procs[0], a), (procs[2], b)):
                planned = await wait_for(lambda u=url: _assigned(u, iid), timeout=20)
                target = await _override_target(url, planned)
                targets.append(target)
                token = node.make_token("operator", name="operator7")
                async with httpx.AsyncClient(
                        base_url=node.url, headers={"Authorization": f"Bearer {token}"}) as c:
                    r = await c.post(f"/api/incidents/{iid}/assign", json={
                        "unit_id": target, "reason_code": "local_knowledge"})
                    assert r.status_code == 200, r.text
                    assert r.json()["why"] == reason("assign.override",
                                                     code="local_knowledge").as_json()
                recs.append(await _recorded(url, iid, target))
            assert targets[0] == targets[1] and recs[0] == recs[1]
            assert recs[0]["candidates"] and all(
                c["codes"][0]["code"] == "cand.eta_road" for c in recs[0]["candidates"])
            # The leader's own web role records the same as well: take the unit off again
            # by a redirect on b's leader node and send it back by override there.
            leader = procs[3]
            token = leader.make_token("operator", name="operator7")
            async with httpx.AsyncClient(base_url=leader.url,
                                         headers={"Authorization": f"Bearer {token}"}) as c:
                r = await c.post(f"/api/units/{target}/redirect",
                                 json={"reason_code": "supervisor_order"})
                assert r.status_code == 200, r.text
                assert [w["status"] for w in r.json()["withdrawn"]] == ["redirected"]
            async with asyncpg.create_pool(b, min_size=1, max_size=1) as p:
                actor = await p.fetchval(
                    "SELECT actor FROM case_log WHERE incident_id = $1 AND action = 'withdraw'"
                    " ORDER BY seq DESC LIMIT 1", int(iid))
                assert actor == "operator7"
        finally:
            for p in procs:
                p.stop()


async def _assigned(url: str, incident_id: str) -> str | None:
    conn = await connect(url)
    try:
        got = await conn.fetchval(
            "SELECT unit_id FROM assignments WHERE incident_id = $1 AND status = 'active'",
            int(incident_id))
        return str(got) if got is not None else None
    finally:
        await conn.close()


async def _override_target(url: str, planned: str) -> str:
    """The last free city-management unit by id that the plan did not pick."""
    conn = await connect(url)
    try:
        return str(await conn.fetchval(
            "SELECT id FROM units WHERE 'city_management' = ANY(qualifications) AND status ="
            " 'available' AND id <> $1 ORDER BY id DESC LIMIT 1", planned))
    finally:
        await conn.close()
