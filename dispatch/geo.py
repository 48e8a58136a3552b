"""Distances and travel times: straight line, and by road over the town's road graph.

A travel time is: an access leg from the start point to its nearest road node
(straight line at ``ACCESS_SPEED_KMH``), the shortest path over the road graph,
and an access leg from the destination's nearest node to the destination. When
there is no graph, or the two nodes are in disconnected parts of it, the time is
the straight-line distance times ``DETOUR_FACTOR`` at ``FALLBACK_SPEED_KMH``.

Roads are two-way (the road file has no one-way attribute), so a shortest-path
tree rooted at the *destination* gives the time from every node to it. The
engine asks "how far is each unit from this incident", so trees are rooted at
incident nodes, which stay put while units move; trees are kept in a bounded
LRU cache, one row per source node.

``RoadGraph`` memoises (shortest-path trees, nearest-node lookups) and is
therefore not thread-safe; one dispatcher uses it at a time. Results do not
depend on the cache state.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.sparse import coo_array
from scipy.sparse.csgraph import dijkstra
from scipy.spatial import cKDTree

FloatArray = NDArray[np.float64]

# Mean Earth radius (IUGG), the usual choice for haversine.
EARTH_RADIUS_M = 6_371_008.8

# Speed off the graph: walking or driving slowly through lanes, yards and squares that
# the road file does not carry. 15 km/h is a slow vehicle / brisk cycling pace.
ACCESS_SPEED_KMH = 15.0

# Road distance over straight-line distance. Studies of road networks put the average
# circuity at 1.2-1.4 (e.g. Ballou et al. 2002: ~1.3 for short trips); a straight line
# alone would make every fallback ETA optimistic.
DETOUR_FACTOR = 1.3

# Speed for the straight-line fallback: a township mix of main roads (50-60 km/h) and
# village roads (20-30 km/h); with the detour factor it gives plausible ETAs.
FALLBACK_SPEED_KMH = 30.0

# Road speeds by class when a feature lacks a usable ``speed_kmh``: Chinese urban/rural
# limits (trunk roads 60-80, town streets 40, village roads 30, lanes 20).
CLASS_SPEED_KMH: Mapping[str, float] = {
    "motorway": 90.0,
    "trunk": 70.0,
    "primary": 60.0,
    "secondary": 50.0,
    "tertiary": 40.0,
    "unclassified": 30.0,
    "residential": 30.0,
    "village": 30.0,
    "service": 20.0,
    "track": 15.0,
}
DEFAULT_ROAD_SPEED_KMH = 30.0

# Long segments are split so that no point on a road is more than half this far
# (along the road) from a node: a unit between two vertices 1 km apart would
# otherwise "walk" 500 m at access speed to reach the graph. 200 m bounds that error
# to ~15 s while keeping a township graph at a few thousand nodes.
MAX_SEGMENT_M = 200.0

# Coordinates that agree to 6 decimals (~0.1 m) are the same node: that is how the
# road file marks junctions.
NODE_DECIMALS = 6

# Nearest-node grid bucket: road nodes in a township are 50-300 m apart, so a 250 m
# cell holds a handful of nodes and a lookup usually scans the 3x3 cells around it.
BUCKET_CELL_M = 250.0

# Points farther than this many cells outside the graph's bounding box are looked up
# by a scan of all nodes instead of growing rings of empty cells.
BUCKET_MAX_RING = 8

# Shortest-path trees kept: every open incident's tree plus headroom. Bounded in bytes
# too (a row is 8 bytes per node), so that a large graph cannot eat memory.
SPT_CACHE_SIZE = 1024
SPT_CACHE_MAX_BYTES = 64 * 1024 * 1024

# Nearest-node results kept for exact coordinates (incidents and parked units repeat).
NEAREST_CACHE_SIZE = 8192

# Shortest edge weight: two distinct nodes 0.1 m apart still cost a little, because
# scipy's csgraph reads an explicit zero in a sparse matrix as "no edge".
MIN_EDGE_S = 1e-3

_DEG = math.pi / 180.0


def _mps(kmh: float) -> float:
    return kmh / 3.6


def haversine_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Great-circle distance in metres between two WGS-84 points."""
    p1 = lat1 * _DEG
    p2 = lat2 * _DEG
    dp = p2 - p1
    dl = (lon2 - lon1) * _DEG
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(min(1.0, a)))


