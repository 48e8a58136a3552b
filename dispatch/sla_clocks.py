"""SLA clocks: deadlines kept in the database, and the timer that fires them.

``update_clocks`` runs inside every case-step transaction: it recomputes the deadlines of
the incident's stages from the pure ``dispatch.sla`` with the configuration in force
(``sla_config.InForce``: limits per category and priority, warn share, the town's working
calendar with its holidays and adjusted working days) and the case's pauses, and marks the
stage a step completes. The rows in ``sla_clocks`` are the record; ``incidents.sla`` is a
copy that travels with the incident's view to the console.

``SlaTimer`` keeps a heap of due times (warnings, breaches, accept deadlines of
assignments), rebuilt from the database when its dispatcher becomes leader and fed by the
events that change deadlines. Firing is a conditional UPDATE (``warned_at IS NULL``,
``breached_at IS NULL``), so each warning and breach is published exactly once, also
across restarts: a restart fires everything that fell due while the hub was down, once.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from core import clock, outbox
from core.clock import to_datetime
from core.db import Conn, Querier
from core.entities import INCIDENT_COLUMNS
from core.events import Envelope, SlaBreached, SlaWarned
from core.settings import Settings
from dispatch import sla, sla_settings, store, workflow
from dispatch.sla_config import InForce

log = logging.getLogger("dispatch.sla_clocks")

# The action that completes each stage.
STAGE_DONE_BY: dict[str, str] = {
    "register": "register",
    "dispatch": "dispatch",
    "accept": "accept",
    "arrive": "start_handling",  # arrival on scene is when handling starts
    "resolve": "close",
}
DONE_STAGE = {action: stage for stage, action in STAGE_DONE_BY.items()}
# States in which no clock runs any more.
STOPPED_STATES = frozenset({"cancelled", "closed", "evaluated", "archived"})

# The timer wakes at least this often even with nothing due, to pick up deadlines set by
# another process that it may not have heard of (belt and braces; events normally wake it).
TIMER_IDLE_S = 30.0
# A warning, breach or escalation whose transaction failed (a lost connection, a deadlock
# the database broke) is tried again this much later, not dropped: an operator must see
# it. Long enough not to spin on a database that is down, short next to an SLA's minutes.
TIMER_RETRY_S = 2.0

# The limits, warn share and working calendar in force (dispatch/sla_config.py), loaded
# from the settings' files and the supervisors' edits by dispatch/sla_settings.py.
SlaConfig = InForce


async def configure(db: Querier, settings: Settings) -> list[str]:
    """Put the settings' SLA files, the supervisors' edits, the town's zone and the time
    scale in force (at start; ``sla_settings.load_settings``); returns the warnings."""
    return await sla_settings.load_settings(db, settings)


def _ts(v: float | None) -> datetime | None:
    return None if v is None or math.isinf(v) else to_datetime(v)


def _sec(v: datetime | None) -> float | None:
    return None if v is None else v.timestamp()


@dataclass(frozen=True, slots=True)
class ClockValues:
    """A case's SLA clocks after one step, as written: ``summary`` is the incident's
    ``sla`` copy; the lists hold each stage's deadline, warning time and met time (in
    ``sla.STAGES`` order) for its ``sla_clocks`` row."""

    summary: dict[str, Any]
    deadlines: list[datetime | None]
    warn_ats: list[datetime | None]
    mets: list[datetime | None]
    started_at: datetime | None  # the clocks' start: the case's opening

    def next_rows(self, prev_rows: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """The ``sla_clocks`` rows by stage as these values leave them (the ``prev_rows``
        of a further step in the same transaction)."""
        out: dict[str, dict[str, Any]] = {}
        for k, stage in enumerate(sla.STAGES):
            prev = prev_rows.get(stage)
            out[stage] = {"met_at": self.mets[k],
                          "warned_at": prev["warned_at"] if prev else None,
                          "breached_at": prev["breached_at"] if prev else None}
        return out


def clock_values(inc: Mapping[str, Any], case: workflow.CaseState, action: str, now: float,
                 prev_rows: Mapping[str, Any]) -> ClockValues:
    """The case's stage deadlines after ``action`` (no I/O): the limits, warn share and
    calendar in force, the case's pauses, and the stage the step completes. ``prev_rows``:
    the case's ``sla_clocks`` rows by stage (``met_at``, ``warned_at``, ``breached_at``)."""
    opened = inc["opened_at"]
    opened_at = opened if isinstance(opened, float) else opened.timestamp()
    limits = InForce.table.limits(inc["category"], int(inc["priority"]))
    cal, share = InForce.calendar, InForce.warn_share
    due = sla.deadlines(limits, cal, opened_at, case.all_pauses())
    done_now = DONE_STAGE.get(action)
    stopped = case.state in STOPPED_STATES
    summary: dict[str, Any] = {}
    deadlines: list[datetime | None] = []
    warn_ats: list[datetime | None] = []
    mets: list[datetime | None] = []
    for stage in sla.STAGES:
        prev = prev_rows.get(stage)
        met = _sec(prev["met_at"]) if prev else None
        if met is None and stage == done_now:
            met = now
        deadline: float | None = due[stage]
        if stopped and met is None:
            deadline = None  # a cancelled or closed case has no running clocks
        assert deadline is None or isinstance(deadline, float)
        warn_at = (None if deadline is None or math.isinf(deadline)
                   else _warn_at(cal, share, opened_at, deadline,
                                 stage == "resolve" and limits.resolve_working))
        deadlines.append(_ts(deadline))
        warn_ats.append(_ts(warn_at))
        mets.append(_ts(met))
        summary[stage] = {
            "deadline": None if deadline is None or math.isinf(deadline) else deadline,
            "warn_at": warn_at,
            "met_at": met,
            "state": _state(deadline, opened_at, met, now, prev),
        }
    return ClockValues(summary, deadlines, warn_ats, mets, _ts(opened_at))


