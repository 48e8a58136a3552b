"""The dispatch core's ranking, matching and re-plan check as they were before they were
made faster (``engine.rank``, ``engine._solve`` and ``planner._plan`` at main e138444),
kept verbatim as the reference the equivalence tests (tests/test_dispatch_scale_equivalence.py)
compare the faster code with: every Python-level step per unit, no shortcut. Not used by
the product.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
from scipy.optimize import linear_sum_assignment

from dispatch.engine import (
    _Coverage,
    _duty_key,
    _free_statuses,
    _fresh,
    _may_preempt,
    _reasons,
    _Row,
    _terms,
    _unserved,
    assign_jointly,
)
from dispatch.geo import RoadGraph, haversine_m_np, travel_time_matrix
from dispatch.model import (
    DEFAULT_POLICY,
    PREEMPTABLE_STATUSES,
    Assignment,
    Candidate,
    DispatchPolicy,
    IncidentState,
    Recommendation,
    UnitState,
)
from dispatch.planner import _cost, _held_cost, _Work
from dispatch.reasons import reason, texts


def rank_reference(
    incident: IncidentState,
    units: Sequence[UnitState],
    graph: RoadGraph | None,
    now: float,
    policy: DispatchPolicy = DEFAULT_POLICY,
) -> Recommendation:
    """Rank the units that could take ``incident``; best first.

    Candidates: on-duty units holding ``incident.qualification`` that are free
    (``available``; also ``returning`` if the policy allows), plus, for incidents
    at ``policy.preempt_up_to_priority`` or more urgent, units dispatched/en route
    to a strictly less urgent incident (reason "preempts ..."). Units on scene are
    never candidates. Units with an unknown or stale position come after every
    unit with a known one, with ``eta_s = None`` and ``distance_m = None``, ranked
    among themselves by workload and fairness. Known ones are sorted by (score,
    cases today, longest on duty, id). At most ``policy.max_candidates`` are
    returned; ``pick`` is the first candidate.
    """
    free_statuses = _free_statuses(policy)
    pool = [
        u
        for u in units
        if incident.qualification in u.qualifications
        and (u.status in free_statuses or _may_preempt(incident, u, policy))
    ]
    if not pool:
        why = reason("wait.no_unit", qualification=incident.qualification)
        return Recommendation(incident.id, (), None, why.text(), why)
    coverage = _Coverage(units, policy)
    fresh = [u for u in pool if _fresh(u, now, policy)]
    stale = [u for u in pool if not _fresh(u, now, policy)]
    times = np.zeros((1, 0))
    by_road = np.zeros((1, 0), dtype=np.bool_)
    dists = np.zeros(0)
    if fresh:
        lons = np.array([u.lon for u in fresh], dtype=np.float64)
        lats = np.array([u.lat for u in fresh], dtype=np.float64)
        times, by_road = travel_time_matrix(graph, [incident.lon], [incident.lat], lons, lats)
        dists = haversine_m_np(lons, lats, incident.lon, incident.lat)

    # Score everything cheaply, sort, and spell out reasons only for the shortlist.
    keyed: list[tuple[tuple[int, float, int, float, str], int]] = []
    for k, (unit, t) in enumerate(zip(fresh, times[0].tolist(), strict=True)):
        extra = _terms(incident, unit, coverage, policy)[0]
        keyed.append(((0, t + extra, unit.cases_today, _duty_key(unit), unit.id), k))
    for k, unit in enumerate(stale, start=len(fresh)):
        extra = _terms(incident, unit, coverage, policy)[0]
        keyed.append(
            ((1, policy.stale_eta_s + extra, unit.cases_today, _duty_key(unit), unit.id), k)
        )
    keyed.sort()

    ranked: list[Candidate] = []
    for key, k in keyed[: policy.max_candidates]:
        unit = fresh[k] if k < len(fresh) else stale[k - len(fresh)]
        _, preempts, lost = _terms(incident, unit, coverage, policy)
        if k < len(fresh):
            t_k = float(times[0, k])
            eta: float | None = t_k
            dist: float | None = float(dists[k])
            head = reason("cand.eta_road" if by_road[0, k] else "cand.eta_line", eta_s=t_k)
        else:
            eta = dist = None
            if unit.position_ts is None or unit.lon is None or unit.lat is None:
                head = reason("cand.position_unknown")
            else:
                head = reason("cand.position_stale", age_s=now - unit.position_ts)
        codes = _reasons(head, unit, preempts, lost)
        ranked.append(
            Candidate(
                unit.id,
                eta,
                dist,
                key[1],
                texts(codes),
                unit.current_incident if preempts else None,
                codes,
            )
        )
    best = ranked[0]
    if best.eta_s is None:
        why = reason("assign.no_position")
    elif best.preempts is not None:
        why = reason("assign.best_preempting", incident=best.preempts)
    else:
        why = reason("assign.best")
    return Recommendation(incident.id, tuple(ranked), best.unit_id, why.text(), why)



def solve_reference(
    incidents: Sequence[IncidentState],
    units: Sequence[UnitState],
    graph: RoadGraph | None,
    now: float,
    policy: DispatchPolicy,
    coverage: _Coverage,
    excluded: Mapping[str, frozenset[str]],
) -> list[_Row]:
    """Min-cost assignment of ``incidents`` (rows) to ``units`` (columns), one row each.

    Minimises sum(weight x score) over served incidents + sum(weight x
    unserved_cost_s) over waiting ones. Subtracting the constant sum(weight x
    unserved_cost_s) turns that into a matrix of *benefits*: weight x (score -
    unserved_cost_s), always negative for a feasible pair, 0 for an infeasible one
    (the same as staying unserved). So no "stay waiting" columns are needed and
    the matrix is only incidents x units; a row matched at cost 0 is unserved.
    """
    n, m = len(incidents), len(units)
    if m == 0:
        return [_unserved(reason("wait.no_free_unit", qualification=i.qualification))
                for i in incidents]

    # Travel times: fresh units by road, stale ones at the flat stale_eta_s.
    fresh = np.array([_fresh(u, now, policy) for u in units], dtype=np.bool_)
    eta = np.full((n, m), policy.stale_eta_s, dtype=np.float64)
    by_road = np.zeros((n, m), dtype=np.bool_)
    if fresh.any():
        fidx = np.nonzero(fresh)[0]
        fresh_units = [units[j] for j in fidx.tolist()]
        t, r = travel_time_matrix(
            graph,
            [i.lon for i in incidents],
            [i.lat for i in incidents],
            np.array([u.lon for u in fresh_units], dtype=np.float64),
            np.array([u.lat for u in fresh_units], dtype=np.float64),
        )
        if fresh.all():
            eta, by_road = t, r
        else:
            eta[:, fidx] = t
            by_road[:, fidx] = r

    # Feasibility: the qualification, and for busy units the preemption rule.
    free_statuses = _free_statuses(policy)
    free_col = np.array([u.status in free_statuses for u in units], dtype=np.bool_)
    quals = sorted({i.qualification for i in incidents})
    has = np.array([[q in u.qualifications for u in units] for q in quals], dtype=np.bool_)
    row_qual = np.array([quals.index(i.qualification) for i in incidents], dtype=np.intp)
    feasible = has[row_qual] & free_col[None, :]
    busy_cols = np.nonzero(~free_col)[0].tolist()
    prio = np.array([i.priority for i in incidents])
    if busy_cols:
        # ``_may_preempt`` for every (urgent row, busy column), vectorised: a Python loop
        # over rows x busy units was the largest part of a decision's core time.
        busy = [units[j] for j in busy_cols]
        movable = np.array([u.status in PREEMPTABLE_STATUSES and u.current_incident is not None
                            and u.current_priority is not None for u in busy],
                           dtype=np.bool_)
        cur_prio = np.array([u.current_priority if u.current_priority is not None else 0
                             for u in busy])
        may = (movable[None, :] & (prio <= policy.preempt_up_to_priority)[:, None]
               & (cur_prio[None, :] > prio[:, None]))
        # Never pulled off the very case it is planned for.
        row_of = {inc.id: i for i, inc in enumerate(incidents)}
        for k, u in enumerate(busy):
            own = row_of.get(u.current_incident) if u.current_incident is not None else None
            if own is not None:
                may[own, k] = False
        feasible[:, busy_cols] = has[row_qual][:, busy_cols] & may

    if excluded:
        col = {u.id: j for j, u in enumerate(units)}
        for i, inc in enumerate(incidents):
            for uid in excluded.get(inc.id, ()):
                if uid in col:
                    feasible[i, col[uid]] = False

    # Soft terms, vectorised: per column, applied to the rows they concern.
    soft_rows = prio >= policy.soft_terms_from_priority
    cases = np.array([min(u.cases_today, policy.workload_cases_cap) for u in units], dtype=float)
    score = eta + np.where(soft_rows[:, None], policy.workload_s_per_case * cases[None, :], 0.0)
    sole = np.array([bool(coverage.lost(u)) for u in units], dtype=np.bool_)
    if sole.any():
        grid_ids: dict[str, int] = {}
        inc_grid = np.array([grid_ids.setdefault(i.grid, len(grid_ids)) for i in incidents])
        home = np.array([grid_ids.setdefault(u.home_grid, len(grid_ids)) for u in units])
        hit = (inc_grid[:, None] != home[None, :]) & sole[None, :] & soft_rows[:, None]
        score[hit] += policy.coverage_penalty_s
    if busy_cols:
        score[:, busy_cols] += policy.preempt_penalty_s

    weights = np.array([policy.weight(p) for p in prio.tolist()], dtype=np.float64)
    benefit = np.where(feasible, weights[:, None] * (score - policy.unserved_cost_s), 0.0)
    rows, cols = linear_sum_assignment(benefit)

    out: list[_Row] = []
    matched = dict(zip(rows.tolist(), cols.tolist(), strict=True))
    for i, inc in enumerate(incidents):
        j = matched.get(i, -1)
        if j < 0 or not feasible[i, j]:
            if feasible[i].any():
                out.append(_unserved(reason("wait.taken")))
            else:
                out.append(_unserved(reason("wait.no_free_unit", qualification=inc.qualification)))
            continue
        unit = units[j]
        _, preempts, lost = _terms(inc, unit, coverage, policy)
        if fresh[j]:
            t_ij = float(eta[i, j])
            head = reason("cand.eta_road" if by_road[i, j] else "cand.eta_line", eta_s=t_ij)
            if preempts:
                why = reason("assign.joint_preempting", eta_s=t_ij,
                             incident=str(unit.current_incident),
                             priority=int(unit.current_priority or 0))
            else:
                why = reason("assign.joint", eta_s=t_ij)
            eta_ij: float | None = t_ij
        else:
            head = reason("assign.joint_no_position")
            why = head
            eta_ij = None
        text = "joint: " + "; ".join(texts(_reasons(head, unit, preempts, lost)))
        out.append((j, eta_ij, text, why))
    return out



def plan_reference(work: _Work, now: float, policy: DispatchPolicy,
          graph: RoadGraph | None) -> tuple[list[Assignment], dict[str, str], float]:
    """The joint plan, and the dispatched-not-accepted pairs it re-plans (incident ->
    its old unit) with the weighted seconds that saves (0 when it keeps them)."""
    incidents = list(work.incidents.values())
    units = list(work.units.values())
    plan = assign_jointly(incidents, units, graph, now, policy, work.excluded)
    # Only an unaccepted dispatch whose unit could take a case now waiting can gain from
    # re-planning (the first plan already was the best for everything else).
    wanted = {i.qualification for i in incidents if i.assigned_unit is None}
    held = [(i, work.units[i.assigned_unit]) for i in incidents
            if i.assigned_unit is not None and i.id not in work.fixed
            and i.assigned_unit in work.units
            and work.units[i.assigned_unit].status == "dispatched"
            and work.units[i.assigned_unit].current_incident == i.id
            and work.units[i.assigned_unit].qualifications & wanted]
    if not held or not plan:
        return plan, {}, 0.0
    # The alternative: the unaccepted dispatches undone, their cases and units free.
    freed = {u.id for _, u in held}
    held_ids = {h.id for h, _ in held}
    alt_incidents = [replace(i, assigned_unit=None) if i.id in held_ids else i
                     for i in incidents]
    alt_units = [replace(u, status="available", current_incident=None, current_priority=None)
                 if u.id in freed else u for u in units]
    alt = assign_jointly(alt_incidents, alt_units, graph, now, policy, work.excluded)
    by_id = work.incidents
    gain = (_cost(plan, by_id, policy) + _held_cost(held, graph, now, policy)
            - _cost(alt, by_id, policy))
    old = {i.id: u.id for i, u in held}
    new = {line.incident_id: line.unit_id for line in alt}
    moved = {iid: uid for iid, uid in old.items() if new.get(iid) != uid}
    # Each unit moved is one crew told "not you": the gain must pay for every one.
    if not moved or gain <= policy.replan_gain_s * len(moved):
        return plan, {}, 0.0
    # Lines for held cases whose unit stays are no-ops: drop them.
    alt = [line for line in alt if not (line.incident_id in old
                                        and old[line.incident_id] == line.unit_id)]
    return alt, moved, gain


def solve_reference_compat(*args: object) -> list[_Row]:
    """``solve_reference`` called as ``engine.assign_jointly`` now calls ``_solve`` (with
    a trailing ``explain`` flag, which only leaves texts out: the reference always writes
    them, and the reference ``_plan`` always asks for them)."""
    return solve_reference(*args[:7])  # type: ignore[arg-type]
