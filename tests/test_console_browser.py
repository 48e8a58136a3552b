"""The console in real headless Chromium: a reading published over MQTT shows up as an
alarm and then as an assignment on the page, live, without a reload."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page

from hub.live import POSITION_WINDOW_FRAMES
from ingest import wire
from tests.conftest import ARTIFACTS, HubProcess, Publisher, town_doc


@pytest.fixture
def page(browser: Browser, auth_state: Any) -> Iterator[Page]:
    ctx = browser.new_context(viewport={"width": 1920, "height": 1080}, locale="zh-CN",
                              storage_state=auth_state)
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.errors = errors  # type: ignore[attr-defined]
    yield pg
    ctx.close()


def _open_console(page: Page, hub: HubProcess) -> None:
    page.goto(hub.url + "/")
    page.wait_for_function("window.gridhub && window.gridhub.connected === true", timeout=20000)


def test_console_renders_the_town(page: Page, hub: HubProcess) -> None:
    _open_console(page, hub)
    town = town_doc()
    counts: dict[str, Any] = page.evaluate("""() => {
        const s = window.gridhub.state;
        const n = (x) => x instanceof Map ? x.size : Object.keys(x).length;
        return {units: n(s.units), ids: Object.keys(s.units), title: document.title,
                paths: document.querySelectorAll('.leaflet-overlay-pane canvas, '
                    + '.leaflet-overlay-pane path').length};
    }""")
    # every unit of the town, and every unit the hub has (the admin pages' tests add some
    # to the shared test database)
    assert {u["id"] for u in town["units"]} <= set(counts["ids"])
    assert counts["units"] == len(hub.client.get("/api/units").json())
    assert counts["paths"] > 0, "the map drew nothing"
    assert "徐霞客镇" in page.content()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "console-1920x1080.png"))
    assert page.errors == []  # type: ignore[attr-defined]


def test_alarm_then_assignment_appear_live(page: Page, hub: HubProcess,
                                           publisher: Publisher) -> None:
    _open_console(page, hub)
    town = town_doc()
    # a gas detector no other test uses
    gas = [d for d in town["devices"] if d["model"] == "gas_detector"][-1]
    now = time.time()
    squads = [u for u in town["units"] if "work_safety" in u["qualifications"]]
    for u in squads:  # fresh positions so the engine ranks by road time
        publisher.publish(wire.gps_topic(u["id"]), wire.encode_gps(now, u["lat"], u["lon"], 0.0))
    publisher.publish(wire.telemetry_topic(gas["id"]),
                      wire.encode_telemetry(now, {"gas_lel_pct": 55.0}))

    # The threshold alarm (the one that opens a case): the same reading may also trip the
    # rate-of-change rule, whose alarm opens none, when the detector has reported before
    # (other tests' hubs share the broker, and every hub hears every reading).
    alarm_id = page.wait_for_function(
        """(dev) => { const a = window.gridhub.state.alarms;
                      const all = a instanceof Map ? [...a.values()] : Object.values(a);
                      const x = all.find((x) => x.device_id === dev && x.state !== "cleared"
                                               && x.rule_id === "gas_lel_high");
                      return x ? String(x.id) : null; }""",
        arg=gas["id"], timeout=15000).json_value()
    page.locator(f'#alarm-list [data-alarm-id="{alarm_id}"]').wait_for(timeout=15000)
    incident_id = page.wait_for_function(
        """(aid) => { const a = window.gridhub.state.alarms;
                      const x = a instanceof Map ? a.get(aid) || a.get(Number(aid)) : a[aid];
                      return x && x.incident_id ? String(x.incident_id) : null; }""",
        arg=alarm_id, timeout=15000).json_value()
    row = page.locator(f'[data-incident-id="{incident_id}"]')
    row.wait_for(timeout=15000)
    page.wait_for_function(
        """(iid) => { const i = window.gridhub.state.incidents;
                      const x = i instanceof Map ? i.get(iid) || i.get(Number(iid)) : i[iid];
                      return x && x.assigned_unit; }""", arg=incident_id, timeout=15000)
    unit_id = page.evaluate(
        """(iid) => { const i = window.gridhub.state.incidents;
                      const x = i instanceof Map ? i.get(iid) || i.get(Number(iid)) : i[iid];
                      return x.assigned_unit; }""", incident_id)
    unit = next(u for u in town["units"] if u["id"] == unit_id)
    assert "work_safety" in unit["qualifications"]
    page.wait_for_function(
        "([sel, name]) => document.querySelector(sel)?.textContent.includes(name)",
        arg=[f'[data-incident-id="{incident_id}"]', unit["name"]], timeout=15000)
    page.screenshot(path=str(ARTIFACTS / "console-assignment-1920x1080.png"))
    # it all came over the websocket: the page never reloaded
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
    assert page.errors == []  # type: ignore[attr-defined]


def test_operator_clears_an_alarm_with_a_reason(page: Page, hub: HubProcess,
                                                publisher: Publisher) -> None:
    _open_console(page, hub)
    town = town_doc()
    smoke = [d for d in town["devices"] if d["model"] == "smoke_detector"][-1]
    publisher.publish(wire.telemetry_topic(smoke["id"]), wire.encode_telemetry(
        time.time(), {"smoke_obscuration_pct": 12.0, "temperature_c": 40.0}))
    row = page.locator("[data-alarm-id]", has_text=smoke["name"]).first
    row.wait_for(timeout=15000)
    alarm_id = row.get_attribute("data-alarm-id")
    row.locator("button.clear").click()
    dialog = page.locator("#reason-dialog")
    dialog.locator("textarea[name=reason]").fill("现场核实为误报")
    dialog.locator("button[value=ok]").click()
    # the cleared alarm leaves the live list through the feed
    page.locator(f'[data-alarm-id="{alarm_id}"]').wait_for(state="detached", timeout=15000)
    body = hub.client.get("/api/alarms", params={"state": "all"}).json()
    cleared = next(a for a in body if str(a["id"]) == alarm_id)
    assert cleared["state"] == "cleared" and cleared["clear_reason"] == "现场核实为误报"
    assert page.errors == []  # type: ignore[attr-defined]


def test_a_grouped_alarm_shows_how_many_devices_are_in_it(page: Page, hub: HubProcess) -> None:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from core.db import create_pool
    from ingest import alarms

    _open_console(page, hub)
    town = town_doc()
    by_grid: dict[str, list[str]] = {}
    for d in town["devices"]:
        by_grid.setdefault(d["grid"], []).append(d["id"])
    grid, devices = next((g, ds[:3]) for g, ds in sorted(by_grid.items()) if len(ds) >= 3)
    group = f"storm:{grid}-browser"

    async def write(join: bool) -> int:
        pool = await create_pool(hub.db_url, 1, 2)
        try:
            view: dict[str, Any] | None = None
            for d in devices:  # the writes the alarm watch makes for a grid's storm
                if join:
                    view = await alarms.join_group(
                        pool, rule_id="device_offline", group=group, grid_id=grid,
                        severity="minor", message="设备离线: 网格多个设备同时离线",
                        device_id=d, device_grid=grid, value=None, member_message=d,
                        ts=time.time())
                else:
                    view = await alarms.leave_group(pool, rule_id="device_offline",
                                                    group=group, device_id=d, ts=time.time())
            assert view is not None
            return int(view["id"])
        finally:
            await pool.close()

    def run(join: bool) -> int:  # Playwright's sync API holds this thread's event loop
        with ThreadPoolExecutor(1) as ex:
            return ex.submit(asyncio.run, write(join)).result()

    alarm_id = run(True)
    row = page.locator(f'#alarm-list [data-alarm-id="{alarm_id}"]')
    row.wait_for(timeout=15000)
    page.wait_for_function(
        "(sel) => document.querySelector(sel)?.textContent.includes('3 台设备')",
        arg=f'#alarm-list [data-alarm-id="{alarm_id}"] .members', timeout=15000)
    # the members leave; with the last one the group alarm clears and leaves the list
    run(False)
    row.wait_for(state="detached", timeout=15000)
    assert page.errors == []  # type: ignore[attr-defined]


def test_console_acknowledges_positions_so_every_fix_reaches_the_map(
        page: Page, hub: HubProcess, publisher: Publisher) -> None:
    """More position frames than the hub's flow-control window: the page acks them
    (feed.js), so every unit's fix arrives; a page that did not ack would be held at the
    window, with the rest waiting in its outbox on the hub."""
    _open_console(page, hub)
    units = town_doc()["units"][:POSITION_WINDOW_FRAMES + 4]
    ts = time.time() + 1.0  # newer than any "now" fix other tests publish
    fixes = {str(u["id"]): ts + k / 100 for k, u in enumerate(units)}
    for u in units:  # a tick apart or more: a frame each at least
        publisher.publish(wire.gps_topic(u["id"]), wire.encode_gps(
            fixes[str(u["id"])], u["lat"], u["lon"] + 0.0002, 4.0, 90.0))
        time.sleep(0.15)
    page.wait_for_function(
        """(fixes) => Object.entries(fixes).every(([id, ts]) => {
               const u = window.gridhub.state.units[id];
               return u && Math.abs(u.position_ts - ts) < 1e-6; })""",
        arg=fixes, timeout=15000)
    assert page.evaluate("window.gridhub.feed._positionFrames") >= POSITION_WINDOW_FRAMES
    assert page.errors == []  # type: ignore[attr-defined]
