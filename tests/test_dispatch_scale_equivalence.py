"""The decision core's faster ranking and matching decide exactly as before, at town scale.

``engine.rank`` (scores as numpy columns, one lexsort), ``engine._solve`` (in-place
benefit matrix, coverage only on its columns) and ``planner._plan`` (held pairs freed by
constructor) replaced per-unit Python steps; the code before is kept verbatim in
``tests/dispatch_reference.py``. Every decision here is made
twice, once with the reference swapped in, on states of the console benchmark's size
(2,000 squads around the demo town's grids, up to 140 dispatched-not-accepted cases, the
town's road graph: simulators/bench/dispatch_scale.py), and must be the same ``Decision``:
same units to the same cases, same ETAs, the same ranked candidates with the same scores
and reasons, same withdrawals and alerts.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace

import pytest

from dispatch import engine, planner
from dispatch.geo import RoadGraph
from dispatch.model import DispatchPolicy, UnitState
from dispatch.planner import (
    AcceptTimedOut,
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
from simulators.bench import dispatch_scale
from simulators.bench.dispatch_scale import HUB_POLICY, NOW
from tests.dispatch_reference import plan_reference, rank_reference, solve_reference_compat

TOWN = dispatch_scale.load_town()
POLICIES = (
    HUB_POLICY,
    DispatchPolicy(),  # preemption by priority 1 only
    DispatchPolicy(dispatch_returning=True, preempt_up_to_priority=3,
                   coverage_penalty_s=0.0, stale_after_s=30.0),
    DispatchPolicy(soft_terms_from_priority=4, max_candidates=5, workload_s_per_case=35.0,
                   workload_cases_cap=3),
)


@pytest.fixture(scope="module")
def graph() -> RoadGraph:
    return dispatch_scale.road_graph(TOWN)


def _both(state: DispatchState, event: Input, policy: DispatchPolicy,
          graph: RoadGraph | None, monkeypatch: pytest.MonkeyPatch
          ) -> tuple[object, object]:
    """The decision with the current code, then with the reference ranking and matching
    (or the error each raised)."""

    def run() -> object:
        try:
            return decide(state, event, NOW, policy, graph)
        except Exception as e:  # an override that cannot be done: the same error
            return (type(e).__name__, str(e))

    new = run()
    with monkeypatch.context() as m:
        m.setattr(planner, "rank", rank_reference)
        m.setattr(engine, "_solve", solve_reference_compat)
        m.setattr(planner, "_plan", plan_reference)
        old = run()
    return new, old


def _events(state: DispatchState, rnd: random.Random) -> Iterator[Input]:
    """One of every input the leader and the API feed the core, on this state."""
    waiting = [i for i in state.incidents if i.assigned_unit is None]
    active = [i for i in state.incidents if i.assigned_unit is not None]
    free = [u for u in state.units if u.status in ("available", "returning")]
    yield IncidentRegistered(waiting[-1].id)
    yield Replan()
    yield PositionUpdated(rnd.choice(free).id)
    if active:
        a = rnd.choice(active)
        assert a.assigned_unit is not None
        yield AcceptTimedOut(a.id, a.assigned_unit, 900.0)
        yield UnitDeclined(a.id, a.assigned_unit)
        yield Redirect(a.assigned_unit, "closer_known", rnd.choice(waiting).id)
        yield Redirect(a.assigned_unit, "other")
        yield UnitFreed(a.assigned_unit)
    yield Override(waiting[0].id, rnd.choice(free).id, "local_knowledge")


@pytest.mark.parametrize("seed", range(3))
def test_console_scale_decisions_are_identical(seed: int, graph: RoadGraph,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The console benchmark's picture: 2,000 squads, one qualification, 140 cases
    dispatched and not accepted, a new priority-3 case."""
    state = dispatch_scale.scale_state(TOWN, units=2000, held=140, seed=seed)
    new, old = _both(state, IncidentRegistered(state.incidents[-1].id), HUB_POLICY, graph,
                     monkeypatch)
    assert isinstance(new, planner.Decision) and new.dispatches
    assert new == old


