"""Live console load benchmark (issue 7): ``./hubctl bench console [args]``, or
``python -m simulators.bench.console [args]`` with the bench environment's ``HUB_*`` exported.

What it does: a fresh scratch database with the demo town plus ``--units`` bench squads
(``BU<tag>-00001``..., ``<tag>`` random per run; qualification ``city_management``, homes
dealt over the level-2 grids, no patrol area so the geofence rule ignores them); the hub
with all its roles; then, each in its own process so that none of them starves the hub's
event loop of the GIL:

- ``--client-procs`` websocket client processes (default one per ``CLIENTS_PER_PROC``
  clients), ``--clients`` connections in total on
  ``/ws/live`` (the ``websockets`` library, asyncio). Each connection says hello (with
  acks, as the console does), takes the snapshot, then acknowledges every
  ``ACK_EVERY_FRAMES`` position frames and counts the position updates and events of every
  batch frame, checks that event seqs follow one another (a jump is a gap; an older seq a
  duplicate), records the publish -> client latency of every position (the fix's ``ts`` is
  its send time) in a 1 ms histogram, resumes with its last seq if the connection drops.
- one GPS generator: a paho publisher (simulators/mqtt_pub.py, QoS 1, TCP_NODELAY) paced by
  the load generator's token bucket at ``--rate`` fixes/s (default one per unit per
  second), each unit driving a circle of a few hundred metres around its home grid,
  ``gridhub/v1/units/{id}/gps``, payload ``ts`` = send time.
- this driver posts operator cases (``POST /api/incidents``, ``city_order``) at
  ``--incident-rate`` per second; the dispatcher reacts to each, so the feed carries a
  stream of sequenced events (``incident.opened``, assignments, unit status changes).

Timeline: clients connect (all snapshots in) -> GPS and cases start -> ``--warmup`` s ->
measurement window of ``--duration`` s (clients count from a "reset" to an "end" command
on their stdin) -> GPS and cases stop -> the last seq is read from the events table after
the hub has been quiet ``QUIET_S`` -> each client waits (at most ``SETTLE_S``) to reach it
and reports. Every process also stops by itself after a hard timeout.

Figures (last stdout line, one JSON object):

- ``events_per_s``: deliveries to clients per second in the window, position updates plus
  sequenced events (``positions_per_s`` and ``feed_events_per_s`` apart), summed over the
  clients. ``positions_per_unit_s``: position updates a client got per unit per second
  (the hub sends at most ~1 per unit per second, hub/live.py); ``position_rate_per_unit``
  is the same figure (issue 16's name) and ``position_rate_per_unit_min`` the slowest
  client's; ``gps_fixes_per_unit_s`` what the generator sent (the ceiling of both).
- ``p50_ms``/``p90_ms``/``p99_ms``/``max_ms``: publish -> client of the position updates in
  the window (1 ms bins, so to within 1 ms); ``event_p99_ms``: the event row's ``ts``
  (``now()`` of its transaction) -> client of the events; ``event_by_kind`` the same by
  event kind (``incident.opened`` from the cases posted, ``unit.assigned`` and the rest
  from the dispatcher's decisions); ``event_ts_to_bus_p50_ms``/``_p99_ms`` the hub's part
  of it (``ts`` -> the hub's bus: the transaction, commit, NOTIFY and event feed; hub
  stamps over its last 2,000 events, warm-up included), ``events_from_notices`` how many
  the event feed published straight from their NOTIFY; ``dispatch_decisions`` the hub's
  leader's decisions by part (``wait`` for the plan lock, ``state`` read, ``core``,
  ``writes``, ``commit``, ``total``: p50/p99/max ms, dispatch/decision_stats.py), the
  time a ``unit.assigned`` spends between its ``ts`` and its commit.
- ``gaps``: sequenced events some client missed: seq jumps inside a connection plus, at
  the end, events between a client's last seq and the final one; ``clients_with_gaps``;
  ``duplicates`` (an event seen twice); ``resyncs`` (the hub told a client it was too far
  behind: the snapshot that follows skips ``resync_skipped`` events, not counted as gaps);
  ``reconnects``; ``events_generated``: sequenced events committed in the window.
- ``peak_rss_mb`` (the hub's VmHWM), CPU in % of one core over the window of the hub, the
  broker, PostgreSQL (approximate), the GPS generator (``generator_cpu_pct``) and the
  client processes together (``clients_cpu_pct``); ``machine_busy_pct`` (100 = every core),
  ``other_cpu_pct`` (everything else on the machine), ``load`` (``uptime``'s averages).
- ``client_loop_lag_p50_ms``/``_p99_ms``/``_max_ms``: how late the client processes' own
  event loops woke from a ``LAG_PROBE_S`` sleep in the window (every receive time is
  stamped by such a loop, so a latency is the hub's only where this is small against it).
- ``pos_hist``/``event_hist``: the two latency histograms (sparse 1 ms bins), for plots.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import resource
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from core.stats import percentile
from ingest import wire
from simulators.bench.alarm_feed import Probes
from simulators.bench.alarm_setup import drop_quietly, load_avg
from simulators.bench.harness import (
    ROOT,
    BenchEnv,
    HubProcess,
    ScratchDatabase,
    SyncDb,
    forget_mqtt_session,
    proc_status_kb,
    run_and_report,
    start_profiler,
)
from simulators.bench.loadgen import TokenBucket
from simulators.mqtt_login import login_at
from simulators.mqtt_pub import Publisher

# Unit ids are UNIT_PREFIX + a per-run tag + "-00001"...: every hub on the shared broker
# receives every publisher's fixes, so another run's units can never pass for this run's.
UNIT_PREFIX = "BU"
HUB_ROLES = "ingest,dispatch,web"
# Latency histogram: 1 ms bins up to a minute; anything slower lands in the last bin.
HIST_BIN_MS = 1.0
HIST_BINS = 60_000
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
# After the load stops: the hub's seq must stay put this long before it is final (the
# dispatcher finishes reacting to the last cases), and then the clients get this long to
# reach it.
QUIET_S = 2.0
SETTLE_S = 15.0
# Clients connect this many at a time (each snapshot is a few hundred kB for the hub to
# encode); the whole ramp must finish within CONNECT_TIMEOUT_S.
CONNECT_BATCH = 10
CONNECT_TIMEOUT_S = 180.0
# Clients acknowledge every this many position frames, as the console does
# (frontend/static/feed.js ACK_EVERY_FRAMES; the hub's flow control, hub/live.py).
ACK_EVERY_FRAMES = 4
# The client processes' loop-lag probe: a sleep this long, its overshoot recorded (1 ms
# bins). Short enough to catch a loop held by a burst of frames, long enough to cost nothing.
LAG_PROBE_S = 0.01
# Clients per client process when --client-procs is not given. 250 per process (500 in the
# default 2) left each process's loop p50 2.2 s late and the figures the bench's own
# (docs/PERFORMANCE.md, console section); 100 keeps 200 clients in 2 processes as before.
CLIENTS_PER_PROC = 100
MAX_CLIENT_PROCS = 8


def say(msg: str) -> None:
    print(f"[console-bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- pure parts


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


def unit_ids(count: int, prefix: str = UNIT_PREFIX + "-") -> list[str]:
    """``BU-00001``... (``prefix`` + a number)."""
    width = max(5, len(str(count)))
    return [f"{prefix}{i:0{width}d}" for i in range(1, count + 1)]


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


def client_procs_for(clients: int) -> int:
    """Client processes for ``clients`` connections: one per ``CLIENTS_PER_PROC``, within
    1..``MAX_CLIENT_PROCS``."""
    return max(1, min(MAX_CLIENT_PROCS, math.ceil(clients / CLIENTS_PER_PROC)))


def split_evenly(total: int, parts: int) -> list[int]:
    q, r = divmod(total, parts)
    return [q + (1 if i < r else 0) for i in range(parts)]


# --------------------------------------------------------------------------- clients process


class _Pos(msgspec.Struct):
    ts: float = 0.0


class _Ev(msgspec.Struct):
    seq: int
    ts: float = 0.0
    kind: str = ""


class _Frame(msgspec.Struct):
    """What a client reads of a feed frame; every other field is skipped unparsed."""

    type: str
    seq: int = 0
    events: list[_Ev] = msgspec.field(default_factory=list)
    positions: dict[str, _Pos] = msgspec.field(default_factory=dict)


_frame_decoder = msgspec.json.Decoder(_Frame)


@dataclass
class _Client:
    seqs: SeqTracker = field(default_factory=SeqTracker)
    positions: int = 0  # in the window
    events: int = 0  # in the window
    frames: int = 0
    resyncs: int = 0
    reconnects: int = 0
    ready: bool = False
    error: str = ""


class ClientFleet:
    """``n`` websocket clients in this process, driven by commands on stdin."""

    def __init__(self, url: str, n: int) -> None:
        self.url = url
        self.clients = [_Client() for _ in range(n)]
        self.pos_hist = Histogram()
        self.ev_hist = Histogram()
        # The same latencies by event kind (which kinds make the tail: the dispatcher's
        # decisions or the operator's own transactions).
        self.ev_hist_by_kind: dict[str, Histogram] = {}
        self.counting = False
        self.lag_hist = Histogram()  # this process's loop lag in the window (LAG_PROBE_S)
        self.final_seq: int | None = None
        self.window: list[float] = []  # [reset, end] times
        self.cpu_marks: list[float] = []
        self.stopping = False

    async def run_client(self, c: _Client) -> None:
        hello: dict[str, Any] = {"type": "hello", "last_seq": None, "acks": True}
        while not self.stopping:
            try:
                async with connect(self.url, max_size=None, compression=None,
                                   ping_interval=None, open_timeout=60,
                                   close_timeout=1) as ws:
                    await ws.send(json.dumps(hello))
                    pos_frames = 0  # on this connection, for the acks
                    async for raw in ws:
                        now = time.time()
                        f = _frame_decoder.decode(raw)
                        c.frames += 1
                        if f.type == "batch":
                            if f.positions:
                                pos_frames += 1
                                if pos_frames % ACK_EVERY_FRAMES == 0:
                                    await ws.send(f'{{"type":"ack","positions":{pos_frames}}}')
                            evs = [e for e in f.events if c.seqs.event(e.seq)]
                            if self.counting:
                                c.events += len(evs)
                                c.positions += len(f.positions)
                                for e in evs:
                                    ms = (now - e.ts) * 1000.0
                                    self.ev_hist.add(ms)
                                    by_kind = self.ev_hist_by_kind.get(e.kind)
                                    if by_kind is None:
                                        by_kind = self.ev_hist_by_kind[e.kind] = Histogram()
                                    by_kind.add(ms)
                                if f.positions:
                                    self.pos_hist.add_since(
                                        now, [p.ts for p in f.positions.values()])
                        elif f.type == "snapshot":
                            c.seqs.snapshot(f.seq)
                            c.ready = True
                        elif f.type == "resync":
                            c.resyncs += 1
                        if self.final_seq is not None and (c.seqs.last or 0) >= self.final_seq:
                            return
                    # The server closed the connection: resume below.
            except (OSError, WebSocketException, TimeoutError) as e:
                c.error = f"{type(e).__name__}: {e}"[:200]
            if self.stopping:
                return
            c.reconnects += 1
            hello = {"type": "hello", "last_seq": c.seqs.last, "acks": True}
            await asyncio.sleep(0.5)

    async def probe_lag(self) -> None:
        """Records how late this process's loop wakes from a short sleep while counting."""
        loop = asyncio.get_running_loop()
        while not self.stopping:
            t = loop.time()
            await asyncio.sleep(LAG_PROBE_S)
            if self.counting:
                self.lag_hist.add((loop.time() - t - LAG_PROBE_S) * 1000.0)

    def report(self) -> dict[str, Any]:
        final = self.final_seq or 0
        cs = self.clients
        tail = [c.seqs.missing_at_end(final) for c in cs]
        internal = [c.seqs.gaps for c in cs]
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "clients": len(cs),
            "ready": sum(c.ready for c in cs),
            "positions": sum(c.positions for c in cs),
            "events": sum(c.events for c in cs),
            "min_positions": min((c.positions for c in cs), default=0),
            "max_positions": max((c.positions for c in cs), default=0),
            "min_events": min((c.events for c in cs), default=0),
            "max_events": max((c.events for c in cs), default=0),
            "frames": sum(c.frames for c in cs),
            "gaps_internal": sum(internal),
            "gaps_tail": sum(tail),
            "clients_with_gaps": sum(1 for a, b in zip(internal, tail, strict=True) if a or b),
            "duplicates": sum(c.seqs.duplicates for c in cs),
            "resyncs": sum(c.resyncs for c in cs),
            "resync_skipped": sum(c.seqs.resync_skipped for c in cs),
            "reconnects": sum(c.reconnects for c in cs),
            "errors": sorted({c.error for c in cs if c.error})[:5],
            "first_seq_min": min((c.seqs.first for c in cs if c.seqs.first is not None),
                                 default=None),
            "final_seq": final,
            "window_s": (self.window[1] - self.window[0]) if len(self.window) == 2 else None,
            "window_cpu_s": (self.cpu_marks[1] - self.cpu_marks[0]
                             if len(self.cpu_marks) == 2 else None),
            "cpu_s": round(ru.ru_utime + ru.ru_stime, 3),
            "pos_hist": self.pos_hist.to_sparse(),
            "ev_hist": self.ev_hist.to_sparse(),
            "ev_hist_by_kind": {k: h.to_sparse() for k, h in self.ev_hist_by_kind.items()},
            "lag_hist": self.lag_hist.to_sparse(),
        }


