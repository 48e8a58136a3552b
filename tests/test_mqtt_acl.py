"""Per-device MQTT credentials and ACLs against a real Mosquitto and a real hub.

A private broker (tests/conftest.ThrowawayMosquitto, the real scripts/mosquitto.conf.in) and a
hub on a scratch database with the demo town, which renders that broker's password and ACL
files and reloads it (SIGHUP) when accounts change through the API. The shared test broker is
never reloaded here.
"""

from __future__ import annotations

import queue
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import httpx
import paho.mqtt.client as mqtt
import pytest_asyncio

from core.db import connect
from hub import mqtt_accounts
from ingest import wire
from ingest.mqtt import BrokerAddress, make_client
from simulators.mqtt_login import mosquitto_client_env
from tests.conftest import HubProcess, ThrowawayMosquitto, town_database, wait_for

HUB_PASSWORD = "hub-" + uuid.uuid4().hex
GW_PASSWORD = "gw-" + uuid.uuid4().hex
QUIET_S = 1.0  # how long "nothing arrives" is watched: loopback delivery takes ~1 ms


@dataclass
class Env:
    db_url: str
    broker: ThrowawayMosquitto
    hub: HubProcess

    def hub_health(self) -> dict[str, object]:
        return dict(httpx.get(self.hub.url + "/api/health", timeout=5).json())

    def api(self, method: str, path: str, **kw: object) -> httpx.Response:
        return self.hub.client.request(method, "/api/mqtt/accounts" + path,
                                       **kw)  # type: ignore[arg-type]


@pytest_asyncio.fixture(scope="module")
async def acl_db(base_db_url: str) -> AsyncIterator[str]:
    async with town_database(base_db_url, "acl") as url:
        yield url


@pytest_asyncio.fixture(scope="module")
async def env(acl_db: str) -> AsyncIterator[Env]:
    broker = ThrowawayMosquitto()
    conn = await connect(acl_db)
    try:  # the town's devices and units have accounts (load-town); add the hub and a gateway
        await mqtt_accounts.set_password(conn, "hub", "service", HUB_PASSWORD)
        await mqtt_accounts.set_password(conn, "gw-test", "gateway", GW_PASSWORD)
        await mqtt_accounts.sync(conn, mqtt_accounts.BrokerFiles(
            broker.password_file, broker.acl_file, broker.pid_file, broker.client_ids_file))
    finally:
        await conn.close()
    try:
        broker.start()
        hub = HubProcess(acl_db, broker.url("hub", HUB_PASSWORD), roles="ingest,web",
                         extra_env=broker.file_env()).start()
    except BaseException:
        broker.destroy()
        raise
    try:
        yield Env(acl_db, broker, hub)
    finally:
        hub.stop()
        broker.destroy()


class Probe:
    """A paho client that records its CONNACK, its messages and its disconnection."""

    def __init__(self, port: int, username: str | None, password: str | None, *,
                 v311: bool = False, client_id: str | None = None) -> None:
        self.connack: queue.Queue[mqtt.ReasonCode] = queue.Queue()
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.subacks: queue.Queue[int] = queue.Queue()
        self.disconnected = threading.Event()
        # A device or unit may connect only with its own id (client id = username); the
        # hub's and gateways' accounts with any (and several probes of theirs at once).
        if client_id is None:
            client_id = (username if username not in (None, "hub", "gw-test")
                         else f"probe-{uuid.uuid4().hex[:8]}")
        self.client = make_client(client_id,
                                  BrokerAddress("127.0.0.1", port, username, password),
                                  persistent=False, v311=v311)
        self.client.on_connect = lambda c, u, f, rc, p: self.connack.put(rc)
        self.client.on_disconnect = lambda c, u, f, rc, p: self.disconnected.set()
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload))
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.put(mid)
        self.client.loop_start()

    def accepted(self, timeout: float = 5.0) -> bool:
        rc = self.connack.get(timeout=timeout)
        return not rc.is_failure

    def subscribe(self, *topics: str) -> None:
        for t in topics:
            self.client.subscribe(t, qos=1)
            self.subacks.get(timeout=5)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def received(self, timeout: float = QUIET_S) -> list[tuple[str, bytes]]:
        """Messages that arrive within ``timeout`` (all of them, waiting the full time)."""
        out = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                out.append(self.messages.get(timeout=left))
            except queue.Empty:
                break
        return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connected(port: int, username: str | None, password: str | None) -> Probe:
    p = Probe(port, username, password)
    if not p.accepted():
        p.close()
        raise AssertionError(f"{username} refused")
    return p


