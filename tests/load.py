"""Steady QoS1 telemetry for fault tests, counting what the broker acknowledged
(simulators/acked.py): numbered readings for one device over a persistent session."""

from __future__ import annotations

import time
import uuid

from ingest import wire
from simulators.acked import AckedPublisher
from tests.conftest import gateway_url, mqtt_client


class AckedStream(AckedPublisher):
    def __init__(self, mqtt_url: str, device: str, *, rate: float = 300.0,
                 window: int = 500) -> None:
        # A persistent session: what the broker holds for us survives its restart.
        client = mqtt_client(gateway_url(mqtt_url), f"test-stream-{uuid.uuid4().hex[:8]}",
                             persistent=True, session_expiry_s=300)
        self.device = device
        self.t0 = time.time()
        topic = wire.telemetry_topic(device)
        super().__init__(client, lambda i: topic,
                         lambda i: wire.encode_telemetry(self.ts(i), {"pm25": float(i)}),
                         rate=rate, window=window)

    def ts(self, i: int) -> float:
        """Device time of message ``i``: distinct, so each message is one row."""
        return self.t0 + i * 0.001
