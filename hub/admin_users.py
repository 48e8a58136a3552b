"""Users, roles and API tokens through the API (the ``/admin/users`` page uses it):
create a user, disable one, reset a password, issue and revoke API tokens, see who last
logged in when.

Passwords made here are random and shown once, in the answer (the admin hands them over;
the user changes nothing else here). Every change commits with its audit row, recorded
under the logged-in admin (``hub/access.actor_of``), through the same functions as the
command line (hub/auth.py). Routes are for admins.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from core.db import row_view
from core.errors import Conflict, InvalidInput, NotFound
from hub import auth
from hub.access import actor_of, principal_of
from hub.state import HubDep

router = APIRouter(prefix="/api/admin")

# Random passwords handed to a person: 18 bytes make 24 URL-safe characters (144 bits),
# above auth.MIN_PASSWORD_LEN and readable aloud in groups.
GENERATED_PASSWORD_BYTES = 18

Username = Annotated[str, Field(min_length=1, max_length=64, pattern=auth.USERNAME_RE)]


class UserNew(BaseModel):
    username: Username
    display_name: Annotated[str, Field(max_length=200)] = ""
    role: Annotated[str, Field(pattern="^(viewer|operator|supervisor|admin)$")]


class TokenNew(BaseModel):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    role: Annotated[str, Field(pattern="^(viewer|operator|supervisor|admin|unit)$")]
    unit_id: Annotated[str | None, Field(max_length=64)] = None


def _password() -> str:
    return secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)


@router.get("/users")
async def list_users(request: Request, hub: HubDep) -> list[dict[str, Any]]:
    """Every user with the time of their last successful login (from the audit trail)."""
    rows = await hub.pool.fetch(
        """SELECT u.id, u.username, u.display_name, u.role, u.disabled, u.created_at,
                  (SELECT max(e.at) FROM security_events e
                   WHERE e.kind = 'login.succeeded' AND e.target = u.username) AS last_login,
                  (SELECT count(*) FROM sessions s WHERE s.user_id = u.id
                   AND s.expires_at > now()) AS sessions
           FROM users u ORDER BY u.username""")
    return [row_view(r) for r in rows]


@router.post("/users", status_code=201)
async def create_user(request: Request, hub: HubDep,
                      body: UserNew, response: Response) -> dict[str, Any]:
    response.headers["Cache-Control"] = "no-store"  # the answer carries a password
    password = _password()
    async with hub.pool.acquire() as conn, conn.transaction():
        if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM users WHERE username = $1)",
                               body.username):
            raise Conflict(f"a user {body.username!r} exists already", code="auth.user_exists")
        row = await auth.create_user(conn, body.username, password, body.role,
                                     display_name=body.display_name, actor=actor_of(request))
    return {**row_view(row), "password": password}


@router.post("/users/{username}/disable")
async def disable_user(request: Request, hub: HubDep, username: str) -> dict[str, Any]:
    """Disable a user and end their sessions; an admin cannot lock themself out."""
    p = principal_of(request)
    if p is not None and p.name == username:
        raise InvalidInput("you cannot disable your own login", code="auth.self")
    async with hub.pool.acquire() as conn, conn.transaction():
        await auth.disable_user(conn, username, actor=actor_of(request))
    return {"username": username, "disabled": True}


@router.post("/users/{username}/password")
async def reset_password(request: Request, hub: HubDep, username: str, response: Response
                         ) -> dict[str, Any]:
    """A new random password (shown once); the user's sessions end, the account is enabled."""
    response.headers["Cache-Control"] = "no-store"
    password = _password()
    async with hub.pool.acquire() as conn, conn.transaction():
        user = await conn.fetchrow("SELECT id, role, display_name FROM users "
                                   "WHERE username = $1 FOR UPDATE", username)
        if user is None:
            raise NotFound(f"user {username} not found", code="auth.user_not_found")
        row = await auth.create_user(conn, username, password, user["role"],
                                     display_name=user["display_name"], update=True,
                                     actor=actor_of(request))
        await conn.execute("DELETE FROM sessions WHERE user_id = $1", user["id"])
    return {**row_view(row), "password": password}


@router.get("/tokens")
async def list_tokens(request: Request, hub: HubDep) -> list[dict[str, Any]]:
    """Every API token without its secret (only its hash is stored)."""
    rows = await hub.pool.fetch(
        """SELECT id, name, role, unit_id, created_by, created_at, revoked_at, last_used_at
           FROM api_tokens ORDER BY revoked_at IS NOT NULL, name, id""")
    return [row_view(r) for r in rows]


@router.post("/tokens", status_code=201)
async def issue_token(request: Request, hub: HubDep,
                      body: TokenNew, response: Response) -> dict[str, Any]:
    """Issue a token; its secret is in this answer only."""
    response.headers["Cache-Control"] = "no-store"
    async with hub.pool.acquire() as conn, conn.transaction():
        if body.unit_id is not None and not await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM units WHERE id = $1)", body.unit_id):
            raise InvalidInput(f"unknown unit {body.unit_id!r}", code="unit.not_found")
        token = await auth.create_token(conn, body.name, body.role, unit_id=body.unit_id,
                                        created_by=actor_of(request))
    return {"name": body.name, "role": body.role, "unit_id": body.unit_id, "token": token}


@router.delete("/tokens/{name}")
async def revoke_tokens(request: Request, hub: HubDep, name: str) -> dict[str, Any]:
    async with hub.pool.acquire() as conn, conn.transaction():
        n = await auth.revoke_tokens(conn, name, actor=actor_of(request))
        if n == 0:  # raised inside: the transaction (and its audit row) rolls back
            raise NotFound(f"no live token named {name!r}", code="auth.token_not_found")
    return {"name": name, "revoked": n}
