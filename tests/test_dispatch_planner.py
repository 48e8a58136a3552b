"""The dispatch decision core (dispatch/planner.py): one input, one decision; pure values.

Every scenario is on an east-west line at 31.8 N, without a road graph (straight-line
times), so distances read off the coordinates: ``at(km)``.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from core.errors import InvalidInput
from dispatch.engine import assign_jointly, rank
from dispatch.model import DispatchPolicy, IncidentState, UnitState
from dispatch.planner import (
    AcceptTimedOut,
    Decision,
    DispatchState,
    IncidentRegistered,
    Input,
    Override,
    PositionUpdated,
    Redirect,
    Replan,
    UnitDeclined,
    UnitFreed,
    decide,
)
from dispatch.reasons import ENGLISH, Reason, reason

NOW = 1_750_000_000.0
KM = 1 / 94.6  # degrees of longitude per km at 31.8 N
POLICY = DispatchPolicy()  # preemption by p1 only, 120 s penalty, replan_gain_s 240


def at(km: float) -> float:
    return 120.3 + km * KM


def unit(uid: str, km: float, *, status: str = "available", cur: str | None = None,
         cur_p: int | None = None) -> UnitState:
    return UnitState(uid, "squad", frozenset({"城管"}), status, at(km), 31.8, NOW - 5, "G1",
                     NOW - 3600, 0, cur, cur_p)


def inc(iid: str, km: float, *, p: int = 3, assigned: str | None = None,
        opened: float = NOW - 60) -> IncidentState:
    return IncidentState(iid, "市容", p, "城管", at(km), 31.8, "G1", opened, assigned)


def sent(d: Decision) -> dict[str, str]:
    return {x.incident_id: x.unit_id for x in d.dispatches}


def taken_off(d: Decision) -> dict[str, tuple[str, str]]:
    return {w.incident_id: (w.unit_id, w.status) for w in d.withdrawals}


def greedy(incidents: list[IncidentState], units: list[UnitState]) -> dict[str, str]:
    """The path the hub used to run: each case in (priority, age) order takes rank()'s pick."""
    out: dict[str, str] = {}
    free = list(units)
    for i in sorted(incidents, key=lambda i: (i.priority, i.opened_at)):
        pick = rank(i, free, None, NOW, POLICY).pick
        if pick:
            out[i.id] = pick
            free = [u for u in free if u.id != pick]
    return out


# I1 at 1.0 km (older), I2 at 2.2 km; U2 at 0, U1 at 1.1 km. Greedy: I1<-U1, I2<-U2 (2.3 km
# driven); jointly I1<-U2, I2<-U1 (2.1 km).
I1, I2 = inc("I1", 1.0, opened=NOW - 120), inc("I2", 2.2)
U1, U2 = unit("U1", 1.1), unit("U2", 0.0)


# ---------------------------------------------------------------- joint vs greedy
@pytest.mark.parametrize(("incidents", "event"), [
    ((I1, I2), Replan()),
    ((I1, I2), IncidentRegistered("I2")),  # I1 was waiting when I2 came in
    ((I1, I2), UnitFreed("U1")),
])
def test_joint_plan_where_greedy_would_not(incidents: tuple[IncidentState, ...],
                                           event: Input) -> None:
    assert greedy(list(incidents), [U1, U2]) == {"I1": "U1", "I2": "U2"}
    d = decide(DispatchState(incidents, (U1, U2)), event, NOW, POLICY, None)
    assert sent(d) == {"I1": "U2", "I2": "U1"}
    assert not d.withdrawals and not d.waiting
    for x in d.dispatches:
        assert x.why.code == "assign.joint" and x.eta_s is not None
        assert {c.unit_id for c in x.candidates} == {"U1", "U2"}
        assert all(c.codes and c.codes[0].code == "cand.eta_line" for c in x.candidates)
    # The recorded pick is the case's own ranking; the plan may differ from it.
    assert next(x for x in d.dispatches if x.incident_id == "I1").pick == "U1"


def test_a_single_case_gets_the_rank_pick() -> None:
    d = decide(DispatchState((I1,), (U1, U2)), IncidentRegistered("I1"), NOW, POLICY, None)
    assert sent(d) == {"I1": "U1"}


# ---------------------------------------------------------------- preemption
@pytest.mark.parametrize(("priority", "preempts"), [(1, True), (2, False), (3, False)])
def test_preemption_by_the_policy(priority: int, preempts: bool) -> None:
    # B drives to a p3 case at 5 km and is now 0.1 km from the new case; F is 6 km away.
    low = inc("LOW", 5.0, assigned="B")
    b = unit("B", 0.1, status="en_route", cur="LOW", cur_p=3)
    f = unit("F", 6.0)
    new = inc("NEW", 0.0, p=priority)
    d = decide(DispatchState((low, new), (b, f)), IncidentRegistered("NEW"), NOW, POLICY,
               None)
    if preempts:
        assert taken_off(d) == {"LOW": ("B", "preempted")}
        assert sent(d) == {"NEW": "B", "LOW": "F"}
        assert next(x for x in d.dispatches if x.incident_id == "NEW").preempts == "LOW"
        assert [(a.incident_id, a.kind) for a in d.alerts] == [("LOW", "preempted")]
        assert d.withdrawals[0].why == reason("withdraw.preempted", by="NEW", priority=1)
    else:
        assert not d.withdrawals and sent(d) == {"NEW": "F"}


