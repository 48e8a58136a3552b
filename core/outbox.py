"""Events table writer and the feed that publishes committed events on the bus.

Writing: ``record(conn, event)`` (or ``record_many(conn, events)``) inside the transaction
that makes the fact true. It takes a transaction-level advisory lock before taking the next
``seq``, so sequence order is commit order, and issues ``NOTIFY`` (delivered by PostgreSQL
only on commit): all three in one round trip, the ``outbox_record`` function
(core/migrations/0018_dispatch_latency.sql; ``outbox_record_many``, 0019, for several).

Reading: ``EventFeed`` LISTENs on its own connection. Each event's notification carries
the event (``outbox_notice``, core/migrations/0028_event_notify_payload.sql): the feed
publishes it on the bus at once if it is the next seq the bus expects. Otherwise (a gap in
the seqs, an event too large for a notification, a reconnect) and on a slow poll, as a
backstop for a lost connection, it fetches every event after the last one it published, in
order, and publishes them. Because seq order is commit order, "everything after N" never
skips a fact that commits later, and "the next seq" after N is the next fact. Every process
(ingest, web node, all-in-one) runs the same feed, so several web nodes see the same
sequence.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from core.bus import Bus
from core.db import Conn, Querier, connect
from core.events import Envelope, Event
from core.stats import percentile

log = logging.getLogger("core.outbox")

CHANNEL = "gridhub_events"
# Serialises event writers (any fixed number, distinct from other advisory keys).
EVENTS_LOCK_KEY = 4_710_002
# Backstop poll: bounds the delay if a notification is lost with a dropped connection.
POLL_INTERVAL_S = 1.0
# Fetch at most this many events per round trip while catching up.
FETCH_LIMIT = 2000
# Events whose time from their transaction's start to this bus ``EventFeed.stats`` keeps:
# a console benchmark's run (about 5 events a second for a few minutes), at a few kB.
LAG_WINDOW = 2000


async def record(conn: Conn, event: Event) -> int:
    """Append ``event`` to the events table in the caller's transaction; return its seq.

    Call it last in the transaction: the lock it takes is held until commit.
    """
    # One round trip: lock, INSERT and NOTIFY in the database (a decision records several
    # events; three round trips each were a fifth of its writes).
    seq: int = await conn.fetchval(
        "SELECT outbox_record($1, $2, $3, $4)",
        event.kind,
        event.payload(),
        EVENTS_LOCK_KEY,
        CHANNEL,
    )
    return seq


async def record_many(conn: Conn, events: Sequence[Event]) -> list[int]:
    """``record`` for each of ``events``, in order, in one round trip (the
    ``outbox_record_many`` function, core/migrations/0019_decision_writes.sql): a
    dispatch decision records one to a dozen events. Returns their seqs."""
    if not events:
        return []
    seqs: list[int] = await conn.fetchval(
        "SELECT outbox_record_many($1::text[], $2::jsonb[], $3, $4)",
        [e.kind for e in events],
        [e.payload() for e in events],
        EVENTS_LOCK_KEY,
        CHANNEL,
    )
    return seqs


def envelope_from_row(row: Any, received: float = 0.0) -> Envelope:
    return Envelope.make(row["seq"], row["ts"].timestamp(), row["kind"], row["payload"],
                         received)


def envelope_from_notice(text: str, received: float = 0.0) -> Envelope | None:
    """The event a notification carries (``outbox_notice``): None if it carries only the
    seq (the event was too large) or is not one (an empty NOTIFY from an older writer).
    ``received``: when it came (``Envelope.received``)."""
    try:
        n = json.loads(text)
        return Envelope.make(int(n["seq"]), float(n["ts"]), str(n["kind"]), n["payload"],
                             received)
    except (ValueError, TypeError, KeyError):
        return None


async def events_after(
    conn: Querier, after: int, limit: int = FETCH_LIMIT
) -> list[Envelope]:
    rows = await conn.fetch(
        "SELECT seq, ts, kind, payload FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
        after,
        limit,
    )
    received = time.perf_counter()
    return [envelope_from_row(r, received) for r in rows]


async def last_seq(conn: Querier) -> int:
    return int(await conn.fetchval("SELECT coalesce(max(seq), 0) FROM events"))


class EventFeed:
    """Publishes every committed event on ``bus`` exactly once and in seq order."""

    def __init__(self, url: str, bus: Bus) -> None:
        self.url = url
        self.bus = bus
        self._wake = asyncio.Event()
        self._conn: Conn | None = None
        self.published = 0
        self.from_notices = 0  # of which published straight from their notification
        # ms from each event's ``ts`` (its transaction's start) to its publication here:
        # the share of an operator event's time spent before the feed, and in the feed.
        self.lags_ms: deque[float] = deque(maxlen=LAG_WINDOW)

    def _publish(self, env: Envelope) -> None:
        self.bus.publish(env)
        self.published += 1
        self.lags_ms.append((time.time() - env.ts) * 1000.0)

    def stats(self) -> dict[str, object]:
        """Counters, and the time from the events' ``ts`` to this bus over the last
        ``LAG_WINDOW`` events (p50, p99, max in ms)."""
        lags = sorted(self.lags_ms)

        def q(p: float) -> float | None:
            v = percentile(lags, p, nearest_rank=True)
            return None if v is None else round(v, 1)

        return {"published": self.published, "from_notices": self.from_notices,
                "ts_to_bus_ms": {"p50": q(50), "p99": q(99), "max": q(100),
                                 "events": len(lags)}}

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        """The next event in sequence is published as it arrives (no read of the table, no
        turn of the loop for this feed's task); anything else wakes the catch-up."""
        env = envelope_from_notice(str(payload), time.perf_counter())
        if env is not None and env.seq <= self.bus.last_seq:
            return  # the catch-up has already read it
        if env is not None and env.seq == self.bus.last_seq + 1:
            self._publish(env)
            self.from_notices += 1
            return
        self._wake.set()

    async def start_from(self, seq: int) -> None:
        self.bus.last_seq = max(self.bus.last_seq, seq)

    async def run(self) -> None:
        """Run until cancelled; reconnects on its own."""
        while True:
            try:
                self._conn = await connect(self.url)
                await self._conn.add_listener(CHANNEL, self._notified)
                self._wake.set()  # catch up on whatever committed while disconnected
                while True:
                    try:
                        await asyncio.wait_for(self._wake.wait(), POLL_INTERVAL_S)
                    except TimeoutError:
                        pass
                    self._wake.clear()
                    await self._catch_up()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # any failure: reconnect and catch up from the table
                log.warning("event feed lost the database (%s: %s); retrying",
                            type(e).__name__, e)
                await asyncio.sleep(1.0)
            finally:
                if self._conn is not None:
                    conn, self._conn = self._conn, None
                    try:
                        await asyncio.wait_for(conn.close(), 2)
                    except Exception:  # closing a broken connection may fail too
                        conn.terminate()

    async def _catch_up(self) -> None:
        assert self._conn is not None
        while True:
            batch = await events_after(self._conn, self.bus.last_seq)
            for env in batch:
                if env.seq > self.bus.last_seq:
                    self._publish(env)
            if len(batch) < FETCH_LIMIT:
                return
