"""Squads and units through the API (the ``/admin/units`` page uses it): create and edit a
unit (qualifications among the 12 departments, members, home grid), its duty roster
(shifts), and on/off duty by hand with a handover note (hub/admin_roster.py).

Every change is one transaction with its audit row (the actor is the logged-in principal)
and a ``unit.status_changed`` event carrying the unit's new view, which open consoles and
the dispatcher already apply. Routes are for supervisors (they run the duty roster).
"""

from __future__ import annotations

import re
from datetime import time
from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from core import outbox
from core.db import Conn, row_view
from core.entities import UNIT_COLUMNS
from core.errors import Conflict, InvalidInput, NotFound
from core.events import UnitStatusChanged
from core.town_format import DEPARTMENTS
from dispatch import store
from hub import audit
from hub.access import actor_of
from hub.admin_roster import set_duty
from hub.state import HubDep, get_hub

router = APIRouter(prefix="/api/admin/units")

UnitId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
# A squad of more than this is a mistyped number, not a township team.
MAX_MEMBERS = 200
# Duty-log rows on a unit's card: the latest handovers.
DUTY_LOG_ROWS = 20
Clock = Annotated[str, Field(pattern=r"^\d{1,2}:\d{2}$")]


class UnitEdit(BaseModel):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    qualifications: Annotated[list[str], Field(max_length=len(DEPARTMENTS))]
    home_grid: Annotated[str, Field(min_length=1, max_length=64)]
    members: Annotated[int, Field(ge=1, le=MAX_MEMBERS)] = 1


class UnitNew(UnitEdit):
    id: UnitId
    type: Annotated[str, Field(pattern="^(squad|police|grid_worker)$")] = "squad"
    on_duty: bool = True


class DutyBody(BaseModel):
    on_duty: bool
    note: Annotated[str, Field(max_length=1000)] = ""


class ShiftBody(BaseModel):
    weekdays: Annotated[list[Annotated[int, Field(ge=1, le=7)]],
                        Field(min_length=1, max_length=7)]
    starts: Clock
    ends: Clock


def _ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def _clock(text: str, what: str) -> time:
    m = re.fullmatch(r"(\d{1,2}):(\d{2})", text)
    if m is None or int(m[1]) > 23 or int(m[2]) > 59:
        raise InvalidInput(f"{what}: a time HH:MM, not {text!r}", code="shift.bad_time")
    return time(int(m[1]), int(m[2]))


async def _check(conn: Conn, body: UnitEdit) -> None:
    unknown = sorted(set(body.qualifications) - set(DEPARTMENTS))
    if unknown:
        raise InvalidInput(f"unknown departments {unknown}; known: {', '.join(DEPARTMENTS)}",
                           code="unit.bad_qualification")
    if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM grids WHERE id = $1)",
                               body.home_grid):
        raise InvalidInput(f"unknown grid {body.home_grid!r}", code="grid.unknown")


async def _reload(request: Request) -> None:
    hub = get_hub(request)
    if hub.ingest is not None and hub.ingest.pipeline is not None:
        await hub.ingest.reload()


@router.get("")
async def list_units(request: Request, hub: HubDep) -> list[dict[str, Any]]:
    """Every unit with its shifts and the last handover note."""
    pool = hub.pool
    units = await pool.fetch(f"SELECT {UNIT_COLUMNS} FROM units u ORDER BY u.id")
    shifts = await pool.fetch("SELECT id, unit_id, weekdays, starts, ends FROM unit_shifts "
                              "ORDER BY unit_id, id")
    notes = await pool.fetch(
        """SELECT DISTINCT ON (unit_id) unit_id, at, actor, on_duty, source, note
           FROM unit_duty_log ORDER BY unit_id, at DESC""")
    by_unit: dict[str, list[dict[str, Any]]] = {}
    for s in shifts:
        by_unit.setdefault(s["unit_id"], []).append(_shift_view(s))
    last = {n["unit_id"]: row_view(n) for n in notes}
    return [{**row_view(u), "shifts": by_unit.get(u["id"], []), "last_duty": last.get(u["id"])}
            for u in units]


def _shift_view(s: Any) -> dict[str, Any]:
    return {"id": s["id"], "unit_id": s["unit_id"], "weekdays": list(s["weekdays"]),
            "starts": s["starts"].strftime("%H:%M"), "ends": s["ends"].strftime("%H:%M")}


