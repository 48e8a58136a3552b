"""The event feed (core/outbox.EventFeed) on the real database: every committed event on the
bus exactly once and in seq order, the next one straight from its notification, and the
rest (a gap left by a rolled-back event, an event too large for a notification) read from
the table.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from core import outbox
from core.bus import Bus
from core.db import connect, create_pool
from core.events import Envelope, IncidentUpdated, UnitStatusChanged


class _Boom(Exception):
    pass


@pytest_asyncio.fixture
async def running(db_url: str, monkeypatch: pytest.MonkeyPatch
                  ) -> AsyncIterator[tuple[outbox.EventFeed, Bus, asyncpg.Pool,
                                           list[Envelope]]]:
    """A feed on its own bus, past its first catch-up, with no backstop poll during the test
    (a poll's read could take an event before its notification does)."""
    monkeypatch.setattr(outbox, "POLL_INTERVAL_S", 600.0)
    pool = await create_pool(db_url)
    bus = Bus()
    got: list[Envelope] = []
    bus.listen(got.append)
    async with pool.acquire() as conn:
        bus.last_seq = await outbox.last_seq(conn)
    feed = outbox.EventFeed(db_url, bus)
    task = asyncio.create_task(feed.run())
    try:
        # A first event, by whichever path: once it is on the bus the first catch-up is
        # over; the counters start after it.
        async with pool.acquire() as conn, conn.transaction():
            await outbox.record(conn, _unit(0))
        await _until(lambda: len(got) == 1)
        await asyncio.sleep(0.1)
        got.clear()
        feed.published = feed.from_notices = 0
        feed.lags_ms.clear()
        yield feed, bus, pool, got
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await pool.close()


async def _until(cond: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def _unit(i: int, pad: int = 0) -> UnitStatusChanged:
    return UnitStatusChanged(unit={"id": f"F{i}", "status": "available", "note": "x" * pad})


async def _table(pool: asyncpg.Pool, after: int) -> list[Envelope]:
    return await outbox.events_after(pool, after)


async def test_events_come_from_their_notifications_in_order(running: Any) -> None:
    feed, bus, pool, got = running
    start = bus.last_seq
    async with pool.acquire() as conn:
        async with conn.transaction():
            await outbox.record(conn, _unit(1))
        async with conn.transaction():
            await outbox.record_many(conn, [
                IncidentUpdated(incident={"id": 7, "state": "closed"}, action="close"),
                _unit(2)])
    await _until(lambda: len(got) == 3)
    rows = await _table(pool, start)
    assert [e.seq for e in got] == [e.seq for e in rows] == list(range(start + 1, start + 4))
    # What the notifications carried is what the table holds, time included.
    assert [(e.ts, e.kind, e.payload) for e in got] == [(e.ts, e.kind, e.payload)
                                                         for e in rows]
    assert feed.from_notices == 3 and feed.published == 3
    st = feed.stats()
    lag: Any = st["ts_to_bus_ms"]
    assert st["published"] == 3 and lag["events"] == 3
    assert 0 <= lag["p50"] <= lag["p99"] <= lag["max"] < 5000


async def test_a_gap_and_a_large_event_are_read_from_the_table(running: Any) -> None:
    feed, bus, pool, got = running
    start = bus.last_seq
    async with pool.acquire() as conn:
        try:
            async with conn.transaction():  # takes a seq, then rolls back: a gap
                await outbox.record(conn, _unit(3))
                raise _Boom
        except _Boom:
            pass
        async with conn.transaction():
            await outbox.record(conn, _unit(4))  # after the gap: not "the next seq"
        async with conn.transaction():
            await outbox.record(conn, _unit(5))  # the next one again
        async with conn.transaction():
            await outbox.record(conn, _unit(6, pad=9000))  # too large for a NOTIFY
    await _until(lambda: len(got) == 3)
    await asyncio.sleep(0.2)  # nothing more comes (no duplicate)
    rows = await _table(pool, start)
    assert [e.seq for e in got] == [e.seq for e in rows]
    assert [e.payload["unit"]["id"] for e in got] == ["F4", "F5", "F6"]
    assert got[0].seq == start + 2  # seq start + 1 was rolled back
    assert len(got[2].payload["unit"]["note"]) == 9000
    assert feed.published == 3
    # F4 (after the gap) and F6 (too large) can only have been read; F5 came from its
    # notification unless the read for F4 already found it.
    assert feed.from_notices <= 1


async def test_an_empty_notification_still_wakes_the_catch_up(db_url: str,
                                                              running: Any) -> None:
    """A writer that sends an empty NOTIFY (as before migration 0028) is still followed."""
    _feed, bus, _pool, got = running
    start = bus.last_seq
    conn = await connect(db_url)
    try:
        async with conn.transaction():
            await conn.execute("INSERT INTO events (kind, payload) VALUES ($1, $2)",
                               "unit.status_changed",
                               # A whole unit entity: the suite's shared hub applies this
                               # event too, and its consoles' pictures need a status.
                               {"unit": {"id": "F7", "status": "available"}})
            await conn.execute("SELECT pg_notify($1, '')", outbox.CHANNEL)
    finally:
        await conn.close()
    await _until(lambda: len(got) == 1)
    assert got[0].seq == start + 1
    assert got[0].payload == {"unit": {"id": "F7", "status": "available"}}
