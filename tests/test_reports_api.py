"""Assessment over the real database: the I/O shell (dispatch/reports.py), the demo
registries (hub/inspection_registry.py) and the routes (hub/reports_api.py) in a small FastAPI
app of their own, through httpx's ASGI transport. (Inspection draws:
tests/test_inspection_draws.py.)

The module works in a scratch database of its own (migrated, demo town and registries
loaded) because it writes incidents, case logs and GPS fixes with hand-picked times that
other tests sharing the session database must not see.
"""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from core.clock import to_datetime
from core.db import connect, create_pool, migrate
from dispatch import reports, workflow
from hub import errors as hub_errors
from hub import inspection_registry as registry
from hub import reports_api, town
from tests.conftest import create_database, drop_database

CST = timezone(timedelta(hours=8))
TOWN_FILE = registry.TOWN_FILE


def cst(*args: int) -> float:
    return datetime(*args, tzinfo=CST).timestamp()


@pytest_asyncio.fixture(scope="module")
async def rdb_url(base_db_url: str) -> AsyncIterator[str]:
    name = f"gridhub_reports_{os.getpid()}"
    url = await create_database(base_db_url, name)
    conn = await connect(url)
    try:
        await migrate(conn)
        await town.load_town(conn, town.read_town(TOWN_FILE))
        await registry.load_registry(conn)
    finally:
        await conn.close()
    yield url
    await drop_database(base_db_url, name)


