"""Thin REST routes for assessment (结果考核) and patrol figures (inspections, 双随机一公开:
hub/inspections_api.py).

Validate, call dispatch/reports.py with the pool and the time, return its view. Include
with ``app.include_router(reports_api.router)``; the pool is ``app.state.hub.pool``.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from dispatch import assessment as assessment_core
from dispatch import reports
from hub.params import UNIX_MAX, Until

router = APIRouter(prefix="/api")


def _pool(request: Request) -> Any:
    return request.app.state.hub.pool


# ---------------------------------------------------------------- assessment
By = Annotated[str, Query(pattern="^(" + "|".join(assessment_core.GROUPINGS) + ")$")]
Since = Annotated[float | None, Query(ge=0, le=UNIX_MAX,
                                      description="UNIX seconds; default until - 30 days")]


@router.get("/reports/assessment")
async def assessment(request: Request, by: By = "grid", since: Since = None,
                     until: Until = None) -> dict[str, Any]:
    """Closure, on-time, rework and extension rates and response percentiles per group."""
    return await reports.assessment_report(_pool(request), by=by, since=since, until=until,
                                           now=time.time())


@router.get("/reports/assessment.csv")
async def assessment_csv(request: Request, by: By = "grid", since: Since = None,
                         until: Until = None) -> Response:
    """The same figures as CSV (UTF-8 with a BOM, so Excel shows the Chinese)."""
    report = await reports.assessment_report(_pool(request), by=by, since=since, until=until,
                                             now=time.time())
    return Response(
        reports.assessment_csv(report).encode("utf-8"), media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="assessment-{by}.csv"'})


@router.get("/units/{unit_id}/patrol")
async def unit_patrol(request: Request, unit_id: str, since: Since = None,
                      until: Until = None) -> dict[str, Any]:
    """Patrol mileage, duty time, trips and stops from the unit's GPS fixes."""
    return await reports.unit_patrol(_pool(request), unit_id, now=time.time(), since=since,
                                     until=until)
