"""Citizens' contact data, kept apart from cases (PIPL: only what the report needs, no
longer than it is needed, seen only by those who act on it).

A report's name, phone, e-mail and device id go to the ``contacts`` table under an opaque
random id; the case, its public and viewer views and the hash-chained case log never hold
them. Operators and above read a contact through ``GET /api/contacts/{id}`` or
``GET /api/incidents/{id}/contact`` (each read is logged with who read it). The scheduled
job ``contacts.retention`` (hub/jobs.py) erases contacts past ``erase_after``
(``Settings.retention_contacts_days`` after collection): the fields are blanked and
``erased_at`` stamped; the row stays as a tombstone so what refers to it keeps working, and
the case log, which never held the data, still verifies.
"""

from __future__ import annotations

import logging
import re
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request

from core.db import Querier
from core.errors import InvalidInput, NotFound
from hub.access import principal_of
from hub.state import get_hub

log = logging.getLogger("hub.contacts")

router = APIRouter()

FIELDS = ("first_name", "last_name", "phone", "email", "device_id")
# Longest value kept per field: a name, a phone number with extension, an RFC 5321 address,
# a mobile device identifier. Longer is not contact data.
MAX_LEN = {"first_name": 64, "last_name": 64, "phone": 32, "email": 254, "device_id": 128}
_PHONE = re.compile(r"^\+?[0-9][0-9 ()\-]{2,30}$")
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
# Contacts erased per statement: bounds one job run's transaction.
ERASE_BATCH = 1000


def pick(form: dict[str, str]) -> dict[str, str]:
    """The contact fields of a report, checked; raises InvalidInput naming the bad one."""
    out: dict[str, str] = {}
    for f in FIELDS:
        v = (form.get(f) or "").strip()
        if not v:
            continue
        if len(v) > MAX_LEN[f] or any(ord(c) < 32 for c in v):
            raise InvalidInput(f"{f} is too long or has control characters",
                               code="contact.invalid")
        if f == "phone" and not _PHONE.match(v):
            raise InvalidInput("phone must be digits (with +, spaces, dashes)",
                               code="contact.invalid")
        if f == "email" and not _EMAIL.match(v):
            raise InvalidInput("email is not an e-mail address", code="contact.invalid")
        out[f] = v
    return out


def new_id() -> str:
    return "c_" + secrets.token_hex(12)


async def store(conn: Querier, fields: dict[str, str], now: datetime,
                retention_days: int) -> str | None:
    """Keep a contact (None when the report gave none) and return its opaque id."""
    if not fields:
        return None
    cid = new_id()
    await conn.execute(
        """INSERT INTO contacts (id, first_name, last_name, phone, email, device_id,
                                 collected_at, erase_after)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
        cid, *(fields.get(f) for f in FIELDS), now, now + timedelta(days=retention_days))
    return cid


async def erase_due(pool: Querier, now: datetime) -> int:
    """Erase every contact whose retention ended; returns how many."""
    total = 0
    while True:
        n = await pool.fetchval(
            """WITH due AS (SELECT id FROM contacts WHERE erased_at IS NULL
                              AND erase_after <= $1 ORDER BY erase_after LIMIT $2)
               , done AS (UPDATE contacts c SET first_name = NULL, last_name = NULL,
                              phone = NULL, email = NULL, device_id = NULL, erased_at = $1
                          FROM due WHERE c.id = due.id RETURNING 1)
               SELECT count(*) FROM done""", now, ERASE_BATCH)
        total += int(n)
        if n < ERASE_BATCH:
            break
    if total:
        log.info("erased %d contacts past their retention", total)
    return total


def _view(row: Any) -> dict[str, Any]:
    return {"contact_id": row["id"], **{f: row[f] for f in FIELDS},
            "collected_at": row["collected_at"].astimezone(UTC).isoformat(),
            "erase_after": row["erase_after"].astimezone(UTC).isoformat(),
            "erased": row["erased_at"] is not None}


def _logged_read(request: Request, what: str) -> None:
    p = principal_of(request)
    log.info("contact %s read by %s", what, p.name if p else "?")


@router.get("/api/contacts/{contact_id}")
async def get_contact(request: Request, contact_id: str) -> dict[str, Any]:
    row = await get_hub(request).pool.fetchrow(
        "SELECT * FROM contacts WHERE id = $1", contact_id[:64])
    if row is None:
        raise NotFound(f"no contact {contact_id[:64]}", code="contact.not_found")
    _logged_read(request, contact_id)
    return _view(row)


@router.get("/api/incidents/{incident_id}/contact")
async def incident_contact(request: Request, incident_id: int) -> dict[str, Any]:
    row = await get_hub(request).pool.fetchrow(
        """SELECT c.* FROM open311_requests o JOIN contacts c ON c.id = o.contact_id
           WHERE o.incident_id = $1""", incident_id)
    if row is None:
        raise NotFound(f"incident {incident_id} has no contact", code="contact.not_found")
    _logged_read(request, row["id"])
    return _view(row)