def refused(port: int, username: str | None, password: str | None,
            client_id: str | None = None) -> bool:
    p = Probe(port, username, password, client_id=client_id)
    try:
        return not p.accepted()
    finally:
        p.close()


async def new_device(env: Env) -> str:
    """A device in the registry without an MQTT account."""
    dev = f"acl-{uuid.uuid4().hex[:8]}"
    conn = await connect(env.db_url)
    try:
        await conn.execute(
            """INSERT INTO devices (id, kind, model, name, lon, lat, grid_id, metrics)
               SELECT $1, kind, model, $1, lon, lat, grid_id, metrics FROM devices
               ORDER BY id LIMIT 1""", dev)
    finally:
        await conn.close()
    return dev


async def new_unit(env: Env) -> str:
    unit = f"aclu-{uuid.uuid4().hex[:8]}"
    conn = await connect(env.db_url)
    try:
        await conn.execute(
            """INSERT INTO units (id, name, type, home_grid, status)
               SELECT $1, $1, type, home_grid, 'off_duty' FROM units ORDER BY id LIMIT 1""",
            unit)
    finally:
        await conn.close()
    return unit


def provision(env: Env, principal: str, kind: str) -> str:
    r = env.api("POST", "", json={"principal": principal, "kind": kind})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["username"] == principal and body["broker"]["reloaded"], body
    assert r.headers["cache-control"] == "no-store"
    return str(body["password"])


def telemetry(value: float) -> bytes:
    return wire.encode_telemetry(time.time(), {"pm25": value})


# --------------------------------------------------------------------------- tests


def test_anonymous_and_wrong_passwords_are_refused(env: Env) -> None:
    port = env.broker.port
    assert refused(port, None, None)
    assert refused(port, "hub", "not-the-password")
    assert refused(port, "no-such-user", "x")
    connected(port, "hub", HUB_PASSWORD).close()


