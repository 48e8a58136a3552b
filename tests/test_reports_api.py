"""Inspections and assessment over the real database: the I/O shell (dispatch/reports.py),
the demo registries (simulators/registry.py) and the routes (hub/reports_api.py) in a
small FastAPI app of their own, through httpx's ASGI transport.

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

from core.db import connect, create_pool, migrate
from core.errors import Conflict
from dispatch import inspections, reports, workflow
from hub import errors as hub_errors
from hub import reports_api, town
from simulators import registry
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


# ====================================================================== draws (shell)
async def _conflicted_matter(pool: asyncpg.Pool) -> tuple[str, int, set[tuple[str, str]]]:
    """A matter some conflict applies to, its entity count, and all conflict pairs."""
    row = await pool.fetchrow(
        """SELECT m.id, (SELECT count(*) FROM market_entities e2 WHERE e2.active AND
                         (cardinality(m.industries) = 0 OR e2.industry = ANY(m.industries))) AS n
           FROM inspector_conflicts c JOIN inspectors i ON i.id = c.inspector_id
           JOIN market_entities e ON e.id = c.entity_id
           JOIN inspection_matters m ON m.department = i.department
                AND (cardinality(m.industries) = 0 OR e.industry = ANY(m.industries))
           ORDER BY 2, 1 LIMIT 1""")
    pairs = {(r["inspector_id"], r["entity_id"])
             for r in await pool.fetch("SELECT inspector_id, entity_id FROM inspector_conflicts")}
    return row["id"], int(row["n"]), pairs


async def test_draw_is_stored_reproducible_and_honours_recusal(pool: asyncpg.Pool) -> None:
    matter_id, n, pairs = await _conflicted_matter(pool)
    # Every entity of the matter is drawn, so the conflicted ones certainly are.
    view = await reports.make_draw(pool, matter_id=matter_id, targets=n, now=cst(2025, 5, 1),
                                   drawn_by="operator:test")
    assert len(view["picks"]) == n and view["algorithm"] == inspections.ALGORITHM
    assert view["params"]["seed_source"] == "generated" and len(view["seed"]) == 32
    drawn = {(i["id"], p["entity_id"]) for p in view["picks"] for i in p["inspectors"]}
    assert not drawn & pairs
    conflicted_entities = {e for _, e in pairs}
    assert conflicted_entities & {p["entity_id"] for p in view["picks"]}
    for p in view["picks"]:
        assert len({i["id"] for i in p["inspectors"]}) >= 2
        assert p["entity_name"] and all(i["name"] for i in p["inspectors"])
    assert (await reports.verify_draw(pool, view["id"]))["reproduced"] is True


async def test_registry_changes_do_not_break_verification(pool: asyncpg.Pool) -> None:
    view = await reports.make_draw(pool, matter_id="M02", targets=5, now=cst(2025, 5, 2),
                                   drawn_by="operator:test", seed="registry-change")
    first = view["picks"][0]
    entity, inspector = first["entity_id"], first["inspectors"][0]["id"]
    await pool.execute("UPDATE market_entities SET risk_class = 'A', active = false "
                       "WHERE id = $1", entity)
    await pool.execute("UPDATE inspectors SET active = false WHERE id = $1", inspector)
    try:
        assert (await reports.verify_draw(pool, view["id"]))["reproduced"] is True
    finally:  # the registry as it was, for the other tests
        await pool.execute("UPDATE market_entities SET risk_class = $2, active = true "
                           "WHERE id = $1", entity, first["risk_class"])
        await pool.execute("UPDATE inspectors SET active = true WHERE id = $1", inspector)
    # A caller-chosen seed gives the same picks again from the same registries ...
    again = await reports.make_draw(pool, matter_id="M02", targets=5, now=cst(2025, 5, 2),
                                    drawn_by="operator:test", seed="registry-change")
    assert again["params"]["seed_source"] == "caller"
    assert again["id"] != view["id"]  # ... but is a draw of its own, on the record


@pytest.mark.parametrize(
    ("path", "value", "why"),
    [
        ("{picks,0,inspectors,0}", '"INS-999"', "an inspector swapped"),
        ("{picks,0,entity_id}", '"ME-0001"', "a target swapped"),
    ],
)
async def test_tampered_draw_does_not_verify_or_publish(pool: asyncpg.Pool, path: str,
                                                        value: str, why: str) -> None:
    view = await reports.make_draw(pool, matter_id="M04", targets=4, now=cst(2025, 5, 3),
                                   drawn_by="operator:test")
    await pool.execute(f"UPDATE inspection_draws SET result = jsonb_set(result, '{path}', "
                       f"'{value}') WHERE id = $1", view["id"])
    verdict = await reports.verify_draw(pool, view["id"])
    assert verdict["reproduced"] is False and verdict["reason"], why
    with pytest.raises(Conflict) as err:
        await reports.publish_draw(pool, view["id"], by="operator:test", now=cst(2025, 5, 3))
    assert err.value.code == "inspection.not_reproducible"


async def test_tampered_seed_does_not_verify(pool: asyncpg.Pool) -> None:
    view = await reports.make_draw(pool, matter_id="M09", targets=6, now=cst(2025, 5, 3),
                                   drawn_by="operator:test")
    await pool.execute("UPDATE inspection_draws SET seed = seed || 'x' WHERE id = $1",
                       view["id"])
    assert (await reports.verify_draw(pool, view["id"]))["reproduced"] is False


async def test_scheduled_draw_runs_once_a_month(pool: asyncpg.Pool) -> None:
    now = cst(2024, 11, 30, 23, 0)  # China time: still November
    first = await reports.scheduled_draw(pool, now)
    matters = await reports.list_matters(pool)
    assert [r["matter_id"] for r in first] == [m["id"] for m in matters]
    assert all("draw_id" in r and "error" not in r for r in first), first
    again = await reports.scheduled_draw(pool, now + 1800)  # 23:30 on 30 November
    assert all(r.get("skipped") == "already_drawn" for r in again)
    december = await reports.scheduled_draw(pool, cst(2024, 12, 1, 0, 30))
    assert all("draw_id" in r and "skipped" not in r for r in december)
    for r in first:
        draw = await reports.get_draw(pool, r["draw_id"])
        assert draw["drawn_by"] == reports.SCHEDULER_ACTOR
        assert draw["params"]["weight_by_risk"] is True
        assert (await reports.verify_draw(pool, r["draw_id"]))["reproduced"]


# ====================================================================== draws (API)
async def test_draw_api_round_trip(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/inspections/matters")
    assert r.status_code == 200 and {m["id"] for m in r.json()} >= {"M01", "M02", "M04"}

    r = await client.post("/api/inspections/draws", json={
        "matter_id": "M01", "targets": 6, "inspectors_per_target": 2,
        "weight_by_risk": True, "drawn_by": "operator:zhang"})
    assert r.status_code == 201, r.text
    draw = r.json()
    did = draw["id"]
    assert draw["matter_name"] == "安全生产检查" and draw["targets"] == 6

    listed = (await client.get("/api/inspections/draws", params={"matter_id": "M01"})).json()
    assert listed[0]["id"] == did and "params" not in listed[0]
    got = (await client.get(f"/api/inspections/draws/{did}")).json()
    assert got["seed"] == draw["seed"] and got["result"] == draw["result"]

    r = await client.post(f"/api/inspections/draws/{did}/verify")
    assert r.status_code == 200 and r.json()["reproduced"] is True

    target = draw["picks"][0]["entity_id"]
    r = await client.post(f"/api/inspections/draws/{did}/results", json={
        "entity_id": target, "outcome": "rectification_ordered", "notes": "灭火器过期，已责令更换",
        "recorded_by": "inspector:INS-001"})
    assert r.status_code == 201, r.text
    assert r.json()["picks"][0]["result"]["outcome_label"] == "发现问题已责令整改"

    public = (await client.get("/api/inspections/public")).json()
    assert did not in {d["id"] for d in public}  # not published yet

    r = await client.post(f"/api/inspections/draws/{did}/publish", json={"by": "leader:wang"})
    assert r.status_code == 200 and r.json()["published"] is True
    published_at = r.json()["published_at"]
    r = await client.post(f"/api/inspections/draws/{did}/publish", json={"by": "someone"})
    assert r.json()["published_at"] == published_at  # publishing twice changes nothing

    public = (await client.get("/api/inspections/public")).json()
    mine = next(d for d in public if d["id"] == did)
    assert mine["seed"] and mine["params"]["entities"]  # enough to re-run it
    assert mine["picks"][0]["result"]["outcome"] == "rectification_ordered"
    again = inspections.verify(mine["seed"], mine["algorithm"], mine["params"], mine["result"])
    assert again.reproduced


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"matter_id": "M99", "targets": 1}, 404, "inspection.matter_not_found"),
        ({"matter_id": "M01", "targets": 100000}, 422, "request.invalid"),
        ({"matter_id": "M01", "targets": 1, "inspectors_per_target": 1}, 422, "request.invalid"),
        ({"matter_id": "M01", "targets": 1, "seed": ""}, 422, "request.invalid"),
        ({"matter_id": "M01", "targets": 1, "drawn_by": None}, 422, "request.invalid"),
        ({"matter_id": "M10", "targets": 50}, 422, "inspection.not_enough_entities"),
        ({"matter_id": "MX-LONELY", "targets": 1}, 422, "inspection.not_enough_inspectors"),
    ],
)
async def test_draw_api_errors(client: httpx.AsyncClient, pool: asyncpg.Pool,
                               body: dict[str, Any], status: int, code: str) -> None:
    # A matter of a department with a single inspector: no team of two is possible.
    await pool.execute(
        """INSERT INTO inspectors (id, name, department) VALUES ('INS-LONELY', '孤勇', 'lonely')
           ON CONFLICT DO NOTHING""")
    await pool.execute(
        """INSERT INTO inspection_matters (id, name, department) VALUES
           ('MX-LONELY', '测试事项', 'lonely') ON CONFLICT DO NOTHING""")
    try:
        body = {"drawn_by": "operator:test", **body}
        body = {k: v for k, v in body.items() if v is not None}
        r = await client.post("/api/inspections/draws", json=body)
        assert r.status_code == status, r.text
        assert r.json()["error"]["code"] == code
    finally:  # the matter would fail the other tests' scheduled draws
        await pool.execute("DELETE FROM inspection_matters WHERE id = 'MX-LONELY'")
        await pool.execute("DELETE FROM inspectors WHERE id = 'INS-LONELY'")


async def test_a_seed_read_out_in_public_gives_the_same_draw(client: httpx.AsyncClient) -> None:
    body = {"matter_id": "M03", "targets": 5, "seed": "2025年5月公开摇号 第1号",
            "drawn_by": "operator:test"}
    first = (await client.post("/api/inspections/draws", json=body)).json()
    second = (await client.post("/api/inspections/draws", json=body)).json()
    assert first["id"] != second["id"] and first["result"] == second["result"]
    unweighted = (await client.post("/api/inspections/draws",
                                    json={**body, "weight_by_risk": False})).json()
    assert unweighted["params"]["risk_weights"] is None


async def test_result_api_errors(client: httpx.AsyncClient) -> None:
    draw = (await client.post("/api/inspections/draws", json={
        "matter_id": "M02", "targets": 2, "drawn_by": "operator:test"})).json()
    drawn = {p["entity_id"] for p in draw["picks"]}
    other = next(f"ME-{k:04d}" for k in range(1, 300) if f"ME-{k:04d}" not in drawn)
    url = f"/api/inspections/draws/{draw['id']}/results"
    body = {"entity_id": other, "outcome": "no_problem", "recorded_by": "inspector:x"}
    r = await client.post(url, json=body)
    assert (r.status_code, r.json()["error"]["code"]) == (422, "inspection.not_drawn")
    body["entity_id"] = draw["picks"][0]["entity_id"]
    assert (await client.post(url, json=body)).status_code == 201
    r = await client.post(url, json=body)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "inspection.result_exists")
    r = await client.post(url, json={**body, "outcome": "great"})
    assert r.status_code == 422
    r = await client.post("/api/inspections/draws/999999/verify")
    assert (r.status_code, r.json()["error"]["code"]) == (404, "inspection.draw_not_found")


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
        category, priority, grid, state.state, reports._ts(opened_at), unit,
        state.rework_count, state.extension_count, state.handler)
    prev = workflow.GENESIS_HASH
    for seq, (action, from_s, to_s, actor, ts, reason) in enumerate(entries, start=1):
        h = workflow.entry_hash(prev, iid, seq, action, from_s, to_s, actor, ts, reason)
        await conn.execute(
            """INSERT INTO case_log (incident_id, seq, action, from_state, to_state, actor, ts,
                                     reason, prev_hash, hash)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)""",
            iid, seq, action, from_s, to_s, actor, reports._ts(ts), reason, prev, h)
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
    rows = [(reports._ts(ts), "SQ-01", lat, lon, 5.0, reports._ts(ts))
            for ts, lon, lat, _ in track(t0, 2000.0)]
    # A GPS jump 5 km away in the middle of the drive.
    rows.append((reports._ts(t0 + 102), "SQ-01", 31.85, 120.43, 5.0, reports._ts(t0 + 102)))
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
