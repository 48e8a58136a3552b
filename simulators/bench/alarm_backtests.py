"""Backtests during the alarm benchmark (``--backtest``): posted back to back or with rests
(or sham spans, the A/A control), the split of the triggers into those sent while one
ran and the others, and how sure a ratio of the two is (``ratio_interval``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
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


def _call(method: str, url: str, token: str | None, body: dict[str, Any] | None = None
          ) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 method=method,
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")[:200]


def _tally(out: dict[str, Any], readings: int, took_s: float, cpu_s: float) -> None:
    out["backtest_total_readings"] = out.get("backtest_total_readings", 0) + readings
    out["backtest_total_s"] = out.get("backtest_total_s", 0.0) + took_s
    out["backtest_cpu_s"] = round(out.get("backtest_cpu_s", 0.0) + cpu_s, 3)


async def _one(hub: HubProcess, body: dict[str, Any], out: dict[str, Any], times: list[float],
               until_wall: float | None) -> None:
    """One backtest; with ``until_wall``, cancelled at that time if still running (its
    progress read first: what it had read counts towards readings/s)."""
    url = hub.url("/api/rules/backtest")
    job = f"bench-{secrets.token_hex(4)}"
    t = time.monotonic()
    task = asyncio.ensure_future(asyncio.to_thread(
        _call, "POST", url, hub.token, {**body, "until": time.time(), "job_id": job}))
    await asyncio.wait({task}, timeout=None if until_wall is None
                       else max(0.0, until_wall - time.time()))
    if not task.done():
        _, prog = await asyncio.to_thread(_call, "GET", f"{url}/{job}", hub.token)
        await asyncio.to_thread(_call, "DELETE", f"{url}/{job}", hub.token)
        await task
        out["backtests_cut"] = out.get("backtests_cut", 0) + 1
        if isinstance(prog, dict):
            _tally(out, int(prog.get("readings") or 0), time.monotonic() - t,
                   float(prog.get("cpu_s") or 0.0))
        return
    status, res = task.result()
    took = time.monotonic() - t
    if status != 200:
        out["backtest_errors"].append(f"{status} {res}")
        await asyncio.sleep(1.0)
        return
    times.append(took * 1000)
    out["backtest_readings"] = max(out["backtest_readings"], res["readings"])
    out["backtest_backend"] = res.get("backend_lowered")
    out["backtest_cpu_share"] = res.get("cpu_share")
    out["backtest_rested_s"] = round(out.get("backtest_rested_s", 0.0)
                                     + (res.get("rested_s") or 0.0), 2)
    cpu = res.get("cpu_s") or {}
    _tally(out, res["readings"], took, (cpu.get("child") or 0.0) + (cpu.get("backend") or 0.0))


async def _backtests(hub: HubProcess, since: float, stop: asyncio.Event,
                     out: dict[str, Any], rest: float = 0.0, sham_s: float = 0.0,
                     window_s: float = 0.0) -> None:
    """Backtests until ``stop``: a rule over all background readings so far.

    - ``window_s`` > 0: fixed windows of ``window_s`` seconds with backtests back to back
      (the one running at the window's end is cancelled), then ``window_s * rest`` without.
      The split of the triggers is then set by the clock, not by how long backtests took:
      on a loaded machine a backtest runs longer exactly when the machine is busiest, so
      spans of "a backtest was running" over-sample busy moments.
    - ``sham_s`` > 0: the same fixed schedule with no backtest (the A/A control).
    - else: after each backtest, a rest of ``rest`` times its wall time (0: back to back).

    The wall-clock spans counted as "during" go to ``out["busy"]``."""
    body = {"rule": {"name": "bench backtest", "kind": "threshold", "metric": "v",
                     "params": {"raise_above": 1e9}}, "since": since}
    times: list[float] = []
    busy: list[tuple[float, float]] = out.setdefault("busy", [])
    fixed = sham_s or window_s
    while not stop.is_set():
        t = time.monotonic()
        began = time.time()
        if fixed > 0:
            if sham_s > 0:
                # The A/A control: the same split of the triggers into spans, no backtest
                # in them; how far the ratios stray from 1 here is the split's own noise.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), sham_s)
                out["backtest_sham_s"] = sham_s
            else:
                out["backtest_window_s"] = window_s
                while time.time() < began + window_s and not stop.is_set():
                    await _one(hub, body, out, times, began + window_s)
            busy.append((began, time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), fixed * rest)
            continue
        errors = len(out["backtest_errors"])
        await _one(hub, body, out, times, None)
        busy.append((began, time.time()))
        took = time.monotonic() - t
        if rest > 0 and len(out["backtest_errors"]) == errors:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), took * rest)
    out["backtests"] = len(times)
    out["backtest_ms"] = summarize(sorted(times))
    if out.get("backtest_total_readings"):
        # What a backtest costs the machine per reading (the child and its backend): the
        # part of the comparison the alarm path cannot hide from on two cores.
        out["backtest_cpu_us_per_reading"] = round(
            out["backtest_cpu_s"] * 1e6 / out["backtest_total_readings"], 2)
    if out.get("backtest_total_s"):
        # How fast backtests read at their CPU budget (wall time of the requests, start-up
        # included), and the share of one core they actually took (child + backend).
        total_s = out.pop("backtest_total_s")
        out["backtest_readings_per_s"] = round(out.get("backtest_total_readings", 0) / total_s)
        out["backtest_cpu_pct"] = round(100 * out.get("backtest_cpu_s", 0.0) / total_s, 1)


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
