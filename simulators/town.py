"""The deterministic demo town: Xuxiake town (徐霞客镇), Jiangyin, Jiangsu.

Contract
--------
``generate(seed)`` is pure and deterministic: the same seed gives an equal
document on every run and machine (one ``random.Random(seed)``, no clock, no
iteration over hashed sets). ``to_json(doc)`` renders it byte-stably. The
document is format ``gridhub-town/1``:

- ``grids``: a GeoJSON FeatureCollection: 21 first-level grids (一级网格,
  ``G01``..``G21``, level 1, parent null), then 179 second-level grids
  (二级网格, ``G01-01``..). Each Polygon has one closed counter-clockwise ring.
  The first-level grids tile the town and the children of each first-level
  grid tile it exactly: neighbours carry identical vertices along every shared
  edge, so there are no overlaps and no holes.
- ``roads``: a FeatureCollection of LineStrings (class main/secondary/local).
  Roads touch only at identical vertices and, joined at identical
  coordinates, form one connected network reaching into every first-level grid.
- ``devices``: environment, safety and traffic sensors, each strictly inside
  (at least ``MIN_MARGIN_M`` from the edge of) its level-2 ``grid``.
- ``units``: enforcement squads, police patrols and grid workers, each
  starting on a road vertex strictly inside its level-2 ``home_grid``.

Coordinates are [lon, lat] (WGS84) rounded to 6 decimals (about 0.1 m).
Geometry is built in metres on a local plane around the town centre.
Run ``python -m simulators.town --out simulators/data/xuxiake.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from fractions import Fraction
from pathlib import Path
from typing import Any

from core.geometry import point_in_polygon
from core.town_format import DEPARTMENTS, FORMAT, SPEED_KMH

DEFAULT_SEED = 2026
TOWN_NAME = "徐霞客镇"
TOWN_NAME_EN = "Xuxiake Town"
COMMAND_CENTER_NAME = "徐霞客镇综合指挥中心"

CENTER_LON = 120.43
CENTER_LAT = 31.80
WIDTH_M = 12_000.0  # east-west extent of the town
HEIGHT_M = 10_000.0  # north-south extent

_PHI = math.radians(CENTER_LAT)
# Length of a degree at the town's latitude (WGS84 series); a local plane is
# accurate to well under a metre over 12 km.
M_PER_DEG_LAT = 111_132.92 - 559.82 * math.cos(2 * _PHI) + 1.175 * math.cos(4 * _PHI)
M_PER_DEG_LON = 111_412.84 * math.cos(_PHI) - 93.5 * math.cos(3 * _PHI)

# Devices and unit start points keep this distance from their grid's edge so
# that point-in-polygon never depends on rounding.
MIN_MARGIN_M = 5.0


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

Point = tuple[float, float]


def to_lonlat(x: float, y: float) -> list[float]:
    """Local metres (east, north of the centre) -> [lon, lat] rounded to 6 decimals."""
    return [round(CENTER_LON + x / M_PER_DEG_LON, 6), round(CENTER_LAT + y / M_PER_DEG_LAT, 6)]


def to_metres(lon: float, lat: float) -> Point:
    """[lon, lat] -> local metres east and north of the town centre."""
    return ((lon - CENTER_LON) * M_PER_DEG_LON, (lat - CENTER_LAT) * M_PER_DEG_LAT)


def _segment_distance(p: Point, a: Point, b: Point) -> float:
    dx, dy = b[0] - a[0], b[1] - a[1]
    length2 = dx * dx + dy * dy
    t = 0.0 if length2 == 0 else max(0.0, min(1.0, ((p[0] - a[0]) * dx + (p[1] - a[1]) * dy)
                                              / length2))
    return math.hypot(p[0] - a[0] - t * dx, p[1] - a[1] - t * dy)


def _cn(n: int) -> str:
    """1..99 as Chinese numerals (一, 十二, 二十三)."""
    digits = "零一二三四五六七八九"
    if n < 10:
        return digits[n]
    tens, ones = divmod(n, 10)
    return ("十" if tens == 1 else digits[tens] + "十") + (digits[ones] if ones else "")


def _stem(village: str) -> str:
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
        return min(_segment_distance(p, ring[k - 1], ring[k]) for k in range(1, len(ring)))

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


# -- roads -------------------------------------------------------------------

# Road lattice: 13 x 11 nodes about 0.9 km apart, inset 500 m from the town's
# nominal edge so that every road stays inside the outline.
ROAD_COLS, ROAD_ROWS = 13, 11
_ROAD_X0, _ROAD_DX = -5_500.0, 11_000.0 / (ROAD_COLS - 1)
_ROAD_Y0, _ROAD_DY = -4_500.0, 9_000.0 / (ROAD_ROWS - 1)
_ROAD_JITTER_M = 150.0
_ARTERIAL_JITTER_M = 40.0  # arterials run nearly straight
# Full lattice rows (south = 0) and columns carried by arterials: (name, class).
ARTERIAL_ROWS = {2: ("湖庄路", "secondary"), 5: ("徐霞客大道", "main"),
                 8: ("璜塘路", "secondary")}
ARTERIAL_COLS = {3: ("峭岐路", "secondary"), 6: ("璜马公路", "main"),
                 8: ("霞客路", "secondary"), 10: ("澄杨公路", "main")}
_WIGGLE_M = {"main": 8.0, "secondary": 15.0, "local": 25.0}
_LOCAL_LINK_P = 0.45  # share of the remaining lattice links that are local roads
_SPURS_PER_GRID = 2  # dead-end village roads into each first-level grid

Node = tuple[int, int]


def _road_lattice(rng: random.Random) -> dict[Node, Point]:
    nodes = {}
    for a in range(ROAD_ROWS):
        for b in range(ROAD_COLS):
            jx = _ARTERIAL_JITTER_M if b in ARTERIAL_COLS else _ROAD_JITTER_M
            jy = _ARTERIAL_JITTER_M if a in ARTERIAL_ROWS else _ROAD_JITTER_M
            nodes[(a, b)] = (_ROAD_X0 + b * _ROAD_DX + rng.uniform(-jx, jx),
                             _ROAD_Y0 + a * _ROAD_DY + rng.uniform(-jy, jy))
    return nodes


def _lattice_links(rng: random.Random) -> list[tuple[Node, Node, str, str]]:
    """Arterial links, random local links, then links that join stray pieces."""
    arterial, candidates = [], []
    for a in range(ROAD_ROWS):
        for b in range(ROAD_COLS):
            for other, line in (((a, b + 1), ARTERIAL_ROWS.get(a)),
                                ((a + 1, b), ARTERIAL_COLS.get(b))):
                if other[0] >= ROAD_ROWS or other[1] >= ROAD_COLS:
                    continue
                if line:
                    arterial.append(((a, b), other, line[1], line[0]))
                else:
                    candidates.append(((a, b), other))
    local = [link for link in candidates if rng.random() < _LOCAL_LINK_P]

    # Union-find over the nodes used; join every stray piece to the arterials.
    root: dict[Node, Node] = {}

    def find(n: Node) -> Node:
        while root[n] != n:
            root[n] = root[root[n]]
            n = root[n]
        return n

    def add(a: Node, b: Node) -> None:
        root.setdefault(a, a)
        root.setdefault(b, b)
        root[find(a)] = find(b)

    for a, b, _, _ in arterial:
        add(a, b)
    for a, b in local:
        add(a, b)
    hub = arterial[0][0]
    while True:
        stray = [n for n in root if find(n) != find(hub)]
        if not stray:
            break
        piece = find(stray[0])
        unused = [link for link in candidates if link not in local]
        bridges = [link for link in unused
                   if (link[0] in root and find(link[0]) == piece) !=
                   (link[1] in root and find(link[1]) == piece)
                   and (link[0] in root and link[1] in root)]
        if not bridges:  # piece walled in by unused nodes: grow it by one link
            bridges = [link for link in unused
                       if (link[0] in root and find(link[0]) == piece and link[1] not in root)
                       or (link[1] in root and find(link[1]) == piece and link[0] not in root)]
        link = rng.choice(bridges)
        local.append(link)
        add(*link)
    return arterial + [(a, b, "local", "") for a, b in local]


def _polyline(rng: random.Random, a: Point, b: Point, amp: float,
              steps: int = 4) -> list[Point]:
    """Points strictly between a and b, wiggled sideways by up to amp metres."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    length = math.hypot(dx, dy)
    nx, ny = -dy / length, dx / length
    out = []
    for s in range(1, steps):
        t, w = s / steps, rng.uniform(-amp, amp)
        out.append((a[0] + t * dx + w * nx, a[1] + t * dy + w * ny))
    return out


