"""The loops of the demo's living town (simulators/run.py): devices publishing at their
intervals with staggered starts, patrol units moving and sending fixes, a scenario file
playing, and the status line; plus which devices a run takes and where units resume.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from simulators import fleet_formats
from simulators import scenario as scenario_files
from simulators.crews import Crews, api_headers
from simulators.devices import DeviceGenerator
from simulators.mqtt_pub import Publisher
from simulators.patrol import Fleet

# The demo runner's logger: its loops log under its name.
log = logging.getLogger("simulators.run")


# Patrol movement tick (s): fine enough that staggered GPS fixes stay spread out.
PATROL_TICK_S = 0.5
# Units that reported to the hub within this long start from there rather than from the town
# file's start points (a restarted simulator carries on; a stale fix is not trusted).
RESUME_POSITIONS_S = 3600.0
# Golden-ratio offsets spread the devices' first reports evenly over their intervals.
_GOLDEN = 0.6180339887498949

EVENT_WORDS = {"gas_detector": "gas leak", "smoke_detector": "smoke/fire",
               "air_station": "PM2.5 spike", "water_station": "high water",
               "traffic_counter": "traffic jam"}


def select_devices(devices: Sequence[Mapping[str, Any]], n: int | None
                   ) -> list[dict[str, Any]]:
    """The first ``n`` devices taking models in turn (every model stays represented), or all.
    More than the town has: copies with ids ``<id>-x<k>`` for load tests (unknown to the
    hub, which dead-letters them as ``unknown_device``)."""
    devs = [dict(d) for d in devices]
    if n is None or n == len(devs):
        return devs
    if n < len(devs):
        by_model: dict[str, list[dict[str, Any]]] = {}
        for d in devs:
            by_model.setdefault(d["model"], []).append(d)
        queues = [list(v) for _, v in sorted(by_model.items())]
        out: list[dict[str, Any]] = []
        while len(out) < n:
            for q in queues:
                if q and len(out) < n:
                    out.append(q.pop(0))
        return out
    out = list(devs)
    k = 2
    while len(out) < n:
        for d in devs:
            if len(out) >= n:
                break
            out.append({**d, "id": f"{d['id']}-x{k}"})
        k += 1
    return out


async def last_positions(hub_url: str) -> dict[str, tuple[float, float]]:
    """The hub's last known (lon, lat) of each unit that has reported within
    ``RESUME_POSITIONS_S``, so a restart carries on where the units were; {} if the hub is
    not there (the town file's start points are used)."""
    try:
        async with httpx.AsyncClient(base_url=hub_url, timeout=2.0,
                                     headers=api_headers()) as client:
            r = await client.get("/api/units")
            r.raise_for_status()
            units = r.json()
    except (httpx.HTTPError, ValueError):
        return {}
    now = time.time()
    out = {}
    for u in units:
        ts = u.get("position_ts")
        if isinstance(ts, int | float) and now - ts < RESUME_POSITIONS_S \
                and u.get("lon") is not None and u.get("lat") is not None:
            out[str(u["id"])] = (float(u["lon"]), float(u["lat"]))
    if out:
        log.info("%d units resume from their last reported positions", len(out))
    return out


class Stats:
    def __init__(self) -> None:
        self.telemetry = 0
        self.gps = 0
        self.silent = 0  # samples a dead device did not send


async def run_devices(gens: list[DeviceGenerator], pub: Publisher, stats: Stats,
                      paused: set[str] | None = None) -> None:
    """Publish every device at its interval; devices in ``paused`` (a scenario drives them)
    are skipped until they leave it."""
    wires = [fleet_formats.device_wire(g.device) for g in gens]
    now = time.time()
    heap = [(now + g.interval_s * ((k * _GOLDEN) % 1.0), k) for k, g in enumerate(gens)]
    heapq.heapify(heap)
    while heap:
        due, k = heap[0]
        wait = due - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
            continue
        heapq.heappop(heap)
        g = gens[k]
        if paused and g.id in paused:
            heapq.heappush(heap, (due + g.interval_s, k))
            continue
        ts = time.time()
        before = g.events_started
        values = g.sample(ts)
        if g.events_started != before and g.event is not None:
            log.info("event: %s at %s %s (%s) for %.0f s", EVENT_WORDS.get(g.model, g.model),
                     g.id, g.device.get("name", ""),
                     ", ".join(f"{m} -> {v:.1f}" for m, v in g.event.peak.items()),
                     g.event.duration)
        if values is None:
            stats.silent += 1
        else:
            await pub.publish(wires[k].topic, wires[k].encode(ts, values))
            stats.telemetry += 1
        nxt = due + g.interval_s
        if nxt < ts:  # fell behind (broker away, window full): skip, do not burst
            nxt = ts + g.interval_s
        heapq.heappush(heap, (nxt, k))


async def run_patrol(fleet: Fleet, pub: Publisher, stats: Stats,
                     tick: float = PATROL_TICK_S) -> None:
    phones = {uid: fleet_formats.unit_wire(uid) for uid in fleet.units}
    last = time.monotonic()
    while True:
        await asyncio.sleep(tick)
        m = time.monotonic()
        dt, last = m - last, m
        now = time.time()
        fleet.step(now, dt)
        for fix in fleet.due_fixes(now):
            phone = phones[fix.unit_id]
            await pub.publish(phone.topic, phone.encode(fix.ts, fix.lat, fix.lon, fix.speed,
                                                        fix.heading, fix.acc))
            stats.gps += 1


def status_line(pub: Publisher, stats: Stats, gens: list[DeviceGenerator],
                crews: Crews | None, fleet: Fleet) -> str:
    rep = pub.report()
    events = sum(g.events_started for g in gens)
    in_event = sum(1 for g in gens if g.event is not None)
    dead = sum(1 for g in gens if g.last_t is not None and g.last_t < g.dead_until)
    moving = sum(1 for u in fleet.units.values() if u.mover.speed > 0)
    parts = [
        f"published {rep.published} (telemetry {stats.telemetry}, gps {stats.gps})",
        f"{rep.rate:.1f} msg/s (mean {rep.mean_rate:.1f})",
        f"acked {rep.acked}",
        f"outstanding {rep.outstanding}",
    ]
    if rep.refused or rep.dropped:
        parts.append(f"refused {rep.refused} dropped {rep.dropped}")
    parts.append(f"alarms triggered {events} (active {in_event})")
    parts.append(f"devices dead {dead}")
    parts.append(f"units moving {moving}/{len(fleet.units)}")
    if crews is not None:
        acts = sum(crews.actions.values())
        detail = " ".join(f"{a}={n}" for a, n in sorted(crews.actions.items()))
        parts.append(f"crew actions {acts}" + (f" ({detail})" if detail else "")
                     + f", cases open {len(crews.tasks)}, conflicts {crews.conflicts}"
                     + f", commands {sum(crews.commands.values())}")
    return " | ".join(parts)


async def run_status(every: float, *args: Any) -> None:
    while True:
        await asyncio.sleep(every)
        log.info("%s", status_line(*args))


async def run_scenario(player: scenario_files.Player, paused: set[str]) -> None:
    """Play a scenario file, log its result, hand its devices back to the town."""
    try:
        result = await player.play()
        for f in result.failures:
            log.warning("scenario expectation failed: %s", f)
        log.info("%s; the town carries on", result.summary())
    except Exception:
        log.exception("scenario %s stopped with an error", player.sc.name)
    finally:
        paused.clear()
