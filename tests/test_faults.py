"""Faults survived (issue 8), each with real processes: kill -9 the hub under load (messages,
open cases and their SLA clocks, websocket resume), restart Mosquitto under load, and the
dispatch leader's failover. tests/test_ingest.py covers the plain kill -9 of ingest, two
ingest processes and PostgreSQL going away.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from core.db import connect
from tests.conftest import HubProcess, ThrowawayMosquitto, town_database, town_doc, wait_for
from tests.leader_probes import leader_backend, report_incident
from tests.load import AckedStream

TOWN = town_doc()
AIR = [d["id"] for d in TOWN["devices"] if d["model"] == "air_station"]
# 0.01: a priority-2 case must be dispatched within 12 s (20 min) and is warned at 80 %:
# room for a kill and a restart on a loaded machine before the warning, short enough to wait.
SCALE = "0.01"


@pytest_asyncio.fixture
async def fault_db(base_db_url: str) -> AsyncIterator[str]:
    async with town_database(base_db_url, "k") as url:
        yield url


@pytest_asyncio.fixture
async def conn(fault_db: str) -> AsyncIterator[asyncpg.Connection]:
    c = await connect(fault_db)
    yield c
    await c.close()


async def stored_once(conn: asyncpg.Connection, stream: AckedStream,
                      timeout: float = 60) -> tuple[set[int], int]:
    """Wait until every acknowledged message of ``stream`` is stored; return the numbers
    stored and the number of rows (duplicates would make rows > len(numbers))."""
    acked = stream.acked()

    async def fetch() -> tuple[set[int], int]:
        rows = await conn.fetch("SELECT extract(epoch FROM ts)::float8 AS t FROM telemetry "
                                "WHERE device_id = $1", stream.device)
        return {round((r["t"] - stream.t0) * 1000) for r in rows}, len(rows)

    async def done() -> tuple[set[int], int] | None:
        got = await fetch()
        return got if acked <= got[0] else None

    try:
        result: tuple[set[int], int] = await wait_for(done, timeout=timeout, interval=0.25)
        return result
    except AssertionError:
        return await fetch()


def assert_exactly_once(stream: AckedStream, stored: set[int], rows: int) -> None:
    acked = stream.acked()
    assert len(acked) > 300, f"too little load to mean anything: {len(acked)} acknowledged"
    lost = acked - stored
    assert not lost, f"{len(lost)} acknowledged messages lost, e.g. {sorted(lost)[:10]}"
    assert rows == len(stored), f"{rows - len(stored)} duplicate rows"
    assert stored <= set(range(stream.sent)), "stored something never sent"


async def recv(ws: Any, timeout: float = 10) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))  # type: ignore[no-any-return]


async def events_until(ws: Any, stop: Any, timeout: float) -> list[dict[str, Any]]:
    """Feed events until ``stop(event)`` is true for one of them."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = await recv(ws, max(0.1, deadline - time.monotonic()))
        assert msg["type"] == "batch", msg
        got.extend(msg["events"])
        if any(stop(e) for e in msg["events"]):
            return got
    raise AssertionError(f"not seen within {timeout}s; got {[e['kind'] for e in got]}")


def _stage_event(kind: str, iid: int) -> Any:
    return lambda e: (e["kind"] == kind and e["data"].get("incident", {}).get("id") == iid
                      and e["data"].get("stage") == "dispatch")


# ------------------------------------------------------------------ kill -9 the hub
async def test_kill_9_hub_keeps_messages_cases_sla_clocks_and_feed(
        fault_db: str, mqtt_url: str, conn: asyncpg.Connection) -> None:
    hub = HubProcess(fault_db, mqtt_url, extra_env={"HUB_SLA_TIME_SCALE": SCALE}).start()
    stream = AckedStream(mqtt_url, AIR[3]).start()
    try:
        async with hub.websocket() as ws:
            await ws.send(json.dumps({"type": "hello", "last_seq": None}))
            snap = await recv(ws)
            assert snap["type"] == "snapshot"
            # Nobody holds this qualification: the case waits and its dispatch clock runs.
            async with hub.async_client() as client:
                r = await client.post("/api/incidents", json={
                    "category": "city_order", "qualification": "no_such_department",
                    "priority": 2, "title": "断电测试", "reporter": "operator1",
                    "lon": TOWN["devices"][0]["lon"], "lat": TOWN["devices"][0]["lat"]})
                assert r.status_code == 201, r.text
                iid = r.json()["id"]
            seen = await events_until(
                ws, lambda e: e["data"].get("incident", {}).get("id") == iid, 10)
            last_seq = seen[-1]["seq"]
        await asyncio.sleep(1.0)  # load keeps flowing
        assert await conn.fetchval("SELECT count(*) FROM events WHERE kind LIKE 'sla.%' "
                                   "AND (payload->'incident'->>'id')::bigint = $1", iid) == 0
        hub.stop(kill=True)
        killed_at = time.monotonic()
        await asyncio.sleep(1.0)
        hub.start()
        restarted_s = time.monotonic() - killed_at

        # The client resumes from the last seq it saw: everything after it, in order, once.
        async with hub.websocket() as ws:
            await ws.send(json.dumps({"type": "hello", "last_seq": last_seq}))
            resumed = await events_until(ws, _stage_event("sla.breached", iid), 30)
        seqs = [e["seq"] for e in resumed]
        table = [r["seq"] for r in await conn.fetch(
            "SELECT seq FROM events WHERE seq > $1 AND seq <= $2 ORDER BY seq",
            last_seq, seqs[-1])]
        assert seqs == table, "the resumed feed has a gap or a repeat"
        # The case kept its state, and its clock fired after the restart, once each.
        warned = [e for e in resumed if _stage_event("sla.warned", iid)(e)]
        assert len(warned) == 1, f"warned {len(warned)} times (restart took {restarted_s:.1f}s)"
        # The dispatch clock's two events, once each (on a slow restart a later stage's
        # clock, which runs from the opening too, may also come due: that is not a repeat).
        assert await conn.fetchval(
            "SELECT count(*) FROM events WHERE kind IN ('sla.warned', 'sla.breached') "
            "AND payload->>'stage' = 'dispatch' "
            "AND (payload->'incident'->>'id')::bigint = $1", iid) == 2
        inc = await conn.fetchrow("SELECT state, sla FROM incidents WHERE id = $1", iid)
        assert inc["state"] == "registered"
        assert inc["sla"]["dispatch"]["state"] == "breached"
        assert inc["sla"]["register"]["state"] == "met"
    except BaseException:
        stream.stop()
        hub.stop()  # a failed check must not leave the hub running
        raise
    stream.stop()
    try:
        stored, rows = await stored_once(conn, stream)
        assert_exactly_once(stream, stored, rows)
    finally:
        hub.stop()


# ------------------------------------------------------------------ restart Mosquitto
@pytest.fixture
def own_broker() -> Iterator[ThrowawayMosquitto]:
    broker = ThrowawayMosquitto().with_accounts().start()
    yield broker
    broker.destroy()


async def _settled(conn: asyncpg.Connection, stream: AckedStream, quiet_s: float = 3.0,
                   timeout: float = 60) -> tuple[set[int], int]:
    """What is stored once every acknowledged message is, or nothing new came for
    ``quiet_s`` (a loss: waiting longer would not help)."""
    deadline = time.monotonic() + timeout
    last: tuple[set[int], int] | None = None
    changed = time.monotonic()
    while time.monotonic() < deadline:
        got = await stored_once(conn, stream, timeout=0)
        if stream.acked() <= got[0]:
            return got
        if last is None or got[1] != last[1]:
            last, changed = got, time.monotonic()
        elif time.monotonic() - changed > quiet_s:
            break
        await asyncio.sleep(0.25)
    return await stored_once(conn, stream, timeout=0)


@pytest.mark.parametrize("subscription", ["plain", "shared"])
async def test_mosquitto_restart_under_load(
        subscription: str, fault_db: str, own_broker: ThrowawayMosquitto,
        conn: asyncpg.Connection) -> None:
    """Hub and publisher reconnect with their persistent sessions. With a plain subscription
    every acknowledged message is stored exactly once. Mosquitto 2.0 does not persist
    shared subscriptions (persist__subs_save skips them; fixed upstream after 2.0), so with
    one, messages published between the broker's restart and the hub's re-subscription are
    acknowledged to the publisher and routed to nobody (docs/DEPLOYMENT.md): everything
    acknowledged before the restart is still stored exactly once."""
    group = None if subscription == "plain" else f"restart-{uuid.uuid4().hex[:6]}"
    hub = HubProcess(fault_db, own_broker.hub_url, roles="ingest,web",
                     share_group=group).start()
    stream = AckedStream(own_broker.gateway_url, AIR[4]).start()
    try:
        await asyncio.sleep(2.0)
        acked_before = stream.acked()
        down_at = time.monotonic()
        own_broker.stop()  # SIGTERM: Mosquitto saves sessions and queued messages
        await asyncio.sleep(1.0)
        own_broker.start()
        restarted = time.monotonic()
        async with hub.async_client() as client:
            async def subscribed() -> bool:
                health = (await client.get("/api/health")).json()
                return health["mqtt"] == "subscribed"  # type: ignore[no-any-return]

            await wait_for(subscribed, timeout=30, interval=0.1)
        reconnect_s = time.monotonic() - restarted
        await asyncio.sleep(2.0)  # load after the restart too
    finally:
        stream.stop()
    try:
        assert len(stream.acked()) == stream.sent, "paho resends what was not acknowledged"
        stored, rows = await _settled(conn, stream)
        assert rows == len(stored), f"{rows - len(stored)} duplicate rows"
        assert acked_before <= stored and len(acked_before) > 300
        if subscription == "plain":  # the default configuration: nothing lost
            assert_exactly_once(stream, stored, rows)
        else:
            # Scaled out: the loss is confined to the broker's window, between its restart
            # and the hub's re-subscription (docs/DEPLOYMENT.md); measured, and bounded by
            # what the stream published from the broker's stop to that re-subscription
            # (what the publisher queued while the broker was down is sent at reconnect,
            # before the hub is back).
            lost = stream.acked() - stored
            window_msgs = stream.rate * (restarted - down_at + reconnect_s + 1.0)
            print(f"shared subscription: {len(lost)} of {stream.sent} lost in the "
                  f"{reconnect_s:.1f}s before the hub re-subscribed")
            assert len(lost) <= window_msgs, (len(lost), window_msgs)
            assert not (lost & acked_before), "lost a message acknowledged before the restart"
        assert reconnect_s < 20
    finally:
        hub.stop()


# ------------------------------------------------------------------ dispatch leader
async def _dispatched(conn: asyncpg.Connection, ids: list[int]) -> bool:
    n = await conn.fetchval("SELECT count(DISTINCT incident_id) FROM assignments "
                            "WHERE incident_id = ANY($1)", ids)
    return int(n) == len(ids)


async def test_dispatch_leader_failover_is_quick_and_dispatches_once(
        fault_db: str, mqtt_url: str, conn: asyncpg.Connection) -> None:
    a = HubProcess(fault_db, mqtt_url, roles="dispatch,web").start()
    b: HubProcess | None = None
    try:
        first = await wait_for(lambda: leader_backend(conn), timeout=20)
        b = HubProcess(fault_db, mqtt_url, roles="dispatch,web").start()
        async with b.async_client() as client:
            before = [await report_incident(client, i, "接管测试") for i in range(2)]
            await wait_for(lambda: _dispatched(conn, before), timeout=20)
            assert await leader_backend(conn) == first, "the first hub leads"

            a.stop(kill=True)
            killed = time.monotonic()
            # Cases keep coming while nobody leads; the new leader catches up on them.
            after = [await report_incident(client, i, "接管测试") for i in range(2, 5)]

            async def new_leader() -> bool:
                pid = await leader_backend(conn)
                return pid is not None and pid != first

            await wait_for(new_leader, timeout=30, interval=0.05)
            takeover_s = time.monotonic() - killed
            await wait_for(lambda: _dispatched(conn, after), timeout=30, interval=0.05)
            dispatched_s = time.monotonic() - killed
            later = [await report_incident(client, i, "接管测试") for i in range(5, 7)]
            await wait_for(lambda: _dispatched(conn, later), timeout=20)
        ids = before + after + later
        # LEADER_RETRY_S is 1 s; a loaded 2-core machine gets generous room, no more.
        assert takeover_s < 5.0, f"takeover took {takeover_s:.2f}s"
        assert dispatched_s < 8.0, f"waiting cases dispatched after {dispatched_s:.2f}s"
        twice = await conn.fetch(
            "SELECT incident_id, count(*) FROM case_log WHERE incident_id = ANY($1) "
            "AND action = 'dispatch' GROUP BY 1 HAVING count(*) > 1", ids)
        assert not twice, f"dispatched twice: {twice}"
        per_case = await conn.fetch(
            "SELECT incident_id, count(*) AS n FROM assignments WHERE incident_id = ANY($1) "
            "GROUP BY 1", ids)
        assert sorted(r["incident_id"] for r in per_case) == sorted(ids)
        assert all(r["n"] == 1 for r in per_case), per_case
    finally:
        a.stop()
        if b is not None:
            b.stop()
