"""Positions for the live feed: one shared frame per tick, coalesced per slow client.

Pure parts (time is passed in; nothing here awaits):

- ``PositionBatcher`` holds the latest fix of every unit that moved since its last release
  and releases, per tick, those whose unit was last released at least ``min_interval_s``
  ago. A fix that comes too soon is held, not dropped: the unit's newest fix goes out as
  soon as its interval has passed, so a unit sending at 1 Hz with jitter still reaches the
  screens once per fix.
- ``SharedFrame`` is one tick's positions, encoded once (``batch_frame``) for every client
  that sees the whole town.
- ``PositionOutbox`` is one client's position frames not yet sent. A client that keeps up
  is sent each shared frame as it is (no encoding per client). A client that falls
  ``OUTBOX_MERGE_AT`` ticks behind gets its pending frames merged into one, latest fix per
  unit: positions coalesce, and nothing else does (sequenced events travel on the
  client's own queue, never here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

Position = dict[str, Any]

_enc = msgspec.json.Encoder()

# A client's pending frames are merged into one once there are this many (a client that
# has not taken its frames for about this many ticks is slow): memory per client stays
# bounded by the number of units, whatever its speed. Two ticks' worth is normal jitter of
# a loaded loop, so the shared frames are kept up to that.
OUTBOX_MERGE_AT = 4


def positions_frame(positions: dict[str, Position]) -> str:
    """The feed's batch frame with no events (hub/live.py: the wire protocol)."""
    return '{"type":"batch","events":[],"positions":' + _enc.encode(positions).decode() + "}"


class PositionBatcher:
    """Latest fix per unit, released at most once per ``min_interval_s`` per unit."""

    def __init__(self, min_interval_s: float) -> None:
        self.min_interval_s = min_interval_s
        self._pending: dict[str, Position] = {}
        self._released: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def put(self, unit_id: str, position: Position) -> None:
        """A newer fix replaces the one held for the unit."""
        self._pending[unit_id] = position

    def take(self, now: float) -> dict[str, Position]:
        """The fixes due at ``now`` (monotonic seconds); the rest stay held."""
        if not self._pending:
            return {}
        floor = now - self.min_interval_s
        released = self._released
        due = {u: p for u, p in self._pending.items() if released.get(u, -1e18) <= floor}
        if len(due) == len(self._pending):
            self._pending = {}
        else:
            for u in due:
                del self._pending[u]
        for u in due:
            released[u] = now
        return due


@dataclass(frozen=True, slots=True)
class SharedFrame:
    """One tick's positions and their wire text, encoded once for every client."""

    positions: dict[str, Position]
    text: str

    @classmethod
    def of(cls, positions: dict[str, Position]) -> SharedFrame:
        return cls(positions, positions_frame(positions))


class PositionOutbox:
    """One client's position frames not yet sent (see the module docstring)."""

    __slots__ = ("_frames", "_merged", "merges")

    def __init__(self) -> None:
        self._frames: list[SharedFrame] = []
        self._merged: dict[str, Position] | None = None  # older frames, already merged
        self.merges = 0  # times this client fell behind (frames coalesced)

    def __bool__(self) -> bool:
        return bool(self._frames) or self._merged is not None

    def put(self, frame: SharedFrame) -> None:
        self._frames.append(frame)
        if len(self._frames) >= OUTBOX_MERGE_AT:
            self._merge()

    def _merge(self) -> None:
        merged = {} if self._merged is None else self._merged
        for f in self._frames:  # oldest first: a later tick's fix of a unit is newer
            merged.update(f.positions)
        self._merged = merged
        self._frames = []
        self.merges += 1

    def take_one(self) -> str | None:
        """The next text to send (None when nothing is pending): the oldest shared frame's
        own text while the client keeps up, else one frame merged for this client."""
        if self._merged is not None:
            self._merge()
            assert self._merged is not None
            text = positions_frame(self._merged)
            self._merged = None
            return text
        if not self._frames:
            return None
        return self._frames.pop(0).text
