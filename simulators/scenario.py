"""Scenario files: named, seeded storylines played against a running hub, each step checked
against what the hub must do (which alarm, which case, which unit, which SLA state).

A scenario is a TOML file in simulators/scenarios/ (``<name>.toml``). ``load(path)`` reads
and validates it against the town file and says exactly what is wrong (file, step, field);
``Player(scenario, ...).play()`` plays it: devices over MQTT through the same topics a real
device uses (``ingest.wire`` encoders, QoS 1 via ``simulators.mqtt_pub.Publisher``), case
reports and operator/crew actions over HTTP (``httpx`` to ``http://127.0.0.1:$HUB_HTTP_PORT``),
and checks the expectations of each step through the hub's API (``/api/alarms?state=all``,
``/api/incidents?state=all``, ``/api/incidents/{id}``, ``/api/units``, ``/api/snapshot``).
``Player.check(expectations)`` returns the failed expectations as clear messages.

Ways to play:
- ``python -m simulators.scenario NAME [--time-scale X] [--cleanup]``: the scenario alone
  against a running hub; prints what happened, exit status 1 if an expectation failed.
- ``./hubctl demo --scenario NAME`` (``python -m simulators.run --scenario NAME``): the
  scenario plays *alongside* the living town. The town's background keeps every other
  device, the patrols and the field crews running; the devices the scenario names are
  taken over by the scenario for its duration and handed back afterwards. Background
  events are off unless ``--event-every`` asks for them, so the story stays readable.
  Alongside the town, ``gps`` steps are skipped (the patrols move the units), crew actions
  are left to the simulated crews, and expectations marked ``staged_only`` (a particular
  unit, a diversion that depends on where units stand) are reported as skipped.
- tests/test_scenarios.py plays them fast against a test hub.

Time. Step times (``at``) are scenario seconds from the start. ``time_scale`` X plays X
scenario seconds per wall second (1: real time, the demo; 30: tests). Readings carry the wall
clock as device time, so the hub's own clocks see compressed durations; a hub whose clocks
are shrunk the same way (``HUB_SLA_TIME_SCALE = 1/X``, device ``interval_s`` divided by X for
the no-data rule) sees the story exactly as the scenario tells it. Devices publish every
``interval_s / X`` wall seconds. The past before the start is given by ``[[history]]``
(back-dated readings, e.g. the 24 hourly means a PM2.5 24 h mean needs; the hub accepts
device times up to 7 days old); every other device the scenario owns is *primed* with a
few normal back-dated readings so that look-back rules (gas rate of rise) have a baseline.
A hub evaluates a device's readings in device-time order only: readings older than one it
has already seen are stored but do not move its rules, so the player never sends history
or priming older than the hub's newest reading of a device (and says so).

File format (every field checked; unknown fields are errors)::

    [scenario]
    name = "gas_leak"            # = the file name
    title = "..."                # one line for the console and logs
    summary = "..."              # the storyline
    seed = 6106                  # seeds the devices' normal values and the jitter
    duration = "5m"              # optional, default: last step + 30 s

    [[history]]                  # back-dated readings, oldest first, the last one `every`
    devices = SELECTOR           # before the start
    every = "1h"
    values = { pm25 = [58, 57, ...] }
    jitter = 1.5                 # optional: +- uniform noise, seeded per device

    [[steps]]
    at = "70s"                   # seconds or "1h2m3s"; steps in time order
    note = "..."
    within = "1m"                # optional: how long (scenario time) the expectations may
                                 # take to come true; at least MIN_WAIT_S of wall time
    <one action, optional>       # see below
    [[steps.expect]]             # zero or more expectations (see below)

Actions (one per step):
- ``publish = { devices = SELECTOR, values = { metric = V, ... } | "normal", over = "2m",
  every = "30s", jitter = 0.5, source = "DEV", falloff_m = 700, spread_mps = 3 }``:
  ``V`` is a number (set at once), ``[from, to]`` or ``{ to = x }`` (ramp from the current
  value) over ``over``; the last value is held until another step changes the metric
  (``"normal"`` hands the device back to its normal pattern). With ``source``: each
  device's rise is scaled by ``exp(-distance / falloff_m)`` and starts
  ``distance / spread_mps`` later (a plume reaching neighbours). Metrics not named keep
  their normal values.
- ``offline = { devices = SELECTOR }`` / ``online = { devices = SELECTOR }``: stop / resume
  publishing (normal values on return).
- ``report = { as = "label", via = "api" | "open311", category, qualification, priority,
  title, description, source, reporter, near = "DEV" | unit id, lon, lat, offset_m = [e, n],
  service_code, first_name, phone, attributes = { code = "value" | [values] } }``: a case
  report (``POST /api/incidents``, or Open311 ``POST /open311/v2/requests.json`` with an API
  key the player issues itself); ``label`` names the case for later steps.
- ``action = { case = "@label" | { category, grid | grid_of }, action = "register",
  actor = "operator:x" | "@assigned", reason, crew = bool }``: a workflow action. ``@assigned``
  is the unit the case is assigned to; such actions are crew actions (``crew`` default:
  actor is ``@assigned``), left to the simulated crews when they run. The hub records the
  caller's token, not ``actor``: crew actions are posted with the crews' token
  ($HUB_FIELD_TOKEN, simulators/crews.py), the others with the scenario's own.
- ``ack = { alarm = RULE, devices = SELECTOR, by = "operator:x" }``: acknowledge alarms
  (``by`` is descriptive: the hub records the token's principal).
- ``gps = { units = UNITS, near = "home" | "DEV" | unit id, lon, lat, offset_m }``: stage
  units at a place (a GPS fix now and every ``GPS_REPEAT_S``); skipped alongside the town.

SELECTOR: a device id, a list of ids, or a table ANDing ``ids``, ``model``, ``grid`` (a
second-level id, or a first-level id for all its grids), ``zone``, ``name_contains``,
``near`` + ``within_m`` (metres from a device) and ``exclude`` (a selector). UNITS: a unit
id, a list, or ``{ ids, qualification, type }``.

Expectations (``[[steps.expect]]``, one subject each, ``note`` and ``staged_only`` allowed):
- ``alarm = RULE``, ``devices = SELECTOR`` (each device must have one; without: any
  device), ``state = "open" | "active" | "acknowledged" | "cleared" | "any"`` (default
  any), ``severity``, ``absent = true`` (none of them has one; checked after ``SETTLE_S``),
  ``before = RULE`` (raised before that rule's alarm on the same device, if any),
  ``in_snapshot = true`` (the console's live snapshot shows it).
- ``situation = GRID`` (the storm alarm ``storm:GRID``): ``state``, ``members``,
  ``members_min``, ``individual_open`` (open device_offline alarms of the grid's own
  devices), ``in_snapshot``.
- ``case = CATEGORY | "@label"``: ``grid`` / ``grid_of = SELECTOR`` (cases in those grids),
  ``count`` (exactly this many cases match), and for every matching case: ``priority``,
  ``state`` (one or a list), ``source``, ``alarms`` / ``alarms_min`` (attached alarms),
  ``alarms_cleared``, ``unit`` (assigned unit id), ``not_unit``, ``unit_qualification``,
  ``unit_type``, ``diverted_from = "@label"`` (its unit was taken off that case:
  preempted), ``assignments_include = ["preempted", ...]`` (statuses of its assignments),
  ``sla = { stage = state | [states] }`` (register/dispatch/accept/arrive/resolve:
  ok/warning/breached/met/stopped).

Only alarms and cases created after the scenario started are considered.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys

from core.mqtt_client import BrokerAddress
from simulators.mqtt_login import gateway_url, without_password
from simulators.mqtt_pub import Publisher
from simulators.scenario_model import (
    Scenario,
    ScenarioError,
    available,
    fmt_tau,
    load_town,
    path_for,
)
from simulators.scenario_parse import load
from simulators.scenario_player import Player, PlayResult

log = logging.getLogger("simulators.scenario")

# The scenario API the demo (simulators/run.py) and the tests use; the parts live in
# scenario_model (format), scenario_parse (loading; scenario_selectors and scenario_steps
# check the names and the steps), scenario_programs (readings),
# scenario_player (playing) and scenario_checks (judging).
__all__ = ["PlayResult", "Player", "Scenario", "ScenarioError", "available", "load", "main",
           "path_for"]


# ---------------------------------------------------------------- command line

async def _amain(args: argparse.Namespace) -> int:
    sc = load(args.name)
    pub = Publisher(BrokerAddress.parse(args.mqtt_url), f"gridhub-scenario-{os.getpid()}")
    if not await pub.start():
        print(f"MQTT broker {without_password(args.mqtt_url)} not reachable", file=sys.stderr)
        return 2
    try:
        player = Player(sc, hub_url=args.hub_url, publisher=pub, time_scale=args.time_scale)
        result = await player.play()
        if args.cleanup:
            await player.cleanup()
    finally:
        await pub.stop()
    print(result.summary())  # the steps were logged as they happened
    for f in result.failures:
        print(f"  FAILED {f}")
    return 0 if result.ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m simulators.scenario",
        description="Play a scenario file alone against a running hub and check it.")
    p.add_argument("name", nargs="?", help=f"one of: {', '.join(available())}")
    p.add_argument("--time-scale", type=float, default=1.0, metavar="X",
                   help="scenario seconds per wall second (default 1: real time)")
    p.add_argument("--cleanup", action="store_true",
                   help="afterwards cancel the scenario's cases and clear its alarms")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument("--validate", action="store_true",
                   help="validate every scenario file and exit")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.list or args.validate:
        town = load_town()
        for name in available():
            try:
                sc = load(name, town)
                print(f"{name:24} {fmt_tau(sc.duration):>8}  {sc.title}")
            except ScenarioError as e:
                print(f"{name:24} INVALID: {e}")
                if args.validate:
                    return 1
        return 0
    if not args.name:
        p.error("name a scenario (or --list)")
    if args.time_scale <= 0:
        p.error("--time-scale must be positive")
    args.mqtt_url = gateway_url("SIM")
    args.hub_url = f"http://127.0.0.1:{os.environ.get('HUB_HTTP_PORT', '8081')}"
    try:
        return asyncio.run(_amain(args))
    except ScenarioError as e:
        print(e, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        raise SystemExit(main())
