"""A paced QoS 1 publisher that records which messages the broker acknowledged.

Used by ``./hubctl chaos`` and the fault tests: message ``i`` (0, 1, 2, ...) goes to
``topic_of(i)`` with ``payload_of(i)``; ``acked()`` says which numbers got a PUBACK. It
never waits on a single message, so it keeps going through a broker restart (paho queues,
bounded by ``window`` unacknowledged messages) and paho resends the unacknowledged ones on
the persistent session when it reconnects.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any, Self

import paho.mqtt.client as mqtt

from simulators.bench.loadgen_lines import TokenBucket


class AckedPublisher:
    def __init__(self, client: mqtt.Client, topic_of: Callable[[int], str],
                 payload_of: Callable[[int], bytes], *, rate: float, window: int) -> None:
        self.client = client
        self.client.on_publish = self._on_publish
        self.topic_of = topic_of
        self.payload_of = payload_of
        self.rate = rate
        self.window = window
        self.sent = 0
        # mid -> message numbers published with it, in order; PUBACKed mids in arrival
        # order. paho reuses a mid only after its message was acknowledged, so the k-th
        # PUBACK for a mid acknowledges the k-th message published with it.
        self._by_mid: dict[int, list[int]] = defaultdict(list)
        self._acked_mids: deque[int] = deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any,
                    properties: Any) -> None:
        self._acked_mids.append(mid)  # paho's thread; deque.append is atomic

    def _run(self) -> None:
        bucket = TokenBucket(self.rate, self.rate * 0.1, time.monotonic())
        while not self._stop.is_set():
            room = self.window - (self.sent - len(self._acked_mids))
            for _ in range(bucket.take(time.monotonic(), max(0, room))):
                i = self.sent
                info = self.client.publish(self.topic_of(i), self.payload_of(i), qos=1)
                self._by_mid[info.mid].append(i)
                self.sent += 1
            time.sleep(0.005)

    def start(self, connect_timeout_s: float = 15.0) -> Self:
        self.client.loop_start()
        deadline = time.monotonic() + connect_timeout_s
        while not self.client.is_connected():
            if time.monotonic() > deadline:
                raise RuntimeError("publisher could not connect to the broker")
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
