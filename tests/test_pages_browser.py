"""The pages in real headless Chromium: the console in Chinese and English, a ticking SLA
countdown, an acknowledgement seen by a second browser, no gap and no duplicate after the
websocket is cut and restored, the case, unit and device pages, and the console's frame
times with 2,000 moving units."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po
from playwright.sync_api import Browser, BrowserContext, Page
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from ingest import wire
from tests.conftest import ARTIFACTS, ROOT, HubProcess, Publisher, town_doc

# Synthetic load for the responsiveness check: 2,000 units, each moving once a second,
# delivered as the feed delivers them (a slice of the units every 100 ms tick).
LOAD_UNITS = 2000
LOAD_SECONDS = 5
LOAD_TICK_MS = 100
FRAME_P95_LIMIT_MS = 50.0


@pytest.fixture
def context(browser: Browser, auth_state: Any) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport={"width": 1920, "height": 1080}, locale="zh-CN",
                              storage_state=auth_state)
    yield ctx
    ctx.close()


def _page(ctx: BrowserContext) -> Page:
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.errors = errors  # type: ignore[attr-defined]
    return pg


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return _page(context)


def _open_console(page: Page, hub: HubProcess, query: str = "") -> None:
    page.goto(hub.url + "/" + query)
    page.wait_for_function("window.gridhub && window.gridhub.connected && window.gridhub.mapReady",
                           timeout=20000)


def _new_case(hub: HubProcess, title: str, priority: int = 2) -> dict[str, Any]:
    town = town_doc()
    cc = town["command_center"]
    r = hub.client.post("/api/incidents", json={
        "category": "city_order", "qualification": "city_management", "priority": priority,
        "title": title, "description": "browser test", "lon": cc["lon"] + 0.004,
        "lat": cc["lat"] + 0.003, "source": "operator"}, timeout=10)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def _gas_alarm(page: Page, publisher: Publisher, device: dict[str, Any]) -> str:
    """Publish a gas reading over the alarm limit; return the id of the alarm row."""
    publisher.publish(wire.telemetry_topic(device["id"]),
                      wire.encode_telemetry(time.time(), {"gas_lel_pct": 60.0}))
    # The gas rules' alarms are critical; the device's other alarms are not, and one of them
    # must not be taken: after a long suite the device may also show "offline" (设备离线,
    # minor), which this very reading clears, so its row leaves the list.
    row = page.locator('#alarm-list [data-alarm-id][data-severity="critical"]'
                       '[data-state="active"]', has_text=device["name"]).first
    row.wait_for(timeout=15000)
    alarm_id = row.get_attribute("data-alarm-id")
    assert alarm_id
    return alarm_id


# ------------------------------------------------------------------ languages
def test_every_page_string_is_in_both_catalogs() -> None:
    """Every _("...") of the templates has a Chinese and an English translation."""
    found = {msg[2] for msg in extract_from_dir(
        str(ROOT / "frontend" / "templates"), method_map=[("**.html", "jinja2")])}
    assert len(found) > 300
    for lang in ("zh_CN", "en"):
        catalog: dict[str, Any] = {}
        # messages.po and the parts' own catalogs beside it (hub/i18n.py merges them)
        for path in (ROOT / "frontend" / "translations" / lang / "LC_MESSAGES").glob("*.po"):
            with path.open("rb") as f:
                catalog.update({m.id: m.string for m in read_po(f, locale=lang) if m.id})
        missing = sorted(m for m in found if not catalog.get(m))
        assert not missing, f"{lang}: untranslated {missing[:10]}"


@pytest.mark.parametrize(("lang", "html_lang", "strings"), [
    ("zh_CN", "zh-CN", ["派遣看板", "实时告警", "今日按时办结率", "网格在办案件", "督办提醒"]),
    ("en", "en", ["Assignment board", "Live alarms", "On-time closure today",
                  "Open cases by grid", "Supervisor alerts"]),
])
def test_console_in_chinese_and_english(page: Page, hub: HubProcess, lang: str, html_lang: str,
                                         strings: list[str]) -> None:
    _open_console(page, hub, "" if lang == "zh_CN" else "?lang=en")
    assert page.get_attribute("html", "lang") == html_lang
    body = page.inner_text("body")
    for s in strings:
        assert s in body, f"{s!r} missing from the {lang} console"
    # strings the scripts show come from the page's catalog too
    live = page.inner_text("#conn-status .label")
    assert live == ("实时" if lang == "zh_CN" else "Live")
    current = page.get_attribute(".lang-switch a.current", "data-lang")
    assert current == lang
    if lang == "en":
        assert "派遣看板" not in body
    page.wait_for_function("document.querySelectorAll('#grid-list li.grid-cell').length === 21")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"console-{lang}-1920x1080.png"))
    assert page.errors == []  # type: ignore[attr-defined]


# ------------------------------------------------------------------ SLA countdown
def _seconds_left(text: str) -> int:
    """'签收\n29:59' -> 1799 (the countdown's last line, mm:ss or h:mm:ss)."""
    secs = 0
    for part in text.split()[-1].lstrip("-").split(":"):
        secs = secs * 60 + int(part)
    return secs


def test_sla_countdown_ticks(page: Page, hub: HubProcess) -> None:
    _open_console(page, hub)
    inc = _new_case(hub, "SLA 倒计时测试")
    sla = page.locator(f'#board [data-incident-id="{inc["id"]}"] .sla')
    sla.wait_for(timeout=15000)
    level = sla.get_attribute("data-level")
    # The hub dispatches the new case within moments, which moves the countdown to the next
    # stage (a fresh deadline); what must hold is that within one stage the time left falls
    # every second. A loaded two-core CI machine may starve the renderer for a moment, so
    # watch for a few seconds rather than sampling twice.
    seen: list[tuple[str | None, str]] = []
    deadline = time.monotonic() + 8
    ticked = False
    while not ticked and time.monotonic() < deadline:
        seen.append((sla.get_attribute("data-stage"), sla.inner_text()))
        if len(seen) > 1 and seen[-1][0] == seen[-2][0]:
            ticked = _seconds_left(seen[-1][1]) < _seconds_left(seen[-2][1])
        time.sleep(0.7)
    assert ticked, f"the countdown did not count down: {seen}"
    assert level in ("green", "amber", "red")
    assert sla.get_attribute("data-stage") in ("dispatch", "accept", "arrive", "resolve")
    assert page.errors == []  # type: ignore[attr-defined]


# ------------------------------------------------------------------ two browsers
def test_acknowledge_updates_a_second_browser(browser: Browser, hub: HubProcess,
                                               publisher: Publisher, auth_state: Any) -> None:
    ctx_a = browser.new_context(viewport={"width": 1920, "height": 1080},
                                storage_state=auth_state)
    ctx_b = browser.new_context(viewport={"width": 1920, "height": 1080},
                                storage_state=auth_state)
    try:
        a, b = _page(ctx_a), _page(ctx_b)
        _open_console(a, hub)
        _open_console(b, hub)
        gas = [d for d in town_doc()["devices"] if d["model"] == "gas_detector"][-2]
        alarm_id = _gas_alarm(a, publisher, gas)
        row_b = b.locator(f'#alarm-list [data-alarm-id="{alarm_id}"]')
        row_b.wait_for(timeout=15000)
        assert row_b.get_attribute("data-state") == "active"
        # who is on duty is who is logged in: shown in the header, no name to type
        assert a.locator("#actor").count() == 0
        on_duty = a.locator("#user-box #user-name").inner_text().strip()
        assert on_duty
        a.locator(f'#alarm-list [data-alarm-id="{alarm_id}"] button.ack').click()
        # Acknowledged, by whom, read from the row's text content: rows have
        # `content-visibility: auto`, so a row scrolled out of the list's view (after a
        # long suite, B's list holds many alarms) is not rendered and its innerText is
        # empty although its content is there (what failed this test in full-suite runs).
        try:
            b.wait_for_function(
                "([id, who]) => { const r = document.querySelector("
                "`#alarm-list [data-alarm-id=\"${id}\"]`);"
                " return r?.dataset.state === 'acknowledged' && r.textContent.includes(who); }",
                arg=[alarm_id, on_duty], timeout=20000)
        except PlaywrightTimeout:
            # Say what each browser shows, and the toasts.
            seen = ("([id]) => { const r = document.querySelector("
                    "`#alarm-list [data-alarm-id=\"${id}\"]`);"
                    " return [r ? r.dataset.state + ' | ' + r.textContent : 'no row',"
                    " [...document.querySelectorAll('.toast')].map(t => t.innerText)]; }")
            raise AssertionError(f"alarm {alarm_id} by {on_duty!r}: A shows "
                                 f"{a.evaluate(seen, [alarm_id])}, B shows "
                                 f"{b.evaluate(seen, [alarm_id])}") from None
        assert on_duty in (row_b.text_content() or "")
        assert b.locator(f'#alarm-list [data-alarm-id="{alarm_id}"] button.ack').count() == 0
        assert a.errors == [] and b.errors == []  # type: ignore[attr-defined]
    finally:
        ctx_a.close()
        ctx_b.close()


# ------------------------------------------------------------------ reconnect
def _picture(state: dict[str, Any]) -> dict[str, Any]:
    """The comparable part of a live picture (positions move all the time)."""
    return {
        "alarms": {str(a["id"]): (a["state"], a.get("count"), a.get("incident_id"))
                   for a in state["alarms"]},
        "incidents": {str(i["id"]): (i["state"], i.get("assigned_unit"), i.get("updated_at"))
                      for i in state["incidents"]},
        "units": {str(u["id"]): (u["status"], u.get("current_incident")) for u in state["units"]},
    }


PAGE_PICTURE_JS = """() => {
    const s = window.gridhub.state;
    return {seq: window.gridhub.lastSeq,
            alarms: Object.values(s.alarms), incidents: Object.values(s.incidents),
            units: Object.values(s.units)};
}"""


def test_reconnect_resumes_without_gaps_or_duplicates(page: Page, context: BrowserContext,
                                                      hub: HubProcess,
                                                      publisher: Publisher) -> None:
    _open_console(page, hub)
    reconnects = page.evaluate("window.gridhub.feed.reconnects")
    context.set_offline(True)
    page.evaluate("window.gridhub.ws && window.gridhub.ws.close()")
    page.wait_for_function("window.gridhub.phase === 'reconnecting'", timeout=5000)
    assert page.locator("#offline-banner").is_visible()
    # meanwhile: two new cases and an alarm
    missed = [_new_case(hub, f"断线期间的案件 {k}", priority=3) for k in range(2)]
    gas = [d for d in town_doc()["devices"] if d["model"] == "gas_detector"][-3]
    publisher.publish(wire.telemetry_topic(gas["id"]),
                      wire.encode_telemetry(time.time(), {"gas_lel_pct": 61.0}))
    time.sleep(1.5)
    assert page.evaluate("window.gridhub.phase") == "reconnecting"
    context.set_offline(False)
    page.wait_for_function("window.gridhub.connected", timeout=15000)
    assert page.evaluate("window.gridhub.feed.reconnects") > reconnects
    for inc in missed:
        page.locator(f'#board [data-incident-id="{inc["id"]}"]').wait_for(timeout=10000)
    page.locator("#alarm-list [data-alarm-id]", has_text=gas["name"]).first.wait_for(timeout=15000)

    # the page's picture equals a fresh snapshot (retried: events keep coming)
    deadline = time.monotonic() + 15
    while True:
        snap = hub.client.get("/api/snapshot", timeout=10).json()
        page.wait_for_function(f"window.gridhub.lastSeq >= {snap['seq']}", timeout=10000)
        mine = page.evaluate(PAGE_PICTURE_JS)
        if mine["seq"] == snap["seq"] or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert mine["seq"] == snap["seq"], "the hub never stood still long enough to compare"
    assert _picture(mine) == _picture(snap)
    # every case and alarm is on the page exactly once
    counts = page.evaluate("""() => {
        const n = (sel, attr) => {
            const seen = {};
            for (const el of document.querySelectorAll(sel)) {
                const k = el.getAttribute(attr);
                seen[k] = (seen[k] || 0) + 1;
            }
            return seen;
        };
        return {board: n('#board [data-incident-id]', 'data-incident-id'),
                alarms: n('#alarm-list [data-alarm-id]', 'data-alarm-id')};
    }""")
    assert counts["board"] == dict.fromkeys(_picture(snap)["incidents"], 1)
    assert counts["alarms"] == dict.fromkeys(_picture(snap)["alarms"], 1)
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
    assert page.errors == []  # type: ignore[attr-defined]


# ------------------------------------------------------------------ case page
def test_case_page_shows_the_trail(page: Page, hub: HubProcess) -> None:
    inc = _new_case(hub, "案件页测试")
    page.goto(f"{hub.url}/cases/{inc['id']}")
    page.wait_for_function("document.body.dataset.loaded === 'true'", timeout=15000)
    steps = page.locator("#trail li.step")
    assert steps.count() == 10
    statuses = [steps.nth(k).get_attribute("data-status") for k in range(10)]
    assert statuses[:2] == ["done", "done"]  # reported and registered by the operator
    assert "current" in statuses and statuses[-1] == "pending"
    assert "test-admin" in steps.nth(0).inner_text()  # the reporter's login (hub's token)
    page.wait_for_selector('#chain-status[data-ok="true"]', timeout=10000)
    assert page.locator("#case-actions button[data-action]").count() >= 1
    assert page.locator("#case-log tbody tr[data-seq]").count() >= 2
    # a step taken elsewhere shows up live
    before = page.evaluate("Number(document.body.dataset.renders)")
    hub.client.post(f"/api/incidents/{inc['id']}/actions",
               json={"action": "shelve", "reason": "等待天晴"}, timeout=10)
    page.wait_for_function(f"Number(document.body.dataset.renders) > {before}", timeout=10000)
    page.wait_for_selector('#case-state[data-state="shelved"]', timeout=10000)
    assert "等待天晴" in page.inner_text("#trail")
    assert page.errors == []  # type: ignore[attr-defined]


@pytest.mark.parametrize(("lang", "says", "not_says"), [
    ("zh_CN", ["今日已办"], ["cases today", "joint plan", "best score"]),
    ("en", ["cases today"], ["今日已办"]),
])
def test_case_page_gives_dispatch_reasons_in_the_page_language(
        page: Page, hub: HubProcess, lang: str, says: list[str], not_says: list[str]) -> None:
    inc = _new_case(hub, f"派遣理由 {lang}", priority=3)
    deadline = time.monotonic() + 15
    while not hub.client.get(f"/api/incidents/{inc['id']}").json()["assignments"]:
        assert time.monotonic() < deadline, "the case was not dispatched"
        time.sleep(0.1)
    page.goto(f"{hub.url}/cases/{inc['id']}?lang={lang}")
    page.wait_for_function("document.body.dataset.loaded === 'true'", timeout=15000)
    shown = page.inner_text("#candidates") + page.inner_text("#rec-summary") + \
        page.inner_text("#assignments") + page.inner_text("#case-log")
    for s in says:
        assert s in shown, f"{s!r} missing on the {lang} case page"
    for s in not_says:
        assert s not in shown, f"{s!r} on the {lang} case page"
    assert page.errors == []  # type: ignore[attr-defined]


def test_operator_redirects_an_en_route_unit_from_the_case_page(page: Page,
                                                                 hub: HubProcess) -> None:
    """The case page offers "redirect the unit" while its unit is on the way; the dialog
    takes a reason code and a note, the unit comes off the case (recorded as redirected,
    by the logged-in operator) and the case goes back to planning."""
    inc = _new_case(hub, "改派测试", priority=3)
    deadline = time.monotonic() + 15
    while not (detail := hub.client.get(f"/api/incidents/{inc['id']}").json())["assignments"]:
        assert time.monotonic() < deadline, "the case was not dispatched"
        time.sleep(0.1)
    unit = detail["incident"]["assigned_unit"]
    hub.client.post(f"/api/incidents/{inc['id']}/actions", json={"action": "accept"},
                    timeout=10)  # en route
    page.goto(f"{hub.url}/cases/{inc['id']}")
    page.wait_for_selector('#case-state[data-state="accepted"]', timeout=15000)
    page.click("#case-actions button[data-action=redirect]")
    dialog = page.locator("#redirect-dialog")
    dialog.wait_for(state="visible", timeout=5000)
    assert unit in dialog.locator(".dlg-title").inner_text()
    dialog.locator("select[name=reason_code]").select_option("local_knowledge")
    dialog.locator("textarea[name=note]").fill("熟悉该小区")
    dialog.locator("button[value=ok]").click()
    dialog.wait_for(state="hidden", timeout=10000)
    after = hub.client.get(f"/api/incidents/{inc['id']}").json()
    first = next(a for a in after["assignments"] if a["unit_id"] == unit)
    assert first["status"] == "redirected"
    withdraw = next(e for e in after["log"] if e["action"] == "withdraw")
    # The browser's login (shown in the header), not a name sent in the request.
    assert withdraw["actor"] == page.inner_text("#user-name")
    assert "熟悉该小区" in withdraw["reason"]
    assert after["incident"]["assigned_unit"] != unit
    assert page.errors == []  # type: ignore[attr-defined]


# ------------------------------------------------------------------ unit page
def test_unit_page_plays_a_track(page: Page, hub: HubProcess, publisher: Publisher) -> None:
    town = town_doc()
    unit = [u for u in town["units"] if u["type"] == "police"][-1]
    # A short eastward drive, one fix every 20 s, 40 minutes ago: inside the page's default
    # range, and away from the "now" at which other tests (on the same broker, for the same
    # demo-town unit ids) publish fixes that this hub stores too.
    start_ts = time.time() - 2400
    for k in range(12):
        publisher.publish(wire.gps_topic(unit["id"]), wire.encode_gps(
            start_ts + k * 20, unit["lat"], unit["lon"] + k * 0.0005, 8.0, 90.0, 5.0))
    page.goto(f"{hub.url}/units/{unit['id']}")
    page.wait_for_function(
        "document.body.dataset.loaded === 'true' && Number(document.body.dataset.fixes) >= 12",
        timeout=15000)
    start = page.evaluate("window.gridhub.playback")
    marker0 = page.evaluate("window.gridhub.tracks[0].marker")
    page.select_option("#speed", "300")
    page.click("#play")
    page.wait_for_function(f"window.gridhub.playback.t > {start['t'] + 60}", timeout=10000)
    marker1 = page.evaluate("window.gridhub.tracks[0].marker")
    assert marker1["lng"] > marker0["lng"], "the marker did not move east"
    assert page.get_attribute("#play", "data-playing") in ("true", "false")
    assert page.inner_text(".unit-row .mileage") not in ("", "…")
    assert page.errors == []  # type: ignore[attr-defined]


# ------------------------------------------------------------------ device page
def test_device_page_draws_a_chart(page: Page, hub: HubProcess, publisher: Publisher) -> None:
    device = [d for d in town_doc()["devices"] if d["model"] == "noise_meter"][-1]
    now = time.time()
    for k in range(6):
        publisher.publish(wire.telemetry_topic(device["id"]),
                          wire.encode_telemetry(now - 300 + k * 60, {"noise_db": 50.0 + k}))
    # The latest values trail the readings by up to HUB_INGEST_LATEST_INTERVAL_S (one update
    # per key for all the flushes of that interval), and the page reads them once.
    deadline = time.monotonic() + 15
    while "noise_db" not in str(hub.client.get(f"/api/devices/{device['id']}/latest").json()):
        assert time.monotonic() < deadline, "the latest value never showed"
        time.sleep(0.1)
    page.goto(f"{hub.url}/devices/{device['id']}")
    chart = page.locator('.chart[data-metric="noise_db"]')
    chart.wait_for(timeout=15000)
    # the minute rollups run every 30 s: a fresh device is charted from its raw readings
    page.wait_for_function(
        """() => { const c = document.querySelector('.chart[data-metric="noise_db"]');
                   return c && Number(c.dataset.points) > 0; }""", timeout=15000)
    assert chart.get_attribute("data-resolution") in ("raw", "1m")
    assert chart.locator("canvas").count() >= 1
    assert page.locator("#latest tr[data-metric='noise_db']").count() == 1
    assert page.errors == []  # type: ignore[attr-defined]


# ------------------------------------------------------------------ 2,000 moving units
def test_console_stays_responsive_with_2000_moving_units(page: Page, hub: HubProcess) -> None:
    _open_console(page, hub)
    # The synthetic units come from a module the pages never load (no test hooks in
    # production): the test imports it into the open console.
    n = page.evaluate("""async (n) => {
        window.consoleLoad = await import("/static/console_load.js");
        return window.consoleLoad.injectUnits(window.gridhub, n); }""", LOAD_UNITS)
    assert n == LOAD_UNITS
    stats: dict[str, Any] = page.evaluate("""([seconds, tickMs]) => new Promise((resolve) => {
        const frames = [], longTasks = [];
        const obs = new PerformanceObserver((list) => {
            for (const e of list.getEntries()) longTasks.push(e.duration);
        });
        obs.observe({ entryTypes: ["longtask"] });
        const g = window.gridhub;
        const renders0 = g.renderTimes.length;
        const parts = Math.round(1000 / tickMs);
        let part = 0;
        const mover = setInterval(() => {
            window.consoleLoad.moveUnits(g, 0.0003, part, parts);
            part = (part + 1) % parts;
        }, tickMs);
        let last = performance.now();
        const end = last + seconds * 1000;
        const frame = (now) => {
            frames.push(now - last);
            last = now;
            if (now < end) { requestAnimationFrame(frame); return; }
            clearInterval(mover);
            obs.disconnect();
            const sorted = frames.slice().sort((a, b) => a - b);
            const q = (p) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
            const renders = g.renderTimes.slice(renders0).sort((a, b) => a - b);
            const rq = (p) => renders[Math.min(renders.length - 1, Math.floor(p * renders.length))];
            resolve({ frames: frames.length, p50: q(0.5), p95: q(0.95),
                      max: sorted[sorted.length - 1],
                      longTasks: longTasks.length, longestTask: Math.max(0, ...longTasks),
                      renders: renders.length, renderP50: rq(0.5), renderP95: rq(0.95),
                      markers: g.ctx.map.unitLayer.count(), draws: g.ctx.map.unitLayer.draws });
        };
        requestAnimationFrame(frame);
    })""", [LOAD_SECONDS, LOAD_TICK_MS])
    print(f"\n2,000 moving units for {LOAD_SECONDS} s: {stats['frames']} frames, frame time "
          f"p50 {stats['p50']:.1f} ms, p95 {stats['p95']:.1f} ms, max {stats['max']:.1f} ms; "
          f"render p50 {stats['renderP50']:.1f} ms, p95 {stats['renderP95']:.1f} ms "
          f"({stats['renders']} renders); long tasks {stats['longTasks']} "
          f"(longest {stats['longestTask']:.0f} ms); markers {stats['markers']}")
    assert stats["markers"] >= LOAD_UNITS
    assert stats["renders"] >= LOAD_SECONDS * 5, "the moves did not reach the map"
    assert stats["p95"] < FRAME_P95_LIMIT_MS, stats
    page.screenshot(path=str(ARTIFACTS / "console-2000-units-1920x1080.png"))
    page.evaluate("window.consoleLoad.removeUnits(window.gridhub)")
    assert page.errors == []  # type: ignore[attr-defined]
