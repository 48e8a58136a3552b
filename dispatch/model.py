"""Values the dispatch engine reads and returns.

Everything here is a frozen dataclass: the engine takes a snapshot of units and
incidents, computes, and hands back new values. Nothing is mutated, nothing is
read from a clock or a socket; ``dispatch/service.py`` builds these from the
database and acts on the results.

Contracts that every function in ``dispatch/`` relies on:

- Coordinates are WGS-84 degrees (``lon``, ``lat``). Times are float UNIX
  timestamps (seconds, UTC); durations are seconds.
- Priority 1 is the most urgent: 1 critical (特急), 2 high/major (紧急),
  3 normal (一般), 4 low (较低). "Lower priority" means a *larger* number.
- Identifiers (units, incidents) are strings; the service converts the
  database's bigint incident ids with ``str()``.
"""

from __future__ import annotations

from dataclasses import dataclass

from dispatch.reasons import Reason

UNIT_KINDS: tuple[str, ...] = ("squad", "police", "grid_worker")

UNIT_STATUSES: tuple[str, ...] = (
    "available",  # idle and on duty: may be dispatched
    "dispatched",  # case sent, not yet moving
    "en_route",  # moving to a case
    "on_scene",  # handling a case: never pulled away by the engine
    "returning",  # case done, heading back: dispatchable only if the policy says so
    "off_duty",  # never a candidate
)

# Statuses a critical incident may pull a unit out of (the unit has not yet started work).
PREEMPTABLE_STATUSES: frozenset[str] = frozenset({"dispatched", "en_route"})

PRIORITIES: tuple[int, ...] = (1, 2, 3, 4)


@dataclass(frozen=True, slots=True)
class UnitState:
    """One unit (squad, police patrol or grid worker) as the engine sees it.

    ``lon``/``lat``/``position_ts`` are the latest GPS fix, all three ``None`` when
    the unit never reported one. ``current_priority`` is the priority of
    ``current_incident`` (``None`` when the unit has none); the engine needs it to
    decide whether a critical incident may preempt the unit.
    """

    id: str
    kind: str
    qualifications: frozenset[str]
    status: str
    lon: float | None
    lat: float | None
    position_ts: float | None
    home_grid: str
    duty_since: float | None
    cases_today: int
    current_incident: str | None = None
    current_priority: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in UNIT_KINDS:
            raise ValueError(f"unit {self.id}: unknown kind {self.kind!r}")
        if self.status not in UNIT_STATUSES:
            raise ValueError(f"unit {self.id}: unknown status {self.status!r}")
        if self.current_priority is not None and self.current_priority not in PRIORITIES:
            raise ValueError(f"unit {self.id}: bad current_priority {self.current_priority!r}")


@dataclass(frozen=True, slots=True)
class IncidentState:
    """An open incident. ``assigned_unit`` is ``None`` while it waits for a unit."""

    id: str
    category: str
    priority: int
    qualification: str
    lon: float
    lat: float
    grid: str
    opened_at: float
    assigned_unit: str | None = None

    def __post_init__(self) -> None:
        if self.priority not in PRIORITIES:
            raise ValueError(f"incident {self.id}: bad priority {self.priority!r}")


@dataclass(frozen=True, slots=True)
class Candidate:
    """One unit considered for an incident.

    ``eta_s`` and ``distance_m`` (straight line) are ``None`` when the unit's
    position is unknown or stale. ``score`` is what the ranking sorts on (seconds:
    ETA plus penalties, lower is better; ``stale_eta_s`` stands in for the ETA of a
    unit without a usable position); ``reasons`` explain it to the operator.
    ``preempts`` is the incident the unit would be pulled off, if any.
    """

    unit_id: str
    eta_s: float | None
    distance_m: float | None
    score: float
    reasons: tuple[str, ...]
    preempts: str | None = None
    # The same reasons as codes, for the pages to render in the reader's language.
    codes: tuple[Reason, ...] = ()


@dataclass(frozen=True, slots=True)
class Recommendation:
    """Candidates ranked best first; ``pick`` is the first one (``None`` if there is none)."""

    incident_id: str
    candidates: tuple[Candidate, ...]
    pick: str | None
    reason: str
    why: Reason | None = None  # ``reason`` as a code


@dataclass(frozen=True, slots=True)
class Assignment:
    """One line of a joint plan.

    ``unit_id`` is ``None`` when the incident stays waiting (no qualified unit
    free, or every one went to a more urgent incident); ``reason`` says which.
    ``preempted_incident`` is the incident the unit is pulled off; that incident
    appears in the same plan with its own line.
    """

    incident_id: str
    unit_id: str | None
    eta_s: float | None
    preempted_incident: str | None
    reason: str
    why: Reason | None = None  # the headline of ``reason`` as a code


