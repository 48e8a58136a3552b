"""Time. Pure code takes ``now`` as an argument; adapters get it here, from one clock.

Every I/O module reads the time through ``now()`` (never ``time.time()``), so a test can
run the hub's SLA, dispatch and case logic in-process on a ``FakeClock`` (``using``) and
see exactly the timestamps it chose. Durations and timeouts use ``time.monotonic()``:
they measure the process, not the town's time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """UNIX time in seconds."""
        ...


class SystemClock:
    """The wall clock."""

    def now(self) -> float:
        return time.time()


@dataclass
class FakeClock:
    """A clock that moves only when told to (tests)."""

    t: float

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> float:
        self.t += seconds
        return self.t


_current: Clock = SystemClock()


def now() -> float:
    """The current clock's UNIX time in seconds (the wall clock unless ``using`` says)."""
    return _current.now()


@contextmanager
def using(clock: Clock) -> Iterator[Clock]:
    """Run the block on ``clock`` (in this process), then go back to the previous one."""
    global _current
    before, _current = _current, clock
    try:
        yield clock
    finally:
        _current = before


def to_datetime(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def from_datetime(dt: datetime) -> float:
    return dt.timestamp()
