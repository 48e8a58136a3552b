"""Loading towns into the real database: the demo town, and a real town's own GeoJSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg

from core.db import connect
from tests.conftest import create_database, drop_database, town_doc

ROOT = Path(__file__).resolve().parent.parent


async def test_demo_town_is_loaded(db: asyncpg.Connection) -> None:
    town = town_doc()
    levels = dict(await db.fetch("SELECT level, count(*) FROM grids GROUP BY level"))
    assert levels == {1: 21, 2: 179}
    assert await db.fetchval("SELECT count(*) FROM roads") == len(town["roads"]["features"])
    # every device of the town file (the admin pages' tests register more in this database)
    ids = [d["id"] for d in town["devices"]]
    assert await db.fetchval("SELECT count(*) FROM devices WHERE id = ANY($1)", ids) == len(ids)
    kinds = {r["kind"] for r in await db.fetch(
        "SELECT DISTINCT kind FROM devices WHERE id = ANY($1)", ids)}
    assert kinds == {"traffic", "safety", "environment"}
    types = {r["type"] for r in await db.fetch("SELECT DISTINCT type FROM units")}
    assert types == {"squad", "police", "grid_worker"}
    # every second-level grid belongs to a first-level one
    assert await db.fetchval(
        "SELECT count(*) FROM grids c LEFT JOIN grids p ON p.id = c.parent_id "
        "WHERE c.level = 2 AND (p.id IS NULL OR p.level <> 1)") == 0
    assert await db.fetchval("SELECT count(*) FROM rules WHERE source <> ''") >= 5


async def test_import_a_real_towns_geojson(base_db_url: str, tmp_path: Path) -> None:
    square = [[120.0, 31.0], [120.01, 31.0], [120.01, 31.01], [120.0, 31.01], [120.0, 31.0]]
    grids = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square]},
         "properties": {"id": "A", "level": 1, "parent": None, "name": "东村"}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square]},
         "properties": {"id": "A-1", "level": 2, "parent": "A", "name": "东村一组"}}]}
    roads = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "LineString",
                                         "coordinates": [[120.0, 31.005], [120.01, 31.005]]},
         "properties": {"id": "R1", "name": "东西路", "class": "main", "speed_kmh": 50}}]}
    (tmp_path / "grids.geojson").write_text(json.dumps(grids, ensure_ascii=False), "utf-8")
    (tmp_path / "roads.geojson").write_text(json.dumps(roads), "utf-8")
    name = f"gridhub_geo{os.getpid()}"
    url = await create_database(base_db_url, name)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "hub", "import-geojson", str(tmp_path / "grids.geojson"),
             str(tmp_path / "roads.geojson"), "--name", "东村镇"],
            cwd=ROOT, env={**os.environ, "HUB_DATABASE_URL": url}, capture_output=True,
            text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        conn = await connect(url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM grids") == 2
            assert await conn.fetchval("SELECT name FROM roads WHERE id = 'R1'") == "东西路"
            meta = await conn.fetchval("SELECT value FROM town WHERE key = 'meta'")
            assert meta["name"] == "东村镇"
        finally:
            await conn.close()
        # a broken file is refused with a clear message and nothing half-loaded
        grids["features"][1]["properties"]["parent"] = "NOPE"
        (tmp_path / "grids.geojson").write_text(json.dumps(grids), "utf-8")
        bad = subprocess.run(
            [sys.executable, "-m", "hub", "import-geojson", str(tmp_path / "grids.geojson"),
             str(tmp_path / "roads.geojson"), "--name", "x"],
            cwd=ROOT, env={**os.environ, "HUB_DATABASE_URL": url}, capture_output=True,
            text=True, timeout=60)
        assert bad.returncode != 0 and "NOPE" in bad.stderr
    finally:
        await drop_database(base_db_url, name)
