"""How the live feed shares the event loop among its clients (hub/live.py ``LiveFeed``):
the order in which its pumps send, and what a tick's fan-out leaves room for.

The feed, bus, projection, outboxes and pumps are the real ones; only the sockets are
stand-ins at the edge (``_Socket``: what ``LiveFeed`` calls on a Starlette ``WebSocket``,
``send_text``), so the order of sends across clients can be read exactly, and a socket
that never drains can be made without filling megabytes of kernel buffers. The feed over
real sockets is tests/test_live_feed.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from core.bus import Bus
from core.events import Envelope
from hub.live import FANOUT_SLICE, LiveFeed, LiveState, _Client
from hub.position_frames import SharedFrame

Log = list[tuple[int, str]]


class _Socket:
    """Records every text sent, as (client number, "event" | "positions"), in one log
    shared by all clients; ``stuck`` sockets never finish a send (a peer that stopped
    reading, its buffers full)."""

    def __init__(self, n: int, log: Log, *, stuck: bool = False) -> None:
        self.n = n
        self.log = log
        self.stuck = stuck

    async def send_text(self, text: str) -> None:
        if self.stuck:
            await asyncio.Event().wait()
        msg = json.loads(text)
        self.log.append((self.n, "event" if msg["events"] else "positions"))


def _feed() -> tuple[LiveFeed, LiveState, Bus]:
    bus = Bus()
    live = LiveState(bus)
    live.state["units"] = {f"U{i}": {"id": f"U{i}"} for i in range(3)}
    feed = LiveFeed(live, bus, pool=None, replay_limit=100,  # type: ignore[arg-type]
                    queue_size=100, tick_s=0.01)
    return feed, live, bus


@asynccontextmanager
async def _pumps(feed: LiveFeed, bus: Bus, sockets: list[_Socket]
                 ) -> AsyncIterator[list[_Client]]:
    """Every socket joined to the feed as a client (no acks) with its pump running."""
    clients = [_Client(bus.subscribe(100)) for _ in sockets]
    tasks = [asyncio.create_task(feed._pump(s, c, 0))  # type: ignore[arg-type]
             for s, c in zip(sockets, clients, strict=True)]
    for c in clients:
        feed._join(c)
    try:
        yield clients
    finally:
        for c in clients:
            feed._leave(c)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _event(seq: int) -> Envelope:
    return Envelope.make(seq, 0.0, "incident.opened",
                         {"incident": {"id": seq, "state": "registered"}})


async def _until(cond: Any, timeout_s: float = 5.0) -> None:
    """Turns of the loop until ``cond()`` holds (the feed's ticker sleeps real time)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not cond():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0)


async def test_every_clients_event_goes_out_before_any_clients_positions() -> None:
    """Each client has a positions frame and an event pending, woken in the same turn:
    all the event frames are sent before the first positions frame, so the last client's
    event does not wait for every other client's positions (it did: e0 p0 e1 p1 ...)."""
    feed, live, bus = _feed()
    log: Log = []
    n = 2 * FANOUT_SLICE
    async with _pumps(feed, bus, [_Socket(i, log) for i in range(n)]):
        await asyncio.sleep(0)  # every pump waiting for its wake-up
        assert feed._ticker is not None
        feed._ticker.cancel()  # hand the frame out by hand, below, in the same turn
        live.on_position("U1", 10.0, 120.0, 30.0, 5.0, 90.0)
        frame = SharedFrame.of(live.positions.take(1e9))
        for c in feed._live_clients:
            c.outbox.put(frame)
        bus.publish(_event(1))  # wakes every pump
        await _until(lambda: len(log) == 2 * n)
    kinds = [k for _, k in log]
    assert kinds == ["event"] * n + ["positions"] * n
    assert {i for i, _ in log} == set(range(n))


async def test_a_ticks_fanout_leaves_the_loop_a_turn_between_slices() -> None:
    """A tick hands its frame to ``FANOUT_SLICE`` clients per turn of the loop: other
    work (a database reply, in the hub) runs between slices, never after all of them."""
    feed, live, bus = _feed()
    log: Log = []
    n = 3 * FANOUT_SLICE + 1
    async with _pumps(feed, bus, [_Socket(i, log) for i in range(n)]):
        seen: list[int] = []  # positions frames sent, as another task sees it each turn

        async def other_work() -> None:
            while len(log) < n:
                seen.append(len(log))
                await asyncio.sleep(0)

        probe = asyncio.create_task(other_work())
        live.on_position("U2", 10.0, 120.0, 30.0, 5.0, 90.0)
        await asyncio.wait_for(probe, 5.0)
    assert len(log) == n and all(k == "positions" for _, k in log)
    steps = [b - a for a, b in itertools.pairwise(seen)] + [n - seen[-1]]
    assert max(steps) <= FANOUT_SLICE  # never the whole fan-out in one turn
    assert len([s for s in steps if s]) >= n // FANOUT_SLICE


async def test_a_client_whose_socket_never_drains_delays_no_one_elses_event() -> None:
    """One peer stopped reading (its send never completes): the others still get every
    event, and the positions of the next ticks."""
    feed, live, bus = _feed()
    log: Log = []
    sockets = [_Socket(0, log, stuck=True)] + [_Socket(i, log) for i in range(1, 6)]
    async with _pumps(feed, bus, sockets):
        live.on_position("U0", 10.0, 120.0, 30.0, 5.0, 90.0)
        await _until(lambda: len(log) == 5)  # the stuck one is blocked in its first send
        bus.publish(_event(1))
        bus.publish(_event(2))
        await _until(lambda: sum(k == "event" for _, k in log) == 5)
        live.on_position("U1", 11.0, 120.0, 30.0, 5.0, 90.0)
        await _until(lambda: len(log) == 15)
    assert {i for i, _ in log} == {1, 2, 3, 4, 5}
    assert sorted(k for _, k in log).count("positions") == 10
