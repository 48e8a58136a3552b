"""Rollups and retention: the scheduled upkeep of the time series.

Rollups are incremental: each run rebuilds the buckets from the last finished point minus a
look-back (so readings that arrive a little late are still counted) up to the last complete
bucket, in bounded steps, with ``time_bucket`` and an upsert. The hourly rollup is built from
the minute rollup (min of mins, max of maxes, sums and counts add up), never from raw rows.

Readings later than the look-back (a gateway's store-and-forward batch after an outage, an
ingest backlog) are found by receive time: ``refresh_late`` reads the partial index
``telemetry_delayed`` (readings received over ``DELAY_LAG`` after their device time) for
what arrived since its last scan and rebuilds the minute and hour buckets of just those
devices and hours, so the charts match the raw data.

Retention drops whole chunks (``drop_chunks``) older than each table's setting.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from core.db import Querier

log = logging.getLogger("ingest.retention")


@dataclass(frozen=True, slots=True)
class Rollup:
    name: str
    source: str          # table read
    target: str          # table written
    width: timedelta     # bucket width
    lookback: timedelta  # rebuilt again on every run, for late readings
    step: timedelta      # one statement covers at most this much time
    from_raw: bool       # source is raw telemetry (value) or a rollup (min/max/sum/count)


ROLLUPS = (
    # A minute rollup re-read for 10 minutes catches readings delayed by a gateway's
    # store-and-forward or an ingest backlog; older stragglers are in the raw table and
    # in `rebuild`. One hour per statement keeps each upsert a few hundred thousand rows.
    Rollup("telemetry_1m", "telemetry", "telemetry_1m", timedelta(minutes=1),
           timedelta(minutes=10), timedelta(hours=1), True),
    # The hourly rollup reads the minute rollup back two hours, covering the minute
    # rollup's own look-back with room to spare.
    Rollup("telemetry_1h", "telemetry_1m", "telemetry_1h", timedelta(hours=1),
           timedelta(hours=2), timedelta(days=1), False),
)

# A reading received this long after its device time is "delayed": the minute rollup's
# look-back (10 minutes) covers anything less late with room for a run interval. It is the
# predicate of the partial index telemetry_delayed (migration 0017): change both together.
DELAY_LAG = timedelta(minutes=5)  # written out as interval '5 minutes' in refresh_late
# Receive times this recent are scanned again on the next run: a reading is stamped when
# received, before its batch commits (well under a second; a minute is plenty).
COMMIT_MARGIN = timedelta(minutes=1)
LATE_SCAN = "late_scan"  # its rollup_progress row: receive times scanned up to here

_RAW_SELECT = """SELECT time_bucket($3::interval, ts) AS bucket, device_id, metric,
    min(value), max(value), sum(value), count(*) FROM telemetry
    WHERE ts >= $1 AND ts < $2 GROUP BY 1, 2, 3"""
_ROLLUP_SELECT = """SELECT time_bucket($3::interval, bucket) AS b, device_id, metric,
    min(min), max(max), sum(sum), sum(count)::bigint FROM {source}
    WHERE bucket >= $1 AND bucket < $2 GROUP BY 1, 2, 3"""
_UPSERT = """INSERT INTO {target} (bucket, device_id, metric, min, max, sum, count) {select}
    ON CONFLICT (device_id, metric, bucket) DO UPDATE SET min = excluded.min,
    max = excluded.max, sum = excluded.sum, count = excluded.count"""


def floor_to(t: datetime, width: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + ((t - epoch) // width) * width


def plan(done_until: datetime | None, earliest: datetime | None, now: datetime, r: Rollup
         ) -> list[tuple[datetime, datetime]]:
    """The [start, end) windows one run should rebuild: pure, for testing."""
    end = floor_to(now, r.width)  # the bucket in progress is not final yet
    if done_until is not None:
        start = floor_to(done_until - r.lookback, r.width)
    elif earliest is not None:
        start = floor_to(earliest, r.width)
    else:
        return []
    windows = []
    while start < end:
        stop = min(start + r.step, end)
        windows.append((start, stop))
        start = stop
    return windows


async def run_rollup(db: Querier, r: Rollup, now: datetime | None = None) -> int:
    """Bring one rollup up to date; return the number of windows rebuilt."""
    now = now or datetime.now(UTC)
    done = await db.fetchval("SELECT done_until FROM rollup_progress WHERE name = $1", r.name)
    earliest = None
    if done is None:
        col = "ts" if r.from_raw else "bucket"
        earliest = await db.fetchval(f"SELECT min({col}) FROM {r.source}")
    windows = plan(done, earliest, now, r)
    select = _RAW_SELECT if r.from_raw else _ROLLUP_SELECT.format(source=r.source)
    sql = _UPSERT.format(target=r.target, select=select)
    for start, stop in windows:
        await db.execute(sql, start, stop, r.width)
        await db.execute(
            """INSERT INTO rollup_progress (name, done_until) VALUES ($1, $2)
               ON CONFLICT (name) DO UPDATE SET done_until = excluded.done_until""",
            r.name, stop)
    if r.from_raw:  # after the minute rollup's own run, before the hour's
        await refresh_late(db, now)
    return len(windows)


async def rebuild(db: Querier, r: Rollup, start: datetime, stop: datetime) -> None:
    """Rebuild a rollup over an explicit range (after a backfill of old data)."""
    select = _RAW_SELECT if r.from_raw else _ROLLUP_SELECT.format(source=r.source)
    await db.execute(_UPSERT.format(target=r.target, select=select), start, stop, r.width)


_LATE_RAW = """SELECT time_bucket($3::interval, ts) AS bucket, device_id, metric,
    min(value), max(value), sum(value), count(*) FROM telemetry
    WHERE ts >= $1 AND ts < $2 AND device_id = ANY($4) GROUP BY 1, 2, 3"""
_LATE_ROLLUP = """SELECT time_bucket($3::interval, bucket) AS b, device_id, metric,
    min(min), max(max), sum(sum), sum(count)::bigint FROM {source}
    WHERE bucket >= $1 AND bucket < $2 AND device_id = ANY($4) GROUP BY 1, 2, 3"""


async def refresh_late(db: Querier, now: datetime | None = None) -> int:
    """Rebuild the minute and hour buckets touched by delayed readings received since the
    last scan, for the devices that sent them; return the number of hours rebuilt. The
    hour in progress gets its minutes only (``run_rollup`` builds the hour when final)."""
    now = now or datetime.now(UTC)
    until = now - COMMIT_MARGIN
    since = await db.fetchval("SELECT done_until FROM rollup_progress WHERE name = $1",
                              LATE_SCAN) or datetime(1970, 1, 1, tzinfo=UTC)
    if since >= until:
        return 0
    rows = await db.fetch(
        # The predicate is the index's, word for word, so the planner uses the index.
        """SELECT time_bucket('1 hour', ts) AS hour, array_agg(DISTINCT device_id) AS devs
           FROM telemetry WHERE received_at - ts > interval '5 minutes'
             AND received_at >= $1 AND received_at < $2 GROUP BY 1 ORDER BY 1""",
        since, until)
    minute, hour = ROLLUPS
    minute_end = floor_to(now, minute.width)
    hour_end = floor_to(now, hour.width)
    raw = _UPSERT.format(target=minute.target, select=_LATE_RAW)
    rolled = _UPSERT.format(target=hour.target, select=_LATE_ROLLUP.format(source=hour.source))
    for r in rows:
        start = r["hour"]
        await db.execute(raw, start, min(start + hour.width, minute_end), minute.width,
                         r["devs"])
        if start + hour.width <= hour_end:
            await db.execute(rolled, start, start + hour.width, hour.width, r["devs"])
    await db.execute(
        """INSERT INTO rollup_progress (name, done_until) VALUES ($1, $2)
           ON CONFLICT (name) DO UPDATE SET done_until = excluded.done_until""",
        LATE_SCAN, until)
    if rows:
        log.info("rollups: rebuilt %d hour(s) touched by delayed readings", len(rows))
    return len(rows)


async def drop_old_chunks(db: Querier, table: str, older_than: timedelta) -> int:
    """Drop the table's chunks entirely older than ``older_than``; return how many."""
    dropped = await db.fetch("SELECT drop_chunks($1::regclass, older_than => $2::interval)",
                             table, older_than)
    if dropped:
        log.info("retention: dropped %d chunk(s) of %s older than %s", len(dropped), table,
                 older_than)
    return len(dropped)