@pytest_asyncio.fixture(scope="module")
async def pool(rdb_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(rdb_url)
    yield p
    await p.close()


@pytest_asyncio.fixture(scope="module")
async def client(pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    hub_errors.install(app)
    app.include_router(reports_api.router)
    app.state.hub = SimpleNamespace(pool=pool)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://hub.test") as c:
        yield c


# ====================================================================== registries
async def test_registry_loads_and_reloads(pool: asyncpg.Pool) -> None:
    expected = {k: len(v) for k, v in registry.generate(registry.read_town()).items()}
    assert 150 <= expected["entities"] <= 300 and expected["matters"] >= 10
    async with pool.acquire() as conn:
        assert await registry.load_registry(conn) == expected  # an upsert: re-runnable
    counts = await pool.fetchrow(
        """SELECT (SELECT count(*) FROM inspectors) AS inspectors,
                  (SELECT count(*) FROM market_entities) AS entities,
                  (SELECT count(*) FROM inspection_matters) AS matters,
                  (SELECT count(*) FROM inspector_conflicts) AS conflicts""")
    assert dict(counts) == expected


# ====================================================================== assessment
MARCH = cst(2021, 3, 1)
APRIL = cst(2021, 4, 1)
NOW = cst(2021, 4, 2, 12)


async def insert_case(conn: Any, *, opened_at: float, grid: str, unit: str | None,
                      priority: int, steps: list[tuple[str, str, float, str | None]],
                      category: str = "city_appearance") -> int:
    """An incident and its hash-chained case log, as the service would have written them."""
    state = workflow.CaseState()
    entries = [("report", None, "reported", "hotline:12345", opened_at, None)]
    for action, actor, dt, reason in steps:
        after = workflow.apply(state, action, actor, opened_at + dt, reason)
        entries.append((action, state.state, after.state, actor, opened_at + dt, reason))
        state = after
    iid = await conn.fetchval(
        """INSERT INTO incidents (category, priority, qualification, title, lon, lat, grid_id,
                                  source, state, opened_at, updated_at, assigned_unit,
                                  rework_count, extension_count, handler)
           VALUES ($1, $2, 'city_management', '测试案件', 120.43, 31.8, $3, 'hotline', $4,
                   $5, $5, $6, $7, $8, $9) RETURNING id""",
        category, priority, grid, state.state, to_datetime(opened_at), unit,
        state.rework_count, state.extension_count, state.handler)
    prev = workflow.GENESIS_HASH
    for seq, (action, from_s, to_s, actor, ts, reason) in enumerate(entries, start=1):
        h = workflow.entry_hash(prev, iid, seq, action, from_s, to_s, actor, ts, reason)
        await conn.execute(
            """INSERT INTO case_log (incident_id, seq, action, from_state, to_state, actor, ts,
                                     reason, prev_hash, hash)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)""",
            iid, seq, action, from_s, to_s, actor, to_datetime(ts), reason, prev, h)
        prev = h
    return int(iid)


def loop(unit: str, *, accept: float, arrive: float, close: float,
         rework: bool = False) -> list[tuple[str, str, float, str | None]]:
    steps: list[tuple[str, str, float, str | None]] = [
        ("register", "operator:li", 30, None), ("dispatch", "system:dispatch", 60, None),
        ("accept", unit, accept, None), ("start_handling", unit, arrive, None),
        ("give_feedback", unit, arrive + 600, None)]
    if rework:
        steps += [("verify_fail", "gridworker:x", arrive + 700, "未整改"),
                  ("give_feedback", unit, arrive + 900, None)]
    steps += [("verify_ok", "gridworker:x", close - 60, None), ("close", "operator:li", close,
                                                                  None)]
    return steps


@pytest_asyncio.fixture(scope="module")
async def cases(pool: asyncpg.Pool) -> dict[str, int]:
    t = cst(2021, 3, 10, 9)
    async with pool.acquire() as conn, conn.transaction():
        return {
            # Priority 1: resolve within 4 h.
            "fast": await insert_case(conn, opened_at=t, grid="G01-01", unit="SQ-01",
                                      priority=1, steps=loop("SQ-01", accept=120, arrive=600,
                                                             close=3600)),
            "late": await insert_case(conn, opened_at=t + 60, grid="G01-01", unit="SQ-01",
                                      priority=1, steps=loop("SQ-01", accept=300, arrive=1500,
                                                             close=5 * 3600, rework=True)),
            "open": await insert_case(conn, opened_at=t, grid="G02-01", unit="SQ-02",
                                      priority=2, steps=loop("SQ-02", accept=60, arrive=900,
                                                             close=0)[:4]),
            "cancelled": await insert_case(conn, opened_at=t, grid="G02-01", unit=None,
                                           priority=3, steps=[("cancel", "operator:li", 60,
                                                               "重复上报")]),
            "outside": await insert_case(conn, opened_at=cst(2021, 2, 1), grid="G01-01",
                                         unit="SQ-01", priority=1,
                                         steps=loop("SQ-01", accept=60, arrive=300,
                                                    close=900)),
        }


async def test_assessment_by_grid(pool: asyncpg.Pool, cases: dict[str, int]) -> None:
    rep = await reports.assessment_report(pool, by="grid", since=MARCH, until=APRIL, now=NOW)
    rows = {r["key"]: r for r in rep["groups"]}
    assert set(rows) == {"G01-01", "G02-01"}
    g1, g2 = rows["G01-01"], rows["G02-01"]
    assert (g1["cases"], g1["closed"], g1["on_time"], g1["due"]) == (2, 2, 1, 2)
    assert (g1["closure_rate"], g1["on_time_rate"], g1["rework_rate"]) == (1.0, 0.5, 0.5)
    assert g1["response_p50_s"] == pytest.approx((600 + 1500) / 2)
    assert g1["name"]
    assert (g2["cases"], g2["cancelled"], g2["closed"], g2["due"]) == (1, 1, 0, 1)
    assert g2["on_time_rate"] == 0.0  # open past its 24 h deadline
    total = rep["total"]
    assert (total["cases"], total["closed"], total["cancelled"]) == (3, 2, 1)


async def test_assessment_by_officer_and_grid1(pool: asyncpg.Pool,
                                               cases: dict[str, int]) -> None:
    rep = await reports.assessment_report(pool, by="officer", since=MARCH, until=APRIL,
                                          now=NOW)
    keys = [r["key"] for r in rep["groups"]]
    assert keys == ["SQ-01", "SQ-02", None]  # the cancelled case had no officer
    rep = await reports.assessment_report(pool, by="grid1", since=MARCH, until=APRIL, now=NOW)
    assert [r["key"] for r in rep["groups"]] == ["G01", "G02"]


def track(t0: float, metres: float, speed: float = 10.0, every: float = 5.0
          ) -> list[tuple[float, float, float, float]]:
    m_per_deg = 6_371_008.8 * math.pi / 180
    n = round(metres / (speed * every))
    return [(t0 + k * every, 120.43 + metres * k / n / (m_per_deg * math.cos(math.radians(31.8))),
             31.8, 5.0) for k in range(n + 1)]


@pytest_asyncio.fixture(scope="module")
async def patrol_fixes(pool: asyncpg.Pool) -> float:
    t0 = cst(2021, 3, 10, 14)
    rows = [(to_datetime(ts), "SQ-01", lat, lon, 5.0, to_datetime(ts))
            for ts, lon, lat, _ in track(t0, 2000.0)]
    # A GPS jump 5 km away in the middle of the drive.
    rows.append((to_datetime(t0 + 102), "SQ-01", 31.85, 120.43, 5.0, to_datetime(t0 + 102)))
    await pool.executemany(
        "INSERT INTO positions (ts, unit_id, lat, lon, accuracy, received_at) "
        "VALUES ($1, $2, $3, $4, $5, $6)", rows)
    return t0


async def test_unit_patrol(client: httpx.AsyncClient, patrol_fixes: float) -> None:
    r = await client.get("/api/units/SQ-01/patrol",
                         params={"since": patrol_fixes - 3600, "until": patrol_fixes + 3600})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["distance_km"] == pytest.approx(2.0, abs=0.001)
    assert body["dropped_jumps"] == 1 and body["duty_s"] == pytest.approx(200.0)
    r = await client.get("/api/units/NOPE/patrol")
    assert (r.status_code, r.json()["error"]["code"]) == (404, "unit.not_found")
    r = await client.get("/api/units/SQ-01/patrol", params={"since": 0, "until": 86400 * 90})
    assert (r.status_code, r.json()["error"]["code"]) == (422, "report.range_too_long")


async def test_assessment_by_unit_with_patrol_rollup(pool: asyncpg.Pool, cases: dict[str, int],
                                                     patrol_fixes: float) -> None:
    written = await reports.rollup_patrol(pool, cst(2021, 3, 10, 23), days_back=0,
                                          unit_ids=["SQ-01", "SQ-02"])
    assert written == 1  # SQ-02 had no fixes that day
    rep = await reports.assessment_report(pool, by="unit", since=MARCH, until=APRIL, now=NOW)
    rows = {r["key"]: r for r in rep["groups"]}
    assert len(rows) == await pool.fetchval("SELECT count(*) FROM units") + 1  # + unassigned
    assert rows["SQ-01"]["patrol_km"] == pytest.approx(2.0, abs=0.001)
    assert rows["SQ-01"]["cases"] == 2 and rows["SQ-01"]["patrol_days"] == 1
    assert rows["SQ-02"]["patrol_km"] is None and rows["SQ-02"]["cases"] == 1
    assert rows["PO-01"]["cases"] == 0 and rows["PO-01"]["closure_rate"] is None


async def test_assessment_api_and_csv(client: httpx.AsyncClient, cases: dict[str, int]) -> None:
    params = {"by": "grid", "since": MARCH, "until": APRIL}
    r = await client.get("/api/reports/assessment", params=params)
    assert r.status_code == 200 and {g["key"] for g in r.json()["groups"]} == {"G01-01",
                                                                               "G02-01"}
    r = await client.get("/api/reports/assessment.csv", params=params)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    assert r.content.startswith(b"\xef\xbb\xbf")  # the BOM Excel needs for UTF-8
    lines = r.content.decode("utf-8-sig").splitlines()
    assert lines[0].startswith("编号,名称,案件数,结案数,结案率")
    assert len(lines) == 1 + 2 + 1  # header, two grids, total
    assert lines[-1].startswith("合计")
    r = await client.get("/api/reports/assessment.csv", params={**params, "by": "unit"})
    assert "巡查里程(公里)" in r.content.decode("utf-8-sig").splitlines()[0]
    r = await client.get("/api/reports/assessment", params={"by": "district"})
    assert r.status_code == 422
    r = await client.get("/api/reports/assessment", params={"since": APRIL, "until": MARCH})
    assert (r.status_code, r.json()["error"]["code"]) == (422, "report.bad_range")


async def test_assessment_by_town_days(client: httpx.AsyncClient, cases: dict[str, int]) -> None:
    """first_day/last_day are the town's days: 1 March runs from 00:00 in the town
    (16:00 UTC on 28 February), whatever UTC says."""
    r = await client.get("/api/reports/assessment",
                         params={"first_day": "2021-03-01", "last_day": "2021-03-31"})
    assert r.status_code == 200, r.text
    assert (r.json()["since"], r.json()["until"]) == (cst(2021, 3, 1), cst(2021, 4, 1))
    by_range = await client.get("/api/reports/assessment",
                                params={"since": cst(2021, 3, 1), "until": cst(2021, 4, 1)})
    assert r.json()["groups"] == by_range.json()["groups"]
    r = await client.get("/api/reports/assessment", params={"first_day": "2021-03-10"})
    assert (r.json()["since"], r.json()["until"]) == (cst(2021, 3, 10), cst(2021, 3, 11))
    r = await client.get("/api/reports/assessment",
                         params={"first_day": "2021-03-10", "since": cst(2021, 3, 1)})
    assert (r.status_code, r.json()["error"]["code"]) == (422, "report.bad_range")
    r = await client.get("/api/reports/assessment",
                         params={"first_day": "2021-03-10", "last_day": "2021-03-01"})
    assert (r.status_code, r.json()["error"]["code"]) == (422, "report.bad_range")
