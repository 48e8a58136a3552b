"""Backtests during the alarm benchmark (``--backtest``): posted back to back or with rests
(or sham spans, the A/A control), the split of the triggers into those sent while one
ran and the others, and how sure a ratio of the two is (``ratio_interval``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import urllib.error
import urllib.request
from typing import Any

from core.stats import percentile
from simulators.bench.alarm_feed import Trigger
from simulators.bench.alarm_setup import summarize
from simulators.bench.harness import (
    HubProcess,
)


def _post_json(url: str, token: str | None, body: dict[str, Any]) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")[:200]


async def _backtests(hub: HubProcess, since: float, stop: asyncio.Event,
                     out: dict[str, Any], rest: float = 0.0, sham_s: float = 0.0) -> None:
    """Backtests until ``stop``: a rule over all background readings so far; after each,
    a rest of ``rest`` times its wall time (0: back to back). The wall-clock spans during
    which a backtest request was open go to ``out["busy"]``."""
    body = {"rule": {"name": "bench backtest", "kind": "threshold", "metric": "v",
                     "params": {"raise_above": 1e9}}, "since": since}
    times: list[float] = []
    busy: list[tuple[float, float]] = out.setdefault("busy", [])
    url = hub.url("/api/rules/backtest")
    while not stop.is_set():
        t = time.monotonic()
        began = time.time()
        if sham_s > 0:
            # The A/A control: the same split of the triggers into spans, no backtest in
            # them; how far p99_ratio_bt strays from 1 here is the split's own noise.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), sham_s)
            busy.append((began, time.time()))
            out["backtest_sham_s"] = sham_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), sham_s * rest)
            continue
        status, res = await asyncio.to_thread(_post_json, url, hub.token,
                                              {**body, "until": time.time()})
        busy.append((began, time.time()))
        took = time.monotonic() - t
        if status != 200:
            out["backtest_errors"].append(f"{status} {res}")
            took = max(took, 1.0)
        else:
            times.append(took * 1000)
            out["backtest_readings"] = max(out["backtest_readings"], res["readings"])
            out["backtest_backend"] = res.get("backend_lowered")
            cpu = res.get("cpu_s") or {}
            out["backtest_cpu_s"] = round(out.get("backtest_cpu_s", 0.0) + (cpu.get("child") or 0.0)
                                          + (cpu.get("backend") or 0.0), 3)
            out["backtest_total_readings"] = out.get("backtest_total_readings", 0) + res["readings"]
            out["backtest_total_s"] = out.get("backtest_total_s", 0.0) + took
            out["backtest_rested_s"] = round(out.get("backtest_rested_s", 0.0)
                                             + (res.get("rested_s") or 0.0), 2)
            out["backtest_cpu_share"] = res.get("cpu_share")
        if rest > 0 or status != 200:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), took * rest if rest > 0 else 1.0)
    out["backtests"] = len(times)
    out["backtest_ms"] = summarize(sorted(times))
    if out.get("backtest_total_readings"):
        # What a backtest costs the machine per reading (the child and its backend): the
        # part of the comparison the alarm path cannot hide from on two cores.
        out["backtest_cpu_us_per_reading"] = round(
            out["backtest_cpu_s"] * 1e6 / out["backtest_total_readings"], 2)
        # How fast a backtest reads at its CPU budget (wall time of the requests, start-up
        # included), and the share of one core it actually took (child + backend).
        total_s = out.pop("backtest_total_s")
        out["backtest_readings_per_s"] = round(out["backtest_total_readings"] / total_s)
        out["backtest_cpu_pct"] = round(100 * out["backtest_cpu_s"] / total_s, 1)


def split_by_spans(triggers: list[Trigger], spans: list[tuple[float, float]]
                   ) -> tuple[list[float], list[float]]:
    """Latencies of the triggers sent inside one of ``spans`` (wall clock), and of the rest."""
    inside: list[float] = []
    outside: list[float] = []
    for t in triggers:
        if t.latency_ms is None or t.sent_at is None:
            continue
        hit = any(a <= t.sent_at <= b for a, b in spans)
        (inside if hit else outside).append(t.latency_ms)
    return sorted(inside), sorted(outside)


# Resamples of the bootstrap behind ratio_interval: the interval's ends move by well under
# 0.05 between seeds at this count, and it costs milliseconds.
BOOTSTRAP_N = 2000


def ratio_interval(inside: list[float], outside: list[float], q: float,
                   confidence: float = 0.9, n: int = BOOTSTRAP_N, seed: int = 1
                   ) -> tuple[float, float] | None:
    """A percentile-bootstrap interval of ``percentile(inside, q) / percentile(outside, q)``
    at ``confidence``: both groups resampled with replacement ``n`` times. With ~60
    triggers a side, the p99 is the slowest alarm and its ratio swings by 2x between A/A
    runs; the interval says so instead of a bare number. None if a side is empty."""
    if not inside or not outside:
        return None
    rng = random.Random(seed)
    ratios: list[float] = []
    for _ in range(n):
        a = rng.choices(inside, k=len(inside))
        b = rng.choices(outside, k=len(outside))
        pa, pb = percentile(a, q, nearest_rank=True), percentile(b, q, nearest_rank=True)
        if pa is not None and pb:
            ratios.append(pa / pb)
    ratios.sort()
    tail = (1 - confidence) / 2
    lo = ratios[int(tail * (len(ratios) - 1))]
    hi = ratios[int((1 - tail) * (len(ratios) - 1))]
    return round(lo, 2), round(hi, 2)
