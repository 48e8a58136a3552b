"""The rule evaluator: the one place a device's readings meet its rules.

Every reading of a device must be evaluated by exactly one evaluator, in device-time order,
and the evaluator's state must survive its death. Two layouts give that:

- **One ingest process** (the default, ``HUB_MQTT_SHARE_GROUP`` empty): it sees every
  message on its plain persistent subscription and evaluates inline (ingest/pipeline.py).
- **Scaled out** (a share group set): the ingest processes split *storage* between them on
  the shared subscription, and one of them, elected by a PostgreSQL advisory lock
  (``EvaluatorLeader``), evaluates every reading on its own plain persistent subscription
  under a fixed client id (``HUB_MQTT_RULES_CLIENT_ID``). While no one leads the broker keeps
  that session and queues the readings for it; the next leader resumes it.

In both, a reading is acknowledged to the broker only at a **checkpoint** (``RuleEvaluator``):
every alarm transition produced so far is written and the rule states are saved, then the
acknowledgements held until then are sent. A successor restores the states of the last
checkpoint and the broker redelivers every reading after it, so no evaluation is lost; a
reading evaluated twice is harmless (alarms are de-duplicated by the database, and rules
ignore readings older than the state's last one).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import asyncpg

from core.db import connect
from core.settings import Settings
from core.town_time import DEFAULT_TOWN_TZ
from ingest import wire
from ingest.mqtt import MqttIngest
from ingest.watch import AlarmWatch

log = logging.getLogger("ingest.evaluator")

Ack = tuple[int, int]  # (packet id, session generation), as MqttIngest.ack takes them

# The evaluator's advisory lock (any fixed number, distinct from the dispatcher's 4_710_003).
EVALUATOR_LOCK_KEY = 4_710_013
# A follower tries for the lock this often: with the broker queueing meanwhile, this is the
# takeover delay after a leader dies, not a loss.
EVALUATOR_RETRY_S = 1.0
# The leader checks its lock connection this often: a lost connection means a lost lock
# (another process may lead already), so it stops evaluating at once.
EVALUATOR_CHECK_S = 1.0
# While a checkpoint waits for alarm transitions to be written, it looks this often.
TRANSITION_POLL_S = 0.005


class RuleEvaluator:
    """AlarmWatch plus acknowledgement after checkpoint.

    ``hold(acks)`` takes the acknowledgements of readings already evaluated (inline: after
    their batch committed too); ``checkpoint()`` makes the state durable and releases them.
    """

    def __init__(self, pool: asyncpg.Pool, ack: Callable[[Iterable[Ack]], None], *,
                 checkpoint_s: float, realarm_s: float, reorder_window_s: float,
                 town_tz: str = DEFAULT_TOWN_TZ) -> None:
        self.pool = pool
        self.ack = ack
        self.checkpoint_s = checkpoint_s
        self.watch = AlarmWatch(pool, town_tz)
        self.watch.realarm_s = realarm_s
        self.watch.reorder_window_s = reorder_window_s
        self._held: list[Ack] = []
        self.evaluated = 0
        self.checkpoints = 0
        self.failed_checkpoints = 0
        self._tasks: list[asyncio.Task[None]] = []

    def readings(self, readings: Sequence[wire.Reading]) -> None:
        """Readings in device-time order."""
        self.evaluated += len(readings)
        self.watch.readings(readings)

    def position(self, unit_id: str, lon: float, lat: float, ts: float) -> None:
        self.watch.position(unit_id, lon, lat, ts)

    def hold(self, acks: Iterable[Ack]) -> None:
        self._held.extend(acks)

    def held(self) -> int:
        return len(self._held)

    async def checkpoint(self) -> bool:
        """Write every transition so far, save the rule states, then acknowledge what was
        held when it began. False (nothing acknowledged) if the database did not take it."""
        # One cut, taken without an await: the acknowledgements held now belong to readings
        # whose transitions are among the first ``target`` and whose states save() takes.
        acks, self._held = self._held, []
        target = self.watch.enqueued
        while self.watch.written < target:
            await asyncio.sleep(TRANSITION_POLL_S)
        if not await self.watch.save():
            self._held[:0] = acks  # kept, in order; tried again next time
            self.failed_checkpoints += 1
            return False
        self.checkpoints += 1
        if acks:
            self.ack(acks)
        return True

    async def _checkpoints(self) -> None:
        while True:
            await asyncio.sleep(self.checkpoint_s)
            await self.checkpoint()

    async def start(self) -> None:
        """Restore the last checkpoint's states and start writing, ticking, checkpointing."""
        await self.watch.restore()
        self._tasks = [
            asyncio.create_task(self.watch.run(), name="ingest.alarms"),
            asyncio.create_task(self.watch.clock(), name="ingest.alarm_clock"),
            asyncio.create_task(self._checkpoints(), name="ingest.rules_checkpoint"),
            asyncio.create_task(self.watch.reconcile_loop(), name="ingest.alarm_reconcile"),
        ]

    async def stop(self, *, final_checkpoint: bool = True) -> None:
        if final_checkpoint:
            try:
                async with asyncio.timeout(5.0):
                    await self.checkpoint()
            except Exception as e:  # what was not acknowledged is redelivered: no loss
                log.warning("final rules checkpoint failed (%s)", e)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def stats(self) -> dict[str, Any]:
        return {"evaluated": self.evaluated, "alarm_writes": self.watch.written,
                "alarm_backlog": self.watch.queue.qsize(), "unacked": len(self._held),
                "checkpoints": self.checkpoints, "failed_checkpoints": self.failed_checkpoints}


