"""The batched writer against real TimescaleDB: the plain insert, the merge it falls back
to when a batch holds a stored reading, acknowledgements released in batch order with
overlapping flushes, a backlog cut into bounded batches, and the binary COPY encoding of
its rows (ingest/copy_binary.py)."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest_asyncio
from hypothesis import given
from hypothesis import strategies as st

from ingest import copy_binary
from ingest.batch import Batch, TelemetryRow, ts_of
from ingest.writer import BatchWriter
from tests.conftest import wait_for


@pytest_asyncio.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(db_url, min_size=1, max_size=4)
    yield p
    await p.close()


def _rows(device: str, start: float, n: int, value0: float = 0.0) -> list[TelemetryRow]:
    now = time.time()
    return [(start + i, device, "pm25", value0 + i, now, False) for i in range(n)]


class Acks:
    """What the writer acknowledged, call by call."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[int, int]]] = []

    def __call__(self, acks: Iterable[tuple[int, int]]) -> None:
        self.calls.append(list(acks))


async def _stored(pool: asyncpg.Pool, device: str) -> tuple[int, int]:
    row = await pool.fetchrow("SELECT count(*) AS n, count(DISTINCT ts) AS d FROM telemetry "
                              "WHERE device_id = $1", device)
    assert row is not None
    return int(row["n"]), int(row["d"])


async def _until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    async def check() -> bool:
        return cond()
    await wait_for(check, timeout=timeout, interval=0.02)


async def _has(pool: asyncpg.Pool, device: str, n: int) -> bool:
    return (await _stored(pool, device))[0] >= n


async def test_a_redelivered_batch_is_merged_once_then_the_plain_insert_resumes(
        pool: asyncpg.Pool) -> None:
    dev = f"W-{uuid.uuid4().hex[:8]}"
    t0 = time.time() - 100
    w = BatchWriter(pool, Acks())
    first = _rows(dev, t0, 20)
    await w.write(Batch(telemetry=first))
    assert (w.stats.conflicts, w.stats.merged_batches) == (0, 0)

    # The same readings again (a redelivery after a crash) plus five new ones: the plain
    # insert hits the key, rolls back, and the merge stores only the new ones.
    await w.write(Batch(telemetry=first + _rows(dev, t0 + 20, 5, 100.0)))
    assert (w.stats.conflicts, w.stats.merged_batches) == (1, 1)
    assert await _stored(pool, dev) == (25, 25)

    # The merge found copies, so the next batch is merged at once (no failed attempt);
    # it holds none, so the one after goes back to the plain insert.
    await w.write(Batch(telemetry=_rows(dev, t0 + 25, 5, 200.0)))
    assert (w.stats.conflicts, w.stats.merged_batches) == (1, 2)
    await w.write(Batch(telemetry=_rows(dev, t0 + 30, 5, 300.0)))
    assert (w.stats.conflicts, w.stats.merged_batches) == (1, 2)
    assert await _stored(pool, dev) == (35, 35)
    latest = await pool.fetchrow("SELECT ts, value FROM telemetry_latest WHERE device_id = $1",
                                 dev)
    assert latest is not None and latest["value"] == 304.0
    assert latest["ts"] == ts_of(t0 + 34)


async def test_a_reading_twice_in_one_batch_is_stored_once(pool: asyncpg.Pool) -> None:
    dev = f"W-{uuid.uuid4().hex[:8]}"
    rows = _rows(dev, time.time() - 50, 3)
    w = BatchWriter(pool, Acks())
    await w.write(Batch(telemetry=rows + rows[1:2]))
    assert w.stats.conflicts == 1
    assert await _stored(pool, dev) == (3, 3)


async def test_acknowledgements_wait_for_every_earlier_batch(pool: asyncpg.Pool,
                                                             db_url: str) -> None:
    """Two flushes overlap; the later one commits first, yet its messages are acknowledged
    only after the earlier batch committed, and in batch order."""
    slow, fast = f"W-{uuid.uuid4().hex[:8]}", f"W-{uuid.uuid4().hex[:8]}"
    t0 = time.time() - 30
    await pool.execute("INSERT INTO telemetry_latest (device_id, metric, ts, value, "
                       "received_at) VALUES ($1, 'pm25', $2, 0, now())", slow, ts_of(t0 - 60))
    acks = Acks()
    w = BatchWriter(pool, acks, batch_size=10_000, flush_interval_s=0.01, concurrency=2)
    blocker = await asyncpg.connect(db_url)
    runner = asyncio.create_task(w.run())
    try:
        # Hold the slow device's latest-value row: batch 1 waits on it inside its flush.
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("SELECT 1 FROM telemetry_latest WHERE device_id = $1 "
                              "FOR UPDATE", slow)
        w.add_telemetry(_rows(slow, t0, 3))
        w.add_ack(1, 1)
        await _until(lambda: w.stats.in_flight == 1)
        w.add_telemetry(_rows(fast, t0, 3))
        w.add_ack(2, 1)
        # Batch 2 commits while batch 1 waits ...
        await wait_for(lambda: _has(pool, fast, 3), timeout=10)
        assert await _stored(pool, fast) == (3, 3)
        await asyncio.sleep(0.2)
        assert acks.calls == [] and w.stats.in_flight == 1  # ... and is not acknowledged
        await tx.rollback()
        await _until(lambda: len(acks.calls) == 2)
        assert acks.calls == [[(1, 1)], [(2, 1)]]
        assert await _stored(pool, slow) == (3, 3)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await blocker.close()


