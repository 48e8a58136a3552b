"""A device's SenML name mapping through the API (admin role): which metric a SenML record
that names the device alone (by unit) or through an LwM2M path stores under.

- ``GET /api/devices/{device_id}/senml-map``: the device's overrides and the defaults that
  apply without one (``ingest/senml_names.py``: metric by unit, by IPSO/LwM2M object).
- ``PUT /api/devices/{device_id}/senml-map`` ``{"map": {"Cel": "temperature_c",
  "3303/1/5700": "water_temp_c"}}``: replaces the overrides (an empty map removes them).
  Keys are SenML units or LwM2M paths ``object/instance/resource``; values are metric ids.
  Bad input is ``422 senml_map.invalid`` (nothing changed); an unknown device ``404
  device.not_found``. The change and its audit row (``device.senml_map_changed``, actor =
  the logged-in principal) commit together; this process's ingest applies it at once,
  other ingest processes within their registry reload interval.

docs/MQTT.md ("Device and metric from the name") is the reference for the mapping.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, Field

from core.errors import InvalidInput, NotFound
from hub import audit
from hub.access import actor_of
from hub.state import HubDep, get_hub
from ingest import senml_names

router = APIRouter(prefix="/api/devices")

# A device id as the registry has them (a NUL or a 10 kB id never reaches a query).
DeviceId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


class MapBody(BaseModel):
    map: dict[str, str] = Field(max_length=senml_names.MAX_OVERRIDES)


def _hub(request: Request) -> Any:
    return get_hub(request)


def defaults() -> dict[str, Any]:
    """What applies without an override (for the device admin page)."""
    return {"units": dict(senml_names.UNIT_METRICS),
            "lwm2m_objects": {str(k): v for k, v in senml_names.LWM2M_OBJECTS.items()},
            "lwm2m_resource": senml_names.LWM2M_SENSOR_VALUE}


@router.get("/{device_id}/senml-map")
async def get_map(request: Request, hub: HubDep, device_id: DeviceId) -> dict[str, Any]:
    row = await hub.pool.fetchrow(
        "SELECT senml_map FROM devices WHERE id = $1", device_id)
    if row is None:
        raise NotFound(f"no device {device_id}", code="device.not_found")
    return {"device_id": device_id, "map": row["senml_map"], "defaults": defaults()}


@router.put("/{device_id}/senml-map")
async def put_map(request: Request, hub: HubDep, device_id: DeviceId,
                  body: MapBody) -> dict[str, Any]:
    problems = [p for k, m in body.map.items()
                if (p := senml_names.check_override(k, m)) is not None]
    if problems:
        raise InvalidInput("; ".join(problems), code="senml_map.invalid")
    actor = actor_of(request)
    async with hub.pool.acquire() as conn, conn.transaction():
        old = await conn.fetchval(
            "SELECT senml_map FROM devices WHERE id = $1 FOR UPDATE", device_id)
        if old is None:
            raise NotFound(f"no device {device_id}", code="device.not_found")
        await conn.execute("UPDATE devices SET senml_map = $2 WHERE id = $1",
                           device_id, body.map)
        await audit.record(conn, "device.senml_map_changed", actor, target=device_id,
                           client_ip=request.client.host if request.client else None,
                           detail={"before": old, "after": body.map})
    if hub.ingest is not None and hub.ingest.pipeline is not None:
        await hub.ingest.reload()
    return {"device_id": device_id, "map": body.map}
