"""The dispatch decision core: one input in, one decision out. The hub and the benchmarks
both decide through ``decide`` and nothing else.

    decide(state, event, now, policy, graph) -> Decision

- ``state`` (``DispatchState``): the open incidents (waiting: ``assigned_unit is None``;
  active: a unit dispatched or en route), every unit (position, status, qualifications,
  shift, current case) and, per incident, the units that may not get it again (they
  declined it, let it time out or were redirected off it). The state is what is
  committed *before* the input takes effect, except for a decline, which the crew's own
  request has already recorded (either is accepted: see ``UnitDeclined``).
- ``event``: one of ``IncidentRegistered``, ``UnitFreed``, ``AcceptTimedOut``,
  ``UnitDeclined``, ``Override``, ``Redirect``, ``PositionUpdated``, ``Replan``.
- ``now``: seconds (UNIX). No clock is read, no I/O is done; the same inputs give the
  same decision.
- ``Decision``: ``withdrawals`` (units taken off cases: apply first), ``dispatches``
  (unit -> case, each with its ranked candidates and a ``Reason``), ``alerts`` for the
  supervisor, and ``waiting`` (cases left without a unit, with why). Reasons are codes
  with parameters (``dispatch/reasons.py``); the pages translate them.

How it decides (``engine.assign_jointly`` does the matching; this module only frames it):

1. The input's own effect: an accept time-out or a decline takes the unit off the case
   and bars it from that case; an override withdraws the case's unit and sends the
   operator's; a redirect takes an en-route unit off its case (which goes back to
   planning) and, if asked, sends it to another case.
2. A joint plan: one min-cost matching of every waiting case over every free unit, with
   preemption of dispatched/en-route units by more urgent cases as ``policy`` allows.
3. No churn: a unit that accepted a case (status ``en_route``) is moved only by
   preemption. A unit dispatched but not yet accepted is re-planned only if a second plan,
   in which those units and their cases are free again, is cheaper than the first by more
   than ``policy.replan_gain_s`` priority-weighted seconds for every unit it moves.

Errors (an override or redirect that cannot be done) raise ``core.errors`` exceptions with
stable codes; no other input raises.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from core.errors import InvalidInput, NotFound
from dispatch.engine import assign_jointly, rank
from dispatch.geo import RoadGraph, travel_time_matrix
from dispatch.model import (
    PREEMPTABLE_STATUSES,
    Assignment,
    Candidate,
    DispatchPolicy,
    IncidentState,
    UnitState,
)
from dispatch.reasons import Reason, reason

# Statuses an operator may send a unit from by override (the engine's rule: not from
# another case; a redirect is the way to move a unit that has one).
OVERRIDE_FROM: frozenset[str] = frozenset({"available", "returning"})


# ---------------------------------------------------------------------- state
@dataclass(frozen=True, slots=True)
class DispatchState:
    """What the core decides over (see the module docstring)."""

    incidents: tuple[IncidentState, ...]
    units: tuple[UnitState, ...]
    # incident id -> units barred from it (declined, timed out, redirected off it).
    excluded: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def incident(self, incident_id: str) -> IncidentState | None:
        return next((i for i in self.incidents if i.id == incident_id), None)

    def unit(self, unit_id: str) -> UnitState | None:
        return next((u for u in self.units if u.id == unit_id), None)


# ---------------------------------------------------------------------- inputs
@dataclass(frozen=True, slots=True)
class IncidentRegistered:
    incident_id: str


@dataclass(frozen=True, slots=True)
class UnitFreed:
    unit_id: str


@dataclass(frozen=True, slots=True)
class AcceptTimedOut:
    """The crew of ``unit_id`` did not accept ``incident_id`` within ``waited_s``."""

    incident_id: str
    unit_id: str
    waited_s: float


@dataclass(frozen=True, slots=True)
class UnitDeclined:
    """The crew declined. The state may still show the unit on the case or not."""

    incident_id: str
    unit_id: str


@dataclass(frozen=True, slots=True)
class Override:
    """An operator sends ``unit_id`` to ``incident_id`` instead of the plan's pick."""

    incident_id: str
    unit_id: str
    reason_code: str


