"""The live picture and the one resumable websocket feed.

``LiveState`` is a projection: loaded once from the database (entities and the seq they are
current to, read in one REPEATABLE READ snapshot), then kept current by applying every
event the bus publishes, synchronously. A client's snapshot is a copy of it taken in the
same tick as its subscription, with no await in between, so nothing falls in the gap.

Protocol (JSON text frames):
  client -> {"type": "hello", "last_seq": N | null, "acks": true (optional)}
          | {"type": "ack", "positions": K}   (only after "acks": true; see below)
  server -> {"type": "snapshot", "seq": S, "alarms": [...], "incidents": [...], "units": [...]}
          | {"type": "batch", "events": [{seq, ts, kind, data}, ...], "positions": {...}}
          | {"type": "resync"}   (the client is too far behind: it reloads the snapshot)
A client that sends ``last_seq`` after a reconnect gets exactly the events after it (read
from the events table) if it is at most ``feed_replay_limit`` behind, else a snapshot.

Two paths to each client, events first. Sequenced events go on the client's bounded bus
queue and are sent as soon as they arrive (a burst within ``EVENT_GAP_S`` shares a frame),
in a batch frame of their own; they never wait for a positions frame to be encoded. Positions
are collected once for the whole feed (hub/position_frames.py) and, every ``tick_s``, encoded
into ONE shared batch frame (no events) that every client is sent as is; a client that falls
behind gets its pending position frames merged (latest fix per unit), never its events.

Flow control: a socket's buffers (the kernel's on both ends) hold many seconds of positions,
so without it a client that reads slowly falls behind there, where nothing can be merged
and where an event queues behind every frame already written. A client that says
``"acks": true`` in its hello acknowledges the position frames it has read (``K`` = how many
frames with positions it has received on this connection; sent every few such frames,
``ACK_EVERY_FRAMES`` in frontend/static/feed.js, well under the window); the feed keeps
at most ``POSITION_WINDOW_FRAMES`` of them unacknowledged and merges the rest in its outbox
until the client catches up. Events are not held by the window. Clients that send no acks
(older ones) are sent every frame as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec
from fastapi import WebSocket, WebSocketDisconnect

from core import outbox
from core.bus import Bus, Subscription
from core.db import Conn, row_view
from core.entities import ALARM_COLUMNS, INCIDENT_COLUMNS, UNIT_COLUMNS
from core.events import Envelope, apply_to_state
from hub.position_frames import PositionBatcher, PositionOutbox, SharedFrame

log = logging.getLogger("hub.live")

# Positions go out to the map at most this often per unit: 2,000 units at 1 Hz is already
# 400,000 deliveries/s to 200 clients. Below the units' 1 s period on purpose: a fix that
# comes early is held until its unit's interval has passed (not dropped), and an interval of
# a full second would carry one late fix's delay over to every later fix of that unit;
# 0.8 s lets a unit's fixes catch up by 0.2 s each.
POSITION_MIN_INTERVAL_S = 0.8


_enc = msgspec.json.Encoder()


async def fetch_picture(conn: Conn) -> tuple[int, dict[str, dict[str, Any]]]:
    """The open picture and the seq it is current to, from one consistent snapshot."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        seq = await outbox.last_seq(conn)
        alarms = await conn.fetch(
            f"SELECT {ALARM_COLUMNS} FROM alarms a WHERE a.state <> 'cleared'")
        incidents = await conn.fetch(
            f"SELECT {INCIDENT_COLUMNS} FROM incidents i "
            "WHERE i.state NOT IN ('archived', 'cancelled')")
        units = await conn.fetch(f"SELECT {UNIT_COLUMNS} FROM units u")
    state: dict[str, dict[str, Any]] = {
        "alarms": {str(r["id"]): row_view(r) for r in alarms},
        "incidents": {str(r["id"]): row_view(r) for r in incidents},
        "units": {str(r["id"]): row_view(r) for r in units},
    }
    return seq, state


class LiveState:
    """The projection every web client's snapshot is copied from."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.seq = 0
        self.state: dict[str, dict[str, Any]] = {"alarms": {}, "incidents": {}, "units": {}}
        # Fixes not yet sent to the feed (taken by ``LiveFeed`` once per tick).
        self.positions = PositionBatcher(POSITION_MIN_INTERVAL_S)
        bus.listen(self.on_event)

    async def load(self, pool: asyncpg.Pool) -> None:
        async with pool.acquire() as conn:
            self.seq, self.state = await fetch_picture(conn)
        self.bus.last_seq = max(self.bus.last_seq, self.seq)

    def on_event(self, env: Envelope) -> None:
        apply_to_state(self.state, env.payload)
        self.seq = env.seq

    def on_position(self, unit_id: str, ts: float, lon: float, lat: float,
                    speed: float | None, heading: float | None) -> None:
        unit = self.state["units"].get(unit_id)
        if unit is None:
            return
        if unit.get("position_ts") is not None and ts <= unit["position_ts"]:
            return  # a late fix never moves the marker backwards
        unit.update(lon=lon, lat=lat, speed=speed, heading=heading, position_ts=ts)
        self.positions.put(unit_id, {"lon": lon, "lat": lat, "ts": ts,
                                     "speed": speed, "heading": heading})

    def snapshot(self) -> dict[str, Any]:
        return {
            "type": "snapshot",
            "seq": self.seq,
            "alarms": [copy.copy(a) for a in self.state["alarms"].values()],
            "incidents": [copy.copy(i) for i in self.state["incidents"].values()],
            "units": [copy.copy(u) for u in self.state["units"].values()],
        }


def batch_frame(events: list[Envelope], positions: dict[str, Any]) -> str:
    """One frame carrying every change since the last; each event's JSON is reused as is."""
    body = b'{"type":"batch","events":[' + b",".join(e.wire for e in events) + b'],"positions":'
    return (body + _enc.encode(positions) + b"}").decode()