def _self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def _clients_main(args: argparse.Namespace) -> dict[str, Any]:
    fleet = ClientFleet(args.url, args.clients)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    deadline = loop.time() + args.hard_timeout
    tasks: list[asyncio.Task[None]] = [asyncio.create_task(fleet.probe_lag())]

    def out(obj: dict[str, Any]) -> None:
        print(json.dumps(obj), flush=True)

    try:
        for i in range(0, len(fleet.clients), CONNECT_BATCH):
            for c in fleet.clients[i:i + CONNECT_BATCH]:
                tasks.append(asyncio.create_task(fleet.run_client(c)))
            while not all(c.ready for c in fleet.clients[:i + CONNECT_BATCH]):
                if loop.time() > deadline:
                    raise TimeoutError("clients not connected before the hard timeout")
                await asyncio.sleep(0.02)
        out({"ready": len(fleet.clients)})
        while True:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                line = await asyncio.wait_for(reader.readline(), left)
            except TimeoutError:
                break
            if not line:
                break  # the driver is gone
            cmd = line.decode().split()
            if cmd[:1] == ["reset"]:
                fleet.counting = True
                fleet.window = [time.monotonic()]
                fleet.cpu_marks = [_self_cpu()]
                out({"reset": True})
            elif cmd[:1] == ["end"]:
                fleet.counting = False
                fleet.window.append(time.monotonic())
                fleet.cpu_marks.append(_self_cpu())
                out({"end": True})
            elif cmd[:1] == ["stop"] and len(cmd) == 2:
                fleet.final_seq = int(cmd[1])
                settle = min(loop.time() + SETTLE_S, deadline)
                while loop.time() < settle and not all(
                        (c.seqs.last or 0) >= fleet.final_seq for c in fleet.clients):
                    await asyncio.sleep(0.05)
                break
    finally:
        fleet.stopping = True
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return fleet.report()


