"""The replay itself: one dispatch policy (the naive ``closest_idle`` or the hub's core,
``engine``) over one incident stream, as a deterministic discrete-event simulation
(``Simulation``; the model is in dispatch_bench.py's docstring)."""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence
from dataclasses import dataclass

from dispatch.engine import closest_idle
from dispatch.model import DispatchPolicy, UnitState
from dispatch.planner import DispatchState, IncidentRegistered, Input, UnitFreed, decide
from simulators.bench.dispatch_town import Town, UnitSpec
from simulators.bench.dispatch_workload import T0, Incident

# Time from the dispatch order to the unit moving: NFPA 1710 allows 60 s (EMS) to 80 s
# (fire) turnout; a squad in a patrol car is nearer the first.
TURNOUT_S = 60.0


# The core's policy for this benchmark: the hub's own (core/settings.py builds the same
# through dispatch.decisions.policy_from_settings): DispatchPolicy defaults except the two
# preemption knobs below, each a setting a command center can change. Tried and left at
# the defaults (no gain beyond seed noise): priority weights (8, 4, 2, 1) vs steeper
# ones (unserved_cost_s dominates, so any weights already serve strictly by priority),
# workload_s_per_case 20 vs 0 and coverage_penalty_s 90 vs 0 (with one unit per home
# grid, nearly every unit is "the last" of its grid and pays the coverage term alike).
BENCH_POLICY = DispatchPolicy(
    # High (p2) incidents may divert a unit en route to a normal or low one, not only
    # critical (p1) ones. p2 limits are tight, p3/p4 limits have slack, and many p2
    # breaches happen while a qualified unit drives to a p3/p4 case: with the default
    # (1) the engine cut NFPA-style breaches by ~10 %, with 2 by ~23 % (32 one-day seeds).
    preempt_up_to_priority=2,
    # A diversion costs 6 minutes of ETA instead of 2: a unit is diverted only when every
    # free one is more than 6 minutes farther. Diverting is not free: the displaced case
    # waits for another unit, for a long time when it needs a scarce qualification (work
    # safety, water: four squads each), and the aborted drive is lost. One-week runs,
    # seeds 1-6: 120 s cut breaches by 23.0 % (nfpa) / 49.8 % (township) at +0.2 % mean
    # response; 360 s by 23.4 % / 47.8 % at -2.5 %; 600 s by 21.2 % / 42.0 % at -3.7 %.
    preempt_penalty_s=360.0,
)


_ARRIVAL, _ON_SCENE, _FREE = 0, 1, 2


@dataclass(slots=True)
class _Unit:
    spec: UnitSpec
    lon: float  # available / on scene: where it is; en route: where the leg started
    lat: float
    status: str = "available"
    incident: int | None = None  # index into the stream
    leg: int = 0  # bumped on every dispatch so that events of an abandoned leg are ignored
    depart_t: float = 0.0  # en route: when it starts moving
    arrive_t: float = 0.0  # en route: when it reaches the scene
    busy_since: float = 0.0
    busy_s: float = 0.0
    cases_day: int = -1
    cases: int = 0

    def position(self, now: float, dest: Incident | None) -> tuple[float, float]:
        if self.status != "en_route" or dest is None or self.arrive_t <= self.depart_t:
            return self.lon, self.lat
        f = min(1.0, max(0.0, (now - self.depart_t) / (self.arrive_t - self.depart_t)))
        return self.lon + f * (dest.lon - self.lon), self.lat + f * (dest.lat - self.lat)


@dataclass(slots=True)
class _Case:
    unit: int | None = None
    dispatched_at: float | None = None
    arrived_at: float | None = None
    queued: bool = False
    preempted: int = 0


@dataclass(frozen=True, slots=True)
class RunResult:
    """What one policy did with the stream."""

    policy: str
    response_s: tuple[float, ...]  # per incident, stream order
    queued: tuple[bool, ...]
    preemptions: int
    decision_ms: tuple[float, ...]
    utilisation: float
    end_s: float


