"""The latest-value table (``telemetry_latest``): which readings of a batch update it, and
the statements that do it. Used by the batched writer (ingest/writer.py), in the flush's
own transaction, so a message is acknowledged only once its reading is both stored and
reflected here (a redelivery after a crash writes it again).

The optimistic flush COPYs the batch straight into the hypertable, so the database never
sees the batch as a table it could pick the newest rows from; the writer picks them here
(``newest_per_key``, one per device and metric) and COPYs only those into the staging
table. They are applied with a plain ``UPDATE`` (one index probe and one HOT update per
row: ~2 µs of PostgreSQL CPU per row here), not ``INSERT ... ON CONFLICT DO UPDATE``
(~5 µs: a speculative insertion, a row lock written to the WAL, then the update;
docs/PERFORMANCE.md). An ``UPDATE`` cannot add a device's first row, nor tell a missing row
from a newer one already stored, so when it updates fewer rows than it was given, the
upsert (``UPSERT_FROM_STAGE``) runs over the same rows, in the same transaction: new
devices and late readings cost what they did before; the steady state does not.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from operator import itemgetter

from core.db import Conn
from ingest.copy_binary import TELEMETRY_COLUMNS, TelemetryValues

# Planner settings for the rest of the flush's transaction (SET LOCAL), then the update.
# Index probes into telemetry_latest, driven by the staged rows in key order: without
# them a small latest table is hashed whole per flush, and, worse, rows would be locked
# in the table's physical order, which two overlapping flushes may see differently (a HOT
# update moves a row within its page): a deadlock. In key order every writer locks rows
# in the same order as the upsert does. The positions' statements later in the same
# transaction probe ``units`` by primary key either way.
UPDATE_FROM_STAGE = """
SET LOCAL enable_hashjoin = off;
SET LOCAL enable_mergejoin = off;
UPDATE telemetry_latest l
SET ts = s.ts, value = s.value, received_at = s.received_at
FROM (SELECT device_id, metric, ts, value, received_at FROM stage_telemetry
      ORDER BY device_id, metric) s
WHERE l.device_id = s.device_id AND l.metric = s.metric AND l.ts < s.ts
"""

# Every staged reading (a merge stages the whole batch): the newest per key wins, a late
# reading never overwrites a newer one, a new device gets its row.
UPSERT_FROM_STAGE = """
INSERT INTO telemetry_latest (device_id, metric, ts, value, received_at)
SELECT DISTINCT ON (device_id, metric) device_id, metric, ts, value, received_at
FROM stage_telemetry ORDER BY device_id, metric, ts DESC
ON CONFLICT (device_id, metric) DO UPDATE
SET ts = excluded.ts, value = excluded.value, received_at = excluded.received_at
WHERE telemetry_latest.ts < excluded.ts
"""


def newest_per_key(rows: Sequence[TelemetryValues]) -> Sequence[TelemetryValues]:
    """The newest reading of each (device, metric) in ``rows`` (on equal times, the later
    row). ``rows`` itself when no key repeats: a gateway's batch of distinct devices, the
    usual case, costs one dict build and no copy."""
    by_key = {(r[1], r[2]): r for r in rows}  # the last row of each key
    if len(by_key) == len(rows):
        return rows
    for r in rows:  # a key repeats: the last row of a key is not always its newest
        k = (r[1], r[2])
        if by_key[k][0] < r[0]:
            by_key[k] = r
    return list(by_key.values())


def updated(status: str) -> int:
    """Rows changed, from an UPDATE's command tag (``UPDATE <rows>``)."""
    return int(status.rsplit(" ", 1)[1])


# A row and its binary COPY bytes (ingest/copy_binary.py ``telemetry_rows``).
Encoded = tuple[TelemetryValues, bytes]
_key = itemgetter(1, 2)  # (device id, metric)


def fold_newest(pending: dict[tuple[str, str], Encoded], rows: Sequence[TelemetryValues],
                parts: Sequence[bytes], in_order: bool = False) -> None:
    """Fold ``rows`` (with ``parts``, their encoded rows) into ``pending`` (key -> newest
    row and its bytes), keeping the newer of each key (on equal times, the later row's).
    ``rows`` may repeat a key (a whole batch). ``in_order``: no row is older than a row of
    its device folded before it (the pipeline knows it from the device's clock; the
    usual case): the last row of each key wins, found in C, not row by row in Python."""
    if in_order:
        pending.update(zip(map(_key, rows), zip(rows, parts, strict=True), strict=True))
        return
    get = pending.get
    for r, b in zip(rows, parts, strict=True):
        k = (r[1], r[2])
        o = get(k)
        if o is None or o[0][0] <= r[0]:
            pending[k] = (r, b)


async def update_latest(conn: Conn, newest: Sequence[TelemetryValues], data: bytes) -> None:
    """``newest`` (one row per key; ``data``: its binary COPY, ingest/copy_binary.py) into
    telemetry_latest, in the caller's transaction; the staging table must exist."""
    async def chunks() -> AsyncIterator[bytes]:
        yield data  # an async iterable: asyncpg reads a file-like source in a thread
    await conn.copy_to_table("stage_telemetry", source=chunks(), columns=TELEMETRY_COLUMNS,
                             format="binary")
    if updated(await conn.execute(UPDATE_FROM_STAGE)) < len(newest):
        # A device's first reading, or one older than the stored latest.
        await conn.execute(UPSERT_FROM_STAGE)
