"""The MQTT adapter: paho-mqtt 2.x driven by the asyncio event loop.

Translates, never decides. QoS1, a persistent MQTT 5 session (clean_start off, a long
session expiry) and ``manual_ack``: a message is acknowledged only when the caller says so
(after the batch holding it has committed); until then the broker keeps it and redelivers it
if we die. The number of unacknowledged messages in flight is bounded by the Receive
Maximum we announce, which is what bounds the hub's memory when the database stalls.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from itertools import chain
from typing import TYPE_CHECKING, cast

import paho.mqtt.client as mqtt
from paho.mqtt.client import PUBACK
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from core import clock
from core.mqtt_client import BrokerAddress, make_client, nodelay
from ingest import frames

if TYPE_CHECKING:
    from paho.mqtt.client import SocketLike

log = logging.getLogger("ingest.mqtt")


# (topic, payload, mid, received_at, session generation): what crosses from paho's thread
# to the event loop. The generation changes on every (re)connect: a packet id is only
# meaningful on the connection it arrived on.
Delivery = tuple[str, bytes, int, float, int]


# Bytes read from the socket per system call. paho asks for one packet's bytes at a time
# (command byte, each length byte, then the body: 3-4 reads per PUBLISH); serving those
# from one buffered read per 64 KiB (~400 telemetry messages) was the largest saving in
# py-spy of the ingest process.
READ_CHUNK = 65536
# How often paho's housekeeping (keepalive pings, a lost-connection check) runs.
MISC_INTERVAL_S = 1.0
# Reconnect back-off after a lost or refused connection.
RECONNECT_MIN_S = 0.2
RECONNECT_MAX_S = 5.0


# Reading resumes once what the hub holds is below this fraction of its bound: hysteresis,
# so that one acknowledged batch lets a run of messages in rather than one read at a time.
RESUME_FRACTION = 0.8

# PUBACK fixed header: packet type 4 (0x40), remaining length 2.
_PUBACK_HEAD = 0x4002


class BufferedClient(mqtt.Client):
    """paho's client with a read buffer under its packet reader.

    Overrides and reads internals of paho 2.x (``_sock_recv``, ``_sock_close``,
    ``_handle_on_message``, ``_in_packet``, ``_sock``, ``_packet_queue`` for packed
    acknowledgements; pinned below 3 in pyproject.toml and covered by
    tests/test_mqtt_adapter.py): reads return bytes from a 64 KiB
    buffer, refilled with one ``recv`` when empty. ``loop_read`` processes one packet per
    call, so the owner must keep calling it while ``buffered()`` is true (nothing would
    wake a selector for bytes already read).
    """

    _rbuf: bytes = b""
    _rpos: int = 0

    def _sock_recv(self, bufsize: int) -> bytes:
        buf, pos = self._rbuf, self._rpos
        if pos >= len(buf):
            buf = super()._sock_recv(READ_CHUNK)  # BlockingIOError when nothing is there
            if not buf:
                return buf  # the connection closed
            pos = 0
        chunk = buf[pos:pos + bufsize]
        self._rbuf, self._rpos = buf, pos + len(chunk)
        return chunk

    def _sock_close(self) -> None:
        self._rbuf, self._rpos = b"", 0
        super()._sock_close()

    def buffered(self) -> bool:
        return self._rpos < len(self._rbuf)

    def at_boundary(self) -> bool:
        """True when paho is between packets (it holds no partly read one)."""
        return self._in_packet["command"] == 0

    def fill(self) -> bool:
        """One read into the (empty) buffer; False if the connection closed or failed,
        which the caller leaves to ``loop_read`` to discover and handle."""
        if self._sock is None:
            return False
        try:
            data = self._sock.recv(READ_CHUNK)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            return False
        self._rbuf, self._rpos = data, 0
        # paho's keepalive watches this; bytes taken on the fast path count too.
        self._last_bytes_received = time.monotonic()
        return True

    def take_publishes(self, out: list[frames.Publish], v5: bool) -> None:
        """Decode the whole PUBLISH packets at the head of the buffer (the fast path);
        whatever follows them is left for ``loop_read``."""
        self._rpos = frames.split_publishes(self._rbuf, self._rpos, v5=v5, out=out)

    def _handle_on_message(self, message: mqtt.MQTTMessage) -> None:
        # paho matches every message against the per-topic callbacks first (there are none
        # here); straight to on_message. Exceptions propagate, as with
        # suppress_exceptions off.
        on_message = self.on_message
        if on_message is not None:
            on_message(self, self._userdata, message)

    def ack_many(self, mids: Sequence[int]) -> None:
        """Acknowledge QoS 1 messages with one queued write of back-to-back PUBACKs.

        ``ack(mid, 1)`` queues one packet per message, each its own ``send``; a PUBACK is
        four fixed bytes in both 3.1.1 and 5 (a success needs no reason code), and paho
        keeps no state for manual acknowledgements, so they are packed here.
        """
        if mids:
            packed = struct.pack(f">{2 * len(mids)}H",
                                 *chain.from_iterable((_PUBACK_HEAD, m) for m in mids))
            self._packet_queue(PUBACK, packed, 0, 0)


class MqttIngest:
    """Subscribes to the telemetry topics and hands each burst of messages to
    ``on_delivery``, all on the event loop's thread.

    paho runs without a thread of its own (its documented external-loop mode: ``loop_read``
    when the socket is readable, ``loop_write`` when paho has something to send,
    ``loop_misc`` once a second). One thread means no GIL hand-offs between a network
    thread and the loop, which under load cost more than the work itself. A burst is what
    one readable event yields: every whole packet in the bytes read. ``ack(deliveries)``
    acknowledges after commit, from the same thread.
    """

    def __init__(
        self,
        url: str,
        client_id: str,
        topics: Iterable[str],
        loop: asyncio.AbstractEventLoop,
        on_delivery: Callable[[list[Delivery]], None],
        *,
        share_group: str | None = None,
        receive_maximum: int = 5000,
        session_expiry_s: int = 7 * 24 * 3600,
        v311: bool = False,
        persistent: bool = True,
        max_unacked: int | None = None,
    ) -> None:
        self.addr = BrokerAddress.parse(url)
        self.topics = list(topics)
        self.loop = loop
        self.on_delivery = on_delivery
        self.share_group = share_group
        self.v311 = v311
        # threading.Events so that a caller on another thread may wait for them too.
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.received = 0
        # Messages acknowledged, and those of the current connection not yet: what the hub
        # holds in memory, bounded by the broker's in-flight window (the outage test reads it).
        self.acked = 0
        self.generation = 0
        self._received_this_gen = 0
        self._acked_this_gen = 0
        # The hub's own bound on what it holds: reading stops at this many unacknowledged
        # messages and resumes below RESUME_FRACTION of it (the broker then queues). The
        # broker's in-flight window alone did not hold it when acknowledgements resumed
        # after a database outage (29,577 held with a 10,000 window: docs/PERFORMANCE.md).
        self.max_unacked = max_unacked
        self.paused = False
        self.pauses = 0
        self._burst: list[Delivery] = []
        self._now = clock.now()
        self._sock: SocketLike | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.client = make_client(
            client_id,
            self.addr,
            persistent=persistent,
            session_expiry_s=session_expiry_s,
            receive_maximum=receive_maximum,
            manual_ack=True,
            v311=v311,
            client_class=BufferedClient,
        )
        c = self.client
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.on_socket_open = self._on_socket_open
        c.on_socket_close = self._on_socket_close
        c.on_socket_register_write = self._on_register_write
        c.on_socket_unregister_write = self._on_unregister_write

    def subscription_filters(self) -> list[str]:
        if self.share_group:
            return [f"$share/{self.share_group}/{t}" for t in self.topics]
        return list(self.topics)

    def start(self) -> None:
        """Start connecting (and reconnecting) in a task on ``loop``; call on the loop."""
        self._task = self.loop.create_task(self._run(), name="ingest.mqtt")

    def stop(self) -> None:
        """Disconnect cleanly; what was not acknowledged stays with the broker."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
        if self.client.socket() is not None:
            self.client.disconnect()
            self.client.loop_write()  # send the DISCONNECT now; nothing else will
            if self.client.socket() is not None:
                self.client._sock_close()

    def ack(self, deliveries: Iterable[tuple[int, int]]) -> None:
        """Acknowledge (mid, generation) pairs; ones from an earlier connection are skipped:
        the broker redelivers those and idempotent storage drops the copy."""
        gen = self.generation
        mids = [mid for mid, g in deliveries if g == gen and mid]
        if mids and self.client.socket() is not None:
            cast(BufferedClient, self.client).ack_many(mids)
            self.acked += len(mids)
            self._acked_this_gen += len(mids)
            if (self.paused and self.max_unacked is not None
                    and self.unacknowledged() < self.max_unacked * RESUME_FRACTION):
                self._resume()

    def _over_bound(self) -> bool:
        return (self.max_unacked is not None and self._received_this_gen + len(self._burst)
                - self._acked_this_gen >= self.max_unacked)

    def _pause(self) -> None:
        if self._sock is not None:
            self.loop.remove_reader(self._sock)
        self.paused = True
        self.pauses += 1

    def _resume(self) -> None:
        self.paused = False
        if self._sock is not None:
            self.loop.add_reader(self._sock, self._readable)
            # Bytes already in the read buffer wake no selector: take them now.
            self.loop.call_soon(self._readable)

    def unacknowledged(self) -> int:
        """Messages of the current connection received and not acknowledged yet."""
        return self._received_this_gen - self._acked_this_gen

    # ---- connection management (a task on the loop)
    async def _run(self) -> None:
        delay = RECONNECT_MIN_S
        c = self.client
        while not self._stopping:
            if c.socket() is None:
                try:
                    # The TCP connect blocks (up to paho's connect timeout for an
                    # unreachable broker): a worker thread does it; the socket callbacks
                    # it triggers hop back to the loop (see _on_socket_open).
                    await asyncio.to_thread(c.reconnect)
                    delay = RECONNECT_MIN_S
                except (OSError, mqtt.WebsocketConnectionError) as e:
                    log.warning("MQTT connect to %s:%s failed (%s); retrying in %.1fs",
                                self.addr.host, self.addr.port, e, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RECONNECT_MAX_S)
                    continue
            await asyncio.sleep(MISC_INTERVAL_S)
            if c.socket() is not None:
                c.loop_misc()

    def _on_socket_open(self, client: mqtt.Client, userdata: object,
                        sock: SocketLike) -> None:
        nodelay(client, userdata, sock)
        self._in_loop(self._watch, sock)

    def _watch(self, sock: SocketLike) -> None:
        self._sock = sock
        self.paused = False  # a new connection: its generation starts with nothing held
        self.loop.add_reader(sock, self._readable)

    def _on_socket_close(self, client: mqtt.Client, userdata: object,
                         sock: SocketLike) -> None:
        self._in_loop(self._unwatch, sock)

    def _unwatch(self, sock: SocketLike) -> None:
        self.loop.remove_reader(sock)
        self.loop.remove_writer(sock)
        if self._sock is sock:
            self._sock = None

    def _on_register_write(self, client: mqtt.Client, userdata: object,
                           sock: SocketLike) -> None:
        self._in_loop(self.loop.add_writer, sock, self._writable)

    def _on_unregister_write(self, client: mqtt.Client, userdata: object,
                             sock: SocketLike) -> None:
        self._in_loop(self.loop.remove_writer, sock)

    def _in_loop(self, fn: Callable[..., object], *args: object) -> None:
        # Only reconnect() runs off the loop (in a worker thread); everything it asks for
        # is done on the loop, in order.
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            fn(*args)
        else:
            self.loop.call_soon_threadsafe(fn, *args)

    def _readable(self) -> None:
        """Everything the socket has: whole PUBLISH packets decoded here (ingest/frames.py),
        anything else (acks, pings, a packet split across reads) through paho."""
        c = cast(BufferedClient, self.client)
        # Everything read in this event arrived together: one receive time for the burst.
        now = self._now = clock.now()
        pubs: list[frames.Publish] = []
        try:
            if c.at_boundary() and not c.buffered() and not c.fill():
                c.loop_read()  # closed or failed: paho finds out and reports it
                return
            while True:
                if c.at_boundary():
                    c.take_publishes(pubs, not self.v311)
                    if pubs:  # in arrival order with what paho hands over
                        gen = self.generation
                        self._burst.extend((p.topic, p.payload, p.mid, now, gen) for p in pubs)
                        pubs.clear()
                    if not c.buffered() or self._over_bound():
                        break  # at a packet boundary: what is buffered waits for _resume
                if c.loop_read() != mqtt.MQTT_ERR_SUCCESS or not c.buffered():
                    break
        except frames.MalformedPacket as e:
            # Not from a working broker: drop the connection; the broker redelivers
            # whatever was not acknowledged when we are back.
            log.error("malformed PUBLISH from the broker (%s); reconnecting", e)
            c.disconnect()
            c._sock_close()
        if self._burst:
            burst, self._burst = self._burst, []
            self.received += len(burst)
            self._received_this_gen += len(burst)
            self.on_delivery(burst)
        if not self.paused and self._over_bound():
            self._pause()

    def _writable(self) -> None:
        self.client.loop_write()

    # ---- paho callbacks (on the loop's thread, except during reconnect())
    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object,
                    reason_code: ReasonCode, properties: object) -> None:
        if reason_code.is_failure:
            log.error("MQTT connect refused: %s", reason_code)
            return
        self.generation += 1
        self._received_this_gen = self._acked_this_gen = 0
        if self.v311:
            client.subscribe([(f, 1) for f in self.subscription_filters()])
        else:
            opts = SubscribeOptions(qos=1)
            client.subscribe([(f, opts) for f in self.subscription_filters()])
        log.info("MQTT connected to %s:%s", self.addr.host, self.addr.port)
        self.connected.set()

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int,
                      reason_codes: list[ReasonCode], properties: object) -> None:
        failed = [str(rc) for rc in reason_codes if rc.is_failure]
        if failed:
            log.error("MQTT subscription refused: %s", ", ".join(failed))
            return
        self.subscribed.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object,
                       reason_code: ReasonCode, properties: object) -> None:
        self.connected.clear()
        self.subscribed.clear()
        if not self._stopping:
            log.warning("MQTT disconnected: %s (reconnecting)", reason_code)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        self._burst.append((msg.topic, bytes(msg.payload), msg.mid, self._now, self.generation))