async def test_a_backlog_is_written_in_bounded_batches_in_order(pool: asyncpg.Pool) -> None:
    """Rows that arrive faster than flushes go out in batches of about batch_size (one
    message's rows stay together), never as one batch of everything held."""
    dev = f"W-{uuid.uuid4().hex[:8]}"
    t0 = time.time() - 200
    acks = Acks()
    w = BatchWriter(pool, acks, batch_size=100, flush_interval_s=0.01, concurrency=2)
    for m in range(40):  # 40 messages of 10 readings, all held before any flush
        w.add_telemetry(_rows(dev, t0 + 10 * m, 10, 10.0 * m))
        w.add_ack(m + 1, 1)
    assert w.pending() == 400
    runner = asyncio.create_task(w.run())
    try:
        await _until(lambda: sum(map(len, acks.calls)) == 40)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    assert w.stats.flushed_batches >= 4
    assert max(len(c) for c in acks.calls) <= 11
    assert [m for call in acks.calls for m, _g in call] == list(range(1, 41))
    assert await _stored(pool, dev) == (400, 400)


# ---------------------------------------------------------------- the latest-value table


async def _latest(pool: asyncpg.Pool, device: str, metric: str = "pm25") -> tuple[datetime, float]:
    row = await pool.fetchrow("SELECT ts, value FROM telemetry_latest WHERE device_id = $1 "
                              "AND metric = $2", device, metric)
    assert row is not None
    return row["ts"], row["value"]


async def test_the_latest_value_is_the_newest_reading_of_each_key_whatever_its_place(
        pool: asyncpg.Pool) -> None:
    """Several readings per device in one flush, not in time order, two metrics: the table
    holds each key's newest; a new device gets its row; a later flush moves it on (the
    UPDATE path), and a late reading (older than the stored one) leaves it alone."""
    a, b = f"W-{uuid.uuid4().hex[:8]}", f"W-{uuid.uuid4().hex[:8]}"
    t0 = time.time() - 300
    now = time.time()
    w = BatchWriter(pool, Acks())
    await w.write(Batch(telemetry=[
        (t0 + 5, a, "pm25", 5.0, now, False), (t0 + 9, a, "pm25", 9.0, now, False),
        (t0 + 7, a, "pm25", 7.0, now, False), (t0 + 1, a, "no2", 1.0, now, False),
        (t0 + 3, b, "pm25", 3.0, now, False), (t0 + 2, b, "pm25", 2.0, now, False)]))
    assert await _latest(pool, a) == (ts_of(t0 + 9), 9.0)
    assert await _latest(pool, a, "no2") == (ts_of(t0 + 1), 1.0)
    assert await _latest(pool, b) == (ts_of(t0 + 3), 3.0)

    await w.write(Batch(telemetry=[(t0 + 20, a, "pm25", 20.0, now, False),
                                   (t0 + 2.5, b, "pm25", 2.5, now, True)]))  # b: late
    assert await _latest(pool, a) == (ts_of(t0 + 20), 20.0)
    assert await _latest(pool, b) == (ts_of(t0 + 3), 3.0)
    assert await _stored(pool, a) == (5, 5) and await _stored(pool, b) == (3, 3)
    assert (w.stats.conflicts, w.stats.merged_batches) == (0, 0)


