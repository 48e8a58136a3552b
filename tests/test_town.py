"""The demo town document (simulators/demo_town/) and the GeoJSON importer."""

from __future__ import annotations

import copy
import json
from collections import Counter, deque
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from core import town_format
from core.geometry import point_in_polygon
from hub.town_geojson import town_from_geojson
from simulators.demo_town import document, plane
from simulators.demo_town.grids import NOISE_ZONE

DATA_FILE = Path(__file__).resolve().parents[1] / "simulators" / "data" / "xuxiake.json"
ORIGIN = (plane.CENTER_LON, plane.CENTER_LAT)  # shift before products: keeps areas exact
Edge = tuple[tuple[float, float], tuple[float, float]]


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return document.generate()


def grids(doc: dict[str, Any], level: int) -> list[dict[str, Any]]:
    return [f for f in doc["grids"]["features"] if f["properties"]["level"] == level]


def ring_of(feature: dict[str, Any]) -> list[list[float]]:
    return feature["geometry"]["coordinates"][0]


def area(ring: list[list[float]]) -> float:
    """Signed shoelace area (deg^2), positive for counter-clockwise rings."""
    x0, y0 = ORIGIN
    return sum((a[0] - x0) * (b[1] - y0) - (b[0] - x0) * (a[1] - y0)
               for a, b in pairwise(ring)) / 2


def edges(ring: list[list[float]]) -> list[Edge]:
    return [((a[0], a[1]), (b[0], b[1])) for a, b in pairwise(ring)]


def orient(p: tuple[float, float], q: tuple[float, float], r: tuple[float, float]) -> float:
    return (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])


def cross_properly(e: Edge, f: Edge) -> bool:
    """Segments cross at a point interior to both (touching does not count)."""
    return (orient(e[0], e[1], f[0]) * orient(e[0], e[1], f[1]) < 0
            and orient(f[0], f[1], e[0]) * orient(f[0], f[1], e[1]) < 0)


def crossings(segments: list[Edge]) -> list[tuple[Edge, Edge]]:
    """Pairs of properly crossing segments (sweep over x)."""
    segs = sorted(segments, key=lambda s: min(s[0][0], s[1][0]))
    found = []
    for k, e in enumerate(segs):
        max_x = max(e[0][0], e[1][0])
        for f in segs[k + 1:]:
            if min(f[0][0], f[1][0]) > max_x:
                break
            if cross_properly(e, f):
                found.append((e, f))
    return found


def distance_to_ring(lon: float, lat: float, ring: list[list[float]]) -> float:
    best = float("inf")
    for a, b in pairwise(ring):
        dx, dy = b[0] - a[0], b[1] - a[1]
        t = max(0.0, min(1.0, ((lon - a[0]) * dx + (lat - a[1]) * dy) / (dx * dx + dy * dy)))
        best = min(best, ((lon - a[0] - t * dx) ** 2 + (lat - a[1] - t * dy) ** 2) ** 0.5)
    return best


def boundary(rings: list[list[list[float]]]) -> Counter[Edge]:
    """Directed edges of a set of rings that no other ring runs back along."""
    count = Counter(e for r in rings for e in edges(r))
    return Counter({e: n for e, n in count.items() if (e[1], e[0]) not in count})


def outline(doc: dict[str, Any]) -> list[list[float]]:
    """The town's outer ring, chained from the unshared edges of the level-1 grids."""
    nxt = dict(boundary([ring_of(f) for f in grids(doc, 1)]))
    succ = {a: b for a, b in nxt}
    assert len(succ) == len(nxt), "outline passes a vertex twice"
    start = next(iter(succ))
    ring, p = [list(start)], succ[start]
    while p != start:
        ring.append(list(p))
        p = succ[p]
    assert len(ring) == len(succ), "the unshared edges form more than one ring (a hole?)"
    return [*ring, list(start)]


def road_graph(doc: dict[str, Any]) -> dict[tuple[float, float], set[tuple[float, float]]]:
    graph: dict[tuple[float, float], set[tuple[float, float]]] = {}
    for f in doc["roads"]["features"]:
        for a, b in pairwise(f["geometry"]["coordinates"]):
            graph.setdefault((a[0], a[1]), set()).add((b[0], b[1]))
            graph.setdefault((b[0], b[1]), set()).add((a[0], a[1]))
    return graph


# -- helpers -------------------------------------------------------------------

SQUARE = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]
NOTCH = [[0, 0], [4, 0], [4, 4], [2, 1], [0, 4], [0, 0]]  # concave "M"


