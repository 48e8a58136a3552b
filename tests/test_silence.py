"""The no-data timer's schedule (ingest/silence.py) and the watch's use of it (pure)."""

from __future__ import annotations

from ingest import rules as _rules
from ingest.silence import SilenceSchedule
from ingest.subjects import Subject, Watched
from tests.test_storm import _R, NODATA, _drain, _watch


def test_the_schedule_hands_out_due_pairs_earliest_first_and_each_once() -> None:
    s = SilenceSchedule()
    s.track(("r", "B"), 20.0)
    s.track(("r", "A"), 10.0)
    s.track(("r", "C"), None)  # known, no timer
    assert s.pop_due(9.9) == []
    assert s.pop_due(20.0) == [("r", "A"), ("r", "B")]
    assert s.pop_due(1e9) == [] and len(s) == 0
    assert s.known == {("r", "A"), ("r", "B"), ("r", "C")}
    s.forget(("r", "A"))
    assert ("r", "A") not in s.known


def test_a_tick_looks_only_at_pairs_whose_deadline_came() -> None:
    """10,000 devices reporting every minute: a tick between readings looks at none of
    them (the old timer looked at all 10,000 every second), and the one that stops
    reporting raises once its three intervals are up."""
    devs = [Subject(f"N-{i:05d}", "noise", f"G{i % 40}", interval_s=60.0)
            for i in range(10_000)]
    w = _watch(NODATA, devs)
    w.readings([_R(d.id, "x", 1000.0, 1.0) for d in devs], now=1000.0)
    w.tick(1001.0)
    assert len(w.silence) == 10_000 and w.silence.pop_due(1179.0) == []
    quiet = devs[123]
    for k in range(1, 4):  # all but one keep reporting
        w.readings([_R(d.id, "x", 1000.0 + 60 * k, 1.0) for d in devs if d is not quiet],
                   now=1000.0 + 60 * k)
        w.tick(1000.0 + 60 * k + 0.5 * (k < 3) - 0.5 * (k == 3))
    assert _drain(w) == []
    w.tick(1181.0)  # the quiet one: 181 s > 3 x 60 s; the others reported at 1180
    raised = _drain(w)
    assert [(t.kind, t.subject) for t in raised] == [("raise", quiet.id)]
    # every pair is scheduled once, the others at their latest reading + 180 s
    assert len(w.silence) == 10_000


def test_a_device_first_heard_after_the_rules_were_set_is_timed_too() -> None:
    old, new = Subject("OLD", "noise", "G1", interval_s=10.0), Subject(
        "NEW", "noise", "G1", interval_s=10.0)
    w = _watch(NODATA, [old, new])
    w.readings([_R("OLD", "x", 0.0, 1.0)], now=0.0)
    w.tick(1.0)  # the schedule is built here, before NEW was ever heard
    w.readings([_R("NEW", "x", 5.0, 1.0)], now=5.0)
    w.readings([_R("OLD", "x", 20.0, 1.0)], now=20.0)
    w.tick(35.1)  # NEW silent 30.1 s > 3 x 10 s; OLD only 15.1 s
    assert [(t.kind, t.subject) for t in _drain(w)] == [("raise", "NEW")]


def test_a_rule_edit_rebuilds_the_schedule() -> None:
    dev = Subject("D", "noise", "G1", interval_s=10.0)
    w = _watch(NODATA, [dev])
    w.readings([_R("D", "x", 0.0, 1.0)], now=0.0)
    w.tick(1.0)
    # the rule is edited (factor 6): it starts afresh, and its pairs are timed anew
    longer = _rules.Rule(id="offline", name="offline", kind="nodata", metric=None,
                         device_model=None, params={"factor": 6})
    w.configure([Watched(longer)], {"D": dev}, {})
    w.readings([_R("D", "x", 2.0, 1.0)], now=2.0)
    w.tick(40.0)  # 38 s silent: over 3 intervals, not over 6
    assert _drain(w) == []
    w.tick(62.5)
    assert [(t.kind, t.subject) for t in _drain(w)] == [("raise", "D")]
    w.tick(10_000.0)  # raised once; silent on, it is not raised again
    assert _drain(w) == []


def test_a_reporting_device_s_readings_move_its_deadline_and_an_open_alarm_still_clears(
) -> None:
    # After its first reading a device's readings only record when it was seen (no new
    # state per reading); the timer must still see them, and an alarm opened elsewhere
    # (reconciliation) must still be cleared by the device's next reading.
    dev = Subject("D", "noise", "G1", interval_s=10.0)
    w = _watch(NODATA, [dev])
    for t in range(0, 100, 5):
        w.readings([_R("D", "x", float(t), 1.0), _R("D", "y", float(t), 1.0)], now=float(t))
        w.tick(t + 1.0)
    assert _drain(w) == []
    w.tick(95.0 + 30.5)  # silent 30.5 s after the last reading at 95
    assert [(t.kind, t.subject) for t in _drain(w)] == [("raise", "D")]
    w.readings([_R("D", "x", 130.0, 1.0)], now=130.0)
    assert [(t.kind, t.subject) for t in _drain(w)] == [("clear", "D")]
    w.apply_open([{"rule_id": "offline", "device_id": "D", "situation": None}], [], now=131.0)
    w.readings([_R("D", "x", 132.0, 1.0)], now=132.0)
    assert [(t.kind, t.subject) for t in _drain(w)] == [("clear", "D")]
    w.tick(132.0 + 29.0)  # its deadline follows its last reading
    assert _drain(w) == []
    w.tick(132.0 + 30.5)
    assert [(t.kind, t.subject) for t in _drain(w)] == [("raise", "D")]