@router.post("", status_code=201)
async def create_unit(request: Request, hub: HubDep, body: UnitNew) -> dict[str, Any]:
    actor = actor_of(request)
    async with hub.pool.acquire() as conn, conn.transaction():
        await _check(conn, body)
        added = await conn.fetchval(
            """INSERT INTO units (id, name, type, qualifications, home_grid, members, status,
                                  duty_since)
               VALUES ($1, $2, $3, $4, $5, $6, $7, CASE WHEN $8 THEN now() END)
               ON CONFLICT (id) DO NOTHING RETURNING id""",
            body.id, body.name, body.type, sorted(set(body.qualifications)), body.home_grid,
            body.members, "available" if body.on_duty else "off_duty", body.on_duty)
        if added is None:
            raise Conflict(f"a unit {body.id!r} exists already", code="unit.exists")
        view = await store.unit_view(conn, body.id)
        await audit.record(conn, "unit.created", actor, target=body.id, client_ip=_ip(request),
                           detail={"type": body.type, "home_grid": body.home_grid})
        await outbox.record(conn, UnitStatusChanged(unit=view))
    await _reload(request)
    return view


@router.put("/{unit_id}")
async def edit_unit(request: Request, hub: HubDep, unit_id: str, body: UnitEdit) -> dict[str, Any]:
    actor = actor_of(request)
    async with hub.pool.acquire() as conn, conn.transaction():
        await _check(conn, body)
        found = await conn.fetchval(
            """UPDATE units SET name = $2, qualifications = $3, home_grid = $4, members = $5,
                   updated_at = now() WHERE id = $1 RETURNING id""",
            unit_id, body.name, sorted(set(body.qualifications)), body.home_grid, body.members)
        if found is None:
            raise NotFound(f"unit {unit_id} not found", code="unit.not_found")
        view = await store.unit_view(conn, unit_id)
        await audit.record(conn, "unit.changed", actor, target=unit_id, client_ip=_ip(request),
                           detail=body.model_dump())
        await outbox.record(conn, UnitStatusChanged(unit=view))
    return view


@router.post("/{unit_id}/duty")
async def duty(request: Request, hub: HubDep, unit_id: str, body: DutyBody) -> dict[str, Any]:
    """On or off duty by hand, with the handover note; holds until the next shift boundary."""
    actor = actor_of(request)
    async with hub.pool.acquire() as conn, conn.transaction():
        view = await set_duty(conn, unit_id, body.on_duty, actor, "hand", body.note)
        await audit.record(conn, "unit.duty", actor, target=unit_id, client_ip=_ip(request),
                           detail={"on_duty": body.on_duty})
    return view


@router.get("/{unit_id}/duty-log")
async def duty_log(request: Request, hub: HubDep, unit_id: str) -> list[dict[str, Any]]:
    rows = await hub.pool.fetch(
        "SELECT at, actor, on_duty, source, note FROM unit_duty_log WHERE unit_id = $1 "
        "ORDER BY at DESC LIMIT $2", unit_id, DUTY_LOG_ROWS)
    return [row_view(r) for r in rows]


@router.post("/{unit_id}/shifts", status_code=201)
async def add_shift(request: Request, hub: HubDep, unit_id: str, body: ShiftBody) -> dict[str, Any]:
    starts, ends = _clock(body.starts, "starts"), _clock(body.ends, "ends")
    actor = actor_of(request)
    async with hub.pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM units WHERE id = $1)",
                                   unit_id):
            raise NotFound(f"unit {unit_id} not found", code="unit.not_found")
        row = await conn.fetchrow(
            """INSERT INTO unit_shifts (unit_id, weekdays, starts, ends, created_by)
               VALUES ($1, $2, $3, $4, $5) RETURNING id, unit_id, weekdays, starts, ends""",
            unit_id, sorted(set(body.weekdays)), starts, ends, actor)
        await audit.record(conn, "unit.changed", actor, target=unit_id, client_ip=_ip(request),
                           detail={"shift_added": _shift_view(row)})
    return _shift_view(row)


@router.delete("/{unit_id}/shifts/{shift_id}")
async def delete_shift(request: Request, hub: HubDep,
                       unit_id: str, shift_id: int) -> dict[str, Any]:
    actor = actor_of(request)
    async with hub.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "DELETE FROM unit_shifts WHERE id = $1 AND unit_id = $2 "
            "RETURNING id, unit_id, weekdays, starts, ends", shift_id, unit_id)
        if row is None:
            raise NotFound(f"no shift {shift_id} of unit {unit_id}", code="shift.not_found")
        await audit.record(conn, "unit.changed", actor, target=unit_id, client_ip=_ip(request),
                           detail={"shift_removed": _shift_view(row)})
    return _shift_view(row)
