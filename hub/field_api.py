"""The field app's API: what a phone reads and does, under its own identity.

Every route here is for phones only (``hub/access.py`` ``FIELD``): a unit's phone (role
``unit``) or a grid worker's (role ``grid_worker``). The actor recorded is the phone's
unit (``access.actor_of``), never a name from the request. Case steps are the same
workflow actions the console records (``dispatch/service.apply_action_in``), checked by
the same rules (``access.require_action_allowed`` for units), plus:

- ``arrive``: a unit on an accepted case marks its arrival on scene; a case-log entry
  (not a workflow step: the SLA's arrival stage is ``start_handling``) and an event;
- grid workers may ``verify_ok`` / ``verify_fail`` cases of their own grids only, and,
  being neither the handler nor a member of the handler's unit, pass the workflow's
  separation-of-duties check; they may report problems and patrol, nothing else.

Actions and reports carry an ``Idempotency-Key`` (``hub/field_idempotency.py``) and their
photos' hashes (uploaded first, ``hub/photos.py``); the evidence entry, the step and the
stored answer commit together.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from core import clock, outbox, topics
from core.db import Conn, row_view
from core.entities import INCIDENT_COLUMNS
from core.errors import Forbidden, InvalidInput, NotFound
from core.events import IncidentUpdated
from dispatch import reports, store
from dispatch import service as dispatch_service
from dispatch.geo import haversine_m, straight_line_time_s
from hub import api, open311_services, photos
from hub import field_idempotency as idem
from hub.access import UNIT_ACTIONS, actor_of, principal_of, require_action_allowed
from hub.auth import Principal
from hub.params import RowId
from hub.state import HubDep, get_hub
from ingest import wire

router = APIRouter()

ARRIVE = "arrive"
PHONE_UNIT_ACTIONS = UNIT_ACTIONS | {ARRIVE}
GRID_WORKER_ACTIONS = frozenset({"verify_ok", "verify_fail"})
# Which photo stage an action's photos are evidence of.
PHOTO_STAGE = {"give_feedback": "feedback", "verify_ok": "verify", "verify_fail": "verify"}
# A unit's inbox: its cases in these states (after feedback the case is others' work).
UNIT_OPEN_STATES = ("dispatched", "accepted", "handling")
# A grid worker's inbox: cases of its grids waiting for verification, and its own reports
# still open; at most this many of each, newest first.
INBOX_LIMIT = 100
Text = Annotated[str, Field(max_length=500)]
Sha = Annotated[str, Field(pattern="^[0-9a-f]{64}$")]
PhotoList = Annotated[list[Sha], Field(max_length=photos.MAX_PHOTOS_PER_STEP)]


def _phone(request: Request) -> Principal:
    p = principal_of(request)
    if p is None or not p.is_field:
        raise Forbidden("for field-app phones only", code="auth.forbidden")
    return p


async def _grids(request: Request, p: Principal) -> list[str]:
    return list(await get_hub(request).pool.fetchval(
        "SELECT grids FROM field_phones WHERE name = $1", p.name) or [])


@router.get("/api/field/me")
async def me(request: Request, hub: HubDep) -> dict[str, Any]:
    p = _phone(request)
    unit = await hub.pool.fetchrow(
        "SELECT id, name, type, home_grid, status FROM units WHERE id = $1", p.unit_id)
    return {"name": p.name, "role": p.role, "unit": row_view(unit) if unit else None,
            "grids": await _grids(request, p),
            "categories": [{"code": s.code, "qualification": s.qualification,
                            "priority": s.priority}
                           for s in open311_services.SERVICES.values()]}


@router.get("/api/field/inbox")
async def inbox(request: Request, hub: HubDep) -> dict[str, Any]:
    """The phone's cases now, and the event seq they are as of: the live feed
    (``/ws/field?after=seq``) continues from there without a gap."""
    p = _phone(request)
    async with hub.pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        seq = await outbox.last_seq(conn)
        if p.is_unit:
            rows = await conn.fetch(
                f"SELECT {INCIDENT_COLUMNS} FROM incidents i WHERE i.assigned_unit = $1 "
                "AND i.state = ANY($2::text[]) ORDER BY i.priority, i.id",
                p.unit_id, list(UNIT_OPEN_STATES))
        else:
            rows = await conn.fetch(
                f"""SELECT {INCIDENT_COLUMNS} FROM incidents i
                    WHERE (i.grid_id = ANY($1::text[]) AND i.state = 'feedback')
                       OR (i.reporter = $2 AND i.state NOT IN
                           ('closed', 'evaluated', 'archived', 'cancelled'))
                    ORDER BY i.id DESC LIMIT $3""",
                await _grids(request, p), p.unit_id, INBOX_LIMIT)
    return {"seq": seq, "cases": [row_view(r) for r in rows]}


@router.get("/api/field/town")
async def town(request: Request, hub: HubDep) -> dict[str, Any]:
    """The town's roads and grids (the console's ``/api/town``): the phone's map has no tile
    server either, and a report's place is picked on it."""
    _phone(request)
    return await api.town(request, hub)


