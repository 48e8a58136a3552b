"""Dispatch decisions carried out: load the state, ask the core, apply, in one transaction.

``decide_and_apply(pool, event, graph, policy, actor=...)`` is the only way the running
hub assigns or takes back a unit: the dispatch leader feeds it every registered case,
freed unit, decline and accept time-out; the API feeds it operators' overrides and
redirects, on whichever node serves them (policy and road graph come from settings and
the database on every node: ``policy_from_settings``, ``load_road_graph``).

A decision reads the state (``store.dispatch_state``, one statement), the pure core
decides (``planner.decide``), and, if there is anything to write, one transaction under a
transaction-scoped advisory lock (``PLAN_LOCK_KEY``, which serialises deciders across
processes) writes every withdrawal, alert and dispatch with its case-log entries, SLA
clocks and events (``core.outbox``), set-based: a fixed number of statements however many
cases the decision moves (``dispatch/decision_writes.py``). The first attempt reads and
decides before the lock, so the lock and the transaction cover only the writes
(``_decide_then_lock``); the writes check every case and unit they move against the
locked rows, so if another decider or a crew's own action (accept, decline: they take no
plan lock) moved one since the read, ``Stale`` is raised and the decision is taken again,
this time reading under the lock (``_lock_then_decide``, up to ``STALE_RETRIES``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import asyncpg

from core import clock
from core.db import Conn
from core.errors import Conflict, InvalidInput
from core.settings import Settings
from dispatch import decision_writes, planner, store
from dispatch.decision_stats import DecisionStats
from dispatch.geo import RoadGraph
from dispatch.model import DispatchPolicy
from dispatch.service import OVERRIDE_REASONS, SYSTEM_ACTOR

log = logging.getLogger("dispatch.decisions")

# Every decider (the leader, an operator's override on any node) takes this transaction
# lock first: plans are made over the whole picture, so two at once would both use the
# same free unit. Distinct from the leader's election key.
PLAN_LOCK_KEY = 4_710_004
# A crew's accept or decline racing a decision makes it re-read and decide again; three
# rounds is far more than two humans pressing buttons in the same millisecond need.
STALE_RETRIES = 3
# A decision's transaction opens with its plan lock in the same round trip.
BEGIN_LOCKED = f"BEGIN; SELECT pg_advisory_xact_lock({PLAN_LOCK_KEY})"


def policy_from_settings(settings: Settings) -> DispatchPolicy:
    """The one policy every node decides with (not ``DispatchPolicy()`` defaults)."""
    return DispatchPolicy(
        stale_after_s=settings.position_stale_after_s,
        preempt_up_to_priority=settings.dispatch_preempt_up_to_priority,
        preempt_penalty_s=settings.dispatch_preempt_penalty_s,
        replan_gain_s=settings.dispatch_replan_gain_s,
    )


async def load_road_graph(pool: asyncpg.Pool) -> RoadGraph | None:
    """The town's road graph from the ``roads`` table (None if the town has no roads)."""
    roads = await pool.fetch("SELECT id, name, class, speed_kmh, geometry FROM roads")
    if not roads:
        return None
    return RoadGraph.from_geojson({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": r["geometry"],
         "properties": {"id": r["id"], "name": r["name"], "class": r["class"],
                        "speed_kmh": r["speed_kmh"]}} for r in roads]})


async def decide_and_apply(pool: asyncpg.Pool, event: planner.Input, graph: RoadGraph | None,
                           policy: DispatchPolicy, *, actor: str = SYSTEM_ACTOR,
                           note: str = "", now: float | None = None,
                           stats: DecisionStats | None = None
                           ) -> tuple[planner.Decision, dict[str, Any]]:
    """Decide ``event`` and carry the decision out. Returns the decision and the new
    assignment rows by incident id. ``actor`` is recorded on what the input itself asked
    (an operator's override or redirect); the rest of the plan is the system's. ``now``:
    the decision's time, the clock's when not given (the demo's history backfill passes
    past times). ``stats``: where to add the decision's times by part (the leader's)."""
    at = now
    for attempt in range(STALE_RETRIES + 1):
        try:
            async with pool.acquire() as conn:
                if attempt == 0:
                    decision, views, parts = await _decide_then_lock(
                        conn, event, graph, policy, at, actor, note)
                else:
                    decision, views, parts = await _lock_then_decide(
                        conn, event, graph, policy, at, actor, note)
            if stats is not None:
                stats.add(parts)
            return decision, views
        except decision_writes.Stale:
            if attempt == STALE_RETRIES:
                raise Conflict("the case changed while it was being planned; try again",
                               code="dispatch.conflict") from None
            log.info("decision on %s raced a crew's action; deciding again", event)
    raise AssertionError("unreachable")


