"""The demo town's grids: 21 first-level grids (villages and communities) tiled by 179
second-level grids, their zones, and ``GridIndex`` (which grid holds a point)."""

from __future__ import annotations

import random
from fractions import Fraction
from typing import Any

from core.geometry import point_in_polygon
from simulators.demo_town.plane import (
    HEIGHT_M,
    MIN_MARGIN_M,
    WIDTH_M,
    Point,
    segment_distance,
    to_lonlat,
    to_metres,
)

# -- grids -------------------------------------------------------------------

GRID_COLS, GRID_ROWS = 7, 3
N_LEVEL1 = GRID_COLS * GRID_ROWS  # 21
N_LEVEL2 = 179
N_NINE = N_LEVEL2 - 8 * N_LEVEL1  # first-level grids split in 9 (the rest in 8): 11
_SPLIT_9 = (3, 3)  # children (columns, rows) of a 9-way first-level grid
_SPLIT_8 = (2, 4)  # first-level cells are tall (1.7 km x 3.3 km): 2 x 4 keeps children squarish
_JITTER_X_M = 280.0  # interior lattice jitter; small enough that every quad stays convex
_JITTER_Y_M = 300.0
_JITTER_EDGE_M = 120.0  # jitter of the town outline across its own edge

# First-level grids, row by row from the north-west: (name, zone).
VILLAGES = (
    ("北渚村", "rural"), ("芦墩村", "rural"), ("金凤村", "industrial"),
    ("璜塘社区", "residential"), ("东盟村", "industrial"), ("仁和村", "rural"),
    ("沙山村", "rural"),
    ("梧塍村", "mixed"), ("皋岸村", "industrial"), ("峭岐社区", "residential"),
    ("马镇社区", "commercial"), ("霞客社区", "residential"), ("新庄村", "industrial"),
    ("朝阳村", "rural"),
    ("湖庄村", "rural"), ("南旸岐村", "mixed"), ("岐东村", "rural"),
    ("晓阳村", "residential"), ("方园村", "mixed"), ("马文村", "industrial"),
    ("九房巷村", "rural"),
)

# Zone of a second-level grid given its parent's zone: (zone, weight).
_CHILD_ZONES = {
    "industrial": (("industrial", 75), ("mixed", 25)),
    "residential": (("residential", 75), ("commercial", 15), ("mixed", 10)),
    "commercial": (("commercial", 60), ("residential", 40)),
    "mixed": (("mixed", 50), ("industrial", 20), ("residential", 20), ("rural", 10)),
    "rural": (("rural", 75), ("mixed", 15), ("residential", 10)),
}

# GB 3096-2008 acoustic functional zone class by land use; "4" (4a) is used
# for meters beside main roads.
NOISE_ZONE = {"residential": "1", "rural": "1", "commercial": "2", "mixed": "2",
              "industrial": "3"}


def cn_numeral(n: int) -> str:
    """1..99 as Chinese numerals (一, 十二, 二十三)."""
    digits = "零一二三四五六七八九"
    if n < 10:
        return digits[n]
    tens, ones = divmod(n, 10)
    return ("十" if tens == 1 else digits[tens] + "十") + (digits[ones] if ones else "")


def village_stem(village: str) -> str:
    return village.removesuffix("社区").removesuffix("村")


def _grid_lattice(rng: random.Random) -> dict[tuple[int, int], Point]:
    """Jittered (GRID_ROWS+1) x (GRID_COLS+1) lattice; row 0 is the south edge."""
    pts = {}
    for i in range(GRID_ROWS + 1):
        for j in range(GRID_COLS + 1):
            ax = _JITTER_EDGE_M if j in (0, GRID_COLS) else _JITTER_X_M
            ay = _JITTER_EDGE_M if i in (0, GRID_ROWS) else _JITTER_Y_M
            x = -WIDTH_M / 2 + j * WIDTH_M / GRID_COLS + rng.uniform(-ax, ax)
            y = -HEIGHT_M / 2 + i * HEIGHT_M / GRID_ROWS + rng.uniform(-ay, ay)
            pts[(i, j)] = (x, y)
    return pts


