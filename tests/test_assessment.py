"""Assessment figures and patrol statistics (dispatch/assessment.py): pure, table-driven."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from dispatch.assessment import (
    CaseFacts,
    PatrolSettings,
    assess,
    empty_group,
    facts_from_log,
    patrol_stats,
    percentile,
    resolve_deadline,
)
from dispatch.sla import DEFAULT_CALENDAR, SlaTable

CST = timezone(timedelta(hours=8))
T0 = datetime(2025, 1, 6, 9, 0, tzinfo=CST).timestamp()  # a Monday, 09:00
H = 3600.0
MIN = 60.0


# ---------------------------------------------------------------- percentiles
@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([], 50, None),
        ([5.0], 90, 5.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
        ([1.0, 2.0, 3.0, 4.0], 90, 3.7),
        ([4.0, 1.0, 3.0, 2.0], 0, 1.0),
        ([4.0, 1.0, 3.0, 2.0], 100, 4.0),
        ([600.0, 1200.0, 1800.0], 90, 1680.0),
        (list(map(float, range(1, 101))), 90, 90.1),
    ],
)
def test_percentile(values: list[float], q: float, expected: float | None) -> None:
    got = percentile(values, q)
    assert got == pytest.approx(expected) if expected is not None else got is None


# ---------------------------------------------------------------- facts from a case log
def entry(action: str, actor: str, dt: float, reason: str | None = None) -> dict[str, object]:
    return {"action": action, "actor": actor, "ts": T0 + dt, "reason": reason}


CASE_LOG = [
    entry("report", "hotline:12345", 0),
    entry("register", "operator:li", 0),
    entry("dispatch", "system:dispatch", 30),
    entry("decline", "SQ-02", 60, "车辆故障"),
    entry("dispatch", "system:dispatch", 90),
    entry("accept", "SQ-01", 120),
    entry("start_handling", "SQ-01", 600),
    entry("request_extension", "SQ-01", 700, "需协调环保部门"),
    entry("approve_extension", "supervisor:wang", 800),
    entry("give_feedback", "SQ-01", 4000),
    entry("verify_fail", "gridworker:G01-02", 4100, "现场未整改"),
    entry("give_feedback", "SQ-01", 5000),
    entry("verify_ok", "gridworker:G01-02", 5100),
    entry("close", "operator:li", 5200),
]
INCIDENT = {"id": 7, "opened_at": T0, "category": "noise", "priority": 2, "state": "closed",
            "grid_id": "G01-02", "grid1": "G01", "unit": "SQ-01"}


def test_facts_from_log() -> None:
    f = facts_from_log(INCIDENT, CASE_LOG)
    assert f == CaseFacts(
        incident_id="7", opened_at=T0, category="noise", priority=2, state="closed",
        grid="G01-02", grid1="G01", unit="SQ-01", officer="SQ-01",
        dispatched_at=T0 + 30, accepted_at=T0 + 120, arrived_at=T0 + 600,
        closed_at=T0 + 5200, rework_count=1, extension_count=1,
        pauses=((T0 + 800, T0 + 4000),))
    # Priority 2 resolves within 24 wall-clock hours, plus the 3200 s the extension paused.
    assert resolve_deadline(f, SlaTable(), DEFAULT_CALENDAR) == T0 + 24 * H + 3200


@pytest.mark.parametrize(
    ("log", "officer"),
    [
        ([], None),
        ([entry("report", "op", 0), entry("register", "op", 0),
          entry("give_feedback", "GW-01", 10)], None),  # illegal: the log does not replay
        (CASE_LOG[:6], "SQ-01"),
    ],
)
def test_facts_from_partial_logs(log: list[dict[str, object]], officer: str | None) -> None:
    f = facts_from_log({**INCIDENT, "state": "handling"}, log)
    assert f.pauses == ()
    if officer is None and log:
        assert f.officer == "GW-01"  # no accept: who gave feedback
    else:
        assert f.officer == officer


# ---------------------------------------------------------------- group figures
def case(cid: str, **kw: object) -> CaseFacts:
    base: dict[str, object] = {"incident_id": cid, "opened_at": T0, "category": "fire_risk",
                               "priority": 1, "state": "closed", "grid": "G01-01",
                               "grid1": "G01", "unit": "SQ-01", "officer": "SQ-01"}
    base.update(kw)
    return CaseFacts(**base)  # type: ignore[arg-type]


NOW = T0 + 6 * H
# Priority 1 must be resolved within 4 wall-clock hours of opening.
CASES = [
    case("c1", accepted_at=T0 + 3 * MIN, arrived_at=T0 + 10 * MIN, closed_at=T0 + 2 * H),
    case("c2", accepted_at=T0 + 5 * MIN, arrived_at=T0 + 20 * MIN, closed_at=T0 + 5 * H),
    case("c3", state="handling", accepted_at=T0 + 1 * MIN),  # open and overdue at NOW
    case("c4", state="dispatched", opened_at=NOW - H, unit=None, officer=None),  # not yet due
    case("c5", state="cancelled", unit="SQ-02", officer="SQ-02"),
    case("c6", state="shelved", pauses=((T0 + H, None),)),  # clock stopped: never due
    case("c7", grid="G01-02", unit="SQ-02", officer="SQ-02", accepted_at=T0 + 7 * MIN,
         arrived_at=T0 + 30 * MIN, closed_at=T0 + 5 * H, rework_count=2, extension_count=1,
         pauses=((T0 + H, T0 + 3 * H),)),  # a 2 h extension moves the deadline to T0 + 6 h
]


def test_all_figures() -> None:
    [g] = assess(CASES, "all", now=NOW)
    assert (g.cases, g.cancelled, g.closed, g.due, g.on_time) == (6, 1, 3, 4, 2)
    assert g.closure_rate == pytest.approx(3 / 6)
    assert g.on_time_rate == pytest.approx(2 / 4)
    assert (g.rework_cases, g.reworks, g.rework_rate) == (1, 2, pytest.approx(1 / 6))
    assert (g.extension_cases, g.extensions) == (1, 1)
    assert g.extension_rate == pytest.approx(1 / 6)
    assert (g.response_n, g.response_p50_s, g.response_p90_s) == (3, 1200.0,
                                                                 pytest.approx(1680.0))
    assert (g.accept_n, g.accept_p50_s) == (4, 240.0)


@pytest.mark.parametrize(
    ("by", "expected"),
    [
        # key: (cases, closed, due, on_time)
        ("grid", {"G01-01": (5, 2, 3, 1), "G01-02": (1, 1, 1, 1)}),
        ("grid1", {"G01": (6, 3, 4, 2)}),
        ("unit", {"SQ-01": (4, 2, 3, 1), "SQ-02": (1, 1, 1, 1), None: (1, 0, 0, 0)}),
        ("officer", {"SQ-01": (4, 2, 3, 1), "SQ-02": (1, 1, 1, 1), None: (1, 0, 0, 0)}),
    ],
)
def test_grouping(by: str, expected: dict[str | None, tuple[int, int, int, int]]) -> None:
    groups = assess(CASES, by, now=NOW)
    assert [g.key for g in groups] == list(expected)  # sorted, None last
    assert {g.key: (g.cases, g.closed, g.due, g.on_time) for g in groups} == expected


def test_sq02_counts_its_cancelled_case_apart() -> None:
    sq02 = next(g for g in assess(CASES, "unit", now=NOW) if g.key == "SQ-02")
    assert (sq02.cases, sq02.cancelled, sq02.closure_rate, sq02.on_time_rate) == (1, 1, 1.0, 1.0)


@pytest.mark.parametrize(
    ("cases", "field", "value"),
    [
        ([], "closure_rate", None),
        ([case("x", state="cancelled")], "closure_rate", None),
        ([case("x", state="handling", opened_at=NOW - MIN)], "on_time_rate", None),
        ([case("x", closed_at=T0 + H, resolve_deadline=T0 + 30 * MIN)], "on_time_rate", 0.0),
        ([case("x", state="archived", closed_at=T0 + H)], "closure_rate", 1.0),
        ([case("x", arrived_at=None)], "response_p50_s", None),
    ],
)
def test_edge_rates(cases: list[CaseFacts], field: str, value: float | None) -> None:
    groups = assess(cases, "all", now=NOW)
    stats = groups[0] if groups else empty_group("all")
    assert getattr(stats, field) == value


def test_working_time_deadline() -> None:
    # Priority 3: three working days (27 h of 08:30-17:30) from Monday 09:00: 8.5 h on
    # Monday, 9 on Tuesday, 9 on Wednesday, the last 0.5 h on Thursday: due Thursday 09:00.
    c = case("w", priority=3, closed_at=datetime(2025, 1, 9, 8, 50, tzinfo=CST).timestamp())
    [g] = assess([c], "all", now=NOW)
    assert g.on_time == 1
    late = replace(c, closed_at=datetime(2025, 1, 9, 9, 10, tzinfo=CST).timestamp())
    assert assess([late], "all", now=NOW)[0].on_time == 0


def test_unknown_grouping() -> None:
    with pytest.raises(ValueError, match="grouping"):
        assess(CASES, "district", now=NOW)


# ---------------------------------------------------------------- patrol
R = 6_371_008.8
LAT0, LON0 = 31.8, 120.43
M_PER_DEG = R * math.pi / 180


def at(t: float, x: float, y: float, acc: float | None = 5.0) -> tuple[float, float, float,
                                                                      float | None]:
    """A fix ``x`` m east and ``y`` m north of the origin at time ``T0 + t``."""
    return (T0 + t, LON0 + x / (M_PER_DEG * math.cos(math.radians(LAT0))),
            LAT0 + y / M_PER_DEG, acc)


def line(t0: float, p0: tuple[float, float], p1: tuple[float, float], speed: float,
         every: float = 5.0) -> list[tuple[float, float, float, float | None]]:
    length = math.dist(p0, p1)
    n = round(length / (speed * every))
    return [at(t0 + k * every, p0[0] + (p1[0] - p0[0]) * k / n,
               p0[1] + (p1[1] - p0[1]) * k / n) for k in range(n + 1)]


def parked(t0: float, x: float, y: float, seconds: float, noise: float, seed: int,
           every: float = 10.0) -> list[tuple[float, float, float, float | None]]:
    rng = random.Random(seed)
    # noise: metres of horizontal error (about 1 sigma per axis / sqrt 2)
    return [at(t0 + k * every, x + rng.gauss(0, noise / math.sqrt(2)),
               y + rng.gauss(0, noise / math.sqrt(2)), noise)
            for k in range(int(seconds / every))]


ORIGIN_PARKED = parked(0, 0, 0, H, 10.0, seed=1)
ROUTE = line(0, (0, 0), (2000, 0), speed=10.0)  # 2 km east at 36 km/h
L_ROUTE = (line(0, (0, 0), (1000, 0), 10.0)
           + parked(105, 1000, 0, 300, 5.0, seed=2, every=5.0)
           + line(405, (1000, 0), (1000, 1000), 10.0)[1:])
JUMPED = [*ROUTE[:20], at(ROUTE[20][0] - T0 - 2, 5000, 5000), *ROUTE[20:]]
GAPPED = line(0, (0, 0), (1000, 0), 10.0) + line(1900, (4000, 0), (5000, 0), 10.0)
BAD_START = [at(-20, 30_000, 0), *ROUTE]
INACCURATE = ROUTE + [at(t, 300.0 * k, 400, acc=500.0) for k, t in enumerate(range(1, 200, 10))]
WALK = line(0, (0, 0), (840, 0), speed=1.4)


@pytest.mark.parametrize(
    ("fixes", "km", "tol_km", "stops", "trips", "jumps", "why"),
    [
        ([], 0.0, 0.0, 0, 0, 0, "no track"),
        (ORIGIN_PARKED, 0.0, 0.0, 1, 0, 0, "a parked phone with 10 m noise adds nothing"),
        (ROUTE, 2.0, 0.001, 0, 1, 0, "a known straight route"),
        (L_ROUTE, 2.0, 0.04, 1, 2, 0, "two legs with a 5 min stop at the corner"),
        (JUMPED, 2.0, 0.001, 0, 1, 1, "one fix 5 km away is dropped"),
        (BAD_START, 2.0, 0.001, 0, 1, 0, "a bogus first fix: the track restarts on the route"),
        (GAPPED, 2.0, 0.001, 0, 2, 0, "no distance across a 25 min silence"),
        (INACCURATE, 2.0, 0.001, 0, 1, 0, "cell-tower fixes are ignored"),
        (WALK, 0.84, 0.02, 0, 1, 0, "a foot patrol's 7 m steps add up"),
    ],
)
def test_patrol_stats(fixes: list[tuple[float, float, float, float | None]], km: float,
                      tol_km: float, stops: int, trips: int, jumps: int, why: str) -> None:
    s = patrol_stats(fixes)
    assert s.distance_m / 1000 == pytest.approx(km, abs=tol_km), why
    assert (s.stops, s.trips, s.dropped_jumps) == (stops, trips, jumps), why
    assert s.duty_s == pytest.approx(s.moving_s + s.stopped_s)


def test_patrol_times() -> None:
    s = patrol_stats(L_ROUTE)
    assert s.duty_s == pytest.approx(L_ROUTE[-1][0] - L_ROUTE[0][0])
    assert s.stopped_s == pytest.approx(300, abs=15)
    g = patrol_stats(GAPPED)
    assert (g.sessions, g.duty_s) == (2, pytest.approx(200.0))  # two 100 s legs, gap excluded
    p = patrol_stats(ORIGIN_PARKED)
    assert p.moving_s == 0 and p.stopped_s == pytest.approx(H - 10)
    assert patrol_stats(INACCURATE).dropped_inaccurate == 20


def test_patrol_input_order_and_duplicates_do_not_matter() -> None:
    shuffled = list(L_ROUTE) + L_ROUTE[:10]
    random.Random(3).shuffle(shuffled)
    assert patrol_stats(shuffled) == patrol_stats(L_ROUTE)


@pytest.mark.parametrize(
    ("cfg", "min_km", "why"),
    [
        (PatrolSettings(stop_radius_m=None, jitter_radius_m=None), 3.0,
         "without filters a parked phone's noise is kilometres"),
        (PatrolSettings(stop_radius_m=None), 0.1, "jitter filter alone leaves some drift"),
    ],
)
def test_filters_can_be_turned_off(cfg: PatrolSettings, min_km: float, why: str) -> None:
    assert patrol_stats(ORIGIN_PARKED, cfg).distance_m / 1000 > min_km, why


def test_jump_filter_off_counts_the_jump() -> None:
    s = patrol_stats(JUMPED, PatrolSettings(max_speed_kmh=None))
    assert s.distance_m > 12_000 and s.dropped_jumps == 0
