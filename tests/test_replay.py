"""After-action replay (复盘): the console's picture at a past time, rebuilt from the saved
snapshots, the events table and the positions table, equals what the live console showed.

Pure: the fold's time rules (hub/replay_fold.py). End to end: a scenario is played live
against a real hub (real Mosquitto and TimescaleDB, as tests/test_scenarios.py plays them)
while a patrol moves units; a console connecting to ``/ws/live`` is captured again and
again; then each captured picture is compared with the replay at the capture's time, folded
from the nearest snapshot and from the first one, and served by ``/api/replay/picture``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from playwright.sync_api import Browser, Page

from core.db import connect
from hub import replay_fold, replay_store
from hub.replay_fold import Fix
from ingest import wire
from ingest.mqtt import BrokerAddress
from simulators import scenario as sc_mod
from simulators.mqtt_pub import Publisher
from simulators.scenario import Player
from tests.browser import login_state
from tests.conftest import (
    ARTIFACTS,
    HubProcess,
    create_database,
    drop_database,
    gateway_url,
    town_doc,
)

TOWN = town_doc()
# Scenario seconds per wall second (tests/test_scenarios.py plays at 30): the 5-minute
# collision story plays in 15 s, which leaves quiet moments between its steps.
SPEED = 20.0
# Snapshots every 2 s, so that the window holds several and a seek starts from a recent one.
SNAPSHOT_S = 2.0
# A capture is compared only if nothing (event or fix) was recorded within this long before
# it: a console sees an event at its commit and a fix at its arrival, after their recorded
# times (hub/replay_fold.py, time rules), and on this shared 2-core machine under load that
# lag reaches hundreds of ms. Nothing recorded after a capture can be in it (an event's ts
# is before its commit, a fix's before its arrival), so a small margin after does.
QUIET_BEFORE_S = 1.0
QUIET_AFTER_S = 0.1
CAPTURE_EVERY_S = 0.2
# Units the test's own patrol moves (the scenario's fixes repeat only every 20 s): traffic
# police cars the collision story does not stage; every 2.5 s, which leaves quiet moments
# between fixes for the captures to be compared in.
PATROL = ("PO-01", "PO-02", "PO-03")
PATROL_EVERY_S = 2.5


# ================================================================ pure: the fold

def _unit(uid: str, ts: float | None, lon: float = 120.0) -> dict[str, Any]:
    return {"id": uid, "status": "available", "lon": lon, "lat": 31.0, "speed": 0.0,
            "heading": None, "position_ts": ts}


def test_events_apply_in_seq_order_up_to_their_effective_time() -> None:
    pic = replay_fold.start({"alarms": {}, "incidents": {}, "units": {}}, 10, 100.0)
    a1 = {"alarm": {"id": 1, "state": "active"}}
    a2 = {"alarm": {"id": 2, "state": "active"}}
    a1c = {"alarm": {"id": 1, "state": "cleared"}}
    # seq 12 started (ts) before seq 11 but committed after it: it happens at 105 (11's
    # time), not at 103, and seq 13 waits behind it.
    events = [(11, 105.0, a1), (12, 103.0, a2), (13, 108.0, a1c)]
    assert replay_fold.apply_events(pic, events, 104.0) is True
    assert pic.state["alarms"] == {} and pic.seq == 10
    assert replay_fold.apply_events(pic, events, 105.0) is True
    assert set(pic.state["alarms"]) == {"1", "2"} and pic.seq == 12 and pic.clock == 105.0
    assert replay_fold.apply_events(pic, events, 200.0) is False  # ran out: no more known
    assert set(pic.state["alarms"]) == {"2"} and pic.seq == 13  # a cleared alarm leaves
    # already folded events are skipped (a chunk that overlaps)
    assert replay_fold.apply_events(pic, events, 300.0) is False and pic.seq == 13


def test_fixes_move_markers_forward_only_and_not_over_a_newer_entity() -> None:
    pic = replay_fold.start({"units": {"U1": _unit("U1", 90.0), "U2": _unit("U2", 90.0)}},
                            0, 100.0)
    # older than the snapshot but newer than its stored fix (stored after the snapshot)
    assert replay_fold.apply_fix(pic, Fix("U1", 99.0, 121.5, 31.0, 0.0, None))
    assert replay_fold.apply_fix(pic, Fix("U1", 101.0, 121.0, 31.0, 1.5, 90.0))
    assert pic.state["units"]["U1"]["lon"] == 121.0
    assert not replay_fold.apply_fix(pic, Fix("U1", 100.5, 122.0, 31.0, 0.0, None))  # late
    # an event at 110 replaces U2 with its stored fix (ts 95): a fix at 108 came before it
    replay_fold.apply_events(pic, [(1, 110.0, {"unit": _unit("U2", 95.0, lon=119.0)})], 110)
    assert not replay_fold.apply_fix(pic, Fix("U2", 108.0, 123.0, 31.0, 0.0, None))
    assert not replay_fold.apply_fix(pic, Fix("U2", 110.0, 123.0, 31.0, 0.0, None))  # tie
    assert replay_fold.apply_fix(pic, Fix("U2", 111.0, 124.0, 31.0, 0.0, None))
    assert pic.state["units"]["U2"]["lon"] == 124.0
    assert not replay_fold.apply_fix(pic, Fix("NOPE", 111.0, 1.0, 1.0, None, None))


def test_advance_takes_only_fixes_inside_the_span_and_frames_like_the_feed() -> None:
    pic = replay_fold.start({"units": {"U1": _unit("U1", 90.0)}}, 5, 100.0)
    replay_fold.advance(pic, [], [Fix("U1", 130.0, 125.0, 31.0, 0.0, None)], 120.0)
    assert pic.state["units"]["U1"]["lon"] == 120.0 and pic.at == 120.0  # 130 is later
    frame = replay_fold.frame(pic)
    assert frame["type"] == "snapshot" and frame["seq"] == 5 and frame["units"][0]["id"] == "U1"
    assert replay_fold.keyed(frame) == {"alarms": {}, "incidents": {},
                                        "units": {"U1": pic.state["units"]["U1"]}}


# ================================================================ end to end

@pytest_asyncio.fixture(scope="module")
async def replay_db(base_db_url: str) -> AsyncIterator[str]:
    name = f"gridhub_r{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = await create_database(base_db_url, name)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hub", "load-town", env={**os.environ, "HUB_DATABASE_URL": url},
        stdout=asyncio.subprocess.DEVNULL)
    assert await proc.wait() == 0
    yield url
    await drop_database(base_db_url, name)


@pytest.fixture(scope="module")
def replay_hub(replay_db: str, mqtt_url: str) -> Iterator[HubProcess]:
    hub = HubProcess(replay_db, mqtt_url, client_id=f"replay-{uuid.uuid4().hex[:6]}",
                     extra_env={"HUB_SLA_TIME_SCALE": repr(1.0 / SPEED),
                                "HUB_REPLAY_SNAPSHOT_S": repr(SNAPSHOT_S)}).start()
    yield hub
    hub.stop()


@pytest_asyncio.fixture
async def rdb(replay_db: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(replay_db)
    yield conn
    await conn.close()


async def _live_snapshot(hub: HubProcess) -> dict[str, Any]:
    """What a console connecting now is shown: the feed's snapshot frame."""
    async with hub.websocket() as ws:
        await ws.send(json.dumps({"type": "hello", "last_seq": None}))
        return json.loads(await ws.recv())  # type: ignore[no-any-return]


