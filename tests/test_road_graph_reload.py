"""A grid/roads import served by one hub process reaches the others: two processes on one
database (a web node and a dispatch node), the import on the web node, and the dispatch
node's leader recommends by the imported roads for the next case, without a restart.
Real PostgreSQL+TimescaleDB, the shared test Mosquitto, two `python -m hub serve`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from core.db import connect, create_pool
from dispatch import decisions, service
from dispatch.geo import RoadGraph, travel_time_matrix
from tests.conftest import HubProcess, town_database, town_doc, wait_for

TOWN = town_doc()
# Positions are set by the test, not reported live: the hubs must not call them stale.
FRESH_ENV = {"HUB_POSITION_STALE_AFTER_S": "86400"}


@pytest_asyncio.fixture
async def town_db(base_db_url: str) -> AsyncIterator[str]:
    async with town_database(base_db_url, "rg") as url:
        yield url


def _etas(graph: RoadGraph | None, case: tuple[float, float],
          units: dict[str, tuple[float, float]]) -> dict[str, float]:
    ids = sorted(units)
    times, _ = travel_time_matrix(graph, [case[0]], [case[1]], [units[u][0] for u in ids],
                                  [units[u][1] for u in ids])
    return {u: float(t) for u, t in zip(ids, times[0].tolist(), strict=True)}


async def _recommended(conn: Any, incident_id: int) -> dict[str, float]:
    rec = await wait_for(lambda: conn.fetchval(
        "SELECT recommendation FROM assignments WHERE incident_id = $1", incident_id),
        timeout=20)
    return {c["unit_id"]: c["eta_s"] for c in rec["candidates"] if c["eta_s"] is not None}


async def test_a_roads_import_on_a_web_node_reaches_the_dispatch_leader(
        town_db: str, mqtt_url: str) -> None:
    conn = await connect(town_db)
    pool = await create_pool(town_db)
    web = HubProcess(town_db, mqtt_url, roles="web", extra_env=FRESH_ENV)
    leader = HubProcess(town_db, mqtt_url, roles="dispatch", extra_env=FRESH_ENV)
    try:
        await conn.execute("UPDATE units SET position_ts = now() WHERE lon IS NOT NULL")
        units = {r["id"]: (r["lon"], r["lat"]) for r in await conn.fetch(
            "SELECT id, lon, lat FROM units WHERE 'city_management' = ANY(qualifications) "
            "AND status = 'available' AND lon IS NOT NULL")}
        assert units
        old_graph = await decisions.load_road_graph(pool)
        await asyncio.gather(asyncio.to_thread(web.start), asyncio.to_thread(leader.start))

        spots = [(d["lon"], d["lat"]) for d in TOWN["devices"][5:7]]

        async def case_at(spot: tuple[float, float]) -> int:
            inc = await service.open_incident(
                pool, category="city_order", qualification="city_management", priority=3,
                title="占道经营", description="", lon=spot[0], lat=spot[1],
                source="operator", reporter="operator1")
            return int(inc["id"])

        # Before: the leader recommends by the town's roads.
        before = await _recommended(conn, await case_at(spots[0]))
        expected = _etas(old_graph, spots[0], units)
        assert before and all(eta == pytest.approx(expected[u]) for u, eta in before.items())

        # The web node imports the same grids with other roads: one road, a straight line
        # through the next case's spot.
        town = web.client.get("/api/town").json()
        for f in town["grids"]["features"]:
            f["properties"].pop("center", None)
        lon, lat = spots[1]
        road = {"type": "Feature", "properties": {"id": "R-IMPORTED", "name": "新建大道",
                                                  "class": "main"},
                "geometry": {"type": "LineString", "coordinates": [
                    [lon - 0.05, lat - 0.02], [lon, lat], [lon + 0.05, lat + 0.02]]}}
        r = web.client.post("/api/admin/town/import", json={
            "grids": town["grids"], "roads": {"type": "FeatureCollection", "features": [road]}},
            timeout=60)
        assert r.status_code == 200, r.text
        new_graph = await decisions.load_road_graph(pool)
        assert new_graph is not None and old_graph is not None
        assert new_graph.node_count < old_graph.node_count

        # After: the leader, in its own process, recommends the next case by the new roads.
        after = await _recommended(conn, await case_at(spots[1]))
        new_expected = _etas(new_graph, spots[1], units)
        stale = _etas(old_graph, spots[1], units)
        assert after and all(eta == pytest.approx(new_expected[u]) for u, eta in after.items())
        assert any(eta != pytest.approx(stale[u]) for u, eta in after.items())
        # and the web node serves the new roads
        assert [f["properties"]["id"] for f in web.client.get("/api/town").json()["roads"][
            "features"]] == ["R-IMPORTED"]
    finally:
        web.stop()
        leader.stop()
        await pool.close()
        await conn.close()
