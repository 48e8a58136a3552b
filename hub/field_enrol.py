"""Enrolling phones for the field app, and revoking them.

An admin creates a one-time code for a unit's phone (role ``unit``) or a grid worker's
phone (role ``grid_worker``, with the level-2 grids it works in: by default its unit's home
grid) and shows it as a QR code; the phone posts the code to ``/api/field/enrol`` within
``Settings.field_enrol_ttl_s`` and gets its own API token, bound to the unit (the actor of
everything it records). A code works once: the trade is one conditional UPDATE. A lost
phone is revoked by name: its token stops at once. Codes and tokens are stored only as
SHA-256; every step goes to the security audit trail.
"""

from __future__ import annotations

import secrets
import time
from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from core.db import fetch_one, row_view
from core.errors import Forbidden, InvalidInput, NotFound
from hub import audit, auth
from hub.access import actor_of
from hub.qr_codes import qr_svg
from hub.rate_limit import Buckets
from hub.state import HubDep

router = APIRouter()

# Enrolment codes: 10 characters of an alphabet without look-alikes (no 0/O, 1/I/L), about
# 50 bits: typed by hand when a camera cannot read the screen, and with the code's short
# life and the rate limit below, out of reach of guessing.
CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
CODE_LENGTH = 10
# Failed trades of codes, per client address: a person mistypes a few times; after 5
# failures a guesser gets 6 tries a minute. (Good codes are not counted: a depot enrols a
# whole squad's phones from one address.)
ENROL_RATE_PER_S = 0.1
ENROL_BURST = 5.0
BLOCKED_MAX = 10_000
UNIT_TYPES_BY_ROLE = {"unit": ("squad", "police"), "grid_worker": ("grid_worker",)}

_buckets = Buckets(ENROL_RATE_PER_S, ENROL_BURST)
_blocked_until: dict[str, float] = {}


def new_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def normalise_code(text: str) -> str:
    """What a person typed (spaces, dashes, lower case) as the code itself."""
    return "".join(c for c in text.upper() if c.isalnum())


class EnrolmentBody(BaseModel):
    role: Annotated[str, Field(pattern="^(unit|grid_worker)$")]
    unit_id: Annotated[str, Field(min_length=1, max_length=64)]
    grids: Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]],
                     Field(max_length=50)] = []


@router.post("/api/field/enrolments", status_code=201)
async def create_enrolment(request: Request, hub: HubDep, body: EnrolmentBody) -> dict[str, Any]:
    """A one-time code (and its QR code) for a phone of ``unit_id``."""
    unit = await hub.pool.fetchrow("SELECT id, type, home_grid FROM units WHERE id = $1",
                                   body.unit_id)
    if unit is None:
        raise NotFound(f"no unit {body.unit_id}", code="unit.not_found")
    if unit["type"] not in UNIT_TYPES_BY_ROLE[body.role]:
        raise InvalidInput(f"unit {body.unit_id} is a {unit['type']}; a {body.role} phone "
                           f"needs a unit of type {' or '.join(UNIT_TYPES_BY_ROLE[body.role])}",
                           code="field.wrong_unit_type")
    grids: list[str] = []
    if body.role == "grid_worker":
        grids = sorted(set(body.grids)) or [unit["home_grid"]]
        known = await hub.pool.fetch(
            "SELECT id FROM grids WHERE level = 2 AND id = ANY($1::text[])", grids)
        missing = set(grids) - {r["id"] for r in known}
        if missing:
            raise InvalidInput(f"unknown level-2 grids: {', '.join(sorted(missing))}",
                               code="field.unknown_grid")
    elif body.grids:
        raise InvalidInput("grids are for grid workers' phones", code="field.grids_not_allowed")
    code = new_code()
    actor = actor_of(request)
    ttl = hub.settings.field_enrol_ttl_s
    row = await fetch_one(
        hub.pool, """INSERT INTO field_enrolments (code_hash, role, unit_id, grids, created_by,
                                         expires_at)
           VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))
           RETURNING id, extract(epoch FROM expires_at)::float8 AS expires_at""",
        auth.digest(code), body.role, body.unit_id, grids, actor, float(ttl))
    await audit.record(hub.pool, "field.code_created", actor, target=body.unit_id,
                       detail={"role": body.role, "grids": grids, "enrolment": row["id"]})
    url = str(request.base_url).rstrip("/") + "/field#enrol=" + code
    return {"code": code, "enrolment_id": row["id"], "role": body.role,
            "unit_id": body.unit_id, "grids": grids, "expires_at": row["expires_at"],
            "url": url, "qr_svg": qr_svg(url)}


