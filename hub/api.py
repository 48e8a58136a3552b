"""Thin REST routes: validate, call a service, return its view. No decisions here."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from core import clock, outbox
from core.db import row_view
from core.entities import ALARM_COLUMNS, INCIDENT_COLUMNS, UNIT_COLUMNS
from core.errors import InvalidInput, NotFound
from dispatch import decisions as dispatch_decisions
from dispatch import service as dispatch_service
from hub.access import actor_of, principal_of, require_action_allowed, require_own_incident
from hub.params import RowId, Seq, Since, Until
from hub.state import HubDep
from ingest import alarms

router = APIRouter(prefix="/api")

# Raw readings are for short ranges; longer ones come from the rollups.
RAW_SERIES_MAX_S = 24 * 3600

Reason = Annotated[str, Field(max_length=500)]


@router.get("/health")
async def health(request: Request, hub: HubDep) -> dict[str, Any]:
    mqtt_ok = hub.ingest is None or (hub.ingest.mqtt is not None
                                      and hub.ingest.mqtt.subscribed.is_set())
    return {
        "status": "ok" if hub.ready else "starting",
        "mqtt": "subscribed" if mqtt_ok else "disconnected",
        "roles": sorted(hub.roles),
        "seq": hub.live.seq,
        "clients": hub.feed.clients,
        "ingest": hub.ingest.stats() if hub.ingest and hub.ingest.pipeline else None,
        # Events' time from their transaction's start to this process's bus (the
        # console benchmark quotes it next to the clients' figure).
        "event_feed": hub.event_feed.stats() if hub.event_feed is not None else None,
        # Only a process that has led dispatch has decided anything: this one, or its
        # dispatch process (whose decisions it is told of, hub/dispatch_child.py).
        "dispatch_decisions": (hub.dispatcher.stats.summary() if hub.dispatcher is not None
                               else hub.dispatch_child.stats.summary()
                               if hub.dispatch_child is not None else None),
        "dispatch_process": (hub.dispatch_child.status() if hub.dispatch_child is not None
                             else None),
        "kpis": hub.kpis,
    }


@router.get("/ingest/stats")
async def ingest_stats(request: Request, hub: HubDep, reset: bool = False) -> dict[str, Any]:
    """Ingest counters, dead letters by reason, and publish-to-commit latency percentiles
    (device time to commit) over the last million readings; ``reset`` empties the window."""
    if hub.ingest is None or hub.ingest.pipeline is None or hub.ingest.pipeline.writer is None:
        raise NotFound("no ingest role in this process", code="ingest.not_running")
    stats: dict[str, Any] = hub.ingest.stats()
    writer_stats = hub.ingest.pipeline.writer.stats
    stats["latency"] = writer_stats.latency_percentiles()
    if reset:
        writer_stats.latencies.clear()
    return stats


@router.get("/kpis")
async def kpis(request: Request, hub: HubDep) -> dict[str, Any]:
    """The console's KPI tiles (refreshed by a job every few seconds)."""
    return dict(hub.kpis)


@router.get("/town")
async def town(request: Request, hub: HubDep) -> dict[str, Any]:
    """The town's grids (both levels) and roads as GeoJSON, for maps with no tile server."""
    cached = hub.town_cache
    if cached is not None:
        return cached
    meta = await hub.pool.fetchval("SELECT value FROM town WHERE key = 'meta'") or {}
    grids = await hub.pool.fetch(
        "SELECT id, level, parent_id, name, zone, geometry, center_lon, center_lat "
        "FROM grids ORDER BY level, id")
    roads = await hub.pool.fetch("SELECT id, name, class, speed_kmh, geometry FROM roads")
    doc = {
        "meta": meta,
        "grids": {"type": "FeatureCollection", "features": [
            {"type": "Feature", "geometry": g["geometry"],
             "properties": {"id": g["id"], "level": g["level"], "parent": g["parent_id"],
                            "name": g["name"], "zone": g["zone"],
                            "center": [g["center_lon"], g["center_lat"]]}} for g in grids]},
        "roads": {"type": "FeatureCollection", "features": [
            {"type": "Feature", "geometry": r["geometry"],
             "properties": {"id": r["id"], "name": r["name"], "class": r["class"],
                            "speed_kmh": r["speed_kmh"]}} for r in roads]},
    }
    if grids:
        hub.town_cache = doc
    return doc


@router.get("/snapshot")
async def snapshot(request: Request, hub: HubDep) -> dict[str, Any]:
    """The live picture the websocket feed starts from."""
    return hub.live.snapshot()