async def _case_for(request: Request, p: Principal, incident_id: int) -> dict[str, Any]:
    """The incident's row if this phone may see it (404 otherwise: no probing)."""
    hub = get_hub(request)
    row = await hub.pool.fetchrow(
        f"SELECT {INCIDENT_COLUMNS} FROM incidents i WHERE i.id = $1", incident_id)
    if row is not None:
        inc = row_view(row)
        if p.is_unit and p.unit_id in (inc["assigned_unit"], inc["handler"], inc["reporter"]):
            return inc
        if p.is_grid_worker and (inc["grid_id"] in await _grids(request, p)
                                 or inc["reporter"] == p.unit_id):
            return inc
    raise NotFound(f"no case {incident_id} for this phone", code="field.case_not_found")


@router.get("/api/field/cases/{incident_id}")
async def case(request: Request, hub: HubDep, incident_id: RowId) -> dict[str, Any]:
    """A case as the phone shows it: the incident, its log (the handler's notes), photos."""
    p = _phone(request)
    inc = await _case_for(request, p, incident_id)
    log = await store.case_log(hub.pool, incident_id)
    ev = await photos.evidence(hub.pool, photos.photo_dir(hub.settings), incident_id)
    return {"incident": inc, "photos": ev,
            "log": [{k: e[k] for k in ("seq", "action", "actor", "ts", "reason")}
                    for e in log]}


@router.get("/api/field/cases/{incident_id}/route")
async def route(request: Request, hub: HubDep, incident_id: RowId,
                lon: Annotated[float | None, Query(ge=-180, le=180)] = None,
                lat: Annotated[float | None, Query(ge=-90, le=90)] = None) -> dict[str, Any]:
    """The road route from the phone's position (``lon``/``lat``; default its unit's last
    fix) to the case, with distance and ETA, on the town's road graph."""
    p = _phone(request)
    inc = await _case_for(request, p, incident_id)
    if lon is None or lat is None:
        pos = await hub.pool.fetchrow("SELECT lon, lat FROM units WHERE id = $1", p.unit_id)
        if pos is None or pos["lon"] is None:
            raise InvalidInput("the phone's position is not known yet",
                               code="field.no_position")
        lon, lat = float(pos["lon"]), float(pos["lat"])
    graph = hub.road_graph
    if graph is None:
        d = haversine_m(lon, lat, inc["lon"], inc["lat"])
        pts, metres, secs, by_road = ([(lon, lat), (inc["lon"], inc["lat"])], d,
                                      straight_line_time_s(d), False)
    else:
        pts, metres, secs, by_road = graph.route(lon, lat, inc["lon"], inc["lat"])
    return {"incident_id": incident_id, "points": [[x, y] for x, y in pts],
            "distance_m": round(metres, 1), "eta_s": round(secs, 1), "by_road": by_road}


