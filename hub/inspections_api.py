"""Routes of the double-random inspections (双随机一公开): staff API, public JSON and the
public page.

Thin: validate, take the actor from the login (``hub.access.principal_of``), call
dispatch/inspection_store.py with the pool and the time, return its view. Who may call
what is in hub/access.py's ``POLICY``: announcing (committing) and publishing are a
supervisor's, drawing and recording results an operator's, reading staff views a viewer's;
``/api/inspections/public...`` and ``/inspections/public`` are public (no login) and show
only what a supervisor has published. No route takes a seed or an actor's name: a body
naming either is refused (draws, commitments) or the name is ignored.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from core import clock
from core.errors import Forbidden
from dispatch import inspection_store as store
from dispatch import inspections, sla
from hub import views
from hub.access import principal_of
from hub.params import RowId
from hub.state import get_hub

router = APIRouter()

# Big enough for a township's monthly sample; a larger draw is a mistake, not a request.
MAX_TARGETS = 1000
MAX_TEAM = 10
# The public list (no login, so bounded: each draw carries its whole registry snapshot, a
# few kB): a year of monthly draws for a dozen matters fits in one page; ``before`` pages on.
PUBLIC_DEFAULT_LIMIT = 200
PUBLIC_MAX_LIMIT = 200


def _pool(request: Request) -> Any:
    return get_hub(request).pool


def _actor(request: Request) -> str:
    """The logged-in principal's name: the only actor an inspection record takes."""
    p = principal_of(request)
    if p is None:  # the policy lets nobody anonymous here; refuse rather than record ""
        raise Forbidden("not authenticated", code="auth.required")
    return p.name


# ---------------------------------------------------------------- staff API
@router.get("/api/inspections/matters")
async def matters(request: Request) -> list[dict[str, Any]]:
    """The inspection matters (抽查事项) with their department and industries."""
    return await store.list_matters(_pool(request))


class CommitBody(BaseModel):
    # Unknown fields (a "seed", a name) are refused, not silently dropped.
    model_config = ConfigDict(extra="forbid")
    matter_id: Annotated[str, Field(min_length=1, max_length=64)]
    targets: Annotated[int, Field(ge=1, le=MAX_TARGETS)]
    inspectors_per_target: Annotated[int, Field(
        ge=inspections.MIN_INSPECTORS_PER_TARGET, le=MAX_TEAM)] = (
        inspections.DEFAULT_INSPECTORS_PER_TARGET)
    weight_by_risk: bool = True


@router.post("/api/inspections/commitments", status_code=201)
async def create_commitment(request: Request, body: CommitBody) -> dict[str, Any]:
    """Announce a draw: the hub makes a secret and publishes its SHA-256 with the terms."""
    return await store.commit(
        _pool(request), matter_id=body.matter_id, targets=body.targets,
        inspectors_per_target=body.inspectors_per_target, weight_by_risk=body.weight_by_risk,
        by=_actor(request), now=clock.now())


@router.get("/api/inspections/commitments")
async def list_commitments(request: Request, open_only: bool = False,
                           limit: Annotated[int, Query(ge=1, le=1000)] = 100
                           ) -> list[dict[str, Any]]:
    return await store.list_commitments(_pool(request), open_only=open_only, limit=limit)


class DrawBody(BaseModel):
    # No seed, no name: a body with either is refused (422 request.invalid).
    model_config = ConfigDict(extra="forbid")
    commitment_id: RowId


@router.post("/api/inspections/draws", status_code=201)
async def create_draw(request: Request, body: DrawBody) -> dict[str, Any]:
    """Draw with an announced commitment, from the registries as they are now."""
    return await store.make_draw(_pool(request), commitment_id=body.commitment_id,
                                 now=clock.now(), drawn_by=_actor(request))


