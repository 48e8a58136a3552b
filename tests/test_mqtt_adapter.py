"""The ingest MQTT adapter (ingest/mqtt.py) against the real test broker.

The adapter drives paho from the event loop and reaches into a few of paho's internals for
speed (buffered reads, packed acknowledgements); these tests pin what that must not break:
every byte of every packet arrives whatever the buffer boundaries, an acknowledged message
is gone from the broker, an unacknowledged one comes back to the next session.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from urllib.parse import unquote, urlsplit

import pytest

from hub import mqtt_files
from ingest.mqtt import READ_CHUNK, Delivery, MqttIngest
from tests.conftest import Publisher, ThrowawayMosquitto, wait_for

HUB_PASSWORD = mqtt_files.new_password()
# conftest's Publisher logs in as the tests' gateway (HUB_TEST_MQTT_URL): the private broker
# gets that account too.
_gw = urlsplit(os.environ.get("HUB_TEST_MQTT_URL", ""))
GW_USER = unquote(_gw.username) if _gw.username else "gw"
GW_PASSWORD = unquote(_gw.password) if _gw.password else mqtt_files.new_password()


@pytest.fixture(scope="module")
def broker() -> Iterator[ThrowawayMosquitto]:
    """A private broker: the shared one's other hubs would take these messages too."""
    b = ThrowawayMosquitto().with_accounts().start()
    yield b
    b.destroy()


@pytest.fixture(scope="module")
def hub_url(broker: ThrowawayMosquitto) -> str:
    return broker.hub_url


@pytest.fixture(scope="module")
def gateway(broker: ThrowawayMosquitto) -> Iterator[Publisher]:
    pub = Publisher(broker.gateway_url)
    yield pub
    pub.close()


def _adapter(mqtt_url: str, client_id: str, topic: str, got: list[Delivery],
             bursts: list[int]) -> MqttIngest:
    def on_delivery(batch: list[Delivery]) -> None:
        bursts.append(len(batch))
        got.extend(batch)

    return MqttIngest(mqtt_url, client_id, [topic], asyncio.get_running_loop(), on_delivery,
                      session_expiry_s=60, v311=True)


async def _subscribed(m: MqttIngest) -> None:
    m.start()
    assert await asyncio.to_thread(m.subscribed.wait, 10), "adapter never subscribed"


def _topic(tag: str, i: int | str) -> str:
    return f"gridhub/v1/devices/{tag}-{i}/telemetry"


def _index(topic: str) -> int:
    return int(topic.split("/")[3].rsplit("-", 1)[1])


async def test_every_packet_arrives_whole_across_buffer_boundaries(
        hub_url: str, gateway: Publisher) -> None:
    tag = uuid.uuid4().hex[:8]
    publisher = gateway
    got: list[Delivery] = []
    bursts: list[int] = []
    m = _adapter(hub_url, f"adapter-{tag}", "gridhub/v1/devices/+/telemetry", got, bursts)
    await _subscribed(m)
    try:
        # Small messages, then ones straddling and exceeding the read chunk, in one stream:
        # whole packets must come out whatever the split of the bytes.
        sizes = [20] * 300 + [READ_CHUNK - 7, READ_CHUNK + 1, 3 * READ_CHUNK] + [5] * 300
        sent = [(_topic(tag, i), bytes([i % 251]) * n) for i, n in enumerate(sizes)]

        def publish_all() -> None:
            for t, p in sent:
                publisher.client.publish(t, p, qos=1)
            publisher.publish(_topic(tag, "end"), b"end")

        await asyncio.to_thread(publish_all)
        await wait_for(lambda: _true(len(got) >= len(sent) + 1), timeout=20)
        by_topic = {t: p for t, p, *_ in got}
        for t, p in sent:
            assert by_topic[t] == p, f"{t}: {len(by_topic.get(t, b''))} bytes, sent {len(p)}"
        # Many messages come per readable event: that is the point of the buffer.
        assert max(bursts) > 1
        m.ack((mid, gen) for _, _, mid, _, gen in got)
        await asyncio.sleep(0.3)
    finally:
        m.stop()


async def test_acknowledged_messages_are_gone_and_the_rest_come_back(
        hub_url: str, gateway: Publisher) -> None:
    tag = uuid.uuid4().hex[:8]
    publisher = gateway
    mqtt_url = hub_url
    topic = "gridhub/v1/devices/+/telemetry"
    client_id = f"adapter-ack-{tag}"
    got: list[Delivery] = []
    m = _adapter(mqtt_url, client_id, topic, got, [])
    await _subscribed(m)
    n = 400
    await asyncio.to_thread(
        lambda: [publisher.publish(_topic(tag, i), str(i)) for i in range(n)])
    await wait_for(lambda: _true(len(got) >= n), timeout=20)
    # Acknowledge the even ones (packed into one write), keep the odd ones unacknowledged.
    m.ack((mid, gen) for t, _, mid, _, gen in got if _index(t) % 2 == 0)
    await asyncio.sleep(0.5)
    m.stop()
    await asyncio.sleep(0.3)

    # The same client id resumes its persistent session: the broker redelivers exactly
    # the messages that were never acknowledged.
    again: list[Delivery] = []
    m2 = _adapter(mqtt_url, client_id, topic, again, [])
    await _subscribed(m2)
    try:
        await wait_for(lambda: _true(len(again) >= n // 2), timeout=20)
        await asyncio.sleep(0.5)  # nothing more may follow
        redelivered = sorted(_index(t) for t, *_ in again)
        assert redelivered == list(range(1, n, 2))
        m2.ack((mid, gen) for _, _, mid, _, gen in again)
        await asyncio.sleep(0.3)
    finally:
        m2.stop()


async def _true(value: bool) -> bool:
    return value