@router.get("/events")
async def events(request: Request, hub: HubDep, after: Seq = 0,
                 limit: Annotated[int, Query(ge=1, le=5000)] = 500) -> dict[str, Any]:
    envs = await outbox.events_after(hub.pool, after, limit)
    return {"events": [{"seq": e.seq, "ts": e.ts, "kind": e.kind, "data": e.payload}
                       for e in envs]}


@router.get("/devices")
async def devices(request: Request, hub: HubDep) -> list[dict[str, Any]]:
    rows = await hub.pool.fetch(
        "SELECT id, kind, model, name, lon, lat, grid_id, metrics, interval_s FROM devices "
        "WHERE revoked_at IS NULL ORDER BY id")
    return [row_view(r) for r in rows]


@router.get("/devices/{device_id}/latest")
async def device_latest(request: Request, hub: HubDep, device_id: str) -> dict[str, Any]:
    rows = await hub.pool.fetch(
        "SELECT metric, ts, value, received_at FROM telemetry_latest WHERE device_id = $1",
        device_id)
    if not rows:
        raise NotFound(f"no readings for device {device_id}", code="device.no_data")
    return {"device_id": device_id, "metrics": {r["metric"]: row_view(r) for r in rows}}


SERIES_TABLES = {"1m": "telemetry_1m", "1h": "telemetry_1h"}


