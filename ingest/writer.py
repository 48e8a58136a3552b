"""The batched writer: the only writer of telemetry, positions and dead letters.

Rows gather in memory and are flushed with COPY when the batch reaches a size or an age,
whichever comes first. A flush is one transaction: COPY into per-connection staging tables,
``INSERT ... ON CONFLICT DO NOTHING`` into the hypertables (the idempotency key drops a
redelivered reading), the latest-value tables (a late reading never overwrites a newer one)
and the dead letters. Only after commit are the batch's messages acknowledged to the broker.
If the database fails, the batch is kept and retried; nothing is acknowledged meanwhile, so
the broker holds the backlog and the hub's memory stays bounded by the in-flight window.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg

from core import clock

log = logging.getLogger("ingest.writer")

# Retry back-off while the database is away: fast first retries, then a calm pace.
RETRY_MIN_S = 0.2
RETRY_MAX_S = 5.0
# A flush that has not committed in this long is abandoned and retried: a connection cut
# mid-COPY (database restart) may otherwise never answer. Healthy flushes take milliseconds.
FLUSH_TIMEOUT_S = 10.0

STAGING_SQL = """
CREATE TEMP TABLE IF NOT EXISTS stage_telemetry (
    ts timestamptz, device_id text, metric text, value double precision,
    received_at timestamptz, late boolean) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_positions (
    ts timestamptz, unit_id text, lat double precision, lon double precision,
    speed real, heading real, accuracy real, received_at timestamptz) ON COMMIT DELETE ROWS;
"""

MERGE_TELEMETRY = """
INSERT INTO telemetry (ts, device_id, metric, value, received_at, late)
SELECT ts, device_id, metric, value, received_at, late FROM stage_telemetry
ON CONFLICT DO NOTHING
"""

MERGE_TELEMETRY_LATEST = """
INSERT INTO telemetry_latest (device_id, metric, ts, value, received_at)
SELECT DISTINCT ON (device_id, metric) device_id, metric, ts, value, received_at
FROM stage_telemetry ORDER BY device_id, metric, ts DESC
ON CONFLICT (device_id, metric) DO UPDATE
SET ts = excluded.ts, value = excluded.value, received_at = excluded.received_at
WHERE telemetry_latest.ts < excluded.ts
"""

MERGE_POSITIONS = """
INSERT INTO positions (ts, unit_id, lat, lon, speed, heading, accuracy, received_at)
SELECT ts, unit_id, lat, lon, speed, heading, accuracy, received_at FROM stage_positions
ON CONFLICT DO NOTHING
"""

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

TelemetryRow = tuple[datetime, str, str, float, datetime, bool]
PositionRow = tuple[datetime, str, float, float, float | None, float | None, float | None, datetime]
DeadLetterRow = tuple[datetime, str, bytes, int, str, str]


def ts_of(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def pg_text(text: str) -> str:
    """``text`` as PostgreSQL can store it: NUL escaped, lone surrogates backslash-escaped.

    A decode error's detail can quote attacker-chosen text (an unknown JSON field whose
    name is a NUL character); PostgreSQL refuses NUL in text, the whole batch would fail,
    and the writer would retry it forever with nothing acknowledged: one message would
    stop ingest."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


@dataclass
class Batch:
    telemetry: list[TelemetryRow] = field(default_factory=list)
    positions: list[PositionRow] = field(default_factory=list)
    dead: list[DeadLetterRow] = field(default_factory=list)
    acks: list[tuple[int, int]] = field(default_factory=list)
    # publish time of the oldest message, for the flush-by-age rule
    started: float = 0.0

    def size(self) -> int:
        return len(self.telemetry) + len(self.positions) + len(self.dead)

    def empty(self) -> bool:
        return not (self.telemetry or self.positions or self.dead or self.acks)


# Publish-to-commit latencies kept for percentiles (device time is the publisher's clock on
# this machine in benchmarks): the last million readings, about 8 MB.
LATENCY_SAMPLES = 1_000_000


@dataclass
class WriterStats:
    flushed_batches: int = 0
    telemetry_rows: int = 0
    position_rows: int = 0
    dead_letters: int = 0
    failures: int = 0
    last_commit_ms: float = 0.0
    db_ok: bool = True
    # seconds from device time to commit, per telemetry row and position
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))

    def latency_percentiles(self) -> dict[str, float | int]:
        data = sorted(self.latencies)
        if not data:
            return {"samples": 0}
        def pick(q: float) -> float:
            return round(data[min(len(data) - 1, int(q * len(data)))] * 1000.0, 2)
        return {"samples": len(data), "p50_ms": pick(0.5), "p90_ms": pick(0.9),
                "p99_ms": pick(0.99), "max_ms": round(data[-1] * 1000.0, 2)}


