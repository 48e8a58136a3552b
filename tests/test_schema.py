"""Migrations and the TimescaleDB requirement, on the real database."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from core.db import connect, migrate, migration_files
from core.errors import MissingTimescaleDB
from tests.conftest import ThrowawayPostgres, create_database, drop_database

ROOT = Path(__file__).resolve().parent.parent


async def test_migrations_apply_once_and_create_hypertables(base_db_url: str) -> None:
    name = f"gridhub_mig{os.getpid()}"
    url = await create_database(base_db_url, name)
    try:
        conn = await connect(url)
        try:
            first = await migrate(conn)
            assert first == [p.name for p in migration_files()]
            assert await migrate(conn) == []
            hypertables = {r["hypertable_name"] for r in await conn.fetch(
                "SELECT hypertable_name FROM timescaledb_information.hypertables")}
            assert hypertables >= {"telemetry", "positions"}
            tables = {r["tablename"] for r in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
            assert tables >= {"grids", "roads", "devices", "units", "alarms", "incidents",
                              "case_log", "events", "assignments", "rules", "dead_letters",
                              "telemetry_latest", "schema_migrations"}
        finally:
            await conn.close()
    finally:
        await drop_database(base_db_url, name)


@pytest.fixture
def plain_postgres() -> Iterator[str]:
    """A throw-away PostgreSQL cluster that does not load TimescaleDB."""
    pg = ThrowawayPostgres(timescaledb=False).start()
    yield pg.url
    pg.destroy()


async def test_hub_refuses_database_without_timescaledb(plain_postgres: str) -> None:
    conn = await connect(plain_postgres)
    try:
        with pytest.raises(MissingTimescaleDB) as err:
            await migrate(conn)
        assert err.value.code == "config.timescaledb_missing"
    finally:
        await conn.close()
    proc = subprocess.run(
        [sys.executable, "-m", "hub", "serve"], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "HUB_DATABASE_URL": plain_postgres, "HUB_HTTP_PORT": "1"},
        timeout=60)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "config.timescaledb_missing" in lines[0] and "TimescaleDB is required" in lines[0]
    conn = await asyncpg.connect(plain_postgres)
    try:
        assert await conn.fetchval("SELECT to_regclass('telemetry')") is None
    finally:
        await conn.close()
