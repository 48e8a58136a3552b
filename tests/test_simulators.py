"""Pure tests of the demo simulators: device values, patrol movement, publisher window.

No broker, no hub: generators and movement take time as an argument.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import random
import threading
import tomllib
from collections import Counter
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest

from dispatch import workflow
from dispatch.service import UNIT_STATUS_AFTER
from ingest import wire
from simulators import devices, patrol, patrol_motion, patrol_roads
from simulators.crews import Crews, CrewTiming
from simulators.mqtt_pub import MAX_WINDOW, InflightWindow
from simulators.run_loops import select_devices

DATA = Path(__file__).resolve().parents[1] / "simulators" / "data"
T0 = 1_767_196_800.0  # 2026-01-01 00:00 Beijing time (UTC+8)
HOUR = 3600.0
DAY = 86_400.0


@pytest.fixture(scope="module")
def town() -> dict[str, Any]:
    return json.loads((DATA / "xuxiake.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    doc = tomllib.loads((DATA / "rules.toml").read_text(encoding="utf-8"))
    return list(doc["rules"].values())


@pytest.fixture(scope="module")
def graph(town: dict[str, Any]) -> patrol_roads.RoadGraph:
    return patrol_roads.RoadGraph.from_town(town)


def _rules_for(rules: list[dict[str, Any]], device: dict[str, Any], metric: str,
               t: float | None = None) -> list[dict[str, Any]]:
    """Limit rules (threshold, duration) on ``metric`` that apply to ``device`` (model,
    device_filter) and, when ``t`` is given, are in force at that local time (hours)."""
    out = []
    for r in rules:
        if r["kind"] not in ("threshold", "duration") or r.get("metric") != metric:
            continue
        if r.get("device_model", device["model"]) != device["model"]:
            continue
        if any(str(device.get(k)) != str(v) for k, v in r.get("device_filter", {}).items()):
            continue
        if t is not None and "hours" in r:
            start, end = ([int(x) for x in hm.split(":")] for hm in r["hours"].split("-"))
            h = devices.local_hour(t)
            lo, hi = start[0] + start[1] / 60, end[0] + end[1] / 60
            if not (lo <= h < hi if lo < hi else h >= lo or h < hi):
                continue
        out.append(r)
    return out


def _run(gen: devices.DeviceGenerator, start: float, seconds: float
         ) -> list[tuple[float, dict[str, float] | None]]:
    out = []
    t = start
    while t < start + seconds:
        out.append((t, gen.sample(t)))
        t += gen.interval_s
    return out


# ---------------------------------------------------------------- devices


def test_local_hour_is_beijing_time() -> None:
    assert devices.local_hour(T0) == pytest.approx(0.0)
    assert devices.local_hour(T0 + 8.5 * HOUR) == pytest.approx(8.5)


def test_every_town_model_has_a_generator(town: dict[str, Any]) -> None:
    for d in town["devices"]:
        gen = devices.make_generator(d, 1, devices.NO_FAULTS)
        values = gen.sample(T0)
        assert values is not None
        assert set(values) == set(d["metrics"]), d["id"]
        # the values encode as a valid native telemetry payload for the device's topic
        payload = wire.encode_telemetry(T0, values)
        result = wire.decode(wire.telemetry_topic(d["id"]), payload, T0)
        assert isinstance(result, wire.Decoded), result


@pytest.mark.parametrize("model", sorted(devices.GENERATORS))
def test_normal_values_stay_clear_of_alarm_rules(
        town: dict[str, Any], rules: list[dict[str, Any]], model: str) -> None:
    """Two simulated days of devices of the model, no events and no faults: never at a
    limit rule's raise level, always past its clear level (so raised alarms clear), and
    never rising as fast as a rate rule."""
    devs = [d for d in town["devices"] if d["model"] == model]
    assert devs
    rate_rules = [r for r in rules if r["kind"] == "rate"]
    checked = 0
    for d in devs[:12]:
        gen = devices.make_generator(d, 7, devices.NO_FAULTS)
        series = _run(gen, T0, 2 * DAY)
        for t, values in series:
            assert values is not None
            for m, v in values.items():
                assert math.isfinite(v)
                for r in _rules_for(rules, d, m, t):
                    p = r["params"]
                    checked += 1
                    if "raise_above" in p:
                        assert v < min(p["raise_above"], p.get("clear_below", math.inf)), \
                            (r["name"], d["id"], t, v)
                    else:
                        assert v > max(p["raise_below"], p.get("clear_above", -math.inf)), \
                            (r["name"], d["id"], t, v)
        for r in rate_rules:
            metric, window = r.get("metric"), r["params"]["window_s"]
            if metric not in d["metrics"]:
                continue
            step = max(1, round(window / gen.interval_s))
            vals = [v[metric] for _, v in series if v is not None]
            rises = [(b - a) / (step * gen.interval_s) for a, b in zip(vals, vals[step:],
                                                                     strict=False)]
            assert max(rises) < r["params"]["rise_per_s"], (r["name"], d["id"])
    if model in ("gas_detector", "smoke_detector", "air_station", "noise_meter",
                 "water_station", "traffic_counter"):
        assert checked  # every model is watched by some rule


NORMAL_RANGES = {
    "gas_lel_pct": (0.0, 10.0), "smoke_obscuration_pct": (0.0, 1.0),
    "temperature_c": (5.0, 38.0), "pm25": (10.0, 80.0), "pm10": (10.0, 150.0),
    "water_level_m": (2.5, 3.5), "water_quality_cod_mg_l": (10.0, 25.0),
    "vehicle_count": (0.0, 120.0), "speed_kmh": (20.0, 70.0), "occupancy_pct": (0.0, 60.0),
}


def test_normal_ranges(town: dict[str, Any]) -> None:
    for d in town["devices"][::5]:
        gen = devices.make_generator(d, 3, devices.NO_FAULTS)
        for _, values in _run(gen, T0, DAY):
            assert values is not None
            for m, v in values.items():
                if m in NORMAL_RANGES:
                    lo, hi = NORMAL_RANGES[m]
                    assert lo <= v <= hi, (d["id"], m, v)


def test_gas_is_near_zero_most_of_the_time(town: dict[str, Any]) -> None:
    d = next(x for x in town["devices"] if x["model"] == "gas_detector")
    values = [v["gas_lel_pct"] for _, v in _run(devices.make_generator(d, 5, devices.NO_FAULTS),
                                                 T0, DAY) if v]
    values.sort()
    assert values[len(values) // 2] <= 3.0


def test_noise_follows_zone_limits_day_and_night(town: dict[str, Any]) -> None:
    for d in (x for x in town["devices"] if x["model"] == "noise_meter"):
        day_limit, night_limit = devices.NOISE_LIMITS[d["noise_zone"]]
        gen = devices.make_generator(d, 2, devices.NO_FAULTS)
        for t, v in _run(gen, T0, DAY):
            assert v is not None
            h = devices.local_hour(t)
            if 7 <= h < 21:
                assert day_limit - 15 < v["noise_db"] < day_limit, (d["id"], h, v)
            elif h >= 23 or h < 5:
                assert night_limit - 15 < v["noise_db"] < night_limit, (d["id"], h, v)


def _mean_at(gen_factory: Any, metric: str, hours: list[float], days: int = 5) -> float:
    vals = []
    for k in range(days):
        gen = gen_factory(k)
        for h in hours:
            for minute in range(0, 60, 10):
                v = gen.sample(T0 + k * DAY + h * HOUR + minute * 60)
                assert v is not None
                vals.append(v[metric])
    return sum(vals) / len(vals)


def test_traffic_peaks_morning_and_evening(town: dict[str, Any]) -> None:
    d = next(x for x in town["devices"] if x["model"] == "traffic_counter")

    def factory(k: int) -> devices.DeviceGenerator:
        return devices.make_generator(d, 100 + k, devices.NO_FAULTS)

    for metric in ("vehicle_count", "occupancy_pct", "speed_kmh"):
        morning = _mean_at(factory, metric, [7.5, 8.0, 8.5])
        evening = _mean_at(factory, metric, [17.5, 18.0, 18.5])
        midday = _mean_at(factory, metric, [11.5, 12.0, 13.0])
        night = _mean_at(factory, metric, [2.0, 3.0, 4.0])
        if metric == "speed_kmh":
            assert morning < midday - 3 and evening < midday - 3, metric
            assert night > midday
        else:
            assert morning > midday * 1.3 and evening > midday * 1.3, metric
            assert night < midday


def test_same_seed_same_values(town: dict[str, Any]) -> None:
    d = town["devices"][0]
    rate = 1.0 / 600  # events and faults switched on
    f = devices.Faults(rate, 1 / 3600, 1 / 3600)
    a = _run(devices.make_generator(d, 9, f), T0, DAY)
    b = _run(devices.make_generator(d, 9, f), T0, DAY)
    c = _run(devices.make_generator(d, 10, f), T0, DAY)
    assert a == b
    assert a != c


EVENT_METRIC = {"gas_detector": "gas_lel_pct", "smoke_detector": "smoke_obscuration_pct",
                "air_station": "pm25", "water_station": "water_level_m",
                "traffic_counter": "speed_kmh", "noise_meter": "noise_db"}


@pytest.mark.parametrize("model", sorted(EVENT_METRIC))
def test_event_trips_an_alarm_rule_and_returns(
        town: dict[str, Any], rules: list[dict[str, Any]], model: str) -> None:
    """A forced event goes past the raise level of a rule of the device for as long as the
    rule wants (``for_s``), then comes back past its clear level."""
    metric = EVENT_METRIC[model]
    settle = T0 + 23 * HOUR  # 23:00: night rules (noise) are in force
    for d in [x for x in town["devices"] if x["model"] == model][:6]:
        (rule, *_) = sorted(_rules_for(rules, d, metric, settle),
                            key=lambda r: (r.get("incident_category") is None, r["name"]))
        p = rule["params"]
        for_s = p.get("for_s", 0.0)
        gen = devices.make_generator(d, 11, devices.NO_FAULTS)
        _run(gen, settle - 600, 600)
        event = gen.start_event(settle)
        assert event is not None
        lo, hi = devices.EVENT_DURATION_BY_MODEL.get(model, devices.EVENT_DURATION_S)
        assert max(lo, 2 * gen.interval_s) <= event.duration <= hi
        series = _run(gen, settle, event.duration + 15 * 60)
        over = [t for t, v in series if v and (
            v[metric] >= p["raise_above"] if "raise_above" in p else
            v[metric] <= p["raise_below"])]
        assert over, (d["id"], rule["name"])
        assert over[-1] - over[0] >= for_s, (d["id"], rule["name"], over[-1] - over[0])
        after = [v[metric] for t, v in series if v and t >= settle + event.duration]
        assert after
        if "raise_above" in p:
            assert all(v < p.get("clear_below", p["raise_above"]) for v in after)
        else:
            assert all(v > p.get("clear_above", p["raise_below"]) for v in after)
        assert gen.events_started == 1 and gen.event is None


def test_gas_leak_climbs_fast_enough_for_the_rate_rule(
        town: dict[str, Any], rules: list[dict[str, Any]]) -> None:
    (rule,) = [r for r in rules if r["kind"] == "rate" and r["metric"] == "gas_lel_pct"]
    d = next(x for x in town["devices"] if x["model"] == "gas_detector")
    gen = devices.make_generator(d, 4, devices.NO_FAULTS)
    gen.sample(T0 - 60)
    before = gen.sample(T0 - 30)
    gen.start_event(T0, duration=150)
    values = [v["gas_lel_pct"] for _, v in _run(gen, T0, 60) if v]
    assert before is not None
    assert (max(values) - before["gas_lel_pct"]) / 60 >= rule["params"]["rise_per_s"]


def test_gas_leak_shape(town: dict[str, Any]) -> None:
    d = next(x for x in town["devices"] if x["model"] == "gas_detector")
    gen = devices.make_generator(d, 4, devices.NO_FAULTS)
    event = gen.start_event(T0, duration=150)
    assert event is not None and 30 <= event.peak["gas_lel_pct"] <= 60
    series = [v["gas_lel_pct"] for _, v in _run(gen, T0, 300) if v]
    peak = series.index(max(series))
    assert 0 < peak < len(series) - 1
    assert series[-1] < 10


def test_event_rate_town_wide(town: dict[str, Any]) -> None:
    rates = devices.event_rates(town["devices"], 180.0)
    assert sum(rates.values()) == pytest.approx(1 / 180.0)
    assert all(r > 0 for r in rates.values())
    assert set(devices.event_rates(town["devices"], 0).values()) == {0.0}
    # simulated: six hours of the whole town give about 120 events
    gens = [devices.make_generator(d, 21, devices.Faults(rates[d["id"]], 0, 0))
            for d in town["devices"]]
    for g in gens:
        _run(g, T0, 6 * HOUR)
    total = sum(g.events_started for g in gens)
    assert 80 <= total <= 165, total


def test_dead_and_stuck_sensors(town: dict[str, Any]) -> None:
    d = next(x for x in town["devices"] if x["model"] == "air_station")
    gen = devices.make_generator(d, 8, devices.Faults(0.0, 1 / 3600, 1 / 3600))
    series = _run(gen, T0, 2 * DAY)
    silent = sum(1 for _, v in series if v is None)
    assert 0 < silent < len(series) / 2
    repeats = sum(1 for (_, a), (_, b) in pairwise(series) if a and a == b)
    assert repeats > 3


# ---------------------------------------------------------------- patrol


def _on_graph(graph: patrol_roads.RoadGraph, x: float, y: float, tol: float = 0.05) -> bool:
    return graph.nearest(x, y).dist <= tol


def test_graph_joins_roads_at_shared_vertices(town: dict[str, Any],
                                              graph: patrol_roads.RoadGraph) -> None:
    vertices = {(round(c[0], 6), round(c[1], 6)) for f in town["roads"]["features"]
                for c in f["geometry"]["coordinates"]}
    assert len(graph.nodes) == len(vertices)
    assert len(graph.component) == len(graph.nodes)  # one connected network
    degree = Counter(len(a) for a in graph.adj)
    assert degree[3] + degree[4] > 50  # crossings exist


def test_shortest_path_is_no_longer_than_any_other(graph: patrol_roads.RoadGraph) -> None:
    rng = random.Random(5)
    nodes = sorted(graph.component)
    for _ in range(20):
        a, b = rng.sample(nodes, 2)
        path = graph.node_route(a, b)
        dist, _ = graph.dijkstra({a: 0.0})
        assert path.length == pytest.approx(dist[b])
        assert path.points[0] == graph.nodes[a] and path.points[-1] == graph.nodes[b]
        # straight line is a lower bound
        assert path.length >= math.dist(graph.nodes[a], graph.nodes[b]) - 1e-6
        for p in path.points:
            assert _on_graph(graph, *p)


def test_advance_is_pure_and_follows_path() -> None:
    path = patrol_roads.Path.of([(0.0, 0.0), (100.0, 0.0), (100.0, 50.0)], [10.0, 5.0])
    m0 = patrol_motion.Mover(0.0, 0.0, cruise=8.0).follow(path)
    m1 = patrol_motion.advance(m0, 5.0)
    assert m0.x == 0.0 and m0.leg == 0  # unchanged
    assert (m1.x, m1.y, m1.speed, m1.heading) == pytest.approx((40.0, 0.0, 8.0, 90.0))
    m2 = patrol_motion.advance(m1, 10.0)  # 60 m to the corner at 8 m/s (7.5 s), then 2.5 s at 5
    assert (m2.x, m2.y, m2.speed, m2.heading) == pytest.approx((100.0, 12.5, 5.0, 0.0))
    m3 = patrol_motion.advance(m2, 60.0)
    assert (m3.x, m3.y, m3.speed) == (100.0, 50.0, 0.0) and m3.arrived


def test_fleet_stays_on_roads_at_realistic_speeds(town: dict[str, Any],
                                                  graph: patrol_roads.RoadGraph) -> None:
    fleet = patrol.Fleet(graph, town["units"], seed=3, now=T0,
                         grids=town["grids"]["features"])
    area_xy = {u.id: {graph.nodes[n] for n in u.area} for u in fleet.units.values()
               if u.area is not None}
    assert len(area_xy) >= 40  # nearly every unit has roads enough in its first-level grid
    top = {"squad": 45 / 3.6, "police": 45 / 3.6, "grid_worker": 15 / 3.6}
    low = {"squad": 25 / 3.6, "police": 25 / 3.6, "grid_worker": 4 / 3.6}
    moved: dict[str, float] = {}
    for k in range(1, 1201):  # 20 minutes in 1 s steps
        before = {u.id: (u.mover.x, u.mover.y) for u in fleet.units.values()}
        fleet.step(T0 + k, 1.0)
        for u in fleet.units.values():  # free patrols keep to roads of their own area
            if u.id in area_xy and u.mover.path is not None:
                assert set(u.mover.path.points) <= area_xy[u.id], (u.id, k)
        if k % 29:
            continue
        for u in fleet.units.values():
            assert _on_graph(graph, u.mover.x, u.mover.y), (u.id, k)
            step = math.dist(before[u.id], (u.mover.x, u.mover.y))
            assert step <= top[u.kind] + 1e-6, (u.id, step)
            assert u.mover.speed == 0 or u.mover.speed <= top[u.kind] + 1e-9
            moved[u.id] = moved.get(u.id, 0.0) + step
            if u.mover.speed:
                # road limits never drop below 30 km/h, so cruise speed is what shows
                assert u.mover.speed >= low[u.kind] - 1e-9
    assert all(v > 0 for v in moved.values())  # every unit patrols
    # patrols stay near home
    for u in fleet.units.values():
        radius = patrol.PATROL_RADIUS_M[u.kind]
        assert math.dist(u.home, (u.mover.x, u.mover.y)) < radius * 2.5


def test_fleet_is_deterministic(town: dict[str, Any], graph: patrol_roads.RoadGraph) -> None:
    def positions(seed: int) -> list[tuple[float, float]]:
        fleet = patrol.Fleet(graph, town["units"], seed=seed, now=T0)
        for k in range(300):
            fleet.step(T0 + k, 1.0)
        return [(u.mover.x, u.mover.y) for u in fleet.units.values()]

    assert positions(4) == positions(4)
    assert positions(4) != positions(5)


def test_send_to_reaches_an_off_road_target(town: dict[str, Any],
                                            graph: patrol_roads.RoadGraph) -> None:
    fleet = patrol.Fleet(graph, town["units"], seed=1, now=T0)
    unit = town["units"][0]["id"]
    target = town["devices"][100]
    length = fleet.send_to(unit, target["lon"], target["lat"])
    assert length >= fleet.distance_m(unit, target["lon"], target["lat"]) - 1e-6
    for k in range(3600):
        fleet.step(T0 + k, 1.0)
        if fleet.distance_m(unit, target["lon"], target["lat"]) <= 30:
            break
    else:
        pytest.fail("unit never arrived")
    for k in range(3600, 3700):  # a sent unit waits there
        fleet.step(T0 + k, 1.0)
    assert fleet.distance_m(unit, target["lon"], target["lat"]) < 1.0
    fleet.release(unit, T0 + 3700)
    fleet.step(T0 + 3701, 5.0)
    assert fleet.units[unit].mode in ("returning", "patrol")


def test_route_between_points_on_one_segment(graph: patrol_roads.RoadGraph) -> None:
    a, b, _ = graph.segments[0]
    (ax, ay), (bx, by) = graph.nodes[a], graph.nodes[b]
    p = (ax + 0.2 * (bx - ax), ay + 0.2 * (by - ay))
    q = (ax + 0.7 * (bx - ax), ay + 0.7 * (by - ay))
    path = graph.route(p, q)
    assert path.length == pytest.approx(0.5 * math.dist((ax, ay), (bx, by)), rel=1e-6)


def test_gps_noise_and_jumps() -> None:
    rng = random.Random(1)
    m = patrol_motion.Mover(0.0, 0.0, cruise=10.0, speed=10.0, heading=45.0)
    errors = []
    for k in range(20_000):
        fix = patrol_motion.gps_fix("PO-01", m, T0 + k, rng)
        x, y = patrol_roads.to_xy(fix.lon, fix.lat)
        errors.append(math.hypot(x, y))
        assert 0 <= (fix.heading or 0) <= 360 and fix.speed >= 0 and fix.acc > 0
    jumps = sum(1 for e in errors if e > 80)
    assert 20 <= jumps <= 70  # ~1 in 500
    normal = sorted(e for e in errors if e <= 80)
    rms = math.sqrt(sum(e * e for e in normal) / len(normal))
    assert 4.0 <= rms <= 6.0
    assert max(errors) <= 300 + 40
    payload = wire.encode_gps(fix.ts, fix.lat, fix.lon, fix.speed, fix.heading, fix.acc)
    assert isinstance(wire.decode(wire.gps_topic("PO-01"), payload, T0 + k), wire.Decoded)


def test_gps_stopped_unit_has_no_heading() -> None:
    fix = patrol_motion.gps_fix("GW-01", patrol_motion.Mover(0.0, 0.0, cruise=1.0), T0,
                                random.Random(2))
    assert fix.speed == 0 and fix.heading is None


def test_due_fixes_every_interval_staggered(town: dict[str, Any],
                                            graph: patrol_roads.RoadGraph) -> None:
    fleet = patrol.Fleet(graph, town["units"], seed=1, now=T0, gps_interval_s=5.0)
    per_tick = []
    counts: Counter[str] = Counter()
    for k in range(1, 61):  # 30 s in 0.5 s ticks
        fixes = fleet.due_fixes(T0 + k * 0.5)
        per_tick.append(len(fixes))
        counts.update(f.unit_id for f in fixes)
    # every unit every 5 s: 6 fixes in 30 s, 7 for those whose phase puts one at both ends
    assert set(counts.values()) <= {6, 7} and len(counts) == len(town["units"])
    assert max(per_tick) <= math.ceil(len(town["units"]) / 10) + 1  # spread out


# ---------------------------------------------------------------- publisher window


def test_window_bounds_outstanding_messages() -> None:
    w = InflightWindow(4)
    assert [w.try_acquire() for _ in range(5)] == [True] * 4 + [False]
    assert w.blocked and w.outstanding == 4 and w.published == 4
    assert w.low_water == 3
    assert w.release() is True  # drained to the low-water mark: wake the publisher
    assert not w.blocked
    assert w.release() is False  # nobody waiting
    assert w.try_acquire() and w.try_acquire() and not w.try_acquire()
    assert w.release("refused") is True
    assert w.release("dropped") is False
    assert (w.published, w.acked, w.refused, w.dropped, w.outstanding) == (5, 2, 1, 1, 2)


def test_window_wakes_only_at_low_water() -> None:
    w = InflightWindow(100)
    while w.try_acquire():
        pass
    wakes = [w.release() for _ in range(100)]
    assert wakes.count(True) == 1 and wakes.index(True) == 100 - w.low_water - 1


def test_window_limits() -> None:
    with pytest.raises(ValueError):
        InflightWindow(0)
    with pytest.raises(ValueError):
        InflightWindow(MAX_WINDOW + 1)
    w = InflightWindow(1)
    with pytest.raises(RuntimeError):
        w.release()


def test_window_follows_the_brokers_receive_maximum() -> None:
    w = InflightWindow(1000)
    w.set_limit(20)  # e.g. Mosquitto's default max_inflight_messages
    assert sum(w.try_acquire() for _ in range(50)) == 20
    assert w.low_water == 15


def test_window_is_thread_safe() -> None:
    w = InflightWindow(MAX_WINDOW)
    for _ in range(40_000):
        assert w.try_acquire()

    def ack(n: int) -> None:
        for _ in range(n):
            w.release()

    threads = [threading.Thread(target=ack, args=(10_000,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert w.outstanding == 0 and w.acked == 40_000


# ---------------------------------------------------------------- run helpers


def test_select_devices(town: dict[str, Any]) -> None:
    devs = town["devices"]
    few = select_devices(devs, 12)
    assert len(few) == 12 and len({d["model"] for d in few}) == 6
    assert len(select_devices(devs, None)) == len(devs)
    many = select_devices(devs, len(devs) + 10)
    ids = [d["id"] for d in many]
    assert len(ids) == len(set(ids)) == len(devs) + 10
    assert all(wire.telemetry_topic(i) for i in ids)


# ---------------------------------------------------------------- crews (fake API, no network)


class FakeHub:
    """The hub's REST surface the crews use, over dispatch.workflow, as an httpx handler."""

    def __init__(self, town: dict[str, Any], unit: str, device: dict[str, Any]) -> None:
        self.units = {u["id"]: {"id": u["id"], "status": "available", "current_incident": None}
                      for u in town["units"]}
        self.units[unit].update(status="dispatched", current_incident=1)
        self.incident = {"id": 1, "lon": device["lon"], "lat": device["lat"],
                         "grid_id": device["grid"], "state": "dispatched",
                         "assigned_unit": unit, "handler": None}
        self.case = workflow.CaseState(state="dispatched")
        self.log: list[tuple[str, str, str | None]] = []
        self.refused: list[str] = []
        self.hooks: dict[str, Any] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "GET" and path == "/api/units":
            return httpx.Response(200, json=list(self.units.values()))
        if request.method == "GET" and path == "/api/incidents":
            open_ = self.incident["state"] not in ("archived", "cancelled")
            return httpx.Response(200, json=[self.incident] if open_ else [])
        if request.method == "GET" and path == "/api/incidents/1":
            return httpx.Response(200, json={"incident": self.incident})
        if request.method == "POST" and path == "/api/incidents/1/actions":
            body = json.loads(request.content)
            assert "actor" not in body  # the hub records the token's principal
            # As the hub does: the actor is who the token is (here the token is the name).
            actor = request.headers["authorization"].removeprefix("Bearer ")
            hook = self.hooks.pop(body["action"], None)
            if hook is not None:
                hook()
            try:
                self.case = workflow.apply(self.case, body["action"], actor, T0,
                                           body.get("reason"))
            except workflow.TransitionError as e:
                self.refused.append(body["action"])
                return httpx.Response(409, json={"error": {"code": e.code,
                                                           "message": e.message}})
            self.log.append((body["action"], actor, body.get("reason")))
            self.incident.update(state=self.case.state, handler=self.case.handler)
            status = UNIT_STATUS_AFTER.get(body["action"])
            unit = self.units[self.incident["assigned_unit"]]
            if status:
                unit["status"] = status
                if status == "available":
                    unit["current_incident"] = None
            return httpx.Response(200, json=self.incident)
        return httpx.Response(404, json={"error": {"code": "not_found", "message": path}})