async def test_provisioning_takes_effect_without_restarting_the_broker(env: Env) -> None:
    pid = env.broker.proc.pid if env.broker.proc else None
    dev = await new_device(env)
    assert refused(env.broker.port, dev, "guess")
    password = provision(env, dev, "device")
    connected(env.broker.port, dev, password).close()  # right after the answer
    assert env.broker.proc is not None and env.broker.proc.pid == pid
    assert env.broker.proc.poll() is None
    # the list shows it, without any secret
    listed = {a["principal"]: a for a in env.api("GET", "").json()}
    assert listed[dev]["active"] and listed[dev]["kind"] == "device"
    assert not any("password" in k or "hash" in k for a in listed.values() for k in a)
    # provisioning twice is a conflict; an unknown device is not found; bad ids refused
    assert env.api("POST", "", json={"principal": dev, "kind": "device"}).status_code == 409
    r = env.api("POST", "", json={"principal": "nobody-here", "kind": "device"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "mqtt.unknown_principal"
    for bad in ("a+b", "a#", "urn:dev:1", "a/b"):
        assert env.api("POST", "", json={"principal": bad, "kind": "device"}).status_code == 422
    # the hub stayed connected through the reloads
    assert env.hub_health()["mqtt"] == "subscribed"


async def test_a_device_cannot_take_the_hubs_client_id(env: Env) -> None:
    """Client ids are bound to accounts (docs/MQTT.md, "Client ids"): a device or unit
    connects only with its own id, so it cannot take over the hub's persistent session;
    bound at once for an account provisioned while the broker runs ($CONTROL)."""
    hub_id = env.hub.env["HUB_MQTT_CLIENT_ID"]
    dev, unit = await new_device(env), await new_unit(env)
    dev_pw, unit_pw = provision(env, dev, "device"), provision(env, unit, "unit")
    port = env.broker.port
    assert env.hub_health()["mqtt"] == "subscribed"
    log_from = env.hub.log_path.stat().st_size
    for user, pw in ((dev, dev_pw), (unit, unit_pw)):
        assert refused(port, user, pw, client_id=hub_id), f"{user} took the hub's id"
        assert refused(port, user, pw, client_id=f"{hub_id}-commands")
        assert refused(port, user, pw, client_id="gw-test")  # nor anyone else's
    assert refused(port, dev, dev_pw, client_id=unit)
    # a town device (bound by the file the broker read at start) likewise; the hub knows
    # the town's devices (its registry is read at start), so it ingests their readings
    (town,) = await town_devices(env, 1)
    r = env.api("POST", f"/{town}/rotate")
    assert r.status_code == 200, r.text
    town_pw = r.json()["password"]
    assert refused(port, town, town_pw, client_id=hub_id)
    # the hub kept its session: still subscribed, and it still ingests what a device sends
    # under its own id
    assert env.hub_health()["mqtt"] == "subscribed"
    connected(port, dev, dev_pw).close()  # client id = its own principal
    p = connected(port, town, town_pw)
    try:
        p.publish(wire.telemetry_topic(town), telemetry(41.5))
    finally:
        p.close()

    async def stored() -> bool:
        r = httpx.get(f"{env.hub.url}/api/devices/{town}/latest", headers=env.hub.headers,
                      timeout=5)
        return r.status_code == 200 and r.json()["metrics"]["pm25"]["value"] == 41.5

    assert await wait_for(stored, timeout=10)
    # a taken-over session disconnects the hub, which logs it (ingest/mqtt.py)
    with env.hub.log_path.open("rb") as f:
        f.seek(log_from)
        assert b"MQTT disconnected" not in f.read()


async def town_devices(env: Env, n: int) -> list[str]:
    conn = await connect(env.db_url)
    try:
        return [r["id"] for r in await conn.fetch(
            "SELECT principal AS id FROM mqtt_accounts WHERE kind = 'device' "
            "AND revoked_at IS NULL AND principal NOT LIKE 'acl-%' ORDER BY principal LIMIT $1",
            n)]
    finally:
        await conn.close()


async def test_a_device_cannot_publish_as_another(env: Env) -> None:
    # Two of the town's devices: the hub knows them (its registry is read at start) and
    # load-town gave them accounts, whose password only a rotation reveals.
    a, b = await town_devices(env, 2)
    r = env.api("POST", f"/{a}/rotate")
    assert r.status_code == 200 and r.json()["broker"]["reloaded"], r.text
    pa = r.json()["password"]
    watcher = connected(env.broker.port, "hub", HUB_PASSWORD)  # reads every ingest topic
    watcher.subscribe(*wire.SUBSCRIPTIONS)
    dev_a = connected(env.broker.port, a, pa)
    try:
        dev_a.publish(wire.telemetry_topic(b), telemetry(666.0))  # as B: dropped
        dev_a.publish(wire.gateway_telemetry_topic(a), telemetry(667.0))  # gateways only
        dev_a.publish(wire.senml_topic(a), b'[{"n": "pm25", "v": 668}]')  # gateways only
        dev_a.publish(wire.telemetry_topic(a), telemetry(1.0))  # its own: delivered
        got = watcher.received()
        assert [t for t, _ in got] == [wire.telemetry_topic(a)]
    finally:
        dev_a.close()
        watcher.close()
    # and the hub stored A's reading and nothing for B
    db: asyncpg.Connection = await connect(env.db_url)
    try:
        await wait_for(lambda: db.fetchval(
            "SELECT count(*) FROM telemetry WHERE device_id = $1", a))
        assert await db.fetchval(
            "SELECT count(*) FROM telemetry WHERE device_id = $1 OR value >= 666", b) == 0
        assert await db.fetchval("SELECT count(*) FROM dead_letters") == 0
    finally:
        await db.close()


async def test_a_unit_reads_only_its_own_commands(env: Env) -> None:
    u1, u2 = await new_unit(env), await new_unit(env)
    p1, p2 = provision(env, u1, "unit"), provision(env, u2, "unit")
    one = connected(env.broker.port, u1, p1)
    two = connected(env.broker.port, u2, p2)
    hub = connected(env.broker.port, "hub", HUB_PASSWORD)
    try:
        one.subscribe(wire.command_topic(u1))
        two.subscribe(wire.command_topic(u1), wire.command_topic(u2), "gridhub/v1/#")
        hub.publish(wire.command_topic(u1), b'{"id": "c1", "type": "dispatch"}')
        hub.publish(wire.command_topic(u2), b'{"id": "c2", "type": "dispatch"}')
        assert [t for t, _ in one.received()] == [wire.command_topic(u1)]
        # (its own twice: Mosquitto delivers once per matching subscription)
        assert {t for t, _ in two.received()} == {wire.command_topic(u2)}
        # a unit may publish its own GPS and OwnTracks, not another unit's, not commands
        watcher = connected(env.broker.port, "hub", HUB_PASSWORD)
        watcher.subscribe(*wire.SUBSCRIPTIONS)
        fix = wire.encode_gps(time.time(), 30.27, 120.15)
        two.publish(wire.gps_topic(u1), fix)
        two.publish(f"owntracks/zhang/{u1}", b'{"_type": "lwt"}')
        two.publish(wire.command_topic(u1), b'{"id": "forged", "type": "x"}')
        two.publish(wire.gps_topic(u2), fix)
        two.publish(f"owntracks/zhang/{u2}", b'{"_type": "lwt"}')
        assert sorted(t for t, _ in watcher.received()) == sorted(
            [wire.gps_topic(u2), f"owntracks/zhang/{u2}"])
        assert one.received(0.2) == []  # the forged command never reached unit 1
        watcher.close()
    finally:
        for p in (one, two, hub):
            p.close()


async def test_revoking_disconnects_and_refuses(env: Env) -> None:
    dev = await new_device(env)
    password = provision(env, dev, "device")
    live = connected(env.broker.port, dev, password)
    try:
        r = env.api("DELETE", f"/{dev}")
        assert r.status_code == 200 and r.json()["broker"]["reloaded"], r.text
        assert live.disconnected.wait(5), "a revoked client stays connected"
    finally:
        live.close()
    assert refused(env.broker.port, dev, password)
    assert {a["principal"]: a for a in env.api("GET", "").json()}[dev]["active"] is False
    assert env.api("POST", f"/{dev}/rotate").status_code == 409  # revoked: provision again
    assert env.api("DELETE", "/no-such-account").status_code == 404
    # provisioning again re-activates it with a new password
    again = provision(env, dev, "device")
    assert again != password
    connected(env.broker.port, dev, again).close()
    assert refused(env.broker.port, dev, password)


async def test_rotating_replaces_the_password(env: Env) -> None:
    dev = await new_device(env)
    old = provision(env, dev, "device")
    live = connected(env.broker.port, dev, old)
    try:
        r = env.api("POST", f"/{dev}/rotate")
        assert r.status_code == 200, r.text
        new = r.json()["password"]
        assert live.disconnected.wait(5), "a client with the old password stays connected"
    finally:
        live.close()
    assert refused(env.broker.port, dev, old)
    connected(env.broker.port, dev, new).close()


def test_the_hub_account_reads_through_shared_subscriptions(env: Env) -> None:
    group = f"g{uuid.uuid4().hex[:6]}"
    a = connected(env.broker.port, "hub", HUB_PASSWORD)
    b = connected(env.broker.port, "hub", HUB_PASSWORD)
    gw = connected(env.broker.port, "gw-test", GW_PASSWORD)
    try:
        for p in (a, b):
            p.subscribe(*(f"$share/{group}/{t}" for t in wire.SUBSCRIPTIONS))
        topics = [wire.telemetry_topic("ws-x1"), wire.gateway_telemetry_topic("gw-1"),
                  wire.gps_topic("p-1"), wire.senml_topic("ws-x2"), "owntracks/u/p-2"]
        for t in topics:
            gw.publish(t, b"{}")
        got = a.received() + b.received()
        assert sorted(t for t, _ in got) == sorted(topics)  # each once, split between them
        # the hub account cannot publish telemetry, and a gateway cannot read
        gw.subscribe("gridhub/v1/#")
        a.publish(wire.telemetry_topic("ws-x1"), b"{}")
        assert gw.received(0.3) == []
    finally:
        for p in (a, b, gw):
            p.close()


def test_the_broker_refuses_oversized_messages(env: Env) -> None:
    """max_packet_size (scripts/mosquitto.conf.in): a larger message costs its sender the
    connection and reaches nobody."""
    gw = connected(env.broker.port, "gw-test", GW_PASSWORD)
    watcher = connected(env.broker.port, "hub", HUB_PASSWORD)
    try:
        watcher.subscribe(*wire.SUBSCRIPTIONS)
        gw.client.publish(wire.telemetry_topic("ws-big"), b"x" * 300_000, qos=1)
        assert gw.disconnected.wait(5)
        assert watcher.received() == []
    finally:
        gw.close()
        watcher.close()


def test_mosquitto_pub_logs_in_without_a_password_on_its_command_line(env: Env) -> None:
    """The load generator's and hubctl's way in (simulators/mqtt_login.py)."""
    watcher = connected(env.broker.port, "hub", HUB_PASSWORD)
    cmd = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(env.broker.port), "-q", "1",
           "-t", wire.telemetry_topic("ws-cli"), "-m", "{}"]
    try:
        watcher.subscribe(*wire.SUBSCRIPTIONS)
        assert subprocess.run(cmd, capture_output=True, timeout=10).returncode != 0  # anonymous
        gw = BrokerAddress("127.0.0.1", env.broker.port, "gw-test", GW_PASSWORD)
        with mosquitto_client_env(gw) as cenv:
            subprocess.run(cmd, env=cenv, check=True, capture_output=True, timeout=10)
        assert [t for t, _ in watcher.received()] == [wire.telemetry_topic("ws-cli")]
    finally:
        watcher.close()