async def test_a_redelivered_flush_keeps_the_latest_value_and_stores_nothing_twice(
        pool: asyncpg.Pool) -> None:
    """A batch committed, then delivered again with older and newer readings of the same
    devices (a reconnect): the merge stores the new readings once, and the latest value is
    the newest of everything, not the redelivered one."""
    devs = [f"W-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    t0 = time.time() - 400
    now = time.time()
    first = [(t0 + i, d, "pm25", float(i), now, False) for i in range(10) for d in devs]
    w = BatchWriter(pool, Acks())
    await w.write(Batch(telemetry=first))
    again = first + [(t0 + 10 + i, d, "pm25", 10.0 + i, now, False)
                     for i in range(2) for d in devs]
    await w.write(Batch(telemetry=again))
    await w.write(Batch(telemetry=again))  # and once more, all of it stored already
    assert (w.stats.conflicts, w.stats.merged_batches) == (1, 2)
    for d in devs:
        assert await _stored(pool, d) == (12, 12)
        assert await _latest(pool, d) == (ts_of(t0 + 11), 11.0)


async def test_coalesced_latest_values_are_written_once_before_any_acknowledgement(
        pool: asyncpg.Pool, db_url: str) -> None:
    """With the latest-value update coalesced, two flushes' readings of one device make one
    update of one row, and neither flush is acknowledged before it commits: while another
    transaction holds that row, both batches are stored and nothing is acknowledged."""
    dev = f"W-{uuid.uuid4().hex[:8]}"
    t0 = time.time() - 60
    await pool.execute("INSERT INTO telemetry_latest (device_id, metric, ts, value, "
                       "received_at) VALUES ($1, 'pm25', $2, 0, now())", dev, ts_of(t0 - 60))
    acks = Acks()
    w = BatchWriter(pool, acks, batch_size=10_000, flush_interval_s=0.01, concurrency=2,
                    latest_interval_s=0.3)
    blocker = await asyncpg.connect(db_url)
    runner = asyncio.create_task(w.run())
    try:
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("SELECT 1 FROM telemetry_latest WHERE device_id = $1 "
                              "FOR UPDATE", dev)
        w.add_telemetry(_rows(dev, t0, 3))
        w.add_ack(1, 1)
        await _until(lambda: w.stats.flushed_batches == 1)
        w.add_telemetry(_rows(dev, t0 + 3, 3, 3.0))
        w.add_ack(2, 1)
        await _until(lambda: w.stats.flushed_batches == 2)
        assert await _stored(pool, dev) == (6, 6)
        await asyncio.sleep(0.6)  # past the interval: the update waits on the held row
        assert acks.calls == [] and w.stats.latest_writes == 0
        await tx.rollback()
        await _until(lambda: len(acks.calls) == 2)
        assert acks.calls == [[(1, 1)], [(2, 1)]]
        assert (w.stats.latest_writes, w.stats.latest_rows) == (1, 1)
        assert await _latest(pool, dev) == (ts_of(t0 + 5), 5.0)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await blocker.close()


async def test_coalesced_latest_values_wait_at_most_for_max_held_messages(
        pool: asyncpg.Pool) -> None:
    """A long interval does not hold acknowledgements once ``latest_max_held`` messages
    wait: single readings must not fill the broker's in-flight window."""
    devs = [f"W-{uuid.uuid4().hex[:8]}" for _ in range(4)]
    t0 = time.time() - 60
    acks = Acks()
    w = BatchWriter(pool, acks, batch_size=10_000, flush_interval_s=0.01, concurrency=2,
                    latest_interval_s=30.0, latest_max_held=4)
    runner = asyncio.create_task(w.run())
    try:
        for i, d in enumerate(devs):
            w.add_telemetry(_rows(d, t0, 1, float(i)))
            w.add_ack(i + 1, 1)
            await _until(lambda i=i: w.stats.flushed_batches == i + 1)  # type: ignore[misc]
        await _until(lambda: sum(map(len, acks.calls)) == 4, timeout=5)
        assert [m for call in acks.calls for m, _g in call] == [1, 2, 3, 4]
        assert w.stats.latest_writes == 1 and w.stats.latest_rows == 4
        for i, d in enumerate(devs):
            assert await _latest(pool, d) == (ts_of(t0), float(i))
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


# ---------------------------------------------------------------- binary COPY encoding


@given(st.floats(min_value=1.5e9, max_value=2.5e9))
def test_timestamps_encode_to_the_microsecond_python_gives(seconds: float) -> None:
    as_datetime = datetime.fromtimestamp(seconds, UTC) - datetime(2000, 1, 1, tzinfo=UTC)
    assert abs(copy_binary.pg_timestamp(seconds) - as_datetime // timedelta(microseconds=1)) <= 1


async def test_binary_copy_stores_what_the_rows_say(pool: asyncpg.Pool) -> None:
    now = time.time()
    rows: list[TelemetryRow] = [
        (now - 10.5, "BENCH-0001", "pm25", 12.25, now, False),
        (now - 9.000001, "a.b:c_d-e" * 7, "x", -1e15, now, True),  # 63-byte id, short metric
        (now - 8.0, "Z", "temperature.c", 0.0, now - 0.25, False),
    ]
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("CREATE TEMP TABLE t (ts timestamptz, device_id text, metric text, "
                           "value double precision, received_at timestamptz, late boolean) "
                           "ON COMMIT DROP")
        await conn.copy_to_table("t", source=io.BytesIO(copy_binary.telemetry_copy(rows)),
                                 columns=copy_binary.TELEMETRY_COLUMNS, format="binary")
        got = await conn.fetch("SELECT extract(epoch FROM ts)::float8 AS ts, device_id, "
                               "metric, value, extract(epoch FROM received_at)::float8 AS r, "
                               "late FROM t ORDER BY ts")
    assert [(r["device_id"], r["metric"], r["value"], r["late"]) for r in got] == [
        (d, m, v, late) for _t, d, m, v, _r, late in rows]
    for r, (ts, _d, _m, _v, rcv, _l) in zip(got, rows, strict=True):
        assert abs(r["ts"] - ts) < 1e-6 and abs(r["r"] - rcv) < 1e-6
