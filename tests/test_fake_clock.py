"""One clock: the hub's case and SLA logic, run in this process on a FakeClock, stamps
exactly the times the clock says (core/clock.py), on the real database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import asyncpg
import pytest_asyncio

from core import clock
from core.db import create_pool
from dispatch import service
from tests.conftest import town_database, town_doc

TOWN = town_doc()
CST = timezone(timedelta(hours=8))
# A Tuesday morning in the town, far from any holiday and from the wall clock.
T0 = datetime(2025, 3, 4, 9, 30, tzinfo=CST).timestamp()


@pytest_asyncio.fixture(scope="module")
async def pool(base_db_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with town_database(base_db_url, "clock") as url:
        p = await create_pool(url)
        yield p
        await p.close()


async def test_case_steps_and_sla_clocks_follow_the_fake_clock(pool: asyncpg.Pool) -> None:
    d = TOWN["devices"][0]
    fake = clock.FakeClock(T0)
    with clock.using(fake):
        # A hotline report waits for an operator; no ``now`` passed: the clock's time.
        inc = await service.open_incident(
            pool, category="city_order", qualification="city_management", priority=3,
            title="fake clock", description="", lon=d["lon"], lat=d["lat"],
            source="hotline", reporter="tester")
        fake.advance(90)
        await service.apply_action(pool, int(inc["id"]), "register", "tester", None)
    assert abs(clock.now() - T0) > 86400  # back on the wall clock after the block
    rows = await pool.fetch(
        "SELECT action, extract(epoch FROM ts)::float8 AS ts FROM case_log "
        "WHERE incident_id = $1 ORDER BY seq", int(inc["id"]))
    assert [(r["action"], r["ts"]) for r in rows] == [("report", T0), ("register", T0 + 90)]
    started = await pool.fetch(
        "SELECT DISTINCT extract(epoch FROM started_at)::float8 AS s FROM sla_clocks "
        "WHERE incident_id = $1", int(inc["id"]))
    assert [r["s"] for r in started] == [T0]
    # the register stage was met at the fake time, inside its limit
    met = await pool.fetchval(
        "SELECT extract(epoch FROM met_at)::float8 FROM sla_clocks "
        "WHERE incident_id = $1 AND stage = 'register'", int(inc["id"]))
    assert met == T0 + 90