def make_roads(rng: random.Random, index: GridIndex) -> list[dict[str, Any]]:
    """Road records {id, name, class, speed_kmh, coords}, one per lattice link or spur."""
    nodes = _road_lattice(rng)
    node_ll = {n: to_lonlat(*p) for n, p in nodes.items()}
    roads: list[dict[str, Any]] = []

    def add(name: str, cls: str, coords: list[list[float]]) -> None:
        roads.append({"id": f"R{len(roads) + 1:03d}", "name": name, "class": cls,
                      "speed_kmh": SPEED_KMH[cls], "coords": coords})

    used: set[Node] = set()
    for a, b, cls, name in _lattice_links(rng):
        used.update((a, b))
        mids = [to_lonlat(*p) for p in _polyline(rng, nodes[a], nodes[b], _WIGGLE_M[cls])]
        if not name:  # local road: named after the village it runs through
            mid = mids[len(mids) // 2]
            parent = index.parent_at(*mid) or index.parents[0]
            cx, cy = index.centroid(parent["id"])
            x, y = to_metres(*mid)
            side = ("北" if y > cy else "南") if a[0] == b[0] else ("东" if x > cx else "西")
            name = f"{_stem(parent['name'])}{side}路"
        add(name, cls, [list(node_ll[a]), *mids, list(node_ll[b])])

    # Dead-end village roads: from a network node towards the far corner of
    # one lattice cell, staying inside that (convex) cell so it crosses nothing.
    cells_taken: set[Node] = set()
    for parent in index.parents:
        options = []
        for a in range(ROAD_ROWS - 1):
            for b in range(ROAD_COLS - 1):
                for da, db in ((0, 0), (0, 1), (1, 1), (1, 0)):
                    start, far = (a + da, b + db), (a + 1 - da, b + 1 - db)
                    if (a, b) not in cells_taken and start in used:
                        options.append(((a, b), start, far))
        rng.shuffle(options)
        groups = sorted(rng.sample(range(1, 13), _SPURS_PER_GRID))
        for cell, start, far in options:
            if len(groups) == 0:
                break
            if cell in cells_taken:
                continue
            s, f = nodes[start], nodes[far]
            frac = rng.uniform(0.30, 0.42)
            end = (s[0] + frac * (f[0] - s[0]), s[1] + frac * (f[1] - s[1]))
            pts = [to_lonlat(*p) for p in (*_polyline(rng, s, end, 10.0, 2), end)]
            if not all(point_in_polygon(p[0], p[1], parent["ring"]) for p in pts):
                continue
            cells_taken.add(cell)
            group = groups.pop(0)
            name = (f"{parent['name']}{_cn(group)}组路" if parent["name"].endswith("村")
                    else f"{_stem(parent['name'])}{_cn(group)}巷")
            add(name, "local", [list(node_ll[start]), *pts])
    return roads


def road_features(roads: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": [
        {"type": "Feature",
         "geometry": {"type": "LineString", "coordinates": r["coords"]},
         "properties": {"id": r["id"], "name": r["name"], "class": r["class"],
                        "speed_kmh": r["speed_kmh"]}}
        for r in roads]}