def make_grids(rng: random.Random) -> list[dict[str, Any]]:
    """21 first-level quadrilaterals and their 8 or 9 bilinear children.

    Returns records {id, level, parent, name, zone, ring}: first-level ones
    first. Every vertex is computed once and shared, and each lattice edge
    carries the union of the cut points of the grids on both of its sides.
    """
    lattice = _grid_lattice(rng)
    nine = sorted(rng.sample(range(N_LEVEL1), N_NINE))
    splits = [_SPLIT_9 if k in nine else _SPLIT_8 for k in range(N_LEVEL1)]

    def sides(k: int) -> tuple[tuple[str, int, int], ...]:
        """Lattice edges (bottom, right, top, left) of first-level grid k."""
        r, c = divmod(k, GRID_COLS)
        i = GRID_ROWS - 1 - r
        return (("h", i, c), ("v", i, c + 1), ("h", i + 1, c), ("v", i, c))

    cuts: dict[tuple[str, int, int], list[Fraction]] = {}
    for k in range(N_LEVEL1):
        nu, nv = splits[k]
        for edge, n in zip(sides(k), (nu, nv, nu, nv), strict=True):
            ts = cuts.setdefault(edge, [])
            ts.extend(Fraction(m, n) for m in range(1, n) if Fraction(m, n) not in ts)
    for ts in cuts.values():
        ts.sort()

    cache: dict[tuple[Any, ...], list[float]] = {}

    def edge_point(edge: tuple[str, int, int], t: Fraction) -> list[float]:
        kind, i, j = edge
        a = lattice[(i, j)]
        b = lattice[(i, j + 1)] if kind == "h" else lattice[(i + 1, j)]
        if t == 0 or t == 1:
            key: tuple[Any, ...] = ("n", *((i, j) if t == 0 else
                                            ((i, j + 1) if kind == "h" else (i + 1, j))))
        else:
            key = ("e", edge, t)
        if key not in cache:
            f = float(t)
            cache[key] = to_lonlat(a[0] + f * (b[0] - a[0]), a[1] + f * (b[1] - a[1]))
        return list(cache[key])

    def corner(k: int, u: Fraction, v: Fraction) -> list[float]:
        bottom, right, top, left = sides(k)
        if v == 0:
            return edge_point(bottom, u)
        if v == 1:
            return edge_point(top, u)
        if u == 0:
            return edge_point(left, v)
        if u == 1:
            return edge_point(right, v)
        key = ("i", k, u, v)
        if key not in cache:
            sw, se = lattice[bottom[1:]], lattice[(bottom[1], bottom[2] + 1)]
            nw, ne = lattice[top[1:]], lattice[(top[1], top[2] + 1)]
            fu, fv = float(u), float(v)
            x = (1 - fu) * (1 - fv) * sw[0] + fu * (1 - fv) * se[0] + fu * fv * ne[0] \
                + (1 - fu) * fv * nw[0]
            y = (1 - fu) * (1 - fv) * sw[1] + fu * (1 - fv) * se[1] + fu * fv * ne[1] \
                + (1 - fu) * fv * nw[1]
            cache[key] = to_lonlat(x, y)
        return list(cache[key])

    def ring(k: int, u0: Fraction, u1: Fraction, v0: Fraction, v1: Fraction) -> list[list[float]]:
        """Counter-clockwise closed ring of the cell [u0,u1] x [v0,v1] of grid k."""
        bottom, right, top, left = sides(k)
        pts = [corner(k, u0, v0)]
        if v0 == 0:
            pts += [edge_point(bottom, t) for t in cuts[bottom] if u0 < t < u1]
        pts.append(corner(k, u1, v0))
        if u1 == 1:
            pts += [edge_point(right, t) for t in cuts[right] if v0 < t < v1]
        pts.append(corner(k, u1, v1))
        if v1 == 1:
            pts += [edge_point(top, t) for t in reversed(cuts[top]) if u0 < t < u1]
        pts.append(corner(k, u0, v1))
        if u0 == 0:
            pts += [edge_point(left, t) for t in reversed(cuts[left]) if v0 < t < v1]
        pts.append(corner(k, u0, v0))
        return pts

    zero, one = Fraction(0), Fraction(1)
    parents, children = [], []
    for k, (name, zone) in enumerate(VILLAGES):
        pid = f"G{k + 1:02d}"
        parents.append({"id": pid, "level": 1, "parent": None, "name": name, "zone": zone,
                        "ring": ring(k, zero, one, zero, one)})
        nu, nv = splits[k]
        zones, weights = zip(*_CHILD_ZONES[zone], strict=True)
        n = 0
        for row in reversed(range(nv)):  # north to south, west to east
            for col in range(nu):
                n += 1
                children.append({
                    "id": f"{pid}-{n:02d}", "level": 2, "parent": pid,
                    "name": f"{name}第{n}网格",
                    "zone": rng.choices(zones, weights)[0],
                    "ring": ring(k, Fraction(col, nu), Fraction(col + 1, nu),
                                 Fraction(row, nv), Fraction(row + 1, nv)),
                })
    return parents + children


