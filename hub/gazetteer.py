"""The town's own gazetteer: an address text to a point, from the loaded town data.

Names come from the town tables: first-level grids are villages (…村) and communities
(…社区), second-level grids are the grid cells (北渚村第1网格, or by id G01-03), roads by name
(one road has many segments and may cross many villages). ``resolve(text)`` finds the names
the text mentions (the longest wins: 北渚村第1网格 over 北渚村) and answers:

- a grid cell: its label point;
- a road with a village or community: the road's point nearest that village's centre;
- a road alone: its middle, if all of it lies in one village; else ambiguous;
- a village or community alone: its label point;
- two places that disagree (two villages, two grid cells), or nothing known: refused with
  a description saying what was found and what to add.

Pure: ``Gazetteer.build(grids, roads)`` takes rows as values; ``load(conn)`` reads them.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import asyncpg

# Names shorter than this are not looked for in an address: a one-character road or grid
# name would match inside unrelated words.
MIN_NAME = 2


@dataclass(frozen=True)
class Place:
    name: str
    kind: str  # village, community, grid, road
    lon: float
    lat: float
    village: str | None = None  # the first-level grid id it belongs to (grids)


@dataclass(frozen=True)
class Resolved:
    lon: float
    lat: float
    grid_hint: str | None
    matched: str  # what the text was read as, e.g. "湖庄路 @ 北渚村"


class AddressError(ValueError):
    """The address names no known place, or several that do not agree."""


def _norm(text: str) -> str:
    # Full-width letters/digits to ASCII, no spaces or punctuation between words.
    t = unicodedata.normalize("NFKC", text).upper()
    return re.sub(r"[\s,，、;；。.()（）\-–—#/]+", "", t)


@dataclass
class Gazetteer:
    villages: dict[str, Place] = field(default_factory=dict)  # grid id -> place
    village_bbox: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)
    cells: dict[str, Place] = field(default_factory=dict)  # grid id -> place
    roads: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    names: list[tuple[str, str, str]] = field(default_factory=list)  # (norm, kind, key)

    @classmethod
    def build(cls, grids: list[dict[str, Any]], roads: list[dict[str, Any]]) -> Gazetteer:
        """``grids``: id, level, parent_id, name, center_lon/lat, min/max_lon/lat;
        ``roads``: name and a GeoJSON LineString ``geometry``."""
        g = cls()
        for r in grids:
            kind = ("village" if r["level"] == 1 and not r["name"].endswith("社区")
                    else "community" if r["level"] == 1 else "grid")
            p = Place(r["name"], kind, float(r["center_lon"]), float(r["center_lat"]),
                      r["id"] if r["level"] == 1 else r["parent_id"])
            if r["level"] == 1:
                g.villages[r["id"]] = p
                g.village_bbox[r["id"]] = (float(r["min_lon"]), float(r["min_lat"]),
                                           float(r["max_lon"]), float(r["max_lat"]))
            else:
                g.cells[r["id"]] = p
            g.names.append((_norm(r["name"]), kind, r["id"]))
            if r["level"] == 2:
                g.names.append((_norm(r["id"]), "grid", r["id"]))
        for r in roads:
            name = (r.get("name") or "").strip()
            if len(name) < MIN_NAME:
                continue
            coords = r["geometry"]["coordinates"]
            g.roads.setdefault(name, []).extend((float(x), float(y)) for x, y in coords)
        for name in g.roads:
            g.names.append((_norm(name), "road", name))
        g.names = [n for n in g.names if len(n[0]) >= MIN_NAME]
        # Longest first, so a longer name claims its characters before a shorter one.
        g.names.sort(key=lambda n: -len(n[0]))
        return g

    def _village_of(self, lon: float, lat: float) -> str | None:
        for vid, (x0, y0, x1, y1) in self.village_bbox.items():
            if x0 <= lon <= x1 and y0 <= lat <= y1:
                return vid
        return None

    def resolve(self, text: str) -> Resolved:
        t = _norm(text)
        if not t:
            raise AddressError("address_string is empty")
        found: list[tuple[str, str]] = []
        taken = [False] * len(t)
        for norm, kind, key in self.names:
            start = t.find(norm)
            while start >= 0:
                span = range(start, start + len(norm))
                if not any(taken[i] for i in span):
                    for i in span:
                        taken[i] = True
                    if (kind, key) not in found:
                        found.append((kind, key))
                start = t.find(norm, start + 1)
        cells = [k for kind, k in found if kind == "grid"]
        villages = [k for kind, k in found if kind in ("village", "community")]
        roads = [k for kind, k in found if kind == "road"]
        example = next(iter(self.villages.values())).name if self.villages else "村名"
        if not found:
            raise AddressError(
                f"address_string {text[:80]!r} names no village, community, road or grid of "
                f"this town; give a village or community name (e.g. {example}), a road with "
                "its village, or lat/long")
        if len(cells) > 1 or len(villages) > 1 or len(roads) > 1:
            names = [self._name(k, kind) for kind, k in found]
            raise AddressError(f"address_string is ambiguous: it names {', '.join(names)}; "
                               "give one place (a road with one village), or lat/long")
        if cells:
            cell = self.cells[cells[0]]
            if villages and villages[0] != cell.village:
                raise AddressError(f"address_string is ambiguous: {cell.name} is not in "
                                   f"{self.villages[villages[0]].name}")
            return Resolved(cell.lon, cell.lat, cells[0], cell.name)
        if roads and villages:
            v = self.villages[villages[0]]
            x0, y0, x1, y1 = self.village_bbox[villages[0]]
            pts = [p for p in self.roads[roads[0]] if x0 <= p[0] <= x1 and y0 <= p[1] <= y1]
            if not pts:
                raise AddressError(f"{roads[0]} does not pass through {v.name}; check the "
                                   "road or the village, or give lat/long")
            lon, lat = min(pts, key=lambda p: math.hypot(p[0] - v.lon, p[1] - v.lat))
            return Resolved(lon, lat, None, f"{roads[0]} @ {v.name}")
        if roads:
            pts = self.roads[roads[0]]
            through = sorted({vid for p in pts if (vid := self._village_of(*p))})
            if len(through) > 1:
                listed = "、".join(self.villages[v].name for v in through[:6])
                raise AddressError(f"address_string is ambiguous: {roads[0]} runs through "
                                   f"{len(through)} villages or communities ({listed}"
                                   f"{' …' if len(through) > 6 else ''}); add which one")
            lon, lat = pts[len(pts) // 2]
            return Resolved(lon, lat, None, roads[0])
        v = self.villages[villages[0]]
        return Resolved(v.lon, v.lat, None, v.name)

    def _name(self, key: str, kind: str) -> str:
        if kind == "road":
            return key
        return (self.cells.get(key) or self.villages[key]).name


async def load(conn: asyncpg.Connection | asyncpg.Pool) -> Gazetteer:
    grids = await conn.fetch(
        "SELECT id, level, parent_id, name, center_lon, center_lat, min_lon, min_lat, "
        "max_lon, max_lat FROM grids")
    roads = await conn.fetch("SELECT name, geometry FROM roads")
    return Gazetteer.build([dict(r) for r in grids], [dict(r) for r in roads])