def haversine_m_np(
    lon1: ArrayLike, lat1: ArrayLike, lon2: ArrayLike, lat2: ArrayLike
) -> FloatArray:
    """Vectorised ``haversine_m``; arguments broadcast like numpy arrays."""
    p1 = np.asarray(lat1, dtype=np.float64) * _DEG
    p2 = np.asarray(lat2, dtype=np.float64) * _DEG
    dl = (np.asarray(lon2, dtype=np.float64) - np.asarray(lon1, dtype=np.float64)) * _DEG
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    out: FloatArray = 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.minimum(1.0, a)))
    return out


def straight_line_time_s(distance_m: float) -> float:
    """The fallback travel time for a straight-line distance (detour factor applied)."""
    return distance_m * DETOUR_FACTOR / _mps(FALLBACK_SPEED_KMH)


def _lines(geometry: Mapping[str, Any]) -> list[Sequence[Sequence[float]]]:
    kind = geometry.get("type")
    coords = geometry.get("coordinates") or []
    if kind == "LineString":
        return [coords]
    if kind == "MultiLineString":
        return list(coords)
    return []


def _speed_kmh(props: Mapping[str, Any]) -> float:
    speed = props.get("speed_kmh")
    if isinstance(speed, int | float) and not isinstance(speed, bool) and speed > 0:
        return float(speed)
    return CLASS_SPEED_KMH.get(str(props.get("class", "")), DEFAULT_ROAD_SPEED_KMH)