_CLASS_RANK = {"main": 0, "secondary": 1, "local": 2}
_ARTERIAL_NAMES = [name for name, _ in (*ARTERIAL_ROWS.values(), *ARTERIAL_COLS.values())]


def road_vertices(roads: list[dict[str, Any]], index: GridIndex) -> list[dict[str, Any]]:
    """Distinct road vertices in first-seen order: ll, names (best class first),
    best class, degree and the level-2 grid holding it (None if too near an edge)."""
    table: dict[tuple[float, float], dict[str, Any]] = {}
    for r in roads:
        coords = r["coords"]
        for k, ll in enumerate(coords):
            v = table.setdefault((ll[0], ll[1]), {"ll": ll, "roads": [], "nbrs": []})
            if (_CLASS_RANK[r["class"]], r["name"]) not in v["roads"]:
                v["roads"].append((_CLASS_RANK[r["class"]], r["name"]))
            for nb in coords[max(k - 1, 0):k] + coords[k + 1:k + 2]:
                if nb not in v["nbrs"]:
                    v["nbrs"].append(nb)
    out = []
    for v in table.values():
        v["roads"].sort()
        grid = index.locate(*v["ll"])
        out.append({"ll": v["ll"], "names": [n for _, n in v["roads"]],
                    "class": ("main", "secondary", "local")[v["roads"][0][0]],
                    "degree": len(v["nbrs"]), "grid": grid})
    return out


