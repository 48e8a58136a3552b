"""The one in-process bus.

Services publish committed events (``Envelope``, with a sequence number). Subscribers get a
bounded queue each; ``publish`` never blocks and never awaits, so a slow subscriber cannot
stall ingest. A subscriber whose queue overflows is marked ``overflowed`` and must resync.
Unit positions (high rate, latest wins, not sequenced) do not travel here: the live
projection collects them once for all web clients (hub/live.py, hub/position_frames.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from core.events import Envelope

log = logging.getLogger("core.bus")


@dataclass(eq=False)
class Subscription:
    """A subscriber's bounded queue of envelopes. ``wake`` and ``event_wake`` are both set
    on every publish; ``wake`` may also be set by the subscriber's owner for wake-ups of its
    own (the live feed's position ticks and acks), ``event_wake`` only by events."""

    maxsize: int
    queue: asyncio.Queue[Envelope] = field(init=False)
    overflowed: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)
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

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)