class EvaluatorLeader:
    """Scaled out: every ingest process runs one; the holder of the advisory lock evaluates.

    ``make_pipeline(evaluator)`` builds the evaluate-only pipeline (decode, registry check,
    device-time order) that the leader's subscription feeds.
    """

    def __init__(self, settings: Settings, pool: asyncpg.Pool,
                 make_pipeline: Callable[[RuleEvaluator], Any]) -> None:
        self.settings = settings
        self.pool = pool
        self.make_pipeline = make_pipeline
        self.is_leader = False
        self.terms = 0
        self.evaluator: RuleEvaluator | None = None
        self.pipeline: Any = None
        self.mqtt: MqttIngest | None = None
        self.subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ingest.rules_leader")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def configure(self) -> None:
        if self.pipeline is not None:
            self.pipeline.configure_rules()

    async def _run(self) -> None:
        while True:
            lock: asyncpg.Connection | None = None
            try:
                lock = await connect(self.settings.database_url)
                while not await lock.fetchval("SELECT pg_try_advisory_lock($1)",
                                              EVALUATOR_LOCK_KEY):
                    await asyncio.sleep(EVALUATOR_RETRY_S)
                await self._lead(lock)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("rule evaluator failed; trying to lead again")
                await asyncio.sleep(EVALUATOR_RETRY_S)
            finally:
                if lock is not None:
                    lock.terminate()

    async def _lead(self, lock: asyncpg.Connection) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        mqtt: MqttIngest | None = None
        evaluator = RuleEvaluator(self.pool, lambda acks: mqtt.ack(acks) if mqtt else None,
                                  checkpoint_s=s.rules_checkpoint_s,
                                  realarm_s=s.alarm_realarm_s,
                                  reorder_window_s=s.reorder_window_s,
                                  town_tz=s.town_tz)
        graceful = False
        try:
            self.is_leader = True
            self.terms += 1
            log.info("rule evaluator is leader (term %d)", self.terms)
            pipeline = self.make_pipeline(evaluator)
            await evaluator.start()
            mqtt = MqttIngest(
                s.mqtt_url, s.mqtt_rules_client_id, wire.SUBSCRIPTIONS, loop,
                pipeline.on_delivery, share_group=None, receive_maximum=s.mqtt_receive_maximum,
                session_expiry_s=s.mqtt_session_expiry_s, v311=s.mqtt_ingest_protocol == "3.1.1",
                max_unacked=s.ingest_max_unacked)
            self.evaluator, self.pipeline, self.mqtt = evaluator, pipeline, mqtt
            mqtt.start()
            while True:
                await asyncio.sleep(EVALUATOR_CHECK_S)
                if mqtt.subscribed.is_set():
                    self.subscribed.set()
                # Still holding the lock? A lost connection raises here: stop evaluating.
                await lock.fetchval("SELECT 1")
        except asyncio.CancelledError:
            graceful = True
            raise
        finally:
            self.is_leader = False
            self.subscribed.clear()
            # Cancelled (the process stops): checkpoint what was evaluated. Lock lost: not a
            # word more to the broker; the next leader restores the last checkpoint.
            await evaluator.stop(final_checkpoint=graceful)
            if mqtt is not None:
                mqtt.stop()
            self.evaluator = self.pipeline = self.mqtt = None

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"leader": self.is_leader, "terms": self.terms,
                               "subscribed": self.subscribed.is_set()}
        if self.evaluator is not None:
            out.update(self.evaluator.stats())
        return out