# -- devices -----------------------------------------------------------------

N_TRAFFIC_CROSSINGS = 64  # counters at intersections
N_TRAFFIC_LINKS = 16  # counters on main-road links
N_SAFETY = 100
N_AIR_EXTRA = 9  # air stations beyond one per first-level grid, in industrial grids
N_NOISE_ROADSIDE = 12
N_NOISE_AREA = 36
N_WATER = 32

MODELS = {
    "traffic_counter": ("traffic", ["vehicle_count", "speed_kmh", "occupancy_pct"], 60),
    "gas_detector": ("safety", ["gas_lel_pct"], 30),
    "smoke_detector": ("safety", ["smoke_obscuration_pct", "temperature_c"], 30),
    "air_station": ("environment", ["pm25", "pm10"], 60),
    "noise_meter": ("environment", ["noise_db"], 60),
    "water_station": ("environment", ["water_level_m", "water_quality_cod_mg_l"], 60),
}
_ID_PREFIX = {"traffic": "TRF", "safety": "SAF", "environment": "ENV"}

_BRANDS = ("华宏", "澄星", "海达", "恒润", "申港", "兴澄", "霞光", "远东", "金鑫", "双良",
           "长电", "新扬子", "阳光", "凯达", "博瑞", "天茂", "联发", "永盛", "鑫泰", "华士",
           "东昌", "润丰", "昌盛", "宏达", "瑞和", "金马", "中南", "佳美", "汇通", "嘉诚")
_INDUSTRIES = (("纺织", "smoke"), ("印染", "gas"), ("化工", "gas"), ("精细化工", "gas"),
               ("机械制造", "smoke"), ("金属制品", "smoke"), ("新材料", "gas"),
               ("电子科技", "smoke"), ("建材", "smoke"), ("塑胶", "smoke"),
               ("热电", "gas"), ("仓储物流", "smoke"))
_OTHER_SITES = (("加油站", "gas"), ("农贸市场", "smoke"), ("安置房项目工地", "smoke"),
                ("商业综合体", "smoke"), ("餐饮一条街", "gas"), ("液化气供应站", "gas"))
RIVERS = ("白屈港", "东横河", "冯泾河", "应天河", "璜塘河", "马镇河", "峭岐河", "湖庄河",
          "南旸岐浜", "北渚浜")


