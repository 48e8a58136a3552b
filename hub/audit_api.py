"""The security audit trail through the API: ``GET /api/audit`` for supervisors and admins
(hub/access.py), filtered by kind (exact, or a family such as ``login.``), actor, target
and time range, newest first. Writing happens where the events happen (hub/audit.py)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from hub import audit
from hub.params import UNIX_MAX, Until
from hub.state import get_hub

router = APIRouter(prefix="/api/audit")

Name = Annotated[str | None, Query(min_length=1, max_length=128)]


@router.get("")
async def security_events(
    request: Request,
    kind: Annotated[str | None, Query(max_length=64, pattern=r"^[a-z_]+\.([a-z_]+)?$")] = None,
    actor: Name = None, target: Name = None,
    since: Annotated[float | None, Query(ge=0, le=UNIX_MAX, description="UNIX seconds")] = None,
    until: Until = None,
    limit: Annotated[int, Query(ge=1, le=audit.QUERY_MAX)] = 200,
) -> dict[str, Any]:
    """``{"kinds": [...], "events": [...]}``: the kinds a filter may name, and the events."""
    events = await audit.query(get_hub(request).pool, kind=kind, actor=actor,
                               target=target, since=since, until=until, limit=limit)
    return {"kinds": sorted(audit.KINDS), "events": events}