async def update_clocks(conn: Conn, inc: dict[str, Any], case: workflow.CaseState,
                        action: str, now: float,
                        prev_rows: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Recompute the incident's stage deadlines after ``action`` (``clock_values``) and
    write them; return the sla summary. ``inc`` (the incident's row) is refreshed from the
    row as written. ``prev_rows``: the case's ``sla_clocks`` rows by stage if the caller
    has read them in this transaction under the incident's lock (``store.step_read``);
    else they are read here."""
    rows = prev_rows if prev_rows is not None else {r["stage"]: r for r in await conn.fetch(
        "SELECT stage, met_at, warned_at, breached_at FROM sla_clocks WHERE incident_id = $1",
        inc["id"])}
    v = clock_values(inc, case, action, now, rows)
    # Every stage's row and the incident's copy in one statement: this runs in every case
    # step (one round trip here, not six). The row as written comes back into ``inc``,
    # so a caller that writes nothing more to the incident has its view without reading
    # it again.
    row = await conn.fetchrow(
        f"""WITH clocks AS (
             INSERT INTO sla_clocks (incident_id, stage, started_at, deadline, warn_at, met_at)
             SELECT $1, c.stage, $3, c.deadline, c.warn_at, c.met_at
             FROM unnest($2::text[], $4::timestamptz[], $5::timestamptz[], $6::timestamptz[])
                  AS c (stage, deadline, warn_at, met_at)
             ON CONFLICT (incident_id, stage) DO UPDATE SET deadline = excluded.deadline,
               warn_at = excluded.warn_at, met_at = excluded.met_at)
           UPDATE incidents i SET sla = $7 WHERE i.id = $1 RETURNING {INCIDENT_COLUMNS}""",
        inc["id"], list(sla.STAGES), v.started_at, v.deadlines, v.warn_ats, v.mets,
        v.summary)
    if row is not None:
        inc.update(row.items())
    return v.summary


def _warn_at(cal: sla.WorkCalendar, share: float, opened_at: float, deadline: float,
             working: bool) -> float:
    """When ``share`` of the allowed time has passed: in working time for a working-time
    limit (a 3-working-day limit opened on Friday warns on Tuesday or Wednesday, not over
    the weekend)."""
    if not working:
        return opened_at + share * (deadline - opened_at)
    allowed = sla.working_seconds_between(cal, opened_at, deadline)
    return sla.add_working_seconds(cal, opened_at, share * allowed)


def _state(deadline: float | None, started: float, met: float | None, now: float,
           prev: Any) -> str:
    if deadline is None:
        return "met" if met is not None else "stopped"
    if met is not None:
        return "met" if met <= deadline else "breached"
    if prev is not None and prev["breached_at"] is not None:
        return "breached"
    if prev is not None and prev["warned_at"] is not None:
        return "warning"
    return "ok"


async def fire(pool: asyncpg.Pool, incident_id: int, stage: str, kind: str) -> bool:
    """Publish a due warning or breach once. Returns whether this call fired it."""
    column, cond = (("warned_at", "warn_at") if kind == "warn" else ("breached_at", "deadline"))
    async with pool.acquire() as conn, conn.transaction():
        # The case's row lock first, as every case step and an SLA edit's retime take it
        # before the clocks (dispatch/sla_retime.py): the other order deadlocked with them.
        await conn.execute("SELECT 1 FROM incidents WHERE id = $1 FOR UPDATE", incident_id)
        row = await conn.fetchrow(
            f"""UPDATE sla_clocks SET {column} = now()
                WHERE incident_id = $1 AND stage = $2 AND met_at IS NULL
                  AND {column} IS NULL AND {cond} IS NOT NULL AND {cond} <= now()
                RETURNING stage""", incident_id, stage)
        if row is None:
            return False
        new_state = "warning" if kind == "warn" else "breached"
        await conn.execute(
            """UPDATE incidents SET sla = jsonb_set(sla, ARRAY[$2::text, 'state'],
                                                   to_jsonb($3::text)) WHERE id = $1""",
            incident_id, stage, new_state)
        view = await store.incident_view(conn, incident_id)
        event = (SlaWarned(incident=view, stage=stage) if kind == "warn"
                 else SlaBreached(incident=view, stage=stage))
        await outbox.record(conn, event)
    return True


# (due time, incident id, stage or assignment id, kind: warn | breach | escalate)
Due = tuple[float, int, str, str]


class SlaTimer:
    """An in-process heap of due times; ``escalate`` handles unaccepted assignments."""

    def __init__(self, pool: asyncpg.Pool,
                 escalate: Callable[[int], Awaitable[None]]) -> None:
        self.pool = pool
        self.escalate = escalate
        self.heap: list[Due] = []
        self._queued: set[Due] = set()  # every event repeats the deadlines: queue each once
        self.wake = asyncio.Event()
        self.fired = 0

    def push(self, item: Due) -> None:
        if item in self._queued:
            return
        self._queued.add(item)
        heapq.heappush(self.heap, item)
        if self.heap[0] is item:
            self.wake.set()

    async def rebuild(self) -> None:
        """Load every pending deadline from the database (at start or on leadership)."""
        self.heap = []
        self._queued = set()
        rows = await self.pool.fetch(
            """SELECT incident_id, stage, warn_at, deadline, warned_at FROM sla_clocks
               WHERE met_at IS NULL AND breached_at IS NULL AND deadline IS NOT NULL""")
        for r in rows:
            if r["warned_at"] is None and r["warn_at"] is not None:
                self.heap.append((r["warn_at"].timestamp(), r["incident_id"], r["stage"],
                                  "warn"))
            self.heap.append((r["deadline"].timestamp(), r["incident_id"], r["stage"],
                              "breach"))
        for a in await self.pool.fetch(
                "SELECT id, incident_id, accept_due FROM assignments "
                "WHERE status = 'active' AND accept_due IS NOT NULL"):
            self.heap.append((a["accept_due"].timestamp(), a["incident_id"], str(a["id"]),
                              "escalate"))
        heapq.heapify(self.heap)
        self._queued = set(self.heap)
        self.wake.set()

    def observe(self, env: Envelope) -> None:
        """Schedule the deadlines an event carries (incident views and assignments)."""
        inc = env.payload.get("incident")
        if isinstance(inc, dict):
            for stage, c in (inc.get("sla") or {}).items():
                if c.get("met_at") is None and c.get("deadline") is not None:
                    if c.get("warn_at") is not None and c.get("state") == "ok":
                        self.push((float(c["warn_at"]), int(inc["id"]), stage, "warn"))
                    if c.get("state") != "breached":
                        self.push((float(c["deadline"]), int(inc["id"]), stage, "breach"))
        a = env.payload.get("assignment")
        if isinstance(a, dict) and a.get("accept_due") and a.get("status") == "active":
            self.push((float(a["accept_due"]), int(a["incident_id"]), str(a["id"]),
                       "escalate"))

    async def run(self) -> None:
        while True:
            now = clock.now()
            while self.heap and self.heap[0][0] <= now:
                item = heapq.heappop(self.heap)
                self._queued.discard(item)
                _, incident_id, what, kind = item
                try:
                    if kind == "escalate":
                        await self.escalate(int(what))
                    elif await fire(self.pool, incident_id, what, kind):
                        self.fired += 1
                except Exception:
                    log.exception("SLA timer failed on %s %s of #%s; trying again in %gs",
                                  kind, what, incident_id, TIMER_RETRY_S)
                    self.push((clock.now() + TIMER_RETRY_S, incident_id, what, kind))
                now = clock.now()
            delay = min(TIMER_IDLE_S, self.heap[0][0] - now) if self.heap else TIMER_IDLE_S
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), max(0.0, delay))
            except TimeoutError:
                pass
