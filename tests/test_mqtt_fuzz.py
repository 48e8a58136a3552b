"""MQTT payload fuzzing (issue 8, hostile input).

(a) The pure decoder, by property: for any topic and payload it returns a value — decoded
    readings inside the limits, or a ``DecodeError`` whose code is one of the stable
    ``ERROR_CODES`` and the same on every call — and never raises.
(b) The real hub over the real broker: a few hundred hostile messages, then a good reading.
    The good one is stored, every rejected one is a dead letter with its reason, and the hub
    is still healthy.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.client import topic_matches_sub

from core.db import connect
from ingest import wire
from ingest.batch import pg_text
from tests import fuzz_payloads as fz
from tests.conftest import HubProcess, Publisher, town_database, town_doc, wait_for

TOWN = town_doc()
DEVICES = [d["id"] for d in TOWN["devices"]][:3]
UNITS = [u["id"] for u in TOWN["units"]][:2]
NOW = 1767225600.0
ALL_TOPICS = fz.topics(DEVICES, UNITS)


def _check(topic: str, payload: bytes, now: float) -> None:
    res = wire.decode(topic, payload, now)
    if isinstance(res, wire.DecodeError):
        assert res.code in wire.ERROR_CODES, res
        assert isinstance(res.detail, str)
        again = wire.decode(topic, payload, now)
        assert isinstance(again, wire.DecodeError) and again.code == res.code  # stable
        pg_text(res.detail).encode("utf-8")  # storable as a dead letter
        assert "\x00" not in pg_text(res.detail)
        return
    assert isinstance(res, wire.Decoded), res
    lim = wire.DEFAULT_LIMITS
    for r in res.readings:
        assert math.isfinite(r.value) and abs(r.value) <= lim.max_abs_value
        assert now - lim.max_past_s <= r.ts <= now + lim.max_future_s
        assert wire._ID_RE.fullmatch(r.device_id) and wire._ID_RE.fullmatch(r.metric)
    for p in res.positions:
        assert -90 <= p.lat <= 90 and -180 <= p.lon <= 180
        assert now - lim.max_past_s <= p.ts <= now + lim.max_future_s
    assert len(res.readings) <= lim.max_records and len(res.positions) <= lim.max_records


FUZZ = settings(max_examples=400, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(topic=st.one_of(st.sampled_from(ALL_TOPICS), st.text(max_size=80)),
       payload=fz.payloads(NOW))
def test_decoder_never_raises_and_codes_are_stable(topic: str, payload: bytes) -> None:
    _check(topic, payload, NOW)


@FUZZ
@given(payload=st.one_of(fz.senml_pack(NOW), fz.nested(NOW)))
def test_senml_variants(payload: bytes) -> None:
    _check(wire.senml_topic("src-fuzz"), payload, NOW)


@FUZZ
@given(payload=st.one_of(fz.owntracks(NOW), fz.gps(NOW), fz.nested(NOW)))
def test_position_variants(payload: bytes) -> None:
    _check(f"owntracks/fuzz/{UNITS[0]}", payload, NOW)
    _check(wire.gps_topic(UNITS[0]), payload, NOW)


@pytest.mark.parametrize(("topic", "payload"), [
    # Found by this fuzz: msgspec recursed into ignored fields and raised RecursionError.
    (wire.senml_topic("g"), b'[{"n":"pm25","v":1,"x":' + fz.deep(1000) + b"}]"),
    (wire.senml_topic("g"), b'[{"n":"pm25","v":1,"x_":' + fz.deep(1000) + b"}]"),
    ("owntracks/a/u", b'{"_type":"location","x":' + fz.deep(1000) + b"}"),
])
def test_deep_nesting_is_a_schema_error(topic: str, payload: bytes) -> None:
    res = wire.decode(topic, payload, NOW)
    assert isinstance(res, wire.DecodeError) and res.code == "bad_schema"


def test_detail_quoting_a_nul_is_storable() -> None:
    # Found by this fuzz: an unknown field named "\u0000" is quoted raw in the detail, and
    # PostgreSQL refuses NUL in text: the dead letter's batch failed for ever.
    res = wire.decode(wire.telemetry_topic("d"), b'{"ts":1,"values":{},"\\u0000":1}', NOW)
    assert isinstance(res, wire.DecodeError) and "\x00" in res.detail
    assert "\x00" not in pg_text(res.detail)
    assert pg_text("x\ud800y") == "x\\ud800y" and pg_text("plain") == "plain"


# ------------------------------------------------------------------ against the real hub
SEED = 8_2026
COUNT = 300


@pytest_asyncio.fixture
async def fuzz_db(base_db_url: str) -> AsyncIterator[str]:
    async with town_database(base_db_url, "z") as url:
        yield url


async def test_hub_survives_hostile_messages(fuzz_db: str, mqtt_url: str) -> None:
    hub = HubProcess(fuzz_db, mqtt_url, roles="ingest,web").start()
    pub = Publisher(mqtt_url)
    conn = await connect(fuzz_db)
    try:
        now = time.time()
        messages = fz.hostile_messages(random.Random(SEED), now, DEVICES, UNITS, COUNT)
        known_devices = {d["id"] for d in TOWN["devices"]}
        known_units = {u["id"] for u in TOWN["units"]}
        expected: Counter[tuple[str, str]] = Counter()
        for topic, payload in messages:
            pub.publish(topic, payload)
            if not any(topic_matches_sub(f, topic) for f in wire.SUBSCRIPTIONS):
                continue  # the broker does not route it to the hub: nothing to see
            res = wire.decode(topic, payload, time.time())
            if isinstance(res, wire.DecodeError):
                expected[(topic, res.code)] += 1
            elif any(r.device_id not in known_devices for r in res.readings):
                expected[(topic, "unknown_device")] += 1
            elif any(p.unit_id not in known_units for p in res.positions):
                expected[(topic, "unknown_unit")] += 1
        good_ts = time.time()
        pub.publish(wire.telemetry_topic(DEVICES[1]),
                    wire.encode_telemetry(good_ts, {"fuzz_probe": 42.0}))
        await wait_for(lambda: conn.fetchval(
            "SELECT count(*) FROM telemetry WHERE device_id = $1 AND metric = 'fuzz_probe'",
            DEVICES[1]), timeout=20)
        total = sum(expected.values())
        assert total > COUNT // 2, "the generator should mostly produce rejects"
        try:
            await wait_for(lambda: conn.fetchval(
                "SELECT count(*) >= $1 FROM dead_letters", total), timeout=20)
        except AssertionError:
            pass  # the comparison below says what is missing
        rows = await conn.fetch("SELECT topic, reason, detail FROM dead_letters")
        got = Counter((r["topic"], r["reason"]) for r in rows)
        assert got == expected, f"seed {SEED}: {got - expected} / {expected - got}"
        assert all(r["reason"] and r["detail"] for r in rows)
        async with hub.async_client() as client:
            health = (await client.get("/api/health")).json()
            assert health["status"] == "ok" and health["mqtt"] == "subscribed"
            stats = (await client.get("/api/ingest/stats")).json()
            assert stats["db_ok"] is True and sum(stats["rejected"].values()) == total
        assert hub.proc is not None and hub.proc.poll() is None
    finally:
        await conn.close()
        pub.close()
        hub.stop()
