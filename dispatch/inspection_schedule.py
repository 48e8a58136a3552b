"""The monthly double-random draw, run by a daily job (hub/jobs.py): per matter, announce
a draw (a commitment), and at a later run draw with it, once a calendar month.

The scheduler is an actor like any other (``SCHEDULER_ACTOR``): its commitments are public
from the moment they are made, a month ahead of the draw they seed
(dispatch/inspection_store.py says how a draw goes; docs/SECURITY.md why).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from core.clock import to_datetime
from dispatch import inspection_store as store
from dispatch import inspections, sla
from dispatch.sla_config import InForce

log = logging.getLogger("dispatch.inspection_schedule")

SCHEDULER_ACTOR = "system:scheduler"
# A scheduled (monthly) draw inspects this share of each matter's entities: the usual
# double-random sampling ratio is a few per cent a round, so over a year every entity
# has a fair chance and high-risk ones (weighted) a much higher one.
SCHEDULED_TARGET_SHARE = 0.05
SCHEDULED_MIN_TARGETS = 1



def _town_month(now: float) -> tuple[datetime, datetime]:
    """The town's calendar month containing ``now``, as UTC instants [start, end)."""
    cal = InForce.calendar
    first = sla.local_date(cal, now).replace(day=1)
    nxt = (first + timedelta(days=32)).replace(day=1)
    return to_datetime(sla.local_day_start(cal, first)), to_datetime(sla.local_day_start(cal, nxt))


async def _scheduled_targets(pool: asyncpg.Pool, matter: Mapping[str, Any]) -> int:
    size = await pool.fetchval(
        "SELECT count(*) FROM market_entities WHERE active "
        "AND (cardinality($1::text[]) = 0 OR industry = ANY($1::text[]))",
        list(matter["industries"]))
    return min(int(size), max(SCHEDULED_MIN_TARGETS,
                              math.ceil(SCHEDULED_TARGET_SHARE * int(size))))


async def _commit_next(pool: asyncpg.Pool, matter: Mapping[str, Any], now: float
                       ) -> int | None:
    """The scheduler's open commitment for a matter, made now if there is none."""
    open_id = await pool.fetchval(
        """SELECT c.id FROM inspection_commitments c WHERE c.matter_id = $1
           AND c.committed_by = $2 AND c.failed_at IS NULL AND NOT EXISTS (
               SELECT 1 FROM inspection_draws d WHERE d.commitment_id = c.id)
           ORDER BY c.id LIMIT 1""", matter["id"], SCHEDULER_ACTOR)
    if open_id is not None:
        return int(open_id)
    targets = await _scheduled_targets(pool, matter)
    if targets < 1:
        return None
    view = await store.commit(pool, matter_id=matter["id"], targets=targets, by=SCHEDULER_ACTOR,
                        now=now)
    return int(view["id"])


async def scheduled_draw(pool: asyncpg.Pool, now: float) -> list[dict[str, Any]]:
    """The monthly draw, run by a daily job: per matter, one draw a calendar month (China
    time) with the scheduler's commitment, which was made at an earlier run.

    A matter drawn this month is skipped. Otherwise, if the scheduler holds an open
    commitment for it, made before ``now``, it draws with it and at once commits for the
    next month (so that commitment is public a month ahead); with none (the first run),
    it only commits, and draws at the next run; after a failed attempt (which uses the
    commitment up) it commits again for the next run. Terms: risk-weighted, teams of two,
    ``SCHEDULED_TARGET_SHARE`` of the matter's entities (at least one) at commit time. A
    matter that cannot be drawn is logged and reported; the others go on. Returns one
    item per matter: ``{"matter_id", "draw_id"}``, ``{"matter_id", "committed"}``,
    ``{"matter_id", "skipped": "already_drawn"}`` or ``{"matter_id", "error": code}``.
    """
    month_start, month_end = _town_month(now)
    out: list[dict[str, Any]] = []
    for m in await store.list_matters(pool):
        done = await pool.fetchval(
            "SELECT id FROM inspection_draws WHERE matter_id = $1 AND drawn_by = $2 "
            "AND drawn_at >= $3 AND drawn_at < $4 LIMIT 1",
            m["id"], SCHEDULER_ACTOR, month_start, month_end)
        if done is not None:
            await _commit_next(pool, m, now)
            out.append({"matter_id": m["id"], "skipped": "already_drawn", "draw_id": done})
            continue
        ready = await pool.fetchval(
            """SELECT c.id FROM inspection_commitments c WHERE c.matter_id = $1
               AND c.committed_by = $2 AND c.committed_at < $3 AND c.failed_at IS NULL
               AND NOT EXISTS (
                   SELECT 1 FROM inspection_draws d WHERE d.commitment_id = c.id)
               ORDER BY c.id LIMIT 1""", m["id"], SCHEDULER_ACTOR, to_datetime(now))
        if ready is None:
            committed = await _commit_next(pool, m, now)
            if committed is None:
                log.warning("scheduled draw: matter %s has no entities", m["id"])
                out.append({"matter_id": m["id"], "error": "inspection.not_enough_entities"})
            else:
                out.append({"matter_id": m["id"], "committed": committed})
            continue
        try:
            view = await store.make_draw(pool, commitment_id=int(ready), now=now,
                                         drawn_by=SCHEDULER_ACTOR)
        except inspections.DrawError as e:
            # The attempt used the commitment up: announce the next try at once.
            log.warning("scheduled draw for matter %s failed: %s", m["id"], e.message)
            await _commit_next(pool, m, now)
            out.append({"matter_id": m["id"], "error": e.code})
            continue
        await _commit_next(pool, m, now)
        out.append({"matter_id": m["id"], "draw_id": view["id"]})
    return out