def _device(kind_model: str, seq: int, name: str, ll: list[float],
            grid: dict[str, Any]) -> dict[str, Any]:
    kind, metrics, interval = MODELS[kind_model]
    return {"id": f"{_ID_PREFIX[kind]}-{seq:04d}", "kind": kind, "model": kind_model,
            "name": name, "lon": ll[0], "lat": ll[1], "grid": grid["id"],
            "metrics": list(metrics), "interval_s": interval, "zone": grid["zone"]}


def _road_place(v: dict[str, Any], index: GridIndex) -> str:
    if len(v["names"]) > 1:
        return f"{v['names'][0]}与{v['names'][1]}交叉口"
    return f"{v['names'][0]}{index.by_id[v['grid']['parent']]['name']}段"


def _traffic_devices(rng: random.Random, index: GridIndex,
                     verts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    placed = [v for v in verts if v["grid"]]
    crossings = [v for v in placed if v["degree"] >= 3]
    both = [v for v in crossings if sum(n in _ARTERIAL_NAMES for n in v["names"]) >= 2]
    rest = [v for v in crossings if v not in both]
    chosen = both + rng.sample(rest, min(len(rest), N_TRAFFIC_CROSSINGS - len(both)))
    links = [v for v in placed if v["degree"] == 2 and v["class"] == "main"]
    chosen += rng.sample(links, N_TRAFFIC_LINKS)
    return [_device("traffic_counter", k + 1, f"{_road_place(v, index)}车流检测器",
                    v["ll"], v["grid"]) for k, v in enumerate(chosen)]


def _safety_devices(rng: random.Random, index: GridIndex) -> list[dict[str, Any]]:
    children = [g for g in index.by_id.values() if g["level"] == 2]
    industrial = [g for g in children if g["zone"] == "industrial"]
    others = [g for g in children if g["zone"] in ("mixed", "commercial", "residential")]
    out: list[dict[str, Any]] = []
    taken: list[str] = []
    while len(out) < N_SAFETY:
        if rng.random() < 0.75:
            grid = rng.choice(industrial)
            industry, main = rng.choice(_INDUSTRIES)
            site = f"江阴市{rng.choice(_BRANDS)}{industry}有限公司"
        else:
            grid = rng.choice(others)
            kind, main = rng.choice(_OTHER_SITES)
            site = f"{_stem(index.by_id[grid['parent']]['name'])}{kind}"
        if site in taken:
            continue
        taken.append(site)
        centre = index.random_point(rng, grid, 30.0)
        models = ["gas_detector" if main == "gas" else "smoke_detector"]
        if rng.random() < 0.6:
            models.append("smoke_detector" if main == "gas" else "gas_detector")
        for model in models[:N_SAFETY - len(out)]:
            x, y = to_metres(*centre)
            ll = to_lonlat(x + rng.uniform(-15, 15), y + rng.uniform(-15, 15))
            word = "可燃气体探测器" if model == "gas_detector" else "烟感温感探测器"
            out.append(_device(model, len(out) + 1, f"{site}{word}", ll, grid))
    return out


def _environment_devices(rng: random.Random, index: GridIndex, verts: list[dict[str, Any]],
                         busy: list[list[float]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def put(model: str, name: str, ll: list[float], grid: dict[str, Any],
            noise_zone: str | None = None) -> None:
        dev = _device(model, len(out) + 1, name, ll, grid)
        if noise_zone is not None:
            dev["noise_zone"] = noise_zone
        out.append(dev)

    children = [g for g in index.by_id.values() if g["level"] == 2]
    for parent in index.parents:
        grid = rng.choice(index.children[parent["id"]])
        put("air_station", f"{parent['name']}空气质量监测站",
            index.random_point(rng, grid), grid)
    for grid in rng.sample([g for g in children if g["zone"] == "industrial"], N_AIR_EXTRA):
        put("air_station", f"{grid['name']}空气微站", index.random_point(rng, grid), grid)

    roadside = [v for v in verts if v["grid"] and v["class"] == "main" and v["ll"] not in busy]
    for v in rng.sample(roadside, N_NOISE_ROADSIDE):
        put("noise_meter", f"{_road_place(v, index)}交通噪声监测点", v["ll"], v["grid"], "4")
    for grid in rng.sample(children, N_NOISE_AREA):
        put("noise_meter", f"{grid['name']}区域噪声监测点", index.random_point(rng, grid),
            grid, NOISE_ZONE[grid["zone"]])

    bridges = [v for v in verts if v["grid"] and v["degree"] == 2 and v["class"] != "main"]
    names: list[str] = []
    while len(names) < N_WATER:
        v = rng.choice(bridges)
        angle = rng.uniform(0, 2 * math.pi)
        x, y = to_metres(*v["ll"])
        ll = to_lonlat(x + 30 * math.cos(angle), y + 30 * math.sin(angle))
        grid = index.locate(*ll)
        if grid is None:
            continue
        name = f"{rng.choice(RIVERS)}{index.by_id[grid['parent']]['name']}段水质水位站"
        if name in names:
            continue
        names.append(name)
        put("water_station", name, ll, grid)
    return out


def make_devices(rng: random.Random, index: GridIndex,
                 verts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    traffic = _traffic_devices(rng, index, verts)
    safety = _safety_devices(rng, index)
    busy = [[d["lon"], d["lat"]] for d in traffic]
    devices = _environment_devices(rng, index, verts, busy) + safety + traffic
    seen: dict[str, int] = {}
    for d in devices:  # operators tell devices apart by name: number repeats
        seen[d["name"]] = n = seen.get(d["name"], 0) + 1
        if n > 1:
            d["name"] += f"（{n}号）"
    return devices


# -- units -------------------------------------------------------------------

N_POLICE = 12
# Nine all-round squads, one per area of first-level grids (three areas of
# 2/3/2 columns in each row), plus three squads patrolling the arterials.
_AREA_COLUMNS = ((0, 1), (2, 3, 4), (5, 6))
_ROAD_SQUAD_HOMES = ("G09", "G11", "G13")
# Each department is covered by this many squads at least (others: 2).
MIN_SQUADS_PER_DEPARTMENT = {"work_safety": 3, "environment": 3, "city_management": 3}
GRID_WORKER_QUALIFICATIONS = ["city_management", "environment"]
POLICE_QUALIFICATIONS = ["public_security", "traffic"]


def _squad_qualifications(rng: random.Random, seeds: list[list[str]]) -> list[list[str]]:
    """3-6 departments per squad, filling the least-covered departments first."""
    sizes = [rng.randint(max(3, len(s)), 6) for s in seeds]
    while sum(sizes) < 3 * len(DEPARTMENTS):  # enough slots for every department x3
        k = rng.choice([k for k, n in enumerate(sizes) if n < 6])
        sizes[k] += 1
    counts = dict.fromkeys(DEPARTMENTS, 0)
    for s in seeds:
        for d in s:
            counts[d] += 1
    out = []
    for seed, size in zip(seeds, sizes, strict=True):
        ranked = sorted((counts[d] - (d in MIN_SQUADS_PER_DEPARTMENT), rng.random(), d)
                        for d in DEPARTMENTS if d not in seed)
        chosen = seed + [d for _, _, d in ranked[:size - len(seed)]]
        for d in chosen[len(seed):]:
            counts[d] += 1
        out.append([d for d in DEPARTMENTS if d in chosen])
    for d, n in counts.items():
        if n < MIN_SQUADS_PER_DEPARTMENT.get(d, 2):
            raise RuntimeError(f"department {d} covered by {n} squads only")
    return out


def make_units(rng: random.Random, index: GridIndex,
               verts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_parent: dict[str, list[dict[str, Any]]] = {g["id"]: [] for g in index.parents}
    for v in verts:
        if v["grid"]:
            by_parent[v["grid"]["parent"]].append(v)
    taken: list[list[float]] = []

    def start(parent_id: str, arterial: bool) -> dict[str, Any]:
        """A road vertex inside the grid, preferring free (and arterial) ones."""
        pool = by_parent[parent_id]
        free = [v for v in pool if v["ll"] not in taken]
        major = [v for v in free if v["class"] != "local"] if arterial else free
        options = major or free or pool
        if not options:
            raise RuntimeError(f"no road vertex inside {parent_id}")
        v = rng.choice(options)
        taken.append(v["ll"])
        return v

    def unit(uid: str, name: str, kind: str, quals: list[str], v: dict[str, Any],
             members: int) -> dict[str, Any]:
        return {"id": uid, "name": name, "type": kind, "qualifications": quals,
                "home_grid": v["grid"]["id"], "lon": v["ll"][0], "lat": v["ll"][1],
                "members": members}

    homes = []
    for row in range(GRID_ROWS):
        for cols in _AREA_COLUMNS:
            homes.append(f"G{row * GRID_COLS + cols[len(cols) // 2] + 1:02d}")
    seeds = [["city_management"]] * len(homes) + \
        [["city_management", "traffic"]] * len(_ROAD_SQUAD_HOMES)
    quals = _squad_qualifications(rng, seeds)
    units = []
    for k, home in enumerate(homes):
        village = index.by_id[home]["name"]
        units.append(unit(f"SQ-{k + 1:02d}", f"综合执法{_cn(k + 1)}中队（{village}片区）", "squad",
                          quals[k], start(home, False), rng.randint(6, 10)))
    for k, home in enumerate(_ROAD_SQUAD_HOMES):
        n = len(homes) + k
        units.append(unit(f"SQ-{n + 1:02d}", f"道路巡查{_cn(k + 1)}中队", "squad", quals[n],
                          start(home, True), rng.randint(4, 6)))
    for k, p in enumerate(sorted(rng.sample(range(N_LEVEL1), N_POLICE))):
        units.append(unit(f"PO-{k + 1:02d}", f"徐霞客派出所巡逻{_cn(k + 1)}组", "police",
                          list(POLICE_QUALIFICATIONS), start(f"G{p + 1:02d}", True),
                          rng.randint(2, 3)))
    for k, parent in enumerate(index.parents):
        units.append(unit(f"GW-{k + 1:02d}", f"{parent['name']}网格员", "grid_worker",
                          list(GRID_WORKER_QUALIFICATIONS), start(parent["id"], False),
                          rng.randint(1, 2)))
    return units


# -- the document --------------------------------------------------------------

def generate(seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """The whole town document for a seed (pure, deterministic)."""
    rng = random.Random(seed)
    grids = make_grids(rng)
    index = GridIndex(grids)
    roads = make_roads(rng, index)
    verts = road_vertices(roads, index)
    devices = make_devices(rng, index, verts)
    units = make_units(rng, index, verts)
    # The command center sits just off the crossing of the two main roads.
    main_names = [ARTERIAL_ROWS[5][0], ARTERIAL_COLS[6][0]]
    crossing = next(v for v in verts if all(n in v["names"] for n in main_names))
    cx, cy = to_metres(*crossing["ll"])
    lon, lat = to_lonlat(cx + 60.0, cy + 45.0)
    return {
        "format": FORMAT,
        "name": TOWN_NAME,
        "name_en": TOWN_NAME_EN,
        "seed": seed,
        "command_center": {"name": COMMAND_CENTER_NAME, "lon": lon, "lat": lat},
        "grids": grid_features(grids),
        "roads": road_features(roads),
        "devices": devices,
        "units": units,
        "departments": dict(DEPARTMENTS),
    }


def to_json(doc: dict[str, Any]) -> str:
    """The canonical text of a document: byte-identical for equal documents."""
    return json.dumps(doc, ensure_ascii=False, indent=1) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the demo town document.")
    parser.add_argument("--out", type=Path, default=Path("simulators/data/xuxiake.json"))
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(to_json(generate(args.seed)), encoding="utf-8", newline="\n")


if __name__ == "__main__":
    main()
