"""Alarm persistence: raise, repeat, acknowledge and clear, each with its event.

De-duplication is the database's job: the partial unique index ``alarms_one_open`` allows
one open alarm per (rule, device), and raising is one ``INSERT ... ON CONFLICT`` that either
opens the alarm or bumps the open one's count, atomically, whatever races in Python.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from core import outbox
from core.clock import to_datetime
from core.db import Conn, Querier, row_view
from core.entities import ALARM_COLUMNS, INCIDENT_COLUMNS
from core.errors import Conflict, NotFound
from core.events import (
    AlarmAcknowledged,
    AlarmCleared,
    AlarmRaised,
    AlarmRepeated,
    AlarmUpdated,
    IncidentUpdated,
)


async def raise_alarm(
    pool: asyncpg.Pool, *, rule_id: str, device_id: str, grid_id: str | None,
    severity: str, value: float | None, message: str, ts: float,
    situation: str | None = None, members: int | None = None,
) -> tuple[dict[str, Any], bool, int]:
    """Open an alarm or count a repeat of the open one. Returns (alarm, opened_now, seq).

    ``situation``/``members``: a storm group's alarm for a whole grid (``device_id`` is then
    the group key); a repeat updates the member count."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"""INSERT INTO alarms AS a (rule_id, device_id, grid_id, severity, value, message,
                                        raised_at, last_seen, situation, members)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9)
                ON CONFLICT (rule_id, device_id) WHERE state <> 'cleared'
                DO UPDATE SET count = a.count + 1, value = excluded.value,
                              last_seen = greatest(a.last_seen, excluded.last_seen),
                              members = coalesce(excluded.members, a.members),
                              message = excluded.message
                RETURNING {ALARM_COLUMNS}, (xmax = 0) AS inserted""",
            rule_id, device_id, grid_id, severity, value, message, to_datetime(ts), situation,
            members,
        )
        view = row_view(row)
        opened = bool(view.pop("inserted"))
        event = AlarmRaised(alarm=view) if opened else AlarmRepeated(alarm=view)
        seq = await outbox.record(conn, event)
    return view, opened, seq


async def clear_alarm_for(
    pool: asyncpg.Pool, *, rule_id: str, device_id: str, ts: float,
    by: str = "system", reason: str = "condition cleared",
) -> dict[str, Any] | None:
    """Clear the open alarm of (rule, device), if there is one."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"""UPDATE alarms a SET state = 'cleared', cleared_at = $3, cleared_by = $4,
                                    clear_reason = $5
                WHERE rule_id = $1 AND device_id = $2 AND state <> 'cleared'
                RETURNING {ALARM_COLUMNS}""",
            rule_id, device_id, to_datetime(ts), by, reason,
        )
        if row is None:
            return None
        view = row_view(row)
        await outbox.record(conn, AlarmCleared(alarm=view))
        await _note_incident_alarms(conn, view)
    return view


async def join_group(
    pool: asyncpg.Pool, *, rule_id: str, group: str, grid_id: str | None, severity: str,
    message: str, device_id: str, device_grid: str | None, value: float | None,
    member_message: str, ts: float,
) -> dict[str, Any]:
    """Make ``device_id`` a member of the grouped alarm ``group`` of the rule (a storm
    situation or a capped rule), opening the group alarm if it is not open. The group's
    ``members`` is the count of its open members; its ``count`` the joins so far. One
    transaction and one event (raised, or repeated with the new count)."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            """INSERT INTO alarms AS a (rule_id, device_id, grid_id, severity, value, message,
                                       raised_at, last_seen, situation, members)
               VALUES ($1, $2, $3, $4, NULL, $5, $6, $6, $2, 0)
               ON CONFLICT (rule_id, device_id) WHERE state <> 'cleared'
               DO UPDATE SET count = a.count + 1, message = excluded.message,
                             last_seen = greatest(a.last_seen, excluded.last_seen)
               RETURNING a.id, (xmax = 0) AS inserted""",
            rule_id, group, grid_id, severity, message, to_datetime(ts))
        assert row is not None  # an upsert returns its row
        await conn.execute(
            """INSERT INTO alarm_members (alarm_id, device_id, grid_id, value, message,
                                          raised_at)
               VALUES ($1, $2, $3, $4, $5, $6)
               ON CONFLICT (alarm_id, device_id) DO UPDATE SET value = excluded.value,
                   message = excluded.message, raised_at = excluded.raised_at,
                   cleared_at = NULL""",
            row["id"], device_id, device_grid, value, member_message, to_datetime(ts))
        view = await _recount(conn, row["id"])
        event = AlarmRaised(alarm=view) if row["inserted"] else AlarmRepeated(alarm=view)
        await outbox.record(conn, event)
    return view


async def leave_group(pool: asyncpg.Pool, *, rule_id: str, group: str, device_id: str,
                      ts: float, reason: str = "every member cleared"
                      ) -> dict[str, Any] | None:
    """The member's condition ended: it leaves the open group alarm; the group clears
    with its last member, for ``reason``. None if the group has no open alarm (an
    operator cleared it)."""
    async with pool.acquire() as conn, conn.transaction():
        aid = await conn.fetchval(
            "SELECT id FROM alarms WHERE rule_id = $1 AND device_id = $2 AND "
            "state <> 'cleared' FOR UPDATE", rule_id, group)
        if aid is None:
            return None
        await conn.execute(
            "UPDATE alarm_members SET cleared_at = $3 WHERE alarm_id = $1 AND device_id = $2 "
            "AND cleared_at IS NULL", aid, device_id, to_datetime(ts))
        view = await _recount(conn, aid)
        if view["members"] == 0:
            row = await conn.fetchrow(
                f"""UPDATE alarms a SET state = 'cleared', cleared_at = $2,
                        cleared_by = 'system', clear_reason = $3
                    WHERE id = $1 RETURNING {ALARM_COLUMNS}""", aid, to_datetime(ts), reason)
            view = row_view(row)
            await outbox.record(conn, AlarmCleared(alarm=view))
            await _note_incident_alarms(conn, view)
        else:
            await outbox.record(conn, AlarmUpdated(alarm=view))
    return view


async def _recount(conn: Conn, alarm_id: int) -> dict[str, Any]:
    row = await conn.fetchrow(
        f"""UPDATE alarms a SET members = (SELECT count(*) FROM alarm_members m
                                           WHERE m.alarm_id = a.id AND m.cleared_at IS NULL)
            WHERE id = $1 RETURNING {ALARM_COLUMNS}""", alarm_id)
    return row_view(row)


async def group_members(conn: Querier, alarm_id: int, include_cleared: bool = False
                        ) -> list[dict[str, Any]]:
    """The members of a grouped alarm, newest first (open ones only unless asked)."""
    rows = await conn.fetch(
        """SELECT device_id, grid_id, value, message, raised_at, cleared_at
           FROM alarm_members WHERE alarm_id = $1 AND ($2 OR cleared_at IS NULL)
           ORDER BY raised_at DESC, device_id""", alarm_id, include_cleared)
    return [row_view(r) for r in rows]


async def open_members(conn: Querier) -> list[tuple[str, str, str]]:
    """(rule id, group key, device id) of every open member of an open group alarm."""
    rows = await conn.fetch(
        """SELECT a.rule_id, a.device_id AS grp, m.device_id FROM alarm_members m
           JOIN alarms a ON a.id = m.alarm_id
           WHERE a.state <> 'cleared' AND m.cleared_at IS NULL""")
    return [(r["rule_id"], r["grp"], r["device_id"]) for r in rows]


async def set_flapping(pool: asyncpg.Pool, rule_id: str, device_id: str, flapping: bool
                       ) -> dict[str, Any] | None:
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"""UPDATE alarms a SET flapping = $3
                WHERE rule_id = $1 AND device_id = $2 AND state <> 'cleared'
                  AND flapping <> $3 RETURNING {ALARM_COLUMNS}""", rule_id, device_id, flapping)
        if row is None:
            return None
        view = row_view(row)
        await outbox.record(conn, AlarmUpdated(alarm=view))
    return view


async def _note_incident_alarms(conn: Conn, alarm: dict[str, Any]) -> None:
    """When every alarm attached to an incident has cleared, the incident shows it. It is
    not closed: a person closes cases."""
    iid = alarm.get("incident_id")
    if iid is None:
        return
    row = await conn.fetchrow(
        f"""UPDATE incidents i SET alarms_cleared = true, updated_at = now()
            WHERE id = $1 AND NOT alarms_cleared AND NOT EXISTS (
                SELECT 1 FROM alarms WHERE incident_id = $1 AND state <> 'cleared')
            RETURNING {INCIDENT_COLUMNS}""", iid)
    if row is not None:
        await outbox.record(conn, IncidentUpdated(incident=row_view(row),
                                                  action="alarms_cleared"))


async def acknowledge(pool: asyncpg.Pool, alarm_id: int, who: str) -> dict[str, Any]:
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"""UPDATE alarms a SET state = 'acknowledged', acked_by = $2, acked_at = now()
                WHERE id = $1 AND state = 'active' RETURNING {ALARM_COLUMNS}""",
            alarm_id, who,
        )
        if row is None:
            exists = await conn.fetchval("SELECT state FROM alarms WHERE id = $1", alarm_id)
            if exists is None:
                raise NotFound(f"alarm {alarm_id} not found", code="alarm.not_found")
            raise Conflict(f"alarm {alarm_id} is {exists}", code="alarm.not_active")
        view = row_view(row)
        await outbox.record(conn, AlarmAcknowledged(alarm=view))
    return view


async def clear_by_operator(pool: asyncpg.Pool, alarm_id: int, who: str, reason: str
                            ) -> dict[str, Any]:
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"""UPDATE alarms a SET state = 'cleared', cleared_at = now(), cleared_by = $2,
                                    clear_reason = $3
                WHERE id = $1 AND state <> 'cleared' RETURNING {ALARM_COLUMNS}""",
            alarm_id, who, reason,
        )
        if row is None:
            exists = await conn.fetchval("SELECT state FROM alarms WHERE id = $1", alarm_id)
            if exists is None:
                raise NotFound(f"alarm {alarm_id} not found", code="alarm.not_found")
            raise Conflict(f"alarm {alarm_id} is already cleared", code="alarm.already_cleared")
        view = row_view(row)
        await outbox.record(conn, AlarmCleared(alarm=view))
        await _note_incident_alarms(conn, view)
    return view


async def open_alarms(conn: Querier) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"SELECT {ALARM_COLUMNS} FROM alarms a WHERE a.state <> 'cleared' ORDER BY a.id")
    return [row_view(r) for r in rows]