class BatchWriter:
    """Gathers rows and acknowledgements; ``run()`` flushes them. One per ingest process."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        ack: Callable[[Iterable[tuple[int, int]]], None],
        *,
        batch_size: int = 5000,
        flush_interval_s: float = 0.02,
        dead_letter_max_bytes: int = 4096,
        on_commit: Callable[[Batch], None] | None = None,
    ) -> None:
        self.pool = pool
        self.ack = ack
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.dead_letter_max_bytes = dead_letter_max_bytes
        self.on_commit = on_commit
        self.current = Batch()
        self.stats = WriterStats()
        self._full = asyncio.Event()

    # ---- adding (event loop thread, synchronous)
    def _touch(self) -> None:
        if not self.current.started:
            self.current.started = time.monotonic()
        if self.current.size() >= self.batch_size:
            self._full.set()

    def add_telemetry(self, rows: Iterable[TelemetryRow]) -> None:
        self.current.telemetry.extend(rows)
        self._touch()

    def add_positions(self, rows: Iterable[PositionRow]) -> None:
        self.current.positions.extend(rows)
        self._touch()

    def add_dead_letter(self, topic: str, payload: bytes, reason: str, detail: str,
                        received_at: float) -> None:
        self.current.dead.append((ts_of(received_at), pg_text(topic),
                                  payload[: self.dead_letter_max_bytes], len(payload),
                                  reason, pg_text(detail[:500])))
        self._touch()

    def add_ack(self, mid: int, generation: int) -> None:
        self.current.acks.append((mid, generation))
        if not self.current.started:
            self.current.started = time.monotonic()

    def pending(self) -> int:
        return self.current.size()

    # ---- flushing
    async def run(self) -> None:
        """Flush forever: by size (woken) or by age (the flush interval)."""
        delay = RETRY_MIN_S
        while True:
            try:
                await asyncio.wait_for(self._full.wait(), self.flush_interval_s)
            except TimeoutError:
                pass
            self._full.clear()
            if self.current.empty():
                continue
            batch, self.current = self.current, Batch()
            while True:
                try:
                    async with asyncio.timeout(FLUSH_TIMEOUT_S):
                        await self.write(batch)
                    break
                except Exception as e:
                    # Whatever failed (connection refused or cut mid-COPY, server shutting
                    # down, a timeout), the batch is kept and retried: the writer must
                    # never die, or nothing would be acknowledged again.
                    self.stats.failures += 1
                    self.stats.db_ok = False
                    log.warning("flush of %d rows failed (%s: %s); retrying in %.1fs, "
                                "nothing acknowledged meanwhile", batch.size(),
                                type(e).__name__, e, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
            delay = RETRY_MIN_S
            self.stats.db_ok = True
            # The retried batch may have grown old messages behind it: merge and go on.
            self.ack(batch.acks)
            if self.on_commit is not None:
                self.on_commit(batch)

    async def write(self, batch: Batch) -> None:
        t0 = time.perf_counter()
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(STAGING_SQL)
            if batch.telemetry:
                await conn.copy_records_to_table(
                    "stage_telemetry", records=batch.telemetry,
                    columns=("ts", "device_id", "metric", "value", "received_at", "late"))
                await conn.execute(MERGE_TELEMETRY)
                await conn.execute(MERGE_TELEMETRY_LATEST)
            if batch.positions:
                await conn.copy_records_to_table(
                    "stage_positions", records=batch.positions,
                    columns=("ts", "unit_id", "lat", "lon", "speed", "heading", "accuracy",
                             "received_at"))
                await conn.execute(MERGE_POSITIONS)
                await conn.execute(LOCK_UNITS)
                await conn.execute(MERGE_UNIT_LATEST)
            if batch.dead:
                await conn.copy_records_to_table(
                    "dead_letters", records=batch.dead,
                    columns=("received_at", "topic", "payload", "size", "reason", "detail"))
        committed = clock.now()
        lat = self.stats.latencies
        lat.extend(committed - r[0].timestamp() for r in batch.telemetry)
        lat.extend(committed - r[0].timestamp() for r in batch.positions)
        self.stats.flushed_batches += 1
        self.stats.telemetry_rows += len(batch.telemetry)
        self.stats.position_rows += len(batch.positions)
        self.stats.dead_letters += len(batch.dead)
        self.stats.last_commit_ms = (time.perf_counter() - t0) * 1000.0
