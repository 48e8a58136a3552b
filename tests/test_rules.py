"""Rule evaluation (pure): every kind, table-driven, plus the restart and ordering contracts."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest

from ingest import rules
from ingest.rules import INITIAL, Polygon, Rule, RuleError, RuleState

DATA = Path(__file__).resolve().parents[1] / "simulators" / "data"


def rule(kind: str, metric: str | None = "m", **params: Any) -> Rule:
    return Rule(id=f"r_{kind}", name=f"test {kind}", kind=kind, metric=metric,
                device_model=None, params=params)


def run(r: Rule, readings: list[tuple[float, float]], state: RuleState = INITIAL
        ) -> tuple[RuleState, list[str | None]]:
    out: list[str | None] = []
    for ts, value in readings:
        state, verdict = rules.evaluate(r, state, value, ts)
        out.append(verdict)
    return state, out


R, C = "raise", "clear"
TH: dict[str, Any] = {"raise_above": 25.0, "clear_below": 10.0}

# (id, kind, params, [(ts, value)], [verdict per reading])
CASES: list[tuple[str, str, dict[str, Any], list[tuple[float, float]], list[str | None]]] = [
    # threshold: hysteresis, exactly at the limits
    ("th-at-raise-limit", "threshold", TH, [(0, 24.99), (1, 25.0)], [None, R]),
    ("th-band-holds", "threshold", TH,
     [(0, 30), (1, 15), (2, 26), (3, 10.0), (4, 9.99)], [R, None, None, None, C]),
    ("th-band-does-not-raise", "threshold", TH, [(0, 24), (1, 11), (2, 9), (3, 24.9)],
     [None, None, None, None]),
    ("th-no-repeat", "threshold", TH, [(0, 30), (1, 40), (2, 30)], [R, None, None]),
    ("th-refire-after-clear", "threshold", TH, [(0, 30), (1, 5), (2, 30)], [R, C, R]),
    ("th-no-band", "threshold", {"raise_above": 5}, [(0, 5), (1, 5), (2, 4.99), (3, 5)],
     [R, None, C, R]),
    ("th-below", "threshold", {"raise_below": 10.0, "clear_above": 20.0},
     [(0, 10.01), (1, 10.0), (2, 20.0), (3, 20.01)], [None, R, None, C]),
    ("th-clear-after", "threshold", {**TH, "clear_after_s": 60},
     [(0, 30), (10, 5), (60, 5), (65, 15), (70, 5), (129, 5), (130, 5)],
     [R, None, None, None, None, None, C]),
    ("th-clear-after-reraise-resets", "threshold", {**TH, "clear_after_s": 60},
     [(0, 30), (10, 5), (20, 30), (71, 5), (130, 5), (131, 5)],
     [R, None, None, None, None, C]),
    # duration, instant mode
    ("du-exact-boundary", "duration", {"raise_above": 25, "for_s": 300},
     [(0, 30), (100, 30), (299, 30), (300, 30), (400, 30)], [None, None, None, R, None]),
    ("du-reset-by-low", "duration", {"raise_above": 25, "for_s": 300},
     [(0, 30), (200, 20), (300, 30), (599, 30), (600, 30)], [None, None, None, None, R]),
    ("du-low-at-deadline", "duration", {"raise_above": 25, "for_s": 300},
     [(0, 30), (300, 24), (301, 30)], [None, None, None]),
    ("du-band-keeps-pending", "duration", {"raise_above": 25, "clear_below": 20, "for_s": 300},
     [(0, 30), (100, 22), (300, 30)], [None, None, R]),
    ("du-band-does-not-start", "duration", {"raise_above": 25, "clear_below": 20, "for_s": 300},
     [(0, 22), (300, 22), (301, 30), (600, 30), (601, 30)], [None, None, None, None, R]),
    ("du-clear-and-again", "duration", {"raise_above": 25, "for_s": 60},
     [(0, 30), (60, 30), (61, 24.9), (62, 30), (121, 30), (122, 30)],
     [None, R, C, None, None, R]),
    ("du-zero", "duration", {"raise_above": 25, "for_s": 0}, [(0, 25)], [R]),
    ("du-below", "duration", {"raise_below": 1.0, "clear_above": 2.0, "for_s": 10},
     [(0, 1.0), (10, 0.5), (11, 1.5), (12, 2.5)], [None, R, None, C]),
    ("du-clear-after", "duration", {"raise_above": 25, "for_s": 10, "clear_after_s": 30},
     [(0, 30), (10, 30), (20, 1), (49, 1), (50, 1)], [None, R, None, None, C]),
    # duration, mean mode (4 buckets of 100 s)
    ("mean-coverage", "duration",
     {"mode": "mean", "raise_above": 75, "window_s": 400, "bucket_s": 100},
     [(0, 80), (50, 80), (100, 80), (150, 80), (200, 80), (250, 80), (300, 80), (350, 0)],
     [None, None, None, None, None, None, R, C]),
    ("mean-window-slides", "duration",
     {"mode": "mean", "raise_above": 60, "window_s": 400, "bucket_s": 100, "min_buckets": 1},
     [(0, 200), (100, 0), (200, 0), (300, 0), (400, 100)], [R, None, None, C, None]),
    ("mean-of-bucket-means", "duration",
     {"mode": "mean", "raise_above": 60, "window_s": 400, "bucket_s": 100, "min_buckets": 2},
     [(0, 100), (10, 100), (20, 100), (100, 10), (110, 130)], [None, None, None, None, R]),
    ("mean-at-limit", "duration",
     {"mode": "mean", "raise_above": 75, "clear_below": 50, "window_s": 200, "bucket_s": 100,
      "min_buckets": 1},
     [(0, 75), (100, 25), (150, 25), (200, 25)], [R, None, None, C]),
    ("mean-for-s", "duration",
     {"mode": "mean", "raise_above": 75, "window_s": 200, "bucket_s": 100, "min_buckets": 1,
      "for_s": 100},
     [(0, 80), (50, 80), (99, 80), (100, 80)], [None, None, None, R]),
    # rate over a 60 s window
    ("rate-exact", "rate", {"window_s": 60, "rise_per_s": 1.0},
     [(0, 0), (30, 10), (60, 60), (90, 70), (120, 70)], [None, None, R, None, C]),
    ("rate-needs-a-window", "rate", {"window_s": 60, "rise_per_s": 1.0},
     [(0, 0), (59, 100)], [None, None]),
    ("rate-gap-not-overstated", "rate", {"window_s": 60, "rise_per_s": 1.0},
     [(0, 0), (600, 60), (659, 61)], [None, None, None]),
    ("rate-fall", "rate", {"window_s": 60, "fall_per_s": 0.5},
     [(0, 100), (60, 70.5), (61, 69), (120, 70)], [None, None, R, C]),
    ("rate-both-ways", "rate", {"window_s": 10, "rise_per_s": 1, "fall_per_s": 1},
     [(0, 0), (10, 10), (20, 10), (30, 0), (40, 0)], [None, R, C, R, C]),
    ("rate-hysteresis", "rate", {"window_s": 10, "rise_per_s": 1, "clear_rise_per_s": 0.5},
     [(0, 0), (10, 10), (20, 16), (30, 20.9)], [None, R, None, C]),
    # nodata: readings only ever clear (raises come from check_silence)
    ("nodata-readings", "nodata", {"factor": 3}, [(0, 1), (60, 1), (6000, 1)], [None] * 3),
    # geofence ignores telemetry
    ("geofence-telemetry", "geofence", {"dwell_s": 0}, [(0, 1), (1, 2)], [None, None]),
]


@pytest.mark.parametrize(("kind", "params", "readings", "expected"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_verdicts(kind: str, params: dict[str, Any], readings: list[tuple[float, float]],
                  expected: list[str | None]) -> None:
    r = rule(kind, **params)
    rules.validate(r)
    _, verdicts = run(r, readings)
    assert verdicts == expected


def _roundtrip(state: RuleState) -> RuleState:
    return RuleState.from_json(json.loads(json.dumps(state.to_json(), allow_nan=False)))


@pytest.mark.parametrize(("kind", "params", "readings", "expected"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_restart_anywhere_continues_exactly(
        kind: str, params: dict[str, Any], readings: list[tuple[float, float]],
        expected: list[str | None]) -> None:
    r = rule(kind, **params)
    final, _ = run(r, readings)
    for k in range(len(readings) + 1):
        state, first = run(r, readings[:k])
        state = _roundtrip(state)
        state, rest = run(r, readings[k:], state)
        assert first + rest == expected, f"restart after reading {k}"
        assert state == final


@pytest.mark.parametrize(("kind", "params", "readings", "expected"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_out_of_order_reading_changes_nothing(
        kind: str, params: dict[str, Any], readings: list[tuple[float, float]],
        expected: list[str | None]) -> None:
    r = rule(kind, **params)
    state = INITIAL
    for ts, value in readings:
        state, _ = rules.evaluate(r, state, value, ts)
        for late_value in (-1e9, 0.0, 1e9):
            again, verdict = rules.evaluate(r, state, late_value, ts - 0.5)
            assert again is state and verdict is None


def test_pending_duration_survives_restart() -> None:
    r = rule("duration", raise_above=25, for_s=300)
    state, _ = run(r, [(0, 30), (200, 30)])
    assert state.since == 0 and not state.active
    state = _roundtrip(state)
    assert rules.evaluate(r, state, 30, 300)[1] == R


def test_restored_active_alarm_does_not_refire() -> None:
    r = rule("threshold", **TH)
    # as ingest/pipeline.restore_rule_state builds it from an open alarm
    state = RuleState(True, 100.0)
    assert rules.evaluate(r, state, 30, 101) == (RuleState(True, 101.0), None)
    assert rules.evaluate(r, state, 5, 102)[1] == C


# --- mean and rate state stays bounded --------------------------------------------------

def test_mean_state_bounded_and_roundtrips() -> None:
    r = rule("duration", mode="mean", raise_above=75, window_s=86_400, bucket_s=3_600)
    state = INITIAL
    verdicts = []
    for i in range(3 * 24 * 60):  # three days at one reading a minute
        state, v = rules.evaluate(r, state, 80.0, i * 60.0)
        verdicts.append((i, v))
        assert len(state.buckets) <= 24
    raised = [i for i, v in verdicts if v == R]
    assert raised == [19 * 60]  # the 20th hourly bucket: GB 3095-2012's 20 of 24 hours
    assert rules.window_mean(state) == pytest.approx(80.0)
    assert _roundtrip(state) == state


def test_rate_samples_bounded_and_accurate() -> None:
    r = rule("rate", window_s=600, rise_per_s=1.0)
    state = INITIAL
    raised_at = None
    for t in range(5000):  # a ramp of 1.2 per second, one reading a second
        state, v = rules.evaluate(r, state, 1.2 * t, float(t))
        assert len(state.samples) <= rules.RATE_SAMPLES
        if v == R:
            raised_at = t
    assert raised_at == 600
    # the baseline sits at or before the window start, within 1/60 of the window
    assert 4999 - 600 - 10 <= state.samples[0][0] <= 4999 - 600


# --- nodata -------------------------------------------------------------------------------

NODATA_CASES = [
    # (id, params, steps, expected) where a step is ("read", ts) or ("tick", now, interval_s)
    ("raise-after-factor", {"factor": 3},
     [("read", 0), ("tick", 180, 60), ("tick", 180.5, 60), ("tick", 300, 60), ("read", 310),
      ("tick", 400, 60), ("tick", 491, 60)],
     [None, None, R, None, C, None, R]),
    ("interval-from-rule", {"factor": 2, "interval_s": 30},
     [("read", 0), ("tick", 60, None), ("tick", 61, None)], [None, None, R]),
    ("no-interval-no-verdict", {"factor": 2}, [("read", 0), ("tick", 1e9, None)], [None, None]),
    ("never-seen", {"factor": 2}, [("tick", 1e9, 1)], [None]),
    ("late-reading-does-not-clear", {"factor": 1},
     [("read", 100), ("tick", 200, 10), ("read", 50), ("read", 100)], [None, R, None, C]),
]


@pytest.mark.parametrize(("params", "steps", "expected"), [c[1:] for c in NODATA_CASES],
                         ids=[c[0] for c in NODATA_CASES])
@pytest.mark.parametrize("restart", [False, True])
def test_nodata(params: dict[str, Any], steps: list[tuple[Any, ...]], expected: list[str | None],
                restart: bool) -> None:
    r = rule("nodata", **params)
    rules.validate(r)
    state = INITIAL
    out = []
    for step in steps:
        if step[0] == "read":
            state, v = rules.evaluate(r, state, 1.0, step[1])
        else:
            state, v = rules.check_silence(r, state, step[1], step[2])
        out.append(v)
        if restart:
            state = _roundtrip(state)
    assert out == expected


def test_check_silence_ignores_other_kinds() -> None:
    state = RuleState(False, 0.0)
    assert rules.check_silence(rule("threshold", **TH), state, 1e9, 1) == (state, None)


# --- geofence -----------------------------------------------------------------------------

SQUARE = [(0.0, 0.0), (10.0, 0.0), (10.0, 10.0), (0.0, 10.0), (0.0, 0.0)]
EAST = [(20.0, 0.0), (30.0, 0.0), (30.0, 10.0), (20.0, 10.0)]
IN, OUT, EAST_IN = (5.0, 5.0), (15.0, 5.0), (25.0, 5.0)

GEO_CASES: list[tuple[str, dict[str, Any], list[tuple[float, tuple[float, float]]],
                      list[str | None]]] = [
    ("dwell-exact", {"dwell_s": 30},
     [(0, IN), (100, OUT), (110, OUT), (129, OUT), (130, OUT), (140, OUT)],
     [None, None, None, None, R, None]),
    ("jitter-resets", {"dwell_s": 30},
     [(100, OUT), (110, IN), (120, OUT), (149, OUT), (150, OUT)], [None, None, None, None, R]),
    ("clear-dwell-default", {"dwell_s": 30},
     [(0, OUT), (30, OUT), (200, IN), (210, OUT), (220, IN), (249, IN), (250, IN)],
     [None, R, None, None, None, None, C]),
    ("clear-dwell-zero", {"dwell_s": 30, "clear_dwell_s": 0},
     [(0, OUT), (30, OUT), (31, IN)], [None, R, C]),
    ("zero-dwell", {"dwell_s": 0}, [(0, OUT)], [R]),
    ("second-polygon-is-inside", {"dwell_s": 0}, [(0, EAST_IN), (1, OUT)], [None, R]),
]


def run_geo(r: Rule, fixes: list[tuple[float, tuple[float, float]]], polys: list[Any],
            state: RuleState = INITIAL) -> tuple[RuleState, list[str | None]]:
    out: list[str | None] = []
    for ts, (x, y) in fixes:
        state, v = rules.evaluate_position(r, state, x, y, ts, polys)
        out.append(v)
    return state, out


@pytest.mark.parametrize(("params", "fixes", "expected"), [c[1:] for c in GEO_CASES],
                         ids=[c[0] for c in GEO_CASES])
@pytest.mark.parametrize("prepared", [False, True])
def test_geofence(params: dict[str, Any], fixes: list[tuple[float, tuple[float, float]]],
                  expected: list[str | None], prepared: bool) -> None:
    r = rule("geofence", metric=None, **params)
    rules.validate(r)
    polys: list[Any] = [SQUARE, EAST]
    if prepared:
        polys = [Polygon.of(p) for p in polys]
    final, verdicts = run_geo(r, fixes, polys)
    assert verdicts == expected
    for k in range(len(fixes) + 1):  # restart anywhere
        state, first = run_geo(r, fixes[:k], polys)
        state, rest = run_geo(r, fixes[k:], polys, _roundtrip(state))
        assert first + rest == expected and state == final


def test_geofence_no_assignment_counts_as_inside_and_ignores_late_fixes() -> None:
    r = rule("geofence", metric=None, dwell_s=10)
    state, _ = rules.evaluate_position(r, INITIAL, *OUT, 0, [SQUARE])
    assert state.since == 0
    same, v = rules.evaluate_position(r, state, *OUT, -1, [SQUARE])
    assert same is state and v is None
    state, v = rules.evaluate_position(r, state, *OUT, 20, [])
    assert v is None and state.since is None
    assert rules.evaluate_position(rule("threshold", **TH), INITIAL, *OUT, 0, [SQUARE]) == (
        INITIAL, None)


L_SHAPE = [(0, 0), (10, 0), (10, 4), (4, 4), (4, 10), (0, 10)]


@pytest.mark.parametrize(("ring", "point", "inside"), [
    (SQUARE, (5, 5), True),
    (SQUARE, (-0.1, 5), False),
    (SQUARE, (5, 10.1), False),
    (L_SHAPE, (2, 8), True),
    (L_SHAPE, (8, 2), True),
    (L_SHAPE, (8, 8), False),  # in the bounding box, outside the notch
    (L_SHAPE, (4.01, 4.01), False),
    (L_SHAPE, (3.99, 3.99), True),
])
def test_point_in_polygon(ring: list[tuple[float, float]], point: tuple[float, float],
                          inside: bool) -> None:
    assert rules.point_in_polygon(*point, ring) is inside
    assert Polygon.of(ring).contains(*point) is inside


def test_point_in_polygon_on_the_demo_town() -> None:
    town = json.loads((DATA / "xuxiake.json").read_text(encoding="utf-8"))
    grids = {f["properties"]["id"]: Polygon.of(f["geometry"]["coordinates"][0])
             for f in town["grids"]["features"] if f["properties"]["level"] == 2}
    for dev in town["devices"]:
        hits = [g for g, p in grids.items() if p.contains(dev["lon"], dev["lat"])]
        assert hits == [dev["grid"]], dev["id"]


def test_polygon_needs_three_points() -> None:
    with pytest.raises(ValueError, match="3 distinct"):
        Polygon.of([(0, 0), (1, 1), (0, 0)])


# --- state JSON -----------------------------------------------------------------------------

def test_state_json_shape() -> None:
    assert INITIAL.to_json() == {"v": 1, "active": False, "last_ts": None}
    s = RuleState(True, 5.0, 2.0, ((1.0, 2.0),), ())
    assert s.to_json() == {"v": 1, "active": True, "last_ts": 5.0, "since": 2.0,
                           "samples": [[1.0, 2.0]]}
    assert _roundtrip(INITIAL) == INITIAL and _roundtrip(s) == s
    assert RuleState.from_json({}) == INITIAL
    assert RuleState.from_json({"active": True, "last_ts": 7}).last_seen == 7.0


@pytest.mark.parametrize("bad", [
    {"v": 2}, {"active": "yes"}, {"last_ts": "x"}, {"samples": [[1]]},
    {"buckets": [[0, 1, 0]]}, {"since": True},
])
def test_state_json_rejects_malformed(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RuleState.from_json(bad)


# --- validation ---------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "params", "message"), [
    ("threshold", {}, "exactly one of raise_above or raise_below"),
    ("threshold", {"raise_above": 1, "raise_below": 0}, "exactly one"),
    ("threshold", {"raise_above": 10, "clear_below": 11}, "must not exceed raise_above"),
    ("threshold", {"raise_below": 10, "clear_above": 9}, "must not be below raise_below"),
    ("threshold", {"raise_above": 10, "clear_above": 9}, "clear_above goes with raise_below"),
    ("threshold", {"raise_above": "10"}, "must be a number"),
    ("threshold", {"raise_above": True}, "must be a number"),
    ("threshold", {"raise_above": math.nan}, "finite"),
    ("threshold", {"raise_above": 1, "clear_bellow": 0}, "unknown parameter(s) clear_bellow"),
    ("threshold", {"raise_above": 1, "clear_after_s": -1}, "clear_after_s must be >= 0"),
    ("threshold", {"raise_above": 1, "cap_raises": 5}, "go together"),
    ("threshold", {"raise_above": 1, "cap_raises": 1.5, "cap_window_s": 1}, "whole number"),
    ("duration", {"raise_above": 1}, "for_s is required"),
    ("duration", {"raise_above": 1, "for_s": 1, "mode": "median"}, "mode must be"),
    ("duration", {"raise_above": 1, "for_s": 1, "window_s": 60}, "unknown parameter"),
    ("duration", {"mode": "mean", "raise_above": 1}, "window_s is required"),
    ("duration", {"mode": "mean", "raise_above": 1, "window_s": 100, "bucket_s": 30},
     "whole multiple"),
    ("duration", {"mode": "mean", "raise_above": 1, "window_s": 86400, "bucket_s": 60},
     "at most 288"),
    ("duration", {"mode": "mean", "raise_above": 1, "window_s": 100, "bucket_s": 10,
                  "min_buckets": 11}, "min_buckets must be a whole number from 1 to 10"),
    ("rate", {"window_s": 60}, "rise_per_s and/or fall_per_s"),
    ("rate", {"rise_per_s": 1}, "window_s is required"),
    ("rate", {"window_s": 0, "rise_per_s": 1}, "window_s must be > 0"),
    ("rate", {"window_s": 60, "rise_per_s": -1}, "rise_per_s must be > 0"),
    ("rate", {"window_s": 60, "rise_per_s": 1, "clear_rise_per_s": 2}, "must not exceed"),
    ("rate", {"window_s": 60, "fall_per_s": 1, "clear_rise_per_s": 0.5}, "needs rise_per_s"),
    ("nodata", {"factor": 0.5}, "factor must be >= 1"),
    ("nodata", {"interval_s": 0}, "interval_s must be > 0"),
    ("geofence", {}, "dwell_s is required"),
    ("geofence", {"dwell_s": 10, "clear_dwell_s": -1}, "clear_dwell_s must be >= 0"),
    ("anomaly", {}, "unsupported rule kind 'anomaly'"),
])
def test_validate_rejects(kind: str, params: dict[str, Any], message: str) -> None:
    r = rule(kind, **params)
    with pytest.raises(RuleError, match=None) as e:
        rules.validate(r)
    assert message in str(e.value)
    assert str(e.value).startswith(f"rule 'r_{kind}' ({kind}): ")
    # an invalid rule evaluates to nothing instead of breaking the ingest loop
    assert rules.evaluate(r, INITIAL, 1.0, 0.0) == (INITIAL, None)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("severity", "urgent", "severity must be one of"),
    ("priority", 5, "priority must be 1"),
    ("metric", None, "needs a metric"),
])
def test_validate_rule_fields(field: str, value: Any, message: str) -> None:
    r = dataclasses.replace(rule("threshold", raise_above=1), **{field: value})
    with pytest.raises(RuleError, match=message):
        rules.validate(r)


@pytest.mark.parametrize(("kind", "params"), [
    ("threshold", {"raise_above": 25, "clear_below": 10, "clear_after_s": 60,
                   "cap_raises": 10, "cap_window_s": 60}),
    ("duration", {"raise_below": 10, "clear_above": 20, "for_s": 300}),
    ("duration", {"mode": "mean", "raise_above": 75, "window_s": 86400}),
    ("rate", {"window_s": 300, "fall_per_s": 0.01, "clear_fall_per_s": 0.005}),
    ("nodata", {}),
    ("geofence", {"dwell_s": 120, "clear_dwell_s": 30}),
])
def test_validate_accepts(kind: str, params: dict[str, Any]) -> None:
    rules.validate(rule(kind, metric=None if kind in ("nodata", "geofence") else "m", **params))


def test_rate_cap_param() -> None:
    assert rules.rate_cap(rule("threshold", raise_above=1)) is None
    assert rules.rate_cap(rule("threshold", raise_above=1, cap_raises=5, cap_window_s=60)) == (
        5, 60.0)


def test_seed_rules_validate() -> None:
    from hub.town import read_rules
    rows = read_rules(DATA / "rules.toml")
    assert rows and all(Rule.from_row(r)._spec is not None for r in rows)


def test_replace_recompiles() -> None:
    r = rule("threshold", raise_above=25)
    r2 = dataclasses.replace(r, params={"raise_above": 50})
    assert rules.evaluate(r, INITIAL, 30, 0)[1] == R
    assert rules.evaluate(r2, INITIAL, 30, 0)[1] is None
    assert r != r2 and r == rule("threshold", raise_above=25)


# --- words --------------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "params", "words"), [
    ("threshold", TH, "m=30 ≥ 25.0"),
    ("threshold", {"raise_below": 10}, "m=30 ≤ 10"),
    ("duration", {"raise_above": 25, "for_s": 300}, "m=30 ≥ 25 for 300 s"),
    ("duration", {"mode": "mean", "raise_above": 75, "window_s": 400, "bucket_s": 100,
                  "min_buckets": 1}, "400 s mean=30 ≥ 75"),
    ("rate", {"window_s": 60, "rise_per_s": 1}, "rising ≥ 1/s over 60 s"),
    ("nodata", {"factor": 3}, "no data"),
    ("geofence", {"dwell_s": 60}, "outside the assigned grids"),
])
def test_describe(kind: str, params: dict[str, Any], words: str) -> None:
    r = rule(kind, **params)
    state, _ = rules.evaluate(r, INITIAL, 30.0, 0.0)
    text = rules.describe(r, 30.0, state)
    assert text.startswith(r.name) and words in text


# --- the reorder buffer (ingest/reorder.py) --------------------------------------------------

GAS = Rule(id="gas", name="gas", kind="threshold", metric="gas_lel_pct", device_model=None,
           params={"raise_above": 25.0, "clear_below": 10.0})
DUR = Rule(id="dur", name="dur", kind="duration", metric="m", device_model=None,
           params={"raise_above": 25.0, "for_s": 2.0})


def arrive(r: Rule, readings: list[tuple[float, float]], window_s: float = 2.0
           ) -> tuple[RuleState, list[tuple[str, float]]]:
    """Readings in arrival order through the buffer as the watch uses it: the applied
    verdicts (what the operators see), with their device times."""
    from ingest import reorder

    state, hist = INITIAL, []
    shown: list[tuple[str, float]] = []
    for ts, value in readings:
        if ts < state.last_ts:
            done = reorder.replay(r, hist, value, ts, state.active, window_s)
            if done is None:
                shown.append(("late", ts))
                continue
            state, applied = done
            shown += [(a.verdict, a.ts) for a in applied]
            continue
        new, v = rules.evaluate(r, state, value, ts)
        reorder.record(hist, reorder.Entry(ts, value, state, v), window_s, 32)
        state = new
        if v is not None:
            shown.append((v, ts))
    return state, shown


@pytest.mark.parametrize(("name", "r", "readings", "expected"), [
    ("in order: as without a buffer", GAS, [(1, 5), (2, 30), (3, 5)],
     [(R, 2), (C, 3)]),
    # a gateway's spike at t=2 arrives after the normal reading at t=3: it raises, and the
    # reading after it clears, in device-time order
    ("late spike between normal readings raises", GAS, [(1, 5), (3, 5), (2, 30)],
     [(R, 2), (C, 3)]),
    ("late spike while the newest is still high: one raise", GAS,
     [(1, 5), (3, 30), (2, 40)], [(R, 3)]),
    ("late normal reading changes nothing shown", GAS, [(1, 30), (3, 30), (2, 5)],
     [(R, 1), (C, 2), (R, 3)]),
    ("older than the window: not evaluated", GAS, [(1, 5), (10, 5), (2, 30)],
     [("late", 2)]),
    # duration: the late reading fills the gap that makes "over for 2 s" true
    ("late reading completes a duration", DUR, [(0, 30), (3, 5), (2, 30)],
     [(R, 2), (C, 3)]),
    ("late reading completes a duration, still high", DUR, [(0, 30), (2.5, 30), (1, 30)],
     [(R, 2.5)]),
])
def test_reorder_buffer(name: str, r: Rule, readings: list[tuple[float, float]],
                        expected: list[tuple[str, float]]) -> None:
    state, shown = arrive(r, readings)
    assert shown == expected, name
    # the final state is the one in-order evaluation gives (what was not too late)
    in_order, _ = run(r, sorted(x for x in readings if ("late", x[0]) not in shown))
    assert state.active == in_order.active


def test_reorder_history_is_bounded() -> None:
    from ingest import reorder

    hist: reorder.History = []
    for i in range(100):
        reorder.record(hist, reorder.Entry(i * 0.01, 1.0, INITIAL, None), 2.0, 8)
    assert len(hist) == 8 and hist[-1].ts == pytest.approx(0.99)
    for i in range(3):
        reorder.record(hist, reorder.Entry(10.0 + i * 3, 1.0, INITIAL, None), 2.0, 8)
    # what is within the window of the newest, and the one before it (the anchor)
    assert [e.ts for e in hist] == [13.0, 16.0]
