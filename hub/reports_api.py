"""Thin REST routes for inspections (双随机一公开) and assessment (结果考核).

Validate, call dispatch/reports.py with the pool and the time, return its view. Include
with ``app.include_router(reports_api.router)``; the pool is ``app.state.hub.pool``.
"""

from __future__ import annotations

import time
from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from core.errors import InvalidInput
from dispatch import assessment as assessment_core
from dispatch import inspections, reports
from hub.params import UNIX_MAX, RowId, Until

router = APIRouter(prefix="/api")

Actor = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[\w.:@-]+$")]
# Big enough for a township's monthly sample; a larger draw is a mistake, not a request.
MAX_TARGETS = 1000
MAX_TEAM = 10


def _pool(request: Request) -> Any:
    return request.app.state.hub.pool


# ---------------------------------------------------------------- inspections
@router.get("/inspections/matters")
async def matters(request: Request) -> list[dict[str, Any]]:
    """The inspection matters (抽查事项) with their department and industries."""
    return await reports.list_matters(_pool(request))


class DrawBody(BaseModel):
    matter_id: Annotated[str, Field(min_length=1, max_length=64)]
    targets: Annotated[int, Field(ge=1, le=MAX_TARGETS)]
    inspectors_per_target: Annotated[int, Field(
        ge=inspections.MIN_INSPECTORS_PER_TARGET, le=MAX_TEAM)] = (
        inspections.DEFAULT_INSPECTORS_PER_TARGET)
    weight_by_risk: bool = True
    seed: Annotated[str | None, Field(min_length=1, max_length=inspections.MAX_SEED_LEN)] = None
    drawn_by: Actor  # every draw is attributable (全程留痕)


@router.post("/inspections/draws", status_code=201)
async def create_draw(request: Request, body: DrawBody) -> dict[str, Any]:
    """Draw targets and inspection teams for a matter now; no seed: a random one."""
    return await reports.make_draw(
        _pool(request), matter_id=body.matter_id, targets=body.targets, now=time.time(),
        drawn_by=body.drawn_by, inspectors_per_target=body.inspectors_per_target,
        weight_by_risk=body.weight_by_risk, seed=body.seed)


@router.get("/inspections/draws")
async def list_draws(request: Request,
                     matter_id: Annotated[str | None, Query(max_length=64)] = None,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 100
                     ) -> list[dict[str, Any]]:
    return await reports.list_draws(_pool(request), matter_id=matter_id, limit=limit)


@router.get("/inspections/draws/{draw_id}")
async def get_draw(request: Request, draw_id: RowId) -> dict[str, Any]:
    return await reports.get_draw(_pool(request), draw_id)


@router.post("/inspections/draws/{draw_id}/verify")
async def verify_draw(request: Request, draw_id: RowId) -> dict[str, Any]:
    """Re-run the draw from its stored seed and inputs: ``{"reproduced": bool, ...}``."""
    return await reports.verify_draw(_pool(request), draw_id)


class PublishBody(BaseModel):
    by: Actor


@router.post("/inspections/draws/{draw_id}/publish")
async def publish_draw(request: Request, draw_id: RowId, body: PublishBody) -> dict[str, Any]:
    return await reports.publish_draw(_pool(request), draw_id, by=body.by, now=time.time())


class ResultBody(BaseModel):
    entity_id: Annotated[str, Field(min_length=1, max_length=64)]
    outcome: Annotated[str, Field(pattern="^(" + "|".join(reports.OUTCOMES) + ")$")]
    notes: Annotated[str, Field(max_length=2000)] = ""
    recorded_by: Actor


@router.post("/inspections/draws/{draw_id}/results", status_code=201)
async def record_result(request: Request, draw_id: RowId, body: ResultBody) -> dict[str, Any]:
    return await reports.record_result(
        _pool(request), draw_id, entity_id=body.entity_id, outcome=body.outcome,
        notes=body.notes, recorded_by=body.recorded_by, now=time.time())


@router.get("/inspections/public")
async def public(request: Request, limit: Annotated[int, Query(ge=1, le=200)] = 50
                 ) -> list[dict[str, Any]]:
    """Published draws with their seeds, inputs, picks and results (the "one public")."""
    return await reports.public_draws(_pool(request), limit=limit)


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
                                           now=time.time())


@router.get("/reports/assessment.csv")
async def assessment_csv(request: Request, by: By = "grid", since: Since = None,
                         until: Until = None, first_day: Day = None,
                         last_day: Day = None) -> Response:
    """The same figures as CSV (UTF-8 with a BOM, so Excel shows the Chinese)."""
    since, until = _range(since, until, first_day, last_day)
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