# ---------------------------------------------------------------- no churn
def _churn_case(status: str) -> DispatchState:
    # A took I1 (1 km away) and sits where the new I2 is; F is 2 km from I2.
    i1 = inc("I1", 1.0, assigned="A")
    a = unit("A", 0.0, status=status, cur="I1", cur_p=3)
    return DispatchState((i1, inc("I2", 0.0)), (a, unit("F", 2.0)))


@pytest.mark.parametrize("gain", [0.0, 240.0, 1e9])
def test_a_unit_that_accepted_is_moved_only_by_preemption(gain: float) -> None:
    d = decide(_churn_case("en_route"), IncidentRegistered("I2"), NOW,
               replace(POLICY, replan_gain_s=gain), None)
    assert not d.withdrawals and sent(d) == {"I2": "F"}


@pytest.mark.parametrize(("gain", "moved"), [(0.0, True), (240.0, True), (5000.0, False)])
def test_an_unaccepted_dispatch_is_replanned_only_above_the_threshold(gain: float,
                                                                       moved: bool) -> None:
    # Keeping: A 1 km + F 2 km; re-planning: A 0 km + F 1 km, 2 km less at weight 2.
    d = decide(_churn_case("dispatched"), IncidentRegistered("I2"), NOW,
               replace(POLICY, replan_gain_s=gain), None)
    if moved:
        assert taken_off(d) == {"I1": ("A", "superseded")}
        assert d.withdrawals[0].why.code == "withdraw.replanned"
        assert sent(d) == {"I2": "A", "I1": "F"}
    else:
        assert not d.withdrawals and sent(d) == {"I2": "F"}


# ---------------------------------------------------------------- decline, escalation
@pytest.mark.parametrize("still_on_case", [True, False])
def test_decline_sends_the_next_unit_never_the_same(still_on_case: bool) -> None:
    if still_on_case:
        i1 = inc("I1", 1.0, assigned="U1")
        u1 = replace(U1, status="dispatched", current_incident="I1", current_priority=3)
    else:
        i1, u1 = inc("I1", 1.0), U1
    d = decide(DispatchState((i1,), (u1, U2)), UnitDeclined("I1", "U1"), NOW, POLICY, None)
    assert sent(d) == {"I1": "U2"}
    assert taken_off(d) == ({"I1": ("U1", "declined")} if still_on_case else {})
    assert "U1" not in {c.unit_id for c in d.dispatches[0].candidates}


def test_decline_bars_the_unit_from_that_case_only() -> None:
    d = decide(DispatchState((inc("I1", 1.0), inc("I9", 1.2)), (U1,),
                             {"I1": frozenset({"U1"})}), UnitDeclined("I1", "U1"), NOW,
               POLICY, None)
    assert sent(d) == {"I9": "U1"} and [w.incident_id for w in d.waiting] == ["I1"]


def test_escalation_takes_the_unit_off_alerts_and_replans() -> None:
    i1 = inc("I1", 1.0, assigned="U1")
    u1 = replace(U1, status="dispatched", current_incident="I1", current_priority=3)
    d = decide(DispatchState((i1,), (u1, U2)), AcceptTimedOut("I1", "U1", 900.0), NOW,
               POLICY, None)
    assert taken_off(d) == {"I1": ("U1", "escalated")}
    assert d.withdrawals[0].why == reason("withdraw.escalated", unit="U1", waited_s=900)
    assert [(a.incident_id, a.kind) for a in d.alerts] == [("I1", "escalated")]
    assert sent(d) == {"I1": "U2"}


def test_a_time_out_after_the_accept_does_nothing() -> None:
    i1 = inc("I1", 1.0, assigned="U1")
    u1 = replace(U1, status="en_route", current_incident="I1", current_priority=3)
    d = decide(DispatchState((i1,), (u1, U2)), AcceptTimedOut("I1", "U1", 900.0), NOW,
               POLICY, None)
    assert d == Decision()


# ---------------------------------------------------------------- operators
def test_override_withdraws_the_planned_unit_and_keeps_the_ranking() -> None:
    i1 = inc("I1", 1.0, assigned="U1")
    u1 = replace(U1, status="dispatched", current_incident="I1", current_priority=3)
    d = decide(DispatchState((i1, inc("I2", 1.2)), (u1, U2)),
               Override("I1", "U2", "local_knowledge"), NOW, POLICY, None)
    assert taken_off(d) == {"I1": ("U1", "superseded")}
    assert sent(d) == {"I1": "U2", "I2": "U1"}  # the freed unit is planned at once
    x = d.dispatches[0]
    assert x.override_code == "local_knowledge" and x.pick == "U1"
    assert x.why == reason("assign.override", code="local_knowledge")


