"""Live positions for a web node that does not see every fix in-process.

Positions reach the console through ``LiveState.on_position``. With one ingest process in
the same process as the web role, the ingest pipeline calls it directly. Everywhere else (a
web-only node, or a node whose ingest holds only a share of a shared subscription) the web
node subscribes to the position topics itself, on a clean (non-persistent) session: a
console wants the latest fix, not a backlog, and a fix missed while disconnected is
superseded by the next one (storage is ingest's job). Measured path: fix published ->
broker -> this adapter (the same loop-driven paho adapter as ingest) -> the live feed's next
tick (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

from core.settings import Settings
from ingest import wire
from ingest.mqtt import Delivery, MqttIngest

log = logging.getLogger("hub.positions")

# The topics that carry fixes (a subset of what ingest subscribes to).
POSITION_TOPICS = tuple(t for t in wire.SUBSCRIPTIONS
                        if "/units/" in t or t.startswith("owntracks/"))

OnPosition = Callable[[str, float, float, float, float | None, float | None], None]


class PositionFeed:
    """Decodes fixes from the broker and hands them to ``on_position`` (on the loop)."""

    def __init__(self, settings: Settings, on_position: OnPosition) -> None:
        self.settings = settings
        self.on_position = on_position
        self.fixes = 0
        self.mqtt: MqttIngest | None = None

    def start(self) -> None:
        s = self.settings
        # A clean session needs no stable id; unique, so web nodes never take each other's.
        client_id = f"{s.mqtt_client_id}-positions-{uuid.uuid4().hex[:8]}"
        self.mqtt = MqttIngest(s.mqtt_url, client_id, POSITION_TOPICS,
                               asyncio.get_running_loop(), self._deliver, share_group=None,
                               v311=True, persistent=False)
        self.mqtt.start()

    def _deliver(self, deliveries: list[Delivery]) -> None:
        for topic, payload, _mid, received_at, _gen in deliveries:
            res = wire.decode(topic, payload, received_at)
            if isinstance(res, wire.DecodeError):
                continue  # ingest dead-letters it; the console has nothing to show
            for p in res.positions:
                self.fixes += 1
                self.on_position(p.unit_id, p.ts, p.lon, p.lat, p.speed, p.heading)
        assert self.mqtt is not None
        self.mqtt.ack((mid, gen) for _t, _p, mid, _r, gen in deliveries)

    def stop(self) -> None:
        if self.mqtt is not None:
            self.mqtt.stop()
