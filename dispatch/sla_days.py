"""Holidays and adjusted working days (调休) edited through the API.

The calendar file stays the seed; a row of ``sla_calendar_days`` (migration 0025) decides
what its date is. Adding a day writes a ``holiday`` or ``workday`` row; removing a day the
file lists writes a ``normal`` row (the file's entry is overruled), removing a day only the
database added deletes its row. Every edit is one transaction with its entry in
``sla_config_log`` (target ``calendar:YYYY-MM-DD``) naming the actor, which the caller
takes from authentication (hub/sla_api.py), never from a request body, and the new calendar
put in force with the open cases' clocks recomputed (``sla_retime.record_edit``).
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any

import asyncpg

from core.errors import Conflict, InvalidInput, NotFound
from dispatch.sla_config import InForce, day_kind
from dispatch.sla_retime import record_edit

# Days the calendar may be edited for. The hub's cases run for weeks, not decades; a date
# outside these years is a typo (2206 for 2026), not a holiday.
FIRST_YEAR, LAST_YEAR = 2000, 2100
_ISO_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
EDITABLE_KINDS = ("holiday", "workday")


def parse_day(text: str) -> date:
    """A ``YYYY-MM-DD`` date in the editable years; ``InvalidInput`` (``sla.bad_date``)."""
    try:
        if not _ISO_DAY.match(text):
            raise ValueError(text)
        d = date.fromisoformat(text)
    except ValueError as e:
        raise InvalidInput(f"{text!r} is not a date as YYYY-MM-DD",
                           code="sla.bad_date") from e
    if not FIRST_YEAR <= d.year <= LAST_YEAR:
        raise InvalidInput(f"{text}: only dates in {FIRST_YEAR}..{LAST_YEAR} can be edited",
                           code="sla.bad_date")
    return d


def _entry(kind: str, name: str) -> dict[str, str]:
    return {"kind": kind, "name": name}


async def add_day(pool: asyncpg.Pool, text: str, kind: str, name: str, actor: str
                  ) -> dict[str, Any]:
    """Make the date a holiday or an adjusted working day.

    ``sla.bad_date`` for a date that is not one; ``sla.day_exists`` (409) when the date is
    already a holiday or an adjusted working day (remove it first); ``sla.bad_day`` for an
    adjusted working day on a day that works anyway by its weekday."""
    d = parse_day(text)
    if kind not in EDITABLE_KINDS:
        raise InvalidInput(f"kind: one of {', '.join(EDITABLE_KINDS)}", code="sla.bad_day")
    cal = InForce.calendar
    async with pool.acquire() as conn, conn.transaction():
        # Serialise calendar edits: the check below reads the calendar in force, which a
        # concurrent edit in another process could be changing.
        await conn.execute("LOCK TABLE sla_calendar_days IN SHARE ROW EXCLUSIVE MODE")
        row = await conn.fetchrow("SELECT kind FROM sla_calendar_days WHERE day = $1", d)
        current = row["kind"] if row is not None else day_kind(InForce.file_calendar, d)
        if current != "normal":
            raise Conflict(f"{d} is already a {current}; remove it first",
                           code="sla.day_exists")
        if kind == "workday" and d.weekday() in cal.workdays:
            raise InvalidInput(f"{d} is a {d.strftime('%A')}, a working day anyway: an "
                               "adjusted working day is a day off by its weekday",
                               code="sla.bad_day")
        await conn.execute(
            """INSERT INTO sla_calendar_days (day, kind, name, updated_by)
               VALUES ($1, $2, $3, $4)
               ON CONFLICT (day) DO UPDATE SET kind = excluded.kind, name = excluded.name,
                 updated_by = excluded.updated_by, updated_at = now()""",
            d, kind, name, actor)
        await record_edit(conn, actor, f"calendar:{d.isoformat()}", None, _entry(kind, name))
    return {"date": d.isoformat(), "kind": kind, "name": name, "origin": "edited",
            "updated_by": actor}


async def remove_day(pool: asyncpg.Pool, text: str, actor: str) -> None:
    """Make the date follow its weekday again. ``sla.day_unknown`` (404) when it is neither
    a holiday nor an adjusted working day."""
    d = parse_day(text)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("LOCK TABLE sla_calendar_days IN SHARE ROW EXCLUSIVE MODE")
        row = await conn.fetchrow("SELECT kind, name FROM sla_calendar_days WHERE day = $1", d)
        in_file = day_kind(InForce.file_calendar, d)
        current = row["kind"] if row is not None else in_file
        if current == "normal":
            raise NotFound(f"{d} is neither a holiday nor an adjusted working day",
                           code="sla.day_unknown")
        name = row["name"] if row is not None else InForce.day_names.get(d, "")
        if in_file == "normal":
            await conn.execute("DELETE FROM sla_calendar_days WHERE day = $1", d)
        else:
            await conn.execute(
                """INSERT INTO sla_calendar_days (day, kind, updated_by) VALUES ($1, 'normal', $2)
                   ON CONFLICT (day) DO UPDATE SET kind = 'normal', name = '',
                     updated_by = excluded.updated_by, updated_at = now()""", d, actor)
        await record_edit(conn, actor, f"calendar:{d.isoformat()}", _entry(current, name), None)
