"""The ingest role: MQTT adapter + pipeline + writer as one unit of background tasks."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import asyncpg

from core.settings import Settings
from ingest import wire
from ingest.mqtt import MqttIngest
from ingest.pipeline import Pipeline, Registry
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
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        await self.registry.load(self.pool)
        writer = BatchWriter(
            self.pool, ack=lambda acks: self.mqtt.ack(acks) if self.mqtt else None,
            batch_size=s.ingest_batch_size, flush_interval_s=s.ingest_flush_interval_s,
            dead_letter_max_bytes=s.dead_letter_max_bytes)
        self.pipeline = Pipeline(self.pool, writer, self.registry,
                                 reorder_window_s=s.reorder_window_s,
                                 clock_skew_limit_s=s.clock_skew_limit_s)
        self.pipeline.watch.realarm_s = s.alarm_realarm_s
        await self.pipeline.watch.restore()
        self.mqtt = MqttIngest(
            s.mqtt_url, s.mqtt_client_id, wire.SUBSCRIPTIONS, loop, self.pipeline.on_delivery,
            share_group=s.mqtt_share_group, receive_maximum=s.mqtt_receive_maximum,
            session_expiry_s=s.mqtt_session_expiry_s, v311=s.mqtt_ingest_protocol == "3.1.1")
        self.tasks = [
            asyncio.create_task(writer.run(), name="ingest.writer"),
            asyncio.create_task(self.pipeline.watch.run(), name="ingest.alarms"),
            asyncio.create_task(self.pipeline.watch.persist(), name="ingest.rule_state"),
            asyncio.create_task(self.pipeline.watch.clock(), name="ingest.alarm_clock"),
        ]
        self.mqtt.start()
        # Ready means subscribed: a message published after start() returns is ours.
        if not await asyncio.to_thread(self.mqtt.subscribed.wait, SUBSCRIBE_WAIT_S):
            log.error("not subscribed to MQTT after %ss; going on, paho keeps trying",
                      SUBSCRIBE_WAIT_S)
        log.info("ingest started (client %s, group %s)", s.mqtt_client_id, s.mqtt_share_group)

    async def save_clocks(self) -> int:
        """Persist the clocks that moved since the last call (a scheduled job)."""
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

    async def stop(self) -> None:
        if self.mqtt:
            self.mqtt.stop()
        # Give the writer one flush interval to commit what it holds; anything not
        # acknowledged is redelivered by the broker on the next start.
        await asyncio.sleep(self.settings.ingest_flush_interval_s * 2)
        if self.pipeline is not None:
            await self.pipeline.watch.save()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
