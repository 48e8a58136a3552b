"""The one in-process bus.

Services publish committed events (``Envelope``, with a sequence number) and ephemeral
updates (unit positions: high rate, latest wins, not sequenced). Subscribers get a bounded
queue each; ``publish`` never blocks and never awaits, so a slow subscriber cannot stall
ingest. A subscriber whose queue overflows is marked ``overflowed`` and must resync.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.events import Envelope

log = logging.getLogger("core.bus")


@dataclass(eq=False)
class Subscription:
    """A subscriber's bounded queue of envelopes plus a latest-wins map of positions."""

    maxsize: int
    queue: asyncio.Queue[Envelope] = field(init=False)
    positions: dict[str, dict[str, Any]] = field(default_factory=dict)
    overflowed: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # Set by sequenced events only (not positions): a consumer batching positions per tick
    # may still send an event at once.
    event_wake: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.queue = asyncio.Queue(self.maxsize)

    def drain(self) -> list[Envelope]:
        out: list[Envelope] = []
        while True:
            try:
                out.append(self.queue.get_nowait())
            except asyncio.QueueEmpty:
                return out

    def take_positions(self) -> dict[str, dict[str, Any]]:
        p, self.positions = self.positions, {}
        return p


class Bus:
    """Fan-out of events to subscribers, and of the highest seq published so far."""

    def __init__(self) -> None:
        self._subs: set[Subscription] = set()
        self._listeners: list[Callable[[Envelope], None]] = []
        self.last_seq = 0

    def subscribe(self, maxsize: int = 2000) -> Subscription:
        sub = Subscription(maxsize)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    def listen(self, fn: Callable[[Envelope], None]) -> None:
        """Register a synchronous listener (projections), called before queues are fed."""
        self._listeners.append(fn)

    def publish(self, env: Envelope) -> None:
        if env.seq <= self.last_seq:
            return  # already seen (e.g. delivered both locally and by gap filling)
        self.last_seq = env.seq
        for fn in self._listeners:
            try:
                fn(env)
            except Exception:
                log.exception("bus listener failed on %s", env.kind)
        for sub in self._subs:
            if sub.overflowed:
                continue
            try:
                sub.queue.put_nowait(env)
            except asyncio.QueueFull:
                sub.overflowed = True
            sub.wake.set()
            sub.event_wake.set()

    def publish_position(self, unit_id: str, position: dict[str, Any]) -> None:
        for sub in self._subs:
            sub.positions[unit_id] = position
            sub.wake.set()

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)
