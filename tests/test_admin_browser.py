"""The administration pages in real headless Chromium against a real hub: each page's main
path and its bad-input path, each change seen on an open console without a reload, every
change recorded under the logged-in admin (never a name from the request)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page

from core.db import connect
from tests.browser import login_state
from tests.conftest import (
    ARTIFACTS,
    HubProcess,
    create_database,
    drop_database,
    load_town,
    town_doc,
)

SHOTS = ARTIFACTS / "admin"


@pytest.fixture
def context(browser: Browser, auth_state: Any) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport={"width": 1600, "height": 1000}, locale="zh-CN",
                              storage_state=auth_state)
    yield ctx
    ctx.close()


def _page(ctx: BrowserContext, path: str, hub: HubProcess) -> Page:
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("dialog", lambda d: d.accept())  # the pages confirm before destructive steps
    pg.errors = errors  # type: ignore[attr-defined]
    pg.goto(hub.url + path)
    if path == "/":
        pg.wait_for_function(
            "window.gridhub && window.gridhub.connected && window.gridhub.mapReady",
            timeout=20000)
    else:
        pg.wait_for_selector("body[data-ready='1']", timeout=15000)
    return pg


def _shot(pg: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    pg.bring_to_front()  # a page behind the console's tab is not painted
    pg.screenshot(path=str(SHOTS / f"{name}.png"))


def _audit(hub: HubProcess, target: str) -> list[dict[str, Any]]:
    r = hub.client.get("/api/audit", params={"target": target})
    assert r.status_code == 200, r.text
    return r.json()["events"]  # type: ignore[no-any-return]


def _error(pg: Page, box: str) -> str:
    pg.wait_for_selector(f"#{box}:not([hidden])", timeout=10000)
    return pg.get_attribute(f"#{box}", "data-code") or ""


def _add_bogus_option(pg: Page, select: str, value: str) -> None:
    """An option the server does not know (a grid deleted meanwhile, a forged form)."""
    pg.evaluate("([s, v]) => { const o = document.createElement('option'); o.value = v;"
                " o.textContent = v; document.getElementById(s).append(o); }", [select, value])


# ------------------------------------------------------------------ devices
def test_devices_register_edit_credentials_decommission(context: BrowserContext,
                                                        hub: HubProcess) -> None:
    town = town_doc()
    grid = town["grids"]["features"][0]["properties"]["id"]
    cc = town["command_center"]
    dev = f"ADM-{uuid.uuid4().hex[:6]}"
    console = _page(context, "/", hub)
    admin = _page(context, "/admin/devices", hub)
    me = admin.inner_text("#user-name")
    admin.fill("#f-id", dev)
    admin.select_option("#f-kind", "environment")
    admin.fill("#f-name", "测试水位计")
    admin.fill("#f-model", "WL-100")
    admin.select_option("#f-grid", grid)
    admin.fill("#f-lon", str(cc["lon"] + 0.002))
    admin.fill("#f-lat", str(cc["lat"] + 0.001))
    admin.fill("#f-metrics", "water_level_m, battery_v")
    admin.fill("#f-interval", "30")
    admin.click("#device-save")
    row = admin.locator(f"#device-list tr[data-device-id='{dev}']")
    row.wait_for(timeout=10000)
    # On the open console without a reload: the new device is on the map.
    console.wait_for_function(f"window.gridhub.devices.has('{dev}')", timeout=10000)
    shown = console.evaluate(f"window.gridhub.devices.get('{dev}')")
    assert shown["metrics"] == ["water_level_m", "battery_v"] and shown["interval_s"] == 30

    # Move it: the console's marker follows.
    row.locator(".act-edit").click()
    admin.fill("#f-lat", str(cc["lat"] + 0.003))
    admin.fill("#f-name", "测试水位计(移位)")
    admin.click("#device-save")
    console.wait_for_function(
        f"Math.abs(window.gridhub.devices.get('{dev}').lat - {cc['lat'] + 0.003}) < 1e-9",
        timeout=10000)
    admin.locator(f"#device-list tr[data-device-id='{dev}']", has_text="移位").wait_for()

    # MQTT credentials: revealed once, with a QR code; provisioned, then rotated.
    row.locator(".act-credentials").click()
    admin.wait_for_selector("#reveal[open]")
    secret = admin.locator("#reveal-fields dd.secret").nth(1).inner_text()
    assert len(secret) >= 16
    assert admin.locator("#reveal-qr svg").count() == 1
    _shot(admin, "admin_devices_reveal")
    admin.click("#reveal-close")
    assert admin.locator("#reveal-fields dd").count() == 0  # forgotten on close
    row.locator(".act-credentials").click()
    admin.wait_for_selector("#reveal[open]")
    assert admin.locator("#reveal-fields dd.secret").nth(1).inner_text() != secret
    admin.click("#reveal-close")

    row.locator(".act-health").click()
    admin.wait_for_selector("#health-card:not([hidden])")
    assert dev in admin.inner_text("#health-title")
    _shot(admin, "admin_devices")

    # Decommissioned: gone from the console's map, its MQTT account revoked.
    row.locator(".act-decommission").click()
    console.wait_for_function(f"!window.gridhub.devices.has('{dev}')", timeout=10000)
    accounts = {a["principal"]: a for a in hub.client.get("/api/mqtt/accounts").json()}
    assert accounts[dev]["active"] is False

    kinds = {(e["kind"], e["actor"]) for e in _audit(hub, dev)}
    assert {("device.registered", me), ("device.changed", me),
            ("mqtt_account.provisioned", me), ("mqtt_account.rotated", me),
            ("device.decommissioned", me)} <= kinds
    assert not console.errors and not admin.errors  # type: ignore[attr-defined]


def _fresh_device(hub: HubProcess) -> str:
    town = town_doc()
    cc = town["command_center"]
    dev = f"ADM-{uuid.uuid4().hex[:6]}"
    r = hub.client.post("/api/admin/devices", json={
        "id": dev, "kind": "environment", "name": "测试水温计", "model": "WT-1",
        "grid_id": town["grids"]["features"][0]["properties"]["id"],
        "lon": cc["lon"] + 0.001, "lat": cc["lat"], "metrics": ["water_temp_c"],
        "interval_s": 60})
    assert r.status_code in (200, 201), r.text
    return dev


def test_devices_senml_mapping_saved_from_the_device_page(context: BrowserContext,
                                                          hub: HubProcess) -> None:
    dev = _fresh_device(hub)
    admin = _page(context, "/admin/devices", hub)
    me = admin.inner_text("#user-name")
    admin.locator(f"#device-list tr[data-device-id='{dev}'] .act-senml").click()
    admin.wait_for_selector(f"#senml-card[data-device-id='{dev}']:not([hidden])")
    assert admin.locator("#senml-defaults tbody tr", has_text="Cel").count() >= 1
    admin.fill("#senml-map", "Cel = water_temp_c\n\n3303/1/5700 = pond_temp_c\n")
    admin.click("#senml-save")
    admin.wait_for_selector("#senml-done:not([hidden])", timeout=10000)
    stored = hub.client.get(f"/api/devices/{dev}/senml-map").json()
    assert stored["map"] == {"Cel": "water_temp_c", "3303/1/5700": "pond_temp_c"}
    assert ("device.senml_map_changed", me) in {(e["kind"], e["actor"])
                                                for e in _audit(hub, dev)}
    # opened again, the page shows what is stored
    admin.click("#senml-close")
    admin.locator(f"#device-list tr[data-device-id='{dev}'] .act-senml").click()
    admin.wait_for_function("document.getElementById('senml-map').value.includes('pond')")
    _shot(admin, "admin_devices_senml")
    assert not admin.errors  # type: ignore[attr-defined]


def test_devices_bad_senml_mapping_changes_nothing(context: BrowserContext,
                                                   hub: HubProcess) -> None:
    dev = _fresh_device(hub)
    admin = _page(context, "/admin/devices", hub)
    admin.locator(f"#device-list tr[data-device-id='{dev}'] .act-senml").click()
    admin.wait_for_selector(f"#senml-card[data-device-id='{dev}']:not([hidden])")
    admin.fill("#senml-map", "Cel water_temp_c")  # no "="
    admin.click("#senml-save")
    assert _error(admin, "senml-error") == "senml_map.bad_line"
    admin.fill("#senml-map", "3303/1 = pond_temp_c\nCel = bad metric!")
    admin.click("#senml-save")
    admin.wait_for_function(
        "document.getElementById('senml-error').dataset.code === 'senml_map.invalid'")
    message = admin.inner_text("#senml-error")
    assert "3303/1" in message and "bad metric!" in message
    assert hub.client.get(f"/api/devices/{dev}/senml-map").json()["map"] == {}
    assert all(e["kind"] != "device.senml_map_changed" for e in _audit(hub, dev))
    assert not admin.errors  # type: ignore[attr-defined]


def test_devices_bad_input_changes_nothing(context: BrowserContext, hub: HubProcess) -> None:
    town = town_doc()
    existing = town["devices"][0]["id"] if isinstance(town["devices"], list) else None
    assert existing
    grid = town["grids"]["features"][0]["properties"]["id"]
    admin = _page(context, "/admin/devices", hub)
    before = hub.client.get("/api/admin/devices").json()

    # A duplicate id.
    admin.fill("#f-id", existing)
    admin.fill("#f-name", "重复")
    admin.fill("#f-model", "X")
    admin.select_option("#f-grid", grid)
    admin.fill("#f-lon", "120.43")
    admin.fill("#f-lat", "31.80")
    admin.click("#device-save")
    assert _error(admin, "device-error") == "device.exists"
    assert "device.exists" in admin.inner_text("#device-error")

    # An unknown grid.
    new_id = f"ADM-{uuid.uuid4().hex[:6]}"
    admin.fill("#f-id", new_id)
    _add_bogus_option(admin, "f-grid", "NO-SUCH-GRID")
    admin.select_option("#f-grid", "NO-SUCH-GRID")
    admin.click("#device-save")
    admin.wait_for_function(
        "document.getElementById('device-error').dataset.code === 'grid.unknown'")
    _shot(admin, "admin_devices_error")
    assert hub.client.get("/api/admin/devices").json() == before  # nothing half-changed
    assert not _audit(hub, new_id)


# ------------------------------------------------------------------ units and duty
def _unit_form(pg: Page, unit: str, grid: str, quals: list[str]) -> None:
    pg.fill("#u-id", unit)
    pg.select_option("#u-type", "squad")
    pg.fill("#u-name", f"文化执法队 {unit}")
    pg.fill("#u-members", "4")
    pg.select_option("#u-grid", grid)
    for q in quals:
        pg.check(f"#u-quals input[value='{q}']")


def test_units_create_duty_roster(context: BrowserContext, hub: HubProcess) -> None:
    grid = town_doc()["grids"]["features"][1]["properties"]["id"]
    unit = f"ADMU-{uuid.uuid4().hex[:6]}"
    console = _page(context, "/", hub)
    admin = _page(context, "/admin/units", hub)
    me = admin.inner_text("#user-name")
    _unit_form(admin, unit, grid, ["culture", "education"])
    admin.click("#unit-save")
    row = admin.locator(f"#unit-list tr[data-unit-id='{unit}']")
    row.wait_for(timeout=10000)
    console.wait_for_function(
        f"(window.gridhub.state.units['{unit}'] || {{}}).status === 'available'", timeout=10000)
    assert console.evaluate(f"window.gridhub.state.units['{unit}'].qualifications") == [
        "culture", "education"]

    # Edit: a qualification more, a member more; the console's picture follows.
    row.locator(".act-edit").click()
    admin.check("#u-quals input[value='health']")
    admin.fill("#u-members", "5")
    admin.click("#unit-save")
    console.wait_for_function(
        f"window.gridhub.state.units['{unit}'].qualifications.includes('health')", timeout=10000)

    # Off duty by hand with a handover note: off the dispatchable picture at once.
    row.locator(".act-duty").click()
    admin.wait_for_selector("#duty-card:not([hidden])")
    admin.fill("#duty-note", "下班交接:器材已归还")
    admin.click("#duty-off")
    console.wait_for_function(
        f"window.gridhub.state.units['{unit}'].status === 'off_duty'", timeout=10000)
    admin.locator("#duty-log tbody tr", has_text="器材已归还").wait_for(timeout=10000)
    assert me in admin.inner_text("#duty-log")

    # A shift on the roster.
    admin.fill("#shift-starts", "08:00")
    admin.fill("#shift-ends", "20:00")
    admin.click("#shift-add")
    admin.locator("#shift-list li[data-shift-id]").wait_for(timeout=10000)
    _shot(admin, "admin_units")

    admin.click("#duty-on")
    console.wait_for_function(
        f"window.gridhub.state.units['{unit}'].status === 'available'", timeout=10000)
    kinds = {(e["kind"], e["actor"]) for e in _audit(hub, unit)}
    assert {("unit.created", me), ("unit.changed", me), ("unit.duty", me)} <= kinds
    assert not console.errors and not admin.errors  # type: ignore[attr-defined]


def test_units_bad_input_changes_nothing(context: BrowserContext, hub: HubProcess) -> None:
    town = town_doc()
    grid = town["grids"]["features"][0]["properties"]["id"]
    existing = town["units"][0]["id"]
    admin = _page(context, "/admin/units", hub)
    before = hub.client.get("/api/admin/units").json()

    _unit_form(admin, existing, grid, ["fire"])
    admin.click("#unit-save")
    assert _error(admin, "unit-error") == "unit.exists"

    fresh = f"ADMU-{uuid.uuid4().hex[:6]}"
    admin.fill("#u-id", fresh)
    _add_bogus_option(admin, "u-grid", "NO-SUCH-GRID")
    admin.select_option("#u-grid", "NO-SUCH-GRID")
    admin.click("#unit-save")
    admin.wait_for_function(
        "document.getElementById('unit-error').dataset.code === 'grid.unknown'")

    # On duty twice: refused with its code, nothing logged.
    row = admin.locator(f"#unit-list tr[data-unit-id='{existing}']")
    row.locator(".act-duty").click()
    admin.wait_for_selector("#duty-card:not([hidden])")
    status = hub.client.get("/api/admin/units").json()
    current = next(u for u in status if u["id"] == existing)["status"]
    admin.click("#duty-off" if current == "off_duty" else "#duty-on")
    code = _error(admin, "duty-error")
    assert code == "unit.no_change"
    after = hub.client.get("/api/admin/units").json()
    assert [u for u in after if u["id"] != existing] == [
        u for u in before if u["id"] != existing]
    assert not any(u["id"] == fresh for u in after)


# ------------------------------------------------------------------ users and tokens
def test_users_create_reset_disable_tokens(browser: Browser, context: BrowserContext,
                                           hub: HubProcess) -> None:
    admin = _page(context, "/admin/users", hub)
    me = admin.inner_text("#user-name")
    name = f"op-{uuid.uuid4().hex[:6]}"
    admin.fill("#n-username", name)
    admin.fill("#n-display", "夜班值班员")
    admin.select_option("#n-role", "operator")
    admin.click("#user-save")
    admin.wait_for_selector("#reveal[open]")
    password = admin.locator("#reveal-fields dd.secret").nth(1).inner_text()
    admin.click("#reveal-close")
    row = admin.locator(f"#user-list tr[data-username='{name}']")
    row.wait_for()
    # The password works on the real login page.
    other = browser.new_context()
    try:
        login = other.new_page()
        login.goto(hub.url + "/login?next=/reports")
        login.fill("#username", name)
        login.fill("#password", password)
        login.click("#login-submit")
        login.wait_for_url(hub.url + "/reports")
    finally:
        other.close()

    row.locator(".act-reset").click()
    admin.wait_for_selector("#reveal[open]")
    assert admin.locator("#reveal-fields dd.secret").nth(1).inner_text() != password
    admin.click("#reveal-close")
    row.locator(".act-disable").click()
    admin.wait_for_function(
        f"document.querySelector(\"#user-list tr[data-username='{name}'] .state\")"
        ".textContent === '已禁用'")
    assert row.locator(".last-login").inner_text() != "从未"

    # A token: revealed once, works, then revoked.
    tname = f"tok-{uuid.uuid4().hex[:6]}"
    admin.fill("#k-name", tname)
    admin.select_option("#k-role", "viewer")
    admin.click("#token-save")
    admin.wait_for_selector("#reveal[open]")
    token = admin.locator("#reveal-fields dd.secret").first.inner_text()
    admin.click("#reveal-close")
    me_url = hub.url + "/api/me"
    assert httpx.get(me_url, headers={"Authorization": f"Bearer {token}"},
                     verify=False).status_code == 200
    _shot(admin, "admin_users")
    admin.locator(f"#token-list tr[data-token-name='{tname}'] .act-revoke").click()
    admin.locator(f"#token-list tr.retired[data-token-name='{tname}']").wait_for()
    assert httpx.get(me_url, headers={"Authorization": f"Bearer {token}"},
                     verify=False).status_code == 401

    kinds = {(e["kind"], e["actor"]) for e in _audit(hub, name)}
    assert {("user.created", me), ("user.changed", me), ("user.disabled", me)} <= kinds
    assert {("token.created", me), ("token.revoked", me)} <= {
        (e["kind"], e["actor"]) for e in _audit(hub, tname)}
    assert not admin.errors  # type: ignore[attr-defined]


def test_users_bad_input_changes_nothing(context: BrowserContext, hub: HubProcess) -> None:
    admin = _page(context, "/admin/users", hub)
    me = admin.inner_text("#user-name")
    before = hub.client.get("/api/admin/users").json()
    admin.fill("#n-username", me)
    admin.click("#user-save")
    assert _error(admin, "user-error") == "auth.user_exists"
    # An admin cannot lock themself out.
    admin.locator(f"#user-list tr[data-username='{me}'] .act-disable").click()
    admin.wait_for_function(
        "document.getElementById('user-error').dataset.code === 'auth.self'")
    # A unit token for a unit that does not exist.
    admin.fill("#k-name", f"tok-{uuid.uuid4().hex[:6]}")
    admin.select_option("#k-role", "unit")
    admin.fill("#k-unit", "NO-SUCH-UNIT")
    admin.click("#token-save")
    assert _error(admin, "token-error") == "unit.not_found"
    after = hub.client.get("/api/admin/users").json()
    assert [(u["username"], u["disabled"]) for u in after] == [
        (u["username"], u["disabled"]) for u in before]


def test_admin_pages_need_their_role(browser: Browser, hub: HubProcess) -> None:
    """An operator is refused the pages and their APIs (403 with the policy's code)."""
    state = login_state(browser, hub, role="operator")
    ctx = browser.new_context(storage_state=state)
    try:
        pg = ctx.new_page()
        for path in ("/admin/devices", "/admin/units", "/admin/users"):
            r = pg.goto(hub.url + path)
            assert r is not None and r.status == 403, path
        api = pg.request.get(hub.url + "/api/admin/devices")
        assert api.status == 403 and api.json()["error"]["code"] == "auth.forbidden"
    finally:
        ctx.close()


# ------------------------------------------------------------------ rules
def _rule_form(pg: Page, rule_id: str, params: str) -> None:
    pg.fill("#r-id", rule_id)
    pg.fill("#r-name", "测试:可燃气体极高")
    pg.select_option("#r-kind", "threshold")
    pg.fill("#r-metric", "gas_lel_pct")
    pg.select_option("#r-severity", "warning")
    pg.fill("#r-params", params)


def test_rules_backtest_then_save_disable_enable(context: BrowserContext,
                                                 hub: HubProcess) -> None:
    admin = _page(context, "/admin/rules", hub)
    me = admin.inner_text("#user-name")
    rule = f"adm_rule_{uuid.uuid4().hex[:6]}"
    _rule_form(admin, rule, '{"raise_above": 99.0, "clear_below": 90.0}')
    # A backtest of the draft runs on recorded history and stores nothing.
    admin.click("#rule-backtest")
    admin.wait_for_selector("#backtest-result:not([hidden])", timeout=30000)
    assert admin.get_attribute("#backtest-result", "data-alarms") is not None
    assert hub.client.get(f"/api/rules/{rule}").status_code == 404
    admin.click("#rule-save")
    row = admin.locator(f"#rule-list tr[data-rule-id='{rule}']")
    row.wait_for(timeout=10000)
    stored = hub.client.get(f"/api/rules/{rule}").json()
    assert stored["params"] == {"raise_above": 99.0, "clear_below": 90.0}
    assert stored["updated_by"] == me
    _shot(admin, "admin_rules")
    row.locator(".act-disable").click()
    admin.locator(f"#rule-list tr.retired[data-rule-id='{rule}']").wait_for(timeout=10000)
    admin.locator(f"#rule-list tr[data-rule-id='{rule}'] .act-enable").click()
    admin.locator(f"#rule-list tr[data-rule-id='{rule}'] .act-disable").wait_for(timeout=10000)
    assert hub.client.get(f"/api/rules/{rule}").json()["enabled"] is True
    kinds = [(e["kind"], e["actor"]) for e in _audit(hub, rule)]
    assert kinds.count(("rule.changed", me)) == 2 and ("rule.disabled", me) in kinds
    assert not admin.errors  # type: ignore[attr-defined]


SLOW_MODEL = "bt_page"  # the slow backtest's devices: 600 of them, 5 readings each
SLOW_DEVICES = 600


def _off_loop(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine to its end on a thread of its own (Playwright's sync API owns this
    thread's event loop)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _seed_slow(url: str) -> None:
    conn = await connect(url)
    try:
        grid = await conn.fetchval("SELECT id FROM grids ORDER BY id LIMIT 1")
        ids = [f"BTUI-{i:04d}" for i in range(SLOW_DEVICES)]
        await conn.executemany(
            """INSERT INTO devices (id, kind, model, name, lon, lat, grid_id, metrics,
                                    interval_s)
               VALUES ($1, 'environment', $2, $1, 120.38, 31.84, $3, '{v}', 60)""",
            [(d, SLOW_MODEL, grid) for d in ids])
        base = round(time.time()) - 3600
        await conn.executemany(
            "INSERT INTO telemetry (ts, device_id, metric, value, received_at) VALUES "
            "(to_timestamp($1), $2, 'v', $3, now())",
            [(base + 60 * k, d, 99.0 if (i + k) % 4 == 0 else 1.0)
             for i, d in enumerate(ids) for k in range(5)])
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def slow_backtest_hub(base_db_url: str, mqtt_url: str) -> Iterator[HubProcess]:
    """A web hub of its own whose backtests take seconds (a CPU share of 0.5 %), over a town
    of its own with 600 devices' readings: long enough to watch one run."""
    name = f"gridhub_btui{uuid.uuid4().hex[:8]}"
    url = _off_loop(create_database(base_db_url, name))
    try:
        _off_loop(load_town(url))
        _off_loop(_seed_slow(url))
        hub = HubProcess(url, mqtt_url, roles="web",
                         extra_env={"HUB_BACKTEST_CPU_SHARE": "0.005"}).start()
        try:
            yield hub
        finally:
            hub.stop()
    finally:
        _off_loop(drop_database(base_db_url, name))


def test_rules_page_shows_a_running_backtests_progress_and_cancels_it(
        browser: Browser, slow_backtest_hub: HubProcess) -> None:
    """While a backtest runs the page shows how far it has got (readings, devices done of
    all, seconds of the time cap: polled from GET /api/rules/backtest/{job}); its cancel
    button ends it, and the page says it was cancelled."""
    hub = slow_backtest_hub
    ctx = browser.new_context(viewport={"width": 1600, "height": 1000}, locale="zh-CN",
                              storage_state=login_state(browser, hub))
    try:
        admin = _page(ctx, "/admin/rules", hub)
        _rule_form(admin, f"adm_rule_{uuid.uuid4().hex[:6]}", '{"raise_above": 50}')
        admin.fill("#r-metric", "v")
        admin.fill("#r-model", SLOW_MODEL)
        admin.click("#rule-backtest")
        admin.wait_for_function(
            "Number(document.getElementById('backtest-progress').dataset.readings) > 0",
            timeout=30000)
        box = admin.locator("#backtest-progress")
        assert box.is_visible() and admin.is_disabled("#rule-backtest")
        devices, done = int(box.get_attribute("data-devices") or 0), int(
            box.get_attribute("data-done") or 0)
        assert devices == SLOW_DEVICES and 0 < done < SLOW_DEVICES
        assert str(SLOW_DEVICES) in admin.inner_text("#backtest-progress-text")
        assert admin.get_attribute("#backtest-bar", "max") == str(SLOW_DEVICES)
        job = box.get_attribute("data-job") or ""
        assert hub.client.get(f"/api/rules/backtest/{job}").json()["devices"] == SLOW_DEVICES
        _shot(admin, "admin_rules_backtest_progress")
        admin.click("#backtest-cancel")
        assert _error(admin, "rule-error") == "backtest.cancelled"
        admin.wait_for_selector("#backtest-progress", state="hidden", timeout=10000)
        assert not admin.is_disabled("#rule-backtest")
        assert admin.is_hidden("#backtest-result")
        r = hub.client.get(f"/api/rules/backtest/{job}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "backtest.not_running"
        assert not admin.errors  # type: ignore[attr-defined]
    finally:
        ctx.close()


def test_rules_that_do_not_parse_are_refused(context: BrowserContext, hub: HubProcess) -> None:
    admin = _page(context, "/admin/rules", hub)
    rule = f"adm_rule_{uuid.uuid4().hex[:6]}"
    _rule_form(admin, rule, '{"raise_above": 99')
    admin.click("#rule-save")
    assert _error(admin, "rule-error") == "rule.params_not_json"
    admin.fill("#r-params", '{"clear_below": "high"}')
    admin.click("#rule-save")
    admin.wait_for_function(
        "document.getElementById('rule-error').dataset.code === 'rule.invalid'")
    admin.click("#rule-backtest")  # the backtest refuses it the same way
    admin.wait_for_function(
        "document.getElementById('rule-error').dataset.code === 'rule.invalid'")
    assert hub.client.get(f"/api/rules/{rule}").status_code == 404
    assert not _audit(hub, rule)


def test_rule_edits_reach_another_open_rules_page(context: BrowserContext,
                                                  hub: HubProcess) -> None:
    """A rule saved and disabled in one tab shows in another open rules page without a
    reload (the ``rule.changed`` event on the live feed)."""
    admin = _page(context, "/admin/rules", hub)
    other = _page(context, "/admin/rules", hub)
    other.wait_for_selector("body[data-live='1']", timeout=15000)
    rule = f"adm_rule_{uuid.uuid4().hex[:6]}"
    _rule_form(admin, rule, '{"raise_above": 98.0, "clear_below": 90.0}')
    admin.click("#rule-save")
    other.locator(f"#rule-list tr[data-rule-id='{rule}'] .act-disable").wait_for(
        timeout=10000)
    admin.locator(f"#rule-list tr[data-rule-id='{rule}'] .act-disable").click()
    other.locator(f"#rule-list tr.retired[data-rule-id='{rule}']").wait_for(timeout=10000)
    assert not admin.errors and not other.errors  # type: ignore[attr-defined]


# ------------------------------------------------------------------ SLA
def test_sla_limits_edit_and_reset(context: BrowserContext, hub: HubProcess) -> None:
    admin = _page(context, "/admin/sla", hub)
    me = admin.inner_text("#user-name")
    row = admin.locator("#limits-list tr[data-key='*/4']")
    row.locator(".act-edit").click()
    before = hub.client.get("/api/sla").json()
    old = next(x for x in before["limits"] if x["category"] == "*" and x["priority"] == 4)
    admin.fill("#l-register", "7")
    admin.click("#limits-save")
    admin.locator("#limits-list tr[data-key='*/4'] .act-reset").wait_for(timeout=10000)
    now = next(x for x in hub.client.get("/api/sla").json()["limits"]
               if x["category"] == "*" and x["priority"] == 4)
    assert now["register_s"] == 420 and now["dispatch_s"] == old["dispatch_s"]
    admin.locator("#sla-changes tbody tr", has_text=me).first.wait_for(timeout=10000)
    _shot(admin, "admin_sla")
    admin.locator("#limits-list tr[data-key='*/4'] .act-reset").click()
    admin.locator("#limits-list tr[data-key='*/4'] .act-reset").wait_for(state="detached",
                                                                         timeout=10000)
    assert hub.client.get("/api/sla").json()["limits"] == before["limits"]


def test_sla_edit_moves_open_case_countdowns_on_console(context: BrowserContext,
                                                        hub: HubProcess) -> None:
    """Limits edited on the SLA page: an open case's countdown on an open console, and
    another open SLA page, follow without a reload; undone, they go back."""
    category = "live_sla_" + "".join(chr(97 + b % 26) for b in uuid.uuid4().bytes[:6])
    device = town_doc()["devices"][2]
    r = hub.client.post("/api/incidents", json={
        "category": category, "qualification": "city_management", "priority": 3,
        "title": "时限联动", "lon": device["lon"], "lat": device["lat"]})
    assert r.status_code == 201, r.text
    iid, opened = r.json()["id"], r.json()["opened_at"]
    before = r.json()["sla"]["resolve"]["deadline"]
    console = _page(context, "/", hub)
    console.wait_for_function(f"window.gridhub.state.incidents['{iid}']", timeout=15000)
    other = _page(context, "/admin/sla", hub)
    other.wait_for_selector("body[data-live='1']", timeout=15000)
    admin = _page(context, "/admin/sla", hub)
    admin.fill("#l-category", category)
    admin.fill("#l-priority", "3")
    for field, minutes in (("register", 5), ("dispatch", 10), ("accept", 15),
                           ("arrive", 30), ("resolve", 777)):
        admin.fill(f"#l-{field}", str(minutes))
    admin.click("#limits-save")
    resolve = f"window.gridhub.state.incidents['{iid}'].sla.resolve.deadline"
    console.wait_for_function(f"Math.abs({resolve} - {opened + 777 * 60}) < 0.01",
                              timeout=10000)
    other.locator(f"#limits-list tr[data-key='{category}/3']").wait_for(timeout=10000)
    admin.locator(f"#limits-list tr[data-key='{category}/3'] .act-reset").click()
    console.wait_for_function(f"Math.abs({resolve} - {before}) < 0.01", timeout=10000)
    other.locator(f"#limits-list tr[data-key='{category}/3']").wait_for(state="detached",
                                                                       timeout=10000)
    assert not (console.errors or admin.errors or other.errors)  # type: ignore[attr-defined]


def test_sla_bad_limits_change_nothing(context: BrowserContext, hub: HubProcess) -> None:
    admin = _page(context, "/admin/sla", hub)
    before = hub.client.get("/api/sla").json()
    admin.locator("#limits-list tr[data-key='*/3'] .act-edit").click()
    admin.fill("#l-resolve", "0")
    admin.click("#limits-save")
    assert _error(admin, "limits-error") == "request.invalid"
    admin.fill("#l-resolve", "600")
    admin.fill("#l-category", "No Such Category!")
    admin.click("#limits-save")
    admin.wait_for_function(
        "document.getElementById('limits-error').textContent.includes('category')")
    assert hub.client.get("/api/sla").json() == before


def _day_row(pg: Page, day: str) -> Any:
    return pg.locator(f"#day-list tr[data-date='{day}']")


def test_sla_calendar_add_and_remove_days(context: BrowserContext, hub: HubProcess) -> None:
    """A holiday and an adjusted working day added, a file's holiday removed and restored;
    each in force at once (the API's calendar) and recorded under the logged-in user."""
    admin = _page(context, "/admin/sla", hub)
    me = admin.inner_text("#user-name")
    holiday, workday = "2026-12-07", "2026-12-12"  # a Monday, a Saturday
    admin.fill("#d-date", holiday)
    admin.select_option("#d-kind", "holiday")
    admin.fill("#d-name", "镇庆日")
    admin.click("#day-add")
    _day_row(admin, holiday).locator(".act-remove").wait_for(timeout=10000)
    admin.wait_for_function("document.getElementById('d-date').value === ''")  # cleared
    admin.fill("#d-date", workday)
    admin.select_option("#d-kind", "workday")
    admin.click("#day-add")
    _day_row(admin, workday).locator(".act-remove").wait_for(timeout=10000)
    cal = hub.client.get("/api/sla").json()["calendar"]
    assert holiday in cal["holidays"] and workday in cal["adjusted_workdays"]
    # the file's National Day removed: it follows its weekday, then is restored
    _day_row(admin, "2026-10-01").locator(".act-remove").click()
    admin.locator("#day-list tr[data-date='2026-10-01'][data-kind='normal']").wait_for(
        timeout=10000)
    assert "2026-10-01" not in hub.client.get("/api/sla").json()["calendar"]["holidays"]
    admin.locator("#sla-changes tbody tr", has_text="calendar:2026-10-01").first.wait_for(
        timeout=10000)
    _shot(admin, "admin_sla_calendar")
    _day_row(admin, "2026-10-01").locator(".act-restore").click()
    admin.locator("#day-list tr[data-date='2026-10-01'][data-kind='holiday']").wait_for(
        timeout=10000)
    changes = [c for c in hub.client.get("/api/sla/changes").json()
               if c["target"] in (f"calendar:{holiday}", f"calendar:{workday}",
                                  "calendar:2026-10-01")]
    assert len(changes) == 4 and {c["actor"] for c in changes} == {me}
    for day in (holiday, workday):  # leave the shared hub's calendar as it was
        _day_row(admin, day).locator(".act-remove").click()
        _day_row(admin, day).wait_for(state="detached", timeout=10000)
    assert not admin.errors  # type: ignore[attr-defined]


def test_sla_calendar_bad_days_change_nothing(context: BrowserContext,
                                             hub: HubProcess) -> None:
    admin = _page(context, "/admin/sla", hub)
    before = hub.client.get("/api/sla").json()
    admin.fill("#d-date", "2026-02-30")
    admin.click("#day-add")
    assert _error(admin, "day-error") == "sla.bad_date"
    admin.fill("#d-date", "2026-10-01")  # already National Day
    admin.click("#day-add")
    admin.wait_for_function(
        "document.getElementById('day-error').dataset.code === 'sla.day_exists'")
    admin.fill("#d-date", "2026-12-08")  # a Tuesday works anyway
    admin.select_option("#d-kind", "workday")
    admin.click("#day-add")
    admin.wait_for_function(
        "document.getElementById('day-error').dataset.code === 'sla.bad_day'")
    assert hub.client.get("/api/sla").json() == before
    assert not admin.errors  # type: ignore[attr-defined]


# ------------------------------------------------------------------ grids and roads
def _upload(pg: Page, selector: str, name: str, doc: Any) -> None:
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    pg.set_input_files(selector, files=[{"name": name, "mimeType": "application/geo+json",
                                         "buffer": data}])


def _current_town(hub: HubProcess) -> tuple[dict[str, Any], dict[str, Any]]:
    """The town as loaded, as GeoJSON files an operator would upload."""
    doc = hub.client.get("/api/town").json()
    for f in doc["grids"]["features"]:
        f["properties"].pop("center", None)
    return doc["grids"], doc["roads"]


def _square(lon: float, lat: float, d: float = 0.002) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": [[[lon, lat], [lon + d, lat], [lon + d, lat + d],
                                                [lon, lat + d], [lon, lat]]]}


def test_grids_import_preview_then_replace(context: BrowserContext, hub: HubProcess) -> None:
    grids, roads = _current_town(hub)
    parent = next(f for f in grids["features"] if f["properties"]["level"] == 1)
    new_id = f"GX-{uuid.uuid4().hex[:4]}"
    lon, lat = parent["geometry"]["coordinates"][0][0]
    added = {"type": "Feature", "geometry": _square(lon, lat),
             "properties": {"id": new_id, "level": 2, "parent": parent["properties"]["id"],
                            "name": "新建第99网格", "zone": "mixed"}}
    console = _page(context, "/", hub)
    admin = _page(context, "/admin/grids", hub)
    me = admin.inner_text("#user-name")
    _upload(admin, "#g-grids", "grids.geojson",
            {**grids, "features": [*grids["features"], added]})
    _upload(admin, "#g-roads", "roads.geojson", roads)
    admin.click("#grid-preview")
    admin.wait_for_selector("#grid-plan:not([hidden])", timeout=15000)
    assert new_id in admin.inner_text("#grid-plan")
    assert admin.get_attribute("body", "data-preview-features") == str(
        len(grids["features"]) + 1)
    # Previewed, not yet replaced.
    assert all(f["properties"]["id"] != new_id
               for f in hub.client.get("/api/town").json()["grids"]["features"])
    _shot(admin, "admin_grids")
    admin.click("#grid-import")
    admin.wait_for_selector("#grid-done:not([hidden])", timeout=15000)
    # The open console redraws the town with the new grid, without a reload.
    console.wait_for_function(f"window.gridhub.ctx.town.grids.has('{new_id}')", timeout=15000)
    assert any(e["kind"] == "town.imported" and e["actor"] == me for e in _audit(hub, "town"))

    # The same file without the new grid takes it away again (nothing refers to it).
    _upload(admin, "#g-grids", "grids.geojson", grids)
    admin.click("#grid-preview")
    admin.wait_for_function("!document.getElementById('grid-import').disabled", timeout=15000)
    assert new_id in admin.inner_text("#grid-plan")
    admin.click("#grid-import")
    console.wait_for_function(f"!window.gridhub.ctx.town.grids.has('{new_id}')", timeout=15000)
    assert not console.errors and not admin.errors  # type: ignore[attr-defined]


def test_grids_bad_geojson_replaces_nothing(context: BrowserContext, hub: HubProcess) -> None:
    grids, roads = _current_town(hub)
    before = hub.client.get("/api/town").json()
    admin = _page(context, "/admin/grids", hub)
    # Not polygons: a line where a grid should be.
    line = {"type": "Feature", "geometry": {"type": "LineString",
                                            "coordinates": [[120.4, 31.8], [120.41, 31.81]]},
            "properties": {"id": "GL-1", "level": 1, "parent": None, "name": "线"}}
    _upload(admin, "#g-grids", "lines.geojson", {"type": "FeatureCollection",
                                                 "features": [line]})
    admin.click("#grid-preview")
    assert _error(admin, "grid-error") == "geojson.invalid"
    assert "Polygon" in admin.inner_text("#grid-error")
    assert admin.is_disabled("#grid-import")
    # Not JSON at all.
    _upload(admin, "#g-grids", "broken.geojson", b"{not json")
    admin.click("#grid-preview")
    admin.wait_for_function(
        "document.getElementById('grid-error').dataset.code === 'geojson.not_json'")
    # A file that drops grids devices and units stand in: previewed, import refused.
    kept = [f for f in grids["features"] if f["properties"]["level"] == 1][:1]
    _upload(admin, "#g-grids", "small.geojson", {"type": "FeatureCollection", "features": kept})
    admin.click("#grid-preview")
    admin.wait_for_function("Number(document.getElementById('grid-plan').dataset.inUse) > 0",
                            timeout=15000)
    assert admin.is_disabled("#grid-import")
    r = hub.client.post("/api/admin/town/import",
                        json={"grids": {"type": "FeatureCollection", "features": kept},
                              "roads": roads})
    assert r.status_code == 409 and r.json()["error"]["code"] == "grid.in_use"
    assert hub.client.get("/api/town").json() == before


@pytest.mark.parametrize(("lang", "titles"), [
    ("zh_CN", ["设备管理", "网格与道路", "队伍与排班", "告警规则", "时限与日历", "用户与令牌"]),
    ("en", ["Devices", "Grids and roads", "Squads and duty roster", "Alarm rules",
            "SLA and calendar", "Users and tokens"]),
])
def test_admin_pages_in_chinese_and_english(context: BrowserContext, hub: HubProcess,
                                            lang: str, titles: list[str]) -> None:
    paths = ["devices", "grids", "units", "rules", "sla", "users"]
    for path, title in zip(paths, titles, strict=True):
        pg = _page(context, f"/admin/{path}?lang={lang}", hub)
        assert pg.inner_text("h1.pb-title") == title
        assert pg.locator(".admin-nav a[aria-current]").inner_text() == title
        assert not pg.errors  # type: ignore[attr-defined]
        pg.close()
