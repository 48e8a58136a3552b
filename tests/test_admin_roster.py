"""The duty roster: which local times a shift covers (pure), and the schedule applied to a
real database at its boundaries only, a change by hand holding until the next one, a busy
unit going off duty once free."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, time
from zoneinfo import ZoneInfo

import asyncpg
import pytest_asyncio

from core.db import create_pool
from hub.admin_roster import Shift, apply_schedule, on_shift, set_duty
from tests.conftest import town_database, town_doc

TZ = "Asia/Shanghai"
WEEKDAYS = frozenset({1, 2, 3, 4, 5})


def local(d: int, hh: int, mm: int = 0) -> datetime:
    """December 2026: the 7th is a Monday."""
    return datetime(2026, 12, d, hh, mm, tzinfo=ZoneInfo(TZ))


def test_day_shift_covers_its_weekdays_and_hours_only() -> None:
    day = [Shift(WEEKDAYS, time(8), time(17))]
    assert on_shift(day, local(7, 8))          # Monday 08:00, the start is inside
    assert on_shift(day, local(11, 16, 59))    # Friday
    assert not on_shift(day, local(7, 17))     # the end is outside
    assert not on_shift(day, local(7, 7, 59))
    assert not on_shift(day, local(12, 10))    # Saturday


def test_night_shift_runs_past_midnight_into_the_next_day() -> None:
    night = [Shift(frozenset({5}), time(20), time(6))]  # Friday night
    assert on_shift(night, local(11, 23))       # Friday 23:00
    assert on_shift(night, local(12, 5, 59))    # Saturday 05:59, Friday's shift
    assert not on_shift(night, local(12, 6))
    assert not on_shift(night, local(11, 5))    # Friday morning: Thursday had no shift
    assert not on_shift([], local(11, 23))


@pytest_asyncio.fixture(scope="module")
async def roster_db(base_db_url: str) -> AsyncIterator[str]:
    async with town_database(base_db_url, "roster") as url:
        yield url


@pytest_asyncio.fixture
async def pool(roster_db: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(roster_db, 1, 4)
    yield p
    await p.close()


async def _status(pool: asyncpg.Pool, unit: str) -> str:
    return str(await pool.fetchval("SELECT status FROM units WHERE id = $1", unit))


async def test_schedule_acts_at_boundaries_and_hand_changes_hold(pool: asyncpg.Pool) -> None:
    unit = town_doc()["units"][0]["id"]
    await pool.execute("INSERT INTO unit_shifts (unit_id, weekdays, starts, ends, created_by) "
                       "VALUES ($1, '{1,2,3,4,5}', '08:00', '17:00', 'test')", unit)
    # Monday evening: off shift, the unit goes off duty (an event announces it).
    seq0 = await pool.fetchval("SELECT coalesce(max(seq), 0) FROM events")
    assert await apply_schedule(pool, TZ, local(7, 18)) == 1
    assert await _status(pool, unit) == "off_duty"
    kinds = [r["kind"] for r in await pool.fetch(
        "SELECT kind FROM events WHERE seq > $1 AND payload->'unit'->>'id' = $2", seq0, unit)]
    assert kinds == ["unit.status_changed"]
    # Called out by hand at night: the schedule leaves it alone until the next boundary.
    async with pool.acquire() as conn, conn.transaction():
        await set_duty(conn, unit, True, "supervisor-1", "hand", "storm call-out")
    assert await apply_schedule(pool, TZ, local(7, 23)) == 0
    assert await _status(pool, unit) == "available"
    # Tuesday 08:00: the shift starts; it is on duty already, nothing to change.
    assert await apply_schedule(pool, TZ, local(8, 8, 1)) == 0
    # Tuesday 17:00 while busy on a case: it stays until free, then goes off duty.
    await pool.execute("UPDATE units SET status = 'on_scene' WHERE id = $1", unit)
    assert await apply_schedule(pool, TZ, local(8, 17, 1)) == 0
    assert await _status(pool, unit) == "on_scene"
    await pool.execute("UPDATE units SET status = 'available' WHERE id = $1", unit)
    assert await apply_schedule(pool, TZ, local(8, 17, 2)) == 1
    assert await _status(pool, unit) == "off_duty"
    log = await pool.fetch("SELECT actor, on_duty, source, note FROM unit_duty_log "
                           "WHERE unit_id = $1 ORDER BY id", unit)
    assert [(r["actor"], r["on_duty"], r["source"]) for r in log] == [
        ("schedule", False, "schedule"), ("supervisor-1", True, "hand"),
        ("schedule", False, "schedule")]
    assert log[1]["note"] == "storm call-out"