class Simulation:
    """One policy over one stream. ``run()`` once; everything is deterministic."""

    def __init__(self, town: Town, stream: Sequence[Incident], policy: str,
                 dispatch_policy: DispatchPolicy = BENCH_POLICY) -> None:
        if policy not in ("closest_idle", "engine"):
            raise ValueError(f"unknown policy {policy!r}")
        self.town = town
        self.graph = town.graph
        self.stream = stream
        self.policy = policy
        self.dp = dispatch_policy
        self.units = [_Unit(s, s.lon, s.lat) for s in town.units]
        self.unit_index = {s.id: k for k, s in enumerate(town.units)}
        self.inc_index = {inc.id: k for k, inc in enumerate(stream)}
        self.cases = [_Case() for _ in stream]
        self.waiting: dict[int, None] = {}  # insertion-ordered set of stream indices
        self.events: list[tuple[float, int, int, int, int]] = []
        self.seq = 0
        self.preemptions = 0
        self.decision_ms: list[float] = []
        self.core_cpu_ms: list[float] = []

    # -------------------------------------------------------------- plumbing
    def _push(self, t: float, kind: int, ref: int, leg: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, ref, leg))

    def _dispatch(self, u: int, i: int, now: float) -> None:
        unit, inc, case = self.units[u], self.stream[i], self.cases[i]
        diverted = unit.status == "en_route"
        if diverted:
            assert unit.incident is not None
            old = self.stream[unit.incident]
            unit.lon, unit.lat = unit.position(now, old)
            victim = self.cases[unit.incident]
            victim.unit = None
            victim.preempted += 1
            self.waiting[unit.incident] = None
            self.preemptions += 1
        else:
            assert unit.status == "available", (unit.spec.id, unit.status)
            unit.busy_since = now
        day = int((now - T0) // 86_400)
        if unit.cases_day != day:
            unit.cases_day, unit.cases = day, 0
        unit.cases += 1
        unit.status = "en_route"
        unit.incident = i
        unit.leg += 1
        unit.depart_t = now if diverted else now + TURNOUT_S
        unit.arrive_t = unit.depart_t + self.graph.travel_time_s(unit.lon, unit.lat,
                                                                 inc.lon, inc.lat)
        case.unit = u
        if case.dispatched_at is None:
            case.dispatched_at = now
        self.waiting.pop(i, None)
        self._push(unit.arrive_t, _ON_SCENE, u, unit.leg)

    def _unit_state(self, unit: _Unit, now: float) -> UnitState:
        cur = self.stream[unit.incident] if unit.incident is not None else None
        lon, lat = unit.position(now, cur)
        day = int((now - T0) // 86_400)
        return UnitState(
            unit.spec.id, unit.spec.kind, unit.spec.qualifications, unit.status, lon, lat,
            now, unit.spec.home_grid, T0, unit.cases if unit.cases_day == day else 0,
            cur.id if cur is not None else None, cur.priority if cur is not None else None,
        )

    # -------------------------------------------------------------- policies
    def _closest_idle_arrival(self, i: int, now: float) -> None:
        t = time.perf_counter()
        states = [self._unit_state(u, now) for u in self.units]
        pick = closest_idle(self.stream[i].state(), states, now)
        self.decision_ms.append((time.perf_counter() - t) * 1e3)
        if pick is None:
            self.waiting[i] = None
        else:
            self._dispatch(self.unit_index[pick], i, now)

    def _closest_idle_free(self, u: int, now: float) -> None:
        if not self.waiting:
            return
        t = time.perf_counter()
        quals = self.units[u].spec.qualifications
        order = sorted(self.waiting, key=lambda k: (self.stream[k].priority,
                                                    self.stream[k].opened_at, k))
        pick = next((k for k in order if self.stream[k].qualification in quals), None)
        self.decision_ms.append((time.perf_counter() - t) * 1e3)
        if pick is not None:
            self._dispatch(u, pick, now)

    def _engine_decide(self, event: Input, now: float) -> None:
        if not self.waiting:
            return
        t = time.perf_counter()
        c = time.thread_time()
        units = tuple(self._unit_state(u, now) for u in self.units)
        open_ = [self.stream[i].state() for i in self.waiting]
        for unit in self.units:
            if unit.status == "en_route" and unit.incident is not None:
                open_.append(self.stream[unit.incident].state(unit.spec.id))
        decision = decide(DispatchState(tuple(open_), units), event, now, self.dp,
                          self.graph)
        self.core_cpu_ms.append((time.thread_time() - c) * 1e3)
        self.decision_ms.append((time.perf_counter() - t) * 1e3)
        # Preemptions first: they free the displaced incident, which may be re-planned
        # onto a free unit by a later dispatch of the same decision. (The withdrawals are
        # what _dispatch does to a diverted unit's old case.)
        assert all(w.status == "preempted" for w in decision.withdrawals), decision
        for d in sorted(decision.dispatches, key=lambda d: d.preempts is None):
            self._dispatch(self.unit_index[d.unit_id], self.inc_index[d.incident_id], now)

    # -------------------------------------------------------------- the loop
    def run(self) -> RunResult:
        for i, inc in enumerate(self.stream):
            self._push(inc.opened_at, _ARRIVAL, i)
        end = T0
        while self.events:
            now, _, kind, ref, leg = heapq.heappop(self.events)
            end = max(end, now)
            if kind == _ARRIVAL:
                if self.policy == "engine":
                    self.waiting[ref] = None
                    self._engine_decide(IncidentRegistered(self.stream[ref].id), now)
                else:
                    self._closest_idle_arrival(ref, now)
                self.cases[ref].queued = self.cases[ref].dispatched_at is None
                continue
            unit = self.units[ref]
            if leg != unit.leg:
                continue  # the leg was abandoned (preemption)
            assert unit.incident is not None
            inc = self.stream[unit.incident]
            if kind == _ON_SCENE:
                unit.status = "on_scene"
                unit.lon, unit.lat = inc.lon, inc.lat
                self.cases[unit.incident].arrived_at = now
                self._push(now + inc.handling_s, _FREE, ref, leg)
            else:
                unit.status = "available"
                unit.incident = None
                unit.busy_s += now - unit.busy_since
                if self.policy == "engine":
                    self._engine_decide(UnitFreed(unit.spec.id), now)
                else:
                    self._closest_idle_free(ref, now)
        response = []
        for inc, case in zip(self.stream, self.cases, strict=True):
            assert case.arrived_at is not None, inc.id
            response.append(case.arrived_at - inc.opened_at)
        span = (end - T0) * len(self.units)
        return RunResult(
            self.policy,
            tuple(response),
            tuple(c.queued for c in self.cases),
            self.preemptions,
            tuple(self.decision_ms),
            sum(u.busy_s for u in self.units) / span if span > 0 else 0.0,
            end - T0,
        )
