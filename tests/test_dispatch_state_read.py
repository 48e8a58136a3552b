"""The state read reuses the values of rows it read before (``store._Built``): after
writes from other connections, what it returns equals the state built afresh from a new
read, on the real database (dispatch/store.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest_asyncio

from core.db import connect, create_pool
from dispatch import decisions, planner, service, sla_config, store
from dispatch.model import DispatchPolicy
from tests.conftest import town_database, town_doc

TOWN = town_doc()
POLICY = DispatchPolicy(stale_after_s=86400.0, preempt_up_to_priority=2,
                        preempt_penalty_s=360.0, replan_gain_s=240.0)


@pytest_asyncio.fixture
async def db_url(base_db_url: str) -> AsyncIterator[str]:
    async with town_database(base_db_url, "sr") as url:
        conn = await connect(url)
        try:
            await conn.execute("UPDATE units SET position_ts = now() WHERE lon IS NOT NULL")
        finally:
            await conn.close()
        yield url


async def _fresh(conn: asyncpg.Connection) -> planner.DispatchState:
    """The state built from a read of its own, reusing nothing."""
    rows = await conn.fetch(store.STATE_SQL, list(store.PLANNED_STATES),
                            list(store.BARRING_STATUSES), sla_config.InForce.tz)
    return store.state_from_rows(rows, store._Built())


async def _check(reader: asyncpg.Connection) -> planner.DispatchState:
    state = await store.dispatch_state(reader)
    assert state == await _fresh(reader)
    return state


async def test_the_state_read_equals_a_fresh_read_after_other_connections_write(
        db_url: str) -> None:
    pool = await create_pool(db_url, 1, 3)
    reader = await connect(db_url)
    writer = await connect(db_url)
    try:
        first = await _check(reader)
        unit = next(u for u in first.units if u.lon is not None)
        # Read again, nothing written: every value is the one built before.
        again = await _check(reader)
        assert all(a is b for a, b in zip(first.units, again.units, strict=True))

        # Ingest moves a unit (another connection, committed).
        await writer.execute("UPDATE units SET lon = lon + 0.001, position_ts = now() "
                             "WHERE id = $1", unit.id)
        moved = await _check(reader)
        after = next(u for u in moved.units if u.id == unit.id)
        assert after.lon != unit.lon and after.position_ts != unit.position_ts

        # The field app takes a unit off duty; an operator opens a case; the leader's
        # decision dispatches a unit to it.
        await writer.execute("UPDATE units SET status = 'off_duty' WHERE id = $1", unit.id)
        spot = TOWN["devices"][0]
        inc = await service.open_incident(
            pool, category="city_order", qualification="city_management", priority=3,
            title="占道经营", description="", lon=spot["lon"], lat=spot["lat"],
            source="operator", reporter="operator1")
        iid = str(inc["id"])
        await _check(reader)
        decision, _ = await decisions.decide_and_apply(
            pool, planner.IncidentRegistered(iid), None, POLICY)
        sent = decision.dispatches[0].unit_id
        state = await _check(reader)
        case = state.incident(iid)
        assert case is not None and case.assigned_unit == sent
        sent_unit = state.unit(sent)
        assert sent_unit is not None and sent_unit.status == "dispatched"
        assert sent_unit.current_incident == iid and sent_unit.current_priority == 3
        assert state.unit(unit.id) is not None and state.unit(unit.id).status == "off_duty"

        # The crew declines (the assignment's status, from another connection): the case
        # bars that unit.
        await writer.execute("UPDATE assignments SET status = 'declined' "
                             "WHERE incident_id = $1", int(iid))
        barred = await _check(reader)
        assert barred.excluded.get(iid) == frozenset({sent})
        await _check(reader)
    finally:
        await writer.close()
        await reader.close()
        await pool.close()
