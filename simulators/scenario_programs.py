"""What the scenario's devices send: per-device programs of segments, back-dated
history, and a dry run of the readings without a hub."""

from __future__ import annotations

import heapq
import json
import logging
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from simulators.devices import NO_FAULTS, DeviceGenerator, make_generator
from simulators.scenario_model import PRIME_READINGS, PROGRAM_KINDS, History, Scenario, Step
from simulators.scenario_selectors import _Town

log = logging.getLogger("simulators.scenario")


# ---------------------------------------------------------------- device programs

@dataclass(slots=True)
class Segment:
    """A metric's course from ``start`` (scenario s): ramp to ``to`` over ``end - start``;
    ``to`` None hands the metric back to the normal pattern. ``frm`` None: taken from the
    value last sent when the segment begins; ``factor`` scales the change (plume falloff)."""

    start: float
    end: float
    frm: float | None
    to: float | None
    factor: float = 1.0
    jitter: float = 0.0
    begun: bool = False
    target: float = 0.0


class DeviceProgram:
    """What one owned device sends: normal values (the demo's generator, no faults or
    events) with scenario overrides per metric; silent while offline."""

    def __init__(self, device: Mapping[str, Any], seed: int) -> None:
        self.device = device
        self.id: str = device["id"]
        self.interval_s = float(device.get("interval_s", 60))  # scenario seconds
        self.gen: DeviceGenerator = make_generator(device, seed, NO_FAULTS)
        self.rng = random.Random(f"{seed}:{self.id}:scenario")
        self.segments: dict[str, list[Segment]] = {}
        self.offline = False
        self.last: dict[str, float] = {}
        self.sent = 0

    def set(self, metric: str, seg: Segment) -> None:
        self.segments.setdefault(metric, []).append(seg)

    def values(self, tau: float, t: float) -> dict[str, float]:
        """Values at scenario time ``tau`` / wall time ``t`` (non-decreasing)."""
        out = self.gen.sample(t) or {}
        for metric, segs in self.segments.items():
            seg = None
            for s in segs:  # the latest-starting segment that has begun (ties: the later)
                if s.start <= tau and (seg is None or s.start >= seg.start):
                    seg = s
            if seg is None or seg.to is None:
                continue
            if not seg.begun:
                frm = seg.frm if seg.frm is not None else self.last.get(metric,
                                                                         out.get(metric, 0.0))
                seg.frm = frm
                seg.target = frm + (seg.to - frm) * seg.factor
                seg.begun = True
            assert seg.frm is not None
            span = seg.end - seg.start
            w = 1.0 if span <= 0 or tau >= seg.end else (tau - seg.start) / span
            v = seg.frm + (seg.target - seg.frm) * w
            if seg.jitter:
                v += self.rng.uniform(-seg.jitter, seg.jitter)
            out[metric] = round(max(0.0, v), self.gen.DECIMALS.get(metric, 2))
        self.last.update(out)
        return out


def history_readings(h: History, device_id: str, now: float, seed: int
                     ) -> list[tuple[float, dict[str, float]]]:
    """The back-dated readings of one history table for one device, oldest first; the
    last one ``every`` before ``now``."""
    rng = random.Random(f"{seed}:{device_id}:history")
    n = len(next(iter(h.values.values())))
    out = []
    for i in range(n):
        ts = now - (n - i) * h.every
        vals = {m: round(max(0.0, series[i] + (rng.uniform(-h.jitter, h.jitter)
                                               if h.jitter else 0.0)), 2)
                for m, series in h.values.items()}
        out.append((ts, vals))
    return out


def encode_batch(readings: Sequence[tuple[float, Mapping[str, float]]]) -> bytes:
    """Several readings of one device in one native telemetry message (a JSON array)."""
    return json.dumps([{"ts": round(ts, 3), "values": dict(v)} for ts, v in readings],
                      separators=(",", ":")).encode()


def make_programs(sc: Scenario) -> dict[str, DeviceProgram]:
    town = {d["id"]: d for d in sc.town["devices"]}
    return {d: DeviceProgram(town[d], sc.seed) for d in sc.devices}


def apply_program(sc: Scenario, programs: Mapping[str, DeviceProgram], st: Step) -> None:
    """Apply a publish/offline/online step to the device programs (no I/O)."""
    spec = st.spec
    if st.kind == "offline":
        for d in spec["devices"]:
            programs[d].offline = True
        return
    if st.kind == "online":
        for d in spec["devices"]:
            prog = programs[d]
            prog.offline = False
            for m in prog.segments:
                prog.set(m, Segment(st.at, st.at, None, None))
        return
    town = _Town(sc.town)
    src = town.devices.get(spec.get("source", ""))
    for d in spec["devices"]:
        prog = programs[d]
        if "every" in spec:
            prog.interval_s = spec["every"]
        start, factor = st.at, 1.0
        if src is not None:
            dist = town.distance_m(town.devices[d], src)
            start += dist / spec["spread_mps"]
            factor = math.exp(-dist / spec["falloff_m"])
        if spec["values"] == "normal":
            for m in prog.segments:
                prog.set(m, Segment(start, start, None, None))
            continue
        for metric, (frm, to) in spec["values"].items():
            prog.set(metric, Segment(start, start + spec["over"], frm, to, factor,
                                     spec["jitter"]))


def initial_readings(sc: Scenario, programs: Mapping[str, DeviceProgram], now: float
                     ) -> dict[str, list[tuple[float, dict[str, float]]]]:
    """Per owned device, what it sends at the start, oldest first: its history (or
    ``PRIME_READINGS`` normal readings one interval apart) and its reading at the start
    (none while offline). Apply the steps at 0 first: they hold from the start."""
    history: dict[str, list[tuple[float, dict[str, float]]]] = {}
    for h in sc.history:
        for d in h.devices:
            history.setdefault(d, []).extend(history_readings(h, d, now, sc.seed))
    out = {}
    for d, prog in programs.items():
        if d in history:
            past = sorted(history[d], key=lambda r: r[0])
        else:
            past = [(now - k * prog.interval_s, prog.values(-k * prog.interval_s,
                                                             now - k * prog.interval_s))
                    for k in range(PRIME_READINGS, 0, -1)]
        current = prog.values(0.0, now)
        if not prog.offline:
            past.append((now, current))
        out[d] = past
    return out


def dry_run(sc: Scenario, *, t0: float, time_scale: float = 1.0
            ) -> list[tuple[float, str, dict[str, float]]]:
    """Every reading the player would send, as (device time, device, values) in time
    order, without a hub: what the tests feed to the hub's rule code."""
    programs = make_programs(sc)
    steps = [st for st in sc.steps if st.kind in PROGRAM_KINDS]
    for st in steps:
        if st.at <= 0:
            apply_program(sc, programs, st)
    out = [(ts, d, v) for d, rs in initial_readings(sc, programs, t0).items() for ts, v in rs]
    heap = [(t0 + p.interval_s / time_scale, d) for d, p in programs.items()]
    heapq.heapify(heap)
    pending = [st for st in steps if st.at > 0]
    end = t0 + sc.duration / time_scale
    while heap and heap[0][0] <= end:
        due, d = heapq.heappop(heap)
        tau = (due - t0) * time_scale
        while pending and pending[0].at <= tau:
            apply_program(sc, programs, pending.pop(0))
        prog = programs[d]
        if not prog.offline:
            out.append((due, d, prog.values(tau, due)))
        heapq.heappush(heap, (due + prog.interval_s / time_scale, d))
    out.sort(key=lambda r: r[0])
    return out