# --------------------------------------------------------------------------- GPS process


async def _gps_main(args: argparse.Namespace) -> dict[str, Any]:
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
    cpu0 = _self_cpu()
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
        cpu = _self_cpu() - cpu0
        await pub.flush(10.0)
        rep = pub.report()
    finally:
        await pub.stop()
    return {"sent": sent, "acked": rep.acked, "refused": rep.refused, "dropped": rep.dropped,
            "send_s": round(send_s, 2), "fixes_per_s": round(sent / send_s, 1),
            "cpu_s": round(cpu, 2), "cpu_us_per_fix": round(cpu / max(1, sent) * 1e6, 1)}


# --------------------------------------------------------------------------- driver


def insert_units(url: str, count: int, prefix: str
                 ) -> tuple[list[str], list[tuple[float, float]]]:
    """Bench squads, homes dealt over the level-2 grids; returns ids and home centres."""
    ids = unit_ids(count, prefix)
    with SyncDb(url) as db:
        grids = db.fetch("SELECT id, center_lon, center_lat FROM grids WHERE level = 2 "
                         "ORDER BY id")
        if not grids:
            raise RuntimeError("no level-2 grid: the town did not load")
        rows = []
        centres = []
        for i, u in enumerate(ids):
            g = grids[i % len(grids)]
            rows.append((u, f"压测小组 {u}", "squad", ["city_management"], g["id"]))
            centres.append((float(g["center_lon"]), float(g["center_lat"])))
        db.run(db.conn.copy_records_to_table(
            "units", records=rows, columns=("id", "name", "type", "qualifications",
                                            "home_grid")))
    return ids, centres