async def _capture(hub: HubProcess, out: list[tuple[float, float, dict[str, Any]]]) -> None:
    while True:
        t0 = time.time()
        snap = await _live_snapshot(hub)
        out.append((t0, time.time(), snap))
        await asyncio.sleep(CAPTURE_EVERY_S)


async def _patrol(pub: Publisher) -> None:
    """Moves the patrol cars east a little every PATROL_EVERY_S."""
    homes = {u["id"]: (u["lon"], u["lat"]) for u in TOWN["units"] if u["id"] in PATROL}
    k = 0
    while True:
        k += 1
        for uid, (lon, lat) in homes.items():
            await pub.publish(wire.gps_topic(uid), wire.encode_gps(
                round(time.time(), 3), lat, lon + 0.0002 * k, 6.5, 90.0, 5.0))
        await asyncio.sleep(PATROL_EVERY_S)


def _diff(got: dict[str, dict[str, Any]], want: dict[str, dict[str, Any]]) -> list[str]:
    """What differs between two keyed pictures, entity by entity and field by field."""
    out = []
    for c in replay_fold.COLLECTIONS:
        for k in sorted(set(got[c]) | set(want[c])):
            g, w = got[c].get(k), want[c].get(k)
            if g != w:
                fields = sorted(f for f in set(g or {}) | set(w or {})
                                if (g or {}).get(f) != (w or {}).get(f))
                out.append(f"{c}/{k}: " + ", ".join(
                    f"{f} replay={(g or {}).get(f)!r} live={(w or {}).get(f)!r}" for f in fields))
    return out