@router.get("/devices/{device_id}/series")
async def device_series(
    request: Request, hub: HubDep, device_id: str,
    metric: Annotated[str, Query(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")],
    since: Since,
    until: Until = None,
    resolution: Annotated[str, Query(pattern="^(raw|1m|1h)$")] = "1m",
) -> dict[str, Any]:
    """A metric over a time range, from the rollups (min/max/avg/count per bucket) or raw."""
    pool = hub.pool
    until = until if until is not None else clock.now()
    if until <= since:
        raise InvalidInput("until must be after since", code="series.bad_range")
    if resolution == "raw":
        if until - since > RAW_SERIES_MAX_S:
            raise InvalidInput("raw series are limited to 24 hours; use 1m or 1h",
                               code="series.range_too_long")
        rows = await pool.fetch(
            "SELECT ts, value, late FROM telemetry WHERE device_id = $1 AND metric = $2 "
            "AND ts >= to_timestamp($3) AND ts < to_timestamp($4) ORDER BY ts",
            device_id, metric, since, until)
    else:
        rows = await pool.fetch(
            f"SELECT bucket, min, max, avg, count FROM {SERIES_TABLES[resolution]} "
            "WHERE device_id = $1 AND metric = $2 AND bucket >= to_timestamp($3) "
            "AND bucket < to_timestamp($4) ORDER BY bucket", device_id, metric, since, until)
    return {"device_id": device_id, "metric": metric, "resolution": resolution,
            "points": [row_view(r) for r in rows]}


@router.get("/devices/clocks")
async def device_clocks(request: Request, hub: HubDep,
                        flagged: bool = False) -> list[dict[str, Any]]:
    """Per-device clock skew (received minus device time) and late readings."""
    rows = await hub.pool.fetch(
        "SELECT device_id, skew_s, last_skew_s, samples, late, flagged, updated_at "
        "FROM device_clocks WHERE NOT $1 OR flagged ORDER BY abs(skew_s) DESC", flagged)
    return [row_view(r) for r in rows]


@router.get("/units")
async def units(request: Request, hub: HubDep) -> list[dict[str, Any]]:
    rows = await hub.pool.fetch(f"SELECT {UNIT_COLUMNS} FROM units u ORDER BY u.id")
    return [row_view(r) for r in rows]


# A track longer than this is thinned evenly: playback needs shape, not every fix.
TRACK_MAX_POINTS = 20_000


@router.get("/units/{unit_id}/track")
async def unit_track(request: Request, hub: HubDep, unit_id: str,
                     since: Since, until: Until = None) -> dict[str, Any]:
    """GPS fixes of a unit over a time range, for track playback (轨迹回放)."""
    until = until if until is not None else clock.now()
    if until <= since or until - since > 31 * 86400:
        raise InvalidInput("range must be positive and at most 31 days",
                           code="track.bad_range")
    pool = hub.pool
    n = await pool.fetchval(
        "SELECT count(*) FROM positions WHERE unit_id = $1 AND ts >= to_timestamp($2) "
        "AND ts < to_timestamp($3)", unit_id, since, until)
    step = max(1, -(-int(n) // TRACK_MAX_POINTS))
    rows = await pool.fetch(
        """SELECT ts, lon, lat, speed, heading, accuracy FROM (
               SELECT *, row_number() OVER (ORDER BY ts) AS k FROM positions
               WHERE unit_id = $1 AND ts >= to_timestamp($2) AND ts < to_timestamp($3)) p
           WHERE (k - 1) % $4 = 0 ORDER BY ts""", unit_id, since, until, step)
    return {"unit_id": unit_id, "thinned_every": step, "points": [row_view(r) for r in rows]}


# ---------------------------------------------------------------- alarms
@router.get("/alarms")
async def list_alarms(request: Request, hub: HubDep,
                      state: Annotated[str, Query(pattern="^(open|all)$")]
                      = "open", limit: Annotated[int, Query(ge=1, le=1000)] = 200
                      ) -> list[dict[str, Any]]:
    where = "WHERE a.state <> 'cleared'" if state == "open" else ""
    rows = await hub.pool.fetch(
        f"SELECT {ALARM_COLUMNS} FROM alarms a {where} ORDER BY a.id DESC LIMIT $1",
        limit)
    return [row_view(r) for r in rows]


# Who acknowledged, cleared, acted or overrode is the caller's login (hub/access.actor_of);
# request bodies carry no actor, and a stray "actor"/"by" field is ignored.
class ClearBody(BaseModel):
    reason: Annotated[str, Field(min_length=1, max_length=500)]


@router.post("/alarms/{alarm_id}/ack")
async def ack_alarm(request: Request, hub: HubDep, alarm_id: int) -> dict[str, Any]:
    return await alarms.acknowledge(hub.pool, alarm_id, actor_of(request))


@router.post("/alarms/{alarm_id}/clear")
async def clear_alarm(request: Request, hub: HubDep,
                      alarm_id: int, body: ClearBody) -> dict[str, Any]:
    return await alarms.clear_by_operator(hub.pool, alarm_id, actor_of(request),
                                          body.reason)


# ---------------------------------------------------------------- incidents
@router.get("/incidents")
async def list_incidents(request: Request, hub: HubDep, state: Annotated[str, Query(
        pattern="^(open|all)$")] = "open", limit: Annotated[int, Query(ge=1, le=1000)] = 200
        ) -> list[dict[str, Any]]:
    """Cases, newest first; a unit token sees only the cases assigned to its unit."""
    p = principal_of(request)
    unit = p.unit_id if p is not None and p.is_unit else None
    where = "i.state NOT IN ('archived', 'cancelled')" if state == "open" else "true"
    rows = await hub.pool.fetch(
        f"SELECT {INCIDENT_COLUMNS} FROM incidents i WHERE {where} "
        "AND ($2::text IS NULL OR i.assigned_unit = $2) ORDER BY i.id DESC LIMIT $1",
        limit, unit)
    return [row_view(r) for r in rows]


@router.get("/incidents/{incident_id}")
async def get_incident(request: Request, hub: HubDep, incident_id: RowId) -> dict[str, Any]:
    detail = await dispatch_service.incident_detail(hub.pool, incident_id)
    require_own_incident(principal_of(request), detail["incident"].get("assigned_unit"))
    return detail


class IncidentBody(BaseModel):
    category: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z_]+$")]
    qualification: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z_]+$")]
    priority: Annotated[int, Field(ge=1, le=4)] = 3
    title: Annotated[str, Field(min_length=1, max_length=200)]
    description: Reason = ""
    lon: Annotated[float, Field(ge=-180, le=180)]
    lat: Annotated[float, Field(ge=-90, le=90)]
    source: Annotated[str, Field(pattern="^(operator|grid_worker|hotline)$")] = "operator"


@router.post("/incidents", status_code=201)
async def create_incident(request: Request, hub: HubDep, body: IncidentBody) -> dict[str, Any]:
    """Report a case; the reporter recorded is the caller (an operator taking a hotline call
    is who reports it; a unit's field report is signed by the unit)."""
    p = principal_of(request)
    source, reporter = body.source, actor_of(request)
    if p is not None and p.is_unit:
        source = "grid_worker"
    return await dispatch_service.open_incident(
        hub.pool, category=body.category, qualification=body.qualification,
        priority=body.priority, title=body.title, description=body.description,
        lon=body.lon, lat=body.lat, source=source, reporter=reporter)


class ActionBody(BaseModel):
    action: Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[a-z_]+$")]
    reason: Reason | None = None


@router.post("/incidents/{incident_id}/actions")
async def incident_action(request: Request, hub: HubDep, incident_id: RowId, body: ActionBody
                          ) -> dict[str, Any]:
    """One case step. A unit token may post only its field actions (hub/access.py
    UNIT_ACTIONS), only on a case assigned to its unit, and acts under its unit id."""
    p = principal_of(request)
    assigned = await hub.pool.fetchrow(
        "SELECT assigned_unit FROM incidents WHERE id = $1", incident_id)
    if assigned is None:
        raise NotFound(f"incident {incident_id} not found", code="incident.not_found")
    # Checked just before the service locks the case: a reassignment in between is caught
    # by the workflow itself (the case is no longer in a state this unit's action fits).
    require_action_allowed(p, body.action, assigned["assigned_unit"])
    return await dispatch_service.apply_action(
        hub.pool, incident_id, body.action, actor_of(request), body.reason)


class OverrideBody(BaseModel):
    unit_id: Annotated[str, Field(min_length=1, max_length=64)]
    reason_code: Annotated[str, Field(min_length=1, max_length=32)]
    note: Reason = ""


@router.get("/dispatch/override-reasons")
async def override_reasons() -> dict[str, str]:
    """The reason codes an operator picks from when overriding the engine."""
    return dispatch_service.OVERRIDE_REASONS


@router.post("/incidents/{incident_id}/assign")
async def override(request: Request, hub: HubDep,
                   incident_id: RowId, body: OverrideBody) -> dict[str, Any]:
    """Send a unit of the operator's choice instead of the plan's pick, with a reason. The
    same decision core, policy and road graph on every node; the actor recorded is the
    logged-in principal."""
    return await dispatch_decisions.override(
        hub.pool, incident_id, body.unit_id, actor_of(request), body.reason_code, body.note,
        hub.road_graph, hub.dispatch_policy)


class RedirectBody(BaseModel):
    reason_code: Annotated[str, Field(min_length=1, max_length=32)]
    note: Reason = ""
    # Send the unit to this case; without it the unit is only taken off its current one.
    to_incident: RowId | None = None


@router.post("/units/{unit_id}/redirect")
async def redirect_unit(request: Request, hub: HubDep, unit_id: str, body: RedirectBody
                        ) -> dict[str, Any]:
    """Take a dispatched or en-route unit off its case, with a reason code; the case goes
    back to planning (never to this unit again) and the unit, if ``to_incident`` is given,
    goes there."""
    return await dispatch_decisions.redirect(
        hub.pool, unit_id, actor_of(request), body.reason_code, body.note, body.to_incident,
        hub.road_graph, hub.dispatch_policy)



@router.get("/supervisor/alerts")
async def supervisor_alerts(request: Request, hub: HubDep, open_only: bool = True,
                            limit: Annotated[int, Query(ge=1, le=500)] = 100
                            ) -> list[dict[str, Any]]:
    rows = await hub.pool.fetch(
        "SELECT * FROM supervisor_alerts WHERE NOT $1 OR acked_at IS NULL "
        "ORDER BY id DESC LIMIT $2", open_only, limit)
    return [row_view(r) for r in rows]


@router.post("/supervisor/alerts/{alert_id}/ack")
async def ack_supervisor_alert(request: Request, hub: HubDep, alert_id: int) -> dict[str, Any]:
    row = await hub.pool.fetchrow(
        "UPDATE supervisor_alerts SET acked_by = $2, acked_at = now() WHERE id = $1 "
        "AND acked_at IS NULL RETURNING *", alert_id, actor_of(request))
    if row is None:
        raise NotFound(f"open alert {alert_id} not found", code="alert.not_found")
    return row_view(row)


@router.get("/incidents/{incident_id}/log/verify")
async def verify_log(request: Request, hub: HubDep, incident_id: RowId) -> dict[str, Any]:
    return await dispatch_service.verify_case_log(hub.pool, incident_id)


# ---------------------------------------------------------------- dead letters
@router.get("/dead-letters")
async def dead_letters(request: Request, hub: HubDep,
                       reason: Annotated[str | None, Query(max_length=64)]
                       = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100
                       ) -> dict[str, Any]:
    pool = hub.pool
    counts = await pool.fetch(
        "SELECT reason, count(*) AS n FROM dead_letters GROUP BY reason ORDER BY reason")
    rows = await pool.fetch(
        "SELECT id, received_at, topic, payload, size, reason, detail FROM dead_letters "
        "WHERE $1::text IS NULL OR reason = $1 ORDER BY id DESC LIMIT $2", reason, limit)
    items = []
    for r in rows:
        v = row_view(r)
        v["payload"] = bytes(r["payload"]).decode("utf-8", errors="replace")
        items.append(v)
    return {"counts": {r["reason"]: r["n"] for r in counts}, "items": items}
