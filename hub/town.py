"""Loading a town (grids, roads, devices, units) and its rules into the database.

The document format is ``gridhub-town/1`` (simulators/demo_town/ writes the demo town;
hub/town_geojson.py turns a real town's GeoJSON into it). Loading is an upsert by
id, so it can be re-run to pick up edits without losing history.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import asyncpg

from core.db import Conn
from core.errors import InvalidInput
from core.town_format import FORMAT as TOWN_FORMAT
from ingest import rules as rule_eval


def _ring_bbox(ring: list[list[float]]) -> tuple[float, float, float, float, float, float]:
    lons = [p[0] for p in ring]
    lats = [p[1] for p in ring]
    # Vertex mean as the label point: inside for the convex cells the town is cut into.
    pts = ring[:-1] if ring[0] == ring[-1] else ring
    return (min(lons), min(lats), max(lons), max(lats),
            sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts))


def read_town(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if doc.get("format") != TOWN_FORMAT:
        raise InvalidInput(f"{path}: not a {TOWN_FORMAT} document", code="town.bad_format")
    return doc


async def load_town(conn: Conn, doc: dict[str, Any]) -> dict[str, int]:
    """Upsert the town document in one transaction; return counts by kind."""
    features = doc["grids"]["features"]
    # Parents before children (level 1 first) for the foreign key.
    features = sorted(features, key=lambda f: f["properties"]["level"])
    async with conn.transaction():
        meta = {k: doc.get(k) for k in ("name", "name_en", "seed", "command_center",
                                        "departments")}
        await conn.execute(
            "INSERT INTO town (key, value) VALUES ('meta', $1) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value", meta)
        grid_rows = []
        for f in features:
            p = f["properties"]
            ring = f["geometry"]["coordinates"][0]
            grid_rows.append((p["id"], p["level"], p.get("parent"), p["name"], p.get("zone"),
                              f["geometry"], *_ring_bbox(ring)))
        await conn.executemany(
            """INSERT INTO grids (id, level, parent_id, name, zone, geometry, min_lon, min_lat,
                                  max_lon, max_lat, center_lon, center_lat)
               VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12)
               ON CONFLICT (id) DO UPDATE SET level=excluded.level, parent_id=excluded.parent_id,
                 name=excluded.name, zone=excluded.zone, geometry=excluded.geometry,
                 min_lon=excluded.min_lon, min_lat=excluded.min_lat, max_lon=excluded.max_lon,
                 max_lat=excluded.max_lat, center_lon=excluded.center_lon,
                 center_lat=excluded.center_lat""", grid_rows)
        road_rows = [(f["properties"]["id"], f["properties"].get("name", ""),
                      f["properties"].get("class", "local"),
                      float(f["properties"].get("speed_kmh") or 30), f["geometry"])
                     for f in doc["roads"]["features"]]
        await conn.executemany(
            """INSERT INTO roads (id, name, class, speed_kmh, geometry) VALUES ($1,$2,$3,$4,$5)
               ON CONFLICT (id) DO UPDATE SET name=excluded.name, class=excluded.class,
                 speed_kmh=excluded.speed_kmh, geometry=excluded.geometry""", road_rows)
        dev_rows = []
        for d in doc.get("devices", []):
            props = {k: v for k, v in d.items() if k not in {
                "id", "kind", "model", "name", "lon", "lat", "grid", "metrics", "interval_s"}}
            dev_rows.append((d["id"], d["kind"], d["model"], d["name"], d["lon"], d["lat"],
                             d["grid"], list(d.get("metrics", [])), int(d.get("interval_s", 60)),
                             props))
        await conn.executemany(
            """INSERT INTO devices (id, kind, model, name, lon, lat, grid_id, metrics,
                                    interval_s, props)
               VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)
               ON CONFLICT (id) DO UPDATE SET kind=excluded.kind, model=excluded.model,
                 name=excluded.name, lon=excluded.lon, lat=excluded.lat, grid_id=excluded.grid_id,
                 metrics=excluded.metrics, interval_s=excluded.interval_s, props=excluded.props
            """, dev_rows)
        unit_rows = [(u["id"], u["name"], u["type"], list(u.get("qualifications", [])),
                      u["home_grid"], int(u.get("members", 1)), u.get("lon"), u.get("lat"))
                     for u in doc.get("units", [])]
        # A unit's start position is its last known one until its phone reports; it has no
        # position time, so dispatch treats it as unknown rather than trusting it.
        await conn.executemany(
            """INSERT INTO units (id, name, type, qualifications, home_grid, members, lon, lat,
                                  duty_since)
               VALUES ($1,$2,$3,$4,$5,$6,$7,$8, now())
               ON CONFLICT (id) DO UPDATE SET name=excluded.name, type=excluded.type,
                 qualifications=excluded.qualifications, home_grid=excluded.home_grid,
                 members=excluded.members""", unit_rows)
        # Default patrol area (geofence): the second-level grids of the home first-level grid.
        await conn.execute(
            """UPDATE units u SET patrol_grids = ARRAY(
                   SELECT c.id FROM grids h JOIN grids c ON c.parent_id = h.parent_id
                   WHERE h.id = u.home_grid ORDER BY c.id)
               WHERE cardinality(u.patrol_grids) = 0""")
    return {"grids": len(grid_rows), "roads": len(road_rows), "devices": len(dev_rows),
            "units": len(unit_rows)}


def read_rules(path: Path) -> list[dict[str, Any]]:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    out = []
    for rid, r in data.get("rules", {}).items():
        row = {"id": rid, "name": r["name"], "kind": r["kind"], "metric": r.get("metric"),
               "device_model": r.get("device_model"), "params": r.get("params", {}),
               "severity": r["severity"], "incident_category": r.get("incident_category"),
               "qualification": r.get("qualification"), "priority": int(r.get("priority", 3)),
               "source": r.get("source", ""), "device_filter": r.get("device_filter", {}),
               "hours": r.get("hours"), "applies_to": r.get("applies_to", "devices")}
        rule_eval.validate(rule_eval.Rule.from_row(row))
        out.append(row)
    return out


async def load_rules(conn: asyncpg.Connection, rows: list[dict[str, Any]]) -> int:
    await conn.executemany(
        """INSERT INTO rules (id, name, kind, metric, device_model, params, severity,
                              incident_category, qualification, priority, source,
                              device_filter, hours, applies_to)
           VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14)
           ON CONFLICT (id) DO UPDATE SET name=excluded.name, kind=excluded.kind,
             metric=excluded.metric, device_model=excluded.device_model, params=excluded.params,
             severity=excluded.severity, incident_category=excluded.incident_category,
             qualification=excluded.qualification, priority=excluded.priority,
             source=excluded.source, device_filter=excluded.device_filter,
             hours=excluded.hours, applies_to=excluded.applies_to, updated_at=now()""",
        [(r["id"], r["name"], r["kind"], r["metric"], r["device_model"], r["params"],
          r["severity"], r["incident_category"], r["qualification"], r["priority"],
          r["source"], r.get("device_filter") or {}, r.get("hours"),
          r.get("applies_to", "devices")) for r in rows])
    return len(rows)
