"""Summary statistics shared by the reports and the benchmarks. Pure."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float, *, nearest_rank: bool = False) -> float | None:
    """The ``q``-th percentile (0..100) of ``values`` (any order); ``None`` if empty.

    Linear between closest ranks by default (numpy's default: what the reports quote for
    response times); ``nearest_rank`` gives an observed value instead (ceil(n*q/100)-th
    smallest: what the benchmarks quote for latencies, never a latency nobody saw)."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError("q must be within 0..100")
    xs = sorted(values)
    if nearest_rank:
        return xs[max(1, math.ceil(len(xs) * q / 100)) - 1]
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
