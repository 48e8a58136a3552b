"""Dispatch I/O shell: opens incidents, moves cases a step, reads a case's record.

Every change happens in one transaction with its case-log entries, its SLA clocks and its
events (core.outbox), after taking the incident's row lock, so concurrent callers (two hub
processes, an operator and the dispatcher) cannot change one case twice; the unique index
``assignments_one_live`` backs that up in the database. Which unit goes where is never
decided here: ``dispatch/decisions.py`` runs the decision core (``dispatch/planner.py``)
and applies its decisions with the helpers below (``_release_unit``, ``_step``). Case
steps are the pure workflow's (``workflow.apply``).
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg

from core import clock, outbox
from core.db import Conn, row_view
from core.entities import ALARM_COLUMNS, INCIDENT_COLUMNS, UNIT_COLUMNS
from core.errors import InvalidInput, NotFound
from core.events import (
    AlarmAttached,
    Event,
    IncidentUpdated,
    UnitStatusChanged,
)
from dispatch import opening, sla_clocks, store, workflow

log = logging.getLogger("dispatch.service")

# Alarms of one category in one grid within this window join the open incident instead of
# opening another: one gas leak seen by three detectors is one case.
ATTACH_WINDOW_S = 30 * 60
SYSTEM_ACTOR = "system:dispatch"

# A squad must sign for a dispatch within this long, by priority, or the case goes to the
# next candidate and the supervisor is told: two minutes for a critical case is a phone
# call's worth; low-priority work may wait for the end of the current task.
ACCEPT_TIMEOUT_S: dict[int, float] = {1: 120.0, 2: 300.0, 3: 900.0, 4: 1800.0}

# Why an operator may override the plan's pick or redirect a unit (the console offers these).
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
async def _attach(conn: Conn, alarm_id: int, incident_id: int) -> None:
    row = await conn.fetchrow(
        f"UPDATE alarms a SET incident_id = $2 WHERE id = $1 RETURNING {ALARM_COLUMNS}",
        alarm_id, incident_id)
    await outbox.record(conn, AlarmAttached(alarm=row_view(row)))


async def _step(conn: Conn, inc: dict[str, Any], action: str, actor: str,
                now: float, reason: str | None) -> workflow.CaseState:
    """Apply a workflow action to a locked incident row, log it and move its SLA clocks
    (no event yet: the caller records one with the final view)."""
    before, head, clock_rows = await store.step_read(conn, inc["id"])
    members: frozenset[str] = frozenset()
    if action in ("verify_ok", "verify_fail"):
        members = await store.unit_members(conn, {before.handler, before.feedback_by})
    try:
        after = workflow.apply(before, action, actor, now, reason, handler_members=members)
    except workflow.TransitionError as e:
        raise InvalidInput(e.message, code=e.code) from e
    entry = store.chain_entry(head, inc["id"], action, before.state, after.state, actor, now,
                              reason)
    # The log entry and the copy on the incident row in one statement (the row's lock is
    # held, the head was read under it): every decision takes a step per case it moves.
    await conn.execute(
        f"""WITH entry AS ({store.INSERT_LOG})
            UPDATE incidents SET state = $11, rework_count = $12, extension_count = $13,
                                 handler = $14, updated_at = $15, log_head = $10
            WHERE id = $1""",
        *entry.args(), after.state, after.rework_count, after.extension_count, after.handler,
        store.ts(now))
    inc.update(state=after.state, rework_count=after.rework_count,
               extension_count=after.extension_count, handler=after.handler)
    await sla_clocks.update_clocks(conn, inc, after, action, now, prev_rows=clock_rows)
    return after


async def _release_unit(conn: Conn, incident_id: int, action: str, actor: str, now: float,
                        reason: str, assignment_status: str,
                        inc: dict[str, Any] | None = None) -> str | None:
    """Take the unit off a case (withdraw/decline): the case goes back to registered, the
    assignment ends with ``assignment_status`` and the unit is free. Returns the unit id.
    ``inc``: the incident's row if the caller already holds its lock (else it is locked
    here); it is left as the row now stands."""
    if inc is None:
        inc = await store.incident_row(conn, incident_id, lock=True)
    if inc is None:
        raise NotFound(f"incident {incident_id} not found", code="incident.not_found")
    unit_id = inc["assigned_unit"]
    await _step(conn, inc, action, actor, now, reason)
    # The assignment, the unit and the incident's copy in one statement, which returns the
    # incident's view for the event (a decision may withdraw several units).
    row = await conn.fetchrow(
        f"""WITH ended AS (UPDATE assignments SET status = $2 WHERE incident_id = $1
                             AND status IN ('active', 'accepted')),
                 freed AS (UPDATE units SET status = 'available', current_incident = NULL,
                             updated_at = now() WHERE id = $3 AND current_incident = $1)
            UPDATE incidents i SET assigned_unit = NULL WHERE i.id = $1
            RETURNING {INCIDENT_COLUMNS}""",
        incident_id, assignment_status, unit_id)
    assert row is not None  # the row is locked: it cannot have gone
    inc.update(row.items())  # the caller's copy stays the row as written
    await outbox.record(conn, IncidentUpdated(
        incident=row_view(row), action=action, released_unit=str(unit_id or "")))
    return str(unit_id) if unit_id else None


# ---------------------------------------------------------------- incidents
async def open_incident(pool: asyncpg.Pool, *, category: str, qualification: str,
                        priority: int, title: str, description: str, lon: float, lat: float,
                        source: str, reporter: str, alarm_id: int | None = None,
                        grid_id: str | None = None, now: float | None = None
                        ) -> dict[str, Any]:
    """Report a case; alarm and operator reports are registered at once (already verified),
    grid-worker, hotline and Open311 reports wait for an operator to register them.
    ``now``: the report's time, the clock's when not given (the demo's history backfill,
    simulators/backfill.py, passes past times)."""
    now = clock.now() if now is None else now
    fields: dict[str, Any] = dict(
        category=category, qualification=qualification, priority=priority, title=title,
        description=description, lon=lon, lat=lat, source=source, reporter=reporter,
        alarm_id=alarm_id, grid_id=grid_id)
    async with pool.acquire() as conn:
        if alarm_id is None:
            # The case is written in one statement (dispatch/opening.py), atomic on its own:
            # no BEGIN and COMMIT round trips around it.
            return await open_incident_in(conn, now, **fields)
        async with conn.transaction():  # the alarm is attached in the same transaction
            return await open_incident_in(conn, now, **fields)


async def open_incident_in(conn: Conn, now: float, *, category: str, qualification: str,
                           priority: int, title: str, description: str, lon: float,
                           lat: float, source: str, reporter: str, alarm_id: int | None = None,
                           grid_id: str | None = None) -> dict[str, Any]:
    """``open_incident`` on ``conn``: in the caller's transaction if it has one (the field
    app's reports record their photos and idempotency key in the same one); returns the
    incident's view. Two round trips (dispatch/opening.py), and the alarm's attachment."""
    iid, grid = await opening.new_id_and_grid(conn, lon, lat, grid_id)
    register_as = (None if source not in ("alarm", "operator")
                   else reporter if source == "operator" else SYSTEM_ACTOR)
    case = opening.new_case(
        iid, now, category=category, qualification=qualification, priority=priority,
        title=title, description=description, lon=lon, lat=lat, grid_id=grid,
        source=source, reporter=reporter, register_as=register_as)
    view = await opening.write(conn, case)
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


# ---------------------------------------------------------------- case steps
async def apply_action(pool: asyncpg.Pool, incident_id: int, action: str, actor: str,
                       reason: str | None, *, now: float | None = None) -> dict[str, Any]:
    """Move a case one step (accept, start_handling, give_feedback, verify_ok, ...) at
    ``now`` (the clock's when not given)."""
    now = clock.now() if now is None else now
    async with pool.acquire() as conn, conn.transaction():
        return await apply_action_in(conn, incident_id, action, actor, reason, now)


async def apply_action_in(conn: Conn, incident_id: int, action: str, actor: str,
                          reason: str | None, now: float) -> dict[str, Any]:
    """``apply_action`` inside the caller's transaction (the field app records its
    evidence and its idempotency key in the same one); returns the incident's view."""
    # Round trips matter here: each waits its turn on the hub's event loop, and the
    # events' time on the console counts from this transaction's start. The step leaves
    # ``inc`` as the row was last written (so the view is not read again), the unit and its
    # assignment move in one statement that returns the unit's view, and the events are
    # recorded together.
    inc = await store.incident_row(conn, incident_id, lock=True)
    if inc is None:
        raise NotFound(f"incident {incident_id} not found", code="incident.not_found")
    unit_id = inc["assigned_unit"]
    moves_unit = bool(unit_id) and action in UNIT_STATUS_AFTER
    events: list[Event] = []
    unit: dict[str, Any] | None = None
    if action in ("decline", "withdraw"):
        await _release_unit(conn, incident_id, action, actor, now, reason or "",
                            ASSIGNMENT_STATUS_AFTER[action], inc=inc)
        view = row_view(inc)
    else:
        await _step(conn, inc, action, actor, now, reason)
        view = row_view(inc)
        events.append(IncidentUpdated(incident=view, action=action))
        if moves_unit:
            status = UNIT_STATUS_AFTER[action]
            freed = status == "available"
            # Only while the unit is on this case: after feedback it may already be on
            # another one, which closing this case must not disturb.
            row = await conn.fetchrow(
                f"""WITH ended AS (UPDATE assignments SET status = $5 WHERE $5::text IS NOT NULL
                                     AND incident_id = $4 AND status IN ('active', 'accepted'))
                    UPDATE units u SET status = $2, updated_at = now(),
                        current_incident = CASE WHEN $3 THEN NULL ELSE current_incident END
                    WHERE u.id = $1 AND u.current_incident = $4
                    RETURNING {UNIT_COLUMNS}""",
                unit_id, status, freed, incident_id,
                ASSIGNMENT_STATUS_AFTER.get(action, "done" if freed else None))
            unit = row_view(row) if row is not None else None
    if moves_unit:
        if unit is None:  # the unit is on another case now: its view as it stands
            unit = await store.unit_view(conn, unit_id)
        events.append(UnitStatusChanged(unit=unit))
    await outbox.record_many(conn, events)
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