async def _run_crews(town: dict[str, Any], graph: patrol_roads.RoadGraph, hub: FakeHub,
                     timing: CrewTiming, until: Any, setup: Any = None
                     ) -> tuple[Crews, patrol.Fleet]:
    fleet = patrol.Fleet(graph, town["units"], seed=1, now=T0)
    crews = Crews("http://hub", fleet, seed=1, timing=timing, poll_s=0.005, backoff_s=0.02,
                  transport=httpx.MockTransport(hub), token="ops-token",
                  field_token="crews-token")
    if setup is not None:
        setup(crews)
    task = asyncio.create_task(crews.run())
    try:
        for k in range(4000):
            fleet.step(T0 + 20 * k, 20.0)  # fast forward: 20 s of driving per tick
            if until():
                break
            await asyncio.sleep(0.002)
        else:
            pytest.fail(f"the crew did not finish: {hub.log[:12]}")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return crews, fleet


FAST = CrewTiming(speed=2000.0, decline_p=0.0, verify_fail_p=0.0, late_p=0.0)


async def test_crew_closes_the_loop(town: dict[str, Any], graph: patrol_roads.RoadGraph) -> None:
    device = town["devices"][40]
    hub = FakeHub(town, "SQ-01", device)
    crews, fleet = await _run_crews(town, graph, hub, FAST,
                                    lambda: hub.incident["state"] == "archived")
    actions = [a for a, _, _ in hub.log]
    assert actions == ["accept", "start_handling", "give_feedback", "verify_ok", "close",
                       "evaluate", "archive"]
    actors = {a: who for a, who, _ in hub.log}
    # the crew's own steps under the crews' token, verification and closing under the
    # other one: the hub refuses verification by the principal that handled the case
    assert actors["accept"] == actors["start_handling"] == actors["give_feedback"] \
        == "crews-token"
    assert actors["verify_ok"] == actors["close"] == actors["archive"] == "ops-token"
    assert not hub.refused and crews.conflicts == 0
    assert crews.actions["accept"] == 1
    assert fleet.units["SQ-01"].mode in ("returning", "patrol", "dwell")  # released