@pytest.mark.parametrize(("lon", "lat", "ring", "inside"), [
    (0.5, 0.5, SQUARE, True),
    (1.5, 0.5, SQUARE, False),
    (0.5, -0.1, SQUARE, False),
    (0.5, 0.5, SQUARE[:-1], True),  # open ring
    (2.0, 0.5, NOTCH, True),
    (2.0, 3.0, NOTCH, False),  # in the notch
    (1.0, 2.0, NOTCH, True),
])
def test_point_in_polygon(lon: float, lat: float, ring: list[list[float]], inside: bool) -> None:
    assert point_in_polygon(lon, lat, ring) is inside


# -- document ------------------------------------------------------------------

def test_header(doc: dict[str, Any]) -> None:
    assert list(doc) == ["format", "name", "name_en", "seed", "command_center", "grids",
                         "roads", "devices", "units", "departments"]
    assert doc["format"] == "gridhub-town/1"
    assert (doc["name"], doc["name_en"], doc["seed"]) == ("徐霞客镇", "Xuxiake Town", 2026)
    assert doc["departments"] == town_format.DEPARTMENTS and len(town_format.DEPARTMENTS) == 12
    cc = doc["command_center"]
    assert cc["name"] == "徐霞客镇综合指挥中心"
    assert abs(cc["lon"] - 120.43) < 0.02 and abs(cc["lat"] - 31.80) < 0.02
    assert point_in_polygon(cc["lon"], cc["lat"], outline(doc))


def test_deterministic(doc: dict[str, Any]) -> None:
    assert document.generate() == doc
    assert document.generate(7) != doc
    assert document.to_json(document.generate(7)) == document.to_json(document.generate(7))


def test_committed_file_is_current(doc: dict[str, Any]) -> None:
    text = DATA_FILE.read_text(encoding="utf-8")
    assert text == document.to_json(doc), "regenerate: python -m simulators.demo_town"
    assert json.loads(text) == doc


# -- grids ---------------------------------------------------------------------

def test_grid_counts_ids_and_parents(doc: dict[str, Any]) -> None:
    level1, level2 = grids(doc, 1), grids(doc, 2)
    assert len(level1) == 21 and len(level2) == 179
    assert len(doc["grids"]["features"]) == 200
    ids = [f["properties"]["id"] for f in doc["grids"]["features"]]
    assert len(set(ids)) == 200
    assert [f["properties"]["id"] for f in level1] == [f"G{k:02d}" for k in range(1, 22)]
    names = [f["properties"]["name"] for f in doc["grids"]["features"]]
    assert len(set(names)) == 200
    by_parent = Counter(f["properties"]["parent"] for f in level2)
    assert sorted(by_parent.values()) == [8] * 10 + [9] * 11
    for f in level1:
        p = f["properties"]
        assert p["parent"] is None and p["name"].endswith(("村", "社区"))
    for f in level2:
        p = f["properties"]
        assert p["parent"] in {g["properties"]["id"] for g in level1}
        assert p["id"].startswith(p["parent"] + "-")
        parent_name = next(g["properties"]["name"] for g in level1
                           if g["properties"]["id"] == p["parent"])
        assert p["name"].startswith(parent_name + "第") and p["name"].endswith("网格")
    for f in doc["grids"]["features"]:
        assert f["type"] == "Feature" and f["geometry"]["type"] == "Polygon"
        assert list(f["properties"]) == ["id", "level", "parent", "name", "zone"]
        assert f["properties"]["zone"] in ("residential", "industrial", "commercial",
                                           "rural", "mixed")


def test_rings_are_valid(doc: dict[str, Any]) -> None:
    for f in doc["grids"]["features"]:
        rings = f["geometry"]["coordinates"]
        assert len(rings) == 1
        ring = rings[0]
        assert len(ring) >= 5 and ring[0] == ring[-1]
        assert all(round(c, 6) == c for p in ring for c in p)
        assert all(a != b for a, b in pairwise(ring)), f["properties"]["id"]
        assert len({tuple(p) for p in ring[:-1]}) == len(ring) - 1
        assert area(ring) > 0, f"{f['properties']['id']} is not counter-clockwise"
        es = edges(ring)
        for i in range(len(es)):
            for j in range(i + 2, len(es)):
                if i == 0 and j == len(es) - 1:
                    continue
                assert not cross_properly(es[i], es[j]), f["properties"]["id"]


