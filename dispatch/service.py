"""Dispatch I/O shell: opens incidents, runs the engine, records assignments and steps.

Every change happens in one transaction with its case-log entries and its event
(core.outbox), after taking the incident's row lock, so concurrent callers (two hub
processes, an operator and the dispatcher) cannot dispatch one case twice; the unique
index ``assignments_one_live`` backs that up in the database.

``Dispatcher`` is the dispatch role: it leads while it holds a PostgreSQL advisory lock,
reacts to alarms that should open incidents and to incidents waiting for a unit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

import asyncpg

from core import outbox
from core.bus import Bus
from core.db import Conn, connect, row_view
from core.entities import ALARM_COLUMNS
from core.errors import InvalidInput, NotFound
from core.events import AlarmAttached, Envelope, IncidentOpened, IncidentUpdated, UnitAssigned
from core.settings import Settings
from dispatch import engine, store, workflow
from dispatch.geo import RoadGraph
from dispatch.model import DispatchPolicy

log = logging.getLogger("dispatch.service")

# One dispatcher leads at a time (any fixed number, distinct from other advisory keys).
LEADER_LOCK_KEY = 4_710_003
LEADER_RETRY_S = 2.0
# Alarms of one category in one grid within this window join the open incident instead of
# opening another: one gas leak seen by three detectors is one case.
ATTACH_WINDOW_S = 30 * 60
SYSTEM_ACTOR = "system:dispatch"

# Unit status after each workflow action that moves the unit (other actions leave it be).
UNIT_STATUS_AFTER = {
    "accept": "en_route",
    "start_handling": "on_scene",
    "give_feedback": "returning",
    "close": "available",
    "decline": "available",
    "cancel": "available",
    "shelve": "available",
}


async def _grid_at(conn: Conn, lon: float, lat: float) -> str | None:
    """The level-2 grid containing the point (bounding box, then the polygon in Python)."""
    rows = await conn.fetch(
        """SELECT id, geometry FROM grids WHERE level = 2 AND $1 BETWEEN min_lon AND max_lon
           AND $2 BETWEEN min_lat AND max_lat""", lon, lat)
    for r in rows:
        if _inside(lon, lat, r["geometry"]["coordinates"][0]):
            return str(r["id"])
    return str(rows[0]["id"]) if rows else None


def _inside(x: float, y: float, ring: list[list[float]]) -> bool:
    inside = False
    n = len(ring)
    for i in range(n):
        x1, y1 = ring[i]
        x2, y2 = ring[(i + 1) % n]
        if (y1 > y) != (y2 > y) and x < (x2 - x1) * (y - y1) / (y2 - y1) + x1:
            inside = not inside
    return inside


async def _attach(conn: Conn, alarm_id: int, incident_id: int) -> None:
    row = await conn.fetchrow(
        f"UPDATE alarms a SET incident_id = $2 WHERE id = $1 RETURNING {ALARM_COLUMNS}",
        alarm_id, incident_id)
    await outbox.record(conn, AlarmAttached(alarm=row_view(row)))


async def _step(conn: Conn, inc: dict[str, Any], action: str, actor: str,
                now: float, reason: str | None) -> workflow.CaseState:
    """Apply a workflow action to a locked incident row and log it (no event yet)."""
    before = await store.case_state(conn, inc["id"])
    after = workflow.apply(before, action, actor, now, reason)
    await conn.execute(
        """UPDATE incidents SET state = $2, rework_count = $3, extension_count = $4,
                                handler = $5, updated_at = $6 WHERE id = $1""",
        inc["id"], after.state, after.rework_count, after.extension_count, after.handler,
        store.ts(now))
    await store.append_log(conn, inc["id"], action, before.state, after.state, actor, now,
                           reason)
    inc.update(state=after.state, rework_count=after.rework_count,
               extension_count=after.extension_count, handler=after.handler)
    return after


async def open_incident(pool: asyncpg.Pool, *, category: str, qualification: str,
                        priority: int, title: str, description: str, lon: float, lat: float,
                        source: str, reporter: str, alarm_id: int | None = None,
                        grid_id: str | None = None) -> dict[str, Any]:
    """Report a case; alarm and operator reports are registered at once (already verified),
    grid-worker and hotline reports wait for an operator to register them."""
    now = time.time()
    async with pool.acquire() as conn, conn.transaction():
        grid = grid_id or await _grid_at(conn, lon, lat)
        iid = await conn.fetchval(
            """INSERT INTO incidents (category, priority, qualification, title, description,
                                      lon, lat, grid_id, source, reporter, state, opened_at,
                                      updated_at)
               VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,'reported',$11,$11) RETURNING id""",
            category, priority, qualification, title, description, lon, lat, grid, source,
            reporter, store.ts(now))
        await store.append_log(conn, iid, "report", None, "reported", reporter, now, None)
        inc = await store.incident_row(conn, iid, lock=True)
        assert inc is not None
        if source in ("alarm", "operator"):
            await _step(conn, inc, "register", reporter if source == "operator"
                        else SYSTEM_ACTOR, now, None)
        view = await store.incident_view(conn, iid)
        await outbox.record(conn, IncidentOpened(incident=view))
        if alarm_id is not None:
            await _attach(conn, alarm_id, iid)
    return view


async def open_incident_for_alarm(pool: asyncpg.Pool, alarm: dict[str, Any]
                                  ) -> dict[str, Any] | None:
    """Open (or join) the incident an alarm's rule asks for. Idempotent per alarm."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            """SELECT a.id, a.incident_id, a.grid_id, a.value, a.message, r.incident_category,
                      r.qualification, r.priority, r.name, d.lon, d.lat, d.name AS device_name
               FROM alarms a JOIN rules r ON r.id = a.rule_id
               LEFT JOIN devices d ON d.id = a.device_id WHERE a.id = $1""", alarm["id"])
    if row is None or row["incident_id"] is not None or not row["incident_category"]:
        return None
    async with pool.acquire() as conn, conn.transaction():
        # Lock the alarm so two dispatchers (or a retry) cannot both act on it.
        again = await conn.fetchval(
            "SELECT incident_id FROM alarms WHERE id = $1 FOR UPDATE", row["id"])
        if again is not None:
            return None
        existing = await conn.fetchrow(
            """SELECT id FROM incidents WHERE grid_id = $1 AND category = $2
               AND state NOT IN ('closed','evaluated','archived','cancelled','shelved')
               AND opened_at > now() - make_interval(secs => $3)
               ORDER BY id DESC LIMIT 1""", row["grid_id"], row["incident_category"],
            float(ATTACH_WINDOW_S))
        if existing is not None:
            await _attach(conn, int(row["id"]), int(existing["id"]))
            return None
    return await open_incident(
        pool, category=row["incident_category"], qualification=row["qualification"] or "",
        priority=int(row["priority"]), title=f"{row['name']} · {row['device_name'] or ''}",
        description=row["message"], lon=float(row["lon"]), lat=float(row["lat"]),
        source="alarm", reporter=SYSTEM_ACTOR, alarm_id=int(row["id"]),
        grid_id=row["grid_id"])


def _recommendation_json(rec: Any) -> dict[str, Any]:
    return {
        "pick": rec.pick, "reason": rec.reason,
        "candidates": [dataclasses.asdict(c) for c in rec.candidates],
    }


async def dispatch_incident(pool: asyncpg.Pool, incident_id: int, graph: RoadGraph | None,
                            policy: DispatchPolicy, *, unit_id: str | None = None,
                            actor: str = SYSTEM_ACTOR, override_reason: str | None = None
                            ) -> dict[str, Any] | None:
    """Assign the engine's pick (or ``unit_id``, an operator override) to a registered
    incident. Returns the assignment view, or None when no unit can take it now."""
    now = time.time()
    async with pool.acquire() as conn, conn.transaction():
        inc = await store.incident_row(conn, incident_id, lock=True)
        if inc is None:
            raise NotFound(f"incident {incident_id} not found", code="incident.not_found")
        if inc["state"] != "registered":
            return None
        units = await store.unit_states(conn)
        rec = engine.rank(store.incident_state(inc), units, graph, now, policy)
        pick = unit_id or rec.pick
        if pick is None:
            return None
        if unit_id is not None and not override_reason:
            raise InvalidInput("an override needs a reason", code="dispatch.override_reason")
        cand = next((c for c in rec.candidates if c.unit_id == pick), None)
        reason = (f"override by {actor}: {override_reason}" if unit_id is not None
                  else rec.reason)
        assignment = await conn.fetchrow(
            """INSERT INTO assignments (incident_id, unit_id, assigned_at, eta_s, reason,
                                        override_reason, recommendation)
               VALUES ($1,$2,$3,$4,$5,$6,$7) RETURNING *""",
            incident_id, pick, store.ts(now), cand.eta_s if cand else None, reason,
            override_reason, _recommendation_json(rec))
        await conn.execute(
            """UPDATE units SET status = 'dispatched', current_incident = $2, updated_at = now()
               WHERE id = $1""", pick, incident_id)
        await conn.execute("UPDATE incidents SET assigned_unit = $2 WHERE id = $1",
                           incident_id, pick)
        inc["assigned_unit"] = pick
        await _step(conn, inc, "dispatch", actor, now, reason)
        a_view = row_view(assignment)
        await outbox.record(conn, UnitAssigned(
            incident=await store.incident_view(conn, incident_id),
            unit=await store.unit_view(conn, pick), assignment=a_view))
    return a_view


async def apply_action(pool: asyncpg.Pool, incident_id: int, action: str, actor: str,
                       reason: str | None) -> dict[str, Any]:
    """Move a case one step (accept, start_handling, give_feedback, verify_ok, ...)."""
    now = time.time()
    async with pool.acquire() as conn, conn.transaction():
        inc = await store.incident_row(conn, incident_id, lock=True)
        if inc is None:
            raise NotFound(f"incident {incident_id} not found", code="incident.not_found")
        unit_id = inc["assigned_unit"]
        try:
            await _step(conn, inc, action, actor, now, reason)
        except workflow.TransitionError as e:
            raise InvalidInput(e.message, code=e.code) from e
        unit_view = None
        if unit_id and action in UNIT_STATUS_AFTER:
            status = UNIT_STATUS_AFTER[action]
            freed = status == "available"
            await conn.execute(
                """UPDATE units SET status = $2, updated_at = now(),
                       current_incident = CASE WHEN $3 THEN NULL ELSE current_incident END
                   WHERE id = $1""", unit_id, status, freed)
            a_status = {"accept": "accepted", "decline": "declined"}.get(
                action, "done" if freed else None)
            if a_status:
                await conn.execute(
                    "UPDATE assignments SET status = $2 WHERE incident_id = $1 AND status IN "
                    "('active', 'accepted')", incident_id, a_status)
            if action == "decline":
                await conn.execute(
                    "UPDATE incidents SET assigned_unit = NULL WHERE id = $1", incident_id)
            unit_view = await store.unit_view(conn, unit_id)
        view = await store.incident_view(conn, incident_id)
        await outbox.record(conn, IncidentUpdated(incident=view, action=action))
        if unit_view is not None:
            from core.events import UnitStatusChanged
            await outbox.record(conn, UnitStatusChanged(unit=unit_view))
    return view


async def incident_detail(pool: asyncpg.Pool, incident_id: int) -> dict[str, Any]:
    async with pool.acquire() as conn:
        inc = await store.incident_row(conn, incident_id)
        if inc is None:
            raise NotFound(f"incident {incident_id} not found", code="incident.not_found")
        assignments = await conn.fetch(
            "SELECT * FROM assignments WHERE incident_id = $1 ORDER BY id", incident_id)
        alarms = await conn.fetch(
            "SELECT id, rule_id, device_id, severity, state, value, message, raised_at "
            "FROM alarms WHERE incident_id = $1 ORDER BY id", incident_id)
        log_entries = await store.case_log(conn, incident_id)
    return {
        "incident": row_view(inc),
        "allowed_actions": list(workflow.allowed_actions(
            await store.case_state(conn, incident_id))),
        "assignments": [row_view(a) for a in assignments],
        "alarms": [row_view(a) for a in alarms],
        "log": log_entries,
    }


async def verify_case_log(pool: asyncpg.Pool, incident_id: int) -> dict[str, Any]:
    entries = await store.case_log(pool, incident_id)
    if not entries:
        raise NotFound(f"incident {incident_id} has no case log", code="incident.not_found")
    for e in entries:
        e["incident_id"] = str(incident_id)
    bad = workflow.verify_chain(entries)
    return {"incident_id": incident_id, "entries": len(entries), "ok": bad is None,
            "first_bad_seq": entries[bad]["seq"] if bad is not None else None}


class Dispatcher:
    """The dispatch role. Acts only while it holds the leader lock."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool, bus: Bus) -> None:
        self.settings = settings
        self.pool = pool
        self.bus = bus
        self.policy = DispatchPolicy(stale_after_s=settings.position_stale_after_s)
        self.graph: RoadGraph | None = None
        self.is_leader = False
        self._task: asyncio.Task[None] | None = None
        self._lock_conn: Conn | None = None

    async def start(self) -> None:
        roads = await self.pool.fetch("SELECT id, name, class, speed_kmh, geometry FROM roads")
        if roads:
            self.graph = RoadGraph.from_geojson({"type": "FeatureCollection", "features": [
                {"type": "Feature", "geometry": r["geometry"],
                 "properties": {"id": r["id"], "name": r["name"], "class": r["class"],
                                "speed_kmh": r["speed_kmh"]}} for r in roads]})
        self._task = asyncio.create_task(self._run(), name="dispatch.leader")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._lock_conn is not None:
            await self._lock_conn.close()

    async def _run(self) -> None:
        while True:
            try:
                self._lock_conn = await connect(self.settings.database_url)
                while not await self._lock_conn.fetchval(
                        "SELECT pg_try_advisory_lock($1)", LEADER_LOCK_KEY):
                    await asyncio.sleep(LEADER_RETRY_S)
                self.is_leader = True
                log.info("dispatcher is leader")
                sub = self.bus.subscribe(100_000)
                try:
                    await self.catch_up()
                    while True:
                        await sub.wake.wait()
                        sub.wake.clear()
                        for env in sub.drain():
                            await self.on_event(env)
                        if sub.overflowed:
                            self.bus.unsubscribe(sub)
                            sub = self.bus.subscribe(100_000)
                            await self.catch_up()
                finally:
                    self.bus.unsubscribe(sub)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dispatcher failed; restarting")
                self.is_leader = False
                if self._lock_conn is not None:
                    self._lock_conn.terminate()
                    self._lock_conn = None
                await asyncio.sleep(LEADER_RETRY_S)

    async def catch_up(self) -> None:
        """Act on whatever waited while no dispatcher led: alarms without their incident,
        registered incidents without a unit."""
        alarms = await self.pool.fetch(
            """SELECT a.id FROM alarms a JOIN rules r ON r.id = a.rule_id
               WHERE a.state <> 'cleared' AND a.incident_id IS NULL
               AND r.incident_category IS NOT NULL ORDER BY a.id""")
        for a in alarms:
            await open_incident_for_alarm(self.pool, {"id": a["id"]})
        await self.dispatch_waiting()

    async def dispatch_waiting(self) -> None:
        rows = await self.pool.fetch(
            "SELECT id FROM incidents WHERE state = 'registered' ORDER BY priority, id")
        for r in rows:
            await dispatch_incident(self.pool, r["id"], self.graph, self.policy)

    async def on_event(self, env: Envelope) -> None:
        if env.kind == "alarm.raised":
            await open_incident_for_alarm(self.pool, dict(env.payload["alarm"]))
        elif env.kind in ("incident.opened", "incident.updated"):
            inc = env.payload["incident"]
            if inc["state"] == "registered":
                await dispatch_incident(self.pool, int(inc["id"]), self.graph, self.policy)
        elif env.kind == "unit.status_changed" and env.payload["unit"]["status"] == "available":
            await self.dispatch_waiting()
