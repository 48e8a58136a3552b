"""Time. Pure code takes ``now`` as an argument; adapters get it here."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now() -> float:
    """Wall-clock UNIX time in seconds."""
    return time.time()


def to_datetime(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def from_datetime(dt: datetime) -> float:
    return dt.timestamp()