def _marks(start: float, **ms: float) -> list[float]:
    """``DecisionStats.add``'s marks (start, then the end of each part in its order) from
    the parts' durations in seconds, whatever order they ran in: the total is the same."""
    out = [start]
    for part in ("wait", "state", "core", "writes", "commit"):
        out.append(out[-1] + ms.get(part, 0.0))
    return out


async def _decide_then_lock(conn: Conn, event: planner.Input, graph: RoadGraph | None,
                            policy: DispatchPolicy, at: float | None, actor: str, note: str
                            ) -> tuple[planner.Decision, dict[str, Any], list[float]]:
    """A decision's first attempt: the state read (one statement, one snapshot) and the core
    run before the plan lock, which then covers only the writes. So the lock is held for
    milliseconds rather than for the whole decision (an operator's override waits less
    behind the leader), and the transaction, whose start stamps the decision's events,
    begins when there is something to write: a ``unit.assigned`` reaches the screens that
    much sooner after its ``ts``. A decider that committed in between cannot be overwritten:
    the writes check every case and unit they move against the locked rows and raise
    ``Stale``, and the retry decides under the lock. A decision with nothing to write
    (most position rounds) takes no lock at all."""
    t0 = time.perf_counter()
    now = clock.now() if at is None else at
    state = await store.dispatch_state(conn)
    t1 = time.perf_counter()
    decision = planner.decide(state, event, now, policy, graph)
    t2 = time.perf_counter()
    if decision.empty:
        return decision, {}, _marks(t0, state=t1 - t0, core=t2 - t1)
    try:
        await conn.execute(BEGIN_LOCKED)
        t3 = time.perf_counter()
        views = await decision_writes.apply(conn, decision, now, actor, note)
        t4 = time.perf_counter()
    except BaseException:
        await _rollback(conn)
        raise
    await conn.execute("COMMIT")
    t5 = time.perf_counter()
    return decision, views, _marks(t0, state=t1 - t0, core=t2 - t1, wait=t3 - t2,
                                   writes=t4 - t3, commit=t5 - t4)


async def _lock_then_decide(conn: Conn, event: planner.Input, graph: RoadGraph | None,
                            policy: DispatchPolicy, at: float | None, actor: str, note: str
                            ) -> tuple[planner.Decision, dict[str, Any], list[float]]:
    """A decision taken again after ``Stale``: everything under the plan lock, so no other
    decider can move what it reads before it is written."""
    # BEGIN and the plan lock in one round trip (the simple-query protocol takes both
    # statements at once), not two: the lock is taken before the state is read, whose
    # statement's snapshot is then taken after it.
    marks = [time.perf_counter()]
    try:
        await conn.execute(BEGIN_LOCKED)
        marks.append(time.perf_counter())
        now = clock.now() if at is None else at
        state = await store.dispatch_state(conn)
        marks.append(time.perf_counter())
        decision = planner.decide(state, event, now, policy, graph)
        marks.append(time.perf_counter())
        views = await decision_writes.apply(conn, decision, now, actor, note)
        marks.append(time.perf_counter())
    except BaseException:
        await _rollback(conn)
        raise
    await conn.execute("COMMIT")
    marks.append(time.perf_counter())
    return decision, views, marks


