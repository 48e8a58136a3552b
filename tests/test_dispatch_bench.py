"""The dispatch quality benchmark (simulators/bench/dispatch_*.py): pure, no services."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from dispatch.geo import RoadGraph
from dispatch.model import DispatchPolicy
from simulators.bench import dispatch_bench as bench
from simulators.bench import dispatch_modes, dispatch_sim, dispatch_town, dispatch_workload
from simulators.bench.dispatch_sim import TURNOUT_S, Simulation
from simulators.bench.dispatch_town import Town, UnitSpec
from simulators.bench.dispatch_workload import NFPA_ARRIVE_S, T0, TOWNSHIP_ARRIVE_S, Incident

# A straight east-west road of ~1.9 km at 36 km/h, no devices: small enough to reason about.
WEST, MID, EAST, LAT = 120.40, 120.41, 120.42, 31.80


def _road_town(*units: UnitSpec) -> Town:
    road = {
        "type": "FeatureCollection",
        "features": [{
            "type": "Feature",
            "properties": {"id": "R1", "name": "R1", "class": "local", "speed_kmh": 36},
            "geometry": {"type": "LineString",
                         "coordinates": [[WEST, LAT], [MID, LAT], [EAST, LAT]]},
        }],
    }  # fmt: skip
    return Town(RoadGraph.from_geojson(road), units, (), ())


def _unit(uid: str, lon: float, quals: tuple[str, ...] = ("city_management",)) -> UnitSpec:
    return UnitSpec(uid, "squad", frozenset(quals), "G1", lon, LAT)


def _incident(iid: str, lon: float, at: float, priority: int = 3,
              handling_s: float = 600.0, qual: str = "city_management") -> Incident:
    return Incident(iid, qual, qual, priority, lon, LAT, "G1", T0 + at, handling_s)


@pytest.fixture(scope="module")
def town() -> Town:
    return dispatch_town.load_town()


# ---------------------------------------------------------------------- accounting
@pytest.mark.parametrize("policy", ["closest_idle", "engine"])
def test_a_queued_incident_counts_its_wait(policy: str) -> None:
    """One unit, two incidents: the second waits for the first to be handled, and its
    response time is the wait + turnout + the drive from where the unit finished."""
    mini = _road_town(_unit("U1", WEST))
    a = _incident("A", EAST, 0.0, handling_s=600.0)
    b = _incident("B", MID, 100.0, handling_s=300.0)
    result = Simulation(mini, (a, b), policy).run()

    g = mini.graph
    a_arrives = TURNOUT_S + g.travel_time_s(WEST, LAT, EAST, LAT)
    b_arrives = a_arrives + 600.0 + TURNOUT_S + g.travel_time_s(EAST, LAT, MID, LAT)
    assert result.response_s == pytest.approx((a_arrives, b_arrives - 100.0))
    assert result.queued == (False, True)
    assert result.preemptions == 0
    # Busy from the first dispatch to the end; the unit never idled in between.
    assert result.end_s == pytest.approx(b_arrives + 300.0)
    assert result.utilisation == pytest.approx(1.0)


def test_closest_idle_serves_the_queue_by_priority_then_age() -> None:
    mini = _road_town(_unit("U1", WEST))
    first = _incident("A", WEST, 0.0, handling_s=600.0)
    old_low = _incident("B", EAST, 10.0, priority=4)
    new_high = _incident("C", EAST, 20.0, priority=2)
    result = Simulation(mini, (first, old_low, new_high), "closest_idle").run()
    # C (p2) is reached before B (p4) although B waited longer.
    assert result.response_s[2] + 20.0 < result.response_s[1] + 10.0


def test_engine_diverts_an_en_route_unit_and_requeues_the_displaced_case() -> None:
    """A critical incident takes the only unit off its drive to a normal one; the
    displaced case is reached after the critical one is handled, and its response time
    runs from its own opening."""
    mini = _road_town(_unit("U1", WEST))
    normal = _incident("A", EAST, 0.0, priority=3, handling_s=600.0)
    critical = _incident("C", MID, 120.0, priority=1, handling_s=300.0)
    g = mini.graph
    leg = g.travel_time_s(WEST, LAT, EAST, LAT)
    assert leg > 60.0  # still driving when the critical call comes in

    result = Simulation(mini, (normal, critical), "engine").run()
    assert result.preemptions == 1
    # At t=120 the unit has driven 60 s of its leg (after 60 s of turnout).
    lon_at = WEST + (EAST - WEST) * (120.0 - TURNOUT_S) / leg
    c_arrives = 120.0 + g.travel_time_s(lon_at, LAT, MID, LAT)  # already moving: no turnout
    a_arrives = c_arrives + 300.0 + TURNOUT_S + g.travel_time_s(MID, LAT, EAST, LAT)
    assert result.response_s == pytest.approx((a_arrives, c_arrives - 120.0))

    # The baseline never diverts: the critical incident waits for the normal one.
    base = Simulation(mini, (normal, critical), "closest_idle").run()
    assert base.preemptions == 0
    assert base.response_s[1] > result.response_s[1]


def test_engine_prefers_a_free_unit_to_a_diversion() -> None:
    mini = _road_town(_unit("U1", WEST), _unit("U2", MID))
    normal = _incident("A", EAST, 0.0, priority=3)
    critical = _incident("C", MID, 1.0, priority=1)
    result = Simulation(mini, (normal, critical), "engine").run()
    assert result.preemptions == 0


def test_breaches_count_against_the_limits_of_each_priority() -> None:
    stream = (
        _incident("A", WEST, 0.0, priority=1),
        _incident("B", WEST, 0.0, priority=1),
        _incident("C", WEST, 0.0, priority=3),
    )
    result = dispatch_sim.RunResult("engine", (1199.0, 1201.0, 1801.0), (False, False, True), 0,
                             (1.0,), 0.5, 3600.0)
    out = bench.summarise(result, stream, TOWNSHIP_ARRIVE_S, {"nfpa": NFPA_ARRIVE_S})
    assert out["breaches"] == 1  # p1: 20 min; p3: 24 h
    assert out["breach_share"] == pytest.approx(1 / 3, abs=1e-4)
    assert out["by_priority"]["1"]["breach_share"] == 0.5
    assert out["by_priority"]["3"]["breach_share"] == 0.0
    assert out["breach_share_nfpa"] == 1.0  # p1: 10 min; p3: 30 min
    assert out["queued_share"] == pytest.approx(1 / 3, abs=1e-4)
    assert out["mean_response_s"] == pytest.approx((1199 + 1201 + 1801) / 3, abs=0.1)


# ---------------------------------------------------------------------- the demo town
def test_stream_is_seeded_and_independent_of_the_roster(town: Town) -> None:
    one = dispatch_workload.make_stream(town, 7, 3.0, 30.0)
    assert one == dispatch_workload.make_stream(town, 7, 3.0, 30.0)
    assert one != dispatch_workload.make_stream(town, 8, 3.0, 30.0)
    scaled = dataclasses.replace(
        town, units=dispatch_town.scale_units(town.units, 90, town.vertices, 7))
    assert one == dispatch_workload.make_stream(scaled, 7, 3.0, 30.0)
    assert all(T0 <= i.opened_at < T0 + 3 * 3600 for i in one)
    assert [i.opened_at for i in one] == sorted(i.opened_at for i in one)
    assert {i.priority for i in one} <= {1, 2, 3, 4}
    known = {c.name: c.qualification for c in dispatch_workload.CATEGORIES}
    assert all(known[i.category] == i.qualification for i in one)


def test_categories_are_a_distribution_with_few_critical() -> None:
    assert sum(c.share for c in dispatch_workload.CATEGORIES) == pytest.approx(1.0)
    critical = sum(c.share * c.priorities[0] / sum(c.priorities)
                   for c in dispatch_workload.CATEGORIES)
    assert 0.02 < critical < 0.10
    assert sum(dispatch_workload.DIURNAL) == pytest.approx(24.0)


def test_every_category_has_a_qualified_unit_and_places(town: Town) -> None:
    held = set().union(*(u.qualifications for u in town.units))
    assert {c.qualification for c in dispatch_workload.CATEGORIES} <= held
    assert len(town.units) == 45 and len(town.vertices) > 500
    assert all(v.grid and v.zone for v in town.vertices)


def test_units_scale_adds_jittered_copies(town: Town) -> None:
    units = dispatch_town.scale_units(town.units, 100, town.vertices, 3)
    assert len(units) == 100 and len({u.id for u in units}) == 100
    assert units[:45] == town.units
    copy = units[45]
    assert copy.id == f"{town.units[0].id}~2"
    assert copy.qualifications == town.units[0].qualifications
    assert (copy.lon, copy.lat) != (town.units[0].lon, town.units[0].lat)
    assert units == dispatch_town.scale_units(town.units, 100, town.vertices, 3)


def _without_timings(out: dict[str, Any]) -> dict[str, Any]:
    return {
        k: {kk: vv for kk, vv in v.items() if not kk.startswith("decision_")}
        if isinstance(v, dict) else v
        for k, v in out.items()
        if not k.startswith("decision_")
    }


def test_a_small_run_is_deterministic_and_both_policies_see_the_same_stream(
    town: Town,
) -> None:
    stream = dispatch_workload.make_stream(town, 5, 4.0, 40.0)
    first = bench.compare(town, stream)
    again = bench.compare(town, dispatch_workload.make_stream(town, 5, 4.0, 40.0))
    assert _without_timings(first) == _without_timings(again)
    ci, eng = first["closest_idle"], first["engine"]
    assert ci["incidents"] == eng["incidents"] == len(stream) > 30
    for p in "1234":
        assert ci["by_priority"][p]["incidents"] == eng["by_priority"][p]["incidents"]
    assert ci["preemptions"] == 0
    for fig in (ci, eng):
        assert 0 < fig["p50_response_s"] <= fig["p90_response_s"]
        assert 0.0 <= fig["breach_share"] <= fig["breach_share_nfpa"] <= 1.0
        assert 0.0 < fig["utilisation"] <= 1.0
    assert first["mean_response_change"] == pytest.approx(
        (eng["mean_response_s"] - ci["mean_response_s"]) / ci["mean_response_s"], abs=1e-4)


def test_latency_scenario_reports_percentiles(town: Town) -> None:
    out = bench.latency_scenario(town, 1, n_units=60, n_open=40, decisions=5)
    assert 0 < out["decision_300x200_p50_ms"] <= out["decision_300x200_p99_ms"]
    assert out["decision_300x200_cpu_p99_ms"] > 0


# ---------------------------------------------------------------------- CLI
def test_policy_overrides() -> None:
    policy = bench._policy_with(["preempt_penalty_s=30", "priority_weights=9,3,2,1",
                                 "dispatch_returning=yes"])
    assert policy.preempt_penalty_s == 30.0
    assert policy.priority_weights == (9.0, 3.0, 2.0, 1.0)
    assert policy.dispatch_returning is True
    assert policy.preempt_up_to_priority == dispatch_sim.BENCH_POLICY.preempt_up_to_priority
    with pytest.raises(SystemExit):
        bench._policy_with(["no_such_knob=1"])
    assert isinstance(dispatch_sim.BENCH_POLICY, DispatchPolicy)


def test_main_prints_one_json_object_last(capsys: pytest.CaptureFixture[str]) -> None:
    assert dispatch_modes.main(["--seed", "3", "--hours", "2", "--rate", "20",
                       "--latency-decisions", "3", "--limits", "nfpa"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    out = json.loads(lines[-1])
    for policy in ("closest_idle", "engine"):
        assert {"mean_response_s", "p90_response_s", "breach_share"} <= set(out[policy])
        assert "breach_share_township" in out[policy]
    for key in ("decision_p99_ms", "decision_300x200_p99_ms", "breach_reduction",
                "mean_response_change", "seed"):
        assert key in out
    assert out["seed"] == 3 and out["limits"] == "nfpa"


def test_a_timed_decisions_gaps_add_up_to_its_latency() -> None:
    """``hub_decision_timeline_ms``: the gaps of one timed decision, from the leader's
    stamps (``Dispatcher.timeline``, the report's ``sent``, the decision's marks), add up
    to t1 - t0; the notification may come before t0 (a negative first gap); the garbage
    collections inside are reported beside them, not added."""
    from simulators.bench.dispatch_latency import GAPS, timeline_gaps

    t0 = 100.0
    tl = {"received": 99.9995, "woke": 100.0002, "event": 100.0003, "gc": 0.0015,
          "marks": [100.0004, 100.0010, 100.0060, 100.0110, 100.0170, 100.0180],
          "done": 100.0181, "sent": 100.0182, "t1": 100.0190}
    gaps = timeline_gaps(t0, tl)
    assert list(gaps) == [*GAPS, "gc_in_leader"]
    assert sum(gaps[k] for k in GAPS) == pytest.approx((tl["t1"] - t0) * 1e3)
    assert gaps["notify"] == pytest.approx(-0.5)
    assert gaps["state"] == pytest.approx(5.0) and gaps["writes"] == pytest.approx(6.0)
    assert gaps["gc_in_leader"] == pytest.approx(1.5)