class ActionBody(BaseModel):
    action: Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[a-z_]+$")]
    reason: Text | None = None
    photos: PhotoList = []


async def _arrive(conn: Conn, incident_id: int, actor: str, now: float) -> dict[str, Any]:
    inc = await store.incident_row(conn, incident_id, lock=True)
    assert inc is not None
    if inc["state"] != "accepted":
        raise InvalidInput(f"cannot arrive at a case that is {inc['state']}",
                           code="case.illegal_transition")
    last = await conn.fetchval(
        "SELECT action FROM case_log WHERE incident_id = $1 ORDER BY seq DESC LIMIT 1",
        incident_id)
    if last == ARRIVE:
        raise InvalidInput("arrival is recorded already", code="case.illegal_transition")
    await store.append_log(conn, incident_id, ARRIVE, "accepted", "accepted", actor, now, None)
    view = await store.incident_view(conn, incident_id)
    await outbox.record(conn, IncidentUpdated(incident=view, action=ARRIVE))
    return view


@router.post("/api/field/cases/{incident_id}/actions")
async def act(request: Request, hub: HubDep, incident_id: RowId,
              body: ActionBody) -> dict[str, Any]:
    """One case step from the phone (idempotent by ``Idempotency-Key``)."""
    p = _phone(request)
    key = idem.key_of(request)
    inc = await _case_for(request, p, incident_id)
    actor = actor_of(request)
    if p.is_unit:
        if body.action not in PHONE_UNIT_ACTIONS:
            raise Forbidden(f"a unit's phone may not {body.action}", code="auth.forbidden")
        if body.action != ARRIVE:
            require_action_allowed(p, body.action, inc["assigned_unit"])
        elif inc["assigned_unit"] != p.unit_id:
            raise Forbidden("this incident is not assigned to your unit",
                            code="auth.not_your_incident")
    elif body.action not in GRID_WORKER_ACTIONS:
        raise Forbidden(f"a grid worker's phone may not {body.action}", code="auth.forbidden")
    elif inc["grid_id"] not in await _grids(request, p):
        raise Forbidden("this case is outside your grids", code="field.not_your_grid")
    stage = PHOTO_STAGE.get(body.action)
    if body.photos and stage is None:
        raise InvalidInput(f"{body.action} takes no photos", code="photo.not_expected")

    async def work() -> dict[str, Any]:
        now = clock.now()
        if body.action == ARRIVE:
            view = await _arrive(conn, incident_id, actor, now)
        else:
            # Lock first so the evidence entry and the step are consecutive in the log.
            await store.incident_row(conn, incident_id, lock=True)
            if stage is not None:
                await photos.attach(conn, incident_id, body.photos, stage, actor, now)
            view = await dispatch_service.apply_action_in(
                conn, incident_id, body.action, actor, body.reason, now)
        return {"incident": view, "action": body.action}

    fp = idem.fingerprint(request.url.path, body.model_dump())
    async with hub.pool.acquire() as conn, conn.transaction():
        answer, replayed = await idem.run_once(conn, p.name, key, fp, work)
    return {**answer, "replayed": replayed}


class ReportBody(BaseModel):
    category: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z_]+$")]
    description: Text = ""
    lon: Annotated[float, Field(ge=-180, le=180)]
    lat: Annotated[float, Field(ge=-90, le=90)]
    photos: PhotoList = []


