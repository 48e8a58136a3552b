"""Thin REST routes for assessment (结果考核) and patrol figures (inspections, 双随机一公开:
hub/inspections_api.py).

Validate, call dispatch/reports.py with the pool and the time, return its view. Include
with ``app.include_router(reports_api.router)``; the pool is ``app.state.hub.pool``.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from core import clock
from core.errors import InvalidInput
from dispatch import assessment as assessment_core
from dispatch import reports
from hub.params import UNIX_MAX, Until
from hub.state import get_hub

router = APIRouter(prefix="/api")


def _pool(request: Request) -> Any:
    return get_hub(request).pool


# ---------------------------------------------------------------- assessment
By = Annotated[str, Query(pattern="^(" + "|".join(assessment_core.GROUPINGS) + ")$")]
Since = Annotated[float | None, Query(ge=0, le=UNIX_MAX,
                                      description="UNIX seconds; default until - 30 days")]


# Whole days of the town (settings.town_tz): a day runs from the town's midnight, not UTC's.
Day = Annotated[date | None, Query(ge=date(2000, 1, 1), le=date(2099, 12, 31),
                                   description="a town day, YYYY-MM-DD")]


def _range(since: float | None, until: float | None, first_day: date | None,
           last_day: date | None) -> tuple[float | None, float | None]:
    """``since``/``until`` from the town days ``first_day`` .. ``last_day`` (one given:
    that day alone), or as given."""
    if first_day is None and last_day is None:
        return since, until
    if since is not None or until is not None:
        raise InvalidInput("give since/until or first_day/last_day, not both",
                           code="report.bad_range")
    first = first_day or last_day
    last = last_day or first_day
    assert first is not None and last is not None
    return reports.town_day_range(first, last)


@router.get("/reports/assessment")
async def assessment(request: Request, by: By = "grid", since: Since = None,
                     until: Until = None, first_day: Day = None,
                     last_day: Day = None) -> dict[str, Any]:
    """Closure, on-time, rework and extension rates and response percentiles per group,
    for cases opened in ``[since, until)`` or on the town days ``first_day`` ..
    ``last_day``."""
    since, until = _range(since, until, first_day, last_day)
    return await reports.assessment_report(_pool(request), by=by, since=since, until=until,
                                           now=clock.now())


@router.get("/reports/assessment.csv")
async def assessment_csv(request: Request, by: By = "grid", since: Since = None,
                         until: Until = None, first_day: Day = None,
                         last_day: Day = None) -> Response:
    """The same figures as CSV (UTF-8 with a BOM, so Excel shows the Chinese)."""
    since, until = _range(since, until, first_day, last_day)
    report = await reports.assessment_report(_pool(request), by=by, since=since, until=until,
                                             now=clock.now())
    return Response(
        reports.assessment_csv(report).encode("utf-8"), media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="assessment-{by}.csv"'})


@router.get("/units/{unit_id}/patrol")
async def unit_patrol(request: Request, unit_id: str, since: Since = None,
                      until: Until = None) -> dict[str, Any]:
    """Patrol mileage, duty time, trips and stops from the unit's GPS fixes."""
    return await reports.unit_patrol(_pool(request), unit_id, now=clock.now(), since=since,
                                     until=until)
