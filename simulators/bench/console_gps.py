"""The console benchmark's GPS generator process (``--role gps``): every bench unit drives
a circle around its home grid and reports a fix at the paced rate."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingest import wire
from simulators.bench.console_counts import self_cpu
from simulators.bench.loadgen_lines import TokenBucket
from simulators.mqtt_login import login_at
from simulators.mqtt_pub import Publisher

# GPS pacing loop period and the tokens it may bank (see loadgen.TokenBucket).
GPS_TICK_S = 0.005
GPS_BURST_S = 0.02
# Unacknowledged fixes the GPS publisher may have out (mqtt_pub.Publisher's window).
GPS_WINDOW = 1000
# The broker's login (password hashing) can take well over mqtt_pub's default 10 s on a
# machine at load 20+ with 500 clients being served: measured failing at 10 s (issue 16).
# The driver starts the warm-up only once the publisher is connected.
GPS_CONNECT_TIMEOUT_S = 60.0
# Tracks: circles of 200-500 m around the home grid's centre at 4-12 m/s.
TRACK_RADIUS_DEG = (0.002, 0.0045)
TRACK_SPEED_MS = (4.0, 12.0)
M_PER_DEG = 111_320.0

@dataclass(frozen=True)
class Track:
    """A unit driving a circle: its fix at any time (pure)."""

    lon0: float
    lat0: float
    radius_deg: float
    speed_ms: float
    phase: float

    def fix(self, t: float) -> tuple[float, float, float, float]:
        """(lat, lon, speed m/s, heading degrees) at UNIX time ``t``."""
        omega = self.speed_ms / (self.radius_deg * M_PER_DEG)  # rad/s
        a = self.phase + omega * t
        lon = self.lon0 + self.radius_deg * math.cos(a) / math.cos(math.radians(self.lat0))
        lat = self.lat0 + self.radius_deg * math.sin(a)
        heading = (math.degrees(math.atan2(math.cos(a), -math.sin(a)))) % 360.0
        return lat, lon, self.speed_ms, heading


def make_tracks(centres: list[tuple[float, float]], seed: int = 7) -> list[Track]:
    rng = random.Random(seed)
    return [Track(lon, lat, rng.uniform(*TRACK_RADIUS_DEG), rng.uniform(*TRACK_SPEED_MS),
                  rng.uniform(0, 2 * math.pi)) for lon, lat in centres]


async def gps_main(args: argparse.Namespace) -> dict[str, Any]:
    spec = json.loads(Path(args.units_file).read_text())
    ids: list[str] = spec["ids"]
    tracks = make_tracks([tuple(c) for c in spec["centres"]], args.seed)
    topics = [wire.gps_topic(u) for u in ids]
    pub = Publisher(login_at(args.port, "BENCH"),
                    f"console-bench-gps-{os.getpid()}", window=GPS_WINDOW)
    if not await pub.start(GPS_CONNECT_TIMEOUT_S):
        raise RuntimeError(f"GPS publisher could not connect to port {args.port}")
    print(json.dumps({"connected": True}), flush=True)  # the driver's cue to warm up
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    t0 = time.monotonic()
    end = t0 + args.duration
    bucket = TokenBucket(args.rate, args.rate * GPS_BURST_S, t0)
    sent = 0
    k = 0
    n = len(ids)
    cpu0 = self_cpu()
    next_report = t0 + 10.0
    try:
        while not stop.is_set():
            now = time.monotonic()
            if now >= end:
                break
            take = bucket.take(now)
            if take:
                stamp = time.time()
                for _ in range(take):
                    u = k % n
                    k += 1
                    lat, lon, speed, heading = tracks[u].fix(stamp)
                    ts = time.time()
                    await pub.publish(topics[u], wire.encode_gps(
                        ts, round(lat, 7), round(lon, 7), round(speed, 2), round(heading, 1)))
                sent += take
            if now >= next_report:
                print(f"[gps] t={now - t0:5.1f}s sent {sent} ({sent / (now - t0):,.0f} fix/s)",
                      file=sys.stderr, flush=True)
                next_report += 10.0
            await asyncio.sleep(GPS_TICK_S)
        send_s = time.monotonic() - t0
        cpu = self_cpu() - cpu0
        await pub.flush(10.0)
        rep = pub.report()
    finally:
        await pub.stop()
    return {"sent": sent, "acked": rep.acked, "refused": rep.refused, "dropped": rep.dropped,
            "send_s": round(send_s, 2), "fixes_per_s": round(sent / send_s, 1),
            "cpu_s": round(cpu, 2), "cpu_us_per_fix": round(cpu / max(1, sent) * 1e6, 1)}
