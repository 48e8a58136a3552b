"""The demo's history (simulators/backfill.py) on a real PostgreSQL+TimescaleDB: every
backfilled case passes the case-log chain verification, the history has every kind of step,
nothing is dated in the future, a second start skips it, and the reports page of a real hub
in real Chromium shows assessment figures on first open."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from playwright.sync_api import Browser

from dispatch import service
from tests.browser import login_state
from tests.conftest import ARTIFACTS, ROOT, HubProcess, town_database

# Two days at a busy town's rate: enough cases that every rare step (escalation, decline,
# rework, extension, shelving, cancel) happens with this seed, in about half a minute.
DAYS = "2"
CASES_PER_DAY = "36"


def _backfill(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "simulators.backfill", "--days", DAYS, "--cases-per-day",
         CASES_PER_DAY, "--telemetry-every", "3600", "--track-hours", "1", "--seed", "7"],
        env={**os.environ, "HUB_DATABASE_URL": url}, cwd=ROOT,
        capture_output=True, text=True, timeout=240, check=True)


@pytest_asyncio.fixture(scope="module")
async def history_url(base_db_url: str) -> AsyncIterator[str]:
    async with town_database(base_db_url, "hist") as url:
        started = time.time()
        out = _backfill(url)
        assert "'refused': 0" in out.stderr, out.stderr[-3000:]  # the product took every step
        conn = await asyncpg.connect(url)
        try:
            # what the test compares with: the backfill's "now" is before this
            await conn.execute("CREATE TABLE test_marks (started float8)")
            await conn.execute("INSERT INTO test_marks VALUES ($1)", started)
        finally:
            await conn.close()
        yield url


async def test_history_cases_pass_the_chain_verification(history_url: str) -> None:
    pool = await asyncpg.create_pool(history_url, min_size=1, max_size=2)
    try:
        ids = [r["id"] for r in await pool.fetch("SELECT id FROM incidents ORDER BY id")]
        assert len(ids) >= 60
        bad = []
        for iid in ids:
            v = await service.verify_case_log(pool, iid)
            if not v["ok"]:
                bad.append(v)
        assert bad == []
        actions = {r["action"] for r in await pool.fetch(
            "SELECT DISTINCT action FROM case_log")}
        assert {"report", "register", "dispatch", "accept", "decline", "start_handling",
                "give_feedback", "verify_fail", "verify_ok", "request_extension",
                "approve_extension", "resume", "close", "evaluate", "archive", "shelve",
                "reopen", "cancel"} <= actions
        # escalations: accept time-outs taken back by the core, the supervisor told
        assert await pool.fetchval(
            "SELECT count(*) FROM assignments WHERE status = 'escalated'") > 0
        assert await pool.fetchval("SELECT count(*) FROM supervisor_alerts") > 0
        sources = {r["source"] for r in await pool.fetch(
            "SELECT DISTINCT source FROM incidents")}
        assert sources == {"alarm", "open311", "hotline", "grid_worker", "operator"}
        # past times only, spread over the days asked for
        started = await pool.fetchval("SELECT started FROM test_marks")
        span = await pool.fetchrow(
            "SELECT extract(epoch FROM min(ts))::float8 AS first, "
            "extract(epoch FROM max(ts))::float8 AS last FROM case_log")
        assert span["last"] <= started
        assert span["first"] < started - 1.5 * 86400
        # readings with their rollups, patrol tracks with theirs, a published draw
        assert await pool.fetchval("SELECT count(*) FROM telemetry_1h") > 5000
        assert await pool.fetchval(
            "SELECT count(*) FROM telemetry WHERE ts < $1::float8 * interval '1 s' + "
            "'epoch'::timestamptz - interval '1 day'", started) > 0
        assert await pool.fetchval("SELECT count(*) FROM positions") > 1000
        assert await pool.fetchval("SELECT count(*) FROM patrol_daily") > 0
        assert await pool.fetchval(
            "SELECT count(*) FROM inspection_draws WHERE published_at IS NOT NULL") > 0
    finally:
        await pool.close()


async def test_second_start_skips_the_history(history_url: str) -> None:
    conn = await asyncpg.connect(history_url)
    try:
        before = await conn.fetchval("SELECT count(*) FROM case_log")
        t0 = time.monotonic()
        out = _backfill(history_url)
        took = time.monotonic() - t0
        assert await conn.fetchval("SELECT count(*) FROM case_log") == before
        assert "already there" in out.stderr + out.stdout
        # no history work at all: the interpreter's start and one query
        assert took < 15, took
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def history_hub(history_url: str, mqtt_url: str) -> Iterator[HubProcess]:
    h = HubProcess(history_url, mqtt_url).start()
    yield h
    h.stop()


def test_reports_page_has_figures_on_first_open(browser: Browser,
                                                history_hub: HubProcess) -> None:
    state: Any = login_state(browser, history_hub)
    ctx = browser.new_context(viewport={"width": 1600, "height": 900}, locale="zh-CN",
                              storage_state=state)
    try:
        page = ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(history_hub.url + "/reports")
        page.wait_for_selector("body[data-loaded='true']", timeout=20000)
        assert page.locator("#report-empty").is_hidden()
        rows = page.locator("#report tbody tr")
        assert rows.count() >= 3  # several grids have cases in the last 7 days
        total = page.locator("#report tfoot tr.total td")
        cases, closed = int(total.nth(1).inner_text()), int(total.nth(2).inner_text())
        assert cases > 0 and closed > 0
        for col in (3, 4, 7):  # closure rate, on-time rate, response p50
            assert total.nth(col).inner_text().strip() not in ("", "—"), col
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "reports-demo-history.png"))
        assert errors == []
    finally:
        ctx.close()
