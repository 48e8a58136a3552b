"""The demo's living town: sensors, patrol units and field crews in one asyncio process.

``python -m simulators.run [--town FILE] [--devices N] [--speed X] [--no-crews]
[--duration S] [--scenario NAME] [--time-scale X]`` (``./hubctl demo`` starts it with the
demo's environment). Settings come from the environment: ``HUB_SIM_MQTT_URL`` (the broker
and the simulators' gateway account, ``mqtt://user:pass@host:port``; else ``HUB_MQTT_URL``;
simulators/mqtt_login.py) and ``HUB_HTTP_PORT`` (the hub's REST API on 127.0.0.1,
used by the crews).

- Devices: every device of the town file reports at its ``interval_s``, first reports
  staggered over the interval (golden-ratio offsets) so the load is smooth; values from
  simulators/devices.py, with rare alarm-worthy events (``--event-every``).
- Patrol: every unit moves on the roads (simulators/patrol.py) and publishes a GPS fix every
  ``--gps-interval`` seconds.
- Crews: simulated units answer their dispatches through the REST API
  (simulators/crews.py); ``--speed`` shortens their human delays.
- Formats: a share of the devices report through SenML gateways and a share of the phones
  run OwnTracks (simulators/fleet_formats.py), as in a real town's mixed fleet.
- Citizens: reports through Open311 and hotline calls through the API, each registered (or
  cancelled as a duplicate) by the demo's operator a little later (simulators/citizens.py,
  ``--citizens-every``).
- Scale: ``--publishers N`` splits the devices and units over N processes (this one and
  N-1 children started with ``--shard k/N``, each with the crews of its units; citizens
  report from this one); with a town
  file scaled by simulators/town_scale.py (``HUB_TOWN_FILE``) the same demo shows 2,000
  units and 10,000 devices.
- ``--scenario NAME``: a load profile (normal, busy, calm) or a scenario file
  simulators/scenarios/NAME.toml (simulators/scenario.py). A scenario file plays alongside
  the living town: it takes over the devices it names for its duration (the background
  stops publishing them) and hands them back afterwards; patrols and crews keep running;
  background events are off unless ``--event-every`` is given. ``--time-scale`` plays it
  faster than real time. Its steps and expectations are logged as they happen; the town
  lives on afterwards until Ctrl-C or ``--duration``.

Publishing is QoS 1 through ``simulators.mqtt_pub.Publisher`` (bounded unacknowledged
window). One status line every ``--status-every`` seconds. SIGINT/SIGTERM stop it within
about two seconds; ``--duration`` stops it by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from core import log as hub_log
from ingest.mqtt import BrokerAddress
from simulators import citizens as citizen_reports
from simulators import fleet_formats
from simulators import scenario as scenario_files
from simulators.crews import Crews, CrewTiming, api_headers, listen_for_commands
from simulators.devices import (
    DEFAULT_EVENT_EVERY_S,
    DeviceGenerator,
    Faults,
    event_rates,
    make_generator,
)
from simulators.mqtt_login import gateway_url
from simulators.mqtt_pub import DEFAULT_WINDOW, Publisher
from simulators.patrol import DEFAULT_GPS_INTERVAL_S, Fleet, RoadGraph

log = logging.getLogger("simulators.run")

DEFAULT_TOWN = Path(os.environ.get("HUB_TOWN_FILE")
                    or Path(__file__).resolve().parent / "data" / "xuxiake.json")
STATUS_EVERY_S = 30.0
# Patrol movement tick (s): fine enough that staggered GPS fixes stay spread out.
PATROL_TICK_S = 0.5
# Time allowed for the last acknowledgements when stopping; the whole stop stays under 2 s.
STOP_FLUSH_S = 0.5
# Units that reported to the hub within this long start from there rather than from the town
# file's start points (a restarted simulator carries on; a stale fix is not trusted).
RESUME_POSITIONS_S = 3600.0
# Named setups for `./hubctl demo --scenario NAME`: event interval (s) and crew speed.
SCENARIOS: dict[str, dict[str, float]] = {
    "normal": {"event_every": DEFAULT_EVENT_EVERY_S, "speed": 1.0},
    "busy": {"event_every": 45.0, "speed": 3.0},  # a lively show: an event every ~45 s
    "calm": {"event_every": 0.0, "speed": 1.0},  # no events: a quiet day
}
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


async def amain(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    doc = json.loads(Path(args.town).read_text(encoding="utf-8"))
    story = None
    if args.scenario_file is not None:
        try:
            story = scenario_files.load(args.scenario_file, doc)
        except scenario_files.ScenarioError as e:
            log.error("%s", e)
            return 2
    devices = select_devices(doc["devices"], args.devices)
    rates = event_rates(devices, args.event_every)
    # The first publisher takes share 0 of --publishers; its children are told theirs.
    shard, shards = args.shard if args.shard[1] > 1 else (0, args.publishers)
    if shards > 1:  # this process publishes every shards-th device (the rates stay town-wide)
        devices = devices[shard::shards]
    gens = [make_generator(d, args.seed, Faults(event_rate_per_s=rates[d["id"]]))
            for d in devices]
    graph = RoadGraph.from_town(doc)
    positions = await last_positions(args.hub_url)
    # Each publisher moves its share of the units too, and its crews answer for them (the
    # hub's API and command topics serve them all); citizens report from the first only.
    units = doc["units"][shard::shards]
    fleet = Fleet(graph, units, args.seed, time.time(), args.gps_interval,
                  grids=doc["grids"]["features"], positions=positions)
    addr = BrokerAddress.parse(args.mqtt_url)
    pub = Publisher(addr, f"gridhub-sim-{os.getpid()}", window=args.window)
    children = start_publishers(args) if shard == 0 and args.publishers > 1 else []
    crews = None if args.no_crews else Crews(
        args.hub_url, fleet, seed=args.seed,
        timing=CrewTiming(speed=args.speed,
                          hub_time_scale=float(os.environ.get("HUB_SLA_TIME_SCALE", "1"))))
    msgs_per_s = sum(1.0 / g.interval_s for g in gens) + len(fleet.units) / args.gps_interval
    log.info("town %s: %d devices, %d units, %d road nodes; ~%.1f msg/s to %s:%s; crews %s; "
             "an event every ~%s s; seed %d", doc.get("name_en", doc.get("name")), len(gens),
             len(fleet.units), len(graph.nodes), msgs_per_s, addr.host, addr.port,
             "off" if crews is None else f"via {args.hub_url} (speed x{args.speed:g})",
             f"{args.event_every:g}" if args.event_every > 0 else "(never)", args.seed)

    start = asyncio.create_task(pub.start())
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait({start, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if not start.done():
        start.cancel()
    elif not start.result():
        log.warning("MQTT broker %s:%s not reachable yet; publishing as soon as it is",
                    addr.host, addr.port)

    stats = Stats()
    tasks = []
    listener = None
    paused: set[str] = set(story.devices) if story is not None else set()
    if not stop.is_set():
        tasks = [
            asyncio.create_task(run_devices(gens, pub, stats, paused), name="devices"),
            asyncio.create_task(run_patrol(fleet, pub, stats), name="patrol"),
            asyncio.create_task(run_status(args.status_every, pub, stats, gens, crews, fleet),
                                name="status"),
        ]
        if shard == 0 and args.citizens_every > 0:
            key = await citizen_reports.ensure_key(citizen_reports.var_dir(),
                                                   os.environ.get("HUB_DATABASE_URL"))
            who = citizen_reports.Citizens(doc, seed=args.seed, every_s=args.citizens_every)
            tasks.append(asyncio.create_task(citizen_reports.run_citizens(
                args.hub_url, who, api_headers(), key), name="citizens"))
        if crews is not None:
            tasks.append(asyncio.create_task(crews.run(), name="crews"))
            # The units' phones get their assignments on their command topics.
            listener = listen_for_commands(args.mqtt_url, crews, asyncio.get_running_loop(),
                                           f"gridhub-sim-phones-{os.getpid()}")
        if story is not None:
            player = scenario_files.Player(story, hub_url=args.hub_url, publisher=pub,
                                           time_scale=args.time_scale, alongside=True,
                                           crews_live=crews is not None)
            tasks.append(asyncio.create_task(run_scenario(player, paused), name="scenario"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(waiter), timeout=args.duration)
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                log.error("task %s failed: %r", t.get_name(), t.exception())
    waiter.cancel()
    for t in tasks:
        t.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=0.5)
    if listener is not None:
        listener.disconnect()
        listener.loop_stop()
    for child in children:  # they stop on SIGTERM within about two seconds, as this one
        child.terminate()
    await pub.stop(flush_timeout=STOP_FLUSH_S, join_timeout=0.6)
    for child in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=3)
    log.info("stopped: %s", status_line(pub, stats, gens, crews, fleet))
    return 0


def start_publishers(args: argparse.Namespace) -> list[subprocess.Popen[bytes]]:
    """The other ``--publishers`` processes: this command again with ``--shard k/N``, the
    same town, seed, event rate and crews (the environment's tokens are inherited); each
    publishes its share of the devices and units."""
    out = []
    for k in range(1, args.publishers):
        cmd = [sys.executable, "-m", "simulators.run", "--town", str(args.town),
               "--shard", f"{k}/{args.publishers}", "--seed", str(args.seed),
               "--event-every", str(args.event_every), "--speed", str(args.speed),
               "--gps-interval", str(args.gps_interval), "--citizens-every", "0",
               "--status-every", str(args.status_every)]
        if args.no_crews:
            cmd.append("--no-crews")
        if args.devices is not None:
            cmd += ["--devices", str(args.devices)]
        if args.duration is not None:
            cmd += ["--duration", str(args.duration)]
        out.append(subprocess.Popen(cmd))
    if out:
        log.info("%d more publisher processes started (devices and units split %d ways)",
                 len(out), args.publishers)
    return out


def _shard(text: str) -> tuple[int, int]:
    k, _, n = text.partition("/")
    shard, shards = int(k), int(n)
    if not 0 <= shard < shards:
        raise argparse.ArgumentTypeError("--shard is k/N with 0 <= k < N")
    return shard, shards


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m simulators.run",
                                description="Run the demo town's sensors, patrols and crews.")
    p.add_argument("--town", default=str(DEFAULT_TOWN), help="town file (gridhub-town/1)")
    p.add_argument("--devices", type=int, default=None, metavar="N",
                   help="simulate N devices (fewer: models in turn; more: copies, for load)")
    p.add_argument("--speed", type=float, default=None, metavar="X",
                   help="divide the crews' human delays by X (default 1)")
    p.add_argument("--no-crews", action="store_true", help="do not answer dispatches")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="stop after S seconds (default: run until Ctrl-C)")
    p.add_argument("--scenario", choices=sorted(SCENARIOS) + scenario_files.available(),
                   default="normal", metavar="NAME",
                   help=f"a preset event rate and crew speed ({', '.join(sorted(SCENARIOS))}; "
                        "flags override) or a scenario file of simulators/scenarios/ to play "
                        f"alongside the town ({', '.join(scenario_files.available())})")
    p.add_argument("--time-scale", type=float, default=1.0, metavar="X",
                   help="play a scenario file X times faster than real time (default 1)")
    p.add_argument("--event-every", type=float, default=None, metavar="S",
                   help=f"mean seconds between alarm events town-wide (0: none; "
                        f"default {DEFAULT_EVENT_EVERY_S:g})")
    p.add_argument("--gps-interval", type=float, default=DEFAULT_GPS_INTERVAL_S, metavar="S")
    p.add_argument("--citizens-every", type=float, default=citizen_reports.DEFAULT_EVERY_S,
                   metavar="S", help="mean seconds between citizens' Open311 and hotline "
                   f"reports (0: none; default {citizen_reports.DEFAULT_EVERY_S:g})")
    p.add_argument("--publishers", type=int, default=1, metavar="N",
                   help="publish the devices from N processes (a big town, see "
                        "simulators/town_scale.py)")
    p.add_argument("--shard", type=_shard, default=(0, 1), metavar="K/N",
                   help=argparse.SUPPRESS)  # set by --publishers for its children
    p.add_argument("--window", type=int, default=DEFAULT_WINDOW,
                   help="max unacknowledged MQTT publishes")
    p.add_argument("--status-every", type=float, default=STATUS_EVERY_S, metavar="S")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of every random choice (default: a fresh one, logged at start; "
                        "give it to replay the same events, faults and patrols)")
    p.add_argument("--log-level", default=None)
    args = p.parse_args(argv)
    if args.time_scale <= 0:
        p.error("--time-scale must be positive")
    args.scenario_file = None
    if args.scenario in SCENARIOS:
        preset = SCENARIOS[args.scenario]
    else:  # a storyline: no random events in the way; crews keep the story's pace
        args.scenario_file = scenario_files.path_for(args.scenario)
        preset = {"event_every": 0.0, "speed": args.time_scale}
    if args.event_every is None:
        args.event_every = preset["event_every"]
    if args.speed is None:
        args.speed = preset["speed"]
    if args.speed <= 0:
        p.error("--speed must be positive")
    if args.gps_interval <= 0:
        p.error("--gps-interval must be positive")
    if args.publishers < 1:
        p.error("--publishers must be >= 1")
    if args.devices is not None and args.devices < 0:
        p.error("--devices must be >= 0")
    if args.seed is None:
        args.seed = int.from_bytes(os.urandom(3), "big")
    args.mqtt_url = gateway_url("SIM")
    args.hub_url = f"http://127.0.0.1:{os.environ.get('HUB_HTTP_PORT', '8081')}"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    hub_log.setup(args.log_level)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return asyncio.run(amain(args))
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