async def test_crew_reworks_after_failed_verification(town: dict[str, Any],
                                                      graph: patrol_roads.RoadGraph) -> None:
    hub = FakeHub(town, "PO-03", town["devices"][7])
    timing = dataclasses.replace(FAST, verify_fail_p=1.0)

    def fail_once(crews: Crews) -> None:  # the second verification passes
        hub.hooks["verify_fail"] = lambda: setattr(crews, "timing", FAST)

    await _run_crews(town, graph, hub, timing, lambda: hub.incident["state"] == "archived",
                     setup=fail_once)
    actions = [a for a, _, _ in hub.log]
    assert actions == ["accept", "start_handling", "give_feedback", "verify_fail",
                       "give_feedback", "verify_ok", "close", "evaluate", "archive"]
    assert next(r for a, _, r in hub.log if a == "verify_fail")  # with a reason
    assert hub.case.rework_count == 1


async def test_crew_declines_with_a_reason(town: dict[str, Any],
                                           graph: patrol_roads.RoadGraph) -> None:
    hub = FakeHub(town, "GW-05", town["devices"][3])
    timing = dataclasses.replace(FAST, decline_p=1.0)
    await _run_crews(town, graph, hub, timing, lambda: hub.incident["state"] == "registered")
    assert [a for a, _, _ in hub.log] == ["decline"]
    assert hub.log[0][1] == "crews-token" and hub.log[0][2]


