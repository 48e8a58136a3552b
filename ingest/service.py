"""The ingest role: MQTT adapter + pipeline + writer (+ the rule evaluator) as one unit of
background tasks, with the periodic work the role needs (device and rule reload, device
clock saves), so that ``python -m ingest`` and ``python -m hub`` run the same thing.

One ingest process (``HUB_MQTT_SHARE_GROUP`` empty, the default): a plain persistent
subscription; readings are stored and evaluated inline, and a message is acknowledged once
its batch committed and the evaluator checkpointed. Scaled out (a share group set): storage
on the shared subscription, and the rules in the one process holding the evaluator's lock,
on its own subscription (ingest/evaluator.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from core.settings import Settings
from ingest import wire
from ingest.evaluator import EvaluatorLeader, RuleEvaluator
from ingest.mqtt import MqttIngest
from ingest.pipeline import Pipeline, Registry
from ingest.watch import RECONCILE_WAIT_S
from ingest.writer import BatchWriter

log = logging.getLogger("ingest.service")

# How long start() waits for the broker to confirm the subscriptions.
SUBSCRIBE_WAIT_S = 15.0


@dataclass
class IngestRole:
    settings: Settings
    pool: asyncpg.Pool
    registry: Registry = field(default_factory=Registry)
    pipeline: Pipeline | None = None
    mqtt: MqttIngest | None = None
    # Inline (one ingest process) or None when scaled out.
    evaluator: RuleEvaluator | None = None
    # Scaled out: every ingest process stands for the evaluator's lock.
    leader: EvaluatorLeader | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def scaled_out(self) -> bool:
        return bool(self.settings.mqtt_share_group)

    def _pipeline(self, writer: BatchWriter | None,
                  evaluator: RuleEvaluator | None) -> Pipeline:
        s = self.settings
        return Pipeline(self.pool, writer, self.registry, reorder_window_s=s.reorder_window_s,
                        clock_skew_limit_s=s.clock_skew_limit_s, evaluator=evaluator)

    def _ack(self, acks: Iterable[tuple[int, int]]) -> None:
        if self.mqtt is not None:
            self.mqtt.ack(acks)

    async def start(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        await self.registry.load(self.pool)
        if self.scaled_out:
            writer = BatchWriter(
                self.pool, ack=self._ack, batch_size=s.ingest_batch_size,
                flush_interval_s=s.ingest_flush_interval_s,
                concurrency=s.ingest_flush_concurrency,
                dead_letter_max_bytes=s.dead_letter_max_bytes,
                latest_interval_s=s.ingest_latest_interval_s,
                latest_max_held=s.ingest_latest_max_held)
            self.pipeline = self._pipeline(writer, None)
            self.leader = EvaluatorLeader(s, self.pool, lambda ev: self._pipeline(None, ev))
        else:
            self.evaluator = RuleEvaluator(self.pool, self._ack,
                                           checkpoint_s=s.rules_checkpoint_s,
                                           realarm_s=s.alarm_realarm_s,
                                           reorder_window_s=s.reorder_window_s,
                                           town_tz=s.town_tz)
            # Acknowledged after commit *and* the next rules checkpoint.
            writer = BatchWriter(
                self.pool, ack=self.evaluator.hold, batch_size=s.ingest_batch_size,
                flush_interval_s=s.ingest_flush_interval_s,
                concurrency=s.ingest_flush_concurrency,
                dead_letter_max_bytes=s.dead_letter_max_bytes,
                latest_interval_s=s.ingest_latest_interval_s,
                latest_max_held=s.ingest_latest_max_held)
            self.pipeline = self._pipeline(writer, self.evaluator)
            await self.evaluator.start()
        self.mqtt = MqttIngest(
            s.mqtt_url, s.mqtt_client_id, wire.SUBSCRIPTIONS, loop, self.pipeline.on_delivery,
            share_group=s.mqtt_share_group or None, receive_maximum=s.mqtt_receive_maximum,
            session_expiry_s=s.mqtt_session_expiry_s, v311=s.mqtt_ingest_protocol == "3.1.1",
            max_unacked=s.ingest_max_unacked)
        self.tasks = [
            asyncio.create_task(writer.run(), name="ingest.writer"),
            asyncio.create_task(self._every(s.registry_reload_s, self.reload),
                                name="ingest.registry_reload"),
            asyncio.create_task(self._every(s.clock_save_interval_s, self.save_clocks),
                                name="ingest.device_clocks"),
        ]
        self.mqtt.start()
        if self.leader is not None:
            self.leader.start()
        # Ready means subscribed: a message published after start() returns is ours.
        if not await asyncio.to_thread(self.mqtt.subscribed.wait, SUBSCRIBE_WAIT_S):
            log.error("not subscribed to MQTT after %ss; going on, paho keeps trying",
                      SUBSCRIBE_WAIT_S)
        log.info("ingest started (client %s, %s)", s.mqtt_client_id,
                 f"storage on shared group {s.mqtt_share_group}, rules by the elected "
                 f"evaluator ({s.mqtt_rules_client_id})" if self.scaled_out
                 else "plain subscription, rules inline")

    @staticmethod
    async def _every(seconds: float, job: Any) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await job()
            except Exception as e:  # the next round tries again
                log.warning("%s failed (%s: %s)", job.__name__, type(e).__name__, e)

    async def reload(self, *, reconcile: bool = False) -> None:
        """Devices, units and rules as the database has them now. ``reconcile``: also
        compare this process's evaluator with the alarms table at once (after a rule edit:
        an edited rule starts afresh and its open alarms are taken back, so they still
        clear), instead of at its next periodic reconciliation."""
        if await self.registry.load(self.pool):
            self.configure_rules()
        if reconcile:
            evaluator = self.evaluator or (self.leader.evaluator if self.leader else None)
            if evaluator is not None:
                await evaluator.watch.reconcile(wait_s=RECONCILE_WAIT_S)

    def configure_rules(self) -> None:
        if self.pipeline is not None:
            self.pipeline.configure_rules()
        if self.leader is not None:
            self.leader.configure()

    async def save_clocks(self) -> int:
        """Persist the clocks that moved since the last call."""
        if self.pipeline is None:
            return 0
        dirty = self.pipeline.take_dirty_clocks()
        if dirty:
            await self.pool.executemany(
                """INSERT INTO device_clocks (device_id, skew_s, last_skew_s, samples, late,
                                              flagged, updated_at)
                   VALUES ($1, $2, $3, $4, $5, $6, now())
                   ON CONFLICT (device_id) DO UPDATE SET skew_s = excluded.skew_s,
                     last_skew_s = excluded.last_skew_s, samples = excluded.samples,
                     late = excluded.late, flagged = excluded.flagged, updated_at = now()""",
                [(i, c.skew_s, c.last_skew_s, c.samples, c.late, c.flagged) for i, c in dirty])
        return len(dirty)

    def stats(self) -> dict[str, Any]:
        assert self.pipeline is not None
        out = self.pipeline.stats()
        if self.mqtt is not None:
            out["unacked_messages"] = self.mqtt.unacknowledged()
            out["read_pauses"] = self.mqtt.pauses
        if self.leader is not None:
            out["rules"] = self.leader.stats()
        return out

    async def stop(self) -> None:
        if self.leader is not None:
            await self.leader.stop()
        # Give the writer one flush interval to commit what it holds, and the evaluator a
        # last checkpoint; anything not acknowledged is redelivered on the next start.
        await asyncio.sleep(self.settings.ingest_flush_interval_s * 2)
        if self.evaluator is not None:
            await self.evaluator.stop()
        if self.mqtt:
            self.mqtt.stop()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