@pytest.mark.parametrize(("event", "code"), [
    (Override("I1", "U1", "other"), "dispatch.same_unit"),
    (Override("I1", "B", "other"), "unit.busy"),
    (Redirect("U2", "other"), "unit.not_en_route"),
    (Redirect("B", "other", to_incident="I9"), "dispatch.same_unit"),
])
def test_operator_requests_that_cannot_be_done(event: Input, code: str) -> None:
    i1 = inc("I1", 1.0, assigned="U1")
    u1 = replace(U1, status="en_route", current_incident="I1", current_priority=3)
    b = unit("B", 3.0, status="en_route", cur="I9", cur_p=3)
    state = DispatchState((i1, inc("I9", 4.0, assigned="B")), (u1, U2, b))
    with pytest.raises(Exception) as err:
        decide(state, event, NOW, POLICY, None)
    assert getattr(err.value, "code", None) == code


@pytest.mark.parametrize("to", ["I2", None])
def test_redirect_of_an_en_route_unit(to: str | None) -> None:
    # U1 accepted I1 (en route); the operator sends it to I2, or just takes it off.
    i1 = inc("I1", 1.0, assigned="U1")
    u1 = replace(U1, status="en_route", current_incident="I1", current_priority=3)
    state = DispatchState((i1, inc("I2", 1.2)), (u1, U2))
    d = decide(state, Redirect("U1", "supervisor_order", to_incident=to), NOW, POLICY, None)
    assert taken_off(d) == {"I1": ("U1", "redirected")}
    assert d.withdrawals[0].why.code == "withdraw.redirected"
    if to is None:
        # I1 goes back to planning but not to U1; U1 is free for the other case.
        assert sent(d) == {"I1": "U2", "I2": "U1"}
    else:
        assert sent(d) == {"I2": "U1", "I1": "U2"}
        x = next(x for x in d.dispatches if x.incident_id == "I2")
        assert x.why == reason("assign.redirect", code="supervisor_order")


def test_redirect_needs_a_case_that_exists() -> None:
    u1 = replace(U1, status="en_route", current_incident="I1", current_priority=3)
    with pytest.raises(Exception) as err:
        decide(DispatchState((inc("I1", 1.0, assigned="U1"),), (u1,)),
               Redirect("U1", "other", to_incident="NOPE"), NOW, POLICY, None)
    assert getattr(err.value, "code", None) == "incident.not_found"


# ---------------------------------------------------------------- quiet inputs
def test_position_updates_plan_only_when_a_waiting_case_could_use_the_unit() -> None:
    busy = DispatchState((inc("I1", 1.0, assigned="U1"),),
                         (replace(U1, status="en_route", current_incident="I1",
                                  current_priority=3), U2))
    assert decide(busy, PositionUpdated("U2"), NOW, POLICY, None) == Decision()
    d = decide(DispatchState((I1,), (U1,)), PositionUpdated("U1"), NOW, POLICY, None)
    assert sent(d) == {"I1": "U1"}


def test_no_unit_leaves_the_case_waiting_with_a_reason() -> None:
    d = decide(DispatchState((I1,), ()), IncidentRegistered("I1"), NOW, POLICY, None)
    assert not d.dispatches
    assert d.waiting[0].why == reason("wait.no_free_unit", qualification="城管")


# ---------------------------------------------------------------- reasons
def test_reasons_are_codes_with_english_text() -> None:
    r = reason("cand.eta_road", eta_s=411.6)
    assert r.as_json() == {"code": "cand.eta_road", "params": {"eta_s": 412}}
    assert r.text() == "eta 412s by road"
    with pytest.raises(ValueError):
        Reason("nope")
    # Every code renders with the parameters the core gives it (no KeyError at run time).
    assert all(code.count(".") == 1 for code in ENGLISH)


def test_joint_lines_carry_codes() -> None:
    plan = assign_jointly([I1, I2], [U1, U2], None, NOW, POLICY)
    assert all(line.why is not None and line.why.code == "assign.joint" for line in plan)


def test_invalid_input_is_the_core_error() -> None:
    with pytest.raises(InvalidInput):
        decide(DispatchState((inc("I1", 1.0, assigned="U1"),), (U1,)),
               Override("I1", "U1", "other"), NOW, POLICY, None)


def test_every_reason_code_is_translated_for_the_pages() -> None:
    """The pages render reasons from the code: each has its line in the page catalog
    (whose message id is the English text) and a Chinese translation."""
    import json
    from pathlib import Path

    from babel.messages.pofile import read_po

    root = Path(__file__).resolve().parent.parent
    template = (root / "frontend" / "templates" / "_i18n_js.html").read_text(encoding="utf-8")
    with (root / "frontend" / "translations" / "zh_CN" / "LC_MESSAGES" / "messages.po"
          ).open("rb") as f:
        zh = {m.id: m.string for m in read_po(f, locale="zh_CN") if m.id}
    for code, english in ENGLISH.items():
        line = f'"reason.{code}": _({json.dumps(english, ensure_ascii=False)})'
        assert line in template, code
        assert zh.get(english), code
