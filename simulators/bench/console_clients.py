"""The console benchmark's websocket client processes (``--role clients``): ``n``
connections on ``/ws/live`` each, driven by ``reset``/``end``/``stop`` lines on stdin, a
JSON report on stdout. See simulators/bench/console.py for what is measured."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from simulators.bench.console_counts import Histogram, SeqTracker, self_cpu

# After the load stops, the clients get this long to reach the hub's final seq.
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

def client_procs_for(clients: int) -> int:
    """Client processes for ``clients`` connections: one per ``CLIENTS_PER_PROC``, within
    1..``MAX_CLIENT_PROCS``."""
    return max(1, min(MAX_CLIENT_PROCS, math.ceil(clients / CLIENTS_PER_PROC)))


def split_evenly(total: int, parts: int) -> list[int]:
    q, r = divmod(total, parts)
    return [q + (1 if i < r else 0) for i in range(parts)]


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


async def clients_main(args: argparse.Namespace) -> dict[str, Any]:
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
                fleet.cpu_marks = [self_cpu()]
                out({"reset": True})
            elif cmd[:1] == ["end"]:
                fleet.counting = False
                fleet.window.append(time.monotonic())
                fleet.cpu_marks.append(self_cpu())
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
