"""Import a real town from GeoJSON into the ``gridhub-town/1`` document format.

``town_from_geojson(grids_fc, roads_fc, name)`` is pure: it validates two
GeoJSON FeatureCollections and returns a town document shaped like the one
``simulators.demo_town.document.generate`` builds, with empty ``devices`` and ``units``.

Grids: Polygon features with properties ``id`` (unique string), ``level`` (1
or 2), ``parent`` (null for level 1, the id of a level-1 grid for level 2),
``name`` and optional ``zone`` (default "mixed"). Roads: LineString features
with ``id`` (unique string), ``name``, ``class`` (main/secondary/local) and
optional ``speed_kmh`` (default by class). Coordinates are rounded to 6
decimals (so roads that meet share identical vertices) and polygon rings are
turned counter-clockwise (holes clockwise). Anything else raises ValueError
naming the offending feature.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from core.town_format import DEPARTMENTS, FORMAT, SPEED_KMH

ZONES = ("residential", "industrial", "commercial", "rural", "mixed")
DEFAULT_ZONE = "mixed"


def _features(fc: Any, what: str) -> list[Any]:
    if not isinstance(fc, dict) or fc.get("type") != "FeatureCollection":
        raise ValueError(f"{what}: expected a GeoJSON FeatureCollection")
    features = fc.get("features")
    if not isinstance(features, list):
        raise ValueError(f"{what}: 'features' must be a list")
    return features


def _position(p: Any, where: str) -> list[float]:
    if not (isinstance(p, list | tuple) and len(p) >= 2
            and all(isinstance(c, int | float) and not isinstance(c, bool) for c in p[:2])):
        raise ValueError(f"{where}: bad position {p!r}")
    lon, lat = float(p[0]), float(p[1])
    if not (-180 <= lon <= 180 and -90 <= lat <= 90):
        raise ValueError(f"{where}: position {p!r} out of lon/lat range")
    return [round(lon, 6), round(lat, 6)]


def _signed_area(ring: list[list[float]]) -> float:
    x0, y0 = ring[0]
    return sum((a[0] - x0) * (b[1] - y0) - (b[0] - x0) * (a[1] - y0)
               for a, b in pairwise(ring)) / 2


def _ring(raw: Any, where: str, ccw: bool) -> list[list[float]]:
    if not isinstance(raw, list) or len(raw) < 4:
        raise ValueError(f"{where}: a ring needs at least 4 positions")
    ring = [_position(p, where) for p in raw]
    if ring[0] != ring[-1]:
        raise ValueError(f"{where}: ring is not closed (first position != last)")
    area = _signed_area(ring)
    if area == 0:
        raise ValueError(f"{where}: ring has zero area")
    return ring if (area > 0) == ccw else ring[::-1]


def _geometry(feature: dict[str, Any], kind: str, where: str) -> Any:
    geometry = feature.get("geometry")
    if not isinstance(geometry, dict) or geometry.get("type") != kind:
        got = geometry.get("type") if isinstance(geometry, dict) else geometry
        raise ValueError(f"{where}: geometry must be a {kind}, got {got!r}")
    return geometry.get("coordinates")


def _properties(feature: Any, where: str) -> tuple[dict[str, Any], str]:
    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        raise ValueError(f"{where}: expected a GeoJSON Feature")
    props = feature.get("properties")
    if not isinstance(props, dict):
        raise ValueError(f"{where}: missing properties")
    fid = props.get("id")
    if not isinstance(fid, str) or not fid:
        raise ValueError(f"{where}: property 'id' must be a non-empty string")
    if not isinstance(props.get("name"), str) or not props["name"]:
        raise ValueError(f"{where} ({fid}): property 'name' must be a non-empty string")
    return props, fid


def _grids(grids_fc: Any) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    levels: dict[str, int] = {}
    raw = _features(grids_fc, "grids")
    for n, feature in enumerate(raw):
        props, gid = _properties(feature, f"grids[{n}]")
        where = f"grids[{n}] ({gid})"
        if gid in levels:
            raise ValueError(f"{where}: duplicate grid id")
        level = props.get("level")
        if type(level) is not int or level not in (1, 2):
            raise ValueError(f"{where}: level must be 1 or 2, got {level!r}")
        levels[gid] = level
        zone = props.get("zone", DEFAULT_ZONE)
        if zone not in ZONES:
            raise ValueError(f"{where}: zone must be one of {', '.join(ZONES)}, got {zone!r}")
        rings = _geometry(feature, "Polygon", where)
        if not isinstance(rings, list) or not rings:
            raise ValueError(f"{where}: Polygon without rings")
        coords = [_ring(r, where, ccw=(k == 0)) for k, r in enumerate(rings)]
        out.append({"type": "Feature",
                    "geometry": {"type": "Polygon", "coordinates": coords},
                    "properties": {"id": gid, "level": level, "parent": props.get("parent"),
                                   "name": props["name"], "zone": zone}})
    for n, feature in enumerate(out):
        fprops: dict[str, Any] = feature["properties"]
        where, parent = f"grids[{n}] ({fprops['id']})", fprops["parent"]
        if fprops["level"] == 1 and parent is not None:
            raise ValueError(f"{where}: a level-1 grid has no parent, got {parent!r}")
        if fprops["level"] == 2 and levels.get(parent) != 1:
            state = "missing" if parent not in levels else f"level {levels[parent]}"
            raise ValueError(f"{where}: parent {parent!r} must be a level-1 grid ({state})")
    if 1 not in levels.values():
        raise ValueError("grids: no level-1 grid")
    return {"type": "FeatureCollection", "features": out}


def _roads(roads_fc: Any) -> dict[str, Any]:
    out, seen = [], set()
    for n, feature in enumerate(_features(roads_fc, "roads")):
        props, rid = _properties(feature, f"roads[{n}]")
        where = f"roads[{n}] ({rid})"
        if rid in seen:
            raise ValueError(f"{where}: duplicate road id")
        seen.add(rid)
        cls = props.get("class")
        if cls not in SPEED_KMH:
            raise ValueError(f"{where}: class must be main, secondary or local, got {cls!r}")
        speed = props.get("speed_kmh", SPEED_KMH[cls])
        if isinstance(speed, bool) or not isinstance(speed, int | float) or speed <= 0:
            raise ValueError(f"{where}: speed_kmh must be a positive number, got {speed!r}")
        line = _geometry(feature, "LineString", where)
        if not isinstance(line, list) or len(line) < 2:
            raise ValueError(f"{where}: a LineString needs at least 2 positions")
        out.append({"type": "Feature",
                    "geometry": {"type": "LineString",
                                 "coordinates": [_position(p, where) for p in line]},
                    "properties": {"id": rid, "name": props["name"], "class": cls,
                                   "speed_kmh": speed}})
    return {"type": "FeatureCollection", "features": out}


def town_from_geojson(grids_fc: dict[str, Any], roads_fc: dict[str, Any], name: str, *,
                      name_en: str = "", command_center: dict[str, Any] | None = None
                      ) -> dict[str, Any]:
    """A ``gridhub-town/1`` document from real grids and roads (see module doc).

    The command center defaults to the vertex mean of the level-1 grids'
    outer rings, named "<name>综合指挥中心".
    """
    if not isinstance(name, str) or not name:
        raise ValueError("name must be a non-empty string")
    grids = _grids(grids_fc)
    roads = _roads(roads_fc)
    if command_center is None:
        pts = [p for f in grids["features"] if f["properties"]["level"] == 1
               for p in f["geometry"]["coordinates"][0][:-1]]
        command_center = {"name": f"{name}综合指挥中心",
                          "lon": round(sum(p[0] for p in pts) / len(pts), 6),
                          "lat": round(sum(p[1] for p in pts) / len(pts), 6)}
    return {
        "format": FORMAT,
        "name": name,
        "name_en": name_en or name,
        "seed": None,
        "command_center": command_center,
        "grids": grids,
        "roads": roads,
        "devices": [],
        "units": [],
        "departments": dict(DEPARTMENTS),
    }
