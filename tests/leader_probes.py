"""What the process and fault tests ask of a running hub: who leads dispatch, and a report.

Shared by tests/test_faults.py and tests/test_dispatch_process.py.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from dispatch.leader import LEADER_LOCK_KEY
from tests.conftest import town_doc

TOWN = town_doc()


async def leader_backend(conn: asyncpg.Connection) -> int | None:
    """The database backend holding this database's leader lock (None: nobody leads)."""
    # pg_locks is cluster-wide, and every test hub with the dispatch role holds this key in
    # its own database: only this database's holder counts.
    pid = await conn.fetchval(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND classid = 0 AND objid = $1 AND database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())", LEADER_LOCK_KEY)
    return int(pid) if pid is not None else None


async def report_incident(client: Any, i: int, title: str) -> int:
    """Report incident number ``i`` (``title #i``) at one of the town's devices; its id."""
    dev = TOWN["devices"][(7 * i) % len(TOWN["devices"])]
    r = await client.post("/api/incidents", json={
        "category": "city_order", "qualification": "city_management", "priority": 3,
        "title": f"{title} #{i}", "reporter": "operator1", "lon": dev["lon"],
        "lat": dev["lat"]})
    assert r.status_code == 201, r.text
    return int(r.json()["id"])