@router.get("/api/inspections/draws")
async def list_draws(request: Request,
                     matter_id: Annotated[str | None, Query(max_length=64)] = None,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 100
                     ) -> list[dict[str, Any]]:
    return await store.list_draws(_pool(request), matter_id=matter_id, limit=limit)


@router.get("/api/inspections/draws/{draw_id}")
async def get_draw(request: Request, draw_id: RowId) -> dict[str, Any]:
    return await store.get_draw(_pool(request), draw_id)


@router.post("/api/inspections/draws/{draw_id}/verify")
async def verify_draw(request: Request, draw_id: RowId) -> dict[str, Any]:
    """Re-check the draw from its commitment, secret and inputs: ``{"reproduced": bool}``."""
    return await store.verify_draw(_pool(request), draw_id)


@router.post("/api/inspections/draws/{draw_id}/publish")
async def publish_draw(request: Request, draw_id: RowId) -> dict[str, Any]:
    """Publish the draw (revealing its secret) and the results recorded so far."""
    return await store.publish_draw(_pool(request), draw_id, by=_actor(request),
                                    now=clock.now())


class ResultBody(BaseModel):
    entity_id: Annotated[str, Field(min_length=1, max_length=64)]
    outcome: Annotated[str, Field(pattern="^(" + "|".join(store.OUTCOMES) + ")$")]
    notes: Annotated[str, Field(max_length=2000)] = ""


@router.post("/api/inspections/draws/{draw_id}/results", status_code=201)
async def record_result(request: Request, draw_id: RowId, body: ResultBody) -> dict[str, Any]:
    return await store.record_result(
        _pool(request), draw_id, entity_id=body.entity_id, outcome=body.outcome,
        notes=body.notes, recorded_by=_actor(request), now=clock.now())


# ---------------------------------------------------------------- the public (no login)
PublicLimit = Annotated[int, Query(ge=1, le=PUBLIC_MAX_LIMIT)]
Before = Annotated[int | None, Query(ge=1, le=2**63 - 1,
                                     description="only draws and commitments with a lower id")]


async def _public_doc(request: Request, limit: int, before: int | None) -> dict[str, Any]:
    pool = _pool(request)
    return {
        "algorithm": inspections.ALGORITHM,
        "seed_scheme": inspections.SEED_SCHEME,
        "verify_with": "python3 scripts/verify_draw.py THIS_FILE.json",
        "draws": await store.public_draws(pool, limit=limit, before=before),
        "commitments": await store.public_commitments(pool, limit=limit, before=before),
    }


@router.get("/api/inspections/public")
async def public(request: Request, limit: PublicLimit = PUBLIC_DEFAULT_LIMIT,
                 before: Before = None) -> dict[str, Any]:
    """The "one public": published draws, newest first (commitment, revealed secret, every
    input, the picks with names, published results) and every announced commitment with
    its status. Save it and run scripts/verify_draw.py on it to re-check every draw."""
    return await _public_doc(request, limit, before)


@router.get("/api/inspections/public/draws/{draw_id}")
async def public_draw(request: Request, draw_id: RowId) -> dict[str, Any]:
    """One published draw (404 ``inspection.draw_not_found`` if it is not published)."""
    return await store.public_draw(_pool(request), draw_id)


@router.get("/inspections/public", response_class=HTMLResponse)
async def public_page(request: Request, limit: PublicLimit = PUBLIC_DEFAULT_LIMIT,
                      before: Before = None) -> Response:
    """The public page: the same facts as the JSON, rendered on the server (no script)."""
    doc = await _public_doc(request, limit, before)
    return views.page(request, "inspections_public.html", doc=doc, fmt_time=_china_time)


def _china_time(ts: float | None) -> str:
    """UNIX seconds as the town's local time (China, UTC+8), the offset written out."""
    if ts is None:
        return "—"
    local = datetime.fromtimestamp(ts + sla.CHINA_TZ_OFFSET_S, UTC)
    return local.strftime("%Y-%m-%d %H:%M") + " +08:00"