@dataclass(frozen=True, slots=True)
class DispatchPolicy:
    """Every tunable of the engine, with the reason for its default.

    The defaults are starting points for a township of ~100 km² with squads in
    vehicles; the command center tunes them in settings.
    """

    # GPS fixes come every 10-30 s from patrol phones; 120 s means several fixes were
    # missed (phone off, tunnel, app killed). A vehicle covers ~1.3 km in that time at
    # 40 km/h, so the last fix no longer says where the unit is.
    stale_after_s: float = 120.0

    # Units heading back from a case are not counted as free by default: they still
    # file feedback on the way. A center short of units may turn this on.
    dispatch_returning: bool = False

    # Incidents at this priority or more urgent may pull a dispatched/en-route unit off
    # a strictly less urgent incident. Only critical (1) by default: preemption leaves
    # another citizen waiting longer, which is only worth it for a critical call.
    preempt_up_to_priority: int = 1

    # Added to a preempting unit's ETA: the radio handover and the re-dispatch of the
    # displaced case cost about two minutes, so a free unit that is at most two
    # minutes farther is preferred to pulling one off its case.
    preempt_penalty_s: float = 120.0

    # Each case the unit already handled today adds this much to its score, which
    # spreads work among units that are about equally close (three cases ~ one
    # minute) without sending a clearly farther unit.
    workload_s_per_case: float = 20.0

    # Cases beyond this many are not counted: a unit with 30 cases is not less fit than
    # one with 10 at a distance, and the cap keeps every servable cost bounded.
    workload_cases_cap: int = 10

    # Critical incidents are ranked on time alone: workload and coverage terms only
    # apply from this priority on (2 = every incident except critical ones).
    soft_terms_from_priority: int = 2

    # Coverage: sending away the last free unit of its home grid that holds some
    # qualification leaves that grid without it; this many seconds are added to such
    # a unit when the incident is outside its home grid. 0 turns the term off. 90 s
    # keeps a neighbour's last unit at home unless it is clearly the fastest.
    coverage_penalty_s: float = 90.0

    # Joint assignment: a unit with an unknown/stale position is costed as this many
    # seconds away. An hour is beyond any road time in a township, so every unit with
    # a known position is preferred (as rank() does), yet a stale unit still beats
    # leaving an incident unserved.
    stale_eta_s: float = 3600.0

    # Joint assignment: the cost of leaving an incident waiting, in seconds, before
    # the priority weight. Must exceed every servable cost so that serving an incident
    # always beats not serving it; validated below.
    unserved_cost_s: float = 6 * 3600.0

    # Joint assignment: weights of priorities 1..4 on travel time. One second of a
    # critical incident's wait counts as 8 s of a low-priority one; the weights also
    # decide who goes without when units are short (the heaviest are served first).
    priority_weights: tuple[float, float, float, float] = (8.0, 4.0, 2.0, 1.0)

    # No churn: a unit dispatched but not yet accepted is moved to another case only when
    # the new plan saves more than this for every unit it moves, in priority-weighted
    # seconds (weights below).
    # Moving it costs a radio call telling one crew "not you" and another a fresh turnout,
    # and an operator watching the board sees the case flip; 240 is two minutes of a normal
    # (p3, weight 2) case's response or one minute of a high (p2) one, about what the extra
    # call and the new turnout cost. A unit that accepted is moved only by preemption.
    replan_gain_s: float = 240.0

    # Candidates returned by rank(): the console shows a short list; all candidates
    # are still scored, only the tail is cut.
    max_candidates: int = 20

    def __post_init__(self) -> None:
        if len(self.priority_weights) != len(PRIORITIES) or min(self.priority_weights) <= 0:
            raise ValueError("priority_weights: one positive weight per priority 1..4")
        worst_served = (
            self.stale_eta_s
            + self.preempt_penalty_s
            + self.coverage_penalty_s
            + self.workload_s_per_case * self.workload_cases_cap
        )
        if self.unserved_cost_s <= worst_served:
            raise ValueError(
                f"unserved_cost_s must exceed every servable cost ({worst_served:.0f} s)"
            )
        if self.stale_after_s <= 0 or self.max_candidates < 1:
            raise ValueError("stale_after_s must be positive and max_candidates >= 1")

    def weight(self, priority: int) -> float:
        """The joint-assignment weight of an incident of ``priority``."""
        return self.priority_weights[priority - 1]


DEFAULT_POLICY = DispatchPolicy()