def _quiet(t0: float, t1: float, times: list[float]) -> bool:
    return not any(t0 - QUIET_BEFORE_S < t < t1 + QUIET_AFTER_S for t in times)


@dataclass
class Played:
    """A story played live: its span, and the live console's pictures taken while nothing
    was in flight (at, picture), in time order."""

    begin: float
    end: float
    captured: int
    quiet: list[tuple[float, dict[str, Any]]]
    busy: list[float]  # effective event times and fix times, for messages

    def nearest(self, at: float) -> str:
        before = max((t for t in self.busy if t <= at), default=None)
        after = min((t for t in self.busy if t > at), default=None)
        return (f"at {at:.3f}: last record {at - before if before else None!r} s before, "
                f"next {after - at if after else None!r} s after")


@pytest_asyncio.fixture(scope="module")
async def played(replay_hub: HubProcess, replay_db: str, mqtt_url: str) -> Played:
    conn = await connect(replay_db)
    p = Publisher(BrokerAddress.parse(gateway_url(mqtt_url)), f"test-replay-{uuid.uuid4().hex[:8]}")
    assert await p.start(), "publisher could not connect"
    try:
        # A first snapshot exists before the story starts (the leader saves one at its first
        # check), so the whole story can be replayed.
        deadline = time.monotonic() + 15
        while not await conn.fetchval("SELECT count(*) FROM replay_snapshots"):
            assert time.monotonic() < deadline, "no replay snapshot saved"
            await asyncio.sleep(0.2)
        begin = time.time()
        captures: list[tuple[float, float, dict[str, Any]]] = []
        tasks = [asyncio.create_task(_capture(replay_hub, captures)),
                 asyncio.create_task(_patrol(p))]
        try:
            player = Player(sc_mod.load("rush_hour_collision", TOWN), hub_url=replay_hub.url,
                            publisher=p, token=replay_hub.token, time_scale=SPEED)
            result = await player.play()
            assert result.ok, result.report()
            await player.cleanup()
            await asyncio.sleep(2 * SNAPSHOT_S)
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
        await asyncio.sleep(3.0)  # the last captures are in the past by the replay's margin
        end = time.time() - 2.5
        # Effective event times (hub/replay_fold.py) and fix times of the whole run.
        effective, clock = [], 0.0
        for r in await conn.fetch("SELECT extract(epoch FROM ts)::float8 AS ts FROM events "
                                  "ORDER BY seq"):
            clock = max(clock, r["ts"])
            effective.append(clock)
        fixes = [r["ts"] for r in await conn.fetch(
            "SELECT extract(epoch FROM ts)::float8 AS ts FROM positions "
            "WHERE ts > to_timestamp($1)", begin - 5)]
        busy = effective + fixes
        quiet = [((t0 + t1) / 2, live) for t0, t1, live in captures if _quiet(t0, t1, busy)]
        return Played(begin, end, len(captures), quiet, sorted(busy))
    finally:
        await p.stop()
        await conn.close()


