"""Steady QoS1 telemetry for fault tests, counting what the broker acknowledged.

``AckedStream`` publishes numbered readings for one device from a thread, over a persistent
MQTT session, and records which ones got a PUBACK. It never waits on a single message, so it
keeps going (paho queues, bounded by ``window``) through a broker restart; paho resends the
unacknowledged ones when it reconnects.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict, deque
from typing import Any

from ingest import wire
from tests.conftest import gateway_url, mqtt_client


class AckedStream:
    def __init__(self, mqtt_url: str, device: str, *, rate: float = 300.0,
                 window: int = 500) -> None:
        # A persistent session: what the broker holds for us survives its restart.
        self.client = mqtt_client(gateway_url(mqtt_url), f"test-stream-{uuid.uuid4().hex[:8]}",
                                  persistent=True, session_expiry_s=300)
        self.client.on_publish = self._on_publish
        self.device = device
        self.rate = rate
        self.window = window
        self.t0 = time.time()
        self.sent = 0
        # mid -> message numbers published with it, in order; PUBACKed mids in arrival
        # order. paho reuses a mid only after its message was acknowledged, so the k-th
        # PUBACK for a mid acknowledges the k-th message published with it.
        self._by_mid: dict[int, list[int]] = defaultdict(list)
        self._acked_mids: deque[int] = deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def ts(self, i: int) -> float:
        """Device time of message ``i``: distinct, so each message is one row."""
        return self.t0 + i * 0.001

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any,
                    properties: Any) -> None:
        self._acked_mids.append(mid)  # paho's thread; deque.append is atomic

    def _run(self) -> None:
        topic = wire.telemetry_topic(self.device)
        while not self._stop.is_set():
            if self.sent - len(self._acked_mids) >= self.window:
                time.sleep(0.01)  # backpressure: the broker is away or slow
                continue
            info = self.client.publish(topic, wire.encode_telemetry(
                self.ts(self.sent), {"pm25": float(self.sent)}), qos=1)
            self._by_mid[info.mid].append(self.sent)
            self.sent += 1
            time.sleep(1.0 / self.rate)

    def start(self) -> AckedStream:
        self.client.loop_start()
        deadline = time.monotonic() + 10
        while not self.client.is_connected():
            if time.monotonic() > deadline:
                raise RuntimeError("stream could not connect to the broker")
            time.sleep(0.02)
        self._thread.start()
        return self

    def stop(self, drain_s: float = 20.0) -> None:
        """Stop publishing; wait up to ``drain_s`` for the outstanding PUBACKs."""
        self._stop.set()
        self._thread.join(30)
        deadline = time.monotonic() + drain_s
        while len(self._acked_mids) < self.sent and time.monotonic() < deadline:
            time.sleep(0.05)
        self.client.disconnect()
        self.client.loop_stop()

    def acked(self) -> set[int]:
        """Numbers of the messages the broker acknowledged."""
        count: dict[int, int] = defaultdict(int)
        for mid in list(self._acked_mids):
            count[mid] += 1
        return {i for mid, n in count.items() for i in self._by_mid[mid][:n]}
