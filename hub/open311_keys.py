"""API keys of Open311 client applications: issued and revoked by an admin, one per
application, stored as SHA-256 only, shown once. A report's channel is its key's
application name (``open311:<app_name>`` as the case's reporter).

Routes (admin): ``POST /api/open311/keys`` ``{"app_name": ...}`` issues, ``GET`` lists
(never a key), ``DELETE /api/open311/keys/{key_id}`` revokes; who did it is the logged-in
principal.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from core.db import Querier
from core.errors import Conflict, Forbidden, NotFound
from hub import auth
from hub.access import principal_of
from hub.state import get_hub

router = APIRouter(prefix="/api/open311/keys")

KEY_PREFIX = "o311_"


@dataclass(frozen=True)
class ClientApp:
    key_id: int
    app_name: str


class IssueBody(BaseModel):
    app_name: Annotated[str, Field(min_length=1, max_length=48, pattern=r"^[A-Za-z0-9._-]+$")]


async def issue(conn: Querier, app_name: str, by: str) -> tuple[int, str]:
    key = KEY_PREFIX + secrets.token_urlsafe(24)
    try:
        kid = await conn.fetchval(
            "INSERT INTO open311_keys (app_name, key_hash, created_by) VALUES ($1, $2, $3) "
            "RETURNING id", app_name, auth.digest(key), by)
    except asyncpg.UniqueViolationError:
        raise Conflict(f"application {app_name} already has a key; revoke it first or use "
                       "another name", code="open311.key_exists") from None
    return int(kid), key


async def revoke(conn: Querier, key_id: int, by: str) -> None:
    done = await conn.fetchval(
        "UPDATE open311_keys SET revoked_at = now(), revoked_by = $2 "
        "WHERE id = $1 AND revoked_at IS NULL RETURNING id", key_id, by)
    if done is None:
        raise NotFound(f"no live key {key_id}", code="open311.key_not_found")


async def check(conn: Querier, key: str) -> ClientApp | None:
    """The application a key belongs to, or None (unknown or revoked)."""
    if not key.startswith(KEY_PREFIX) or len(key) > 100:
        return None
    row = await conn.fetchrow(
        "UPDATE open311_keys SET last_used_at = now() WHERE key_hash = $1 "
        "AND revoked_at IS NULL RETURNING id, app_name", auth.digest(key))
    return ClientApp(int(row["id"]), row["app_name"]) if row else None


def _who(request: Request) -> str:
    p = principal_of(request)
    if p is None:
        raise Forbidden("not authenticated", code="auth.required")
    return p.name


@router.post("", status_code=201)
async def issue_key(request: Request, body: IssueBody, response: Response) -> dict[str, Any]:
    response.headers["Cache-Control"] = "no-store"  # the answer carries the key
    kid, key = await issue(get_hub(request).pool, body.app_name, _who(request))
    return {"key_id": kid, "app_name": body.app_name, "api_key": key}


@router.get("")
async def list_keys(request: Request) -> list[dict[str, Any]]:
    rows = await get_hub(request).pool.fetch(
        "SELECT id, app_name, created_at, created_by, revoked_at, revoked_by, last_used_at "
        "FROM open311_keys ORDER BY id")
    return [{"key_id": r["id"], "app_name": r["app_name"],
             **{k: (r[k].isoformat() if hasattr(r[k], "isoformat") else r[k])
                for k in ("created_at", "created_by", "revoked_at", "revoked_by",
                          "last_used_at")}} for r in rows]


@router.delete("/{key_id}")
async def revoke_key(request: Request, key_id: int) -> dict[str, Any]:
    await revoke(get_hub(request).pool, key_id, _who(request))
    return {"key_id": key_id, "revoked": True}
