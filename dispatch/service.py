"""Dispatch I/O shell: opens incidents, runs the engine, records assignments and steps.

Every change happens in one transaction with its case-log entries, its SLA clocks and its
events (core.outbox), after taking the incident's row lock, so concurrent callers (two hub
processes, an operator and the dispatcher) cannot dispatch one case twice; the unique index
``assignments_one_live`` backs that up in the database. Decisions are the pure engine's
(``engine.rank``) and the pure workflow's (``workflow.apply``); this module only carries
them out. The leader-elected role that calls it is ``dispatch/leader.py``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import asyncpg

from core import outbox
from core.db import Conn, row_view
from core.entities import ALARM_COLUMNS
from core.errors import InvalidInput, NotFound
from core.events import (
    AlarmAttached,
    IncidentOpened,
    IncidentUpdated,
    SupervisorAlerted,
    UnitAssigned,
    UnitStatusChanged,
)
from dispatch import clocks, engine, store, workflow
from dispatch.geo import RoadGraph
from dispatch.model import DispatchPolicy, UnitState

log = logging.getLogger("dispatch.service")

# Alarms of one category in one grid within this window join the open incident instead of
# opening another: one gas leak seen by three detectors is one case.
ATTACH_WINDOW_S = 30 * 60
SYSTEM_ACTOR = "system:dispatch"

# A squad must sign for a dispatch within this long, by priority, or the case goes to the
# next candidate and the supervisor is told: two minutes for a critical case is a phone
# call's worth; low-priority work may wait for the end of the current task.
ACCEPT_TIMEOUT_S: dict[int, float] = {1: 120.0, 2: 300.0, 3: 900.0, 4: 1800.0}

# Why an operator may override the engine's pick (the console offers these).
OVERRIDE_REASONS: dict[str, str] = {
    "closer_known": "已知更近的力量（定位不准或未上报）",
    "special_skill": "需要特定专长或装备",
    "local_knowledge": "熟悉现场/当事人",
    "workload": "平衡工作量",
    "supervisor_order": "领导指定",
    "other": "其他（见说明）",
}

# Unit status after each workflow action that moves the unit (other actions leave it be).
UNIT_STATUS_AFTER = {
    "accept": "en_route",
    "start_handling": "on_scene",
    # Feedback given, the squad's work on the case is done: it is free for the next one
    # while the case waits for verification and closing by others.
    "give_feedback": "available",
    "close": "available",
    "decline": "available",
    "withdraw": "available",
    "cancel": "available",
    "shelve": "available",
}
# What happens to the live assignment on those actions.
ASSIGNMENT_STATUS_AFTER = {"accept": "accepted", "decline": "declined",
                           "withdraw": "superseded"}


# ---------------------------------------------------------------- helpers
async def _grid_at(conn: Conn, lon: float, lat: float) -> str | None:
    """The level-2 grid containing the point (bounding box, then the polygon in Python)."""
    rows = await conn.fetch(
        """SELECT id, geometry FROM grids WHERE level = 2 AND $1 BETWEEN min_lon AND max_lon
           AND $2 BETWEEN min_lat AND max_lat""", lon, lat)
    for r in rows:
        if _inside(lon, lat, r["geometry"]["coordinates"][0]):
            return str(r["id"])
    return str(rows[0]["id"]) if rows else None


def _inside(x: float, y: float, ring: list[list[float]]) -> bool:
    inside = False
    n = len(ring)
    for i in range(n):
        x1, y1 = ring[i]
        x2, y2 = ring[(i + 1) % n]
        if (y1 > y) != (y2 > y) and x < (x2 - x1) * (y - y1) / (y2 - y1) + x1:
            inside = not inside
    return inside


async def _attach(conn: Conn, alarm_id: int, incident_id: int) -> None:
    row = await conn.fetchrow(
        f"UPDATE alarms a SET incident_id = $2 WHERE id = $1 RETURNING {ALARM_COLUMNS}",
        alarm_id, incident_id)
    await outbox.record(conn, AlarmAttached(alarm=row_view(row)))


async def _step(conn: Conn, inc: dict[str, Any], action: str, actor: str,
                now: float, reason: str | None) -> workflow.CaseState:
    """Apply a workflow action to a locked incident row, log it and move its SLA clocks
    (no event yet: the caller records one with the final view)."""
    before = await store.case_state(conn, inc["id"])
    try:
        after = workflow.apply(before, action, actor, now, reason)
    except workflow.TransitionError as e:
        raise InvalidInput(e.message, code=e.code) from e
    await conn.execute(
        """UPDATE incidents SET state = $2, rework_count = $3, extension_count = $4,
                                handler = $5, updated_at = $6 WHERE id = $1""",
        inc["id"], after.state, after.rework_count, after.extension_count, after.handler,
        store.ts(now))
    await store.append_log(conn, inc["id"], action, before.state, after.state, actor, now,
                           reason)
    inc.update(state=after.state, rework_count=after.rework_count,
               extension_count=after.extension_count, handler=after.handler)
    await clocks.update_clocks(conn, inc, after, action, now)
    return after


async def _release_unit(conn: Conn, incident_id: int, action: str, actor: str, now: float,
                        reason: str, assignment_status: str) -> str | None:
    """Take the unit off a case (withdraw/decline): the case goes back to registered, the
    assignment ends with ``assignment_status`` and the unit is free. Returns the unit id."""
    inc = await store.incident_row(conn, incident_id, lock=True)
    if inc is None:
        raise NotFound(f"incident {incident_id} not found", code="incident.not_found")
    unit_id = inc["assigned_unit"]
    await _step(conn, inc, action, actor, now, reason)
    await conn.execute(
        "UPDATE assignments SET status = $2 WHERE incident_id = $1 AND status IN "
        "('active', 'accepted')", incident_id, assignment_status)
    await conn.execute("UPDATE incidents SET assigned_unit = NULL WHERE id = $1", incident_id)
    if unit_id:
        await conn.execute(
            """UPDATE units SET status = 'available', current_incident = NULL,
               updated_at = now() WHERE id = $1 AND current_incident = $2""",
            unit_id, incident_id)
    await outbox.record(conn, IncidentUpdated(
        incident=await store.incident_view(conn, incident_id), action=action,
        released_unit=str(unit_id or "")))
    return str(unit_id) if unit_id else None


async def _alert(conn: Conn, incident_id: int | None, kind: str, message: str) -> None:
    row = await conn.fetchrow(
        """INSERT INTO supervisor_alerts (incident_id, kind, message) VALUES ($1, $2, $3)
           RETURNING *""", incident_id, kind, message)
    inc = await store.incident_view(conn, incident_id) if incident_id is not None else None
    await outbox.record(conn, SupervisorAlerted(alert=row_view(row), incident=inc))


# ---------------------------------------------------------------- incidents
async def open_incident(pool: asyncpg.Pool, *, category: str, qualification: str,
                        priority: int, title: str, description: str, lon: float, lat: float,
                        source: str, reporter: str, alarm_id: int | None = None,
                        grid_id: str | None = None) -> dict[str, Any]:
    """Report a case; alarm and operator reports are registered at once (already verified),
    grid-worker, hotline and Open311 reports wait for an operator to register them."""
    now = time.time()
    async with pool.acquire() as conn, conn.transaction():
        grid = grid_id or await _grid_at(conn, lon, lat)
        iid = await conn.fetchval(
            """INSERT INTO incidents (category, priority, qualification, title, description,
                                      lon, lat, grid_id, source, reporter, state, opened_at,
                                      updated_at)
               VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,'reported',$11,$11) RETURNING id""",
            category, priority, qualification, title, description, lon, lat, grid, source,
            reporter, store.ts(now))
        await store.append_log(conn, iid, "report", None, "reported", reporter, now, None)
        inc = await store.incident_row(conn, iid, lock=True)
        assert inc is not None
        await clocks.update_clocks(conn, inc, workflow.CaseState(), "report", now)
        if source in ("alarm", "operator"):
            await _step(conn, inc, "register", reporter if source == "operator"
                        else SYSTEM_ACTOR, now, None)
        view = await store.incident_view(conn, iid)
        await outbox.record(conn, IncidentOpened(incident=view))
        if alarm_id is not None:
            await _attach(conn, alarm_id, iid)
    return view


async def open_incident_for_alarm(pool: asyncpg.Pool, alarm: dict[str, Any]
                                  ) -> dict[str, Any] | None:
    """Open (or join) the incident an alarm's rule asks for. Idempotent per alarm."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            """SELECT a.id, a.incident_id, a.grid_id, a.value, a.message, r.incident_category,
                      r.qualification, r.priority, r.name, d.lon, d.lat, d.name AS device_name
               FROM alarms a JOIN rules r ON r.id = a.rule_id
               -- a grouped alarm (ingest/watch.py) is placed at its first member
               LEFT JOIN devices d ON d.id = coalesce((
                   SELECT m.device_id FROM alarm_members m WHERE m.alarm_id = a.id
                   ORDER BY m.raised_at, m.device_id LIMIT 1), a.device_id)
               WHERE a.id = $1""", alarm["id"])
    if row is None or row["incident_id"] is not None or not row["incident_category"]:
        return None
    async with pool.acquire() as conn, conn.transaction():
        # Lock the alarm so two dispatchers (or a retry) cannot both act on it.
        again = await conn.fetchval(
            "SELECT incident_id FROM alarms WHERE id = $1 FOR UPDATE", row["id"])
        if again is not None:
            return None
        existing = await conn.fetchrow(
            """SELECT id FROM incidents WHERE grid_id = $1 AND category = $2
               AND state NOT IN ('closed','evaluated','archived','cancelled','shelved')
               AND opened_at > now() - make_interval(secs => $3)
               ORDER BY id DESC LIMIT 1""", row["grid_id"], row["incident_category"],
            float(ATTACH_WINDOW_S))
        if existing is not None:
            await _attach(conn, int(row["id"]), int(existing["id"]))
            return None
    return await open_incident(
        pool, category=row["incident_category"], qualification=row["qualification"] or "",
        priority=int(row["priority"]), title=f"{row['name']} · {row['device_name'] or ''}",
        description=row["message"], lon=float(row["lon"]), lat=float(row["lat"]),
        source="alarm", reporter=SYSTEM_ACTOR, alarm_id=int(row["id"]),
        grid_id=row["grid_id"])


# ---------------------------------------------------------------- assignments
def _recommendation_json(rec: Any) -> dict[str, Any]:
    return {
        "pick": rec.pick, "reason": rec.reason,
        "candidates": [dataclasses.asdict(c) for c in rec.candidates],
    }


async def _tried_units(conn: Conn, incident_id: int) -> set[str]:
    """Units that already declined, timed out on or were taken off this case."""
    rows = await conn.fetch(
        "SELECT unit_id FROM assignments WHERE incident_id = $1 AND status IN "
        "('declined', 'escalated')", incident_id)
    return {r["unit_id"] for r in rows}


async def dispatch_incident(pool: asyncpg.Pool, incident_id: int, graph: RoadGraph | None,
                            policy: DispatchPolicy, *, unit_id: str | None = None,
                            actor: str = SYSTEM_ACTOR, override_reason: str | None = None
                            ) -> dict[str, Any] | None:
    """Assign the engine's pick (or ``unit_id``, an operator override) to a registered
    incident. A pick that preempts a lower-priority case takes the unit off that case first
    (which then waits for its own re-dispatch). Returns the assignment view, or None when
    no unit can take the incident now."""
    async with pool.acquire() as conn, conn.transaction():
        return await _dispatch_locked(conn, incident_id, graph, policy, unit_id=unit_id,
                                      actor=actor, override_reason=override_reason)


async def _dispatch_locked(conn: Conn, incident_id: int, graph: RoadGraph | None,
                           policy: DispatchPolicy, *, unit_id: str | None, actor: str,
                           override_reason: str | None) -> dict[str, Any] | None:
    """dispatch_incident's work, inside the caller's transaction."""
    now = time.time()
    inc = await store.incident_row(conn, incident_id, lock=True)
    if inc is None:
        raise NotFound(f"incident {incident_id} not found", code="incident.not_found")
    if inc["state"] != "registered":
        if unit_id is not None:
            raise InvalidInput(f"incident {incident_id} is {inc['state']}",
                               code="dispatch.not_waiting")
        return None
    tried = await _tried_units(conn, incident_id)
    units: list[UnitState] = [u for u in await store.unit_states(conn)
                              if u.id not in tried or u.id == unit_id]
    rec = engine.rank(store.incident_state(inc), units, graph, now, policy)
    pick = unit_id or rec.pick
    if pick is None:
        return None
    cand = next((c for c in rec.candidates if c.unit_id == pick), None)
    if unit_id is not None:
        unit = next((u for u in units if u.id == unit_id), None)
        if unit is None:
            raise NotFound(f"unit {unit_id} not found", code="unit.not_found")
        if unit.status not in ("available", "returning"):
            raise InvalidInput(f"unit {unit_id} is {unit.status}", code="unit.busy")
        reason = f"override by {actor}: {override_reason}"
    else:
        reason = rec.reason
    if cand is not None and cand.preempts and unit_id is None:
        displaced = int(cand.preempts)
        await _release_unit(conn, displaced, "withdraw", SYSTEM_ACTOR, now,
                            f"改派至更紧急案件 #{incident_id} (preempted by p"
                            f"{inc['priority']} #{incident_id})", "preempted")
        await _alert(conn, displaced, "preempted",
                     f"{pick} 由案件 #{displaced} 改派至特急案件 #{incident_id}；"
                     f"#{displaced} 重新派遣")
    assignment = await conn.fetchrow(
        """INSERT INTO assignments (incident_id, unit_id, assigned_at, eta_s, reason,
                                    override_reason, recommendation, accept_due)
           VALUES ($1,$2,$3,$4,$5,$6,$7,$8) RETURNING *""",
        incident_id, pick, store.ts(now), cand.eta_s if cand else None, reason,
        override_reason, _recommendation_json(rec),
        store.ts(now + ACCEPT_TIMEOUT_S.get(int(inc["priority"]), 900.0)
                 * clocks.SlaConfig.scale))
    await conn.execute(
        """UPDATE units SET status = 'dispatched', current_incident = $2, updated_at = now()
           WHERE id = $1""", pick, incident_id)
    await conn.execute("UPDATE incidents SET assigned_unit = $2 WHERE id = $1",
                       incident_id, pick)
    inc["assigned_unit"] = pick
    await _step(conn, inc, "dispatch", actor, now, reason)
    a_view = row_view(assignment)
    await outbox.record(conn, UnitAssigned(
        incident=await store.incident_view(conn, incident_id),
        unit=await store.unit_view(conn, pick), assignment=a_view))
    return a_view


async def override_assignment(pool: asyncpg.Pool, incident_id: int, unit_id: str, actor: str,
                              reason_code: str, note: str, graph: RoadGraph | None,
                              policy: DispatchPolicy) -> dict[str, Any]:
    """An operator sends ``unit_id`` instead of the engine's pick, with a reason code. A
    unit already on the case is withdrawn first; both legs are in the case log."""
    if reason_code not in OVERRIDE_REASONS:
        raise InvalidInput(f"unknown override reason {reason_code!r}; one of "
                           f"{', '.join(OVERRIDE_REASONS)}", code="dispatch.override_reason")
    if reason_code == "other" and not note.strip():
        raise InvalidInput("reason 'other' needs a note", code="dispatch.override_reason")
    reason = f"{reason_code}: {OVERRIDE_REASONS[reason_code]}" + (f" — {note}" if note else "")
    now = time.time()
    async with pool.acquire() as conn, conn.transaction():
        inc = await store.incident_row(conn, incident_id, lock=True)
        if inc is None:
            raise NotFound(f"incident {incident_id} not found", code="incident.not_found")
        if inc["assigned_unit"] == unit_id:
            raise InvalidInput(f"{unit_id} already has this case", code="dispatch.same_unit")
        if inc["state"] in ("dispatched", "accepted"):
            await _release_unit(conn, incident_id, "withdraw", actor, now,
                                f"人工改派 override: {reason}", "superseded")
        # Same transaction: the dispatcher cannot slip its own pick in between.
        result = await _dispatch_locked(conn, incident_id, graph, policy, unit_id=unit_id,
                                        actor=actor, override_reason=reason)
    assert result is not None
    return result


async def escalate_assignment(pool: asyncpg.Pool, assignment_id: int) -> bool:
    """An assignment not accepted in time: take it back (the case goes to the next
    candidate) and alert the supervisor. Returns whether it escalated now."""
    now = time.time()
    async with pool.acquire() as conn, conn.transaction():
        a = await conn.fetchrow(
            "SELECT * FROM assignments WHERE id = $1 AND status = 'active' "
            "AND accept_due <= now() FOR UPDATE", assignment_id)
        if a is None:
            return False
        waited = now - a["assigned_at"].timestamp()
        await conn.execute("UPDATE assignments SET escalated_at = now() WHERE id = $1",
                           assignment_id)
        unit_id = await _release_unit(
            conn, int(a["incident_id"]), "decline", SYSTEM_ACTOR, now,
            f"{a['unit_id']} 未在 {waited:.0f} 秒内签收，升级改派 (not accepted in time)",
            "escalated")
        await _alert(conn, int(a["incident_id"]), "escalated",
                     f"{unit_id} 未在时限内签收案件 #{a['incident_id']}，已改派下一候选力量")
        if unit_id:
            await outbox.record(conn, UnitStatusChanged(unit=await store.unit_view(conn,
                                                                                   unit_id)))
    return True


async def apply_action(pool: asyncpg.Pool, incident_id: int, action: str, actor: str,
                       reason: str | None) -> dict[str, Any]:
    """Move a case one step (accept, start_handling, give_feedback, verify_ok, ...)."""
    now = time.time()
    async with pool.acquire() as conn, conn.transaction():
        inc = await store.incident_row(conn, incident_id, lock=True)
        if inc is None:
            raise NotFound(f"incident {incident_id} not found", code="incident.not_found")
        unit_id = inc["assigned_unit"]
        if action in ("decline", "withdraw"):
            await _release_unit(conn, incident_id, action, actor, now, reason or "",
                                ASSIGNMENT_STATUS_AFTER[action])
            view = await store.incident_view(conn, incident_id)
        else:
            await _step(conn, inc, action, actor, now, reason)
            if unit_id and action in UNIT_STATUS_AFTER:
                status = UNIT_STATUS_AFTER[action]
                freed = status == "available"
                # Only while the unit is on this case: after feedback it may already be on
                # another one, which closing this case must not disturb.
                await conn.execute(
                    """UPDATE units SET status = $2, updated_at = now(),
                           current_incident = CASE WHEN $3 THEN NULL ELSE current_incident END
                       WHERE id = $1 AND current_incident = $4""",
                    unit_id, status, freed, incident_id)
                a_status = ASSIGNMENT_STATUS_AFTER.get(action, "done" if freed else None)
                if a_status:
                    await conn.execute(
                        "UPDATE assignments SET status = $2 WHERE incident_id = $1 AND "
                        "status IN ('active', 'accepted')", incident_id, a_status)
            view = await store.incident_view(conn, incident_id)
            await outbox.record(conn, IncidentUpdated(incident=view, action=action))
        if unit_id and action in UNIT_STATUS_AFTER:
            await outbox.record(conn, UnitStatusChanged(unit=await store.unit_view(conn,
                                                                                   unit_id)))
    return view


async def incident_detail(pool: asyncpg.Pool, incident_id: int) -> dict[str, Any]:
    async with pool.acquire() as conn:
        inc = await store.incident_row(conn, incident_id)
        if inc is None:
            raise NotFound(f"incident {incident_id} not found", code="incident.not_found")
        assignments = await conn.fetch(
            "SELECT * FROM assignments WHERE incident_id = $1 ORDER BY id", incident_id)
        alarms = await conn.fetch(
            "SELECT id, rule_id, device_id, severity, state, value, message, raised_at "
            "FROM alarms WHERE incident_id = $1 ORDER BY id", incident_id)
        log_entries = await store.case_log(conn, incident_id)
        case = await store.case_state(conn, incident_id)
    return {
        "incident": row_view(inc),
        "allowed_actions": list(workflow.allowed_actions(case)),
        "flags": list(case.flags),
        "assignments": [row_view(a) for a in assignments],
        "alarms": [row_view(a) for a in alarms],
        "log": log_entries,
    }


async def verify_case_log(pool: asyncpg.Pool, incident_id: int) -> dict[str, Any]:
    """Recompute the incident's hash chain; also check its head against the incident row,
    which catches deleted newest entries that the chain alone cannot show."""
    entries = await store.case_log(pool, incident_id)
    if not entries:
        raise NotFound(f"incident {incident_id} has no case log", code="incident.not_found")
    bad = workflow.verify_chain(entries, incident_id=str(incident_id))
    head = await pool.fetchval("SELECT log_head FROM incidents WHERE id = $1", incident_id)
    head_ok = head == entries[-1]["hash"]
    return {"incident_id": incident_id, "entries": len(entries),
            "ok": bad is None and head_ok, "head_ok": head_ok,
            "first_bad_seq": entries[bad]["seq"] if bad is not None else None}
