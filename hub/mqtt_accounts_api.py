"""MQTT accounts through the API: provision a device or unit (its password is in the answer,
once), rotate a password, revoke an account, list accounts (never a secret).

Every change is committed, then the broker's files are rendered and the broker reloaded
(``hub/mqtt_accounts.sync``), so it takes effect without restarting the broker: a new
account can connect as soon as the answer arrives, a revoked or rotated one is disconnected.
Where the hub cannot reach the broker's files, the answer's ``broker`` part says so.
Routes are for the ``admin`` role.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from core.errors import HubError
from hub import audit
from hub import mqtt_accounts as accounts
from hub.access import actor_of
from hub.state import HubDep, get_hub

log = logging.getLogger("hub.mqtt_accounts")

router = APIRouter(prefix="/api/mqtt/accounts")

Principal = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


class ProvisionBody(BaseModel):
    principal: Principal
    kind: Annotated[str, Field(pattern="^(device|unit)$")]


async def _sync(request: Request, conn: Any) -> dict[str, Any]:
    """Render and reload; a failure here is reported, not raised: the change is committed
    (and a new password would be lost with an error answer)."""
    hub = get_hub(request)
    try:
        result = await accounts.sync(conn, accounts.BrokerFiles.from_settings(hub.settings))
    except (HubError, OSError) as e:
        log.error("MQTT broker files not updated: %s", e)
        return {"files_written": False, "reloaded": False,
                "detail": f"broker files not updated: {e}"}
    return result.as_dict()


async def _audit(request: Request, conn: Any, kind: str, principal: str,
                 detail: dict[str, Any]) -> None:
    """The change and its audit row commit together; the actor is the caller's login."""
    await audit.record(conn, kind, actor_of(request), target=principal,
                       client_ip=request.client.host if request.client else None,
                       detail=detail)


def _answer(creds: accounts.Credentials, broker: dict[str, Any]) -> dict[str, Any]:
    return {"principal": creds.principal, "kind": creds.kind, "username": creds.principal,
            "password": creds.password, "broker": broker}


@router.get("")
async def list_accounts(request: Request, hub: HubDep) -> list[dict[str, Any]]:
    return await accounts.list_accounts(hub.pool)


@router.post("", status_code=201)
async def provision(request: Request, hub: HubDep,
                    body: ProvisionBody, response: Response) -> dict[str, Any]:
    response.headers["Cache-Control"] = "no-store"  # the answer carries a password
    async with hub.pool.acquire() as conn:
        async with conn.transaction():
            creds = await accounts.provision(conn, body.principal, body.kind)
            await _audit(request, conn, "mqtt_account.provisioned", body.principal,
                         {"kind": body.kind})
        return _answer(creds, await _sync(request, conn))


@router.post("/{principal}/rotate")
async def rotate(request: Request, hub: HubDep,
                 principal: str, response: Response) -> dict[str, Any]:
    response.headers["Cache-Control"] = "no-store"
    async with hub.pool.acquire() as conn:
        async with conn.transaction():
            creds = await accounts.rotate(conn, principal)
            await _audit(request, conn, "mqtt_account.rotated", principal, {})
        return _answer(creds, await _sync(request, conn))


@router.delete("/{principal}")
async def revoke(request: Request, hub: HubDep, principal: str) -> dict[str, Any]:
    async with hub.pool.acquire() as conn:
        async with conn.transaction():
            await accounts.revoke(conn, principal)
            await _audit(request, conn, "mqtt_account.revoked", principal, {})
        return {"principal": principal, "revoked": True, "broker": await _sync(request, conn)}
