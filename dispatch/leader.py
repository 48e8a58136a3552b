"""The dispatch role: one leader at a time, elected by a PostgreSQL advisory lock.

The leader reacts to events: an alarm whose rule opens cases -> an incident; a registered
incident -> a dispatch; a unit freed -> the waiting incidents; and it runs the SLA timer
(warnings, breaches, escalation of dispatches not accepted in time). The lock is held by a
dedicated connection: if the leader's process dies, PostgreSQL drops the connection and the
lock, and a follower's next try (every ``LEADER_RETRY_S``) takes over, rebuilding its timer
from the database and catching up on whatever waited meanwhile.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from core.bus import Bus
from core.db import connect
from core.events import Envelope
from core.settings import Settings
from dispatch import service
from dispatch.clocks import SlaTimer
from dispatch.command_sender import CommandSender
from dispatch.geo import RoadGraph
from dispatch.model import DispatchPolicy

log = logging.getLogger("dispatch.leader")

# One dispatcher leads at a time (any fixed number, distinct from other advisory keys).
LEADER_LOCK_KEY = 4_710_003
# A follower tries for the lock this often: the takeover time after a leader dies.
LEADER_RETRY_S = 1.0
# The leader checks its lock connection this often when idle: if the connection is gone
# another process may already lead, so this one steps down.
LEADER_CHECK_S = 2.0
# Events the leader may hold while it works; beyond this it re-reads the database instead.
EVENT_QUEUE = 100_000


class Dispatcher:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, bus: Bus) -> None:
        self.settings = settings
        self.pool = pool
        self.bus = bus
        self.policy = DispatchPolicy(
            stale_after_s=settings.position_stale_after_s,
            preempt_up_to_priority=settings.dispatch_preempt_up_to_priority,
            preempt_penalty_s=settings.dispatch_preempt_penalty_s)
        self.graph: RoadGraph | None = None
        self.timer = SlaTimer(pool, self._escalate)
        self.commands = CommandSender(pool, settings.mqtt_url,
                                      f"{settings.mqtt_client_id}-commands")
        self.is_leader = False
        self._task: asyncio.Task[None] | None = None
        self._lock_conn: asyncpg.Connection | None = None

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
            self._lock_conn.terminate()
            self._lock_conn = None

    async def _escalate(self, assignment_id: int) -> None:
        await service.escalate_assignment(self.pool, assignment_id)

    async def _run(self) -> None:
        while True:
            timer_task: asyncio.Task[None] | None = None
            commands_task: asyncio.Task[None] | None = None
            try:
                self._lock_conn = await connect(self.settings.database_url)
                while not await self._lock_conn.fetchval(
                        "SELECT pg_try_advisory_lock($1)", LEADER_LOCK_KEY):
                    await asyncio.sleep(LEADER_RETRY_S)
                self.is_leader = True
                log.info("dispatcher is leader")
                sub = self.bus.subscribe(EVENT_QUEUE)
                try:
                    await self.timer.rebuild()
                    timer_task = asyncio.create_task(self.timer.run(), name="dispatch.sla")
                    commands_task = asyncio.create_task(self.commands.run(),
                                                        name="dispatch.commands")
                    await self.catch_up()
                    while True:
                        try:
                            await asyncio.wait_for(sub.wake.wait(), LEADER_CHECK_S)
                        except TimeoutError:
                            # Still holding the lock? A lost connection means lost lock:
                            # this raises and we go back to following.
                            await self._lock_conn.fetchval("SELECT 1")
                            continue
                        sub.wake.clear()
                        for env in sub.drain():
                            self.timer.observe(env)
                            self.commands.observe(env.kind)
                            await self.on_event(env)
                        if sub.overflowed:
                            self.bus.unsubscribe(sub)
                            sub = self.bus.subscribe(EVENT_QUEUE)
                            await self.timer.rebuild()
                            await self.catch_up()
                        for side in (timer_task, commands_task):
                            if side.done():
                                side.result()  # surface a crashed task, then restart
                finally:
                    self.bus.unsubscribe(sub)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dispatcher failed; restarting")
                await asyncio.sleep(LEADER_RETRY_S)
            finally:
                self.is_leader = False
                for side_task in (timer_task, commands_task):
                    if side_task is not None:
                        side_task.cancel()
                if self._lock_conn is not None:
                    self._lock_conn.terminate()
                    self._lock_conn = None

    async def catch_up(self) -> None:
        """Act on whatever waited while no dispatcher led: alarms without their incident,
        registered incidents without a unit."""
        alarms = await self.pool.fetch(
            """SELECT a.id FROM alarms a JOIN rules r ON r.id = a.rule_id
               WHERE a.state <> 'cleared' AND a.incident_id IS NULL
               AND r.incident_category IS NOT NULL ORDER BY a.id""")
        for a in alarms:
            await service.open_incident_for_alarm(self.pool, {"id": a["id"]})
        await self.dispatch_waiting()

    async def dispatch_waiting(self) -> None:
        """Most urgent first, then oldest: each gets the best unit still free."""
        rows = await self.pool.fetch(
            "SELECT id FROM incidents WHERE state = 'registered' ORDER BY priority, id")
        for r in rows:
            await service.dispatch_incident(self.pool, r["id"], self.graph, self.policy)

    async def on_event(self, env: Envelope) -> None:
        try:
            if env.kind == "alarm.raised":
                await service.open_incident_for_alarm(self.pool, dict(env.payload["alarm"]))
            elif env.kind in ("incident.opened", "incident.updated"):
                inc = env.payload["incident"]
                if inc["state"] == "registered":
                    await service.dispatch_incident(self.pool, int(inc["id"]), self.graph,
                                                    self.policy)
            elif (env.kind == "unit.status_changed"
                  and env.payload["unit"]["status"] == "available"):
                await self.dispatch_waiting()
        except Exception:
            # One failed reaction must not stop the leader; the case stays waiting and the
            # next event or catch-up picks it up.
            log.exception("dispatcher could not act on %s #%s", env.kind, env.seq)