@dataclass(frozen=True, slots=True)
class Redirect:
    """An operator takes a dispatched/en-route unit off its case (which is planned again)
    and, if ``to_incident`` is given, sends it there."""

    unit_id: str
    reason_code: str
    to_incident: str | None = None


@dataclass(frozen=True, slots=True)
class PositionUpdated:
    """A unit's fix moved. Plans only if some waiting case could use that unit."""

    unit_id: str


@dataclass(frozen=True, slots=True)
class Replan:
    """Plan every waiting case (after a start, a leader change or a lost event)."""


Input = (
    IncidentRegistered | UnitFreed | AcceptTimedOut | UnitDeclined | Override | Redirect
    | PositionUpdated | Replan
)


# ---------------------------------------------------------------------- decision
@dataclass(frozen=True, slots=True)
class Dispatch:
    """Send ``unit_id`` to ``incident_id``. ``candidates``: the ranking for the record
    (the case's own ranking, without the units barred from it). ``override_code``: the
    operator's reason code when an operator chose the unit."""

    incident_id: str
    unit_id: str
    eta_s: float | None
    why: Reason
    candidates: tuple[Candidate, ...]
    pick: str | None  # the ranking's first (what the engine would have sent alone)
    preempts: str | None = None
    override_code: str | None = None


@dataclass(frozen=True, slots=True)
class Withdrawal:
    """Take ``unit_id`` off ``incident_id``; the assignment ends as ``status``
    (preempted, superseded, escalated, declined, redirected) and the case waits again."""

    incident_id: str
    unit_id: str
    status: str
    why: Reason


@dataclass(frozen=True, slots=True)
class Alert:
    incident_id: str
    kind: str  # escalated, preempted
    why: Reason


@dataclass(frozen=True, slots=True)
class Waiting:
    incident_id: str
    why: Reason


@dataclass(frozen=True, slots=True)
class Decision:
    withdrawals: tuple[Withdrawal, ...] = ()
    dispatches: tuple[Dispatch, ...] = ()
    alerts: tuple[Alert, ...] = ()
    waiting: tuple[Waiting, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.withdrawals or self.dispatches or self.alerts)


# ---------------------------------------------------------------------- working copy
class _Work:
    """The state as the input's own effect leaves it, before planning."""

    def __init__(self, state: DispatchState) -> None:
        self.incidents = {i.id: i for i in state.incidents}
        self.units = {u.id: u for u in state.units}
        self.excluded: dict[str, frozenset[str]] = dict(state.excluded)
        self.withdrawals: list[Withdrawal] = []
        self.dispatches: list[Dispatch] = []
        self.alerts: list[Alert] = []
        self.fixed: set[str] = set()  # incidents the input itself settled
        # The units a plan was made over: every case of one plan is ranked against the
        # same picture, not one already missing the units sent to earlier lines.
        self.ranked_over: dict[str, UnitState] | None = None

    def bar(self, incident_id: str, unit_id: str) -> None:
        self.excluded[incident_id] = self.excluded.get(incident_id, frozenset()) | {unit_id}

    def release(self, incident_id: str, unit_id: str, status: str, why: Reason) -> None:
        """Take the unit off the case (if it is on it): both free, the withdrawal noted."""
        inc = self.incidents.get(incident_id)
        if inc is not None and inc.assigned_unit == unit_id:
            self.incidents[incident_id] = replace(inc, assigned_unit=None)
            self.withdrawals.append(Withdrawal(incident_id, unit_id, status, why))
        unit = self.units.get(unit_id)
        if unit is not None and unit.current_incident == incident_id:
            self.units[unit_id] = replace(unit, status="available", current_incident=None,
                                          current_priority=None)

    def send(self, incident_id: str, unit_id: str, why: Reason, graph: RoadGraph | None,
             now: float, policy: DispatchPolicy, override_code: str | None) -> None:
        inc = self.incidents[incident_id]
        rec = rank(inc, self._rankable(incident_id), graph, now, policy)
        cand = next((c for c in rec.candidates if c.unit_id == unit_id), None)
        eta = cand.eta_s if cand is not None else _eta(self.units[unit_id], inc, graph, now,
                                                        policy)
        self.dispatches.append(Dispatch(incident_id, unit_id, eta, why, rec.candidates,
                                        rec.pick, None, override_code))
        self.incidents[incident_id] = replace(inc, assigned_unit=unit_id)
        self.units[unit_id] = replace(self.units[unit_id], status="dispatched",
                                      current_incident=incident_id,
                                      current_priority=inc.priority)
        self.fixed.add(incident_id)

    def _rankable(self, incident_id: str) -> list[UnitState]:
        barred = self.excluded.get(incident_id, frozenset())
        pool = self.ranked_over if self.ranked_over is not None else self.units
        return [u for u in pool.values() if u.id not in barred]


