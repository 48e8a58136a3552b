"""The town's roads as patrols use them: the local plane (``to_xy``, ``to_lonlat``), a
``Path`` to follow, and ``RoadGraph``: nodes are road vertices joined by identical rounded
coordinates (the town file's roads meet only at shared vertices), edges the segments between
consecutive vertices, weighted by length; ``route`` gives a shortest path (heapq Dijkstra)
from any point to any point: a walk onto the nearest road segment, the roads, and a walk off
the road to the target. Pure.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from core.geometry import point_in_polygon
from simulators.demo_town.plane import CENTER_LAT, CENTER_LON, M_PER_DEG_LAT, M_PER_DEG_LON

XY = tuple[float, float]

KMH = 1.0 / 3.6


# Walking pace on the stretch between the road and a target off the road.
OFFROAD_MPS = 1.4


# Coordinates are rounded to this many decimals to join road vertices (the town file
# stores 6, about 0.1 m).
JOIN_DECIMALS = 6


def to_xy(lon: float, lat: float) -> XY:
    """WGS-84 degrees -> metres east/north of the town centre (unrounded)."""
    return ((lon - CENTER_LON) * M_PER_DEG_LON, (lat - CENTER_LAT) * M_PER_DEG_LAT)


def to_lonlat(x: float, y: float) -> XY:
    """Metres on the town plane -> (lon, lat) degrees (unrounded)."""
    return (CENTER_LON + x / M_PER_DEG_LON, CENTER_LAT + y / M_PER_DEG_LAT)


def heading_deg(dx: float, dy: float) -> float:
    """Compass heading of a displacement: degrees clockwise from north, 0..360."""
    return math.degrees(math.atan2(dx, dy)) % 360.0


@dataclass(frozen=True, slots=True)
class Projection:
    """A point's nearest place on the road network: segment ``seg`` at fraction ``t``."""

    seg: int
    t: float
    x: float
    y: float
    dist: float


@dataclass(frozen=True, slots=True)
class Path:
    """A polyline to follow: ``points[i] -> points[i+1]`` is leg i, driven at most at
    ``limits[i]`` m/s. ``lengths`` are the legs' lengths in metres."""

    points: tuple[XY, ...]
    limits: tuple[float, ...]
    lengths: tuple[float, ...]

    @staticmethod
    def of(points: Sequence[XY], limits: Sequence[float]) -> Path:
        pts: list[XY] = [points[0]]
        lims: list[float] = []
        for p, lim in zip(points[1:], limits, strict=True):
            if math.hypot(p[0] - pts[-1][0], p[1] - pts[-1][1]) > 1e-6:  # drop zero legs
                pts.append(p)
                lims.append(lim)
        lengths = tuple(math.hypot(b[0] - a[0], b[1] - a[1]) for a, b in pairwise(pts))
        return Path(tuple(pts), tuple(lims), lengths)

    @property
    def length(self) -> float:
        return sum(self.lengths)

    @property
    def end(self) -> XY:
        return self.points[-1]


