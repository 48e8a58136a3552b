"""The double-random pages in real headless Chromium against a real hub: a supervisor
announces a draw, draws with it and publishes it from the staff page (/inspections); a
browser with no session then reads it on the public page (/inspections/public)."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from playwright.sync_api import Browser, Page

from tests.browser import login_state
from tests.conftest import ARTIFACTS, HubProcess


def _page(browser: Browser, state: Any = None, locale: str = "zh-CN") -> Page:
    ctx = browser.new_context(viewport={"width": 1600, "height": 1000}, locale=locale,
                              storage_state=state)
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.errors = errors  # type: ignore[attr-defined]
    return pg


def test_announce_draw_publish_then_read_it_without_login(browser: Browser,
                                                          hub: HubProcess) -> None:
    staff = _page(browser, login_state(browser, hub, role="supervisor"))
    try:
        staff.goto(hub.url + "/inspections")
        staff.wait_for_function("document.querySelectorAll('#matter-select option').length > 0")
        staff.select_option("#matter-select", "M01")
        staff.fill("#draw-form input[name=targets]", "3")
        before = set(staff.eval_on_selector_all(
            "#commitments tr[data-commitment-id]", "rows => rows.map(r => r.dataset.commitmentId)"))
        staff.click("#commit-run")
        staff.wait_for_function(
            "n => document.querySelectorAll('#commitments tr[data-commitment-id]').length > n",
            arg=len(before))
        cid = next(c for c in staff.eval_on_selector_all(
            "#commitments tr[data-commitment-id]", "rows => rows.map(r => r.dataset.commitmentId)")
            if c not in before)
        row = staff.locator(f'#commitments tr[data-commitment-id="{cid}"]')
        assert row.get_attribute("data-status") == "open"
        commitment = row.locator("td.mono").inner_text().strip()
        assert re.fullmatch(r"[0-9a-f]{64}", commitment)

        row.locator("button.draw-now").click()
        staff.wait_for_selector("#draw-detail:not([hidden]) #picks tbody tr")
        draw_id = staff.get_attribute("#draw-detail", "data-draw-id")
        assert draw_id and staff.locator("#picks tbody tr").count() == 3
        staff.wait_for_selector(f'#commitments tr[data-commitment-id="{cid}"][data-status="drawn"]')
        staff.click("#detail-publish")
        staff.wait_for_selector(f'#public li.public-draw[data-draw-id="{draw_id}"]')
        assert staff.errors == []  # type: ignore[attr-defined]
    finally:
        staff.context.close()

    public = _page(browser)  # no session at all
    try:
        public.goto(hub.url + "/inspections/public")
        assert public.url == hub.url + "/inspections/public"  # not sent to the login page
        assert public.get_attribute("html", "lang") == "zh-CN"
        card = public.locator(f'article.public-draw[data-draw-id="{draw_id}"]')
        assert card.locator("tbody tr").count() == 3
        secret = card.locator("dd.secret").inner_text().strip()
        assert card.locator("dd.commitment").inner_text().strip() == commitment
        assert hashlib.sha256(secret.encode()).hexdigest() == commitment
        assert public.locator(
            f'#commitments tr[data-commitment-id="{cid}"][data-status="published"]').count() == 1
        assert "双随机抽查公示" in public.inner_text("h1")
        public.click('.lang-switch a[data-lang="en"]')
        public.wait_for_selector('html[lang="en"]')
        assert "public notice" in public.inner_text("h1")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        public.screenshot(path=str(ARTIFACTS / "inspections-public-en.png"), full_page=True)
        assert public.errors == []  # type: ignore[attr-defined]
    finally:
        public.context.close()
