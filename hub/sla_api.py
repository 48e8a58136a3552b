"""SLA configuration through the API: read the limits, warn share and working calendar in
force; supervisors edit limits, the warn share and the calendar's holidays and adjusted
working days (调休).

The actor recorded with every edit is the authenticated principal (``principal_of``), never
a name in the body. An edit is in force when its transaction commits: the open cases'
running clocks are recomputed in it (dispatch/sla_retime.py, one ``incident.updated`` each,
so open consoles redraw their countdowns) and its ``sla.config_changed`` event makes every
other process reload the configuration (hub/config_reload.py; ``settings.sla_reload_s``,
hub/jobs.py, is the backstop).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, Field

from core.errors import Forbidden
from dispatch import sla_days, sla_edits, sla_settings
from hub.access import principal_of
from hub.state import HubDep, get_hub

router = APIRouter(prefix="/api/sla")

# Path parameters: a category as incidents spell it, or "*" for every category.
Category = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^(\*|[a-z_]+)$")]
Priority = Annotated[int, Path(ge=1, le=4)]
# No limit beyond a year is meaningful for a township case; larger numbers are typos.
MAX_LIMIT_S = 366 * 86_400.0
Seconds = Annotated[float, Field(gt=0, le=MAX_LIMIT_S)]


class LimitsBody(BaseModel):
    """Limits in seconds from the report; ``resolve_working``: ``resolve_s`` is working
    time of the town's calendar (e.g. 3 working days = 3 x 9 h = 97200)."""

    register_s: Seconds
    dispatch_s: Seconds
    accept_s: Seconds
    arrive_s: Seconds
    resolve_s: Seconds
    resolve_working: bool = False


class WarnShareBody(BaseModel):
    warn_share: Annotated[float, Field(gt=0, lt=1)]


class CalendarDayBody(BaseModel):
    """A holiday or an adjusted working day (调休). ``date`` as YYYY-MM-DD: checked by
    ``sla_days.parse_day`` so a bad one gets its own code (``sla.bad_date``)."""

    date: Annotated[str, Field(max_length=32)]
    kind: Literal["holiday", "workday"]
    name: Annotated[str, Field(max_length=64)] = ""


def _actor(request: Request) -> str:
    p = principal_of(request)
    if p is None:  # the policy table makes these routes supervisor-only: not reached
        raise Forbidden("not authenticated", code="auth.required")
    return p.name


@asynccontextmanager
async def _editing(request: Request) -> AsyncIterator[None]:
    """Around an edit: the configuration as committed is what this process runs on after
    it, also when the edit failed after loading its own inside the transaction."""
    try:
        yield
    finally:
        hub = get_hub(request)
        await sla_settings.load_settings(hub.pool, hub.settings)


@router.get("")
async def get_sla() -> dict[str, Any]:
    """Limits per category and priority (``"*"``: every category), the warn share, the
    town's time zone and working calendar, and where each comes from."""
    return sla_settings.view()


@router.put("/limits/{category}/{priority}")
async def put_limits(request: Request, hub: HubDep, category: Category, priority: Priority,
                     body: LimitsBody) -> dict[str, Any]:
    """Set the limits of (category or ``*``, priority), kept over the limits file."""
    async with _editing(request):
        out = await sla_edits.set_limits(hub.pool, category, priority,
                                         body.model_dump(), _actor(request))
    return out


@router.delete("/limits/{category}/{priority}")
async def delete_limits(request: Request, hub: HubDep, category: Category, priority: Priority
                        ) -> dict[str, Any]:
    """Drop an edit: the limits file's row (or the ``*`` row) applies again."""
    async with _editing(request):
        await sla_edits.reset_limits(hub.pool, category, priority, _actor(request))
    return sla_settings.view()


@router.put("/warn-share")
async def put_warn_share(request: Request, hub: HubDep, body: WarnShareBody) -> dict[str, Any]:
    async with _editing(request):
        out = await sla_edits.set_warn_share(hub.pool, body.warn_share, _actor(request))
    return out


@router.get("/calendar/days")
async def get_calendar_days() -> list[dict[str, Any]]:
    """Holidays and adjusted working days in force (and file days removed), by date, each
    with where it comes from (the calendar file or an edit here)."""
    return sla_settings.calendar_days()


@router.post("/calendar/days", status_code=201)
async def post_calendar_day(request: Request, hub: HubDep, body: CalendarDayBody
                            ) -> dict[str, Any]:
    """Make a date a holiday or an adjusted working day, kept over the calendar file."""
    async with _editing(request):
        out = await sla_days.add_day(hub.pool, body.date, body.kind, body.name.strip(),
                                     _actor(request))
    return out


@router.delete("/calendar/days/{day}")
async def delete_calendar_day(request: Request, hub: HubDep,
                              day: Annotated[str, Path(max_length=32)]) -> dict[str, Any]:
    """Make a date follow its weekday again (a file's day is overruled, an added one
    dropped)."""
    async with _editing(request):
        await sla_days.remove_day(hub.pool, day, _actor(request))
    return sla_settings.view()


@router.get("/changes")
async def get_changes(request: Request, hub: HubDep) -> list[dict[str, Any]]:
    """Every edit, newest first: who, when, the limits before and after."""
    return await sla_settings.changes(hub.pool)