class RoadGraph:
    """Undirected road graph built from the town file's road LineStrings."""

    def __init__(self, roads: Iterable[Mapping[str, Any]]) -> None:
        self.index: dict[XY, int] = {}
        self.nodes: list[XY] = []  # metres
        self.lonlat: list[XY] = []
        self.adj: list[list[tuple[int, float, float]]] = []  # (neighbour, length m, limit m/s)
        self.segments: list[tuple[int, int, float]] = []  # (a, b, limit m/s)
        seen: set[tuple[int, int]] = set()
        for feature in roads:
            coords = feature["geometry"]["coordinates"]
            limit = float(feature.get("properties", {}).get("speed_kmh") or 40) * KMH
            ids = [self._node(c[0], c[1]) for c in coords]
            for a, b in pairwise(ids):
                if a == b or (min(a, b), max(a, b)) in seen:
                    continue
                seen.add((min(a, b), max(a, b)))
                (ax, ay), (bx, by) = self.nodes[a], self.nodes[b]
                length = math.hypot(bx - ax, by - ay)
                self.adj[a].append((b, length, limit))
                self.adj[b].append((a, length, limit))
                self.segments.append((a, b, limit))
        if not self.segments:
            raise ValueError("no road segments")
        self.component = self._largest_component()
        self._main = sorted(self.component)  # a fixed order keeps choices deterministic

    @staticmethod
    def from_town(doc: Mapping[str, Any]) -> RoadGraph:
        return RoadGraph(doc["roads"]["features"])

    def _node(self, lon: float, lat: float) -> int:
        key = (round(lon, JOIN_DECIMALS), round(lat, JOIN_DECIMALS))
        n = self.index.get(key)
        if n is None:
            n = self.index[key] = len(self.nodes)
            self.nodes.append(to_xy(*key))
            self.lonlat.append(key)
            self.adj.append([])
        return n

    def _largest_component(self) -> frozenset[int]:
        best: set[int] = set()
        unseen = set(range(len(self.nodes)))
        while unseen:
            start = min(unseen)
            comp = {start}
            stack = [start]
            while stack:
                for nb, _, _ in self.adj[stack.pop()]:
                    if nb not in comp:
                        comp.add(nb)
                        stack.append(nb)
            unseen -= comp
            if len(comp) > len(best):
                best = comp
        return frozenset(best)

    def nearest(self, x: float, y: float) -> Projection:
        """The closest point on any segment of the main component (linear scan: ~1,000
        segments, called once per route)."""
        best: Projection | None = None
        for k, (a, b, _) in enumerate(self.segments):
            if a not in self.component:
                continue
            (ax, ay), (bx, by) = self.nodes[a], self.nodes[b]
            dx, dy = bx - ax, by - ay
            l2 = dx * dx + dy * dy
            t = 0.0 if l2 == 0 else _clamp01(((x - ax) * dx + (y - ay) * dy) / l2)
            px, py = ax + t * dx, ay + t * dy
            d = math.hypot(x - px, y - py)
            if best is None or d < best.dist:
                best = Projection(k, t, px, py, d)
        assert best is not None
        return best

    def dijkstra(self, sources: Mapping[int, float], targets: Iterable[int] = (),
                 allowed: frozenset[int] | None = None
                 ) -> tuple[dict[int, float], dict[int, int]]:
        """Shortest distances (m) from several sources with initial costs, through
        ``allowed`` nodes only when given; stops early once every target is settled.
        Returns (distance, predecessor)."""
        dist: dict[int, float] = dict(sources)
        prev: dict[int, int] = {}
        pending = set(targets)
        heap = [(d, n) for n, d in sources.items()]
        heapq.heapify(heap)
        done: set[int] = set()
        while heap:
            d, n = heapq.heappop(heap)
            if n in done:
                continue
            done.add(n)
            pending.discard(n)
            if targets and not pending:
                break
            for nb, length, _ in self.adj[n]:
                if allowed is not None and nb not in allowed:
                    continue
                nd = d + length
                if nd < dist.get(nb, math.inf):
                    dist[nb] = nd
                    prev[nb] = n
                    heapq.heappush(heap, (nd, nb))
        return dist, prev

    def _limit(self, a: int, b: int) -> float:
        return next(lim for nb, _, lim in self.adj[a] if nb == b)

    def route(self, start: XY, goal: XY, offroad_mps: float = OFFROAD_MPS) -> Path:
        """Shortest path from ``start`` to ``goal`` (both anywhere, metres) by road: walk to
        the nearest road point, drive, walk from the road point nearest the goal."""
        ps, pg = self.nearest(*start), self.nearest(*goal)
        sa, sb, slim = self.segments[ps.seg]
        ga, gb, glim = self.segments[pg.seg]
        pts: list[XY] = [start, (ps.x, ps.y)]
        lims: list[float] = [offroad_mps]
        seg_len = math.dist(self.nodes[sa], self.nodes[sb])
        if ps.seg == pg.seg:
            direct = abs(pg.t - ps.t) * seg_len
        else:
            direct = math.inf
        sources = {sa: ps.t * seg_len, sb: (1.0 - ps.t) * seg_len}
        glen = math.dist(self.nodes[ga], self.nodes[gb])
        dist, prev = self.dijkstra(sources, (ga, gb))
        via_a = dist.get(ga, math.inf) + pg.t * glen
        via_b = dist.get(gb, math.inf) + (1.0 - pg.t) * glen
        if direct <= min(via_a, via_b):
            pts.append((pg.x, pg.y))
            lims.append(slim)
        else:
            end = ga if via_a <= via_b else gb
            chain = [end]
            while chain[-1] in prev:  # sources have no predecessor
                chain.append(prev[chain[-1]])
            chain.reverse()
            first = chain[0]
            pts.append(self.nodes[first])
            lims.append(slim)
            for a, b in pairwise(chain):
                pts.append(self.nodes[b])
                lims.append(self._limit(a, b))
            pts.append((pg.x, pg.y))
            lims.append(glim)
        pts.append(goal)
        lims.append(offroad_mps)
        return Path.of(pts, lims)

    def node_route(self, start_node: int, goal_node: int,
                   allowed: frozenset[int] | None = None) -> Path:
        """Shortest path between two graph nodes (entirely on the roads), through
        ``allowed`` nodes only when given."""
        if start_node == goal_node:
            p = self.nodes[start_node]
            return Path((p,), (), ())
        dist, prev = self.dijkstra({start_node: 0.0}, (goal_node,), allowed)
        if goal_node not in dist:
            raise ValueError(f"node {goal_node} unreachable from {start_node}")
        chain = [goal_node]
        while chain[-1] != start_node:
            chain.append(prev[chain[-1]])
        chain.reverse()
        return Path.of([self.nodes[n] for n in chain],
                       [self._limit(a, b) for a, b in pairwise(chain)])

    def reachable(self, start: int, allowed: frozenset[int]) -> frozenset[int]:
        """Nodes of ``allowed`` reachable from ``start`` without leaving ``allowed``."""
        seen = {start}
        stack = [start]
        while stack:
            for nb, _, _ in self.adj[stack.pop()]:
                if nb in allowed and nb not in seen:
                    seen.add(nb)
                    stack.append(nb)
        return frozenset(seen)

    def nodes_in(self, ring: Sequence[Sequence[float]]) -> frozenset[int]:
        """Nodes inside a polygon ring given in [lon, lat]."""
        return frozenset(n for n in self.component
                         if point_in_polygon(*self.lonlat[n], list(map(list, ring))))

    def nodes_within(self, x: float, y: float, radius: float) -> list[int]:
        return [n for n in self._main
                if math.hypot(self.nodes[n][0] - x, self.nodes[n][1] - y) <= radius]

    def nearest_node(self, x: float, y: float) -> int:
        nodes = self.nodes
        return min(self._main, key=lambda n: (nodes[n][0] - x) ** 2 + (nodes[n][1] - y) ** 2)


def area_rings(grids: Sequence[Mapping[str, Any]]
                ) -> dict[str, tuple[str, list[list[float]]]]:
    """Second-level grid id -> (its first-level grid id, that grid's outer ring)."""
    rings = {}
    parents = {}
    for f in grids:
        props = f["properties"]
        if props.get("level") == 1:
            rings[props["id"]] = f["geometry"]["coordinates"][0]
        elif props.get("parent"):
            parents[props["id"]] = props["parent"]
    out = {gid: (p, rings[p]) for gid, p in parents.items() if p in rings}
    out.update({gid: (gid, ring) for gid, ring in rings.items()})
    return out


def _clamp01(v: float) -> float:
    return 0.0 if v < 0.0 else 1.0 if v > 1.0 else v
