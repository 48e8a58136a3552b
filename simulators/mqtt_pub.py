"""A QoS 1 MQTT publisher for simulators and benchmarks, with backpressure.

paho-mqtt queues every ``publish()`` it is given and numbers messages with 16-bit ids that
wrap at 65,535: a publisher that keeps calling ``publish()`` faster than the broker
acknowledges grows paho's queue without bound, and once 65,535 messages are outstanding a
new message reuses the id of an unacknowledged one (paho refuses it as "queue full", so it
is lost without an exception). ``Publisher`` therefore keeps at most ``window`` messages
unacknowledged (published but no PUBACK yet) and makes ``publish()`` wait for room.

``InflightWindow`` is the pure counting part (no I/O, no clock) so that it can be tested
without a broker; ``Publisher`` is the thin shell over paho (MQTT 5, TCP_NODELAY through
``ingest.mqtt.make_client``). paho's network thread meets asyncio in one place: ``_on_ack``
calls ``loop.call_soon_threadsafe`` only when a publisher is waiting for room, and only
once the window has drained to its low-water mark, so steady acks cost no loop wake-ups.

Run ``python -m simulators.mqtt_pub --count 200000`` to measure the achievable rate.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from core.mqtt_client import BrokerAddress, make_client
from simulators.mqtt_login import gateway_url, without_password

log = logging.getLogger("simulators.mqtt_pub")

# Unacknowledged messages allowed by default (the broker's Receive Maximum may lower it).
# Enough to cover the round trip at well over 10,000 msg/s on loopback; 1,000 x ~200 bytes
# is a negligible buffer and far below the 65,535 ids paho can tell apart.
DEFAULT_WINDOW = 1000
# paho message ids are 16-bit and 0 is reserved: more outstanding messages than this would
# reuse an id still waiting for its PUBACK.
MAX_WINDOW = 65_535
# A blocked publisher is woken when the outstanding count has fallen to this fraction of the
# window: one loop wake-up per quarter window instead of one per PUBACK.
LOW_WATER_FRACTION = 0.75


class InflightWindow:
    """Counts messages handed to the client and not yet acknowledged (thread-safe, pure).

    ``try_acquire`` is called before each publish (event-loop thread), ``release`` on each
    PUBACK (paho's thread) or when the client refused the message. ``release`` returns True
    exactly when a publisher had been refused room and the window has drained to the
    low-water mark: the caller then wakes it.
    """

    def __init__(self, limit: int = DEFAULT_WINDOW) -> None:
        if not 1 <= limit <= MAX_WINDOW:
            raise ValueError(f"window must be 1..{MAX_WINDOW}, got {limit}")
        self.limit = limit
        self.low_water = max(0, min(limit - 1, int(limit * LOW_WATER_FRACTION)))
        self.outstanding = 0
        self.published = 0  # accepted by the client (counted at acquire)
        self.acked = 0  # PUBACK with a success reason code
        self.refused = 0  # PUBACK with a failure reason code (e.g. not authorised)
        self.dropped = 0  # the client would not take the message (its queue was full)
        self.blocked = False  # a publisher is waiting for room
        self._lock = threading.Lock()

    def set_limit(self, limit: int) -> None:
        """Change the limit (the broker's Receive Maximum may be lower than ours)."""
        if not 1 <= limit <= MAX_WINDOW:
            raise ValueError(f"window must be 1..{MAX_WINDOW}, got {limit}")
        with self._lock:
            self.limit = limit
            self.low_water = max(0, min(limit - 1, int(limit * LOW_WATER_FRACTION)))

    def try_acquire(self) -> bool:
        """Take one slot; False (and ``blocked`` set) when the window is full."""
        with self._lock:
            if self.outstanding >= self.limit:
                self.blocked = True
                return False
            self.outstanding += 1
            self.published += 1
            return True

    def release(self, outcome: str = "acked") -> bool:
        """Give a slot back. ``outcome`` is ``acked``, ``refused`` or ``dropped``.

        Returns True when a blocked publisher should be woken now.
        """
        with self._lock:
            if self.outstanding <= 0:
                raise RuntimeError("release without a matching acquire")
            self.outstanding -= 1
            if outcome == "acked":
                self.acked += 1
            elif outcome == "refused":
                self.refused += 1
            elif outcome == "dropped":
                self.dropped += 1
                self.published -= 1
            else:
                raise ValueError(f"unknown outcome {outcome!r}")
            if self.blocked and self.outstanding <= self.low_water:
                self.blocked = False
                return True
            return False


@dataclass(frozen=True, slots=True)
class RateReport:
    published: int
    acked: int
    refused: int
    dropped: int
    outstanding: int
    rate: float  # acknowledged messages per second since the previous report
    mean_rate: float  # acknowledged messages per second since start


class Publisher:
    """QoS 1 publisher with a bounded number of unacknowledged messages.

    Use from one asyncio event loop: ``await start()``, ``await publish(topic, payload)``
    (waits while the window is full), ``report()``, ``await stop()``.
    """

    def __init__(self, addr: BrokerAddress, client_id: str, *,
                 window: int = DEFAULT_WINDOW, qos: int = 1) -> None:
        self.addr = addr
        self.qos = qos
        self.requested_window = window
        self.window = InflightWindow(window)
        self._stopping = False
        self.connected = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._room: asyncio.Event | None = None
        self._started_at = time.monotonic()
        self._last = (self._started_at, 0)
        self.client = make_client(client_id, addr, persistent=False)
        # paho's own in-flight limit rescans every outstanding message on each PUBACK
        # (Client._update_inflight), so acks cost O(outstanding): measured here, 15k msg/s
        # with 100 outstanding, 6k with 1,000. Our window is the limit instead (0 = paho
        # sends at once; it still keeps unacknowledged messages to resend after a
        # reconnect). make_client has already called connect_async, after which paho's
        # public setter refuses any change; no message exists yet, so setting the field
        # directly is safe. Without it only speed suffers, never the bound.
        self.client._max_inflight_messages = 0
        self.client.on_publish = self._on_ack
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect

    async def start(self, connect_timeout: float = 10.0) -> bool:
        """Start paho's network thread; True once connected (False after the timeout:
        publishing still works, messages wait in the window until the broker is back)."""
        self._loop = asyncio.get_running_loop()
        self._room = asyncio.Event()
        self._started_at = time.monotonic()
        self._last = (self._started_at, 0)
        self.client.loop_start()
        deadline = time.monotonic() + connect_timeout
        while not self.connected.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # polled, so a cancellation (Ctrl-C) ends it at once
        return self.connected.is_set()

    async def publish(self, topic: str, payload: bytes) -> None:
        """Publish with QoS 1, waiting while ``window`` messages are unacknowledged."""
        window = self.window
        while not window.try_acquire():
            assert self._room is not None, "call start() first"
            self._room.clear()
            if window.outstanding < window.limit:  # an ack raced the clear: retry at once
                continue
            await self._room.wait()
        info = self.client.publish(topic, payload, qos=self.qos)
        # NO_CONN is fine: paho keeps the message and sends it after reconnecting.
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            self._release("dropped")

    def try_publish(self, topic: str, payload: bytes) -> bool:
        """Publish without waiting; False (message not sent) when the window is full."""
        if not self.window.try_acquire():
            return False
        info = self.client.publish(topic, payload, qos=self.qos)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            self._release("dropped")
            return False
        return True

    async def flush(self, within_s: float) -> bool:
        """Wait until every published message is acknowledged (True), at most ``within_s``."""
        deadline = time.monotonic() + within_s
        while self.window.outstanding and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.window.outstanding == 0

    async def stop(self, flush_timeout: float = 1.0, join_timeout: float = 1.5) -> None:
        """Wait up to ``flush_timeout`` for outstanding acks, disconnect, and give paho's
        thread up to ``join_timeout`` to end (it is a daemon thread: never waited on
        longer, so Ctrl-C stays quick even while paho sleeps between reconnects)."""
        if self.connected.is_set():
            await self.flush(flush_timeout)
        self._stopping = True
        self.client.disconnect()
        stopper = threading.Thread(target=self.client.loop_stop, daemon=True,
                                   name="mqtt-pub-stop")
        stopper.start()
        deadline = time.monotonic() + join_timeout
        while stopper.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def report(self) -> RateReport:
        """Counters and achieved rates; the rate covers the time since the last report."""
        now = time.monotonic()
        w = self.window
        t0, acked0 = self._last
        self._last = (now, w.acked)
        return RateReport(
            published=w.published, acked=w.acked, refused=w.refused, dropped=w.dropped,
            outstanding=w.outstanding,
            rate=(w.acked - acked0) / max(now - t0, 1e-9),
            mean_rate=w.acked / max(now - self._started_at, 1e-9),
        )

    # ---- paho's thread
    def _release(self, outcome: str) -> None:
        if self.window.release(outcome) and self._loop is not None and self._room is not None:
            self._loop.call_soon_threadsafe(self._room.set)

    def _on_ack(self, client: mqtt.Client, userdata: object, mid: int,
                reason_code: ReasonCode, properties: object) -> None:
        self._release("refused" if reason_code.is_failure else "acked")

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object,
                    reason_code: ReasonCode, properties: object) -> None:
        if reason_code.is_failure:
            log.error("MQTT connect to %s:%s refused: %s", self.addr.host, self.addr.port,
                      reason_code)
            return
        # MQTT 5: the broker says how many unacknowledged QoS 1 messages it accepts from us
        # (Receive Maximum, 65,535 when absent); exceeding it gets us disconnected, and paho
        # does not enforce it, so the window does.
        receive_max = getattr(properties, "ReceiveMaximum", None) or MAX_WINDOW
        limit = min(self.requested_window, int(receive_max))
        if limit != self.window.limit:
            self.window.set_limit(limit)
        log.info("MQTT publisher connected to %s:%s (window %d, broker Receive Maximum %s)",
                 self.addr.host, self.addr.port, limit, receive_max)
        self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object,
                       reason_code: ReasonCode, properties: object) -> None:
        if self.connected.is_set() and not self._stopping:
            log.warning("MQTT publisher disconnected: %s (paho reconnects; unacknowledged "
                        "messages are resent)", reason_code)
        self.connected.clear()


