"""The batched writer: the only writer of telemetry, positions and dead letters.

Rows gather in memory and are flushed with COPY when the batch reaches a size or an age,
whichever comes first. A flush is one transaction: the readings COPYed straight into the
``telemetry`` hypertable (binary COPY, ingest/copy_binary.py), positions and dead letters.
The latest-value table is updated from the newest reading per device and metric
(ingest/latest_values.py): once for all the flushes committed within ``latest_interval_s``
(their acknowledgements wait for it; the hub's default), or in each flush. The
idempotency key (the hypertables' unique indexes) makes the COPY fail when the batch holds
a reading already stored (a redelivery after a reconnect or a crash, or a copy in the same
batch): the transaction is then rolled back and the batch written again through the merge
path: COPY into a per-connection staging table, then
``INSERT ... ON CONFLICT DO NOTHING``, which drops the copies. The merge costs the database
~4 µs more per reading than the straight COPY (the staging table and the speculative
insertion; docs/PERFORMANCE.md), so it is taken only when needed, and kept while the
batches it writes still hold copies (a redelivered backlog).

Up to ``concurrency`` flushes run at once, each on its own connection (kept by the writer
between flushes), so the database works on one batch while the next is staged; a batch of
readings alone, with the latest values coalesced (the default), is one autocommitted COPY.
Acknowledgements are released in batch order, each only after its own batch and every
earlier one committed. If the database fails, the
batch is kept and retried; nothing is acknowledged meanwhile, so the broker holds the
backlog and the hub's memory stays bounded by the in-flight window.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import repeat
from operator import itemgetter, sub

import asyncpg

from core import clock
from core.db import Conn
from ingest.batch import Batch, PositionRow, TelemetryRow, pg_text, ts_of
from ingest.copy_binary import copy_of
from ingest.flush_sql import STAGING_SQL, copy_readings, write_batch
from ingest.latest_values import Encoded, fold_newest, update_latest

log = logging.getLogger("ingest.writer")

# Retry back-off while the database is away: fast first retries, then a calm pace.
RETRY_MIN_S = 0.2
RETRY_MAX_S = 5.0
# A flush that has not committed in this long is abandoned and retried: a connection cut
# mid-COPY (database restart) may otherwise never answer. Healthy flushes take milliseconds.
FLUSH_TIMEOUT_S = 10.0

_ROW, _BYTES = itemgetter(0), itemgetter(1)  # of a pending latest value (Encoded)

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
    # Batches written through the merge path (stored readings among them), and of those
    # the ones first tried with the plain insert and rolled back.
    merged_batches: int = 0
    conflicts: int = 0
    # Coalesced latest-value updates, and the rows they wrote (one per key each).
    latest_writes: int = 0
    latest_rows: int = 0
    in_flight: int = 0
    # Seconds summed over flushed batches: waiting for a flush slot once cut, flushing
    # (to commit), and from commit to their acknowledgements' release (batch order, the
    # coalesced latest-value update). Where a batch's time goes under load.
    queued_s: float = 0.0
    flush_s: float = 0.0
    released_batches: int = 0
    ack_hold_s: float = 0.0
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
        concurrency: int = 2,
        dead_letter_max_bytes: int = 4096,
        on_commit: Callable[[Batch], None] | None = None,
        latest_interval_s: float = 0.0,
        latest_max_held: int = 1000,
    ) -> None:
        """``latest_interval_s`` > 0 coalesces the latest-value update across flushes: the
        newest reading per key of the batches committed within that long (or until
        ``latest_max_held`` messages wait) is written in one update, and those batches are
        acknowledged after it commits. 0: each flush updates it in its own transaction."""
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.latest_interval_s = latest_interval_s
        self.latest_max_held = latest_max_held
        self.pool = pool
        self.ack = ack
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.concurrency = concurrency
        self.dead_letter_max_bytes = dead_letter_max_bytes
        self.on_commit = on_commit
        self.current = Batch()
        # Batches cut at ``batch_size`` while every flush slot was busy, oldest first.
        self._ready: deque[Batch] = deque()
        self.stats = WriterStats()
        self._full = asyncio.Event()
        # True after a batch held a stored reading: the next ones go through the merge path
        # until one of them holds none (a redelivered backlog comes as a run of batches).
        self._merging = False
        # The flush slots' connections, kept between flushes (run() gives them back when
        # it stops): taking one from the pool and giving it back cost a reset round trip
        # per flush.
        self._idle: list[Conn] = []

    # ---- adding (event loop thread, synchronous)
    def _touch(self) -> None:
        if not self.current.started:
            self.current.started = time.monotonic()
        if self.current.size() >= self.batch_size:
            # Cut here, not at flush time: a batch that grew while the database was slow
            # (hundreds of thousands of rows after a stall) could take longer than
            # FLUSH_TIMEOUT_S, fail and be retried, ever larger: ingest would stop. A
            # message's rows stay together; its acknowledgement may land in the next
            # batch, released after this one anyway (acknowledgements go in batch order).
            self.current.cut = time.monotonic()
            self._ready.append(self.current)
            self.current = Batch()
            self._full.set()

    def add_telemetry(self, rows: Iterable[TelemetryRow], in_order: bool = False) -> None:
        """``in_order``: no row is older than a row of its device added before it."""
        self.current.telemetry.extend(rows)
        if not in_order:
            self.current.in_order = False
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
        return self.current.size() + sum(b.size() for b in self._ready)

    # ---- flushing
    async def run(self) -> None:
        """Flush forever: by size (woken) or by age (the flush interval), up to
        ``concurrency`` batches at once; acknowledgements in batch order."""
        slots = asyncio.Semaphore(self.concurrency)
        order: asyncio.Queue[tuple[Batch, asyncio.Task[None]]] = asyncio.Queue()
        flushes: set[asyncio.Task[None]] = set()
        releaser = asyncio.create_task(self._release_in_order(order), name="ingest.acks")
        try:
            while True:
                if not self._ready:
                    try:
                        await asyncio.wait_for(self._full.wait(), self.flush_interval_s)
                    except TimeoutError:
                        pass
                self._full.clear()
                if not self._ready and self.current.empty():
                    continue
                # With every slot busy the current batch keeps growing meanwhile (up to
                # batch_size): under load the per-flush costs are shared by more rows.
                await slots.acquire()
                if self._ready:  # the oldest first: they were cut before the current one
                    batch = self._ready.popleft()
                else:
                    batch, self.current = self.current, Batch()
                    batch.cut = time.monotonic()
                batch.flush_start = time.monotonic()
                self.stats.queued_s += batch.flush_start - batch.cut
                task = asyncio.create_task(self._commit(batch, slots), name="ingest.flush")
                flushes.add(task)
                task.add_done_callback(flushes.discard)
                order.put_nowait((batch, task))
        finally:
            releaser.cancel()
            for t in list(flushes):
                t.cancel()
            await asyncio.gather(releaser, *flushes, return_exceptions=True)
            idle, self._idle = self._idle, []
            for conn in idle:
                await self._give_back(conn)

    async def _release_in_order(
            self, order: asyncio.Queue[tuple[Batch, asyncio.Task[None]]]) -> None:
        """Acknowledge committed batches in batch order. With the latest-value update
        coalesced, a batch that left rows for it is held, with every batch after it, until
        an update holding its rows committed: at most ``latest_interval_s`` after the first
        held batch, or once ``latest_max_held`` messages wait (the broker's in-flight
        window must not fill with them). Nothing is acknowledged before its reading is
        both stored and reflected in ``telemetry_latest``; a crash in between means a
        redelivery, which the merge path writes to both again."""
        held: list[Batch] = []
        pending: dict[tuple[str, str], Encoded] = {}
        held_msgs = 0
        deadline = 0.0
        while True:
            got: tuple[Batch, asyncio.Task[None]] | None = None
            if not held:
                got = await order.get()
            else:
                try:
                    got = await asyncio.wait_for(
                        order.get(), max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    pass
            if got is not None:
                batch, task = got
                await task  # retries until committed; never raises but for cancellation
                if not held and not batch.newest:
                    self._release(batch)
                    continue
                if not held:
                    deadline = time.monotonic() + self.latest_interval_s
                held.append(batch)
                held_msgs += len(batch.acks)
                fold_newest(pending, batch.newest, batch.newest_parts, batch.in_order)
                if held_msgs < self.latest_max_held and time.monotonic() < deadline:
                    continue
            newest = pending.values()
            rows = list(map(_ROW, newest))
            data = copy_of(map(_BYTES, newest))
            await self._commit_latest(rows, data)
            for b in held:
                self._release(b)
            held, pending, held_msgs = [], {}, 0

    def _release(self, batch: Batch) -> None:
        self.stats.released_batches += 1
        self.stats.ack_hold_s += time.monotonic() - batch.committed
        self.ack(batch.acks)
        if self.on_commit is not None:
            self.on_commit(batch)

    async def _commit_latest(self, rows: list[TelemetryRow], data: bytes) -> None:
        """Write the coalesced latest values (``data``: their binary COPY) until committed
        (retried as a flush is)."""
        if not rows:
            return
        delay = RETRY_MIN_S
        while True:
            try:
                async with asyncio.timeout(FLUSH_TIMEOUT_S):
                    async with self.pool.acquire() as conn, conn.transaction():
                        await conn.execute(STAGING_SQL)
                        await update_latest(conn, rows, data)
                self.stats.latest_writes += 1
                self.stats.latest_rows += len(rows)
                return
            except Exception as e:
                self.stats.failures += 1
                log.warning("latest-value update of %d rows failed (%s: %s); retrying in "
                            "%.1fs, nothing acknowledged meanwhile", len(rows),
                            type(e).__name__, e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    async def _commit(self, batch: Batch, slots: asyncio.Semaphore) -> None:
        """Write ``batch`` until it is committed, then free its slot."""
        delay = RETRY_MIN_S
        self.stats.in_flight += 1
        conn: Conn | None = None
        try:
            while True:
                conn = None
                try:
                    async with asyncio.timeout(FLUSH_TIMEOUT_S):
                        conn = self._idle.pop() if self._idle else await self.pool.acquire()
                        await self.write(batch, conn)
                    self._idle.append(conn)
                    break
                except Exception as e:
                    # Whatever failed (connection refused or cut mid-COPY, server shutting
                    # down, a timeout), the batch is kept and retried: the writer must
                    # never die, or nothing would be acknowledged again. The connection
                    # goes back to the pool, which resets it or closes it if broken.
                    if conn is not None:
                        await self._give_back(conn)
                        conn = None
                    self.stats.failures += 1
                    self.stats.db_ok = False
                    log.warning("flush of %d rows failed (%s: %s); retrying in %.1fs, "
                                "nothing acknowledged meanwhile", batch.size(),
                                type(e).__name__, e, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
            self.stats.db_ok = True
        except asyncio.CancelledError:
            if conn is not None and conn not in self._idle:
                await self._give_back(conn)
            raise
        finally:
            self.stats.in_flight -= 1
            slots.release()

    async def _give_back(self, conn: Conn) -> None:
        try:
            await self.pool.release(conn)  # type: ignore[arg-type]
        except Exception as e:  # a pool closing under us: nothing left to keep
            log.debug("releasing a flush connection failed (%s)", e)

    async def write(self, batch: Batch, conn: Conn | None = None) -> None:
        """One batch, committed: the plain insert, or the merge when the batch holds a
        reading stored already (or the last batches did). On ``conn`` (the flush slots'
        own connections), else on one from the pool."""
        if conn is None:
            async with self.pool.acquire() as pooled:
                await self._write_on(pooled, batch)
        else:
            await self._write_on(conn, batch)

    async def _write_on(self, conn: Conn, batch: Batch) -> None:
        t0 = time.perf_counter()
        merged = self._merging
        defer = self.latest_interval_s > 0
        if not merged:
            try:
                if defer and batch.telemetry and not batch.positions and not batch.dead:
                    # Readings alone, latest values deferred: the COPY is the whole
                    # flush, so it runs as its own statement's transaction (committed,
                    # synchronously, before it returns): no BEGIN, staging or COMMIT
                    # round trips, each of which waited for the busy event loop.
                    await copy_readings(conn, batch, defer_latest=True)
                else:
                    async with conn.transaction():
                        await write_batch(conn, batch, merge=False, defer_latest=defer)
            except asyncpg.UniqueViolationError:
                # Rolled back: a reading of this batch is stored already.
                self.stats.conflicts += 1
                merged = self._merging = True
        if merged:
            batch.newest, batch.newest_parts = (), ()  # the merge writes them itself
            async with conn.transaction():
                clean = await write_batch(conn, batch, merge=True)
            self.stats.merged_batches += 1
            self._merging = not clean
        committed = clock.now()
        batch.committed = time.monotonic()
        if batch.flush_start:
            self.stats.flush_s += batch.committed - batch.flush_start
        lat = self.stats.latencies
        # C-level: committed - device time, per reading (a generator here cost ~1 % of
        # the hub's CPU in batched ingest).
        lat.extend(map(sub, repeat(committed, len(batch.telemetry)),
                       map(itemgetter(0), batch.telemetry)))
        lat.extend(committed - r[0].timestamp() for r in batch.positions)
        self.stats.flushed_batches += 1
        self.stats.telemetry_rows += len(batch.telemetry)
        self.stats.position_rows += len(batch.positions)
        self.stats.dead_letters += len(batch.dead)
        self.stats.last_commit_ms = (time.perf_counter() - t0) * 1000.0
