"""How long the running hub's dispatch decisions take, part by part.

``DecisionStats`` keeps the last ``WINDOW`` decisions' times in ms: ``wait`` (BEGIN and
the plan lock: other deciders ahead), ``state`` (the state read), ``core``
(``planner.decide``'s CPU), ``writes`` (``decision_writes.apply``), ``commit`` and
``total``. The dispatch leader fills one (``Dispatcher.stats``) and ``/api/health`` shows
its summary, so an operator's engineer, and the console benchmark, can see where a
``unit.assigned`` event's time went before it was committed.
"""

from __future__ import annotations

from collections import deque
from itertools import pairwise

from core.stats import percentile

# Enough decisions for a stable p99 (20 beyond it), a few minutes of a busy afternoon.
WINDOW = 2000
PARTS = ("wait", "state", "core", "writes", "commit", "total")


class DecisionStats:
    """The last ``window`` decisions' times by part (ms)."""

    def __init__(self, window: int = WINDOW) -> None:
        self.decisions = 0
        # The latest decision's marks (``add``), for a report of it elsewhere: the dispatch
        # process sends each decision's to its hub (hub/dispatch_process.py).
        self.last: list[float] = []
        self._ms: dict[str, deque[float]] = {p: deque(maxlen=window) for p in PARTS}

    def add(self, marks: list[float]) -> None:
        """One decision's ``time.perf_counter()`` marks: start, lock taken, state read,
        decided, written, committed."""
        self.decisions += 1
        self.last = list(marks)
        for part, (a, b) in zip(PARTS[:-1], pairwise(marks), strict=True):
            self._ms[part].append((b - a) * 1000.0)
        self._ms["total"].append((marks[-1] - marks[0]) * 1000.0)

    def summary(self) -> dict[str, object]:
        """``{"decisions": n, "ms": {part: {"p50", "p99", "max"}}}`` over the window."""
        out: dict[str, dict[str, float | None]] = {}
        for part, values in self._ms.items():
            ordered = sorted(values)

            def q(p: float, ordered: list[float] = ordered) -> float | None:
                v = percentile(ordered, p, nearest_rank=True)
                return None if v is None else round(v, 1)

            out[part] = {"p50": q(50), "p99": q(99), "max": q(100)}
        return {"decisions": self.decisions, "ms": out}