def test_children_inside_and_tiling_parent(doc: dict[str, Any]) -> None:
    for parent in grids(doc, 1):
        pid, pring = parent["properties"]["id"], ring_of(parent)
        kids = [ring_of(f) for f in grids(doc, 2) if f["properties"]["parent"] == pid]
        for ring in kids:
            for lon, lat in ring:
                assert (point_in_polygon(lon, lat, pring)
                        or distance_to_ring(lon, lat, pring) < 1e-9), (pid, lon, lat)
        total = sum(area(r) for r in kids)
        assert total == pytest.approx(area(pring), rel=1e-9), pid
        # Exact tiling: the children's unshared edges are exactly the parent's ring.
        assert boundary(kids) == Counter(edges(pring)), pid


def test_level2_grids_tile_the_town(doc: dict[str, Any]) -> None:
    rings = [ring_of(f) for f in grids(doc, 2)]
    count = Counter(e for r in rings for e in edges(r))
    assert max(count.values()) == 1, "an edge is used twice in the same direction"
    town_ring = outline(doc)
    assert area(town_ring) > 0
    assert sum(area(r) for r in rings) == pytest.approx(area(town_ring), rel=1e-9)
    assert sum(area(ring_of(f)) for f in grids(doc, 1)) == pytest.approx(area(town_ring),
                                                                          rel=1e-9)
    assert boundary(rings) == Counter(edges(town_ring))
    all_edges = list(dict.fromkeys(tuple(sorted(e)) for r in rings for e in edges(r)))
    assert crossings(all_edges) == []
    # About 12 km x 10 km (deg^2 -> km^2 at this latitude).
    km2 = area(town_ring) * plane.M_PER_DEG_LON * plane.M_PER_DEG_LAT / 1e6
    assert 100 < km2 < 140


# -- roads ---------------------------------------------------------------------

def test_roads_shape(doc: dict[str, Any]) -> None:
    features = doc["roads"]["features"]
    assert 150 <= len(features) <= 400
    assert len({f["properties"]["id"] for f in features}) == len(features)
    classes = Counter(f["properties"]["class"] for f in features)
    assert set(classes) == {"main", "secondary", "local"}
    for f in features:
        p = f["properties"]
        assert f["geometry"]["type"] == "LineString"
        assert list(p) == ["id", "name", "class", "speed_kmh"]
        assert p["speed_kmh"] == {"main": 60, "secondary": 40, "local": 30}[p["class"]]
        coords = f["geometry"]["coordinates"]
        assert len(coords) >= 2 and all(a != b for a, b in pairwise(coords))
        assert all(round(c, 6) == c for pt in coords for c in pt)


def test_roads_one_connected_network_inside_town(doc: dict[str, Any]) -> None:
    graph = road_graph(doc)
    assert 300 <= len(graph) <= 1500
    start = next(iter(graph))
    seen, queue = {start}, deque([start])
    while queue:
        for nb in graph[queue.popleft()] - seen:
            seen.add(nb)
            queue.append(nb)
    assert len(seen) == len(graph), "road network is not one connected component"
    town_ring = outline(doc)
    assert all(point_in_polygon(x, y, town_ring) for x, y in graph)
    for f in grids(doc, 1):
        assert any(point_in_polygon(x, y, ring_of(f)) for x, y in graph), \
            f"no road reaches {f['properties']['id']}"


def test_roads_meet_only_at_shared_vertices(doc: dict[str, Any]) -> None:
    segs = list(dict.fromkeys(
        tuple(sorted(((a[0], a[1]), (b[0], b[1]))))
        for f in doc["roads"]["features"] for a, b in pairwise(f["geometry"]["coordinates"])))
    assert crossings(segs) == []


def test_local_roads_reach_every_first_level_grid(doc: dict[str, Any]) -> None:
    local = [p for f in doc["roads"]["features"] if f["properties"]["class"] == "local"
             for p in f["geometry"]["coordinates"]]
    for g in grids(doc, 1):
        assert any(point_in_polygon(x, y, ring_of(g)) for x, y in local)


# -- devices -------------------------------------------------------------------

SPEC = {
    "traffic_counter": ("traffic", ["vehicle_count", "speed_kmh", "occupancy_pct"], 60),
    "gas_detector": ("safety", ["gas_lel_pct"], 30),
    "smoke_detector": ("safety", ["smoke_obscuration_pct", "temperature_c"], 30),
    "air_station": ("environment", ["pm25", "pm10"], 60),
    "noise_meter": ("environment", ["noise_db"], 60),
    "water_station": ("environment", ["water_level_m", "water_quality_cod_mg_l"], 60),
}