# ---------------------------------------------------------------- rate benchmark

async def _bench(url: str, count: int, window: int, topic: str, size: int) -> RateReport:
    pub = Publisher(BrokerAddress.parse(url), f"gridhub-pubbench-{os.getpid()}", window=window)
    if not await pub.start():
        raise SystemExit(f"could not connect to {without_password(url)}")
    payload = b"x" * size
    t0 = time.monotonic()
    for _ in range(count):
        await pub.publish(topic, payload)
    await pub.flush(60.0)
    elapsed = time.monotonic() - t0
    rep = pub.report()
    await pub.stop()
    print(f"{rep.acked} of {count} acknowledged in {elapsed:.2f} s: "
          f"{rep.acked / elapsed:,.0f} msg/s (window {window}, {size} B payload, "
          f"refused {rep.refused}, dropped {rep.dropped})")
    return rep


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Measure the QoS 1 publish rate.")
    parser.add_argument("--url", default=gateway_url("BENCH"),
                        help="mqtt://user:pass@host:port (default: HUB_BENCH_MQTT_URL)")
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW)
    # Not a topic the hub ingests: the benchmark measures the broker path only.
    parser.add_argument("--topic", default="gridhub-bench/publisher")
    parser.add_argument("--size", type=int, default=120, help="payload bytes")
    args = parser.parse_args(argv)
    asyncio.run(_bench(args.url, args.count, args.window, args.topic, args.size))


if __name__ == "__main__":
    main()
