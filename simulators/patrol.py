"""Patrol units moving on the town's road network, and the GPS fixes their phones send.

Layers, pure first:
- ``RoadGraph``: nodes are road vertices joined by identical rounded coordinates (the town
  file's roads meet only at shared vertices), edges the segments between consecutive
  vertices, weighted by length; ``route`` gives a shortest path (heapq Dijkstra) from any
  point to any point: a walk onto the nearest road segment, the roads, and a walk off the
  road to the target.
- ``Mover`` + ``advance(mover, dt) -> Mover``: pure movement along a ``Path`` at the
  unit's cruise speed, capped by each leg's speed limit.
- ``gps_fix``: what the phone reports for a true position: ~5 m Gaussian error and, about
  once in 500 fixes, a multipath jump of 100-300 m.
- ``Fleet``: the units of the town, patrolling random routes on the roads of their own
  first-level grid when free (grid workers near their home grid) or sent somewhere by a
  crew (``send_to``); seeded, with time passed in. Publishing is elsewhere
  (simulators/run.py).

Coordinates: WGS-84 lon/lat outside, metres on the town's local plane inside
(simulators.demo_town.plane's projection, accurate to well under a metre over the town).
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise
from typing import Any

from core.geometry import point_in_polygon
from simulators.demo_town.plane import CENTER_LAT, CENTER_LON, M_PER_DEG_LAT, M_PER_DEG_LON

XY = tuple[float, float]

KMH = 1.0 / 3.6
# Cruise speeds (km/h) drawn for every route. Squads and police drive; grid workers walk or
# ride e-bikes. Road limits (town file speed_kmh) cap vehicles further.
CRUISE_KMH = {"squad": (25.0, 45.0), "police": (25.0, 45.0), "grid_worker": (4.0, 15.0)}
# Walking pace on the stretch between the road and a target off the road.
OFFROAD_MPS = 1.4
# Free units patrol inside their area: the first-level grid holding their home grid (the
# hub's default patrol area, watched by the patrol_out_of_area geofence rule), on roads
# inside it, and grid workers only within this distance of their start (their own
# second-level grid and its neighbours). Without grids: within this radius of the start.
PATROL_RADIUS_M = {"squad": 2500.0, "police": 2500.0, "grid_worker": 900.0}
MIN_PATROL_NODES = 4
# On reaching a patrol point a unit stops (checks a site, visits a household) with this
# probability, for a time in the range (s).
DWELL = {"squad": (0.35, 30.0, 240.0), "police": (0.3, 30.0, 180.0),
         "grid_worker": (0.5, 60.0, 300.0)}
# Phone GPS: horizontal error ~5 m (a standard deviation per axis of 5/sqrt(2) m gives a
# 5 m root-mean-square radial error), a rare multipath jump.
GPS_SIGMA_M = 5.0 / math.sqrt(2.0)
GPS_ACCURACY_M = 5.0
GPS_JUMP_P = 1.0 / 500.0
GPS_JUMP_M = (100.0, 300.0)
DEFAULT_GPS_INTERVAL_S = 5.0
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


def _area_rings(grids: Sequence[Mapping[str, Any]]
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


# ---------------------------------------------------------------- pure movement

@dataclass(frozen=True, slots=True)
class Mover:
    """Where a unit is and what it is following. ``speed`` m/s, ``heading`` degrees."""

    x: float
    y: float
    cruise: float  # m/s the unit would like to go
    heading: float = 0.0
    speed: float = 0.0
    path: Path | None = None
    leg: int = 0
    along: float = 0.0  # metres along the current leg

    @property
    def arrived(self) -> bool:
        return self.path is None or self.leg >= len(self.path.lengths)

    def follow(self, path: Path, cruise: float | None = None) -> Mover:
        """Start along ``path`` (from its first point, which should be here)."""
        return replace(self, path=path, leg=0, along=0.0,
                       cruise=self.cruise if cruise is None else cruise)

    def remaining(self) -> float:
        if self.path is None:
            return 0.0
        return sum(self.path.lengths[self.leg:]) - self.along


def advance(m: Mover, dt: float) -> Mover:
    """The mover ``dt`` seconds later: along its path at min(cruise, leg limit); stopped
    (speed 0) once at the end of the path. Pure."""
    path = m.path
    if path is None or m.leg >= len(path.lengths) or dt <= 0:
        return m if m.speed == 0 or dt <= 0 else replace(m, speed=0.0)
    leg, along, budget = m.leg, m.along, dt
    speed = 0.0
    while leg < len(path.lengths):
        speed = min(m.cruise, path.limits[leg])
        rest = path.lengths[leg] - along
        if speed * budget < rest:
            along += speed * budget
            break
        budget -= rest / speed
        leg, along = leg + 1, 0.0
    if leg >= len(path.lengths):
        (ax, ay), (bx, by) = path.points[-2], path.points[-1]
        return replace(m, x=bx, y=by, leg=leg, along=0.0, speed=0.0,
                       heading=heading_deg(bx - ax, by - ay))
    (ax, ay), (bx, by) = path.points[leg], path.points[leg + 1]
    f = along / path.lengths[leg]
    return replace(m, x=ax + f * (bx - ax), y=ay + f * (by - ay), leg=leg, along=along,
                   speed=speed, heading=heading_deg(bx - ax, by - ay))


@dataclass(frozen=True, slots=True)
class Fix:
    """One GPS report: WGS-84 degrees, speed m/s, heading degrees, accuracy m."""

    unit_id: str
    ts: float
    lat: float
    lon: float
    speed: float
    heading: float | None
    acc: float


def gps_fix(unit_id: str, m: Mover, ts: float, rng: random.Random,
            sigma_m: float = GPS_SIGMA_M, jump_p: float = GPS_JUMP_P) -> Fix:
    """What the phone reports for the true position ``m`` (pure given ``rng``)."""
    ex, ey = rng.gauss(0.0, sigma_m), rng.gauss(0.0, sigma_m)
    if rng.random() < jump_p:
        angle = rng.uniform(0.0, 2.0 * math.pi)
        r = rng.uniform(*GPS_JUMP_M)
        ex, ey = ex + r * math.cos(angle), ey + r * math.sin(angle)
    lon, lat = to_lonlat(m.x + ex, m.y + ey)
    moving = m.speed > 0.3
    speed = max(0.0, m.speed + rng.gauss(0.0, 0.3)) if moving else 0.0
    acc = round(GPS_ACCURACY_M * rng.uniform(0.7, 1.6), 1)
    return Fix(unit_id, ts, round(lat, 7), round(lon, 7), round(speed, 2),
               round(m.heading, 1) if moving else None, acc)


# ---------------------------------------------------------------- the fleet

@dataclass
class Unit:
    id: str
    kind: str
    home: XY
    home_grid: str
    patrol_nodes: list[int]
    area: frozenset[int] | None  # nodes a free patrol keeps to (None: anywhere)
    mover: Mover
    mode: str = "patrol"  # patrol | dwell | sent | returning
    dwell_until: float = 0.0
    target: XY | None = None
    next_fix: float = 0.0
    km: float = 0.0  # patrol mileage
    meta: dict[str, Any] = field(default_factory=dict)


class Fleet:
    """The town's units: patrolling near home when free, driving where a crew sends them.

    Deterministic for a seed and a sequence of ``step(now, dt)`` calls.
    """

    def __init__(self, graph: RoadGraph, units: Sequence[Mapping[str, Any]], seed: int,
                 now: float, gps_interval_s: float = DEFAULT_GPS_INTERVAL_S,
                 grids: Sequence[Mapping[str, Any]] | None = None,
                 positions: Mapping[str, XY] | None = None) -> None:
        """``grids``: the town's grid features (both levels); without them patrols keep
        to a radius around their start instead of their first-level grid. ``positions``:
        (lon, lat) to start from instead of the town file's start point (the hub's last
        known fixes, so a restarted simulator carries on where its units were)."""
        self.graph = graph
        self.rng = random.Random(f"fleet:{seed}")
        self.gps_rng = random.Random(f"gps:{seed}")
        self.gps_interval_s = gps_interval_s
        self.units: dict[str, Unit] = {}
        areas = _area_rings(grids) if grids else {}
        area_nodes: dict[str, frozenset[int]] = {}
        n = max(1, len(units))
        for k, u in enumerate(units):
            kind = u.get("type", "squad")
            x, y = to_xy(float(u["lon"]), float(u["lat"]))
            start = graph.nearest_node(x, y)
            sx, sy = graph.nodes[start]
            area: frozenset[int] | None = None
            ring_id = areas.get(u.get("home_grid", ""), (None, None))[0]
            if ring_id is not None:
                if ring_id not in area_nodes:
                    area_nodes[ring_id] = graph.nodes_in(areas[u["home_grid"]][1])
                area = graph.reachable(start, area_nodes[ring_id] | {start})
            radius = PATROL_RADIUS_M.get(kind, 2000.0)
            if area is not None and kind != "grid_worker":
                nodes = sorted(area)
            else:
                nodes = [m for m in graph.nodes_within(sx, sy, radius)
                         if area is None or m in area]
            if len(nodes) < MIN_PATROL_NODES:  # too few roads there: patrol nearby instead
                area = None
                while len(nodes) < MIN_PATROL_NODES:
                    radius *= 1.5
                    nodes = graph.nodes_within(sx, sy, radius)
            here = (sx, sy)
            if positions and u["id"] in positions:
                here = graph.nodes[graph.nearest_node(*to_xy(*positions[u["id"]]))]
            unit = Unit(u["id"], kind, (sx, sy), u.get("home_grid", ""), nodes, area,
                        Mover(here[0], here[1], self._cruise(kind)),
                        # fixes staggered over the interval so the load is smooth
                        next_fix=now + gps_interval_s * k / n)
            self.units[unit.id] = unit
            self._next_patrol(unit, now)

    # ---- decisions (seeded)
    def _cruise(self, kind: str) -> float:
        lo, hi = CRUISE_KMH.get(kind, CRUISE_KMH["squad"])
        return self.rng.uniform(lo, hi) * KMH

    def _next_patrol(self, u: Unit, now: float) -> None:
        here = self._node_at(u)
        goal = self.rng.choice(u.patrol_nodes)
        if goal == here and len(u.patrol_nodes) > 1:
            goal = self.rng.choice([n for n in u.patrol_nodes if n != here])
        if here is None:
            path = self.graph.route((u.mover.x, u.mover.y), self.graph.nodes[goal])
        else:
            inside = u.area is not None and here in u.area
            try:
                path = self.graph.node_route(here, goal, u.area if inside else None)
            except ValueError:
                path = self.graph.node_route(here, goal)
        u.mode = "patrol"
        u.target = self.graph.nodes[goal]
        u.mover = u.mover.follow(path, self._cruise(u.kind))

    def _node_at(self, u: Unit) -> int | None:
        """The graph node the unit stands on, if any."""
        n = self.graph.nearest_node(u.mover.x, u.mover.y)
        return n if math.dist(self.graph.nodes[n], (u.mover.x, u.mover.y)) < 0.01 else None

    # ---- commands (from crews)
    def send_to(self, unit_id: str, lon: float, lat: float, urgent: bool = True) -> float:
        """Route the unit to a point (off-road last stretch on foot); returns metres."""
        u = self.units[unit_id]
        goal = to_xy(lon, lat)
        path = self.graph.route((u.mover.x, u.mover.y), goal)
        cruise = self._cruise(u.kind)
        if urgent:  # on a dispatch units go at the top of their range
            lo, hi = CRUISE_KMH.get(u.kind, CRUISE_KMH["squad"])
            cruise = self.rng.uniform((lo + 2 * hi) / 3, hi) * KMH
        u.mode, u.target = "sent", goal
        u.mover = u.mover.follow(path, cruise)
        return path.length

    def hold(self, unit_id: str) -> None:
        """Stop where the unit is (on scene)."""
        u = self.units[unit_id]
        u.mode, u.mover = "sent", replace(u.mover, path=None, speed=0.0)

    def release(self, unit_id: str, now: float, go_home: bool = True) -> None:
        """Back to patrol: first back to the road network near home, then random routes."""
        u = self.units[unit_id]
        if go_home:
            path = self.graph.route((u.mover.x, u.mover.y), u.home)
            u.mode, u.target = "returning", u.home
            u.mover = u.mover.follow(path, self._cruise(u.kind))
        else:
            self._next_patrol(u, now)

    def distance_m(self, unit_id: str, lon: float, lat: float) -> float:
        u = self.units[unit_id]
        x, y = to_xy(lon, lat)
        return math.hypot(u.mover.x - x, u.mover.y - y)

    def position(self, unit_id: str) -> XY:
        """(lon, lat) of the unit's true position."""
        u = self.units[unit_id]
        return to_lonlat(u.mover.x, u.mover.y)

    # ---- time
    def step(self, now: float, dt: float) -> None:
        """Move every unit ``dt`` seconds on; free units pick their next patrol leg."""
        rng = self.rng
        for u in self.units.values():
            before = (u.mover.x, u.mover.y)
            u.mover = advance(u.mover, dt)
            u.km += math.dist(before, (u.mover.x, u.mover.y)) / 1000.0
            if not u.mover.arrived:
                continue
            if u.mode == "returning":
                self._next_patrol(u, now)
            elif u.mode == "patrol":
                p, lo, hi = DWELL.get(u.kind, DWELL["squad"])
                if rng.random() < p:
                    u.mode, u.dwell_until = "dwell", now + rng.uniform(lo, hi)
                else:
                    self._next_patrol(u, now)
            elif u.mode == "dwell" and now >= u.dwell_until:
                self._next_patrol(u, now)

    def due_fixes(self, now: float) -> list[Fix]:
        """GPS fixes whose time has come (each unit every ``gps_interval_s``)."""
        out = []
        for u in self.units.values():
            if now >= u.next_fix:
                out.append(gps_fix(u.id, u.mover, now, self.gps_rng))
                u.next_fix += self.gps_interval_s
                if u.next_fix <= now:  # fell behind (a stalled loop): do not burst
                    u.next_fix = now + self.gps_interval_s
        return out