async def _rollback(conn: Conn) -> None:
    """End a failed decision's transaction. If even that fails (a lost connection), the
    pool's reset on release rolls back whatever is still open."""
    if conn.is_closed():
        return
    try:
        await conn.execute("ROLLBACK")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        log.warning("could not roll a failed decision back; the pool will", exc_info=True)


# State reads at warm-up: PostgreSQL plans a prepared statement afresh for its first five
# executions (~2 ms each for the state read) and only then may keep a generic plan.
WARM_STATE_READS = 6


async def warm(pool: asyncpg.Pool) -> None:
    """Prepare a decision's statements on ``pool``'s connection (the dispatch leader's
    own, one connection): the state read and the writes run with nothing to write, in a
    transaction rolled back. Without it, a decision on a connection that never decided
    before paid 20-60 ms more (parse round trips, asyncpg's type introspection, fresh
    plans): the slowest decisions of ``./hubctl bench dispatch``'s hub part."""
    async with pool.acquire() as conn:
        await conn.execute("BEGIN")
        try:
            for _ in range(WARM_STATE_READS):
                await store.dispatch_state(conn)
            await decision_writes.warm(conn)
        finally:
            await _rollback(conn)


# ---------------------------------------------------------------- the callers' entry points
def _check_reason(reason_code: str, note: str) -> None:
    if reason_code not in OVERRIDE_REASONS:
        raise InvalidInput(f"unknown override reason {reason_code!r}; one of "
                           f"{', '.join(OVERRIDE_REASONS)}", code="dispatch.override_reason")
    if reason_code == "other" and not note.strip():
        raise InvalidInput("reason 'other' needs a note", code="dispatch.override_reason")


async def override(pool: asyncpg.Pool, incident_id: int, unit_id: str, actor: str,
                   reason_code: str, note: str, graph: RoadGraph | None,
                   policy: DispatchPolicy) -> dict[str, Any]:
    """An operator sends ``unit_id`` instead of the plan's pick, with a reason code. A unit
    already on the case is withdrawn first; both legs are in the case log. Returns the new
    assignment."""
    _check_reason(reason_code, note)
    _, views = await decide_and_apply(
        pool, planner.Override(str(incident_id), unit_id, reason_code), graph, policy,
        actor=actor, note=note)
    return dict(views[str(incident_id)])


async def redirect(pool: asyncpg.Pool, unit_id: str, actor: str, reason_code: str, note: str,
                   to_incident: int | None, graph: RoadGraph | None,
                   policy: DispatchPolicy) -> dict[str, Any]:
    """An operator takes a dispatched or en-route unit off its case (which is planned
    again, never back onto this unit) and, with ``to_incident``, sends it there."""
    _check_reason(reason_code, note)
    decision, views = await decide_and_apply(
        pool, planner.Redirect(unit_id, reason_code,
                               str(to_incident) if to_incident is not None else None),
        graph, policy, actor=actor, note=note)
    return {
        "unit_id": unit_id,
        "withdrawn": [{"incident_id": int(w.incident_id), "unit_id": w.unit_id,
                       "status": w.status, "why": w.why.as_json()}
                      for w in decision.withdrawals],
        "assignments": list(views.values()),
    }


async def escalate(pool: asyncpg.Pool, assignment_id: int, graph: RoadGraph | None,
                   policy: DispatchPolicy, *, now: float | None = None) -> bool:
    """An assignment not accepted by its due time (at ``now``, the clock's when not
    given): the core takes it back, alerts the supervisor and plans the case again.
    Returns whether it escalated now."""
    at = clock.now() if now is None else now
    a = await pool.fetchrow(
        "SELECT incident_id, unit_id, assigned_at FROM assignments WHERE id = $1 AND "
        "status = 'active' AND accept_due <= $2", assignment_id, store.ts(at))
    if a is None:
        return False
    waited = at - a["assigned_at"].timestamp()
    decision, _ = await decide_and_apply(
        pool, planner.AcceptTimedOut(str(a["incident_id"]), a["unit_id"], waited),
        graph, policy, now=now)
    return any(w.status == "escalated" for w in decision.withdrawals)