class EnrolBody(BaseModel):
    code: Annotated[str, Field(min_length=1, max_length=64)]


@router.post("/api/field/enrol")
async def enrol(request: Request, hub: HubDep, body: EnrolBody) -> dict[str, Any]:
    """Trade a code for the phone's own token (the only time the token is seen)."""
    client = request.client.host if request.client else "?"
    now = time.monotonic()
    if _blocked_until.get(client, 0.0) > now:
        raise Forbidden(f"too many failed enrolments; try again in "
                        f"{_blocked_until[client] - now:.0f} s", code="field.enrol_throttled")
    code = normalise_code(body.code)
    async with hub.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            """UPDATE field_enrolments SET used_at = now()
               WHERE code_hash = $1 AND used_at IS NULL AND expires_at > now()
               RETURNING id, role, unit_id, grids, created_by""", auth.digest(code))
        if row is None:
            wait = _buckets.take(client, now)
            if wait > 0:
                if len(_blocked_until) >= BLOCKED_MAX:
                    _blocked_until.clear()
                _blocked_until[client] = now + wait
            await audit.record(conn, "field.enrol_failed", "anonymous", client_ip=client)
            raise InvalidInput("this code is unknown, used or expired; ask for a new one",
                               code="field.bad_code")
        name = f"phone:{row['unit_id']}:{secrets.token_hex(3)}"
        token = await auth.create_token(conn, name, row["role"], unit_id=row["unit_id"],
                                        created_by=row["created_by"])
        await conn.execute("UPDATE field_enrolments SET phone_name = $2 WHERE id = $1",
                           row["id"], name)
        await conn.execute(
            """INSERT INTO field_phones (name, role, unit_id, grids, enrolment)
               VALUES ($1, $2, $3, $4, $5)""",
            name, row["role"], row["unit_id"], row["grids"], row["id"])
        await audit.record(conn, "field.enrolled", name, target=row["unit_id"],
                           client_ip=client, detail={"enrolment": row["id"]})
        unit_name = await conn.fetchval("SELECT name FROM units WHERE id = $1", row["unit_id"])
    return {"token": token, "name": name, "role": row["role"], "unit_id": row["unit_id"],
            "unit_name": unit_name, "grids": list(row["grids"])}


@router.get("/api/field/phones")
async def list_phones(request: Request, hub: HubDep) -> list[dict[str, Any]]:
    rows = await hub.pool.fetch(
        "SELECT name, role, unit_id, grids, enrolled_at, revoked_at, revoked_by "
        "FROM field_phones ORDER BY enrolled_at DESC")
    return [row_view(r) for r in rows]


@router.delete("/api/field/phones/{name}")
async def revoke_phone(request: Request, hub: HubDep, name: str) -> dict[str, Any]:
    """Revoke a (lost) phone: its token stops working at once."""
    actor = actor_of(request)
    async with hub.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            """UPDATE field_phones SET revoked_at = now(), revoked_by = $2
               WHERE name = $1 AND revoked_at IS NULL RETURNING unit_id""", name, actor)
        if row is None:
            raise NotFound(f"no enrolled phone {name} (or revoked already)",
                           code="field.phone_not_found")
        await auth.revoke_tokens(conn, name, actor=actor)
        await audit.record(conn, "field.revoked", actor, target=name,
                           detail={"unit_id": row["unit_id"]})
    return {"name": name, "revoked": True}