# Position frames a client that acknowledges may have unread: half a second of 50 ms ticks.
# More is positions sitting in socket buffers, stale by the time they are read, with any
# event queued behind them, and counted in frames, a slow client's frames are its merged
# ones (every unit): at 20, two 500-client runs on a starved machine lost 446 and 480
# connections to keep-alive timeouts, against 6 and 11 at 10 (docs/PERFORMANCE.md). Fewer
# merges positions for clients that keep up but ack late: at 10, a loaded machine's ack
# round trip merged about a tenth of the updates of 200 clients (a client behind still sees
# every unit's latest fix, just fewer intermediate ones).
POSITION_WINDOW_FRAMES = 10


# Least time between two event frames to one client: the events of a burst (an alarm storm,
# a dispatch's several rows) share a frame instead of costing a send each per client. The
# first event of a quiet spell goes at once.
EVENT_GAP_S = 0.005

# Clients handed a tick's positions frame per turn of the event loop. Each hand-out wakes
# the clients' pumps, and every pump woken in one turn sends in that turn before the loop
# looks at its sockets again: 200 clients at once held the loop for the whole fan-out
# (200 sends), and every database reply that came meanwhile (each round trip of an
# operator's transaction, the event feed's fetch) waited for it. In slices, a reply waits
# for at most one slice's sends (docs/PERFORMANCE.md, console section). Small enough that
# a slice's sends take about a millisecond; large enough that the extra turns (a select()
# each) cost nothing next to the sends.
FANOUT_SLICE = 20


class _Ack(msgspec.Struct):
    type: str
    positions: int = 0


_ack_decoder = msgspec.json.Decoder(_Ack)


@dataclass(eq=False)
class _Client:
    """One connection: its position frames, the wake-up of its current subscription
    (replaced after a resync), and its flow control (``acks``)."""

    sub: Subscription
    acks: bool = False
    outbox: PositionOutbox = field(default_factory=PositionOutbox)
    sent_frames: int = 0  # position frames written to the socket
    acked_frames: int = 0  # of which the client says it has read this many

    def may_send_positions(self) -> bool:
        return not self.acks or self.sent_frames - self.acked_frames < POSITION_WINDOW_FRAMES

    def on_message(self, text: str) -> None:
        """An ack moves the window (anything else a client sends is ignored)."""
        try:
            msg = _ack_decoder.decode(text)
        except msgspec.DecodeError:
            return
        if msg.type == "ack" and self.acked_frames < msg.positions:
            self.acked_frames = min(msg.positions, self.sent_frames)
            self.sub.wake.set()


