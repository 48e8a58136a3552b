"""The alarm benchmark's view of the hub: triggers and their timings, the probe alarms,
and the live-feed watcher that stamps when each alarm reached a console."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from ingest import wire
from simulators.bench.alarm_setup import (
    CLEAR_LEL,
    GAS_METRIC,
    PROBE_TIMEOUT_S,
    RAISE_LEL,
    raised_alarms,
    say,
)
from simulators.bench.harness import (
    HubProcess,
    machine_ticks,
    proc_status_kb,
    tree_cpu_delta,
    tree_cpu_s,
)
from simulators.mqtt_pub import Publisher

# --------------------------------------------------------------------------- the run


@dataclass
class Trigger:
    device: str
    sent_at: float = 0.0
    seq: int | None = None
    event_ts: float | None = None
    received_at: float | None = None

    @property
    def latency_ms(self) -> float | None:
        if self.received_at is None:
            return None
        return (self.received_at - self.sent_at) * 1000.0


@dataclass
class Probes:
    """CPU and memory of the processes around a run, sampled at named marks.

    ``procs``: name -> pid; each counts with its live direct children (PostgreSQL's
    backends, the load generator's mosquitto_pub processes). ``hub_pid``'s peak RSS is
    sampled by ``sample_rss`` (VmHWM at the end is the exact figure)."""

    hub_pid: int
    procs: dict[str, int | None] = field(default_factory=dict)
    peak_rss_kb: int = 0
    marks: dict[str, dict[str, Any]] = field(default_factory=dict)

    def sample_rss(self) -> None:
        self.peak_rss_kb = max(self.peak_rss_kb, proc_status_kb(self.hub_pid, "VmRSS") or 0)

    def mark(self, name: str, **extra: Any) -> None:
        busy, total = machine_ticks()
        self.marks[name] = {"t": time.monotonic(), "wall": time.time(), "busy": busy,
                            "total": total, "cpu": {k: tree_cpu_s(p) for k, p in
                                                    self.procs.items() if p is not None},
                            **extra}

    def between(self, a: str, b: str) -> dict[str, Any]:
        """``<name>_cpu_s``/``<name>_cpu_pct`` (100 = one core) of every process from mark
        ``a`` to ``b``, the machine's busy share (100 = every core) and ``other_cpu_pct``:
        CPU used meanwhile by everything else (other sessions on a shared machine)."""
        m0, m1 = self.marks[a], self.marks[b]
        dt = max(1e-9, m1["t"] - m0["t"])
        out: dict[str, Any] = {"seconds": dt}
        ours = 0.0
        for name, after in m1["cpu"].items():
            used = tree_cpu_delta(m0["cpu"].get(name, {}), after)
            ours += used
            out[f"{name}_cpu_s"] = round(used, 2)
            out[f"{name}_cpu_pct"] = round(100.0 * used / dt, 1)
        busy_s = (m1["busy"] - m0["busy"]) / os.sysconf("SC_CLK_TCK")
        out["machine_busy_pct"] = round(100.0 * (m1["busy"] - m0["busy"])
                                        / max(1, m1["total"] - m0["total"]), 1)
        out["other_cpu_pct"] = round(100.0 * max(0.0, busy_s - ours) / dt, 1)
        return out


def _hub_rows(hub: HubProcess) -> int:
    return int(hub.ingest_counters().get("telemetry_rows", 0) or 0)


class FeedWatcher:
    """One websocket client on /ws/live that stamps the alarms it is waiting for."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.waiting: dict[str, Trigger] = {}
        self.frames = 0
        self.events = 0
        self.resyncs = 0
        self.seen: asyncio.Event = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        self._ws = await connect(self.url, max_size=None, compression=None,
                                 ping_interval=None, open_timeout=20,
                                 close_timeout=2)
        await self._ws.send(json.dumps({"type": "hello", "last_seq": None}))
        snap = json.loads(await asyncio.wait_for(self._ws.recv(), 20))
        if snap.get("type") != "snapshot":
            raise RuntimeError(f"expected a snapshot, got {str(snap)[:200]}")
        self._task = asyncio.create_task(self._read(), name="alarm-bench.feed")
        return int(snap["seq"])

    def expect(self, t: Trigger) -> None:
        self.waiting[t.device] = t

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            now = time.time()
            frame = json.loads(msg)
            self.frames += 1
            self.events += len(frame.get("events") or ())
            for device, seq, ev_ts in raised_alarms(frame):
                t = self.waiting.pop(device, None)
                if t is not None and t.received_at is None:
                    t.received_at, t.seq, t.event_ts = now, seq, ev_ts
                    self.seen.set()
            if frame.get("type") == "resync":  # a fresh snapshot follows on its own
                self.resyncs += 1
                say("the feed told the client to resync (it fell behind)")

    async def stop(self) -> None:
        ws, self._ws = self._ws, None
        task, self._task = self._task, None
        if ws is not None:
            await ws.close()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _probe(feed: FeedWatcher, pub: Publisher, probe_id: str) -> float:
    """End to end once, before the load: publish an alarm reading for the probe detector
    until its alarm arrives (the hub's subscription goes live shortly after /api/health
    says ok). Returns the probe's latency in ms."""
    deadline = time.monotonic() + PROBE_TIMEOUT_S
    t = Trigger(probe_id)
    feed.expect(t)
    topic = wire.telemetry_topic(probe_id)
    while time.monotonic() < deadline:
        t.sent_at = time.time()
        await pub.publish(topic, wire.encode_telemetry(t.sent_at, {GAS_METRIC: RAISE_LEL}))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_until(lambda: t.received_at is not None, feed), 1.0)
        if t.received_at is not None:
            await pub.publish(topic, wire.encode_telemetry(time.time(), {GAS_METRIC: CLEAR_LEL}))
            return t.latency_ms or 0.0
    raise RuntimeError(f"no alarm for the probe reading within {PROBE_TIMEOUT_S:.0f}s")


async def _until(cond: Any, feed: FeedWatcher) -> None:
    while not cond():
        feed.seen.clear()
        if cond():
            return
        await feed.seen.wait()
