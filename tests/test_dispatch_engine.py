"""The dispatch engine and its geometry: pure values in, values out, no services."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from dispatch import geo
from dispatch.engine import assign_jointly, closest_idle, rank
from dispatch.geo import RoadGraph, haversine_m, travel_time_s
from dispatch.model import (
    DEFAULT_POLICY,
    Assignment,
    DispatchPolicy,
    IncidentState,
    UnitState,
)

NOW = 1_750_000_000.0


def unit(
    uid: str,
    lon: float | None,
    lat: float | None,
    *,
    quals: tuple[str, ...] = ("城管",),
    status: str = "available",
    age: float | None = 10.0,
    cases: int = 0,
    duty_since: float | None = NOW - 3600,
    home: str = "G1",
    cur: str | None = None,
    cur_p: int | None = None,
    kind: str = "squad",
) -> UnitState:
    return UnitState(
        id=uid,
        kind=kind,
        qualifications=frozenset(quals),
        status=status,
        lon=lon,
        lat=lat,
        position_ts=None if age is None else NOW - age,
        home_grid=home,
        duty_since=duty_since,
        cases_today=cases,
        current_incident=cur,
        current_priority=cur_p,
    )


def incident(
    iid: str,
    lon: float,
    lat: float,
    *,
    priority: int = 3,
    qual: str = "城管",
    grid: str = "G1",
    opened: float = NOW - 60,
    assigned: str | None = None,
) -> IncidentState:
    return IncidentState(iid, "市容", priority, qual, lon, lat, grid, opened, assigned)


def line(fid: str, coords: list[tuple[float, float]], speed: float | None = 40.0) -> dict[str, Any]:
    props: dict[str, Any] = {"id": fid, "name": fid, "class": "tertiary"}
    if speed is not None:
        props["speed_kmh"] = speed
    return {
        "type": "Feature",
        "properties": props,
        "geometry": {"type": "LineString", "coordinates": [list(c) for c in coords]},
    }


# A river town: a south road and a north road along the banks, one bridge at the east
# end. A unit on the north bank is close to the west end of the south road as the crow
# flies (~550 m) but ~4.4 km away by road.
SOUTH = line("south", [(120.300, 31.800), (120.310, 31.800), (120.320, 31.800)])
NORTH = line("north", [(120.300, 31.806), (120.310, 31.806), (120.320, 31.806)])
BRIDGE = line("bridge", [(120.320, 31.800), (120.320, 31.806)])
RIVER_TOWN = {"type": "FeatureCollection", "features": [SOUTH, NORTH, BRIDGE]}

INC_WEST = incident("INC-1", 120.3000, 31.8005)
NORTH_UNIT = unit("N", 120.3000, 31.8055)  # ~555 m straight, across the river
SOUTH_UNIT = unit("S", 120.3100, 31.8005)  # ~950 m straight, same bank


@pytest.fixture
def river() -> RoadGraph:
    return RoadGraph.from_geojson(RIVER_TOWN)


# ---------------------------------------------------------------------- geometry
def test_haversine_one_degree_of_latitude() -> None:
    assert haversine_m(120.0, 31.0, 120.0, 32.0) == pytest.approx(111_195, rel=1e-3)
    assert haversine_m(120.0, 31.0, 120.0, 31.0) == 0.0


def test_graph_nodes_are_shared_coordinates(river: RoadGraph) -> None:
    # 3 + 3 vertices; the bridge's ends are the roads' east ends (junctions). The four
    # ~946 m road segments get 4 interior nodes each, the 667 m bridge 3.
    assert river.node_count == 6 + 4 * 4 + 3
    assert river.edge_count == 4 * 5 + 4


def test_long_segments_are_split() -> None:
    g = RoadGraph.from_geojson({"type": "FeatureCollection", "features": [SOUTH]})
    # A point mid-way between two original vertices is near an interior node.
    found = g.nearest_node(120.305, 31.800)
    assert found is not None and found[1] < geo.MAX_SEGMENT_M / 2


@pytest.mark.parametrize("east", [120.301, 120.31])  # ~95 m (one edge), ~950 m (split)
def test_graph_rounds_coordinates_and_takes_the_fastest_parallel_road(east: float) -> None:
    slow = line("slow", [(120.3, 31.8), (east, 31.8)], speed=10)
    fast = line("fast", [(120.3000000004, 31.8), (east, 31.8000000003)], speed=50)
    g = RoadGraph.from_geojson({"type": "FeatureCollection", "features": [slow, fast]})
    if east == 120.301:
        assert g.node_count == 2 and g.edge_count == 1
    d = haversine_m(120.3, 31.8, east, 31.8)
    assert g.travel_time_s(120.3, 31.8, east, 31.8) == pytest.approx(d / (50 / 3.6))


def test_missing_speed_uses_class_default() -> None:
    road = line("r", [(120.3, 31.8), (120.31, 31.8)], speed=None)
    road["properties"]["class"] = "primary"
    g = RoadGraph.from_geojson({"type": "FeatureCollection", "features": [road]})
    d = haversine_m(120.3, 31.8, 120.31, 31.8)
    expected = d / (geo.CLASS_SPEED_KMH["primary"] / 3.6)
    assert g.travel_time_s(120.3, 31.8, 120.31, 31.8) == pytest.approx(expected)


def test_travel_time_by_road_goes_round_by_the_bridge(river: RoadGraph) -> None:
    by_road = river.travel_time_s(120.300, 31.8055, 120.300, 31.8005)
    leg = haversine_m(120.300, 31.8055, 120.300, 31.806) / (geo.ACCESS_SPEED_KMH / 3.6)
    road_m = 2 * haversine_m(120.30, 31.8, 120.32, 31.8) + haversine_m(120.32, 31.8, 120.32, 31.806)
    assert by_road == pytest.approx(2 * leg + road_m / (40 / 3.6), rel=1e-3)
    # Two-way roads: the same either way.
    assert river.travel_time_s(120.300, 31.8005, 120.300, 31.8055) == pytest.approx(by_road)


@pytest.mark.parametrize(
    "graph_fc",
    [
        None,  # no road file at all
        # Disconnected pieces: no path between the two nodes.
        {"type": "FeatureCollection", "features": [SOUTH, NORTH]},
    ],
)
def test_fallback_is_straight_line_with_detour(graph_fc: dict[str, Any] | None) -> None:
    g = RoadGraph.from_geojson(graph_fc) if graph_fc else None
    d = haversine_m(120.300, 31.8055, 120.300, 31.8005)
    expected = d * geo.DETOUR_FACTOR / (geo.FALLBACK_SPEED_KMH / 3.6)
    assert travel_time_s(g, 120.300, 31.8055, 120.300, 31.8005) == pytest.approx(expected)
    times, by_road = geo.travel_time_matrix(g, [120.300], [31.8005], [120.300], [31.8055])
    assert times[0, 0] == pytest.approx(expected)
    assert not by_road[0, 0]


def test_same_node_goes_straight(river: RoadGraph) -> None:
    # Both points hang off node (120.31, 31.80) from the same side: no detour via the node.
    a, b = (120.3095, 31.8003), (120.3100, 31.8003)
    t = river.travel_time_s(*a, *b)
    assert t == pytest.approx(
        haversine_m(*a, *b) * geo.DETOUR_FACTOR / (geo.ACCESS_SPEED_KMH / 3.6)
    )


def synthetic_town(n: int = 12, seed: int = 1) -> dict[str, Any]:
    rnd = random.Random(seed)
    pts = {
        (i, j): (
            120.3 + i * 0.004 + rnd.uniform(-8e-4, 8e-4),
            31.8 + j * 0.004 + rnd.uniform(-8e-4, 8e-4),
        )
        for i in range(n)
        for j in range(n)
    }
    feats = []
    for (i, j), p in pts.items():
        for q in ((i + 1, j), (i, j + 1)):
            if q in pts and rnd.random() > 0.15:
                feats.append(line(f"{i}-{j}-{q}", [p, pts[q]], speed=rnd.choice([20, 30, 50])))
    return {"type": "FeatureCollection", "features": feats}


def test_nearest_node_bucket_matches_brute_force() -> None:
    g = RoadGraph.from_geojson(synthetic_town())
    nodes = [(float(x), float(y)) for x, y in zip(g._lon, g._lat, strict=True)]
    rnd = random.Random(5)
    for _ in range(300):
        # Inside, on the edge of and far outside the town.
        lon = 120.3 + rnd.uniform(-0.3, 0.35)
        lat = 31.8 + rnd.uniform(-0.02, 0.07)
        found = g.nearest_node(lon, lat)
        assert found is not None
        best = min(haversine_m(lon, lat, *n) for n in nodes)
        assert found[1] == pytest.approx(best, rel=2e-3, abs=0.05)


def test_matrix_agrees_with_scalar_and_cache_size_does_not_matter() -> None:
    fc = synthetic_town()
    rnd = random.Random(9)
    pts = [(120.3 + rnd.uniform(0, 0.045), 31.8 + rnd.uniform(0, 0.045)) for _ in range(40)]
    dst, src = pts[:8], pts[8:]
    g = RoadGraph.from_geojson(fc)
    times, _ = g.travel_time_matrix(
        [p[0] for p in dst], [p[1] for p in dst], [p[0] for p in src], [p[1] for p in src]
    )
    tiny = RoadGraph.from_geojson(fc)
    tiny._capacity = 3  # force LRU evictions and the uncached path
    times_tiny, _ = tiny.travel_time_matrix(
        [p[0] for p in dst], [p[1] for p in dst], [p[0] for p in src], [p[1] for p in src]
    )
    np.testing.assert_allclose(times, times_tiny)
    for i, d in enumerate(dst):
        for j, s in enumerate(src):
            assert times[i, j] == pytest.approx(g.travel_time_s(*s, *d))
            assert tiny.travel_time_s(*s, *d) == pytest.approx(times[i, j])
    assert len(tiny._slot_of) <= 3


def test_tree_cache_is_reused(river: RoadGraph) -> None:
    river.travel_time_s(120.3, 31.8055, 120.3, 31.8005)
    runs = river.dijkstra_runs
    for _ in range(10):
        river.travel_time_s(120.31, 31.8055, 120.3, 31.8005)
    assert river.dijkstra_runs == runs


# ---------------------------------------------------------------------- ranking
def test_rank_by_road_beats_straight_line(river: RoadGraph) -> None:
    units = [NORTH_UNIT, SOUTH_UNIT]
    rec = rank(INC_WEST, units, river, NOW)
    assert rec.pick == "S"
    assert [c.unit_id for c in rec.candidates] == ["S", "N"]
    assert rec.candidates[0].reasons[0].endswith("by road")
    north = rec.candidates[1]
    assert north.distance_m is not None and north.distance_m < rec.candidates[0].distance_m  # type: ignore[operator]
    # The baseline, and rank without a road graph, take the crow-flies nearest.
    assert closest_idle(INC_WEST, units, NOW) == "N"
    assert rank(INC_WEST, units, None, NOW).pick == "N"
    assert "straight-line estimate" in rank(INC_WEST, units, None, NOW).candidates[0].reasons[0]


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"age": 121.0}, "stale position (last fix 121s ago)"),
        ({"age": None}, "position unknown"),
        ({"lon": None, "lat": None, "age": None}, "position unknown"),
    ],
)
def test_stale_units_rank_after_known_ones(
    river: RoadGraph, changes: dict[str, Any], why: str
) -> None:
    # The close unit's fix is stale: it is not ranked as if it were still there.
    args: dict[str, Any] = {"lon": 120.3001, "lat": 31.8005, "age": 10.0} | changes
    close = unit("CLOSE", args["lon"], args["lat"], age=args["age"])
    far = unit("FAR", 120.318, 31.8005)
    rec = rank(INC_WEST, [close, far], river, NOW)
    assert [c.unit_id for c in rec.candidates] == ["FAR", "CLOSE"]
    stale = rec.candidates[1]
    assert stale.eta_s is None and stale.distance_m is None
    assert stale.reasons[0] == why
    assert closest_idle(INC_WEST, [close, far], NOW) == "FAR"


def test_only_stale_units_still_gives_a_pick(river: RoadGraph) -> None:
    rec = rank(INC_WEST, [unit("A", 120.3, 31.8, age=600.0)], river, NOW)
    assert rec.pick == "A"
    assert "confirm by radio" in rec.reason


def test_stale_threshold_is_a_policy_knob(river: RoadGraph) -> None:
    u = unit("A", 120.3, 31.8, age=200.0)
    assert rank(INC_WEST, [u], river, NOW).candidates[0].eta_s is None
    lax = DispatchPolicy(stale_after_s=300.0)
    assert rank(INC_WEST, [u], river, NOW, lax).candidates[0].eta_s is not None


@pytest.mark.parametrize(
    ("status", "quals", "policy", "candidate"),
    [
        ("available", ("城管",), DEFAULT_POLICY, True),
        ("available", ("环保", "安监"), DEFAULT_POLICY, False),  # not qualified
        ("off_duty", ("城管",), DEFAULT_POLICY, False),
        ("on_scene", ("城管",), DEFAULT_POLICY, False),
        ("returning", ("城管",), DEFAULT_POLICY, False),
        ("returning", ("城管",), DispatchPolicy(dispatch_returning=True), True),
        ("en_route", ("城管",), DEFAULT_POLICY, False),  # busy; incident is not critical
    ],
)
def test_candidate_filter(
    river: RoadGraph, status: str, quals: tuple[str, ...], policy: DispatchPolicy, candidate: bool
) -> None:
    u = unit("U", 120.31, 31.8005, status=status, quals=quals, cur="INC-9", cur_p=3)
    rec = rank(INC_WEST, [u], river, NOW, policy)
    assert (rec.pick == "U") is candidate
    if not candidate:
        assert rec.candidates == () and "no on-duty unit qualified" in rec.reason


@pytest.mark.parametrize(
    ("inc_priority", "status", "cur_p", "preempts"),
    [
        (1, "en_route", 3, True),
        (1, "dispatched", 2, True),
        (1, "en_route", 1, False),  # not strictly less urgent
        (2, "en_route", 3, False),  # only critical incidents preempt
        (1, "on_scene", 4, False),  # work started: never pulled away
    ],
)
def test_preemption_rule(
    river: RoadGraph, inc_priority: int, status: str, cur_p: int, preempts: bool
) -> None:
    inc = replace(INC_WEST, priority=inc_priority)
    u = unit("U", 120.31, 31.8005, status=status, cur="INC-12", cur_p=cur_p)
    rec = rank(inc, [u], river, NOW)
    if preempts:
        cand = rec.candidates[0]
        assert cand.preempts == "INC-12"
        assert f"preempts INC-12 (p{cur_p})" in cand.reasons
        assert cand.score == pytest.approx(cand.eta_s + DEFAULT_POLICY.preempt_penalty_s)  # type: ignore[operator]
    else:
        assert rec.pick is None


def test_free_unit_preferred_unless_preempting_is_much_faster(river: RoadGraph) -> None:
    critical = replace(INC_WEST, priority=1)
    busy = unit("BUSY", 120.3002, 31.8005, status="en_route", cur="INC-12", cur_p=3)
    near_free = unit("FREE", 120.3010, 31.8005)  # ~95 m farther: within the penalty
    assert rank(critical, [busy, near_free], river, NOW).pick == "FREE"
    far_free = unit("FREE", 120.3200, 31.8005)  # ~1.9 km farther: preempt
    rec = rank(critical, [busy, far_free], river, NOW)
    assert rec.pick == "BUSY" and "preempting INC-12" in rec.reason


def test_workload_then_fairness_break_ties(river: RoadGraph) -> None:
    spot = (120.31, 31.8005)
    busy = unit("A", *spot, cases=3)
    idle_new = unit("B", *spot, cases=1, duty_since=NOW - 600)
    idle_old = unit("C", *spot, cases=1, duty_since=NOW - 7200)
    rec = rank(INC_WEST, [busy, idle_new, idle_old], river, NOW)
    assert [c.unit_id for c in rec.candidates] == ["C", "B", "A"]
    assert "cases today 3" in rec.candidates[2].reasons
    # Workload outweighs a small distance difference, not a large one.
    slightly_closer_busy = unit("D", 120.308, 31.8005, cases=4)  # one node (~190 m) closer
    assert rank(INC_WEST, [slightly_closer_busy, idle_old], river, NOW).pick == "C"
    # Critical incidents are ranked on time alone.
    critical = replace(INC_WEST, priority=1)
    assert rank(critical, [slightly_closer_busy, idle_old], river, NOW).pick == "D"


def test_coverage_keeps_last_unit_home(river: RoadGraph) -> None:
    inc = replace(INC_WEST, grid="G1")
    last_in_g2 = unit("G2-LAST", 120.3060, 31.8005, home="G2")
    g1_unit = unit("G1-U", 120.3080, 31.8005, home="G1")  # ~190 m farther by road
    rec = rank(inc, [last_in_g2, g1_unit], river, NOW)
    assert rec.pick == "G1-U"
    penalised = next(c for c in rec.candidates if c.unit_id == "G2-LAST")
    assert "last free 城管 unit in G2" in penalised.reasons
    off = DispatchPolicy(coverage_penalty_s=0.0)
    assert rank(inc, [last_in_g2, g1_unit], river, NOW, off).pick == "G2-LAST"
    # A second free 城管 unit at home in G2 lifts the penalty.
    spare = unit("G2-SPARE", 120.319, 31.806, home="G2")
    assert rank(inc, [last_in_g2, g1_unit, spare], river, NOW).pick == "G2-LAST"


def test_max_candidates_cuts_the_list(river: RoadGraph) -> None:
    units = [unit(f"U{k}", 120.3 + k * 1e-3, 31.8005) for k in range(30)]
    rec = rank(INC_WEST, units, river, NOW)
    assert len(rec.candidates) == DEFAULT_POLICY.max_candidates
    assert rec.pick == "U0"


# ---------------------------------------------------------------------- joint assignment
def plan_by_incident(plan: list[Assignment]) -> dict[str, Assignment]:
    return {a.incident_id: a for a in plan}


def greedy(incidents: list[IncidentState], units: list[UnitState]) -> dict[str, str]:
    """One incident at a time, oldest first, each taking its best-ranked free unit."""
    left = list(units)
    out: dict[str, str] = {}
    for inc in sorted(incidents, key=lambda i: i.opened_at):
        rec = rank(inc, left, None, NOW)
        if rec.pick is not None:
            out[inc.id] = rec.pick
            left = [u for u in left if u.id != rec.pick]
    return out


def test_joint_beats_greedy() -> None:
    # On a line: U2 at 0 km, I1 at 1.0 km, U1 at 1.1 km, I2 at 2.2 km. Greedy sends U1
    # to I1 (0.1 km) and then U2 to I2 (2.2 km); jointly U2->I1, U1->I2 (2.1 km total).
    km = 1 / 94.6  # degrees of longitude per km at 31.8 N
    i1 = incident("I1", 120.3 + 1.0 * km, 31.8, opened=NOW - 120)
    i2 = incident("I2", 120.3 + 2.2 * km, 31.8, opened=NOW - 60)
    u1 = unit("U1", 120.3 + 1.1 * km, 31.8)
    u2 = unit("U2", 120.3, 31.8)
    g = greedy([i1, i2], [u1, u2])
    assert g == {"I1": "U1", "I2": "U2"}
    plan = plan_by_incident(assign_jointly([i1, i2], [u1, u2], None, NOW))
    assert {k: a.unit_id for k, a in plan.items()} == {"I1": "U2", "I2": "U1"}
    joint_total = sum(a.eta_s or math.inf for a in plan.values())
    greedy_total = sum(
        geo.straight_line_time_s(haversine_m(u.lon or 0, u.lat or 0, i.lon, i.lat))
        for i, u in ((i1, u1), (i2, u2))
    )
    assert joint_total < greedy_total


def test_more_incidents_than_units_serves_the_most_urgent() -> None:
    lon, lat = 120.3, 31.8
    incs = [
        incident("LOW", lon + 0.001, lat, priority=4, opened=NOW - 900),
        incident("CRIT", lon + 0.02, lat, priority=1),
        incident("NORMAL", lon + 0.002, lat, priority=3, opened=NOW - 600),
        incident("OTHER-Q", lon, lat, priority=1, qual="环保"),
    ]
    plan = assign_jointly(incs, [unit("U", lon, lat)], None, NOW)
    # Priority first, then age, then id (CRIT and OTHER-Q were opened together).
    assert [a.incident_id for a in plan] == ["CRIT", "OTHER-Q", "NORMAL", "LOW"]
    got = plan_by_incident(plan)
    assert got["CRIT"].unit_id == "U" and got["CRIT"].eta_s is not None
    assert got["NORMAL"].unit_id is None and "more urgent" in got["NORMAL"].reason
    assert (
        got["OTHER-Q"].unit_id is None
        and "no qualified unit free for 环保" in got["OTHER-Q"].reason
    )


def test_more_units_than_incidents_takes_the_nearest() -> None:
    units = [unit(f"U{k}", 120.3 + 0.002 * k, 31.8) for k in range(6)]
    plan = assign_jointly([incident("I", 120.3071, 31.8)], units, None, NOW)
    assert [(a.incident_id, a.unit_id) for a in plan] == [("I", "U4")]


def test_joint_skips_assigned_incidents_and_handles_empty_inputs() -> None:
    assigned = incident("A", 120.3, 31.8, assigned="U0")
    assert assign_jointly([assigned], [unit("U1", 120.3, 31.8)], None, NOW) == []
    assert assign_jointly([], [], None, NOW) == []
    plan = assign_jointly([incident("W", 120.3, 31.8)], [], None, NOW)
    assert plan[0].unit_id is None


def test_joint_preemption_reassigns_the_displaced_incident() -> None:
    lon, lat = 120.3, 31.8
    victim = incident("INC-3", lon + 0.01, lat, priority=3, qual="城管", assigned="HAZ")
    critical = incident("INC-1", lon, lat, priority=1, qual="安监")
    hazmat = unit(
        "HAZ", lon + 0.001, lat, quals=("安监", "城管"), status="en_route", cur="INC-3", cur_p=3
    )
    spare = unit("SPARE", lon + 0.012, lat, quals=("城管",))
    plan = assign_jointly([victim, critical], [hazmat, spare], None, NOW)
    got = plan_by_incident(plan)
    assert got["INC-1"].unit_id == "HAZ" and got["INC-1"].preempted_incident == "INC-3"
    assert "preempts INC-3 (p3)" in got["INC-1"].reason
    assert got["INC-3"].unit_id == "SPARE"
    assert got["INC-3"].reason.startswith("displaced by INC-1")
    assert [a.incident_id for a in plan] == ["INC-1", "INC-3"]


def test_joint_preemption_of_an_incident_not_in_the_input() -> None:
    critical = incident("INC-1", 120.3, 31.8, priority=1)
    busy = unit("B", 120.301, 31.8, status="dispatched", cur="INC-77", cur_p=4)
    got = plan_by_incident(assign_jointly([critical], [busy], None, NOW))
    assert got["INC-1"].unit_id == "B"
    assert got["INC-77"].unit_id is None and "re-queue" in got["INC-77"].reason


def test_joint_prefers_free_unit_to_preemption() -> None:
    critical = incident("INC-1", 120.3, 31.8, priority=1)
    busy = unit("B", 120.3001, 31.8, status="en_route", cur="INC-5", cur_p=3)
    free = unit("F", 120.3008, 31.8)
    plan = assign_jointly([critical], [busy, free], None, NOW)
    assert [(a.unit_id, a.preempted_incident) for a in plan] == [("F", None)]


def test_joint_uses_stale_units_only_as_last_resort() -> None:
    inc = incident("I", 120.3, 31.8)
    stale_close = unit("STALE", 120.3001, 31.8, age=900.0)
    fresh_far = unit("FRESH", 120.33, 31.8)
    plan = assign_jointly([inc], [stale_close, fresh_far], None, NOW)
    assert plan[0].unit_id == "FRESH"
    plan = assign_jointly([inc, replace(inc, id="J")], [stale_close, fresh_far], None, NOW)
    got = plan_by_incident(plan)
    assert {got["I"].unit_id, got["J"].unit_id} == {"FRESH", "STALE"}
    stale_line = got["I"] if got["I"].unit_id == "STALE" else got["J"]
    assert stale_line.eta_s is None and "confirm by radio" in stale_line.reason


@pytest.mark.parametrize("seed", range(8))
def test_joint_agrees_with_rank_for_one_incident(seed: int) -> None:
    g = RoadGraph.from_geojson(synthetic_town(seed=seed))
    rnd = random.Random(seed)

    def spot() -> tuple[float, float]:
        return 120.3 + rnd.uniform(0, 0.045), 31.8 + rnd.uniform(0, 0.045)

    units = [
        unit(
            f"U{k}",
            *spot(),
            quals=tuple(rnd.sample(["城管", "环保", "安监"], 2)),
            cases=rnd.randrange(5),
            home=f"G{rnd.randrange(3)}",
            age=rnd.choice([5.0, 60.0, 500.0]),
        )
        for k in range(25)
    ]
    inc = incident("I", *spot(), priority=rnd.choice([1, 2, 3, 4]), grid=f"G{rnd.randrange(3)}")
    rec = rank(inc, units, g, NOW)
    plan = assign_jointly([inc], units, g, NOW)
    assert plan[0].unit_id == rec.pick
    assert plan[0].eta_s == (rec.candidates[0].eta_s if rec.candidates else None)


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="unserved_cost_s"):
        DispatchPolicy(unserved_cost_s=100.0)
    with pytest.raises(ValueError, match="priority_weights"):
        DispatchPolicy(priority_weights=(1.0, 1.0, 1.0, 0.0))
    assert DEFAULT_POLICY.weight(1) > DEFAULT_POLICY.weight(4)


def test_model_validation() -> None:
    with pytest.raises(ValueError, match="status"):
        unit("U", 0.0, 0.0, status="sleeping")
    with pytest.raises(ValueError, match="kind"):
        unit("U", 0.0, 0.0, kind="army")
    with pytest.raises(ValueError, match="priority"):
        incident("I", 0.0, 0.0, priority=5)


def test_eta_values_are_finite_and_positive(river: RoadGraph) -> None:
    rec = rank(INC_WEST, [NORTH_UNIT, SOUTH_UNIT], river, NOW)
    for c in rec.candidates:
        assert c.eta_s is not None and math.isfinite(c.eta_s) and c.eta_s > 0
