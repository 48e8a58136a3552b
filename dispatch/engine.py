"""The dispatch engine: which unit goes to which incident.

Pure functions over snapshots (``dispatch/model.py``): no I/O, no clock; ``now``
is passed in. Three entry points:

- ``rank(incident, units, graph, now, policy)``: the ranked candidate list for
  one incident, with reasons, for the operator's console and the audit trail.
- ``assign_jointly(incidents, units, graph, now, policy)``: one plan for every
  waiting incident at once (a min-cost assignment), so that two incidents do not
  both grab the unit that only one of them needs.
- ``closest_idle(incident, units, now)``: the naive baseline (closest free
  qualified unit by straight line), kept for benchmarks.

Scoring, shared by ``rank`` and ``assign_jointly`` so that they agree on a single
incident. A unit's *score* for an incident is, in seconds:

    ETA by road
    + workload_s_per_case x min(cases_today, workload_cases_cap)        (*)
    + coverage_penalty_s if it is the last free holder of a qualification
      in its home grid and the incident is outside that grid            (*)
    + preempt_penalty_s if it is pulled off a less urgent incident

    (*) only for incidents with priority >= soft_terms_from_priority: a
        critical incident is ranked on time alone.

``rank`` sorts units with a known position by (score, cases today, longest on
duty, id) and puts units whose position is unknown or older than
``policy.stale_after_s`` after all of them, never using their last fix as if it
were current. ``assign_jointly`` minimises the sum over incidents of
``priority weight x score`` (a stale unit counts as ``stale_eta_s`` away) plus
``priority weight x unserved_cost_s`` for every incident left waiting.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment

from dispatch.geo import RoadGraph, haversine_m, haversine_m_np, travel_time_matrix
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
from dispatch.reasons import Reason, reason, texts

FloatArray = NDArray[np.float64]


# ---------------------------------------------------------------------- unit pools
_FREE = frozenset({"available"})
_FREE_WITH_RETURNING = frozenset({"available", "returning"})


def _free_statuses(policy: DispatchPolicy) -> frozenset[str]:
    """Statuses in which a unit counts as free under ``policy``."""
    return _FREE_WITH_RETURNING if policy.dispatch_returning else _FREE


def _may_preempt(incident: IncidentState, unit: UnitState, policy: DispatchPolicy) -> bool:
    """True if ``incident`` may pull ``unit`` off its current, strictly less urgent case."""
    return (
        incident.priority <= policy.preempt_up_to_priority
        and unit.status in PREEMPTABLE_STATUSES
        and unit.current_incident is not None
        and unit.current_incident != incident.id
        and unit.current_priority is not None
        and unit.current_priority > incident.priority
    )


def _fresh(unit: UnitState, now: float, policy: DispatchPolicy) -> bool:
    return (
        unit.lon is not None
        and unit.lat is not None
        and unit.position_ts is not None
        and now - unit.position_ts <= policy.stale_after_s
    )


class _Coverage:
    """Which qualifications each home grid holds in exactly one free unit."""

    __slots__ = ("_free", "_ones")

    def __init__(self, units: Iterable[UnitState], policy: DispatchPolicy) -> None:
        self._free = _free_statuses(policy)
        self._ones: dict[str, frozenset[str]] = {}
        if policy.coverage_penalty_s <= 0:
            return
        # One Counter over (home grid, qualification) pairs, counted in C (a Counter per
        # grid cost ~1 ms over 300 units, a Python dict per grid ~1 ms over 2,000, and
        # every decision builds this two or three times).
        free = self._free
        pairs = Counter((u.home_grid, q) for u in units if u.status in free
                        for q in u.qualifications)
        ones: dict[str, set[str]] = {}
        for (grid, q), c in pairs.items():
            if c == 1:
                ones.setdefault(grid, set()).add(q)
        self._ones = {grid: frozenset(qs) for grid, qs in ones.items()}

    def lost(self, unit: UnitState) -> tuple[str, ...]:
        """Qualifications the unit's home grid has no other free holder of (if it leaves)."""
        ones = self._ones.get(unit.home_grid)
        if ones is None or unit.status not in self._free:
            return ()
        alone = ones & unit.qualifications
        return tuple(sorted(alone)) if alone else ()