@router.post("/api/field/reports", status_code=201)
async def report(request: Request, hub: HubDep, body: ReportBody) -> dict[str, Any]:
    """上报: a problem seen in the field becomes a case in state ``reported`` (an operator
    registers it, as hotline and Open311 reports), with its photos as "before" evidence."""
    p = _phone(request)
    key = idem.key_of(request)
    service = open311_services.SERVICES.get(body.category)
    if service is None:
        raise InvalidInput(f"unknown category {body.category}", code="field.bad_category")
    if (body.lon, body.lat) == (0.0, 0.0):
        raise InvalidInput("the position (0, 0) is a phone without a fix",
                           code="field.bad_position")
    actor = actor_of(request)

    async def work() -> dict[str, Any]:
        now = clock.now()
        view = await dispatch_service.open_incident_in(
            conn, now, category=service.code, qualification=service.qualification,
            priority=service.priority, title=f"{service.name}（{actor}上报）",
            description=body.description, lon=body.lon, lat=body.lat,
            source="grid_worker", reporter=actor)
        await photos.attach(conn, int(view["id"]), body.photos, "report", actor, now)
        return {"incident": await store.incident_view(conn, int(view["id"]))}

    fp = idem.fingerprint(request.url.path, body.model_dump())
    async with hub.pool.acquire() as conn, conn.transaction():
        answer, replayed = await idem.run_once(conn, p.name, key, fp, work)
    return {**answer, "replayed": replayed}


@router.post("/api/field/positions")
async def positions(request: Request, hub: HubDep) -> dict[str, Any]:
    """Patrol fixes from the browser's geolocation, in the GPS topic's format (one fix or
    an array, ``docs/MQTT.md``) and checked by the same decoder (``ingest/wire.py``);
    a refused body goes to the dead letters, like a bad MQTT message, and is answered 422."""
    p = _phone(request)
    raw = await request.body()
    now = clock.now()
    topic = topics.gps_topic(str(p.unit_id))
    decoded = wire.decode(topic, raw, now)
    if isinstance(decoded, wire.DecodeError):
        await hub.pool.execute(
            """INSERT INTO dead_letters (topic, payload, size, reason, detail)
               VALUES ($1, $2, $3, $4, $5)""",
            "https:/api/field/positions/" + str(p.unit_id), raw[:4096], len(raw),
            decoded.code, decoded.detail)
        raise InvalidInput(decoded.detail, code=f"position.{decoded.code}")
    fixes = decoded.positions
    async with hub.pool.acquire() as conn, conn.transaction():
        await conn.executemany(
            """INSERT INTO positions (ts, unit_id, lat, lon, speed, heading, accuracy,
                                      received_at)
               VALUES (to_timestamp($1), $2, $3, $4, $5, $6, $7, to_timestamp($8))
               ON CONFLICT DO NOTHING""",
            [(f.ts, f.unit_id, f.lat, f.lon, f.speed, f.heading, f.accuracy, now)
             for f in fixes])
        if fixes:
            last = max(fixes, key=lambda f: f.ts)
            # A late fix never overwrites a newer one (as the ingest writer does).
            await conn.execute(
                """UPDATE units SET lon = $2, lat = $3, speed = $4, heading = $5,
                       position_ts = to_timestamp($6)
                   WHERE id = $1 AND (position_ts IS NULL OR position_ts < to_timestamp($6))""",
                last.unit_id, last.lon, last.lat, last.speed, last.heading, last.ts)
    for f in sorted(fixes, key=lambda f: f.ts):
        hub.live.on_position(f.unit_id, f.ts, f.lon, f.lat, f.speed, f.heading)
    return {"stored": len(fixes)}


@router.get("/api/field/patrol")
async def patrol(request: Request, hub: HubDep) -> dict[str, Any]:
    """Today's patrol (the town's day so far): mileage and time on duty as the assessment
    counts them (``dispatch/assessment.patrol_stats`` over the unit's fixes)."""
    p = _phone(request)
    now = clock.now()
    tz = ZoneInfo(hub.settings.town_tz)
    start = datetime.fromtimestamp(now, tz).replace(hour=0, minute=0, second=0,
                                                    microsecond=0).timestamp()
    return await reports.unit_patrol(hub.pool, str(p.unit_id), now=now, since=start,
                                     until=now)