def _eta(unit: UnitState, inc: IncidentState, graph: RoadGraph | None, now: float,
         policy: DispatchPolicy) -> float | None:
    if not _eta_known(unit, now, policy):
        return None
    assert unit.lon is not None and unit.lat is not None
    t, _ = travel_time_matrix(graph, [inc.lon], [inc.lat], [unit.lon], [unit.lat])
    return float(t[0, 0])


# ---------------------------------------------------------------------- the input's effect
def _apply_input(work: _Work, event: Input, now: float, policy: DispatchPolicy,
                 graph: RoadGraph | None) -> bool:
    """Carry out what the input itself asks. Returns False when there is nothing to plan
    (a stale time-out, a position update no waiting case cares about)."""
    if isinstance(event, AcceptTimedOut):
        inc = work.incidents.get(event.incident_id)
        unit = work.units.get(event.unit_id)
        if inc is None or unit is None or inc.assigned_unit != unit.id \
                or unit.status != "dispatched":
            return False  # accepted, withdrawn or closed meanwhile: nothing to escalate
        why = reason("withdraw.escalated", unit=unit.id, waited_s=event.waited_s)
        work.release(inc.id, unit.id, "escalated", why)
        work.bar(inc.id, unit.id)
        work.alerts.append(Alert(inc.id, "escalated", reason(
            "alert.escalated", unit=unit.id, incident=inc.id)))
    elif isinstance(event, UnitDeclined):
        work.release(event.incident_id, event.unit_id, "declined",
                     reason("withdraw.declined", unit=event.unit_id))
        work.bar(event.incident_id, event.unit_id)
    elif isinstance(event, Override):
        _override(work, event, now, policy, graph)
    elif isinstance(event, Redirect):
        _redirect(work, event, now, policy, graph)
    elif isinstance(event, PositionUpdated):
        unit = work.units.get(event.unit_id)
        if unit is None:
            return False
        return any(i.assigned_unit is None and i.qualification in unit.qualifications
                   for i in work.incidents.values())
    return True


def _override(work: _Work, event: Override, now: float, policy: DispatchPolicy,
              graph: RoadGraph | None) -> None:
    inc = work.incidents.get(event.incident_id)
    if inc is None:
        raise NotFound(f"incident {event.incident_id} is not open",
                       code="incident.not_found")
    unit = work.units.get(event.unit_id)
    if unit is None:
        raise NotFound(f"unit {event.unit_id} not found", code="unit.not_found")
    if inc.assigned_unit == unit.id:
        raise InvalidInput(f"{unit.id} already has this case", code="dispatch.same_unit")
    if unit.status not in OVERRIDE_FROM:
        raise InvalidInput(f"unit {unit.id} is {unit.status}", code="unit.busy")
    if inc.assigned_unit is not None:
        work.release(inc.id, inc.assigned_unit, "superseded",
                     reason("withdraw.override", code=event.reason_code))
    work.send(inc.id, unit.id, reason("assign.override", code=event.reason_code), graph, now,
              policy, event.reason_code)


