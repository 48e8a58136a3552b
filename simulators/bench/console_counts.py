"""What the console benchmark counts: latency histograms (1 ms bins, mergeable across
processes), event sequence tracking per connection (gaps, duplicates), the per-kind event
summary, and a process's own CPU time. Pure, except ``self_cpu``."""

from __future__ import annotations

import math
import resource
from typing import Any

# Latency histogram: 1 ms bins up to a minute; anything slower lands in the last bin.
HIST_BIN_MS = 1.0
HIST_BINS = 60_000

class Histogram:
    """Counts of latencies in ``bin_ms`` bins from 0 (negative times count as 0); the last
    bin holds everything beyond. Percentiles are the upper edge of the bin holding the
    nearest-rank sample, so they are exact to within one bin."""

    def __init__(self, bins: int = HIST_BINS, bin_ms: float = HIST_BIN_MS) -> None:
        if bins < 1 or bin_ms <= 0:
            raise ValueError("need at least one bin of positive width")
        self.bin_ms = bin_ms
        self.counts = [0] * bins
        self.max_ms = 0.0

    @property
    def total(self) -> int:
        return sum(self.counts)

    def add(self, ms: float) -> None:
        b = int(ms / self.bin_ms)
        last = len(self.counts) - 1
        self.counts[0 if b < 0 else (b if b < last else last)] += 1
        if ms > self.max_ms:
            self.max_ms = ms

    def add_since(self, now: float, stamps: list[float]) -> None:
        """``(now - ts)`` in ms for each ts (seconds): the hot loop of the clients."""
        counts = self.counts
        last = len(counts) - 1
        scale = 1000.0 / self.bin_ms
        worst = 0.0
        for ts in stamps:
            d = now - ts
            b = int(d * scale)
            counts[0 if b < 0 else (b if b < last else last)] += 1
            if d > worst:
                worst = d
        if worst * 1000.0 > self.max_ms:
            self.max_ms = worst * 1000.0

    def percentile(self, q: float) -> float | None:
        """Nearest-rank percentile (``q`` in 0..100) in ms; None when empty."""
        if not 0 <= q <= 100:
            raise ValueError("q must be within 0..100")
        n = self.total
        if not n:
            return None
        rank = max(1, math.ceil(n * q / 100))
        seen = 0
        for b, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return (b + 1) * self.bin_ms
        raise AssertionError("unreachable")

    def to_sparse(self) -> dict[str, Any]:
        return {"bin_ms": self.bin_ms, "bins": len(self.counts), "max_ms": self.max_ms,
                "counts": {str(b): c for b, c in enumerate(self.counts) if c}}

    def merge_sparse(self, sparse: dict[str, Any]) -> None:
        if sparse["bin_ms"] != self.bin_ms or sparse["bins"] != len(self.counts):
            raise ValueError("histograms of different shapes")
        for b, c in sparse["counts"].items():
            self.counts[int(b)] += int(c)
        self.max_ms = max(self.max_ms, float(sparse["max_ms"]))

    def summary(self, prefix: str = "") -> dict[str, float | None]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 1)

        return {f"{prefix}p50_ms": r(self.percentile(50)),
                f"{prefix}p90_ms": r(self.percentile(90)),
                f"{prefix}p99_ms": r(self.percentile(99)),
                f"{prefix}max_ms": r(self.max_ms if self.total else None),
                f"{prefix}samples": self.total}


class SeqTracker:
    """One client's view of the event sequence (pure: fed seqs, counts what is wrong).

    ``snapshot(seq)`` starts or restarts from a snapshot; ``event(seq)`` returns True when
    the event is new. A jump over missing seqs counts them as ``gaps``; an event at or
    below the last seq is a ``duplicate``; a later snapshot that jumps ahead (after a
    resync) counts the events it covers as ``resync_skipped``.
    """

    __slots__ = ("duplicates", "first", "gaps", "last", "resync_skipped")

    def __init__(self) -> None:
        self.first: int | None = None
        self.last: int | None = None
        self.gaps = 0
        self.duplicates = 0
        self.resync_skipped = 0

    def snapshot(self, seq: int) -> None:
        if self.last is None:
            self.first = seq
        elif seq > self.last:
            self.resync_skipped += seq - self.last
        self.last = seq if self.last is None else max(self.last, seq)

    def event(self, seq: int) -> bool:
        if self.last is None:  # an event before any snapshot: the protocol forbids it
            self.first = self.last = seq
            return True
        if seq <= self.last:
            self.duplicates += 1
            return False
        self.gaps += seq - self.last - 1
        self.last = seq
        return True

    def missing_at_end(self, final_seq: int) -> int:
        """Events up to ``final_seq`` never delivered (0 if the client never started)."""
        if self.last is None:
            return 0
        return max(0, final_seq - self.last)


def event_summary_by_kind(hists: dict[str, Histogram]) -> dict[str, dict[str, Any]]:
    """``{kind: {p50_ms, p99_ms, max_ms, samples}}``, the kinds with most samples first."""
    out: dict[str, dict[str, Any]] = {}
    for kind, h in sorted(hists.items(), key=lambda kv: (-kv[1].total, kv[0])):
        s = h.summary()
        out[kind] = {k: s[k] for k in ("p50_ms", "p99_ms", "max_ms", "samples")}
    return out


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime
