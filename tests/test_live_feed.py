"""The live feed: snapshot + the events after it == a fresh snapshot; resume by last seq."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import httpx
import websockets

from core.events import apply_to_state
from hub.live import POSITION_WINDOW_FRAMES
from ingest import wire
from tests.conftest import HubProcess, Publisher, town_doc

COLLECTIONS = ("alarms", "incidents", "units")
# Fields that move without an event (live GPS) are not part of the sequenced picture.
EPHEMERAL = {"lon", "lat", "speed", "heading", "position_ts"}


def _picture(snapshot: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c: {str(e["id"]): {k: v for k, v in e.items() if k not in EPHEMERAL}
                for e in snapshot[c]} for c in COLLECTIONS}


async def _hello(ws: Any, last_seq: int | None) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "hello", "last_seq": last_seq}))
    return json.loads(await ws.recv())  # type: ignore[no-any-return]


async def _act(client: httpx.AsyncClient, n: int) -> None:
    """Generate events through the public API: operator-reported cases."""
    town = town_doc()
    grid = town["grids"]["features"][40]["properties"]
    dev = town["devices"][n % len(town["devices"])]
    for i in range(n):
        r = await client.post("/api/incidents", json={
            "category": "city_order", "qualification": "city_management", "priority": 3,
            "title": f"占道经营 #{i} ({grid['name']})", "lon": dev["lon"], "lat": dev["lat"],
            "reporter": "operator1"})
        assert r.status_code == 201, r.text


async def test_snapshot_plus_events_equals_fresh_snapshot(hub: HubProcess) -> None:
    url = f"ws://127.0.0.1:{hub.port}/ws/live"
    async with hub.async_client() as client, websockets.connect(
            url, additional_headers=hub.headers) as ws:
        snap = await _hello(ws, None)
        assert snap["type"] == "snapshot"
        state = _picture(snap)
        seq = snap["seq"]
        await _act(client, 5)
        # Apply batches until the client is exactly at a fresh snapshot's seq, then compare.
        # Other events may keep coming (the dispatcher acting, no-data timers): take a new
        # snapshot whenever the feed has moved past the one in hand.
        for _ in range(50):
            fresh = (await client.get("/api/snapshot")).json()
            while seq < fresh["seq"]:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert msg["type"] == "batch"
                for ev in msg["events"]:
                    assert ev["seq"] > seq, "an event arrived twice or out of order"
                    seq = ev["seq"]
                    apply_to_state(state, {k: ({kk: vv for kk, vv in v.items()
                                                if kk not in EPHEMERAL} if isinstance(v, dict)
                                               else v) for k, v in ev["data"].items()})
            if seq == fresh["seq"]:
                assert seq >= snap["seq"] + 5
                assert state == _picture(fresh)
                return
        raise AssertionError("the feed never settled on a snapshot's seq")


async def test_resume_after_disconnect_gets_exactly_the_missed_events(hub: HubProcess) -> None:
    url = f"ws://127.0.0.1:{hub.port}/ws/live"
    async with hub.async_client() as client:
        async with websockets.connect(url, additional_headers=hub.headers) as ws:
            snap = await _hello(ws, None)
            last = snap["seq"]
        await _act(client, 3)  # while disconnected
        async with websockets.connect(url, additional_headers=hub.headers) as ws:
            msg = await _hello(ws, last)
            assert msg["type"] == "batch"
            seqs = [e["seq"] for e in msg["events"]]
            events = await client.get("/api/events", params={"after": last})
            # exactly the events after `last`, in order, none missing (more may have been
            # committed since the replay was read, by the dispatcher acting on these)
            table = [e["seq"] for e in events.json()["events"]]
            assert seqs == table[:len(seqs)]
            assert len(seqs) >= 3 and seqs == sorted(set(seqs))
        # far behind: told to start from a snapshot instead
        async with websockets.connect(url, additional_headers=hub.headers) as ws:
            msg = await _hello(ws, -10**9)
            assert msg["type"] == "snapshot"


async def test_a_client_that_leaves_a_quiet_feed_is_let_go_at_once(hub: HubProcess) -> None:
    """The server notices a close without having to send anything first."""
    async with httpx.AsyncClient(base_url=hub.url) as client:
        async def clients() -> int:
            return int((await client.get("/api/health")).json()["clients"])

        before = await clients()
        ws = await websockets.connect(hub.url.replace("http", "ws") + "/ws/live",
                                      additional_headers=hub.headers)
        snap = await _hello(ws, None)
        assert snap["type"] == "snapshot"
        assert await clients() == before + 1
        await ws.close()
        deadline = asyncio.get_running_loop().time() + 3
        while await clients() != before:
            assert asyncio.get_running_loop().time() < deadline, "closed client lingers"
            await asyncio.sleep(0.05)


async def _caught_up(client: httpx.AsyncClient, publisher: Publisher, unit_id: str,
                     timeout: float = 90.0) -> None:
    """Waits until the hub has read what was published before now: a probe fix for
    ``unit_id`` (newer than any it holds) shows in its live picture. The broker and this hub
    serve the whole test run, and a test that times the feed must not start while the hub
    still reads another test's burst, or while it reconnects to the broker."""
    async def held_ts() -> float:
        snap = (await client.get("/api/snapshot")).json()
        return max([float(u.get("position_ts") or 0.0) for u in snap["units"]
                    if str(u["id"]) == unit_id] or [0.0])

    probe = max(time.time(), await held_ts()) + 0.5
    u = next(u for u in town_doc()["units"] if str(u["id"]) == unit_id)
    publisher.publish(wire.gps_topic(unit_id), wire.encode_gps(probe, u["lat"], u["lon"]))
    deadline = asyncio.get_running_loop().time() + timeout
    while await held_ts() < probe:
        if asyncio.get_running_loop().time() > deadline:
            health = (await client.get("/api/health")).json()
            raise AssertionError(f"the hub did not read a probe fix in {timeout:.0f} s: "
                                 f"mqtt {health['mqtt']}, ingest {health['ingest']}")
        await asyncio.sleep(0.1)


