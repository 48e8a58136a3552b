"""Supervisors' edits of the SLA limits and the warn share, each one transaction that
changes its row and puts the result in force (``sla_retime.record_edit``: the change log
with the actor, the open cases' clocks recomputed, the events). The actor comes from
authentication (hub/sla_api.py), never from a request body.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from core.errors import InvalidInput, NotFound
from dispatch import sla
from dispatch.sla_config import (
    InForce,
    SlaConfigError,
    check_key,
    check_warn_share,
    limits_view,
    rows_of,
)
from dispatch.sla_retime import record_edit
from dispatch.sla_settings import WARN_SHARE_KEY, limits_of


def _invalid(e: SlaConfigError) -> InvalidInput:
    return InvalidInput(str(e), code="sla.invalid")


def _validated(category: str, priority: int, v: dict[str, Any]) -> sla.SlaLimits:
    try:
        check_key(category, priority)
        return sla.SlaLimits(v["register_s"], v["dispatch_s"], v["accept_s"], v["arrive_s"],
                             v["resolve_s"], resolve_working=v["resolve_working"])
    except SlaConfigError as e:
        raise _invalid(e) from e
    except ValueError as e:
        raise InvalidInput(str(e), code="sla.invalid") from e


async def set_limits(pool: asyncpg.Pool, category: str, priority: int, values: dict[str, Any],
                     actor: str) -> dict[str, Any]:
    """Replace the limits of (category or ``"*"``, priority); recorded with ``actor``.
    Raises ``InvalidInput`` (``sla.invalid``) for limits that do not make sense."""
    new = _validated(category, priority, values)
    target = f"limits:{category}:{priority}"
    async with pool.acquire() as conn, conn.transaction():
        before = _current(category, priority)
        await conn.execute(
            """INSERT INTO sla_limits (category, priority, register_s, dispatch_s, accept_s,
                                       arrive_s, resolve_s, resolve_working, updated_by)
               VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)
               ON CONFLICT (category, priority) DO UPDATE SET register_s = excluded.register_s,
                 dispatch_s = excluded.dispatch_s, accept_s = excluded.accept_s,
                 arrive_s = excluded.arrive_s, resolve_s = excluded.resolve_s,
                 resolve_working = excluded.resolve_working, updated_by = excluded.updated_by,
                 updated_at = now()""",
            category, priority, new.register_s, new.dispatch_s, new.accept_s, new.arrive_s,
            new.resolve_s, new.resolve_working, actor)
        await record_edit(conn, actor, target, before, limits_view(new))
    return {"category": category, "priority": priority, **limits_view(new),
            "origin": "edited", "updated_by": actor}


async def reset_limits(pool: asyncpg.Pool, category: str, priority: int, actor: str) -> None:
    """Drop the edit of (category, priority): the file's row (or "*") applies again."""
    try:
        check_key(category, priority)
    except SlaConfigError as e:
        raise _invalid(e) from e
    async with pool.acquire() as conn, conn.transaction():
        gone = await conn.fetchrow(
            "DELETE FROM sla_limits WHERE category = $1 AND priority = $2 RETURNING *",
            category, priority)
        if gone is None:
            raise NotFound(f"no edited limits for {category} p{priority}",
                           code="sla.not_edited")
        await record_edit(conn, actor, f"limits:{category}:{priority}",
                          limits_view(limits_of(gone)), None)


async def set_warn_share(pool: asyncpg.Pool, value: float, actor: str) -> dict[str, Any]:
    try:
        share = check_warn_share(value)
    except SlaConfigError as e:
        raise _invalid(e) from e
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            """INSERT INTO sla_options (key, value, updated_by) VALUES ($1, $2, $3)
               ON CONFLICT (key) DO UPDATE SET value = excluded.value,
                 updated_by = excluded.updated_by, updated_at = now()""",
            WARN_SHARE_KEY, share, actor)
        await record_edit(conn, actor, WARN_SHARE_KEY, InForce.warn_share, share)
    return {"warn_share": share, "updated_by": actor}


def _current(category: str, priority: int) -> dict[str, Any] | None:
    """The limits in force for exactly this row, ``None`` if the row is not in the table."""
    found = rows_of(InForce.base_table).get((category, priority))
    return limits_view(found) if found is not None else None