def _terms(
    incident: IncidentState, unit: UnitState, coverage: _Coverage, policy: DispatchPolicy
) -> tuple[float, bool, tuple[str, ...]]:
    """Seconds added to the ETA for one pair: (extra, preempts?, qualifications lost)."""
    extra = 0.0
    preempts = _may_preempt(incident, unit, policy)
    if preempts:
        extra += policy.preempt_penalty_s
    lost: tuple[str, ...] = ()
    if incident.priority >= policy.soft_terms_from_priority:
        extra += policy.workload_s_per_case * min(unit.cases_today, policy.workload_cases_cap)
        if unit.home_grid != incident.grid:
            lost = coverage.lost(unit)
            if lost:
                extra += policy.coverage_penalty_s
    return extra, preempts, lost


def _reasons(
    head: Reason, unit: UnitState, preempts: bool, lost: tuple[str, ...]
) -> tuple[Reason, ...]:
    """The reasons for one candidate, the ETA statement first."""
    reasons = [head]
    if preempts:
        reasons.append(reason("cand.preempts", incident=str(unit.current_incident),
                              priority=int(unit.current_priority or 0)))
    if lost:
        reasons.append(reason("cand.last_free", qualifications="/".join(lost),
                              grid=unit.home_grid))
    reasons.append(reason("cand.cases_today", n=unit.cases_today))
    return tuple(reasons)


# ---------------------------------------------------------------------- ranking
def _duty_key(unit: UnitState) -> float:
    # Fairness tie-break: among equal scores and equal case counts, the unit on duty
    # longest has had the fewest cases per hour, so it goes first. Unknown duty start
    # sorts last.
    return unit.duty_since if unit.duty_since is not None else float("inf")


def _ranked_order(
    incident: IncidentState,
    fresh: Sequence[UnitState],
    stale: Sequence[UnitState],
    times: FloatArray,
    coverage: _Coverage,
    policy: DispatchPolicy,
) -> tuple[list[int], list[float]]:
    """The candidates ``fresh + stale`` best first (indices into that concatenation), and
    every candidate's score.

    The order of sorting ``(stale?, score, cases today, duty key, id)`` tuples, and each
    score the float ``_terms`` gives (its terms added in the same order, so the same
    rounding): one stable lexsort over numpy columns instead of a Python tuple per unit
    and a sort of them, which at town scale (2,000 units) was most of a decision's core
    time. Ids are unique, so the order is total and the same as the tuples'.
    """
    both = [*fresh, *stale]
    cap = policy.workload_cases_cap
    base = np.empty(len(both), dtype=np.float64)
    base[: len(fresh)] = times
    base[len(fresh):] = policy.stale_eta_s
    extra = np.zeros(len(both), dtype=np.float64)
    preempts = np.array([_may_preempt(incident, u, policy) for u in both], dtype=np.bool_)
    if preempts.any():
        extra += np.where(preempts, policy.preempt_penalty_s, 0.0)
    cases = np.array([u.cases_today for u in both], dtype=np.int64)
    if incident.priority >= policy.soft_terms_from_priority:
        extra += policy.workload_s_per_case * np.minimum(cases, cap)
        grid = incident.grid
        lost = np.array([u.home_grid != grid and bool(coverage.lost(u)) for u in both],
                        dtype=np.bool_)
        if lost.any():
            extra += np.where(lost, policy.coverage_penalty_s, 0.0)
    scores = base + extra
    group = np.zeros(len(both), dtype=np.int8)
    group[len(fresh):] = 1
    duty = np.array([_duty_key(u) for u in both], dtype=np.float64)
    ids = np.array([u.id for u in both], dtype=np.str_)
    # np.lexsort: the last key is the primary one.
    order = np.lexsort((ids, duty, cases, scores, group))
    return order.tolist(), scores.tolist()