def test_devices(doc: dict[str, Any]) -> None:
    devices = doc["devices"]
    assert 250 <= len(devices) <= 350
    assert len({d["id"] for d in devices}) == len(devices)
    assert len({d["name"] for d in devices}) == len(devices)
    assert set(Counter(d["model"] for d in devices)) == set(SPEC)
    by_id = {f["properties"]["id"]: f for f in grids(doc, 2)}
    vertices = set(road_graph(doc))
    for d in devices:
        kind, metrics, interval = SPEC[d["model"]]
        assert (d["kind"], d["metrics"], d["interval_s"]) == (kind, metrics, interval), d["id"]
        assert d["id"].startswith({"traffic": "TRF-", "safety": "SAF-",
                                   "environment": "ENV-"}[kind])
        assert d["name"] and all(round(d[k], 6) == d[k] for k in ("lon", "lat"))
        grid = by_id[d["grid"]]
        assert point_in_polygon(d["lon"], d["lat"], ring_of(grid)), d["id"]
        assert d["zone"] == grid["properties"]["zone"]
        if kind == "traffic":
            assert (d["lon"], d["lat"]) in vertices, d["id"]
        if d["model"] == "noise_meter":
            assert d["noise_zone"] in ("4", NOISE_ZONE[d["zone"]])
        else:
            assert "noise_zone" not in d
    safety = [d for d in devices if d["kind"] == "safety"]
    assert sum(d["zone"] == "industrial" for d in safety) > len(safety) / 2


# -- units ---------------------------------------------------------------------

def test_units(doc: dict[str, Any]) -> None:
    units = doc["units"]
    assert len({u["id"] for u in units}) == len(units)
    assert len({u["name"] for u in units}) == len(units)
    kinds = Counter(u["type"] for u in units)
    assert 9 <= kinds["squad"] <= 12 and kinds["police"] == 12 and kinds["grid_worker"] == 21
    assert set(kinds) == {"squad", "police", "grid_worker"}
    by_id = {f["properties"]["id"]: f for f in grids(doc, 2)}
    vertices = set(road_graph(doc))
    for u in units:
        assert list(u) == ["id", "name", "type", "qualifications", "home_grid", "lon", "lat",
                           "members"]
        assert all(q in town_format.DEPARTMENTS for q in u["qualifications"])
        assert u["members"] >= 1
        assert (u["lon"], u["lat"]) in vertices, u["id"]
        assert point_in_polygon(u["lon"], u["lat"], ring_of(by_id[u["home_grid"]])), u["id"]
    squads = [u for u in units if u["type"] == "squad"]
    assert all(3 <= len(u["qualifications"]) <= 6 for u in squads)
    cover = Counter(q for u in squads for q in u["qualifications"])
    for dept in town_format.DEPARTMENTS:
        need = 3 if dept in ("work_safety", "environment", "city_management") else 2
        assert cover[dept] >= need, dept
    assert all(u["qualifications"] == ["public_security", "traffic"]
               for u in units if u["type"] == "police")
    workers = [u for u in units if u["type"] == "grid_worker"]
    assert sorted(by_id[u["home_grid"]]["properties"]["parent"] for u in workers) == \
        [f"G{k:02d}" for k in range(1, 22)]


# -- GeoJSON import --------------------------------------------------------------

def test_import_round_trips_the_demo_town(doc: dict[str, Any]) -> None:
    imported = town_from_geojson(doc["grids"], doc["roads"], "徐霞客镇")
    assert imported["format"] == "gridhub-town/1" and imported["name"] == "徐霞客镇"
    assert imported["grids"] == doc["grids"]
    assert imported["roads"] == doc["roads"]
    assert imported["devices"] == [] and imported["units"] == []
    assert imported["departments"] == town_format.DEPARTMENTS
    assert point_in_polygon(imported["command_center"]["lon"],
                                 imported["command_center"]["lat"], outline(doc))


