"""Device administration through the API (the ``/admin/devices`` page uses it): register,
edit or move, decommission; provision or rotate the device's MQTT credentials (shown once,
with a QR code for the installer); its health: last readings, clock skew, ingest lag and
dead letters.

Every change is one transaction: the device row, its audit row (the actor is the logged-in
principal, ``hub/access.actor_of``) and a ``device.changed`` event that open consoles apply
to their map without a reload. The ingest registry of this process reloads at once; other
ingest processes within their reload interval (ingest/service.py). Routes are for admins.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from core import outbox
from core.db import Conn, row_view
from core.errors import Conflict, HubError, InvalidInput, NotFound
from core.events import DeviceChanged
from hub import audit
from hub import mqtt_accounts as accounts
from hub.access import actor_of
from hub.qr_codes import qr_svg
from hub.state import HubDep, get_hub

log = logging.getLogger("hub.admin_devices")

router = APIRouter(prefix="/api/admin/devices")

# An MQTT username and a topic segment at once (hub/mqtt_files.py, core/topics.py).
DeviceId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
Metric = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
# A device reporting less often than daily is not watched by the no-data rules in any
# useful way; faster than every second floods the ingest for one sensor.
MIN_INTERVAL_S, MAX_INTERVAL_S = 1, 86_400
# Dead letters shown on a device's health card: the latest few say what goes wrong.
HEALTH_DEAD_LETTERS = 20
DEVICE_COLUMNS = ("id, kind, model, name, lon, lat, grid_id, metrics, interval_s, created_at, "
                  "revoked_at, revoked_at IS NULL AS active")


class DeviceEdit(BaseModel):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    model: Annotated[str, Field(min_length=1, max_length=64)]
    grid_id: Annotated[str, Field(min_length=1, max_length=64)]
    lon: Annotated[float, Field(ge=-180, le=180)]
    lat: Annotated[float, Field(ge=-90, le=90)]
    metrics: Annotated[list[Metric], Field(max_length=64)] = Field(default_factory=list)
    interval_s: Annotated[int, Field(ge=MIN_INTERVAL_S, le=MAX_INTERVAL_S)] = 60


class DeviceNew(DeviceEdit):
    id: DeviceId
    kind: Annotated[str, Field(pattern="^(traffic|safety|environment)$")]


def _ip(request: Request) -> str | None:
    return request.client.host if request.client else None


async def _check_grid(conn: Conn, grid_id: str) -> None:
    if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM grids WHERE id = $1)", grid_id):
        raise InvalidInput(f"unknown grid {grid_id!r}", code="grid.unknown")


async def _view(conn: Conn, device_id: str) -> dict[str, Any]:
    row = await conn.fetchrow(f"SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1", device_id)
    if row is None:
        raise NotFound(f"device {device_id} not found", code="device.not_found")
    return row_view(row)


async def _reload(request: Request) -> None:
    hub = get_hub(request)
    if hub.ingest is not None and hub.ingest.pipeline is not None:
        await hub.ingest.reload()


@router.get("")
async def list_devices(request: Request, hub: HubDep) -> list[dict[str, Any]]:
    """Every device, decommissioned ones too, with its MQTT account's state."""
    rows = await hub.pool.fetch(
        """SELECT d.id, d.kind, d.model, d.name, d.lon, d.lat, d.grid_id, d.metrics,
                   d.interval_s, d.created_at, d.revoked_at, d.revoked_at IS NULL AS active,
                   a.principal IS NOT NULL AND a.revoked_at IS NULL AS mqtt_active,
                   extract(epoch FROM coalesce(a.rotated_at, a.created_at))::float8
                       AS mqtt_since
            FROM devices d LEFT JOIN mqtt_accounts a ON a.principal = d.id
            ORDER BY d.id""")
    return [row_view(r) for r in rows]


@router.post("", status_code=201)
async def register(request: Request, hub: HubDep, body: DeviceNew) -> dict[str, Any]:
    actor = actor_of(request)
    async with hub.pool.acquire() as conn, conn.transaction():
        await _check_grid(conn, body.grid_id)
        added = await conn.fetchval(
            """INSERT INTO devices (id, kind, model, name, lon, lat, grid_id, metrics,
                                    interval_s)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING
               RETURNING id""",
            body.id, body.kind, body.model, body.name, body.lon, body.lat, body.grid_id,
            body.metrics, body.interval_s)
        if added is None:
            raise Conflict(f"a device {body.id!r} exists already", code="device.exists")
        view = await _view(conn, body.id)
        await audit.record(conn, "device.registered", actor, target=body.id,
                           client_ip=_ip(request), detail={"kind": body.kind,
                                                           "grid_id": body.grid_id})
        await outbox.record(conn, DeviceChanged(device=view))
    await _reload(request)
    return view


@router.put("/{device_id}")
async def edit(request: Request, hub: HubDep, device_id: str, body: DeviceEdit) -> dict[str, Any]:
    """Edit a device's name, model, grid, position (a move), metrics or interval."""
    actor = actor_of(request)
    async with hub.pool.acquire() as conn, conn.transaction():
        before = await _view(conn, device_id)
        if not before["active"]:
            raise Conflict(f"device {device_id} is decommissioned",
                           code="device.decommissioned")
        await _check_grid(conn, body.grid_id)
        await conn.execute(
            """UPDATE devices SET name = $2, model = $3, grid_id = $4, lon = $5, lat = $6,
                   metrics = $7, interval_s = $8 WHERE id = $1""",
            device_id, body.name, body.model, body.grid_id, body.lon, body.lat, body.metrics,
            body.interval_s)
        view = await _view(conn, device_id)
        changed = {k: view[k] for k in DeviceEdit.model_fields if view[k] != before[k]}
        await audit.record(conn, "device.changed", actor, target=device_id,
                           client_ip=_ip(request), detail=changed)
        await outbox.record(conn, DeviceChanged(device=view))
    await _reload(request)
    return view