class RoadGraph:
    """An undirected road graph weighted by travel time, with nearest-node lookup.

    Build it with ``from_geojson``. ``travel_time_s`` answers one pair;
    ``travel_time_matrix`` answers many destinations x many starts at once.
    """

    def __init__(self, lons: FloatArray, lats: FloatArray, edges: Mapping[tuple[int, int], float]):
        n = len(lons)
        self.node_count = n
        self.edge_count = len(edges)
        self._lon = lons
        self._lat = lats
        # Local equirectangular projection (metres) around the graph's centre: within a
        # township (tens of km) it is within 0.1 % of the great-circle distance, and lets
        # nearest-node lookups use plain Euclidean distance.
        self._lon0 = float(lons.mean()) if n else 0.0
        self._lat0 = float(lats.mean()) if n else 0.0
        self._kx = EARTH_RADIUS_M * _DEG * math.cos(self._lat0 * _DEG)
        self._ky = EARTH_RADIUS_M * _DEG
        self._x = (lons - self._lon0) * self._kx
        self._y = (lats - self._lat0) * self._ky
        self._xy = np.column_stack([self._x, self._y]) if n else np.zeros((0, 2))
        self._kdtree = cKDTree(self._xy) if n else None

        ij = np.array(list(edges.keys()), dtype=np.int64).reshape(-1, 2)
        w = np.fromiter(edges.values(), dtype=np.float64, count=len(edges))
        self._csr = coo_array((w, (ij[:, 0], ij[:, 1])), shape=(n, n)).tocsr()

        self._buckets: dict[tuple[int, int], list[tuple[float, float, int]]] = {}
        for i, (x, y) in enumerate(zip(self._x.tolist(), self._y.tolist(), strict=True)):
            key = (math.floor(x / BUCKET_CELL_M), math.floor(y / BUCKET_CELL_M))
            self._buckets.setdefault(key, []).append((x, y, i))
        if n:
            self._cmin = (
                math.floor(float(self._x.min()) / BUCKET_CELL_M),
                math.floor(float(self._y.min()) / BUCKET_CELL_M),
            )
            self._cmax = (
                math.floor(float(self._x.max()) / BUCKET_CELL_M),
                math.floor(float(self._y.max()) / BUCKET_CELL_M),
            )
        else:
            self._cmin = self._cmax = (0, 0)

        row_bytes = max(1, 8 * n)
        self._capacity = max(1, min(SPT_CACHE_SIZE, SPT_CACHE_MAX_BYTES // row_bytes))
        self._rows: FloatArray = np.empty((0, n), dtype=np.float64)
        self._slot_of: OrderedDict[int, int] = OrderedDict()
        self._free_slots: list[int] = []
        self._nearest_cache: OrderedDict[tuple[float, float], tuple[int, float]] = OrderedDict()
        self.dijkstra_runs = 0  # for tests and benchmarks: trees computed so far

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_geojson(cls, roads_fc: Mapping[str, Any]) -> RoadGraph:
        """Build the graph from a FeatureCollection of (Multi)LineStrings.

        Feature properties: ``id``, ``name``, ``class``, ``speed_kmh`` (missing or
        non-positive: a default by class). Every vertex is a node; vertices whose
        coordinates agree to ``NODE_DECIMALS`` decimals are one node (junctions).
        Segments longer than ``MAX_SEGMENT_M`` get evenly spaced interior nodes,
        which are never junctions. Each segment is an edge weighted length / speed;
        of parallel edges between the same two nodes the fastest is kept. Other
        geometry types are ignored.
        """
        index: dict[tuple[float, float], int] = {}
        lons: list[float] = []
        lats: list[float] = []
        edges: dict[tuple[int, int], float] = {}

        def connect(a: int, b: int, mps: float) -> None:
            length = haversine_m(lons[a], lats[a], lons[b], lats[b])
            edge = (a, b) if a < b else (b, a)
            cost = max(MIN_EDGE_S, length / mps)
            if cost < edges.get(edge, math.inf):
                edges[edge] = cost

        for feature in roads_fc.get("features") or []:
            props = feature.get("properties") or {}
            mps = _mps(_speed_kmh(props))
            for line in _lines(feature.get("geometry") or {}):
                prev: int | None = None
                for pt in line:
                    key = (round(float(pt[0]), NODE_DECIMALS), round(float(pt[1]), NODE_DECIMALS))
                    node = index.get(key)
                    if node is None:
                        node = index[key] = len(lons)
                        lons.append(key[0])
                        lats.append(key[1])
                    if prev is not None and prev != node:
                        length = haversine_m(lons[prev], lats[prev], lons[node], lats[node])
                        pieces = math.ceil(length / MAX_SEGMENT_M)
                        a = prev
                        for k in range(1, pieces):
                            # Straight interpolation in degrees: segments are short.
                            f = k / pieces
                            lons.append(lons[prev] + f * (lons[node] - lons[prev]))
                            lats.append(lats[prev] + f * (lats[node] - lats[prev]))
                            connect(a, len(lons) - 1, mps)
                            a = len(lons) - 1
                        connect(a, node, mps)
                    prev = node
        return cls(np.array(lons, dtype=np.float64), np.array(lats, dtype=np.float64), edges)

    # ------------------------------------------------------------------ nearest node
    def _project(self, lon: float, lat: float) -> tuple[float, float]:
        return (lon - self._lon0) * self._kx, (lat - self._lat0) * self._ky

    def _nearest_scan(self, x: float, y: float) -> tuple[int, float]:
        d2 = (self._x - x) ** 2 + (self._y - y) ** 2
        i = int(np.argmin(d2))
        return i, math.sqrt(float(d2[i]))

    def _nearest_uncached(self, lon: float, lat: float) -> tuple[int, float]:
        x, y = self._project(lon, lat)
        cx = math.floor(x / BUCKET_CELL_M)
        cy = math.floor(y / BUCKET_CELL_M)
        outside = max(
            self._cmin[0] - cx, cx - self._cmax[0], self._cmin[1] - cy, cy - self._cmax[1]
        )
        if outside > BUCKET_MAX_RING:
            return self._nearest_scan(x, y)
        span = max(self._cmax[0] - self._cmin[0], self._cmax[1] - self._cmin[1]) + outside + 1
        best = -1
        best_d2 = math.inf
        buckets = self._buckets
        for r in range(span + 1):
            # Scan the ring of cells at Chebyshev distance r around the point's cell.
            for ix in range(cx - r, cx + r + 1):
                edge_col = ix in (cx - r, cx + r)
                step = 1 if edge_col else 2 * r
                for iy in range(cy - r, cy + r + 1, max(1, step)):
                    for nx, ny, i in buckets.get((ix, iy), ()):
                        d2 = (nx - x) ** 2 + (ny - y) ** 2
                        if d2 < best_d2 or (d2 == best_d2 and i < best):
                            best_d2 = d2
                            best = i
            # Anything in ring r+1 is at least r cells away from the point.
            if best >= 0 and best_d2 <= (r * BUCKET_CELL_M) ** 2:
                break
        return best, math.sqrt(best_d2)

    def nearest_node(self, lon: float, lat: float) -> tuple[int, float] | None:
        """(node index, distance in metres) of the road node nearest to a point.

        ``None`` for an empty graph. Exact (ties go to the lower index); answers are
        memoised per exact coordinate pair.
        """
        if not self.node_count:
            return None
        key = (lon, lat)
        cache = self._nearest_cache
        hit = cache.get(key)
        if hit is not None:
            cache.move_to_end(key)
            return hit
        found = self._nearest_uncached(lon, lat)
        cache[key] = found
        if len(cache) > NEAREST_CACHE_SIZE:
            cache.popitem(last=False)
        return found

    def _nearest_many(
        self, lons: FloatArray, lats: FloatArray
    ) -> tuple[NDArray[np.intp], FloatArray]:
        """Nearest nodes of many points: memoised ones from the cache, the rest in one
        k-d tree batch query (~1 µs a point, against ~10 µs for a cold bucket lookup)."""
        assert self._kdtree is not None
        n = len(lons)
        idx = np.empty(n, dtype=np.intp)
        dist = np.empty(n, dtype=np.float64)
        cache = self._nearest_cache
        keys = list(zip(lons.tolist(), lats.tolist(), strict=True))
        misses: list[int] = []
        for k, key in enumerate(keys):
            hit = cache.get(key)
            if hit is None:
                misses.append(k)
            else:
                idx[k], dist[k] = hit
        if misses:
            m = np.array(misses, dtype=np.intp)
            xy = np.column_stack(
                [(lons[m] - self._lon0) * self._kx, (lats[m] - self._lat0) * self._ky]
            )
            d, i = self._kdtree.query(xy)
            idx[m] = i
            dist[m] = d
            for k, node, metres in zip(misses, idx[m].tolist(), dist[m].tolist(), strict=True):
                cache[keys[k]] = (node, metres)
            while len(cache) > NEAREST_CACHE_SIZE:
                cache.popitem(last=False)
        return idx, dist

    # ------------------------------------------------------------------ shortest-path trees
    def _ensure_trees(self, nodes: Sequence[int]) -> None:
        """Put the trees rooted at ``nodes`` (at most ``capacity`` distinct) in the cache."""
        slot_of = self._slot_of
        missing: list[int] = []
        for node in dict.fromkeys(nodes):
            if node in slot_of:
                slot_of.move_to_end(node)
            else:
                missing.append(node)
        if not missing:
            return
        self.dijkstra_runs += len(missing)
        trees = np.atleast_2d(dijkstra(self._csr, directed=False, indices=missing))
        for node, tree in zip(missing, trees, strict=True):
            if not self._free_slots and len(self._rows) < self._capacity:
                old = len(self._rows)
                grow = min(self._capacity, max(16, 2 * old))
                extra = np.empty((grow - old, self.node_count), dtype=np.float64)
                self._rows = np.vstack([self._rows, extra])
                self._free_slots.extend(range(grow - 1, old - 1, -1))
            if self._free_slots:
                slot = self._free_slots.pop()
            else:
                # Oldest first; never one asked for in this call: those were moved to
                # the end and there are at most `capacity` of them.
                _, slot = slot_of.popitem(last=False)
            slot_of[node] = slot
            self._rows[slot] = tree

    def _graph_times(self, dst_nodes: NDArray[np.intp], src_nodes: NDArray[np.intp]) -> FloatArray:
        """``[i, j]`` = seconds on the graph from ``src_nodes[j]`` to ``dst_nodes[i]``."""
        wanted = dst_nodes.tolist()
        if len(set(wanted)) > self._capacity:
            # More trees than the cache holds: compute them for this call only.
            self.dijkstra_runs += len(wanted)
            rows = np.atleast_2d(dijkstra(self._csr, directed=False, indices=wanted))
            return np.asarray(rows[:, src_nodes], dtype=np.float64)
        self._ensure_trees(wanted)
        slot_of = self._slot_of
        slots = np.fromiter((slot_of[n] for n in wanted), dtype=np.intp, count=len(wanted))
        out: FloatArray = self._rows[slots[:, None], src_nodes[None, :]]
        return out

    def _on_graph_s(self, src: int, dst: int) -> float:
        """Seconds on the graph from node ``src`` to node ``dst`` (inf: no path)."""
        slot = self._slot_of.get(dst)
        if slot is None:
            self._ensure_trees([dst])
            slot = self._slot_of[dst]
        else:
            self._slot_of.move_to_end(dst)
        return float(self._rows[slot, src])

    # ------------------------------------------------------------------ travel times
    def travel_time_s(
        self, from_lon: float, from_lat: float, to_lon: float, to_lat: float
    ) -> float:
        """Seconds from one point to another by road (see the module docstring)."""
        src = self.nearest_node(from_lon, from_lat)
        dst = self.nearest_node(to_lon, to_lat)
        if src is None or dst is None:
            return straight_line_time_s(haversine_m(from_lon, from_lat, to_lon, to_lat))
        access = _mps(ACCESS_SPEED_KMH)
        on_graph = self._on_graph_s(src[0], dst[0])
        if on_graph == math.inf:
            return straight_line_time_s(haversine_m(from_lon, from_lat, to_lon, to_lat))
        t = (src[1] + dst[1]) / access + on_graph
        if src[0] == dst[0]:
            # Both ends hang off the same node: going straight there is no worse than
            # walking to the node and back.
            t = min(t, haversine_m(from_lon, from_lat, to_lon, to_lat) * DETOUR_FACTOR / access)
        return t

    def travel_time_matrix(
        self, to_lons: ArrayLike, to_lats: ArrayLike, from_lons: ArrayLike, from_lats: ArrayLike
    ) -> tuple[FloatArray, NDArray[np.bool_]]:
        """Times from every start j to every destination i: (``times[i, j]``, ``by_road[i, j]``).

        ``by_road`` is False where the straight-line fallback was used (no path).
        Same rules as ``travel_time_s``.
        """
        tlon = np.asarray(to_lons, dtype=np.float64)
        tlat = np.asarray(to_lats, dtype=np.float64)
        flon = np.asarray(from_lons, dtype=np.float64)
        flat = np.asarray(from_lats, dtype=np.float64)
        if not self.node_count or not len(tlon) or not len(flon):
            return straight_line_matrix(tlon, tlat, flon, flat)
        access = _mps(ACCESS_SPEED_KMH)
        # Destinations are few and repeat (incidents): the memoised scalar lookup wins.
        # Starts are many and move (units): one k-d tree batch query.
        t_nodes = np.empty(len(tlon), dtype=np.intp)
        t_access = np.empty(len(tlon), dtype=np.float64)
        for k, (lon, lat) in enumerate(zip(tlon.tolist(), tlat.tolist(), strict=True)):
            found = self.nearest_node(lon, lat)
            assert found is not None
            t_nodes[k], t_access[k] = found
        f_nodes, f_access = self._nearest_many(flon, flat)
        on_graph = self._graph_times(t_nodes, f_nodes)
        times = t_access[:, None] / access + on_graph + f_access[None, :] / access
        by_road: NDArray[np.bool_] = np.isfinite(on_graph)
        same = t_nodes[:, None] == f_nodes[None, :]
        if same.any():
            ii, jj = np.nonzero(same)
            direct = haversine_m_np(flon[jj], flat[jj], tlon[ii], tlat[ii]) * DETOUR_FACTOR / access
            times[ii, jj] = np.minimum(times[ii, jj], direct)
        if not by_road.all():
            ii, jj = np.nonzero(~by_road)
            dist = haversine_m_np(flon[jj], flat[jj], tlon[ii], tlat[ii])
            times[ii, jj] = dist * DETOUR_FACTOR / _mps(FALLBACK_SPEED_KMH)
        return times, by_road

    # ------------------------------------------------------------------ routes
    def route(self, from_lon: float, from_lat: float, to_lon: float, to_lat: float
              ) -> tuple[list[tuple[float, float]], float, float, bool]:
        """The fastest road path for drawing on a map: ``(points, metres, seconds,
        by_road)``. ``points`` run from the start through the graph's nodes to the end
        (lon, lat); seconds are ``travel_time_s``'s. Without a path: the straight line,
        its length and the straight-line estimate, ``by_road`` False."""
        seconds = self.travel_time_s(from_lon, from_lat, to_lon, to_lat)
        src = self.nearest_node(from_lon, from_lat)
        dst = self.nearest_node(to_lon, to_lat)
        straight = ([(from_lon, from_lat), (to_lon, to_lat)],
                    haversine_m(from_lon, from_lat, to_lon, to_lat), seconds, False)
        if src is None or dst is None:
            return straight
        _, preds = dijkstra(self._csr, directed=False, indices=[src[0]],
                            return_predecessors=True)
        pred = preds[0]
        nodes = [dst[0]]
        while nodes[-1] != src[0]:
            p = int(pred[nodes[-1]])
            if p < 0:
                return straight
            nodes.append(p)
        nodes.reverse()
        pts = [(from_lon, from_lat)] + [(float(self._lon[n]), float(self._lat[n]))
                                        for n in nodes] + [(to_lon, to_lat)]
        metres = sum(haversine_m(a[0], a[1], b[0], b[1]) for a, b in pairwise(pts))
        return pts, metres, seconds, True


def straight_line_matrix(
    to_lons: ArrayLike, to_lats: ArrayLike, from_lons: ArrayLike, from_lats: ArrayLike
) -> tuple[FloatArray, NDArray[np.bool_]]:
    """The fallback for ``travel_time_matrix``: no road graph, every entry straight-line."""
    tlon = np.asarray(to_lons, dtype=np.float64)[:, None]
    tlat = np.asarray(to_lats, dtype=np.float64)[:, None]
    flon = np.asarray(from_lons, dtype=np.float64)[None, :]
    flat = np.asarray(from_lats, dtype=np.float64)[None, :]
    times: FloatArray = haversine_m_np(flon, flat, tlon, tlat) * (
        DETOUR_FACTOR / _mps(FALLBACK_SPEED_KMH)
    )
    return times, np.zeros(times.shape, dtype=np.bool_)


def travel_time_matrix(
    graph: RoadGraph | None,
    to_lons: ArrayLike,
    to_lats: ArrayLike,
    from_lons: ArrayLike,
    from_lats: ArrayLike,
) -> tuple[FloatArray, NDArray[np.bool_]]:
    """``graph.travel_time_matrix`` or, without a graph, the straight-line fallback."""
    if graph is None:
        return straight_line_matrix(to_lons, to_lats, from_lons, from_lats)
    return graph.travel_time_matrix(to_lons, to_lats, from_lons, from_lats)


def travel_time_s(
    graph: RoadGraph | None, from_lon: float, from_lat: float, to_lon: float, to_lat: float
) -> float:
    """``graph.travel_time_s`` or, without a graph, the straight-line fallback."""
    if graph is None:
        return straight_line_time_s(haversine_m(from_lon, from_lat, to_lon, to_lat))
    return graph.travel_time_s(from_lon, from_lat, to_lon, to_lat)