def _mini() -> tuple[dict[str, Any], dict[str, Any]]:
    def poly(gid: str, level: int, parent: str | None, ring: list[list[float]]) -> Any:
        return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"id": gid, "level": level, "parent": parent, "name": gid}}

    cw = [[120.0, 31.0], [120.0, 31.1], [120.1, 31.1], [120.1, 31.0], [120.0, 31.0]]
    grids_fc = {"type": "FeatureCollection", "features": [
        poly("A", 1, None, cw), poly("A-1", 2, "A", cw)]}
    roads_fc = {"type": "FeatureCollection", "features": [
        {"type": "Feature",
         "geometry": {"type": "LineString", "coordinates": [[120.01, 31.01], [120.0512345678,
                                                                              31.05]]},
         "properties": {"id": "R1", "name": "一号路", "class": "local"}}]}
    return grids_fc, roads_fc


def test_import_normalises() -> None:
    grids_fc, roads_fc = _mini()
    out = town_from_geojson(grids_fc, roads_fc, "测试镇")
    ring = out["grids"]["features"][0]["geometry"]["coordinates"][0]
    assert area(ring) > 0, "clockwise input ring is turned counter-clockwise"
    assert out["grids"]["features"][0]["properties"]["zone"] == "mixed"
    road = out["roads"]["features"][0]
    assert road["properties"]["speed_kmh"] == 30
    assert road["geometry"]["coordinates"][1] == [120.051235, 31.05]
    assert out["command_center"]["name"] == "测试镇综合指挥中心"
    assert grids_fc == _mini()[0], "input is not mutated"


def _break(path: str, value: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The mini town with one item replaced ("grids.1.properties.parent" -> value)."""
    fcs = dict(zip(("grids", "roads"), copy.deepcopy(_mini()), strict=True))
    head, *keys = path.split(".")
    target: Any = fcs[head]["features"]
    for k in keys[:-1]:
        target = target[int(k)] if k.isdigit() else target[k]
    last = keys[-1]
    if value is _DELETE:
        del target[last]
    else:
        target[int(last) if last.isdigit() else last] = value
    return fcs["grids"], fcs["roads"]


_DELETE = object()


@pytest.mark.parametrize(("path", "value", "message"), [
    ("grids.1.properties.parent", "B", "parent 'B' must be a level-1 grid"),
    ("grids.1.properties.parent", "A-1", "must be a level-1 grid"),
    ("grids.1.properties.id", "A", "duplicate grid id"),
    ("grids.1.properties.level", 3, "level must be 1 or 2"),
    ("grids.0.properties.parent", "A-1", "level-1 grid has no parent"),
    ("grids.0.properties.zone", "farm", "zone must be one of"),
    ("grids.0.properties.id", "", "'id' must be a non-empty string"),
    ("grids.0.properties", _DELETE, "missing properties"),
    ("grids.0.geometry", {"type": "Point", "coordinates": [120, 31]}, "must be a Polygon"),
    ("grids.0.geometry.coordinates", [[[120, 31], [121, 31], [121, 32], [120, 32]]],
     "not closed"),
    ("grids.0.geometry.coordinates", [[[120, 31], [121, 31], [120, 31]]], "at least 4"),
    ("grids.0.geometry.coordinates", [[[120, 31], [121, 31], [122, 31], [120, 31]]],
     "zero area"),
    ("grids.0.geometry.coordinates", [[[120, 31], ["x", 31], [121, 32], [120, 31]]],
     "bad position"),
    ("roads.0.properties.class", "highway", "class must be main, secondary or local"),
    ("roads.0.properties.speed_kmh", -5, "speed_kmh must be a positive number"),
    ("roads.0.geometry", {"type": "MultiLineString", "coordinates": []},
     "must be a LineString"),
    ("roads.0.geometry.coordinates", [[120, 31]], "at least 2 positions"),
    ("roads.0.properties.name", None, "'name' must be a non-empty string"),
])
def test_import_rejects(path: str, value: Any, message: str) -> None:
    grids_fc, roads_fc = _break(path, value)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        town_from_geojson(grids_fc, roads_fc, "测试镇")


def test_import_rejects_duplicate_roads_and_bad_collections() -> None:
    grids_fc, roads_fc = _mini()
    roads_fc["features"].append(copy.deepcopy(roads_fc["features"][0]))
    with pytest.raises(ValueError, match=r"roads\[1\] \(R1\): duplicate road id"):
        town_from_geojson(grids_fc, roads_fc, "测试镇")
    with pytest.raises(ValueError, match="grids: expected a GeoJSON FeatureCollection"):
        town_from_geojson({"type": "Feature"}, _mini()[1], "测试镇")
    with pytest.raises(ValueError, match="no level-1 grid"):
        town_from_geojson({"type": "FeatureCollection", "features": []}, _mini()[1], "测试镇")