def rank(
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
    fresh: list[UnitState] = []
    stale: list[UnitState] = []
    for u in pool:
        (fresh if _fresh(u, now, policy) else stale).append(u)
    times = np.zeros((1, 0))
    by_road = np.zeros((1, 0), dtype=np.bool_)
    dists = np.zeros(0)
    if fresh:
        lons = np.array([u.lon for u in fresh], dtype=np.float64)
        lats = np.array([u.lat for u in fresh], dtype=np.float64)
        times, by_road = travel_time_matrix(graph, [incident.lon], [incident.lat], lons, lats)
        dists = haversine_m_np(lons, lats, incident.lon, incident.lat)

    # Score everything at once, sort, and spell out reasons only for the shortlist.
    order, scores = _ranked_order(incident, fresh, stale, times[0], coverage, policy)

    ranked: list[Candidate] = []
    for k in order[: policy.max_candidates]:
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
                scores[k],
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


def closest_idle(incident: IncidentState, units: Sequence[UnitState], now: float) -> str | None:
    """Baseline: the ``available`` qualified unit closest by straight line.

    Uses the same staleness cut as the default policy (a unit without a fresh fix
    is skipped) so that a comparison with ``rank`` isolates road distance and the
    soft terms. ``None`` if there is none.
    """
    best: tuple[float, str] | None = None
    for u in units:
        if (
            u.status != "available"
            or incident.qualification not in u.qualifications
            or not _fresh(u, now, DEFAULT_POLICY)
        ):
            continue
        assert u.lon is not None and u.lat is not None
        d = haversine_m(u.lon, u.lat, incident.lon, incident.lat)
        if best is None or (d, u.id) < best:
            best = (d, u.id)
    return best[1] if best else None


# ---------------------------------------------------------------------- joint assignment
# One solved row: (index of the unit in the pool or -1, eta or None, reason text, headline).
_Row = tuple[int, float | None, str, Reason]


def _solve(
    incidents: Sequence[IncidentState],
    units: Sequence[UnitState],
    graph: RoadGraph | None,
    now: float,
    policy: DispatchPolicy,
    coverage: _Coverage,
    excluded: Mapping[str, frozenset[str]],
    explain: bool = True,
) -> list[_Row]:
    """Min-cost assignment of ``incidents`` (rows) to ``units`` (columns), one row each.
    ``explain=False``: served rows come without their reason text (""), the same
    assignment otherwise.

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
    all_fresh = bool(fresh.all())
    if not all_fresh:
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
        if all_fresh:
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
    workload = policy.workload_s_per_case * cases[None, :]
    # Every row soft (the usual case: no critical one) or none: no n x m select needed.
    # The same floats either way (x + 0.0 == x).
    if soft_rows.all():
        score = eta + workload
    elif not soft_rows.any():
        score = eta + 0.0
    else:
        score = eta + np.where(soft_rows[:, None], workload, 0.0)
    sole_cols = [j for j, u in enumerate(units) if coverage.lost(u)]
    if sole_cols:
        # Only the columns of units that are their grid's last free holder of something.
        grid_ids: dict[str, int] = {}
        inc_grid = np.array([grid_ids.setdefault(i.grid, len(grid_ids)) for i in incidents])
        home = np.array([grid_ids.setdefault(units[j].home_grid, len(grid_ids))
                         for j in sole_cols])
        hit = (inc_grid[:, None] != home[None, :]) & soft_rows[:, None]
        # Added where hit, 0.0 elsewhere: the same floats (x + 0.0 == x).
        score[:, sole_cols] += np.where(hit, policy.coverage_penalty_s, 0.0)
    if busy_cols:
        score[:, busy_cols] += policy.preempt_penalty_s

    weights = np.array([policy.weight(p) for p in prio.tolist()], dtype=np.float64)
    # benefit = where(feasible, weights x (score - unserved_cost_s), 0), computed in place
    # on ``score`` (its own array): at 141 x 2,000 each fresh n x m temporary cost more
    # than the arithmetic.
    benefit = score
    np.subtract(benefit, policy.unserved_cost_s, out=benefit)
    np.multiply(benefit, weights[:, None], out=benefit)
    np.copyto(benefit, 0.0, where=~feasible)
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
        if explain:
            _, preempts, lost = _terms(inc, unit, coverage, policy)
        else:
            preempts = _may_preempt(inc, unit, policy)
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
        text = "joint: " + "; ".join(texts(_reasons(head, unit, preempts, lost))) \
            if explain else ""
        out.append((j, eta_ij, text, why))
    return out


def _unserved(why: Reason) -> _Row:
    return (-1, None, why.text(), why)


def _priority_order(incident: IncidentState) -> tuple[int, float, str]:
    return (incident.priority, incident.opened_at, incident.id)


def _line(incident: IncidentState, pool: Sequence[UnitState], row: _Row, note: str) -> Assignment:
    j, eta, text, why = row
    text = note + text
    if j < 0:
        return Assignment(incident.id, None, None, None, text, why)
    unit = pool[j]
    preempted = unit.current_incident if unit.status in PREEMPTABLE_STATUSES else None
    return Assignment(incident.id, unit.id, eta, preempted, text, why)


def assign_jointly(
    incidents: Sequence[IncidentState],
    units: Sequence[UnitState],
    graph: RoadGraph | None,
    now: float,
    policy: DispatchPolicy = DEFAULT_POLICY,
    excluded: Mapping[str, frozenset[str]] | None = None,
    explain: bool = True,
) -> list[Assignment]:
    """A plan for every waiting incident, minimising priority-weighted response time.

    ``incidents`` are the open incidents; those with ``assigned_unit is None`` wait
    and get one ``Assignment`` each (``unit_id=None`` if none can be served). The
    others are only consulted when a critical incident preempts their unit: the
    displaced incident then waits again and is re-planned in the same call (its
    line starts "displaced by ..."); if it is not among ``incidents`` its line says
    to re-queue it. Works with more incidents than units and the reverse. Lines
    are ordered by priority, then age, then id.

    Two solves: the first over free and preemptable units; if it preempts, those
    preemptions are kept and everything else (including displaced incidents) is
    solved again over the free units. Displaced incidents are less urgent than
    the incident that displaced them, so they never preempt in turn. The coverage
    term is computed once from the free units before the solve (it does not see
    two units leaving the same grid in one plan). ``excluded`` maps an incident id to
    units that must not get it (they declined it or let it time out). ``explain=False``:
    the same plan, its served lines without their reason text (a plan only costed, as the
    re-plan check's alternative mostly is: at town scale the texts of a few hundred lines
    were a tenth of a decision).
    """
    excluded = excluded or {}
    waiting = sorted((i for i in incidents if i.assigned_unit is None), key=_priority_order)
    if not waiting:
        return []
    by_id = {i.id: i for i in incidents}
    quals = {i.qualification for i in waiting}
    coverage = _Coverage(units, policy)
    free_statuses = _free_statuses(policy)
    all_free = [u for u in units if u.status in free_statuses]
    free = [u for u in all_free if u.qualifications & quals]
    urgent = [i.priority for i in waiting if i.priority <= policy.preempt_up_to_priority]
    busy = [
        u
        for u in units
        if urgent
        and u.status in PREEMPTABLE_STATUSES
        and u.current_priority is not None
        and u.current_priority > min(urgent)
        and u.qualifications & quals
    ]
    pool = free + busy
    first = _solve(waiting, pool, graph, now, policy, coverage, excluded, explain)
    preempting = {i: row for i, row in enumerate(first) if row[0] >= len(free)}
    if not preempting:
        return [_line(inc, pool, row, "") for inc, row in zip(waiting, first, strict=True)]

    lines: list[tuple[tuple[int, float, str], Assignment]] = []
    displaced_by: dict[str, str] = {}
    for i, row in preempting.items():
        lines.append((_priority_order(waiting[i]), _line(waiting[i], pool, row, "")))
        victim_id = pool[row[0]].current_incident
        assert victim_id is not None
        displaced_by[victim_id] = waiting[i].id
        if victim_id not in by_id:
            why = f"displaced by {waiting[i].id}; not in the open set, re-queue it"
            lines.append(((9, 0.0, victim_id), Assignment(
                victim_id, None, None, None, why,
                reason("withdraw.preempted", by=waiting[i].id, priority=waiting[i].priority))))
    displaced = [replace(by_id[v], assigned_unit=None) for v in displaced_by if v in by_id]
    rest = sorted(
        [inc for i, inc in enumerate(waiting) if i not in preempting] + displaced,
        key=_priority_order,
    )
    # Displaced incidents may need qualifications no waiting incident needed.
    rest_quals = {i.qualification for i in rest}
    rest_free = [u for u in all_free if u.qualifications & rest_quals]
    second = _solve(rest, rest_free, graph, now, policy, coverage, excluded, explain)
    for inc, row in zip(rest, second, strict=True):
        note = f"displaced by {displaced_by[inc.id]}; " if inc.id in displaced_by else ""
        lines.append((_priority_order(inc), _line(inc, rest_free, row, note)))
    lines.sort(key=lambda kl: kl[0])
    return [line for _, line in lines]