def _redirect(work: _Work, event: Redirect, now: float, policy: DispatchPolicy,
              graph: RoadGraph | None) -> None:
    unit = work.units.get(event.unit_id)
    if unit is None:
        raise NotFound(f"unit {event.unit_id} not found", code="unit.not_found")
    if unit.status not in PREEMPTABLE_STATUSES or unit.current_incident is None:
        raise InvalidInput(f"unit {unit.id} is {unit.status}, not on its way to a case",
                           code="unit.not_en_route")
    current = unit.current_incident
    target = work.incidents.get(event.to_incident) if event.to_incident else None
    if event.to_incident is not None:
        if target is None:
            raise NotFound(f"incident {event.to_incident} is not open",
                           code="incident.not_found")
        if target.id == current:
            raise InvalidInput(f"{unit.id} already has this case", code="dispatch.same_unit")
    work.release(current, unit.id, "redirected",
                 reason("withdraw.redirected", unit=unit.id, code=event.reason_code))
    work.bar(current, unit.id)
    if target is not None:
        if target.assigned_unit is not None:
            work.release(target.id, target.assigned_unit, "superseded",
                         reason("withdraw.override", code=event.reason_code))
        work.send(target.id, unit.id, reason("assign.redirect", code=event.reason_code),
                  graph, now, policy, event.reason_code)


# ---------------------------------------------------------------------- planning
def _cost(lines: Sequence[Assignment], incidents: Mapping[str, IncidentState],
          policy: DispatchPolicy) -> float:
    """Priority-weighted seconds of a plan: ETA (stale: ``stale_eta_s``) per served case,
    plus the preemption penalty, ``unserved_cost_s`` per case left waiting."""
    total = 0.0
    for line in lines:
        inc = incidents.get(line.incident_id)
        if inc is None:
            continue
        if line.unit_id is None:
            s = policy.unserved_cost_s
        else:
            s = line.eta_s if line.eta_s is not None else policy.stale_eta_s
            if line.preempted_incident is not None:
                s += policy.preempt_penalty_s
        total += policy.weight(inc.priority) * s
    return total


def _held_cost(held: Sequence[tuple[IncidentState, UnitState]], graph: RoadGraph | None,
               now: float, policy: DispatchPolicy) -> float:
    """Weighted seconds of keeping each (case, dispatched unit) pair as it is (one
    travel-time matrix for all pairs, its diagonal used)."""
    fresh = [(i, u) for i, u in held if _eta_known(u, now, policy)]
    total = policy.stale_eta_s * sum(policy.weight(i.priority) for i, u in held
                                     if not _eta_known(u, now, policy))
    if fresh:
        t, _ = travel_time_matrix(graph, [i.lon for i, _ in fresh], [i.lat for i, _ in fresh],
                                  [u.lon or 0.0 for _, u in fresh],  # known: filtered
                                  [u.lat or 0.0 for _, u in fresh])
        total += sum(policy.weight(i.priority) * float(t[k, k])
                     for k, (i, _) in enumerate(fresh))
    return total


def _eta_known(unit: UnitState, now: float, policy: DispatchPolicy) -> bool:
    return (unit.lon is not None and unit.lat is not None and unit.position_ts is not None
            and now - unit.position_ts <= policy.stale_after_s)


