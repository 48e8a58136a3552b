"""The dispatch role: one leader at a time, elected by a PostgreSQL advisory lock.

The leader reacts to events: an alarm whose rule opens cases -> an incident; every other
event that can change the plan becomes one input of the decision core
(``dispatch/planner.py``), decided and applied in one transaction by
``dispatch/decisions.py``: a case registered (or back to registered) ->
``IncidentRegistered``; a crew's decline -> ``UnitDeclined``; a unit free ->
``UnitFreed``; a dispatch not accepted in time (the SLA timer) -> ``AcceptTimedOut``; while
a case waits, a new GPS fix of a unit that could take it -> ``PositionUpdated``, at most
once per ``Settings.dispatch_position_replan_s`` (``check_positions``: positions arrive at
1 Hz per unit and carry no event). At start it plans every waiting case at once
(``Replan``). Each input re-plans every waiting
case jointly, so the running hub and ``./hubctl bench dispatch`` decide alike. The lock is held by a
dedicated connection: if the leader's process dies, PostgreSQL drops the connection and the
lock, and a follower's next try (every ``LEADER_RETRY_S``) takes over, rebuilding its timer
from the database and catching up on whatever waited meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import asyncpg

from core.bus import Bus
from core.db import connect, create_pool
from core.events import Envelope
from core.heap import GC_CLOCK
from core.settings import Settings
from dispatch import decisions, planner, service, store
from dispatch.command_sender import CommandSender
from dispatch.decision_stats import DecisionStats
from dispatch.geo import RoadGraph
from dispatch.model import DispatchPolicy
from dispatch.sla_clocks import SlaTimer
from dispatch.sla_retime import SLA_RETIMED

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
# A fix is looked for this far back from the previous position round: the ingest writer's
# flush interval plus the skew between a phone's clock (the fix's time) and the database's.
POSITION_LAG_S = 5.0
# Units with a new fix read per position round (one plan covers them all: the core plans
# every waiting case jointly, so the first that matters is enough).
POSITION_CANDIDATES = 50
# Statuses of units a waiting case can get: free, or re-plannable / preemptable.
POSITION_STATUSES = ["available", "returning", "dispatched", "en_route"]
# The leader decides on a pool of its own with this one connection, kept open and warmed
# (``decisions.warm``) when it takes the lead. Decisions are one at a time anyway (the plan
# lock); on the shared pool they rotated over its connections, and each connection's first
# decision paid 20-60 ms for statements and types it had never seen (docs/PERFORMANCE.md).
DECIDE_CONNECTIONS = 1


class Dispatcher:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, bus: Bus,
                 graph: RoadGraph | None = None) -> None:
        self.settings = settings
        self.pool = pool
        self.bus = bus
        self.policy: DispatchPolicy = decisions.policy_from_settings(settings)
        self.graph = graph
        self.timer = SlaTimer(pool, self._escalate)
        self.commands = CommandSender(pool, settings.mqtt_url,
                                      f"{settings.mqtt_client_id}-commands")
        self.is_leader = False
        # This process's decisions' times by part, shown in /api/health.
        self.stats = DecisionStats()
        # Called after each decision of ``decide`` has committed, with its input, the
        # decision and its times (``DecisionStats.add``'s marks): the dispatch process
        # reports them to its hub (hub/dispatch_process.py). Synchronous, so cheap.
        self.on_decided: list[Callable[[planner.Input, planner.Decision, list[float]], None]] = []
        # The latest decision's way through this process (``time.perf_counter()`` stamps,
        # for its report): ``received`` (the event that caused it came), ``woke`` (the
        # leader's loop woke for it), ``event`` (its turn in ``on_event`` began), ``done``
        # (``decide_and_apply`` returned); ``gc``: seconds of garbage collection from
        # ``event`` to ``done`` (``core.heap.GC_CLOCK``, once installed by ``settle_gc``).
        # Empty for decisions no event caused.
        self.timeline: dict[str, float] = {}
        self._reacting: dict[str, float] = {}
        # Set once this leader has planned what waited before it led (``catch_up``);
        # cleared when it steps down.
        self.caught_up = asyncio.Event()
        # The connection decisions run on (DECIDE_CONNECTIONS), opened by ``start``.
        self.decide_pool: asyncpg.Pool | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock_conn: asyncpg.Connection | None = None
        # Position rounds: the database time of the last round, and the fix each unit
        # last caused a plan with (the look-back sees a fix in two rounds: act once).
        self._positions_checked: float | None = None
        self._fix_acted: dict[str, float] = {}
        # Set once the leader may have missed a town import (it subscribes to the bus only
        # while leading); the graph is loaded again on taking the lead.
        self._graph_stale = False

    async def start(self) -> None:
        if self.graph is None:
            self.graph = await decisions.load_road_graph(self.pool)
        # Its users hold transaction-scoped locks only (the plan lock) and leave no session
        # state: a release rolls back an open transaction but skips asyncpg's session
        # reset, a round trip between each decision's commit and its report.
        self.decide_pool = await create_pool(self.settings.database_url, DECIDE_CONNECTIONS,
                                             DECIDE_CONNECTIONS, max_inactive_s=0,
                                             session_reset=False)
        self._task = asyncio.create_task(self._run(), name="dispatch.leader")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._lock_conn is not None:
            self._lock_conn.terminate()
            self._lock_conn = None
        if self.decide_pool is not None:
            self.decide_pool.terminate()
            self.decide_pool = None

    @property
    def _decide_on(self) -> asyncpg.Pool:
        return self.decide_pool if self.decide_pool is not None else self.pool

    async def _escalate(self, assignment_id: int) -> None:
        await decisions.escalate(self._decide_on, assignment_id, self.graph, self.policy)

    async def _run(self) -> None:
        while True:
            timer_task: asyncio.Task[None] | None = None
            commands_task: asyncio.Task[None] | None = None
            positions_task: asyncio.Task[None] | None = None
            try:
                self._lock_conn = await connect(self.settings.database_url)
                while not await self._lock_conn.fetchval(
                        "SELECT pg_try_advisory_lock($1)", LEADER_LOCK_KEY):
                    await asyncio.sleep(LEADER_RETRY_S)
                self.is_leader = True
                log.info("dispatcher is leader")
                if self._graph_stale:
                    # A town import happened while this process followed (its
                    # town.changed came to no one here): plan on the roads as they are now.
                    self.graph = await decisions.load_road_graph(self.pool)
                    self._graph_stale = False
                sub = self.bus.subscribe(EVENT_QUEUE)
                try:
                    await decisions.warm(self._decide_on)
                    await self.timer.rebuild()
                    timer_task = asyncio.create_task(self.timer.run(), name="dispatch.sla")
                    commands_task = asyncio.create_task(self.commands.run(),
                                                        name="dispatch.commands")
                    self._positions_checked = None
                    if self.settings.dispatch_position_replan_s > 0:
                        positions_task = asyncio.create_task(self._position_rounds(),
                                                             name="dispatch.positions")
                    await self.catch_up()
                    self.caught_up.set()
                    while True:
                        try:
                            await asyncio.wait_for(sub.wake.wait(), LEADER_CHECK_S)
                        except TimeoutError:
                            # Still holding the lock? A lost connection means lost lock:
                            # this raises and we go back to following.
                            await self._lock_conn.fetchval("SELECT 1")
                            continue
                        sub.wake.clear()
                        woke = time.perf_counter()
                        for env in sub.drain():
                            self.timer.observe(env)
                            self.commands.observe(env.kind)
                            self._reacting = {"received": env.received, "woke": woke,
                                              "event": time.perf_counter(),
                                              "gc": GC_CLOCK.seconds}
                            try:
                                await self.on_event(env)
                            finally:
                                self._reacting = {}
                        if sub.overflowed:
                            self.bus.unsubscribe(sub)
                            sub = self.bus.subscribe(EVENT_QUEUE)
                            await self.timer.rebuild()
                            await self.catch_up()
                        for side in (timer_task, commands_task, positions_task):
                            if side is not None and side.done():
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
                self.caught_up.clear()
                self._graph_stale = True
                for side_task in (timer_task, commands_task, positions_task):
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
        await self.decide(planner.Replan())

    async def _position_rounds(self) -> None:
        while True:
            await asyncio.sleep(self.settings.dispatch_position_replan_s)
            try:
                await self.check_positions()
            except Exception:
                log.exception("position round failed; next round in %s s",
                              self.settings.dispatch_position_replan_s)

    async def check_positions(self) -> planner.Decision | None:
        """One position round: if a unit that could take a waiting case (its
        qualification, a status the core may send or divert from) has reported a fix not
        acted on yet, plan once with ``PositionUpdated`` for it. Returns that decision,
        None when no fix mattered. The first round after taking the lead only notes the
        time (catch-up has just planned)."""
        rows = await self.pool.fetch(
            """SELECT now() AS checked, u.id,
                      extract(epoch FROM u.position_ts)::float8 AS fix
               FROM (SELECT 1) one LEFT JOIN units u
                 ON u.position_ts > $1::timestamptz - make_interval(secs => $2)
                AND u.status = ANY($3::text[])
                AND EXISTS (SELECT 1 FROM incidents i WHERE i.state = 'registered'
                            AND i.assigned_unit IS NULL
                            AND i.qualification = ANY(u.qualifications))
               ORDER BY u.position_ts DESC, u.id LIMIT $4""",
            store.ts(self._positions_checked or 0.0), POSITION_LAG_S, POSITION_STATUSES,
            POSITION_CANDIDATES)
        first_round = self._positions_checked is None
        self._positions_checked = rows[0]["checked"].timestamp()
        fresh = [(r["id"], r["fix"]) for r in rows
                 if r["id"] is not None and self._fix_acted.get(r["id"], -1.0) < r["fix"]]
        for unit_id, fix in fresh:
            self._fix_acted[unit_id] = fix
        if first_round or not fresh:
            return None
        return await self.decide(planner.PositionUpdated(fresh[0][0]))

    async def decide(self, event: planner.Input) -> planner.Decision:
        """One input through the core, applied in one transaction."""
        decision, _ = await decisions.decide_and_apply(self._decide_on, event, self.graph,
                                                       self.policy, stats=self.stats)
        self.timeline = ({**self._reacting, "done": time.perf_counter(),
                          "gc": GC_CLOCK.seconds - self._reacting["gc"]}
                         if self._reacting else {})
        for fn in self.on_decided:
            fn(event, decision, self.stats.last)
        return decision

    async def on_event(self, env: Envelope) -> None:
        try:
            if env.kind == "town.changed":
                # The roads were replaced (hub/admin_town.py), maybe by another process:
                # events after this one are planned on the new graph (they come in order).
                self.graph = await decisions.load_road_graph(self.pool)
                log.info("road graph reloaded after a town import (event #%s)", env.seq)
            elif env.kind == "alarm.raised":
                await service.open_incident_for_alarm(self.pool, dict(env.payload["alarm"]))
            elif env.kind in ("incident.opened", "incident.updated"):
                inc = env.payload["incident"]
                released = env.payload.get("released_unit") or ""
                if env.payload.get("action") == SLA_RETIMED:
                    pass  # new deadlines after an SLA edit (the timer took them): no plan
                elif env.payload.get("action") == "decline" and released:
                    await self.decide(planner.UnitDeclined(str(inc["id"]), str(released)))
                elif inc["state"] == "registered" and inc.get("assigned_unit") is None:
                    await self.decide(planner.IncidentRegistered(str(inc["id"])))
            elif (env.kind == "unit.status_changed"
                  and env.payload["unit"]["status"] in ("available", "returning")):
                await self.decide(planner.UnitFreed(str(env.payload["unit"]["id"])))
        except Exception:
            # One failed reaction must not stop the leader; the case stays waiting and the
            # next event or catch-up picks it up.
            log.exception("dispatcher could not act on %s #%s", env.kind, env.seq)
