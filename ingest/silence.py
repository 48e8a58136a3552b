"""When to look at a no-data rule's device next: a deadline schedule (pure, time passed in).

The no-data timer used to look at every (no-data rule, device) pair once a second: with
10,000 devices that is tens of milliseconds of the event loop every second, in one piece,
which every alarm and console event waiting behind it pays (docs/PERFORMANCE.md, alarm
path). A device that reports on time cannot go silent before its last reading plus the
rule's allowed gap, so the schedule keeps each pair under the moment it could first be
silent and hands out only the pairs whose moment has come; the watch then looks at the
pair's current state (a reading since may have moved the moment on) and puts it back.

A pair is in the schedule at most once. ``known`` also holds pairs that need no timer (a
device without a reporting interval), so the reading path asks "is it known?" with one
set lookup and computes a deadline only for a pair it has not seen.
"""

from __future__ import annotations

import heapq

Key = tuple[str, str]  # (rule id, device id)


class SilenceSchedule:
    """Pairs by the moment they could first be silent (seconds on the hub's clock)."""

    __slots__ = ("_heap", "known")

    def __init__(self) -> None:
        self._heap: list[tuple[float, Key]] = []
        self.known: set[Key] = set()

    def __len__(self) -> int:
        return len(self._heap)

    def track(self, key: Key, due: float | None) -> None:
        """Look at ``key`` again at ``due`` (None: known, but no timer). The caller tracks
        a pair that is not scheduled: a new one, or one it just took from ``pop_due``."""
        self.known.add(key)
        if due is not None:
            heapq.heappush(self._heap, (due, key))

    def pop_due(self, now: float) -> list[Key]:
        """The pairs whose moment is ``now`` or earlier, earliest first; they leave the
        schedule (still ``known``) until tracked again."""
        heap = self._heap
        out: list[Key] = []
        while heap and heap[0][0] <= now:
            out.append(heapq.heappop(heap)[1])
        return out

    def forget(self, key: Key) -> None:
        """A pair that is gone (rule or device removed, state dropped): a reading that
        brings it back tracks it anew."""
        self.known.discard(key)

    def clear(self) -> None:
        self._heap.clear()
        self.known.clear()