async def test_crew_survives_someone_else_moving_the_case(
        town: dict[str, Any], graph: patrol_roads.RoadGraph) -> None:
    hub = FakeHub(town, "SQ-04", town["devices"][60])

    def operator_starts_handling() -> None:  # the operator was faster than the app
        hub.case = workflow.apply(hub.case, "start_handling", "operator-1", T0)
        hub.incident["state"] = hub.case.state

    hub.hooks["start_handling"] = operator_starts_handling
    crews, _ = await _run_crews(town, graph, hub, FAST,
                                lambda: hub.incident["state"] == "archived")
    assert hub.refused == ["start_handling"] and crews.conflicts == 1
    assert [a for a, _, _ in hub.log][-4:] == ["verify_ok", "close", "evaluate", "archive"]
    assert "give_feedback" in [a for a, _, _ in hub.log]


async def test_crews_wait_while_the_hub_is_down(town: dict[str, Any],
                                                graph: patrol_roads.RoadGraph) -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    fleet = patrol.Fleet(graph, town["units"], seed=1, now=T0)
    crews = Crews("http://hub", fleet, poll_s=0.005, transport=httpx.MockTransport(down))
    task = asyncio.create_task(crews.run())
    await asyncio.sleep(0.05)
    assert not task.done()  # still polling, never raised
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def test_fleet_resumes_from_known_positions(town: dict[str, Any],
                                            graph: patrol_roads.RoadGraph) -> None:
    somewhere = town["devices"][5]
    fleet = patrol.Fleet(graph, town["units"], seed=2, now=T0,
                         positions={"SQ-02": (somewhere["lon"], somewhere["lat"])})
    u = fleet.units["SQ-02"]
    here = graph.nearest(*patrol_roads.to_xy(somewhere["lon"], somewhere["lat"]))
    assert math.dist((u.mover.x, u.mover.y), (here.x, here.y)) < 400  # snapped to a node
    start = town["units"][next(k for k, x in enumerate(town["units"]) if x["id"] == "SQ-02")]
    assert math.dist(u.home, patrol_roads.to_xy(start["lon"], start["lat"])) < 1.0  # home kept
