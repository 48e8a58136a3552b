"""A new case is written in one statement (dispatch/opening.py) with the same rows, log and
event as the step-by-step path it replaced, on the real database.

The reference below is that path as it was (insert the row, append the report entry, lock,
start the clocks, take the register step, read the view, record the event), built from the
service's own step helpers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from core import outbox
from core.db import Conn, create_pool, row_view
from core.events import IncidentOpened
from dispatch import service, sla_clocks, store, workflow
from dispatch.service import SYSTEM_ACTOR
from tests.conftest import town_database, town_doc

TOWN = town_doc()
NOW = 1_764_756_000.123456  # a fixed report time, so the two paths' rows can be compared
OPERATOR = "operator1"


@pytest_asyncio.fixture
async def pool(base_db_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with town_database(base_db_url, "oi") as url:
        p = await create_pool(url)
        try:
            yield p
        finally:
            await p.close()


async def _step_by_step(conn: Conn, *, grid: str, source: str, reporter: str,
                        **f: Any) -> dict[str, Any]:
    """The old ``open_incident_in``: about fifteen round trips."""
    iid = await conn.fetchval(
        """INSERT INTO incidents (category, priority, qualification, title, description,
                                  lon, lat, grid_id, source, reporter, state, opened_at,
                                  updated_at)
           VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,'reported',$11,$11) RETURNING id""",
        f["category"], f["priority"], f["qualification"], f["title"], f["description"],
        f["lon"], f["lat"], grid, source, reporter, store.ts(NOW))
    await store.append_log(conn, iid, "report", None, "reported", reporter, NOW, None)
    inc = await store.incident_row(conn, iid, lock=True)
    assert inc is not None
    await sla_clocks.update_clocks(conn, inc, workflow.CaseState(), "report", NOW)
    if source in ("alarm", "operator"):
        await service._step(conn, inc, "register",
                            reporter if source == "operator" else SYSTEM_ACTOR, NOW, None)
    view = await store.incident_view(conn, iid)
    await outbox.record(conn, IncidentOpened(incident=view))
    return view


async def _written(conn: Conn, iid: int) -> dict[str, Any]:
    """What a case's opening left in the database, without the id (and the hashes, which
    cover it)."""
    inc = row_view(await conn.fetchrow("SELECT * FROM incidents WHERE id = $1", iid))
    inc.pop("id")
    inc.pop("log_head")
    log = [dict(r) for r in await conn.fetch(
        "SELECT seq, action, from_state, to_state, actor, ts, reason FROM case_log "
        "WHERE incident_id = $1 ORDER BY id", iid)]
    clocks = [dict(r) for r in await conn.fetch(
        "SELECT stage, started_at, deadline, warn_at, met_at, warned_at, breached_at "
        "FROM sla_clocks WHERE incident_id = $1 ORDER BY stage", iid)]
    events = [dict(r) for r in await conn.fetch(
        "SELECT kind, payload FROM events WHERE payload->'incident'->>'id' = $1::text",
        str(iid))]
    for e in events:
        assert e["payload"]["incident"].pop("id") == iid
    return {"incident": inc, "log": log, "clocks": clocks, "events": events}


@pytest.mark.parametrize("source", ["operator", "alarm", "grid_worker", "hotline"])
async def test_one_statement_writes_what_the_steps_wrote(pool: asyncpg.Pool,
                                                         source: str) -> None:
    spot = TOWN["devices"][3]
    fields: dict[str, Any] = dict(
        category="city_order", qualification="city_management", priority=2,
        title="占道经营", description="门前堆物", lon=spot["lon"], lat=spot["lat"])
    reporter = OPERATOR if source != "alarm" else SYSTEM_ACTOR
    view = await service.open_incident(pool, source=source, reporter=reporter, now=NOW,
                                       **fields)
    assert view["grid_id"] is not None  # the grid is found as before
    async with pool.acquire() as conn:
        async with conn.transaction():
            old = await _step_by_step(conn, grid=view["grid_id"], source=source,
                                      reporter=reporter, **fields)
        new_rows = await _written(conn, view["id"])
        old_rows = await _written(conn, old["id"])
        assert new_rows == old_rows
        assert new_rows["incident"]["state"] == (
            "registered" if source in ("operator", "alarm") else "reported")
        assert len(new_rows["log"]) == (2 if source in ("operator", "alarm") else 1)
        assert len(new_rows["clocks"]) == 5
        # The view returned (and sent to every screen) is the row as read back.
        assert view == await store.incident_view(conn, view["id"])
        old.pop("id")
        got = dict(view)
        got.pop("id")
        assert got == old
    # The hash chain and its head on the incident row hold.
    check = await service.verify_case_log(pool, view["id"])
    assert check["ok"] and check["head_ok"]


async def test_a_failed_write_leaves_nothing(pool: asyncpg.Pool) -> None:
    """The statement is the transaction: a case that cannot be written leaves no row, no
    log entry, no clock and no event (here: a grid that does not exist)."""
    spot = TOWN["devices"][3]
    async with pool.acquire() as conn:
        before = await conn.fetchval(
            "SELECT (SELECT count(*) FROM incidents) + (SELECT count(*) FROM case_log)"
            " + (SELECT count(*) FROM sla_clocks) + (SELECT count(*) FROM events)")
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await service.open_incident(
            pool, category="city_order", qualification="city_management", priority=3,
            title="x", description="", lon=spot["lon"], lat=spot["lat"], source="operator",
            reporter=OPERATOR, grid_id="no-such-grid")
    async with pool.acquire() as conn:
        after = await conn.fetchval(
            "SELECT (SELECT count(*) FROM incidents) + (SELECT count(*) FROM case_log)"
            " + (SELECT count(*) FROM sla_clocks) + (SELECT count(*) FROM events)")
    assert after == before
