"""The MQTT client factory every part of the hub and its simulators connects with: a paho
2.x client (MQTT 5 or 3.1.1) with TCP_NODELAY, bounded queues, and the broker address parsed
from a ``mqtt://user:password@host:port`` URL. Below ingest (ingest/mqtt.py drives it on the
event loop) and dispatch (dispatch/command_sender.py publishes unit commands with it).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

if TYPE_CHECKING:
    from paho.mqtt.client import SocketLike


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



def nodelay(client: mqtt.Client, userdata: object, sock: SocketLike) -> None:
    # Nagle's algorithm costs about 9 ms per hop here; every MQTT socket turns it off.
    try:
        cast(socket.socket, sock).setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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
    client_class: type[mqtt.Client] = mqtt.Client,
) -> mqtt.Client:
    """A paho v2 client speaking MQTT 5 (or 3.1.1) with TCP_NODELAY on its socket.

    3.1.1 has no per-message property objects, which paho builds for every MQTT 5 PUBLISH
    (the largest single cost of the ingest process in py-spy); its session lives until the
    broker's ``persistent_client_expiration`` and its in-flight window is the broker's
    ``max_inflight_messages`` (both set in the broker configuration hubctl writes).
    """
    if v311:
        client = client_class(CallbackAPIVersion.VERSION2, client_id=client_id,
                              protocol=mqtt.MQTTv311, clean_session=not persistent,
                              manual_ack=manual_ack)
        client.on_socket_open = nodelay
        if addr.username:
            client.username_pw_set(addr.username, addr.password)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(60000)
        client.connect_async(addr.host, addr.port, keepalive=30)
        return client
    client = client_class(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )
    client.on_socket_open = nodelay
    if addr.username:
        client.username_pw_set(addr.username, addr.password)
    client.max_inflight_messages_set(1000)
    # paho queues outgoing messages without limit by default; a bound makes publish() fail
    # fast instead of growing memory (and message ids wrap at 65,535).
    client.max_queued_messages_set(60000)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    if persistent and session_expiry_s:
        props.SessionExpiryInterval = session_expiry_s
    if receive_maximum:
        props.ReceiveMaximum = receive_maximum
    client.connect_async(
        addr.host, addr.port, keepalive=30, clean_start=not persistent, properties=props
    )
    return client