def _newer_than_held(snap: dict[str, Any], ids: set[str]) -> float:
    """A device time newer than now and than any fix the hub holds for these units (a late
    fix never moves a marker back, so an older one would not be sent)."""
    held = [float(u.get("position_ts") or 0.0) for u in snap["units"] if str(u["id"]) in ids]
    return max([time.time(), *held]) + 1.0


async def _frames_until(ws: Any, done: Any, timeout: float = 15.0) -> list[str]:
    """Raw frames read from ``ws`` until ``done(frames)`` holds."""
    frames: list[str] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not done(frames):
        assert loop.time() < deadline, f"timed out after {len(frames)} frames"
        frames.append(await asyncio.wait_for(ws.recv(), max(0.1, deadline - loop.time())))
    return frames


async def test_positions_go_in_one_shared_frame_and_events_in_their_own(
        hub: HubProcess, publisher: Publisher) -> None:
    """Two clients get the tick's positions frame as the same text (encoded once), and an
    operator's event in a frame of its own, not held for the positions."""
    units = town_doc()["units"][-3:]
    url = f"ws://127.0.0.1:{hub.port}/ws/live"
    async with hub.async_client() as client:
        await _caught_up(client, publisher, str(town_doc()["units"][20]["id"]))
    async with hub.async_client() as client, \
            websockets.connect(url, additional_headers=hub.headers) as a, \
            websockets.connect(url, additional_headers=hub.headers) as b:
        snap = await _hello(a, None)
        await _hello(b, None)
        ts = _newer_than_held(snap, {str(u["id"]) for u in units})
        for k, u in enumerate(units):
            publisher.publish(wire.gps_topic(u["id"]),
                              wire.encode_gps(ts, u["lat"], u["lon"] + 0.001 * k, 7.0, 90.0))
        await _act(client, 1)
        ids = {str(u["id"]) for u in units}

        def ours(frame: str) -> bool:
            pos = json.loads(frame)["positions"]
            return any(i in pos and pos[i]["ts"] == ts for i in ids)

        def complete(frames: list[str]) -> bool:
            got = {i for f in frames for i, p in json.loads(f)["positions"].items()
                   if i in ids and p["ts"] == ts}
            opened = any(e["kind"] == "incident.opened" and e["seq"] > snap["seq"]
                         for f in frames for e in json.loads(f)["events"])
            return got == ids and opened

        fa = await _frames_until(a, complete)
        fb = await _frames_until(b, complete)
        for f in fa + fb:
            msg = json.loads(f)
            assert msg["type"] == "batch"
            assert not (msg["events"] and msg["positions"]), "events wait for no positions"
        ours_a = [f for f in fa if ours(f)]
        ours_b = [f for f in fb if ours(f)]
        assert ours_a and ours_a == ours_b  # the same text, byte for byte


