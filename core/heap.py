"""The garbage collector's settings for a long-running hub process (every role's).

A hub process builds what lives as long as it does at start (town, road graph, registry,
rule states) and then allocates a few small objects per reading, fix or event.
"""

from __future__ import annotations

import gc
import time
from typing import Any

# Young-generation collections every this many allocations (CPython's default is 700). A
# busy ingest allocates a few tuples per reading; at the default, collections ran hundreds
# of times a second and promoted each pending batch's rows to the old generation, whose
# full collections then scanned everything: stalls of 0.4-1.4 s on the event loop, seen as
# the alarm latency's tail (docs/PERFORMANCE.md).
GC_GEN0_THRESHOLD = 50_000


class GcClock:
    """The time this process has spent in the garbage collector (``gc.callbacks``), so a
    piece of work can say how much of its time was collections: ``seconds`` before and
    after it."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = 0
        self._began = 0.0
        self._installed = False

    def install(self) -> None:
        if not self._installed:
            gc.callbacks.append(self._on_gc)
            self._installed = True

    def _on_gc(self, phase: str, _info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._began
            self.collections += 1


# This process's (``settle_gc`` installs it).
GC_CLOCK = GcClock()


def settle_gc() -> None:
    """After start-up: what exists now lives as long as the process; freeze it out of every
    collection, and collect the young less often. (The hub's lifespan, the dispatch process
    and ``simulators/bench/dispatch_latency.py`` call it, the last to time the leader in the
    heap it runs in.)"""
    GC_CLOCK.install()
    gc.collect()
    gc.freeze()
    _, g1, g2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, g1, g2)
