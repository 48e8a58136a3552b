"""Database pool, the TimescaleDB check and the migration runner.

``migrations/NNNN_name.sql`` files are the only place the schema lives. They are applied
in order, each in its own transaction, and recorded in ``schema_migrations`` so that a
second run applies nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from core.errors import ConfigError, MissingTimescaleDB

log = logging.getLogger("core.db")

# A connection, whether taken from a pool or opened alone; ``Querier`` adds the pool itself
# (for one-statement reads that need no transaction).
Conn = asyncpg.Connection | PoolConnectionProxy
Querier = asyncpg.Connection | PoolConnectionProxy | asyncpg.Pool

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# Serialises migration runs of several processes starting at once (any fixed number).
MIGRATION_LOCK_KEY = 4_710_001

TIMESCALEDB_HOWTO = (
    "TimescaleDB is required: the database has no 'timescaledb' extension available. "
    "Run ./hubctl demo (it builds and installs it), or use the timescale/timescaledb image "
    "(compose.yaml), or install the timescaledb package for your PostgreSQL and add "
    "shared_preload_libraries = 'timescaledb'."
)


async def _init_connection(conn: asyncpg.Connection) -> None:
    # JSON columns come back as Python values, not strings.
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def connect(url: str) -> asyncpg.Connection:
    try:
        conn: asyncpg.Connection = await asyncpg.connect(url)
    except (OSError, asyncpg.PostgresError) as e:
        raise ConfigError(f"cannot connect to the database: {e}") from e
    await _init_connection(conn)
    return conn


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A pool's release without asyncpg's session reset (see ``create_pool``)."""


async def create_pool(url: str, min_size: int = 2, max_size: int = 10, *,
                      max_inactive_s: float = 300.0,
                      session_reset: bool = True) -> asyncpg.Pool:
    """``max_inactive_s``: an idle connection is closed after this long (asyncpg's
    default; 0 keeps it, as the dispatch leader's own connection is kept warm).
    ``session_reset``: on each release, asyncpg rolls back an open transaction and then
    resets the session (advisory locks, cursors, LISTENs, settings: one more round trip).
    False skips the latter, for a pool whose users leave no session state behind (the
    dispatch leader's: transaction-scoped locks only; that round trip came before each of
    its decisions was reported)."""
    try:
        pool = await asyncpg.create_pool(
            url, min_size=min_size, max_size=max_size, init=_init_connection,
            max_inactive_connection_lifetime=max_inactive_s,
            reset=None if session_reset else _keep_session,
        )
    except (OSError, asyncpg.PostgresError) as e:
        raise ConfigError(f"cannot connect to the database: {e}") from e
    assert pool is not None
    return pool


async def require_timescaledb(conn: asyncpg.Connection) -> str:
    """Return the installed TimescaleDB version, creating the extension if it is available.

    Raises MissingTimescaleDB (one line that says how to get it) when it is not.
    """
    version = await conn.fetchval(
        "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
    )
    if version:
        return str(version)
    available = await conn.fetchval(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
    )
    if not available:
        raise MissingTimescaleDB(TIMESCALEDB_HOWTO)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except asyncpg.PostgresError as e:
        raise MissingTimescaleDB(f"{TIMESCALEDB_HOWTO} ({e})") from e
    version = await conn.fetchval(
        "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
    return str(version)


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[Path]:
    return sorted(p for p in directory.glob("*.sql") if p.name[:4].isdigit())


async def migrate(conn: asyncpg.Connection, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations in name order; return the names applied now."""
    await require_timescaledb(conn)
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   name text PRIMARY KEY,
                   sha256 text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        rows = await conn.fetch("SELECT name, sha256 FROM schema_migrations")
        done = {r["name"]: r["sha256"] for r in rows}
        for path in migration_files(directory):
            sql = path.read_text(encoding="utf-8")
            digest = hashlib.sha256(sql.encode()).hexdigest()
            if path.name in done:
                if done[path.name] != digest:
                    log.warning("migration %s changed after it was applied", path.name)
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (name, sha256) VALUES ($1, $2)",
                    path.name,
                    digest,
                )
            log.info("applied migration %s", path.name)
            applied_now.append(path.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    return applied_now


async def fetch_one(conn: Querier, query: str, *args: Any) -> asyncpg.Record:
    """``fetchrow`` for a statement that always returns a row (an aggregate, or an INSERT
    whose RETURNING cannot be empty): a missing row is a bug, said as such."""
    row = await conn.fetchrow(query, *args)
    if row is None:
        raise RuntimeError(f"expected one row from: {query.split()[0]} ...")
    return row


def row_view(record: Any) -> dict[str, Any]:
    """A database row as a JSON-ready dict: timestamps become UNIX seconds (float).

    Entity views in events, the API and the live feed all come from here, so a client sees
    one shape for an alarm or an incident wherever it reads it.
    """
    out: dict[str, Any] = {}
    for k, v in dict(record).items():
        if isinstance(v, datetime):
            out[k] = v.timestamp()
        else:
            out[k] = v
    return out
