"""The security audit trail: one append-only table (``security_events``), written where the
thing happens and read by supervisors and admins (``GET /api/audit``, the ``/audit`` page).

Contract
--------
- ``record(conn, kind, actor, ...)`` appends one row in the caller's transaction (when the
  caller has one), so an account change and its audit row commit together.
- ``kind`` is one of ``KINDS`` (``ValueError`` otherwise: a typo must not create a kind no
  filter knows). ``actor`` is the authenticated principal who did it, ``cli:<os user>``
  for the command line, or, for a login attempt, the username tried.
- ``query`` filters by kind (or a kind prefix such as ``login.``), actor, target and time,
  newest first, bounded by ``limit``.
- Passwords, tokens and session ids are never written here; ``detail`` holds only the
  facts an auditor needs (role, unit, reason for a refusal, retry delay).
"""

from __future__ import annotations

import getpass
from typing import Any

from core.db import Querier, row_view

KINDS: frozenset[str] = frozenset({
    "login.succeeded",      # a session was created
    "login.failed",         # wrong username or password
    "login.throttled",      # refused before the password was looked at (too many failures)
    "session.ended",        # logout
    "user.created",
    "user.changed",         # password reset, role or display name changed, re-enabled
    "user.disabled",
    "token.created",
    "token.revoked",
    "mqtt_account.provisioned",
    "mqtt_account.rotated",
    "mqtt_account.revoked",
    "mqtt_account.set",     # a gateway/fleet/service account's password set by the set-up
    "rule.changed",
    "rule.disabled",
    # the administration pages (hub/admin_*.py)
    "device.registered",
    "device.changed",       # edited or moved
    "device.decommissioned",
    "unit.created",
    "unit.changed",         # name, qualifications, members, home grid
    "unit.duty",            # put on or taken off duty by hand, with a handover note
    "town.imported",        # grids and roads replaced from GeoJSON
    "device.senml_map_changed",  # a device's SenML name mapping (hub/senml_map_api.py)
    "field.code_created",   # an enrolment code for a phone (hub/field_enrol.py)
    "field.enrolled",       # a phone traded its code for a token
    "field.enrol_failed",   # an unknown, used or expired code was tried
    "field.revoked",        # a phone was revoked
})

# A page of the trail; a longer look-back is a narrower filter, not a bigger page.
QUERY_MAX = 1000


def cli_actor() -> str:
    """Who runs the command line (it has no login: the OS account is the principal)."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


async def record(conn: Querier, kind: str, actor: str, *, target: str | None = None,
                 client_ip: str | None = None, detail: dict[str, Any] | None = None) -> None:
    """Append one security event (see the module doc)."""
    if kind not in KINDS:
        raise ValueError(f"unknown security event kind {kind!r}")
    await conn.execute(
        """INSERT INTO security_events (kind, actor, target, client_ip, detail)
           VALUES ($1, $2, $3, $4, $5)""",
        kind, actor or "?", target, client_ip, detail or {})


async def query(conn: Querier, *, kind: str | None = None, actor: str | None = None,
                target: str | None = None, since: float | None = None,
                until: float | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """Security events, newest first. ``kind`` ending in ``.`` matches a family
    (``login.``); otherwise it is exact."""
    kind_exact = kind if kind and not kind.endswith(".") else None
    kind_prefix = kind if kind and kind.endswith(".") else None
    rows = await conn.fetch(
        """SELECT id, at, kind, actor, target, client_ip, detail FROM security_events
           WHERE ($1::text IS NULL OR kind = $1)
             AND ($2::text IS NULL OR starts_with(kind, $2))
             AND ($3::text IS NULL OR actor = $3)
             AND ($4::text IS NULL OR target = $4)
             AND ($5::float8 IS NULL OR at >= to_timestamp($5))
             AND ($6::float8 IS NULL OR at < to_timestamp($6))
           ORDER BY id DESC LIMIT $7""",
        kind_exact, kind_prefix, actor, target, since, until, min(limit, QUERY_MAX))
    return [row_view(r) for r in rows]