class GridIndex:
    """Finds the second-level grid containing a point, with its edge distance."""

    def __init__(self, grids: list[dict[str, Any]]) -> None:
        self.by_id = {g["id"]: g for g in grids}
        self.parents = [g for g in grids if g["level"] == 1]
        self.children: dict[str, list[dict[str, Any]]] = {g["id"]: [] for g in self.parents}
        for g in grids:
            if g["level"] == 2:
                self.children[g["parent"]].append(g)
        self._metres = {g["id"]: [to_metres(*p) for p in g["ring"]] for g in grids}

    def parent_at(self, lon: float, lat: float) -> dict[str, Any] | None:
        for g in self.parents:
            if point_in_polygon(lon, lat, g["ring"]):
                return g
        return None

    def locate(self, lon: float, lat: float) -> dict[str, Any] | None:
        """The level-2 grid holding the point at least MIN_MARGIN_M inside, or None."""
        parent = self.parent_at(lon, lat)
        for g in self.children[parent["id"]] if parent else []:
            if point_in_polygon(lon, lat, g["ring"]):
                return g if self.margin(g["id"], lon, lat) >= MIN_MARGIN_M else None
        return None

    def margin(self, grid_id: str, lon: float, lat: float) -> float:
        p, ring = to_metres(lon, lat), self._metres[grid_id]
        return min(segment_distance(p, ring[k - 1], ring[k]) for k in range(1, len(ring)))

    def centroid(self, grid_id: str) -> Point:
        ring = self._metres[grid_id][:-1]
        return (sum(p[0] for p in ring) / len(ring), sum(p[1] for p in ring) / len(ring))

    def random_point(self, rng: random.Random, grid: dict[str, Any],
                     margin_m: float = 20.0) -> list[float]:
        """A uniformly drawn point at least margin_m inside the grid."""
        ring = self._metres[grid["id"]]
        xs, ys = [p[0] for p in ring], [p[1] for p in ring]
        while True:
            ll = to_lonlat(rng.uniform(min(xs), max(xs)), rng.uniform(min(ys), max(ys)))
            if point_in_polygon(ll[0], ll[1], grid["ring"]) and \
                    self.margin(grid["id"], ll[0], ll[1]) >= margin_m:
                return ll


def grid_features(grids: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": [
        {"type": "Feature",
         "geometry": {"type": "Polygon", "coordinates": [g["ring"]]},
         "properties": {"id": g["id"], "level": g["level"], "parent": g["parent"],
                        "name": g["name"], "zone": g["zone"]}}
        for g in grids]}