class LiveFeed:
    """Serves ``/ws/live``."""

    def __init__(self, live: LiveState, bus: Bus, pool: asyncpg.Pool, *, replay_limit: int,
                 queue_size: int, tick_s: float) -> None:
        self.live = live
        self.bus = bus
        self.pool = pool
        self.replay_limit = replay_limit
        self.queue_size = queue_size
        self.tick_s = tick_s
        self.clients = 0
        self.resyncs = 0
        self._live_clients: set[_Client] = set()
        self._ticker: asyncio.Task[None] | None = None

    async def serve(self, ws: WebSocket) -> None:
        await ws.accept()
        self.clients += 1
        client: _Client | None = None
        try:
            last_seq = None
            acks = False
            with contextlib.suppress(TimeoutError):
                hello = await asyncio.wait_for(ws.receive_json(), 5.0)
                if isinstance(hello, dict) and isinstance(hello.get("last_seq"), int):
                    last_seq = hello["last_seq"]
                acks = isinstance(hello, dict) and hello.get("acks") is True
            sub, sent_to = await self._start(ws, last_seq)
            client = _Client(sub, acks)
            self._join(client)
            # The pump only writes; a reader takes the acks and watches for the close, so a
            # client that went away on a quiet feed is let go at once rather than at the
            # next send (and a shutting-down server is not kept waiting for it).
            pump = asyncio.create_task(self._pump(ws, client, sent_to))
            reader = asyncio.create_task(self._read(ws, client))
            try:
                done, _ = await asyncio.wait({pump, reader},
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (pump, reader):
                    t.cancel()
                await asyncio.gather(pump, reader, return_exceptions=True)
            for t in done:
                t.result()  # the pump's errors surface here
        except WebSocketDisconnect:
            pass
        except RuntimeError as e:  # sending on a socket closed under us
            log.debug("websocket closed: %s", e)
        finally:
            self.clients -= 1
            if client is not None:
                self._leave(client)
                self.bus.unsubscribe(client.sub)

    def _join(self, client: _Client) -> None:
        self._live_clients.add(client)
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.create_task(self._tick_positions(), name="hub.live.ticker")

    def _leave(self, client: _Client) -> None:
        self._live_clients.discard(client)
        if not self._live_clients and self._ticker is not None:
            self._ticker.cancel()  # nobody to send to; the next client starts it again
            self._ticker = None

    async def _tick_positions(self) -> None:
        """Once per tick: the due fixes, encoded once, handed to every client (in slices
        of ``FANOUT_SLICE``; the tick's period counts from its start, slices included)."""
        handout_s = 0.0
        while True:
            await asyncio.sleep(max(0.0, self.tick_s - handout_s))
            started = time.monotonic()
            handout_s = 0.0
            positions = self.live.positions.take(started)
            if not positions:
                continue
            frame = SharedFrame.of(positions)
            clients = list(self._live_clients)  # clients may come and go while we yield
            for i in range(0, len(clients), FANOUT_SLICE):
                if i:
                    await asyncio.sleep(0)  # the woken slice sends; replies get a turn
                for c in clients[i:i + FANOUT_SLICE]:
                    c.outbox.put(frame)
                    c.sub.wake.set()
            handout_s = time.monotonic() - started

    async def _start(self, ws: WebSocket, last_seq: int | None) -> tuple[Subscription, int]:
        if last_seq is not None and 0 <= self.live.seq - last_seq <= self.replay_limit:
            # Subscribe first, then read the missed events: anything committed meanwhile is
            # in the queue, and duplicates are dropped by seq below.
            sub = self.bus.subscribe(self.queue_size)
            missed = await outbox.events_after(self.pool, last_seq, self.replay_limit + 1)
            if len(missed) <= self.replay_limit:
                await ws.send_text(batch_frame(missed, {}))
                return sub, missed[-1].seq if missed else last_seq
            self.bus.unsubscribe(sub)
        return await self._snapshot(ws)

    async def _snapshot(self, ws: WebSocket) -> tuple[Subscription, int]:
        # No await between subscribing and copying the projection.
        sub = self.bus.subscribe(self.queue_size)
        snap = self.live.snapshot()
        await ws.send_text(_enc.encode(snap).decode())
        return sub, int(snap["seq"])

    @staticmethod
    async def _read(ws: WebSocket, client: _Client) -> None:
        """Returns when the client closes; hands what it sends to ``client.on_message``."""
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            text = msg.get("text")
            if client.acks and text:
                client.on_message(text)

    async def _pump(self, ws: WebSocket, client: _Client, sent_to: int) -> None:
        """Events first, then positions; one frame at a time on the socket."""
        gap = _EventGap()
        while True:
            sub = client.sub
            await sub.wake.wait()
            sub.wake.clear()
            if sub.overflowed:
                # Too far behind on events: the client reloads the snapshot (never a gap).
                self.resyncs += 1
                self.bus.unsubscribe(sub)
                await ws.send_text('{"type":"resync"}')
                client.sub, sent_to = await self._snapshot(ws)
                continue
            sent = await self._send_events(ws, sub, sent_to, gap)
            if sent != sent_to and client.outbox:
                # An event wakes every client at once: let each of them send it before any
                # of them sends positions, so the last client's event does not wait for
                # the positions frames of all the others.
                await asyncio.sleep(0)
            sent_to = sent
            # While the window is full the outbox merges the positions, until an ack wakes
            # this loop again.
            while client.outbox and client.may_send_positions():
                text = client.outbox.take_one()
                assert text is not None
                await ws.send_text(text)
                client.sent_frames += 1
                # An event that came while a positions frame was going out goes next, ahead
                # of the rest of the positions.
                sent_to = await self._send_events(ws, sub, sent_to, gap)

    @staticmethod
    async def _send_events(ws: WebSocket, sub: Subscription, sent_to: int,
                           gap: _EventGap) -> int:
        """Sends the queued events (if any) in one frame; returns the last seq sent."""
        if sub.queue.empty():
            return sent_to
        wait = gap.next_at - time.monotonic()
        if wait > 0:  # a burst: what comes in the gap shares the frame
            await asyncio.sleep(wait)
        events = [e for e in sub.drain() if e.seq > sent_to]
        if not events:
            return sent_to
        await ws.send_text(batch_frame(events, {}))
        gap.next_at = time.monotonic() + EVENT_GAP_S
        return events[-1].seq


@dataclass(slots=True)
class _EventGap:
    """When one client's next event frame may go (``EVENT_GAP_S`` after the last)."""

    next_at: float = 0.0
