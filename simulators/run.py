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
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from core import log as hub_log
from core.mqtt_client import BrokerAddress
from simulators import citizens as citizen_reports
from simulators import scenario as scenario_files
from simulators.crews import Crews, CrewTiming, api_headers, listen_for_commands
from simulators.devices import (
    DEFAULT_EVENT_EVERY_S,
    Faults,
    event_rates,
    make_generator,
)
from simulators.mqtt_login import gateway_url
from simulators.mqtt_pub import DEFAULT_WINDOW, Publisher
from simulators.patrol import Fleet
from simulators.patrol_motion import DEFAULT_GPS_INTERVAL_S
from simulators.patrol_roads import RoadGraph
from simulators.run_loops import (
    Stats,
    last_positions,
    run_devices,
    run_patrol,
    run_scenario,
    run_status,
    select_devices,
    status_line,
)

log = logging.getLogger("simulators.run")

DEFAULT_TOWN = Path(os.environ.get("HUB_TOWN_FILE")
                    or Path(__file__).resolve().parent / "data" / "xuxiake.json")
STATUS_EVERY_S = 30.0
# Time allowed for the last acknowledgements when stopping; the whole stop stays under 2 s.
STOP_FLUSH_S = 0.5
# Named setups for `./hubctl demo --scenario NAME`: event interval (s) and crew speed.
SCENARIOS: dict[str, dict[str, float]] = {
    "normal": {"event_every": DEFAULT_EVENT_EVERY_S, "speed": 1.0},
    "busy": {"event_every": 45.0, "speed": 3.0},  # a lively show: an event every ~45 s
    "calm": {"event_every": 0.0, "speed": 1.0},  # no events: a quiet day
}


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