async def test_replay_equals_what_the_live_console_showed(
        replay_hub: HubProcess, played: Played, rdb: asyncpg.Connection) -> None:
    snapshots = await rdb.fetchval(
        "SELECT count(*) FROM replay_snapshots WHERE taken_at BETWEEN to_timestamp($1) "
        "AND to_timestamp($2)", played.begin, played.end)
    assert snapshots >= 4, snapshots  # the story spans several: seeks start from recent ones
    first_taken = await rdb.fetchval(
        "SELECT extract(epoch FROM min(taken_at))::float8 FROM replay_snapshots")

    for at, live in played.quiet:
        want = replay_fold.keyed(live)
        # from the nearest snapshot, as a seek does
        pic = await replay_store.picture_at(rdb, at)
        assert pic.seq == live["seq"], (played.nearest(at), pic.seq, live["seq"])
        assert replay_fold.keyed(replay_fold.frame(pic)) == want, (
            played.nearest(at), _diff(replay_fold.keyed(replay_fold.frame(pic)), want))
        # from the first snapshot: the same picture, however far the fold runs
        far = await replay_store.picture_at(rdb, at, start_before=first_taken)
        assert replay_fold.keyed(replay_fold.frame(far)) == want, at
        # and as the console's replay mode receives it
        r = replay_hub.client.get("/api/replay/picture", params={"at": at})
        assert r.status_code == 200, r.text
        assert r.json()["seq"] == live["seq"] and replay_fold.keyed(r.json()) == want

    # The comparison covered the story: several distinct moments, a case with a unit on it,
    # a jam alarm, the patrol cars moved.
    compared = [live for _, live in played.quiet]
    assert len({c["seq"] for c in compared}) >= 3, (played.captured, len(compared))
    assert any(i["assigned_unit"] for c in compared for i in c["incidents"])
    assert any(a["rule_id"] == "traffic_jam" for c in compared for a in c["alarms"])
    moved = {u["position_ts"] for c in compared for u in c["units"] if u["id"] == PATROL[0]}
    assert len(moved) >= 3, moved

    # The server KPI tiles as of a moment of the story: the town's devices, the story's
    # counters reporting (readings in the minute before), and no device before the town.
    mid = played.quiet[len(played.quiet) // 2][0]
    k = replay_hub.client.get("/api/replay/kpis", params={"at": mid}).json()
    assert k["devices"] == len(TOWN["devices"]) and k["updated_at"] == mid
    assert k["ingest_points_per_s"] > 0 and k["devices_online"] >= 3
    town_loaded = await rdb.fetchval(
        "SELECT extract(epoch FROM min(created_at))::float8 FROM devices")
    early = replay_hub.client.get("/api/replay/kpis", params={"at": town_loaded - 60}).json()
    assert early["devices"] == 0 and early["devices_online"] == 0


async def test_replay_refuses_the_future_and_time_before_history(
        replay_hub: HubProcess) -> None:
    c = replay_hub.client
    r = c.get("/api/replay/picture", params={"at": time.time() + 60})
    assert r.status_code == 422 and r.json()["error"]["code"] == "replay.future"
    r = c.get("/api/replay/picture", params={"at": 1_000_000_000})
    assert r.status_code == 404 and r.json()["error"]["code"] == "replay.no_history"
    now = time.time() - 10
    r = c.get("/api/replay/chunk", params={"after_seq": 0, "clock": now, "start": now,
                                           "end": now - 1})
    assert r.status_code == 422 and r.json()["error"]["code"] == "replay.bad_span"
    r = c.get("/api/replay/chunk", params={"after_seq": 0, "clock": now - 500,
                                           "start": now - 500, "end": now})
    assert r.status_code == 422 and r.json()["error"]["code"] == "replay.span_too_long"
    h = c.get("/api/replay/history").json()
    assert h["snapshots"] >= 1 and h["from"] < h["to"] < time.time()


# ================================================================ the replay in Chromium

def _replay_state(page: Page) -> dict[str, Any]:
    return page.evaluate("""() => ({state: window.gridhub.state,
        at: window.gridhub.replay.now, seq: window.gridhub.lastSeq})""")  # type: ignore[no-any-return]


def _seek_with_slider(page: Page, at: float) -> None:
    page.eval_on_selector("#replay-seek", """(e, v) => { e.value = String(v);
        e.dispatchEvent(new Event('change')); }""", at)
    page.wait_for_function("""(v) => { const r = window.gridhub.replay;
        return !r.loading && Math.abs(r.now - v) < 1e-3; }""", arg=at, timeout=10000)


def test_replay_in_the_browser_seeks_plays_and_pauses(
        browser: Browser, replay_hub: HubProcess, played: Played) -> None:
    ctx = browser.new_context(viewport={"width": 1920, "height": 1080}, locale="zh-CN",
                              storage_state=login_state(browser, replay_hub))
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(f"{replay_hub.url}/replay?from={played.begin}&to={played.end}")
        page.wait_for_function("window.gridhub && window.gridhub.phase === 'replay' && "
                               "window.gridhub.mapReady", timeout=20000)
        # Marked as a replay everywhere an operator looks, and nothing to act with.
        assert "replay" in (page.get_attribute("body", "class") or "")
        assert page.inner_text("#replay-flag") == "复盘回放 · 非实时"
        assert page.inner_text("#conn-status .label") == "复盘回放"
        assert page.inner_text("#replay-map-flag") == "复盘回放 · 非实时"
        assert not page.is_visible("#map-create")

        # Seek (the slider) to moments the live console was captured at: the same picture,
        # and the tiles drawn from it.
        picked = [played.quiet[len(played.quiet) // 3], played.quiet[-1]]
        for at, live in picked:
            _seek_with_slider(page, at)
            got = _replay_state(page)
            assert got["seq"] == live["seq"]
            assert replay_fold.keyed(got["state"]) == replay_fold.keyed(live)
            active = sum(a["state"] == "active" for a in live["alarms"])
            page.wait_for_function("(n) => document.getElementById('kpi-alarms')"
                                   ".textContent === String(n)", arg=active, timeout=5000)

        # Play at 2x from a captured moment (fixes are then sent one per second per unit,
        # as the live feed sends them), pause, and the clock stops; the picture played to
        # equals the server's fold at the paused time.
        at0 = played.quiet[0][0]
        _seek_with_slider(page, at0)
        page.select_option("#replay-speed", "2")
        page.click("#replay-play")
        page.wait_for_function(f"window.gridhub.replay.now > {at0 + 6}", timeout=15000)
        page.click("#replay-play")
        assert page.get_attribute("#replay-bar", "data-playing") == "false"
        paused = _replay_state(page)
        page.wait_for_timeout(800)
        assert _replay_state(page)["at"] == paused["at"]
        r = replay_hub.client.get("/api/replay/picture", params={"at": paused["at"]})
        assert r.status_code == 200, r.text
        assert paused["seq"] == r.json()["seq"]
        assert replay_fold.keyed(paused["state"]) == replay_fold.keyed(r.json())

        # The busiest moment (cases on the board, alarms in the feed), for the docs.
        busy = max(played.quiet, key=lambda c: (len(c[1]["alarms"]) + len(c[1]["incidents"]),
                                                c[0]))[0]
        _seek_with_slider(page, busy)
        page.wait_for_timeout(500)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "replay-1920x1080.png"))
        assert errors == []
    finally:
        ctx.close()