async def test_a_client_that_stops_acking_gets_positions_merged_but_every_event(
        hub: HubProcess, publisher: Publisher) -> None:
    """Flow control: a client that said "acks" and then reads without acknowledging is
    sent at most POSITION_WINDOW_FRAMES position frames; events still come at once; its
    ack then brings the held positions, merged (latest fix per unit)."""
    window = POSITION_WINDOW_FRAMES
    units = town_doc()["units"][:window + 4]
    ids = [str(u["id"]) for u in units]
    url = f"ws://127.0.0.1:{hub.port}/ws/live"
    async with hub.async_client() as client:
        await _caught_up(client, publisher, str(town_doc()["units"][20]["id"]))
    async with hub.async_client() as client, \
            websockets.connect(url, additional_headers=hub.headers) as ws:
        await ws.send(json.dumps({"type": "hello", "last_seq": None, "acks": True}))
        snap = json.loads(await ws.recv())
        assert snap["type"] == "snapshot"
        ts = _newer_than_held(snap, set(ids))
        for k, u in enumerate(units):  # a tick apart or more: a frame each at least
            publisher.publish(wire.gps_topic(u["id"]),
                              wire.encode_gps(ts + k / 100, u["lat"], u["lon"], 3.0, 0.0))
            await asyncio.sleep(0.15)
        await asyncio.sleep(0.5)
        await _act(client, 1)

        def msgs(frames: list[str]) -> list[dict[str, Any]]:
            return [json.loads(f) for f in frames]

        def opened(frames: list[str]) -> bool:
            return any(e["kind"] == "incident.opened" and e["seq"] > snap["seq"]
                       for m in msgs(frames) for e in m["events"])

        held = await _frames_until(ws, opened)
        with contextlib.suppress(TimeoutError):  # anything else already in flight
            while True:
                held.append(await asyncio.wait_for(ws.recv(), 0.5))
        position_frames = [m for m in msgs(held) if m["positions"]]
        assert len(position_frames) == window  # the window, not one frame per tick
        seen = {i for m in position_frames for i, p in m["positions"].items()
                if i in ids and p["ts"] >= ts}
        missing = set(ids) - seen
        assert missing, "every unit's fix came without acks"

        await ws.send(json.dumps({"type": "ack", "positions": window}))
        after = await _frames_until(ws, lambda fs: missing <= {
            i for m in msgs(fs) for i, p in m["positions"].items() if p["ts"] >= ts})
        last = {i: p["ts"] for m in msgs(after) for i, p in m["positions"].items()
                if i in missing}
        assert last.keys() == missing  # each unit's latest (its only) fix
        assert all(abs(last[i] - (ts + ids.index(i) / 100)) < 1e-6 for i in missing)
