"""The benchmark's town: the demo town's roads, places and roster as the dispatch replay
needs them (``load_town``), with more units on demand (``scale_units``)."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dispatch.geo import RoadGraph

DEFAULT_TOWN = Path(__file__).resolve().parents[1] / "data" / "xuxiake.json"

# Copies of town units (--units-scale) start within this distance of the original, so
# a scaled town keeps the original's spatial spread without stacking units.
CLONE_RADIUS_M = 1500.0


@dataclass(frozen=True, slots=True)
class UnitSpec:
    """A unit of the roster: who it is and where it starts."""

    id: str
    kind: str
    qualifications: frozenset[str]
    home_grid: str
    lon: float
    lat: float


@dataclass(frozen=True, slots=True)
class Place:
    """A point incidents can happen at, with its second-level grid and that grid's zone."""

    lon: float
    lat: float
    grid: str
    zone: str
    model: str = ""  # device model, "" for a road vertex


@dataclass(frozen=True, slots=True)
class Town:
    graph: RoadGraph
    units: tuple[UnitSpec, ...]
    vertices: tuple[Place, ...]
    devices: tuple[Place, ...]


def _locate(
    lons: np.ndarray[Any, np.dtype[np.float64]],
    lats: np.ndarray[Any, np.dtype[np.float64]],
    grids: Sequence[Mapping[str, Any]],
) -> list[int]:
    """Index into ``grids`` of the polygon holding each point (-1: none). Even-odd rule."""
    found = np.full(len(lons), -1, dtype=np.intp)
    for g, feature in enumerate(grids):
        ring = np.asarray(feature["geometry"]["coordinates"][0], dtype=np.float64)
        x1, y1 = ring[:-1, 0][:, None], ring[:-1, 1][:, None]
        x2, y2 = ring[1:, 0][:, None], ring[1:, 1][:, None]
        crosses = (y1 > lats[None, :]) != (y2 > lats[None, :])
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x1 + (lats[None, :] - y1) * (x2 - x1) / (y2 - y1)
        inside = (np.count_nonzero(crosses & (lons[None, :] < x_at), axis=0) % 2) == 1
        found[inside & (found < 0)] = g
    return [int(i) for i in found.tolist()]


def load_town(path: Path = DEFAULT_TOWN, units_scale: float = 1.0, seed: int = 0) -> Town:
    """The demo town as the simulation needs it; ``units_scale`` > 1 adds unit copies."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    graph = RoadGraph.from_geojson(doc["roads"])
    level2 = [f for f in doc["grids"]["features"] if f["properties"]["level"] == 2]
    zone_of = {f["properties"]["id"]: str(f["properties"].get("zone") or "") for f in level2}

    seen: dict[tuple[float, float], None] = {}
    for feature in doc["roads"]["features"]:
        for lon, lat in feature["geometry"]["coordinates"]:
            seen.setdefault((float(lon), float(lat)), None)
    pts = list(seen)
    where = _locate(
        np.array([p[0] for p in pts], dtype=np.float64),
        np.array([p[1] for p in pts], dtype=np.float64),
        level2,
    )
    vertices = tuple(
        Place(lon, lat, gid, zone_of[gid])
        for (lon, lat), g in zip(pts, where, strict=True)
        if g >= 0
        for gid in (str(level2[g]["properties"]["id"]),)
    )
    devices = tuple(
        Place(float(d["lon"]), float(d["lat"]), str(d["grid"]), zone_of.get(d["grid"], ""),
              str(d["model"]))
        for d in doc["devices"]
    )
    base = tuple(
        UnitSpec(str(u["id"]), str(u["type"]), frozenset(u["qualifications"]),
                 str(u["home_grid"]), float(u["lon"]), float(u["lat"]))
        for u in doc["units"]
    )
    return Town(graph, scale_units(base, round(len(base) * units_scale), vertices, seed),
                vertices, devices)


def scale_units(
    base: Sequence[UnitSpec], count: int, vertices: Sequence[Place], seed: int
) -> tuple[UnitSpec, ...]:
    """``count`` units: the originals first, then copies (``SQ-01~2`` ...) in roster order,
    each at a random road vertex within ``CLONE_RADIUS_M`` of its original."""
    if count <= len(base):
        return tuple(base[:count])
    rng = random.Random(f"units/{seed}")
    vlon = np.array([v.lon for v in vertices])
    vlat = np.array([v.lat for v in vertices])
    kx = 111_320.0 * math.cos(math.radians(float(vlat.mean())))
    out = list(base)
    copy = 1
    while len(out) < count:
        copy += 1
        for u in base:
            if len(out) == count:
                break
            near = np.nonzero(np.hypot((vlon - u.lon) * kx, (vlat - u.lat) * 110_950.0)
                              <= CLONE_RADIUS_M)[0].tolist()
            v = vertices[rng.choice(near)] if near else Place(u.lon, u.lat, u.home_grid, "")
            out.append(dataclasses.replace(u, id=f"{u.id}~{copy}", lon=v.lon, lat=v.lat,
                                           home_grid=v.grid))
    return tuple(out)
