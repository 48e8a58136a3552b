"""Import a real town's grids and roads from GeoJSON uploads (the ``/admin/grids`` page):
validate and preview first, then replace, all or nothing.

``POST /api/admin/town/preview`` validates the two FeatureCollections with the pure
``hub/town_geojson.py`` (a feature that is not a Polygon, a duplicate id, a level-2 grid
without its level-1 parent: 422 ``geojson.invalid`` naming the feature) and says what the
import would do: grids and roads added, changed, removed, and removed grids something
still points at (devices, units and their patrol areas, alarms, cases, market entities).
``POST /api/admin/town/import`` does it in one transaction, refusing (409 ``grid.in_use``)
while a grid to remove is still in use, so nothing is half-changed. The town's name and
command centre are kept. After the commit the town document is served afresh, this
process's road graph is reloaded, and a ``town.changed`` event makes open consoles redraw
the town and every other process reload its road graph (hub/config_reload.py, and the
dispatch leader itself: dispatch/leader.py).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from core import outbox
from core.db import Conn
from core.errors import Conflict, InvalidInput
from core.events import TownChanged
from dispatch import decisions
from hub import audit, town
from hub.access import actor_of
from hub.state import HubDep
from hub.town_geojson import town_from_geojson

router = APIRouter(prefix="/api/admin/town")

# Grid ids something still refers to (foreign keys, and the units' patrol areas, which
# are arrays without a key).
IN_USE_SQL = """
    SELECT DISTINCT g FROM (
        SELECT grid_id AS g FROM devices UNION ALL SELECT home_grid FROM units
        UNION ALL SELECT unnest(patrol_grids) FROM units
        UNION ALL SELECT grid_id FROM alarms UNION ALL SELECT grid_id FROM incidents
        UNION ALL SELECT grid_id FROM market_entities) refs
    WHERE g = ANY($1::text[])"""


class TownUpload(BaseModel):
    grids: dict[str, Any]
    roads: dict[str, Any] = Field(default_factory=lambda: {"type": "FeatureCollection",
                                                            "features": []})
    name: Annotated[str, Field(min_length=1, max_length=200)] = "import"


def _validated(body: TownUpload) -> dict[str, Any]:
    try:
        return town_from_geojson(body.grids, body.roads, body.name)
    except ValueError as e:
        raise InvalidInput(str(e), code="geojson.invalid") from e


async def _plan(conn: Conn, doc: dict[str, Any]) -> dict[str, Any]:
    """What the import would change, by id; ``in_use``: removed grids still referred to."""
    grids = {f["properties"]["id"]: f for f in doc["grids"]["features"]}
    roads = {f["properties"]["id"]: f for f in doc["roads"]["features"]}
    old_grids = {r["id"]: r for r in await conn.fetch(
        "SELECT id, level, parent_id, name, zone, geometry FROM grids")}
    old_roads = {r["id"]: r for r in await conn.fetch(
        "SELECT id, name, class, geometry FROM roads")}
    removed = sorted(set(old_grids) - set(grids))

    def grid_changed(gid: str) -> bool:
        o, p = old_grids[gid], grids[gid]["properties"]
        return (o["level"], o["parent_id"], o["name"], o["zone"], o["geometry"]) != (
            p["level"], p["parent"], p["name"], p["zone"], grids[gid]["geometry"])

    in_use = [r["g"] for r in await conn.fetch(IN_USE_SQL, removed)] if removed else []
    return {
        "grids": {"added": sorted(set(grids) - set(old_grids)),
                  "changed": sorted(g for g in set(grids) & set(old_grids) if grid_changed(g)),
                  "removed": removed, "total": len(grids)},
        "roads": {"added": sorted(set(roads) - set(old_roads)),
                  "removed": sorted(set(old_roads) - set(roads)), "total": len(roads)},
        "in_use": sorted(in_use),
    }


@router.post("/preview")
async def preview(request: Request, hub: HubDep, body: TownUpload) -> dict[str, Any]:
    """Validate and compare; changes nothing. The normalised grids and roads come back for
    the page's map."""
    doc = _validated(body)
    async with hub.pool.acquire() as conn:
        plan = await _plan(conn, doc)
    return {**plan, "town": {"grids": doc["grids"], "roads": doc["roads"]}}


@router.post("/import")
async def import_town(request: Request, hub: HubDep, body: TownUpload) -> dict[str, Any]:
    doc = _validated(body)
    actor = actor_of(request)
    async with hub.pool.acquire() as conn, conn.transaction():
        # One import at a time: two would each plan against the grids before the other.
        await conn.execute("LOCK TABLE grids IN SHARE ROW EXCLUSIVE MODE")
        plan = await _plan(conn, doc)
        if plan["in_use"]:
            raise Conflict(f"grids still in use cannot be removed: {', '.join(plan['in_use'])}"
                           " (move their devices and units first, or keep them in the file)",
                           code="grid.in_use")
        meta = await conn.fetchval("SELECT value FROM town WHERE key = 'meta'")
        # Upsert first (a kept grid may move to a new parent), then remove: children
        # before parents, for the parent key.
        await town.load_town(conn, doc)
        if meta is not None:  # the town's name and command centre stay as they were
            await conn.execute("UPDATE town SET value = $1 WHERE key = 'meta'", meta)
        await conn.execute("DELETE FROM roads WHERE id = ANY($1::text[])",
                           plan["roads"]["removed"])
        await conn.execute("DELETE FROM grids WHERE id = ANY($1::text[]) AND level = 2",
                           plan["grids"]["removed"])
        await conn.execute("DELETE FROM grids WHERE id = ANY($1::text[])",
                           plan["grids"]["removed"])
        counts = {k: {n: len(v) if isinstance(v, list) else v for n, v in plan[k].items()}
                  for k in ("grids", "roads")}
        await audit.record(conn, "town.imported", actor, target="town",
                           client_ip=request.client.host if request.client else None,
                           detail=counts)
        await outbox.record(conn, TownChanged(grids=counts["grids"], roads=counts["roads"]))
    hub.town_cache = None  # /api/town serves the new grids from now on
    if hub.road_graph is not None or hub.dispatcher is not None:
        graph = await decisions.load_road_graph(hub.pool)
        hub.road_graph = graph
        if hub.dispatcher is not None:
            hub.dispatcher.graph = graph
    return {**plan, "imported": True}