async def _sync_broker(request: Request, conn: Any) -> dict[str, Any]:
    """Render the broker's files and reload it; a failure is reported, not raised (the
    change is committed, and a new password must still reach the admin)."""
    try:
        result = await accounts.sync(conn, accounts.BrokerFiles.from_settings(
            get_hub(request).settings))
    except (HubError, OSError) as e:
        log.error("MQTT broker files not updated: %s", e)
        return {"files_written": False, "reloaded": False,
                "detail": f"broker files not updated: {e}"}
    return result.as_dict()


@router.delete("/{device_id}")
async def decommission(request: Request, hub: HubDep, device_id: str) -> dict[str, Any]:
    """Take a device out of service: its readings are refused from now on (dead letters
    ``unknown_device``), its MQTT account is revoked, its history is kept."""
    actor = actor_of(request)
    async with hub.pool.acquire() as conn:
        async with conn.transaction():
            view = await _view(conn, device_id)
            if not view["active"]:
                raise Conflict(f"device {device_id} is decommissioned already",
                               code="device.decommissioned")
            await conn.execute("UPDATE devices SET revoked_at = now() WHERE id = $1",
                               device_id)
            await conn.execute("UPDATE mqtt_accounts SET revoked_at = now() "
                               "WHERE principal = $1 AND revoked_at IS NULL", device_id)
            view = await _view(conn, device_id)
            await audit.record(conn, "device.decommissioned", actor, target=device_id,
                               client_ip=_ip(request))
            await outbox.record(conn, DeviceChanged(device=view))
        broker = await _sync_broker(request, conn)
    await _reload(request)
    return {**view, "broker": broker}


def broker_address(request: Request) -> tuple[str, int]:
    """The broker as an installer's device reaches it: the host this page was served
    from (the hub and its broker share the public address) and the broker's port."""
    port = urlsplit(get_hub(request).settings.mqtt_url).port or 1883
    return request.url.hostname or "localhost", port


@router.post("/{device_id}/credentials")
async def credentials(request: Request, hub: HubDep,
                      device_id: str, response: Response) -> dict[str, Any]:
    """Provision the device's MQTT account, or rotate its password when it has one. The
    password is in this answer only (never stored in clear, never shown again), with a QR
    code of ``mqtt://user:password@host:port`` for the installer's phone."""
    response.headers["Cache-Control"] = "no-store"
    actor = actor_of(request)
    async with hub.pool.acquire() as conn:
        async with conn.transaction():
            view = await _view(conn, device_id)
            if not view["active"]:
                raise Conflict(f"device {device_id} is decommissioned",
                               code="device.decommissioned")
            active = await conn.fetchval(
                "SELECT revoked_at IS NULL FROM mqtt_accounts WHERE principal = $1",
                device_id)
            if active:
                creds = await accounts.rotate(conn, device_id)
                kind = "mqtt_account.rotated"
            else:
                creds = await accounts.provision(conn, device_id, "device")
                kind = "mqtt_account.provisioned"
            await audit.record(conn, kind, actor, target=device_id, client_ip=_ip(request),
                               detail={"kind": "device", "via": "admin_devices"})
        broker = await _sync_broker(request, conn)
    host, port = broker_address(request)
    uri = f"mqtt://{quote(creds.principal, safe='')}:{quote(creds.password, safe='')}@{host}:{port}"
    return {"device_id": device_id, "username": creds.principal, "password": creds.password,
            "host": host, "port": port, "uri": uri, "qr_svg": qr_svg(uri),
            "rotated": kind == "mqtt_account.rotated", "broker": broker}


@router.get("/{device_id}/health")
async def health(request: Request, hub: HubDep, device_id: str) -> dict[str, Any]:
    """Last reading per metric with its ingest lag (received minus device time), the
    device's clock skew, and its latest dead letters (by the topics it publishes to)."""
    pool = hub.pool
    async with pool.acquire() as conn:
        device = await _view(conn, device_id)
        latest = await conn.fetch(
            """SELECT metric, ts, value, received_at,
                      extract(epoch FROM received_at - ts)::float8 AS lag_s
               FROM telemetry_latest WHERE device_id = $1 ORDER BY metric""", device_id)
        clock = await conn.fetchrow(
            "SELECT skew_s, last_skew_s, samples, late, flagged, updated_at "
            "FROM device_clocks WHERE device_id = $1", device_id)
        # The device's own topics: v1/devices/<id>/... (core/topics.py).
        dead = await conn.fetch(
            """SELECT id, received_at, topic, reason, detail, size FROM dead_letters
               WHERE strpos(topic, '/devices/' || $1 || '/') > 0 ORDER BY id DESC LIMIT $2""",
            device_id, HEALTH_DEAD_LETTERS)
    return {"device": device, "latest": [row_view(r) for r in latest],
            "clock": row_view(clock) if clock else None,
            "dead_letters": [row_view(r) for r in dead]}
