"""The alarm benchmark's set-up: its rule, detectors and background devices, the
scratch database's rows, and the small figures it reports (pure helpers and SQL)."""

from __future__ import annotations

import os
import random
import sys
import time
from typing import Any

import asyncpg

from core.stats import percentile
from simulators.bench import loadgen_lines
from simulators.bench.harness import (
    ScratchDatabase,
    SyncDb,
)

RULE_ID = "gas_lel_high"
GAS_METRIC = "gas_lel_pct"
# Detector ids are GAS_PREFIX + a per-run tag + "-0001"..., background devices the load
# generator's BENCH- + the tag: every hub on the shared broker receives every publisher's
# messages, so another benchmark's devices can never pass for this run's.
GAS_PREFIX = "BENCHGAS"
PROBE_SUFFIX = "PROBE"
# Over gas_lel_high's 25 %LEL and under gas_lel_danger's 50: exactly one rule raises.
RAISE_LEL = 40.0
# Under gas_lel_high's 10 %LEL clear level.
CLEAR_LEL = 1.0
# Reporting interval registered for the bench devices: the no-data rule (3 intervals of
# silence) then cannot fire during any run, neither for the background devices nor for a
# detector heard twice.
QUIET_INTERVAL_S = 24 * 3600
# Raises the schedule leaves free under the rule's rate cap: the probe, plus send times
# that slip a little behind the schedule and so squeeze one window.
CAP_MARGIN = 3
# Seconds for the whole path (MQTT subscription live, alarm written, feed delivering) to
# carry the probe's alarm before the run is declared broken.
PROBE_TIMEOUT_S = 30.0
HUB_ROLES = "ingest,dispatch,web"


def say(msg: str) -> None:
    print(f"[alarm-bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- pure parts


def summarize(values_ms: list[float], prefix: str = "") -> dict[str, float | None]:
    """p50/p90/p99/max/mean of latencies in ms, rounded to 0.1 ms."""
    s = sorted(values_ms)

    def r(x: float | None) -> float | None:
        return None if x is None else round(x, 1)

    return {
        f"{prefix}p50_ms": r(percentile(s, 50, nearest_rank=True)),
        f"{prefix}p90_ms": r(percentile(s, 90, nearest_rank=True)),
        f"{prefix}p99_ms": r(percentile(s, 99, nearest_rank=True)),
        f"{prefix}max_ms": r(s[-1] if s else None),
        f"{prefix}mean_ms": r(sum(s) / len(s) if s else None),
    }


def trigger_schedule(count: int, interval_s: float, jitter_s: float, seed: int = 1
                     ) -> list[float]:
    """Send offsets (seconds from the first trigger): ``interval_s`` apart, each moved by up
    to ``jitter_s`` either way (so triggers never lock to the hub's flush or tick phase);
    ascending because the jitter is under half an interval."""
    if count < 1 or interval_s <= 0:
        raise ValueError("need at least one trigger and a positive interval")
    if not 0 <= jitter_s < interval_s / 2:
        raise ValueError("jitter must be within [0, interval / 2)")
    rng = random.Random(seed)
    return [max(0.0, i * interval_s + rng.uniform(-jitter_s, jitter_s)) for i in range(count)]


def max_in_window(times: list[float], window_s: float) -> int:
    """Most of the ascending ``times`` inside any half-open window ``(t - window_s, t]``."""
    best = 0
    lo = 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window_s:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def run_prefixes(tag: str) -> tuple[str, str]:
    """(gas detector prefix, background device prefix) of a run: ``BENCHGAS<tag>-`` and
    ``BENCH-<tag>-``, disjoint whatever the tag."""
    return f"{GAS_PREFIX}{tag}-", f"{loadgen_lines.DEVICE_PREFIX}{tag}-"


def detector_ids(count: int, prefix: str = GAS_PREFIX + "-") -> list[str]:
    """``BENCHGAS-0001``... (``prefix`` + a number)."""
    width = max(4, len(str(count)))
    return [f"{prefix}{i:0{width}d}" for i in range(1, count + 1)]


def raised_alarms(frame: dict[str, Any], rule_id: str = RULE_ID
                  ) -> list[tuple[str, int, float]]:
    """(device id, seq, event ts) of every ``alarm.raised`` of ``rule_id`` in a feed frame."""
    if frame.get("type") != "batch":
        return []
    out = []
    for ev in frame.get("events") or ():
        if ev.get("kind") != "alarm.raised":
            continue
        alarm = (ev.get("data") or {}).get("alarm") or {}
        if alarm.get("rule_id") == rule_id and alarm.get("device_id"):
            out.append((str(alarm["device_id"]), int(ev["seq"]), float(ev["ts"])))
    return out


def load_avg() -> list[float]:
    """1/5/15-minute load averages (what ``uptime`` prints)."""
    return [round(x, 2) for x in os.getloadavg()]


# --------------------------------------------------------------------------- set-up


def register_devices(url: str, background: int, bg_prefix: str, detectors: list[str]
                     ) -> None:
    """Background bench devices (loadgen ids, metric ``v``) in one level-2 grid, and gas
    detectors dealt over every level-2 grid (so their alarms open cases in many grids)."""
    with SyncDb(url) as db:
        grids = db.fetch("SELECT id, center_lon, center_lat FROM grids WHERE level = 2 "
                         "ORDER BY id")
        if not grids:
            raise RuntimeError("no level-2 grid: the town did not load")
        g0 = grids[0]
        rows = [(d, "environment", "bench", d, g0["center_lon"], g0["center_lat"], g0["id"],
                 [loadgen_lines.METRIC], QUIET_INTERVAL_S)
                for d in loadgen_lines.device_ids(background, bg_prefix)]
        for k, d in enumerate(detectors):
            g = grids[k % len(grids)]
            rows.append((d, "safety", "gas_detector", d, g["center_lon"] + 0.0003,
                         g["center_lat"] + 0.0002, g["id"], [GAS_METRIC], QUIET_INTERVAL_S))
        db.run(db.conn.copy_records_to_table(
            "devices", records=rows,
            columns=("id", "kind", "model", "name", "lon", "lat", "grid_id", "metrics",
                     "interval_s")))


BACKGROUND_SQL = """
SELECT count(*) FROM telemetry
WHERE device_id LIKE $3
  AND received_at >= to_timestamp($1) AND received_at < to_timestamp($2)
"""


def drop_quietly(db: ScratchDatabase, attempts: int = 5) -> None:
    """Drop the scratch database; a failure (e.g. a TimescaleDB background worker still
    connected, which ``WITH (FORCE)`` may not terminate as the app role) is reported, not
    raised, so that it never costs the figures of a finished run."""
    for attempt in range(attempts):
        try:
            db.drop()
            return
        except (OSError, asyncpg.PostgresError) as e:
            if attempt == attempts - 1:
                say(f"could not drop {db.name} ({e}); drop it by hand")
                return
            time.sleep(1.0)
