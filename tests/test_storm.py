"""Storm control (pure): flapping, storm grouping per grid, per-rule rate caps."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ingest.storm import (
    CapDecision,
    Decision,
    FlapDetector,
    GroupDecision,
    RateCap,
    StormGrouper,
    Verdict,
    situation_key,
)

KEY = ("gas_lel_high", "GAS-0001")


def show(d: Decision) -> str:
    s = "fwd" if d.action == "forward" else "hold"
    if d.flap_started:
        s += "+start"
    if d.flap_ended:
        s += f"+end@{d.ended_at:g}"
    if d.release_clear:
        s += "+release"
    return s


# steps: ("r"|"c", ts, expected decision) or ("due", now, [(at, clear), ...])
FLAP_CASES: list[tuple[str, list[tuple[Any, ...]]]] = [
    ("fourth-clear-held-then-released", [
        ("r", 0, "fwd"), ("c", 1, "fwd"), ("r", 2, "fwd"), ("c", 3, "fwd"), ("r", 4, "fwd"),
        ("c", 5, "fwd"), ("r", 6, "fwd"), ("c", 7, "hold+start"),
        ("r", 8, "hold"), ("c", 9, "hold"),
        ("due", 38.9, []), ("due", 39, [(39, True)]), ("due", 100, []),
        ("r", 200, "fwd"),  # a fresh start after the spell
    ]),
    ("spell-ending-raised-releases-no-clear", [
        ("r", 0, "fwd"), ("c", 1, "fwd"), ("r", 2, "fwd"), ("c", 3, "fwd"), ("r", 4, "fwd"),
        ("c", 5, "fwd"), ("r", 6, "fwd"), ("c", 7, "hold+start"), ("r", 8, "hold"),
        ("due", 38, [(38, False)]),
    ]),
    ("slow-flaps-are-not-flapping", [
        ("r", 0, "fwd"), ("c", 10, "fwd"), ("r", 30, "fwd"), ("c", 40, "fwd"),
        ("r", 60, "fwd"), ("c", 70, "fwd"), ("r", 90, "fwd"), ("c", 100, "fwd"),
        ("r", 110, "fwd"), ("c", 130, "fwd"),
    ]),
    ("exactly-max-flaps-pass", [
        ("r", 0, "fwd"), ("c", 1, "fwd"), ("r", 2, "fwd"), ("c", 3, "fwd"), ("r", 4, "fwd"),
        ("c", 5, "fwd"), ("r", 6, "fwd"),
    ]),
    ("verdict-after-stable-period-releases-first", [
        ("r", 0, "fwd"), ("c", 1, "fwd"), ("r", 2, "fwd"), ("c", 3, "fwd"), ("r", 4, "fwd"),
        ("c", 5, "fwd"), ("r", 6, "fwd"), ("c", 7, "hold+start"),
        ("r", 40, "fwd+end@37+release"), ("c", 41, "fwd"),
    ]),
    ("holding-resets-stability", [
        ("r", 0, "fwd"), ("c", 1, "fwd"), ("r", 2, "fwd"), ("c", 3, "fwd"), ("r", 4, "fwd"),
        ("c", 5, "fwd"), ("r", 6, "fwd"), ("c", 7, "hold+start"),
        ("r", 20, "hold"), ("c", 35, "hold"), ("due", 64, []), ("due", 65, [(65, True)]),
    ]),
    ("flapping-again-after-release", [
        ("r", 0, "fwd"), ("c", 1, "fwd"), ("r", 2, "fwd"), ("c", 3, "fwd"), ("r", 4, "fwd"),
        ("c", 5, "fwd"), ("r", 6, "fwd"), ("c", 7, "hold+start"), ("due", 37, [(37, True)]),
        ("r", 40, "fwd"), ("c", 41, "fwd"), ("r", 42, "fwd"), ("c", 43, "fwd"),
        ("r", 44, "fwd"), ("c", 45, "fwd"), ("r", 46, "fwd"), ("c", 47, "hold+start"),
    ]),
]


@pytest.mark.parametrize("steps", [c[1] for c in FLAP_CASES], ids=[c[0] for c in FLAP_CASES])
@pytest.mark.parametrize("restart", [False, True])
def test_flapping(steps: list[tuple[Any, ...]], restart: bool) -> None:
    fd = FlapDetector(max_flaps=3, window_s=60, stable_s=30)
    for step in steps:
        if step[0] == "due":
            got = [(r.at, r.clear) for r in fd.due(step[1])]
            assert got == step[2], step
        else:
            verdict: Verdict = "raise" if step[0] == "r" else "clear"
            assert show(fd.observe(KEY, verdict, step[1])) == step[2], step
        if restart:
            saved = json.loads(json.dumps(fd.to_json()))
            fd = FlapDetector(max_flaps=3, window_s=60, stable_s=30)
            fd.load_json(saved)


def test_flapping_keys_are_independent_and_forgotten() -> None:
    fd = FlapDetector(max_flaps=1, window_s=60, stable_s=30)
    other = ("gas_lel_high", "GAS-0002")
    seq: list[tuple[Verdict, float]] = [("raise", 0), ("clear", 1), ("raise", 2), ("clear", 3)]
    assert [show(fd.observe(KEY, v, t)) for v, t in seq] == ["fwd", "fwd", "fwd", "hold+start"]
    assert fd.is_flapping(KEY) and not fd.is_flapping(other)
    assert show(fd.observe(other, "clear", 4)) == "fwd"
    assert fd.flapping() == [KEY]
    fd.due(1000)
    assert fd.to_json() == []  # nothing left to remember


# --- storm grouping -----------------------------------------------------------------------

def gd(mode: str, **kw: Any) -> GroupDecision:
    if mode == "group":
        kw.setdefault("key", situation_key("G01-02"))
    return GroupDecision(mode, **kw)  # type: ignore[arg-type]


IND = gd("individual")

# steps: ("off"|"back", grid, device, ts, expected)
STORM_CASES: list[tuple[str, list[tuple[Any, ...]]]] = [
    ("below-min-is-individual", [
        ("off", "G01-02", "d1", 0, IND), ("off", "G01-02", "d2", 10, IND),
        ("off", "G01-02", "d3", 70, IND),  # d1 and d2 left the window
    ]),
    ("storm-groups-then-ends", [
        ("off", "G01-02", "d1", 0, IND), ("off", "G01-02", "d2", 10, IND),
        ("off", "G01-02", "d3", 59, gd("group", started=True, absorbed=("d1", "d2"),
                                       members=3, suppressed=1)),
        ("off", "G01-02", "d3", 61, gd("group", members=3, suppressed=1)),  # repeat
        ("off", "G01-02", "d4", 500, gd("group", members=4, suppressed=2)),
        ("back", "G01-02", "d1", 600, gd("group", members=3, suppressed=2)),
        ("back", "G01-02", "d3", 601, gd("group", members=2, suppressed=2)),
        ("back", "G01-02", "d2", 602, gd("group", members=1, suppressed=2)),
        ("back", "G01-02", "d4", 603, gd("group", members=0, suppressed=2, ended=True)),
        ("off", "G01-02", "d1", 700, IND),  # fresh start
        ("back", "G01-02", "d1", 701, IND),
    ]),
    ("grids-are-separate", [
        ("off", "G01-02", "d1", 0, IND), ("off", "G01-03", "x1", 1, IND),
        ("off", "G01-02", "d2", 2, IND), ("off", "G01-03", "x2", 3, IND),
    ]),
    ("device-back-before-storm-does-not-count", [
        ("off", "G01-02", "d1", 0, IND), ("back", "G01-02", "d1", 5, IND),
        ("off", "G01-02", "d2", 10, IND), ("off", "G01-02", "d3", 20, IND),
        ("back", "G01-02", "nobody", 21, IND), ("back", "G09", "nobody", 21, IND),
    ]),
    ("repeat-offer-keeps-first-time", [
        ("off", "G01-02", "d1", 0, IND), ("off", "G01-02", "d1", 50, IND),
        ("off", "G01-02", "d2", 59, IND), ("off", "G01-02", "d3", 61, IND),  # d1 since 0: out
    ]),
]


@pytest.mark.parametrize("steps", [c[1] for c in STORM_CASES], ids=[c[0] for c in STORM_CASES])
@pytest.mark.parametrize("restart", [False, True])
def test_storm_grouping(steps: list[tuple[Any, ...]], restart: bool) -> None:
    sg = StormGrouper(min_devices=3, window_s=60)
    for what, grid, device, ts, expected in steps:
        got = sg.offer(grid, device, ts) if what == "off" else sg.back(grid, device, ts)
        assert got == expected, (what, grid, device, ts)
        if restart:
            saved = json.loads(json.dumps(sg.to_json()))
            sg = StormGrouper(min_devices=3, window_s=60)
            sg.load_json(saved)


def test_storm_group_views() -> None:
    sg = StormGrouper(min_devices=2, window_s=60)
    sg.offer("G01-02", "a", 0)
    sg.offer("G01-02", "b", 1)
    assert sg.groups() == {"storm:G01-02": 2}
    assert sg.members("G01-02") == {"a", "b"} and sg.members("G02-01") == frozenset()


# --- rate caps ----------------------------------------------------------------------------

# steps: (rule, now, expected (allow, suppressed, total))
CAP_CASES: list[tuple[str, list[tuple[str, float, tuple[bool, int, int]]]]] = [
    ("sliding-window", [
        ("a", 0, (True, 0, 0)), ("a", 1, (True, 0, 0)), ("a", 2, (False, 1, 1)),
        ("a", 30, (False, 2, 2)), ("a", 60, (True, 2, 2)), ("a", 61, (True, 0, 2)),
        ("a", 62, (False, 1, 3)), ("a", 200, (True, 1, 3)),
    ]),
    ("rules-are-separate", [
        ("a", 0, (True, 0, 0)), ("a", 0, (True, 0, 0)), ("a", 0, (False, 1, 1)),
        ("b", 0, (True, 0, 0)), ("b", 0, (True, 0, 0)), ("b", 0, (False, 1, 1)),
    ]),
]


@pytest.mark.parametrize("steps", [c[1] for c in CAP_CASES], ids=[c[0] for c in CAP_CASES])
def test_rate_cap(steps: list[tuple[str, float, tuple[bool, int, int]]]) -> None:
    cap = RateCap(max_raises=2, window_s=60)
    for rule_id, now, expected in steps:
        assert cap.check(rule_id, now) == CapDecision(*expected), (rule_id, now)


def test_rate_cap_per_rule_limits_and_stats() -> None:
    cap = RateCap(max_raises=100, window_s=60)
    got = [cap.check("gas", t, max_raises=1, window_s=10).allow for t in (0, 5, 9.9, 10, 10)]
    assert got == [True, False, False, True, False]
    assert [cap.check("smoke", t).allow for t in range(100)] == [True] * 100
    assert cap.check("smoke", 100).allow  # t=0 left the window (0 <= 100 - 60)
    assert cap.stats() == {"gas": 3} and cap.suppressed("gas") == 3
    assert cap.suppressed("smoke") == 0
    # lowering the limit applies at once
    assert not cap.check("smoke", 100, max_raises=5).allow


@pytest.mark.parametrize(("cls", "args"), [
    (FlapDetector, (0, 60, 30)), (FlapDetector, (3, 0, 30)), (StormGrouper, (1, 60)),
    (StormGrouper, (3, 0)), (RateCap, (0, 60)), (RateCap, (1, -1)),
])
def test_bad_settings(cls: Any, args: tuple[Any, ...]) -> None:
    with pytest.raises(ValueError):
        cls(*args)


# --- grouped alarms (AlarmGroups) and the shell's use of them (AlarmWatch, no I/O) --------

from ingest import rules as _rules  # noqa: E402
from ingest.storm import AlarmGroups, cap_key  # noqa: E402
from ingest.watch import AlarmWatch, Subject, Transition, Watched  # noqa: E402


@pytest.mark.parametrize(("steps", "expected"), [
    # (op, rule, group, subject) -> returned value; sizes after
    ([("join", "r", "g", "a"), ("join", "r", "g", "b"), ("join", "r", "g", "a")],
     [True, True, False]),
    ([("join", "r", "g", "a"), ("leave", "r", None, "a"), ("leave", "r", None, "a")],
     [True, "g", None]),
    # another rule's membership is its own
    ([("join", "r", "g", "a"), ("leave", "q", None, "a")], [True, None]),
    # moving to another group leaves the first
    ([("join", "r", "g", "a"), ("join", "r", "h", "a"), ("leave", "r", None, "a")],
     [True, True, "h"]),
])
def test_alarm_groups(steps: list[tuple[str, str, str | None, str]], expected: list[Any]
                      ) -> None:
    g = AlarmGroups()
    got = [g.join(r, grp, s) if op == "join" else g.leave(r, s)  # type: ignore[arg-type]
           for op, r, grp, s in steps]
    assert got == expected
    assert all(n > 0 for n in g.groups().values())


def test_alarm_groups_rebuilt_from_rows() -> None:
    g = AlarmGroups()
    g.join("r", "g", "stale")
    g.replace([("r", "cap:r", "a"), ("r", "cap:r", "b"), ("q", "cap:q", "a")])
    assert g.group_of("r", "stale") is None
    assert (g.size("r", "cap:r"), g.group_of("q", "a")) == (2, "cap:q")


def test_rate_cap_state_round_trips() -> None:
    cap = RateCap(2, 60.0)
    for t in (0.0, 1.0, 2.0, 3.0):
        cap.check("r", t)
    back = RateCap(2, 60.0)
    back.load_json(json.loads(json.dumps(cap.to_json())))
    assert back.check("r", 4.0) == cap.check("r", 4.0) == CapDecision(False, 3, 3)


def test_storm_members_replaced_from_the_database_record() -> None:
    s = StormGrouper(3, 120.0)
    for d in ("a", "b", "c"):
        s.offer("G", d, 0.0)
    s.replace_members({"G": {"a", "b"}})
    assert s.members("G") == {"a", "b"}
    assert s.back("G", "b", 5.0).mode == "group"
    assert s.back("G", "a", 5.0).ended
    s.replace_members({})
    assert s.groups() == {}


def _watch(rule: _rules.Rule, devices: list[Subject]) -> AlarmWatch:
    w = AlarmWatch(None)  # type: ignore[arg-type]  # no I/O in these tests
    w.configure([Watched(rule)], {d.id: d for d in devices}, {})
    return w


def _drain(w: AlarmWatch) -> list[Transition]:
    out = []
    while not w.queue.empty():
        out.append(w.queue.get_nowait())
    return out


class _R:  # a reading as the pipeline hands it over
    def __init__(self, device_id: str, metric: str, ts: float, value: float) -> None:
        self.device_id, self.metric, self.ts, self.value = device_id, metric, ts, value


GAS_RULE = _rules.Rule(id="gas_lel_high", name="gas", kind="threshold", metric="gas",
                       device_model=None, severity="critical",
                       params={"raise_above": 25.0, "clear_below": 10.0})
NODATA = _rules.Rule(id="offline", name="offline", kind="nodata", metric=None,
                     device_model=None, params={"factor": 3})


def test_over_the_cap_every_raise_is_a_member_of_the_rules_group() -> None:
    devs = [Subject(f"GAS-{i:03d}", "gas", f"G{i % 7}") for i in range(150)]
    w = _watch(GAS_RULE, devs)
    w.readings([_R(d.id, "gas", 100.0 + i * 0.01, 40.0) for i, d in enumerate(devs)],
               now=200.0)
    ts = _drain(w)
    raised = [t.subject for t in ts if t.kind == "raise"]
    joined = [t for t in ts if t.kind == "join"]
    assert len(raised) == 100 and len(joined) == 50
    assert {t.group for t in joined} == {cap_key("gas_lel_high")}
    assert set(raised) | {t.subject for t in joined} == {d.id for d in devs}  # none lost
    assert w.groups.size("gas_lel_high", cap_key("gas_lel_high")) == 50
    # the condition ends: members leave the group, the others clear their own alarms
    w.readings([_R(d.id, "gas", 110.0, 1.0) for d in devs], now=210.0)
    kinds = [t.kind for t in _drain(w)]
    assert (kinds.count("clear"), kinds.count("leave")) == (100, 50)
    assert w.groups.groups() == {}


def test_nodata_is_judged_on_receive_time_so_a_slow_clock_never_alarms() -> None:
    dev = Subject("NOISE-1", "noise", "G1", interval_s=60.0)
    w = _watch(NODATA, [dev])
    for k in range(10):  # device clock 5 minutes slow, reporting every minute
        rcv = 1000.0 + 60 * k
        w.readings([_R(dev.id, "noise_db", rcv - 300.0, 50.0)], now=rcv)
        for dt in (1.0, 30.0, 59.0):
            w.tick(rcv + dt)
    assert _drain(w) == []
    w.tick(1000.0 + 60 * 9 + 181.0)  # now really silent for over 3 intervals
    assert [t.kind for t in _drain(w)] == ["raise"]


def test_nodata_alarms_flap_and_are_capped_too() -> None:
    dev = Subject("NOISE-1", "noise", "G1", interval_s=1.0)
    w = _watch(NODATA, [dev])
    t = 0.0
    for _ in range(6):  # silent, back, silent, back...
        w.readings([_R(dev.id, "x", t, 1.0)], now=t)
        t += 4.0
        w.tick(t)
    kinds = [x.kind for x in _drain(w)]
    assert "flapping" in kinds and kinds.count("clear") == 3
    devs = [Subject(f"D{i}", "noise", f"G{i}", interval_s=1.0) for i in range(150)]
    w = _watch(NODATA, devs)  # one device per grid: no storm, only the cap
    w.readings([_R(d.id, "x", 0.0, 1.0) for d in devs], now=0.0)
    w.tick(10.0)
    kinds = [x.kind for x in _drain(w)]
    assert (kinds.count("raise"), kinds.count("join")) == (100, 50)


def test_reconcile_takes_back_open_alarms_and_re_alarms_after_an_operator_clear() -> None:
    dev = Subject("GAS-1", "gas", "G1")
    w = _watch(GAS_RULE, [dev])
    # an open alarm the engine has no state for (rule edited, or state lost): taken back,
    # so the condition ending clears it
    w.apply_open([{"rule_id": "gas_lel_high", "device_id": "GAS-1", "situation": None}], [],
                 now=0.0)
    w.readings([_R("GAS-1", "gas", 1.0, 2.0)], now=1.0)
    assert [t.kind for t in _drain(w)] == ["clear"]
    # raised, then cleared by an operator while still over the limit: raised again after
    # the re-alarm interval, not before, and not at all if the condition ends first
    w.realarm_s = 30.0
    w.readings([_R("GAS-1", "gas", 2.0, 40.0)], now=2.0)
    assert [t.kind for t in _drain(w)] == ["raise"]
    w.apply_open([], [], now=3.0)
    w.tick(32.0)
    assert _drain(w) == []
    w.tick(33.5)
    again = _drain(w)
    assert [t.kind for t in again] == ["raise"] and "operator" in again[0].message
    w.apply_open([], [], now=40.0)
    w.readings([_R("GAS-1", "gas", 41.0, 1.0)], now=41.0)
    w.tick(100.0)
    assert [t.kind for t in _drain(w)] == ["clear"]


def test_reconcile_leaves_a_flapping_alarm_to_the_flap_detector() -> None:
    dev = Subject("GAS-1", "gas", "G1")
    w = _watch(GAS_RULE, [dev])
    for i in range(8):  # four raise/clear cycles: the fourth clear is held, flagged
        w.readings([_R("GAS-1", "gas", float(i), 40.0 if i % 2 == 0 else 1.0)], now=i)
    assert w.flaps.is_flapping(("gas_lel_high", "GAS-1"))
    assert not w.states[("gas_lel_high", "GAS-1")].active  # the rule says clear; held open
    w.apply_open([{"rule_id": "gas_lel_high", "device_id": "GAS-1", "situation": None}], [],
                 now=10.0)
    assert not w.states[("gas_lel_high", "GAS-1")].active
    _drain(w)
    w.tick(8.0 + 300.0)  # quiet for the stable time: the held clear is released
    assert [t.kind for t in _drain(w)] == ["unflap", "clear"]