class IncidentPoster:
    """Operator cases at a steady rate, from a thread (blocking HTTP is fine there)."""

    def __init__(self, base_url: str, rate: float, centres: list[tuple[float, float]],
                 token: str | None) -> None:
        self.url = base_url + "/api/incidents"
        self.token = token
        self.rate = rate
        self.centres = centres
        self.ok = 0
        self.failed = 0
        self.latencies_ms: list[float] = []
        self.errors: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="incident-poster", daemon=True)

    def start(self) -> None:
        if self.rate > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(15)

    def _run(self) -> None:
        rng = random.Random(11)
        period = 1.0 / self.rate
        nxt = time.monotonic()
        i = 0
        while not self._stop.is_set():
            lon, lat = rng.choice(self.centres)
            body = json.dumps({
                "category": "city_order", "qualification": "city_management", "priority": 3,
                "title": f"压测占道经营 #{i}", "lon": lon + rng.uniform(-0.002, 0.002),
                "lat": lat + rng.uniform(-0.002, 0.002), "reporter": "bench"}).encode()
            req = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": f"Bearer {self.token}"})
            t = time.monotonic()
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    r.read()
                self.ok += 1
                self.latencies_ms.append((time.monotonic() - t) * 1000)
            except (OSError, urllib.error.HTTPError) as e:
                self.failed += 1
                self.errors.add(str(e)[:120])
            i += 1
            nxt += period
            self._stop.wait(max(0.0, nxt - time.monotonic()))


