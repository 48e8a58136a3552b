"""Patrol units moving on the town's road network: ``Fleet``, the units of the town,
patrolling random routes on the roads of their own first-level grid when free (grid workers
near their home grid) or sent somewhere by a crew (``send_to``); seeded, with time passed in.
Publishing is elsewhere (simulators/run.py).

Layers, pure first: the roads (simulators/patrol_roads.py: ``RoadGraph``, ``Path``, the
local plane), movement and GPS (simulators/patrol_motion.py: ``Mover``, ``advance``,
``gps_fix``), then the fleet here.

Coordinates: WGS-84 lon/lat outside, metres on the town's local plane inside
(simulators.demo_town.plane's projection, accurate to well under a metre over the town).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from simulators.patrol_motion import DEFAULT_GPS_INTERVAL_S, Fix, Mover, advance, gps_fix
from simulators.patrol_roads import KMH, XY, RoadGraph, area_rings, to_lonlat, to_xy

# Cruise speeds (km/h) drawn for every route. Squads and police drive; grid workers walk or
# ride e-bikes. Road limits (town file speed_kmh) cap vehicles further.
CRUISE_KMH = {"squad": (25.0, 45.0), "police": (25.0, 45.0), "grid_worker": (4.0, 15.0)}


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
        areas = area_rings(grids) if grids else {}
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
