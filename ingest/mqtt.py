"""The MQTT adapter: paho-mqtt 2.x in its own thread, handed to asyncio in one place.

Translates, never decides. QoS1, a persistent MQTT 5 session (clean_start off, a long
session expiry) and ``manual_ack``: a message is acknowledged only when the caller says so
(after the batch holding it has committed); until then the broker keeps it and redelivers it
if we die. The number of unacknowledged messages in flight is bounded by the Receive
Maximum we announce, which is what bounds the hub's memory when the database stalls.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

log = logging.getLogger("ingest.mqtt")


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None
    password: str | None

    @staticmethod
    def parse(url: str) -> BrokerAddress:
        u = urlsplit(url)
        if u.scheme not in ("mqtt", "tcp"):
            raise ValueError(f"unsupported MQTT URL scheme {u.scheme!r} (use mqtt://host:port)")
        return BrokerAddress(
            u.hostname or "127.0.0.1",
            u.port or 1883,
            unquote(u.username) if u.username else None,
            unquote(u.password) if u.password else None,
        )


# (topic, payload, mid, received_at, session generation): what crosses from paho's thread
# to the event loop. The generation changes on every (re)connect: a packet id is only
# meaningful on the connection it arrived on.
Delivery = tuple[str, bytes, int, float, int]


def _nodelay(client: mqtt.Client, userdata: object, sock: socket.socket) -> None:
    # Nagle's algorithm costs about 9 ms per hop here; every MQTT socket turns it off.
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


def make_client(
    client_id: str,
    addr: BrokerAddress,
    *,
    persistent: bool = True,
    session_expiry_s: int = 0,
    receive_maximum: int | None = None,
    manual_ack: bool = False,
    v311: bool = False,
) -> mqtt.Client:
    """A paho v2 client speaking MQTT 5 (or 3.1.1) with TCP_NODELAY on its socket.

    3.1.1 has no per-message property objects, which paho builds for every MQTT 5 PUBLISH
    (the largest single cost of the ingest process in py-spy); its session lives until the
    broker's ``persistent_client_expiration`` and its in-flight window is the broker's
    ``max_inflight_messages`` (both set in the broker configuration hubctl writes).
    """
    if v311:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv311, clean_session=not persistent,
                             manual_ack=manual_ack)
        client.on_socket_open = _nodelay
        if addr.username:
            client.username_pw_set(addr.username, addr.password)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(60000)
        client.connect_async(addr.host, addr.port, keepalive=30)
        return client
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )
    client.on_socket_open = _nodelay
    if addr.username:
        client.username_pw_set(addr.username, addr.password)
    client.max_inflight_messages_set(1000)
    # paho queues outgoing messages without limit by default; a bound makes publish() fail
    # fast instead of growing memory (and message ids wrap at 65,535).
    client.max_queued_messages_set(60000)
    props = Properties(PacketTypes.CONNECT)
    if persistent and session_expiry_s:
        props.SessionExpiryInterval = session_expiry_s
    if receive_maximum:
        props.ReceiveMaximum = receive_maximum
    client.connect_async(
        addr.host, addr.port, keepalive=30, clean_start=not persistent, properties=props
    )
    return client


class MqttIngest:
    """Subscribes to the telemetry topics and hands each message to ``on_delivery``.

    ``on_delivery`` runs on the event loop thread (the one hop from paho's thread).
    ``ack(mids)`` acknowledges messages; it may be called from the event loop.
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
    ) -> None:
        self.addr = BrokerAddress.parse(url)
        self.topics = list(topics)
        self.loop = loop
        self.on_delivery = on_delivery
        self.share_group = share_group
        self.v311 = v311
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.received = 0
        self.generation = 0
        # Messages from paho's thread are gathered here and handed over in one
        # call_soon_threadsafe per burst rather than one per message (it is ~2 µs each).
        self._inbox: list[Delivery] = []
        self._inbox_lock = threading.Lock()
        self._handoff_pending = False
        self.client = make_client(
            client_id,
            self.addr,
            persistent=True,
            session_expiry_s=session_expiry_s,
            receive_maximum=receive_maximum,
            manual_ack=True,
            v311=v311,
        )
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    def subscription_filters(self) -> list[str]:
        if self.share_group:
            return [f"$share/{self.share_group}/{t}" for t in self.topics]
        return list(self.topics)

    def start(self) -> None:
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def ack(self, deliveries: Iterable[tuple[int, int]]) -> None:
        """Acknowledge (mid, generation) pairs; ones from an earlier connection are skipped:
        the broker redelivers those and idempotent storage drops the copy."""
        gen = self.generation
        for mid, g in deliveries:
            if g == gen and mid:
                self.client.ack(mid, 1)

    # ---- paho thread
    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object,
                    reason_code: mqtt.ReasonCode, properties: object) -> None:
        if reason_code.is_failure:
            log.error("MQTT connect refused: %s", reason_code)
            return
        self.generation += 1
        if self.v311:
            client.subscribe([(f, 1) for f in self.subscription_filters()])
        else:
            opts = SubscribeOptions(qos=1)
            client.subscribe([(f, opts) for f in self.subscription_filters()])
        log.info("MQTT connected to %s:%s", self.addr.host, self.addr.port)
        self.connected.set()

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int,
                      reason_codes: list[mqtt.ReasonCode], properties: object) -> None:
        failed = [str(rc) for rc in reason_codes if rc.is_failure]
        if failed:
            log.error("MQTT subscription refused: %s", ", ".join(failed))
            return
        self.subscribed.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object,
                       reason_code: mqtt.ReasonCode, properties: object) -> None:
        self.connected.clear()
        self.subscribed.clear()
        log.warning("MQTT disconnected: %s (paho reconnects)", reason_code)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        item = (msg.topic, msg.payload, msg.mid, time.time(), self.generation)
        with self._inbox_lock:
            self._inbox.append(item)
            if self._handoff_pending:
                return
            self._handoff_pending = True
        self.loop.call_soon_threadsafe(self._handoff)

    # ---- event loop thread
    def _handoff(self) -> None:
        with self._inbox_lock:
            batch, self._inbox = self._inbox, []
            self._handoff_pending = False
        self.received += len(batch)
        self.on_delivery(batch)