class _Child:
    """A child process of this benchmark speaking JSON lines on stdout."""

    def __init__(self, name: str, argv: list[str]) -> None:
        self.name = name
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, start_new_session=True)
        self.lines: list[dict[str, Any]] = []
        self._cv = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True, name=f"{name}-out")
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                obj = json.loads(raw)
            except ValueError:
                continue
            with self._cv:
                self.lines.append(obj)
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    def wait_for(self, key: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                for obj in self.lines:
                    if key in obj:
                        return obj
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise RuntimeError(f"{self.name}: no {key!r} line (rc {self.proc.poll()})")
                self._cv.wait(min(left, 0.5))

    def send(self, line: str) -> None:
        if self.proc.stdin is not None and self.proc.poll() is None:
            with contextlib.suppress(BrokenPipeError, OSError):
                self.proc.stdin.write(line.encode() + b"\n")
                self.proc.stdin.flush()

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                if self.proc.stdin is not None:
                    self.proc.stdin.close()
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._reader.join(5)


def _wait_quiet(hub: HubProcess, quiet_s: float, limit_s: float) -> int:
    """The hub's seq once it has not moved for ``quiet_s`` (at most ``limit_s``)."""
    deadline = time.monotonic() + limit_s
    last = -1
    since = time.monotonic()
    while True:
        seq = int(hub.health().get("seq", 0) or 0)
        if seq != last:
            last, since = seq, time.monotonic()
        elif time.monotonic() - since >= quiet_s or time.monotonic() > deadline:
            return seq
        time.sleep(0.2)


def run(args: argparse.Namespace) -> dict[str, Any]:
    env = BenchEnv.from_environ()
    if not args.client_procs:
        args.client_procs = client_procs_for(args.clients)
    if not 1 <= args.client_procs <= MAX_CLIENT_PROCS or args.clients < args.client_procs:
        raise ValueError(f"--client-procs must be 1..{MAX_CLIENT_PROCS} and at most --clients")
    rate = args.rate or float(args.units)
    unit_prefix = f"{UNIT_PREFIX}{secrets.token_hex(2)}-"
    run_id = f"{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}"
    load_start = load_avg()
    say(f"run {run_id}: load average {load_start} on {os.cpu_count()} CPUs")
    db = ScratchDatabase(env.database_url, f"bench_console_{run_id}", keep=args.keep_db)
    client_id = f"gridhub-console-bench-{run_id}"
    hub_env = {**os.environ, "HUB_DATABASE_URL": db.url, "HUB_MQTT_CLIENT_ID": client_id,
               "HUB_MQTT_SHARE_GROUP": f"consolebench{run_id.replace('_', '')}",
               "HUB_HTTP_PORT": str(env.http_port)}
    hub = HubProcess(hub_env, HUB_ROLES, env.var_dir / "log" / f"bench-console-{run_id}.log")
    units_file = env.var_dir / "log" / f"bench-console-{run_id}-units.json"
    children: list[_Child] = []
    gps: _Child | None = None
    poster: IncidentPoster | None = None
    profiler: subprocess.Popen[bytes] | None = None
    hard_timeout = CONNECT_TIMEOUT_S + args.warmup + args.duration + 120.0
    try:
        db.create()
        say(f"scratch database {db.name}: the town and {args.units} bench units")
        subprocess.run([sys.executable, "-m", "hub", "load-town"], cwd=ROOT, env=hub_env,
                       check=True, stdout=subprocess.DEVNULL)
        ids, centres = insert_units(db.url, args.units, unit_prefix)
        units_file.parent.mkdir(parents=True, exist_ok=True)
        units_file.write_text(json.dumps({"ids": ids, "centres": centres}))
        hub.start()
        hub.wait_healthy()
        assert hub.pid is not None
        say(f"hub pid {hub.pid} ready (log {hub.log_path})")
        probes = Probes(hub.pid, {"hub": hub.pid, "broker": env.pid_of("mqtt/mosquitto.pid"),
                                  "db": env.pid_of("pg/postmaster.pid")})
        me = [sys.executable, "-m", "simulators.bench.console"]
        url = f"ws://127.0.0.1:{hub.port}/ws/live?token={hub.token}"
        t_conn = time.monotonic()
        for i, n in enumerate(split_evenly(args.clients, args.client_procs)):
            children.append(_Child(f"clients{i}", [
                *me, "--role", "clients", "--url", url, "--clients", str(n),
                "--hard-timeout", str(hard_timeout)]))
        for ch in children:
            ch.wait_for("ready", CONNECT_TIMEOUT_S)
        say(f"{args.clients} clients connected in {time.monotonic() - t_conn:.1f}s "
            f"(hub reports {hub.health().get('clients')}); starting GPS at {rate:g} fixes/s "
            f"and {args.incident_rate:g} cases/s")
        gps = _Child("gps", [*me, "--role", "gps", "--port", str(env.mqtt_port),
                             "--units-file", str(units_file), "--rate", str(rate),
                             "--duration", str(args.warmup + args.duration + 1.0)])
        gps.wait_for("connected", GPS_CONNECT_TIMEOUT_S + 10.0)
        for ch in children:
            probes.procs[ch.name] = ch.proc.pid
        probes.procs["generator"] = gps.proc.pid
        poster = IncidentPoster(f"http://127.0.0.1:{hub.port}", args.incident_rate, centres,
                                hub.token)
        poster.start()
        time.sleep(args.warmup)

        seq0 = int(hub.health().get("seq", 0) or 0)
        for ch in children:
            ch.send("reset")
        probes.mark("start")
        if args.profile:
            profiler = start_profiler(hub.pid, args.duration, args.profile)
        t0 = time.monotonic()
        next_report = t0 + 10.0
        while time.monotonic() - t0 < args.duration:
            probes.sample_rss()
            if hub.proc is not None and hub.proc.poll() is not None:
                raise RuntimeError(f"the hub died during the run:\n{hub.log_tail()}")
            if time.monotonic() >= next_report:
                h = hub.health()
                say(f"t={time.monotonic() - t0:5.1f}s hub seq {h.get('seq')}, "
                    f"{h.get('clients')} clients, {poster.ok} cases posted, "
                    f"RSS {probes.peak_rss_kb / 1024:.0f} MB, load {load_avg()}")
                next_report += 10.0
            time.sleep(0.25)
        probes.mark("end")
        for ch in children:
            ch.send("end")
        seq1 = int(hub.health().get("seq", 0) or 0)
        poster.stop()
        gps_rep = gps.wait_for("sent", 60.0)
        final_seq = _wait_quiet(hub, QUIET_S, 30.0)
        say(f"load stopped; final seq {final_seq}; clients settling")
        for ch in children:
            ch.send(f"stop {final_seq}")
        reps = [ch.wait_for("pos_hist", SETTLE_S + 30.0) for ch in children]
        hwm_kb = proc_status_kb(hub.pid, "VmHWM") or probes.peak_rss_kb
        health = hub.health()
        for ch in children:
            ch.stop()
        time.sleep(1.0)
        # Connections the hub still counts once every client has closed (its feed notices a
        # closed socket only when it next sends to it).
        lingering = hub.health().get("clients")
        with SyncDb(db.url) as sdb:
            assigned = int(sdb.fetchval(
                "SELECT count(*) FROM incidents WHERE assigned_unit LIKE $1", unit_prefix + "%"))
            positions_stored = int(sdb.fetchval(
                "SELECT count(*) FROM positions WHERE unit_id LIKE $1", unit_prefix + "%"))
        if profiler is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                profiler.wait(30)
    finally:
        if profiler is not None and profiler.poll() is None:
            profiler.terminate()
            profiler.wait()
        if poster is not None:
            poster.stop()
        for ch in [*children, *([gps] if gps else [])]:
            ch.stop()
        rc = hub.stop()
        if hub.proc is not None:
            say(f"hub {hub.pid} stopped (rc {rc})")
            forget_mqtt_session(env.mqtt_host, env.mqtt_port, client_id)
        drop_quietly(db)
        with contextlib.suppress(OSError):
            units_file.unlink()

    win = probes.between("start", "end")
    window_s = win["seconds"]
    pos_hist, ev_hist, lag_hist = Histogram(), Histogram(), Histogram()
    by_kind: dict[str, Histogram] = {}
    for r in reps:
        pos_hist.merge_sparse(r["pos_hist"])
        ev_hist.merge_sparse(r["ev_hist"])
        lag_hist.merge_sparse(r["lag_hist"])
        for kind, sparse in r["ev_hist_by_kind"].items():
            by_kind.setdefault(kind, Histogram()).merge_sparse(sparse)
    positions = sum(r["positions"] for r in reps)
    events = sum(r["events"] for r in reps)
    gaps = sum(r["gaps_internal"] + r["gaps_tail"] for r in reps)
    clients_cpu = sum(win.get(f"{ch.name}_cpu_s", 0.0) for ch in children)
    feed_stats: dict[str, Any] = health.get("event_feed") or {}
    feed_lag: dict[str, Any] = feed_stats.get("ts_to_bus_ms") or {}
    post_lat = sorted(poster.latencies_ms) if poster else []
    return {
        "benchmark": "console",
        "clients": args.clients,
        "clients_ready": sum(r["ready"] for r in reps),
        "units": args.units,
        "events_per_s": round((positions + events) / window_s, 1),
        "positions_per_s": round(positions / window_s, 1),
        "feed_events_per_s": round(events / window_s, 1),
        "positions_per_unit_s": round(positions / window_s / args.clients / args.units, 3),
        # Issue 16's name for it, and the slowest client's: every client must get them.
        "position_rate_per_unit": round(positions / window_s / args.clients / args.units, 3),
        "position_rate_per_unit_min": round(
            min(r["min_positions"] for r in reps) / window_s / args.units, 3),
        **pos_hist.summary(),
        **ev_hist.summary("event_"),
        "event_by_kind": event_summary_by_kind(by_kind),
        **{k: v for k, v in lag_hist.summary("client_loop_lag_").items()
           if not k.endswith(("samples", "p90_ms"))},
        "gaps": gaps,
        "gaps_internal": sum(r["gaps_internal"] for r in reps),
        "gaps_tail": sum(r["gaps_tail"] for r in reps),
        "clients_with_gaps": sum(r["clients_with_gaps"] for r in reps),
        "duplicates": sum(r["duplicates"] for r in reps),
        "resyncs": sum(r["resyncs"] for r in reps),
        "resync_skipped": sum(r["resync_skipped"] for r in reps),
        "reconnects": sum(r["reconnects"] for r in reps),
        "client_errors": sorted({e for r in reps for e in r["errors"]})[:5],
        "events_generated": seq1 - seq0,
        "events_per_client_min": min(r["min_events"] for r in reps),
        "events_per_client_max": max(r["max_events"] for r in reps),
        "final_seq": final_seq,
        "peak_rss_mb": round(hwm_kb / 1024, 1),
        "hub_cpu_pct": win.get("hub_cpu_pct"),
        "broker_cpu_pct": win.get("broker_cpu_pct"),
        "db_cpu_pct": win.get("db_cpu_pct"),
        "generator_cpu_pct": win.get("generator_cpu_pct"),
        "clients_cpu_pct": round(100.0 * clients_cpu / window_s, 1),
        "client_procs": args.client_procs,
        "machine_busy_pct": win["machine_busy_pct"],
        "other_cpu_pct": win["other_cpu_pct"],
        "gps_target_per_s": rate,
        "gps_fixes_per_s": gps_rep.get("fixes_per_s"),
        "gps_sent": gps_rep.get("sent"),
        "gps_acked": gps_rep.get("acked"),
        "gps_cpu_us_per_fix": gps_rep.get("cpu_us_per_fix"),
        "gps_fixes_per_unit_s": (round(gps_rep["fixes_per_s"] / args.units, 3)
                                 if gps_rep.get("fixes_per_s") else None),
        # The hub's side of event_*: each event's ts to the hub's bus (its transaction,
        # commit, NOTIFY, the event feed), over the hub's last outbox.LAG_WINDOW events
        # (the whole run, warm-up included); the rest of event_* is the fan-out and the
        # clients.
        "event_ts_to_bus_p50_ms": feed_lag.get("p50"),
        "event_ts_to_bus_p99_ms": feed_lag.get("p99"),
        "events_on_hub_bus": feed_stats.get("published"),
        "events_from_notices": feed_stats.get("from_notices"),
        "dispatch_decisions": health.get("dispatch_decisions"),
        "positions_stored": positions_stored,
        "position_rows_hub": (health.get("ingest") or {}).get("position_rows"),
        "incidents_posted": poster.ok if poster else 0,
        "incidents_failed": poster.failed if poster else 0,
        "incident_post_p50_ms": _r(percentile(post_lat, 50, nearest_rank=True)),
        "incident_post_p99_ms": _r(percentile(post_lat, 99, nearest_rank=True)),
        "incidents_on_bench_units": assigned,
        "hub_clients_after_close": lingering,
        "window_s": round(window_s, 1),
        "load": {"start": load_start, "end": load_avg()},
        "ncpu": os.cpu_count(),
        "run_id": run_id,
        # For the report's latency CDFs (simulators/bench_report.py): 1 ms bins, sparse.
        "pos_hist": pos_hist.to_sparse(),
        "event_hist": ev_hist.to_sparse(),
    }


def event_summary_by_kind(hists: dict[str, Histogram]) -> dict[str, dict[str, Any]]:
    """``{kind: {p50_ms, p99_ms, max_ms, samples}}``, the kinds with most samples first."""
    out: dict[str, dict[str, Any]] = {}
    for kind, h in sorted(hists.items(), key=lambda kv: (-kv[1].total, kv[0])):
        s = h.summary()
        out[kind] = {k: s[k] for k in ("p50_ms", "p99_ms", "max_ms", "samples")}
    return out


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--units", type=int, default=2000, help="moving bench units")
    p.add_argument("--rate", type=float, default=0.0,
                   help="GPS fixes/s in total (default: one per unit per second)")
    p.add_argument("--clients", type=int, default=200, help="websocket clients")
    p.add_argument("--client-procs", type=int, default=0,
                   help="processes the clients are spread over (default: one per "
                        f"{CLIENTS_PER_PROC} clients, at most {MAX_CLIENT_PROCS})")
    p.add_argument("--incident-rate", type=float, default=2.0,
                   help="operator cases posted per second (sequenced events)")
    p.add_argument("--warmup", type=float, default=10.0,
                   help="seconds of load before the measurement window")
    p.add_argument("--duration", type=float, default=60.0, help="measurement window, s")
    p.add_argument("--keep-db", action="store_true", help="keep the scratch database")
    p.add_argument("--profile", type=Path, metavar="FILE",
                   help="py-spy the hub during the window: FILE.svg flame graph or FILE.txt "
                        "collapsed stacks")


def _role_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("internal (the benchmark's own child processes)")
    g.add_argument("--role", choices=("driver", "clients", "gps"), default="driver",
                   help=argparse.SUPPRESS)
    g.add_argument("--url", help=argparse.SUPPRESS)
    g.add_argument("--hard-timeout", type=float, default=600.0, help=argparse.SUPPRESS)
    g.add_argument("--port", type=int, default=1883, help=argparse.SUPPRESS)
    g.add_argument("--units-file", help=argparse.SUPPRESS)
    g.add_argument("--seed", type=int, default=7, help=argparse.SUPPRESS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulators.bench.console",
                                     description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    _role_arguments(parser)
    args = parser.parse_args(argv)
    if args.role == "clients":
        print(json.dumps(asyncio.run(_clients_main(args))), flush=True)
        return 0
    if args.role == "gps":
        args.duration = float(args.duration)
        print(json.dumps(asyncio.run(_gps_main(args))), flush=True)
        return 0
    return run_and_report("console", run, args)


if __name__ == "__main__":
    sys.exit(main())
