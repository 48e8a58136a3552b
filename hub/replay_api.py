"""After-action replay (复盘): the console's picture at a past time, and the records of a
span for the browser's playback. Read only; every route is for viewers (hub/access.py).

- ``GET /api/replay/history``: the span a replay can cover (first saved picture to now).
- ``GET /api/replay/picture?at=T``: the live feed's snapshot frame as the console had it at
  ``T`` (hub/replay_fold.py), plus ``at``, ``clock`` and ``unit_set_at`` to play on from.
- ``GET /api/replay/chunk?after_seq=S&clock=C&start=A&end=B&step=D``: the events and unit
  fixes of (A, B] (hub/replay_store.chunk).
- ``GET /api/replay/alerts?at=T``, ``GET /api/replay/kpis?at=T``: the supervisor strip and
  the server-computed KPI tiles at ``T``.
- ``GET /replay?from=A&to=B``: the console page in replay mode (frontend/static/replay.js).
"""

from __future__ import annotations

from typing import Annotated, Any

import asyncpg
import msgspec
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from core import clock
from core.errors import InvalidInput
from hub import replay_fold, replay_store
from hub.params import UNIX_MAX, Seq
from hub.state import get_hub
from hub.views import page

router = APIRouter()

At = Annotated[float, Query(ge=0, le=UNIX_MAX, description="UNIX seconds")]
# One chunk covers at most this much replay time: two real seconds of playback at 60x
# (replay.js asks for the next chunk while one chunk's span is still loaded ahead).
CHUNK_MAX_SPAN_S = 120.0
# Events per chunk: bounds a response in a storm; the chunk then ends earlier and the
# browser asks for the rest.
CHUNK_MAX_EVENTS = 5000
# The thinning of fixes in a chunk (seconds of replay time per unit): 1 s is the live feed's
# own per-unit rate (hub/live.POSITION_MIN_INTERVAL_S); the browser asks for more at high
# speeds, where a marker could not show a finer step anyway.
STEP_MIN_S = 1.0
STEP_MAX_S = 60.0
# A replay stops this far behind the present: an event's transaction may still be
# committing with an earlier ``ts`` (hub/replay_fold.py, time rules); the live console is
# the place for the present.
PRESENT_MARGIN_S = 2.0


_enc = msgspec.json.Encoder()


def _json(body: bytes) -> Response:
    return Response(body, media_type="application/json")


def _pool(request: Request) -> asyncpg.Pool:
    return get_hub(request).pool


def _past(at: float) -> float:
    latest = clock.now() - PRESENT_MARGIN_S
    if at > latest:
        raise InvalidInput(f"{at} is not in the past: replay reaches up to "
                           f"{PRESENT_MARGIN_S:g} s ago; the live console shows the present",
                           code="replay.future")
    return at


@router.get("/api/replay/history")
async def history(request: Request) -> dict[str, Any]:
    async with _pool(request).acquire() as conn:
        out = await replay_store.history(conn)
    out["to"] -= PRESENT_MARGIN_S
    return out


@router.get("/api/replay/picture")
async def picture(request: Request, at: At) -> Response:
    _past(at)
    async with _pool(request).acquire() as conn:
        pic = await replay_store.picture_at(conn, at)
    return _json(_enc.encode(replay_fold.frame(pic)))


@router.get("/api/replay/chunk")
async def chunk(request: Request, after_seq: Seq, clock: At, start: At, end: At,
                step: Annotated[float, Query(ge=STEP_MIN_S, le=STEP_MAX_S)] = STEP_MIN_S
                ) -> Response:
    if not start < end:
        raise InvalidInput("end must be after start", code="replay.bad_span")
    if end - start > CHUNK_MAX_SPAN_S:
        raise InvalidInput(f"a chunk spans at most {CHUNK_MAX_SPAN_S:g} s",
                           code="replay.span_too_long")
    _past(end)
    async with _pool(request).acquire() as conn:
        units = [r["id"] for r in await conn.fetch("SELECT id FROM units")]
        out = await replay_store.chunk(conn, after_seq=after_seq, clock=clock, start=start,
                                       end=end, step_s=step, max_events=CHUNK_MAX_EVENTS,
                                       unit_ids=units)
    # Each event's JSON as the live feed sends it (core.events.Envelope.wire), reused as is.
    events = b",".join(out.pop("events"))
    return _json(_enc.encode(out)[:-1] + b',"events":[' + events + b"]}")


@router.get("/api/replay/alerts")
async def alerts(request: Request, at: At) -> list[dict[str, Any]]:
    _past(at)
    async with _pool(request).acquire() as conn:
        return await replay_store.alerts_at(conn, at)


@router.get("/api/replay/kpis")
async def kpis(request: Request, at: At) -> dict[str, Any]:
    _past(at)
    async with _pool(request).acquire() as conn:
        return await replay_store.kpis_at(conn, at, request.app.state.hub.settings.town_tz)


@router.get("/replay", response_class=HTMLResponse)
async def replay_page(request: Request,
                      start: Annotated[float | None, Query(alias="from", ge=0, le=UNIX_MAX)] = None,
                      end: Annotated[float | None, Query(alias="to", ge=0, le=UNIX_MAX)] = None,
                      ) -> Response:
    """The console in replay mode over [from, to] (default: the last hour it can cover)."""
    return page(request, "console.html", replay={"from": start, "to": end})
