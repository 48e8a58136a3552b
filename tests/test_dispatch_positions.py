"""The dispatch leader feeds position updates to the decision core where they matter: a
new fix of a unit that could take a waiting case makes one plan per position round,
however many fixes arrived; other units' fixes make none (dispatch/leader.py
``check_positions``), on the real database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest_asyncio

from core.bus import Bus
from core.db import connect, create_pool
from core.settings import Settings
from dispatch import decisions, planner, service
from dispatch.leader import Dispatcher
from tests.conftest import town_database, town_doc

TOWN = town_doc()


class _Recording(Dispatcher):
    """The leader, noting the inputs it decides (not started: rounds are driven here)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.inputs: list[planner.Input] = []

    async def decide(self, event: planner.Input) -> planner.Decision:
        self.inputs.append(event)
        return await super().decide(event)


@pytest_asyncio.fixture
async def db_url(base_db_url: str) -> AsyncIterator[str]:
    async with town_database(base_db_url, "p") as url:
        yield url


async def _water_case(pool: asyncpg.Pool, device: int) -> str:
    spot = TOWN["devices"][device]
    inc = await service.open_incident(
        pool, category="water", qualification="water", priority=3, title="管道破裂",
        description="", lon=spot["lon"], lat=spot["lat"], source="operator",
        reporter="operator1")
    return str(inc["id"])


async def test_a_fix_that_matters_plans_once_per_round(db_url: str, mqtt_url: str) -> None:
    settings = Settings(database_url=db_url, mqtt_url=mqtt_url,
                        position_stale_after_s=86400.0, dispatch_position_replan_s=1.0)
    pool = await create_pool(db_url)
    conn = await connect(db_url)
    try:
        water = [u["id"] for u in TOWN["units"] if "water" in u["qualifications"]]
        city = next(u["id"] for u in TOWN["units"]
                    if "water" not in u["qualifications"])
        w1 = water[0]
        await conn.execute("UPDATE units SET position_ts = now() WHERE lon IS NOT NULL")
        await conn.execute("UPDATE units SET status = 'off_duty' WHERE id = ANY($1) "
                           "AND id <> $2", water, w1)
        leader = _Recording(settings, pool, Bus(), None)
        policy = leader.policy
        a = await _water_case(pool, 3)
        await decisions.decide_and_apply(pool, planner.IncidentRegistered(a), None, policy)
        assert await conn.fetchval("SELECT assigned_unit FROM incidents WHERE id = $1",
                                   int(a)) == w1
        await service.apply_action(pool, int(a), "accept", w1, None)  # en route: stays
        b = await _water_case(pool, 5)
        d, _ = await decisions.decide_and_apply(pool, planner.IncidentRegistered(b), None,
                                                policy)
        assert [w.incident_id for w in d.waiting] == [b]  # no water unit free for B

        assert await leader.check_positions() is None  # the first round only notes the time
        assert await leader.check_positions() is None  # no new fix since
        # A fix of a unit no waiting case can use: nothing to plan.
        await conn.execute("UPDATE units SET position_ts = now() WHERE id = $1", city)
        assert await leader.check_positions() is None
        assert leader.inputs == []
        # Ten fixes of the water unit (1 Hz) before the next round: one plan, for it.
        for _ in range(10):
            await conn.execute("UPDATE units SET position_ts = now() WHERE id = $1", w1)
        decided = await leader.check_positions()
        assert decided is not None
        assert leader.inputs == [planner.PositionUpdated(w1)]
        assert [w.incident_id for w in decided.waiting] == [b]  # still nobody for B
        assert await leader.check_positions() is None  # the same fix is not acted on twice
        assert len(leader.inputs) == 1
        # Once no case waits, the water unit's fixes no longer matter.
        await conn.execute("UPDATE incidents SET state = 'cancelled' WHERE id = $1", int(b))
        await conn.execute("UPDATE units SET position_ts = now() WHERE id = $1", w1)
        assert await leader.check_positions() is None
        assert len(leader.inputs) == 1
    finally:
        await conn.close()
        await pool.close()