@pytest.mark.parametrize("seed", range(4))
def test_mixed_town_scale_decisions_are_identical(seed: int, graph: RoadGraph,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Every status, priority and input, stale and missing fixes, barred units, four
    policies, 2,000 units; and the same states with no road graph."""
    rnd = random.Random(seed)
    state = dispatch_scale.scale_state(TOWN, units=2000, held=60, waiting=8, seed=seed,
                                       mixed=True)
    policy = POLICIES[seed % len(POLICIES)]
    moved = 0
    for event in _events(state, rnd):
        new, old = _both(state, event, policy, graph if seed % 2 == 0 else None, monkeypatch)
        assert new == old, event
        if isinstance(new, planner.Decision):
            moved += len(new.dispatches)
    assert moved > 0


@pytest.mark.parametrize("seed", range(6))
def test_rank_is_identical_on_every_case(seed: int, graph: RoadGraph) -> None:
    """``rank`` for every case of a mixed state, all policies: same candidates, order,
    scores, reasons."""
    state = dispatch_scale.scale_state(TOWN, units=2000, held=40, waiting=10, seed=seed,
                                       mixed=True)
    for k, inc in enumerate(state.incidents[::5]):
        policy = POLICIES[k % len(POLICIES)]
        assert engine.rank(inc, state.units, graph, NOW, policy) \
            == rank_reference(inc, state.units, graph, NOW, policy)


def test_ties_are_broken_as_before(graph: RoadGraph, monkeypatch: pytest.MonkeyPatch) -> None:
    """Units at one spot (equal ETAs), with cases today and duty starts that order them
    differently (for a critical case, ranked on time alone, the scores tie: cases today,
    then duty, then the id decide), stale units (all costed alike), units without a duty
    start; with and without the road graph."""
    state = dispatch_scale.scale_state(TOWN, units=300, held=20, waiting=6, seed=11,
                                       mixed=True)
    critical = replace(state.incidents[-1], priority=1, qualification="fire")
    spot = {"lon": critical.lon + 0.001, "lat": critical.lat}
    twins = tuple(
        UnitState(f"T{k}", "squad", frozenset({"fire"}), "available", spot["lon"],
                  spot["lat"], NOW - 5 if k < 6 else NOW - 900, "G99",
                  duty, cases)
        for k, (cases, duty) in enumerate([(2, NOW - 9000), (1, NOW - 100), (1, None),
                                           (2, None), (0, NOW - 100), (1, NOW - 100),
                                           (3, NOW - 50), (0, None)]))
    state = DispatchState((*state.incidents[:-1], critical), state.units + twins,
                          state.excluded)
    for policy in POLICIES:
        for g in (graph, None):
            for event in (Replan(), IncidentRegistered(critical.id)):
                new, old = _both(state, event, policy, g, monkeypatch)
                assert new == old
            for inc in state.incidents:
                assert engine.rank(inc, state.units, g, NOW, policy) \
                    == rank_reference(inc, state.units, g, NOW, policy)
    ranked = engine.rank(critical, state.units, None, NOW, HUB_POLICY).candidates
    assert [c.unit_id for c in ranked[:6]] == ["T4", "T1", "T5", "T2", "T0", "T3"]


def test_small_random_states_are_identical(graph: RoadGraph,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """400 small random states (30 units: the coverage term, preemption and stale units
    decide often), every input, the four policies in turn."""
    compared = 0
    for seed in range(400):
        rnd = random.Random(seed)
        state = dispatch_scale.scale_state(TOWN, units=30, held=8, waiting=4, seed=seed,
                                           mixed=True)
        policy = POLICIES[seed % len(POLICIES)]
        event = rnd.choice(list(_events(state, rnd)))
        new, old = _both(state, event, policy, graph if seed % 3 else None, monkeypatch)
        assert new == old, (seed, event)
        compared += 1
    assert compared == 400


def test_a_replan_carried_out_at_town_scale(graph: RoadGraph,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Held dispatches that a new plan beats by far (the re-plan check's alternative is
    carried out, its lines with their reasons): the same withdrawals and dispatches."""
    state = dispatch_scale.scale_state(TOWN, units=2000, held=140, seed=3)
    new, old = _both(state, IncidentRegistered(state.incidents[-1].id), HUB_POLICY, graph,
                     monkeypatch)
    assert isinstance(new, planner.Decision)
    assert any(w.why.code == "withdraw.replanned" for w in new.withdrawals)
    assert new == old
