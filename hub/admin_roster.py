"""The duty roster: is a unit on shift now (pure), putting a unit on or off duty (by hand
or by schedule, with its handover note), and the job that follows the shifts.

Only on-duty units are dispatched: the dispatcher never considers an ``off_duty`` unit
(dispatch/engine.py), and a unit put on duty is announced as ``unit.status_changed``, on
which the dispatcher plans the cases waiting for it (dispatch/leader.py). Nothing here
decides dispatch; it only sets the status the dispatcher already honours.

The schedule acts at its boundaries only: the job keeps the shifts' last verdict per unit
(``unit_duty_schedule``) and changes a unit when the verdict changes, so a change by hand
holds until the next shift boundary. A unit busy on a case when its shift ends goes off
duty at the next check after it is free (the verdict is stored only once applied).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from core import outbox
from core.db import Conn
from core.errors import Conflict, NotFound
from core.events import UnitStatusChanged
from dispatch import store

log = logging.getLogger("hub.admin_roster")

# How often the job compares the shifts with the units' duty: a shift starts or ends
# within this long of its time, well inside any township roster's precision.
SCHEDULE_CHECK_S = 30.0
SCHEDULE_ACTOR = "schedule"


@dataclass(frozen=True, slots=True)
class Shift:
    weekdays: frozenset[int]  # ISO: 1 = Monday ... 7 = Sunday
    starts: time
    ends: time  # <= starts: ends the next day


def on_shift(shifts: Iterable[Shift], local: datetime) -> bool:
    """Is ``local`` (the town's wall-clock time) inside one of ``shifts``?"""
    t = local.time()
    today = local.isoweekday()
    yesterday = (local - timedelta(days=1)).isoweekday()
    for s in shifts:
        if s.starts < s.ends:
            if today in s.weekdays and s.starts <= t < s.ends:
                return True
        else:  # overnight (or a full day when ends == starts)
            if today in s.weekdays and t >= s.starts:
                return True
            if yesterday in s.weekdays and t < s.ends:
                return True
    return False


async def set_duty(conn: Conn, unit_id: str, on_duty: bool, actor: str,
                   source: str, note: str = "") -> dict[str, Any]:
    """Put a unit on duty (``available``, duty starts now) or off duty, log it with the
    handover note and announce it; call inside a transaction. A unit on a case cannot go
    off duty (``unit.busy``); a change to the state it is in is refused (``unit.no_change``)."""
    row = await conn.fetchrow("SELECT status FROM units WHERE id = $1 FOR UPDATE", unit_id)
    if row is None:
        raise NotFound(f"unit {unit_id} not found", code="unit.not_found")
    status = row["status"]
    if on_duty:
        if status != "off_duty":
            raise Conflict(f"unit {unit_id} is on duty already", code="unit.no_change")
        await conn.execute("UPDATE units SET status = 'available', duty_since = now(), "
                           "updated_at = now() WHERE id = $1", unit_id)
    else:
        if status == "off_duty":
            raise Conflict(f"unit {unit_id} is off duty already", code="unit.no_change")
        if status != "available":
            raise Conflict(f"unit {unit_id} is {status}: it goes off duty when free",
                           code="unit.busy")
        await conn.execute("UPDATE units SET status = 'off_duty', duty_since = NULL, "
                           "updated_at = now() WHERE id = $1", unit_id)
    await conn.execute(
        "INSERT INTO unit_duty_log (unit_id, actor, on_duty, source, note) "
        "VALUES ($1, $2, $3, $4, $5)", unit_id, actor, on_duty, source, note)
    view = await store.unit_view(conn, unit_id)
    await outbox.record(conn, UnitStatusChanged(unit=view))
    return view


def shift_of(row: Any) -> Shift:
    return Shift(frozenset(int(d) for d in row["weekdays"]), row["starts"], row["ends"])


async def apply_schedule(pool: asyncpg.Pool, tz: str, now: datetime | None = None) -> int:
    """Bring every unit that has shifts in line with them at a boundary; returns how many
    units changed."""
    local = (now or datetime.now(ZoneInfo(tz))).astimezone(ZoneInfo(tz))
    rows = await pool.fetch(
        """SELECT s.unit_id, s.weekdays, s.starts, s.ends, d.on_duty AS last
           FROM unit_shifts s LEFT JOIN unit_duty_schedule d USING (unit_id)""")
    by_unit: dict[str, list[Shift]] = {}
    last: dict[str, bool | None] = {}
    for r in rows:
        by_unit.setdefault(r["unit_id"], []).append(shift_of(r))
        last[r["unit_id"]] = r["last"]
    changed = 0
    for unit_id, shifts in by_unit.items():
        verdict = on_shift(shifts, local)
        if last[unit_id] == verdict:
            continue
        async with pool.acquire() as conn, conn.transaction():
            try:
                async with conn.transaction():  # a savepoint: a refusal keeps the verdict open
                    await set_duty(conn, unit_id, verdict, SCHEDULE_ACTOR, "schedule",
                                   "shift starts" if verdict else "shift ends")
                changed += 1
            except Conflict as e:
                if e.code == "unit.busy":
                    continue  # try again at the next check, once the unit is free
                # unit.no_change: already where the shifts want it
            await conn.execute(
                """INSERT INTO unit_duty_schedule (unit_id, on_duty) VALUES ($1, $2)
                   ON CONFLICT (unit_id) DO UPDATE SET on_duty = $2, applied_at = now()""",
                unit_id, verdict)
    return changed
