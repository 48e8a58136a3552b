"""The demo town's roads: arterials and local roads on a jittered lattice, joined only at
identical vertices into one connected network, and the vertices units and devices use."""

from __future__ import annotations

import math
import random
from typing import Any

from core.geometry import point_in_polygon
from core.town_format import SPEED_KMH
from simulators.demo_town.grids import GridIndex, cn_numeral, village_stem
from simulators.demo_town.plane import Point, to_lonlat, to_metres

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

    for n1, n2, _, _ in arterial:
        add(n1, n2)
    for n1, n2 in local:
        add(n1, n2)
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
            name = f"{village_stem(parent['name'])}{side}路"
        add(name, cls, [list(node_ll[a]), *mids, list(node_ll[b])])

    # Dead-end village roads: from a network node towards the far corner of
    # one lattice cell, staying inside that (convex) cell so it crosses nothing.
    cells_taken: set[Node] = set()
    for parent in index.parents:
        options = []
        for row in range(ROAD_ROWS - 1):
            for col in range(ROAD_COLS - 1):
                for dr, dc in ((0, 0), (0, 1), (1, 1), (1, 0)):
                    start, far = (row + dr, col + dc), (row + 1 - dr, col + 1 - dc)
                    if (row, col) not in cells_taken and start in used:
                        options.append(((row, col), start, far))
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
            name = (f"{parent['name']}{cn_numeral(group)}组路" if parent["name"].endswith("村")
                    else f"{village_stem(parent['name'])}{cn_numeral(group)}巷")
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
ARTERIAL_NAMES = [name for name, _ in (*ARTERIAL_ROWS.values(), *ARTERIAL_COLS.values())]


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