def _plan(work: _Work, now: float, policy: DispatchPolicy,
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
    # Built field by field: ``dataclasses.replace`` costs ~5x a constructor call, and at
    # town scale a decision frees a hundred or more held pairs.
    alt_incidents = [IncidentState(i.id, i.category, i.priority, i.qualification, i.lon,
                                   i.lat, i.grid, i.opened_at, None)
                     if i.id in held_ids else i for i in incidents]
    alt_units = [UnitState(u.id, u.kind, u.qualifications, "available", u.lon, u.lat,
                           u.position_ts, u.home_grid, u.duty_since, u.cases_today, None, None)
                 if u.id in freed else u for u in units]
    # Costed first without reason texts; only a re-plan that is carried out needs them
    # (the same plan again, with them: the core is deterministic).
    alt = assign_jointly(alt_incidents, alt_units, graph, now, policy, work.excluded,
                         explain=False)
    by_id = work.incidents
    gain = (_cost(plan, by_id, policy) + _held_cost(held, graph, now, policy)
            - _cost(alt, by_id, policy))
    old = {i.id: u.id for i, u in held}
    new = {line.incident_id: line.unit_id for line in alt}
    moved = {iid: uid for iid, uid in old.items() if new.get(iid) != uid}
    # Each unit moved is one crew told "not you": the gain must pay for every one.
    if not moved or gain <= policy.replan_gain_s * len(moved):
        return plan, {}, 0.0
    alt = assign_jointly(alt_incidents, alt_units, graph, now, policy, work.excluded)
    # Lines for held cases whose unit stays are no-ops: drop them.
    alt = [line for line in alt if not (line.incident_id in old
                                        and old[line.incident_id] == line.unit_id)]
    return alt, moved, gain


def _carry_out(work: _Work, plan: Sequence[Assignment], moved: Mapping[str, str],
               gain: float, now: float, policy: DispatchPolicy,
               graph: RoadGraph | None) -> list[Waiting]:
    waiting: list[Waiting] = []
    new_unit_of = {line.incident_id: line.unit_id for line in plan}
    for iid, uid in moved.items():
        to = next((line.incident_id for line in plan if line.unit_id == uid), None)
        work.release(iid, uid, "superseded", reason(
            "withdraw.replanned", unit=uid, to=to or "-", gain_s=gain))
    # Preemptions first: they free the case they displace, planned in the same lines.
    for line in plan:
        if line.unit_id is None or line.preempted_incident is None:
            continue
        victim, uid = line.preempted_incident, line.unit_id
        by = work.incidents[line.incident_id]
        work.release(victim, uid, "preempted",
                     reason("withdraw.preempted", by=by.id, priority=by.priority))
        work.alerts.append(Alert(victim, "preempted", reason(
            "alert.preempted", unit=uid, from_incident=victim, to=by.id,
            priority=by.priority)))
    for line in plan:
        inc = work.incidents.get(line.incident_id)
        if inc is None:
            continue
        if line.unit_id is None:
            if inc.assigned_unit is None:
                waiting.append(Waiting(inc.id, line.why or reason("wait.taken")))
            continue
        if new_unit_of.get(inc.id) is None or inc.assigned_unit == line.unit_id:
            continue
        why = line.why or reason("assign.joint", eta_s=line.eta_s or 0.0)
        before = len(work.dispatches)
        work.send(inc.id, line.unit_id, why, graph, now, policy, None)
        if line.preempted_incident is not None:
            d = work.dispatches[before]
            work.dispatches[before] = replace(d, preempts=line.preempted_incident,
                                              eta_s=line.eta_s)
        elif line.eta_s is not None:
            work.dispatches[before] = replace(work.dispatches[before], eta_s=line.eta_s)
    return waiting


# ---------------------------------------------------------------------- entry point
def decide(state: DispatchState, event: Input, now: float, policy: DispatchPolicy,
           graph: RoadGraph | None) -> Decision:
    """The decision for one input (see the module docstring). Pure."""
    work = _Work(state)
    if not _apply_input(work, event, now, policy, graph):
        return Decision()
    waiting: list[Waiting] = []
    if any(i.assigned_unit is None for i in work.incidents.values()):
        plan, moved, gain = _plan(work, now, policy, graph)
        work.ranked_over = dict(work.units)
        waiting = _carry_out(work, plan, moved, gain, now, policy, graph)
    return Decision(tuple(work.withdrawals), tuple(work.dispatches), tuple(work.alerts),
                    tuple(waiting))


def candidates_json(candidates: Sequence[Candidate]) -> list[dict[str, object]]:
    """Candidates as recorded (``assignments.recommendation``): figures, English texts
    and the reason codes the pages translate."""
    return [{"unit_id": c.unit_id, "eta_s": c.eta_s, "distance_m": c.distance_m,
             "score": c.score, "reasons": list(c.reasons), "preempts": c.preempts,
             "codes": [r.as_json() for r in c.codes]} for c in candidates]


__all__ = [
    "AcceptTimedOut", "Alert", "Decision", "Dispatch", "DispatchState", "IncidentRegistered",
    "Input", "Override", "PositionUpdated", "Redirect", "Replan", "UnitDeclined",
    "UnitFreed", "Waiting", "Withdrawal", "candidates_json", "decide",
]
