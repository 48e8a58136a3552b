"""The dispatch role in a process of its own, on real services (hub/dispatch_child.py,
hub/dispatch_process.py): the default hub's child decides and is restarted when it dies, a
hub killed outright leaves no child and no leader lock behind, ``/api/health`` shows the
child's decisions; the in-process setting and the port-less ``python -m hub dispatch``
still lead and hand over to each other.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest_asyncio

from core.db import create_pool
from dispatch import service
from tests.conftest import ROOT, HubProcess, end_process, town_database, town_doc, wait_for
from tests.leader_probes import leader_backend, report_incident

TOWN = town_doc()


@pytest_asyncio.fixture
async def proc_db(base_db_url: str) -> AsyncIterator[str]:
    async with town_database(base_db_url, "dp") as url:
        yield url


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command name; None once the process is gone
    (a zombie counts as gone: it runs nothing and holds no connection)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None
    return None if fields[0] in ("Z", "X") else fields


def _parent(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields else None


async def _assigned(conn: asyncpg.Connection, iid: int) -> bool:
    return bool(await conn.fetchval(
        "SELECT count(*) FROM assignments WHERE incident_id = $1 AND status = 'active'", iid))


async def test_the_default_hub_dispatches_from_a_child_it_restarts_and_takes_along(
        proc_db: str, mqtt_url: str) -> None:
    hub = HubProcess(proc_db, mqtt_url).start()  # the default roles: ingest,dispatch,web
    conn = await asyncpg.connect(proc_db)
    try:
        assert hub.proc is not None
        health = hub.client.get("/api/health").json()
        assert health["roles"] == ["dispatch", "ingest", "web"]
        child = health["dispatch_process"]
        assert child["running"] and child["restarts"] == 0
        assert _parent(child["pid"]) == hub.proc.pid
        async with hub.async_client() as client:
            first = await report_incident(client, 0, "调度进程")
            await wait_for(lambda: _assigned(conn, first), timeout=20)

            # The hub serves the child's decision times, as it did its own leader's.
            async def decided() -> dict[str, Any] | None:
                d = (await client.get("/api/health")).json()["dispatch_decisions"]
                return d if d["decisions"] >= 2 else None  # the catch-up, then the case's

            stats = await wait_for(decided)
            assert set(stats["ms"]) == {"wait", "state", "core", "writes", "commit", "total"}
            assert stats["ms"]["total"]["p50"] > 0

            # Killed, the child is started again and dispatch goes on.
            os.kill(child["pid"], signal.SIGKILL)

            async def restarted() -> dict[str, Any] | None:
                c = (await client.get("/api/health")).json()["dispatch_process"]
                return c if c["running"] and c["pid"] != child["pid"] else None

            again = await wait_for(restarted, timeout=30)
            assert again["restarts"] == 1 and again["last_exit"] == -signal.SIGKILL
            assert _parent(again["pid"]) == hub.proc.pid
            second = await report_incident(client, 1, "调度进程")
            await wait_for(lambda: _assigned(conn, second), timeout=20)
            assert await leader_backend(conn) is not None

        # A hub killed outright takes its child along, and with it the leader lock.
        hub.stop(kill=True)

        async def gone() -> bool:
            return _stat(again["pid"]) is None and await leader_backend(conn) is None

        await wait_for(gone, timeout=10)
    finally:
        hub.stop()
        await conn.close()


def _dispatch_process(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """``python -m hub dispatch`` alone, logging where the hub does."""
    with log_path.open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", "hub", "dispatch"], env=env, cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT)


async def test_in_process_dispatch_and_the_portless_dispatch_process_hand_over(
        proc_db: str, mqtt_url: str) -> None:
    """``HUB_DISPATCH_OWN_PROCESS=false`` leads on the hub's own loop; ``python -m hub
    dispatch``, started with the same environment (the port the hub holds included), waits
    as the standby without serving HTTP and takes over when the hub stops."""
    hub = HubProcess(proc_db, mqtt_url, roles="dispatch,web",
                     extra_env={"HUB_DISPATCH_OWN_PROCESS": "false"}).start()
    conn = await asyncpg.connect(proc_db)
    pool = await create_pool(proc_db)
    standby: subprocess.Popen[bytes] | None = None
    try:
        async with hub.async_client() as client:
            first = await report_incident(client, 0, "调度进程")
            await wait_for(lambda: _assigned(conn, first), timeout=20)
            health = (await client.get("/api/health")).json()
        assert health["dispatch_process"] is None
        assert health["dispatch_decisions"]["decisions"] >= 1
        leader = await leader_backend(conn)
        assert leader is not None

        standby = _dispatch_process({**hub.env, "HUB_MQTT_CLIENT_ID": f"standby-{os.getpid()}"},
                                    hub.log_path)
        hub.stop()

        async def taken_over() -> bool:
            return await leader_backend(conn) not in (None, leader)

        await wait_for(taken_over, timeout=30)
        assert standby.poll() is None, "the dispatch process stopped"
        dev = TOWN["devices"][3]
        inc = await service.open_incident(
            pool, category="city_order", qualification="city_management", priority=3,
            title="备用调度", description="", lon=dev["lon"], lat=dev["lat"],
            source="operator", reporter="operator1")
        await wait_for(lambda: _assigned(conn, int(inc["id"])), timeout=20)
        standby.terminate()
        assert standby.wait(15) == 0
        standby = None
    finally:
        if standby is not None:
            end_process(standby, kill=True)
        hub.stop()
        await pool.close()
        await conn.close()
