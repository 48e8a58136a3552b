"""What one flush of the ingest writer runs in the database (ingest/writer.py decides when).

The plain path COPYs the readings straight into the ``telemetry`` hypertable (binary COPY,
ingest/copy_binary.py); its unique index refuses a reading stored already, and the writer
then writes the batch again through the merge path: COPY into a per-connection staging
table, then ``INSERT ... ON CONFLICT DO NOTHING``. Positions always go through staging (the
units' latest fix is updated from it); dead letters are COPYed as they are.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from core.db import Conn
from ingest.batch import Batch
from ingest.copy_binary import TELEMETRY_COLUMNS, copy_of, telemetry_copy, telemetry_rows
from ingest.latest_values import UPSERT_FROM_STAGE, newest_per_key, update_latest

STAGING_SQL = """
CREATE TEMP TABLE IF NOT EXISTS stage_telemetry (
    ts timestamptz, device_id text, metric text, value double precision,
    received_at timestamptz, late boolean) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_positions (
    ts timestamptz, unit_id text, lat double precision, lon double precision,
    speed real, heading real, accuracy real, received_at timestamptz) ON COMMIT DELETE ROWS;
"""

# The merge path: the batch is staged, then inserted but for the readings stored already
# (redelivered, or twice in the batch).
MERGE_TELEMETRY = """
INSERT INTO telemetry (ts, device_id, metric, value, received_at, late)
SELECT ts, device_id, metric, value, received_at, late FROM stage_telemetry
ON CONFLICT DO NOTHING
"""

INSERT_POSITIONS = """
INSERT INTO positions (ts, unit_id, lat, lon, speed, heading, accuracy, received_at)
SELECT ts, unit_id, lat, lon, speed, heading, accuracy, received_at FROM stage_positions
"""
MERGE_POSITIONS = INSERT_POSITIONS + "ON CONFLICT DO NOTHING\n"

# Row locks on the units a batch moves, taken in id order before the update: the dispatch
# decision (dispatch/decisions.py) locks its units in id order too, so the two never wait
# on each other in a cycle (an UPDATE ... FROM locks in join order: a deadlock otherwise).
LOCK_UNITS = """
SELECT 1 FROM units WHERE id IN (SELECT unit_id FROM stage_positions)
ORDER BY id FOR NO KEY UPDATE
"""

MERGE_UNIT_LATEST = """
UPDATE units u SET lon = s.lon, lat = s.lat, speed = s.speed, heading = s.heading,
                   position_ts = s.ts
FROM (SELECT DISTINCT ON (unit_id) * FROM stage_positions ORDER BY unit_id, ts DESC) s
WHERE u.id = s.unit_id AND (u.position_ts IS NULL OR u.position_ts < s.ts)
"""


async def copy_readings(conn: Conn, batch: Batch, *, defer_latest: bool) -> None:
    """The plain path's readings: straight into ``telemetry`` by COPY, which raises
    unique_violation if one of them is stored already (the caller then merges). Outside
    a transaction the COPY commits by itself. ``defer_latest``: every row is left in
    ``batch.newest`` (with its encoded row) for the coalesced latest-value update, which
    keeps each key's newest; otherwise the newest per key is written here."""
    rows = batch.telemetry
    parts = telemetry_rows(rows)
    data = copy_of(parts)
    await _copy_telemetry(conn, "telemetry", data)
    if defer_latest:
        batch.newest, batch.newest_parts = rows, parts
    else:
        newest = newest_per_key(rows)
        await update_latest(conn, newest, data if newest is rows else telemetry_copy(newest))


async def write_batch(conn: Conn, batch: Batch, *, merge: bool,
                      defer_latest: bool = False) -> bool:
    """The batch's statements, in the caller's transaction. True when every row was
    inserted (nothing was stored already); always True for the plain path, which raises
    instead. ``defer_latest``: as in ``copy_readings`` (the plain path only; the merge
    writes the latest values itself)."""
    clean = True
    await conn.execute(STAGING_SQL)
    if batch.telemetry:
        if merge:
            await _copy_telemetry(conn, "stage_telemetry", copy_of(telemetry_rows(
                batch.telemetry)))
            clean = _inserted(await conn.execute(MERGE_TELEMETRY)) == len(batch.telemetry)
            await conn.execute(UPSERT_FROM_STAGE)
        else:
            await copy_readings(conn, batch, defer_latest=defer_latest)
    if batch.positions:
        await conn.copy_records_to_table(
            "stage_positions", records=batch.positions,
            columns=("ts", "unit_id", "lat", "lon", "speed", "heading", "accuracy",
                     "received_at"))
        status = await conn.execute(MERGE_POSITIONS if merge else INSERT_POSITIONS)
        clean = clean and _inserted(status) == len(batch.positions)
        await conn.execute(LOCK_UNITS)
        await conn.execute(MERGE_UNIT_LATEST)
    if batch.dead:
        await conn.copy_records_to_table(
            "dead_letters", records=batch.dead,
            columns=("received_at", "topic", "payload", "size", "reason", "detail"))
    return clean


async def _copy_telemetry(conn: Conn, table: str, data: bytes) -> None:
    await conn.copy_to_table(table, source=_chunks(data), columns=TELEMETRY_COLUMNS,
                             format="binary")


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    # An async iterable: asyncpg reads a file-like source in a worker thread.
    yield data


def _inserted(status: str) -> int:
    """Rows inserted, from an INSERT's command tag (``INSERT 0 <rows>``)."""
    return int(status.rsplit(" ", 1)[1])
