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
import heapq
import json
import logging
import math
import os
import random
import re
import sys
import time
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from dispatch.sla import STAGES as SLA_STAGES
from dispatch.workflow import ACTIONS as CASE_ACTIONS
from dispatch.workflow import STATES as CASE_STATES
from ingest import wire
from ingest.mqtt import BrokerAddress
from simulators.crews import FIELD_TOKEN_ENV, api_headers
from simulators.devices import NO_FAULTS, DeviceGenerator, make_generator
from simulators.mqtt_login import gateway_url, without_password
from simulators.mqtt_pub import Publisher
from simulators.patrol import to_lonlat, to_xy

log = logging.getLogger("simulators.scenario")

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
DEFAULT_TOWN = Path(__file__).resolve().parent / "data" / "xuxiake.json"

# Normal back-dated readings sent for each owned device before the start, one reporting
# interval apart: the gas rate rule looks back 60 s and the no-data rule needs a last-seen
# time; five intervals (150-300 s) cover both.
PRIME_READINGS = 5
# Expectations are polled at least this long (wall seconds) before they fail: the hub raises
# an alarm within ~100 ms of a reading and dispatches within ~1 s; 5 s absorbs a busy box.
MIN_WAIT_S = 5.0
POLL_S = 0.2
# "absent" expectations are checked this long after the step's other expectations held, so
# that the readings which could have raised the alarm have been evaluated.
SETTLE_S = 0.75
# Staged units send a fix this often (wall s): the hub calls a position stale after 120 s.
GPS_REPEAT_S = 20.0
# Default time after the last step before the scenario ends (scenario s).
TAIL_S = 30.0
# History is sent as one message per device: the wire format allows 1,000 records.
MAX_HISTORY = 500
# Cleanup moves each case at most this many times (withdraw, cancel, a re-dispatch race).
CLEANUP_ROUNDS = 6
CLEANUP_REASON = "演练结束，撤销演练案件 (scenario cleanup)"

ACTION_KINDS = ("publish", "offline", "online", "report", "action", "ack", "gps")
PROGRAM_KINDS = frozenset({"publish", "offline", "online"})
ALARM_STATES = ("open", "active", "acknowledged", "cleared", "any")
SLA_STATES = ("ok", "warning", "breached", "met", "stopped")
REPORT_SOURCES = ("operator", "grid_worker", "hotline")

_DURATION = re.compile(r"^(-)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")


class ScenarioError(ValueError):
    """A scenario file that cannot be played; the message says where and why."""


# ---------------------------------------------------------------- the model

@dataclass(frozen=True, slots=True)
class Expectation:
    kind: str  # alarm | situation | case
    subject: str  # rule id, grid id, category or "@label"
    spec: Mapping[str, Any]  # validated fields (devices/grid_of resolved to ids / grids)
    where: str  # "gas_leak.toml steps[4] (+2m15s)" for messages
    staged_only: bool = False
    absent: bool = False

    def describe(self) -> str:
        note = self.spec.get("note")
        return f"{self.kind} {self.subject}" + (f" ({note})" if note else "")


@dataclass(frozen=True, slots=True)
class Step:
    index: int
    at: float
    note: str
    kind: str | None
    spec: Mapping[str, Any]
    expect: tuple[Expectation, ...]
    within: float

    @property
    def label(self) -> str:
        return f"steps[{self.index}] ({fmt_tau(self.at)})"


@dataclass(frozen=True, slots=True)
class History:
    devices: tuple[str, ...]
    every: float
    values: Mapping[str, tuple[float, ...]]
    jitter: float


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    title: str
    summary: str
    seed: int
    duration: float
    steps: tuple[Step, ...]
    history: tuple[History, ...]
    devices: tuple[str, ...]  # every device the scenario drives (owned while it plays)
    town: Mapping[str, Any] = field(repr=False)
    path: Path | None = None

    def expectations(self) -> list[Expectation]:
        return [e for s in self.steps for e in s.expect]


def fmt_tau(tau: float) -> str:
    sign = "-" if tau < 0 else "+"
    t = abs(tau)
    h, rem = divmod(t, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{sign}{int(h)}h{int(m):02d}m"
    if m:
        return f"{sign}{int(m)}m{int(s):02d}s"
    return f"{sign}{s:.0f}s"


def parse_duration(value: Any, where: str) -> float:
    """Seconds from a number or a string such as ``"90s"``, ``"2m30s"``, ``"-24h"``."""
    if isinstance(value, bool):
        raise ScenarioError(f"{where}: expected a duration, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            secs = float(value)
            if math.isfinite(secs):
                return secs
        m = _DURATION.match(value.strip())
        if m and any(m.group(i) for i in (2, 3, 4)):
            secs = (float(m.group(2) or 0) * 3600 + float(m.group(3) or 0) * 60
                    + float(m.group(4) or 0))
            return -secs if m.group(1) else secs
    raise ScenarioError(f"{where}: {value!r} is not a duration (seconds, or e.g. \"90s\", "
                        "\"2m30s\", \"1h\")")


def available(directory: Path = SCENARIO_DIR) -> list[str]:
    """Names of the scenario files shipped in ``directory``."""
    return sorted(p.stem for p in directory.glob("*.toml"))


def path_for(name: str, directory: Path = SCENARIO_DIR) -> Path:
    return directory / f"{name}.toml"


def load_town(path: Path = DEFAULT_TOWN) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


# ---------------------------------------------------------------- validation

class _Town:
    """Look-ups over the town file for selectors and places."""

    def __init__(self, doc: Mapping[str, Any]) -> None:
        self.doc = doc
        self.devices: dict[str, Mapping[str, Any]] = {d["id"]: d for d in doc["devices"]}
        self.units: dict[str, Mapping[str, Any]] = {u["id"]: u for u in doc["units"]}
        self.grids = {f["properties"]["id"] for f in doc["grids"]["features"]}

    def distance_m(self, a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
        ax, ay = to_xy(a["lon"], a["lat"])
        bx, by = to_xy(b["lon"], b["lat"])
        return math.hypot(ax - bx, ay - by)


def _keys(spec: Any, allowed: Iterable[str], where: str, required: Iterable[str] = ()
          ) -> Mapping[str, Any]:
    if not isinstance(spec, dict):
        raise ScenarioError(f"{where}: expected a table, got {spec!r}")
    allowed = set(allowed)
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ScenarioError(f"{where}: unknown field(s) {', '.join(unknown)}; allowed: "
                            f"{', '.join(sorted(allowed))}")
    missing = [k for k in required if k not in spec]
    if missing:
        raise ScenarioError(f"{where}: missing field(s) {', '.join(missing)}")
    return spec


def _str(v: Any, where: str) -> str:
    if not isinstance(v, str) or not v:
        raise ScenarioError(f"{where}: expected a non-empty string, got {v!r}")
    return v


def _num(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ScenarioError(f"{where}: expected a number, got {v!r}")
    return float(v)


def _int(v: Any, where: str, lo: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ScenarioError(f"{where}: expected an integer >= {lo}, got {v!r}")
    return int(v)


def _bool(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise ScenarioError(f"{where}: expected true or false, got {v!r}")
    return v


def _str_list(v: Any, where: str) -> list[str]:
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not items:
        raise ScenarioError(f"{where}: expected a string or a non-empty list, got {v!r}")
    return [_str(x, where) for x in items]


SELECTOR_KEYS = ("ids", "model", "grid", "zone", "name_contains", "near", "within_m",
                 "exclude")


def select_devices(town: _Town, sel: Any, where: str) -> tuple[str, ...]:
    """Resolve a device selector to device ids (town file order); at least one."""
    if isinstance(sel, str | list):
        ids = _str_list(sel, where)
        unknown = [i for i in ids if i not in town.devices]
        if unknown:
            raise ScenarioError(f"{where}: unknown device(s) {', '.join(unknown)}")
        return tuple(dict.fromkeys(ids))
    spec = _keys(sel, SELECTOR_KEYS, where)
    if not spec:
        raise ScenarioError(f"{where}: an empty selector would select every device; name "
                            "at least one of " + ", ".join(SELECTOR_KEYS))
    cands = list(town.devices.values())
    if "ids" in spec:
        chosen = set(select_devices(town, spec["ids"], f"{where}.ids"))
        cands = [d for d in cands if d["id"] in chosen]
    if "model" in spec:
        models = set(_str_list(spec["model"], f"{where}.model"))
        cands = [d for d in cands if d["model"] in models]
    if "grid" in spec:
        grid = _str(spec["grid"], f"{where}.grid")
        if grid not in town.grids:
            raise ScenarioError(f"{where}.grid: unknown grid {grid!r}")
        cands = [d for d in cands if d["grid"] == grid or d["grid"].startswith(grid + "-")]
    if "zone" in spec:
        zones = set(_str_list(spec["zone"], f"{where}.zone"))
        cands = [d for d in cands if d.get("zone") in zones]
    if "name_contains" in spec:
        text = _str(spec["name_contains"], f"{where}.name_contains")
        cands = [d for d in cands if text in d.get("name", "")]
    if ("near" in spec) != ("within_m" in spec):
        raise ScenarioError(f"{where}: near and within_m go together")
    if "near" in spec:
        ref = town.devices.get(_str(spec["near"], f"{where}.near"))
        if ref is None:
            raise ScenarioError(f"{where}.near: unknown device {spec['near']!r}")
        radius = _num(spec["within_m"], f"{where}.within_m")
        cands = [d for d in cands if town.distance_m(d, ref) <= radius]
    if "exclude" in spec:
        drop = set(select_devices(town, spec["exclude"], f"{where}.exclude"))
        cands = [d for d in cands if d["id"] not in drop]
    if not cands:
        raise ScenarioError(f"{where}: the selector {sel!r} selects no device")
    return tuple(d["id"] for d in cands)


def select_units(town: _Town, sel: Any, where: str) -> tuple[str, ...]:
    if isinstance(sel, str | list):
        ids = _str_list(sel, where)
        unknown = [i for i in ids if i not in town.units]
        if unknown:
            raise ScenarioError(f"{where}: unknown unit(s) {', '.join(unknown)}")
        return tuple(dict.fromkeys(ids))
    spec = _keys(sel, ("ids", "qualification", "type"), where)
    cands = list(town.units.values())
    if "ids" in spec:
        chosen = set(select_units(town, spec["ids"], f"{where}.ids"))
        cands = [u for u in cands if u["id"] in chosen]
    if "qualification" in spec:
        q = _str(spec["qualification"], f"{where}.qualification")
        cands = [u for u in cands if q in u["qualifications"]]
    if "type" in spec:
        t = _str(spec["type"], f"{where}.type")
        cands = [u for u in cands if u["type"] == t]
    if not cands or not spec:
        raise ScenarioError(f"{where}: the selector {sel!r} selects no unit")
    return tuple(u["id"] for u in cands)


PLACE_KEYS = ("near", "lon", "lat", "offset_m")


def _place(town: _Town, spec: Mapping[str, Any], where: str, allow_home: bool = False
           ) -> dict[str, Any]:
    """A validated place: {"near": id | "home"} or {"lon", "lat"}, plus offset_m."""
    out: dict[str, Any] = {}
    if "near" in spec:
        ref = _str(spec["near"], f"{where}.near")
        if not (ref in town.devices or ref in town.units or (allow_home and ref == "home")):
            raise ScenarioError(f"{where}.near: {ref!r} is no device or unit"
                                + (" (or \"home\")" if allow_home else ""))
        out["near"] = ref
    elif "lon" in spec and "lat" in spec:
        out["lon"] = _num(spec["lon"], f"{where}.lon")
        out["lat"] = _num(spec["lat"], f"{where}.lat")
    else:
        raise ScenarioError(f"{where}: give a place: near = device/unit id, or lon and lat")
    off = spec.get("offset_m", [0.0, 0.0])
    if not (isinstance(off, list) and len(off) == 2):
        raise ScenarioError(f"{where}.offset_m: expected [east, north] metres, got {off!r}")
    out["offset_m"] = (_num(off[0], f"{where}.offset_m"), _num(off[1], f"{where}.offset_m"))
    return out


def resolve_place(town: Mapping[str, Any] | _Town, place: Mapping[str, Any],
                  unit_id: str | None = None) -> tuple[float, float]:
    """(lon, lat) of a validated place; ``near = "home"`` is ``unit_id``'s start point."""
    t = town if isinstance(town, _Town) else _Town(town)
    if "near" in place:
        ref = str(unit_id if place["near"] == "home" else place["near"])
        obj = t.devices.get(ref) or t.units[ref]
        lon, lat = float(obj["lon"]), float(obj["lat"])
    else:
        lon, lat = float(place["lon"]), float(place["lat"])
    dx, dy = place.get("offset_m", (0.0, 0.0))
    if dx or dy:
        x, y = to_xy(lon, lat)
        lon, lat = to_lonlat(x + dx, y + dy)
    return round(lon, 6), round(lat, 6)


def _value_spec(v: Any, where: str) -> tuple[float | None, float]:
    """(from, to) of a publish value; from None = the device's current value."""
    if isinstance(v, list):
        if len(v) != 2:
            raise ScenarioError(f"{where}: a ramp is [from, to], got {v!r}")
        return _num(v[0], where), _num(v[1], where)
    if isinstance(v, dict):
        _keys(v, ("to",), where, required=("to",))
        return None, _num(v["to"], f"{where}.to")
    x = _num(v, where)
    return x, x


def _v_publish(town: _Town, spec: Any, where: str) -> dict[str, Any]:
    s = _keys(spec, ("devices", "values", "over", "every", "jitter", "source", "falloff_m",
                     "spread_mps"), where, required=("devices", "values"))
    devices = select_devices(town, s["devices"], f"{where}.devices")
    out: dict[str, Any] = {"devices": devices}
    if s["values"] == "normal":
        out["values"] = "normal"
    else:
        vals = _keys(s["values"], [m for d in devices for m in town.devices[d]["metrics"]],
                     f"{where}.values")
        if not vals:
            raise ScenarioError(f"{where}.values: name at least one metric, or \"normal\"")
        for d in devices:
            missing = [m for m in vals if m not in town.devices[d]["metrics"]]
            if missing:
                raise ScenarioError(f"{where}.values: device {d} ({town.devices[d]['model']}) "
                                    f"has no metric {', '.join(missing)}")
        out["values"] = {m: _value_spec(v, f"{where}.values.{m}") for m, v in vals.items()}
    out["over"] = max(0.0, parse_duration(s.get("over", 0), f"{where}.over"))
    if "every" in s:
        out["every"] = parse_duration(s["every"], f"{where}.every")
        if out["every"] <= 0:
            raise ScenarioError(f"{where}.every: must be positive")
    out["jitter"] = abs(_num(s.get("jitter", 0.0), f"{where}.jitter"))
    if "source" in s:
        src = _str(s["source"], f"{where}.source")
        if src not in town.devices:
            raise ScenarioError(f"{where}.source: unknown device {src!r}")
        out["source"] = src
        out["falloff_m"] = _num(s.get("falloff_m", math.inf), f"{where}.falloff_m")
        out["spread_mps"] = _num(s.get("spread_mps", math.inf), f"{where}.spread_mps")
        if out["falloff_m"] <= 0 or out["spread_mps"] <= 0:
            raise ScenarioError(f"{where}: falloff_m and spread_mps must be positive")
    elif "falloff_m" in s or "spread_mps" in s:
        raise ScenarioError(f"{where}: falloff_m and spread_mps need a source device")
    return out


def _v_report(town: _Town, spec: Any, where: str) -> dict[str, Any]:
    s = _keys(spec, ("as", "via", "category", "qualification", "priority", "title",
                     "description", "source", "reporter", "service_code", "first_name",
                     "phone", "attributes", *PLACE_KEYS), where, required=("as",))
    via = s.get("via", "api")
    out: dict[str, Any] = {"as": _str(s["as"], f"{where}.as"), "via": via,
                           "place": _place(town, s, where),
                           "description": str(s.get("description", ""))}
    if via == "api":
        for k in ("category", "qualification", "title"):
            if k not in s:
                raise ScenarioError(f"{where}: a report through the API needs {k}")
            out[k] = _str(s[k], f"{where}.{k}")
        out["priority"] = _int(s.get("priority", 3), f"{where}.priority", 1)
        if out["priority"] > 4:
            raise ScenarioError(f"{where}.priority: 1 (critical) .. 4 (low)")
        out["source"] = s.get("source", "operator")
        if out["source"] not in REPORT_SOURCES:
            raise ScenarioError(f"{where}.source: one of {', '.join(REPORT_SOURCES)}")
        out["reporter"] = _str(s.get("reporter", "operator:scenario"), f"{where}.reporter")
    elif via == "open311":
        code = s.get("service_code", s.get("category"))
        out["service_code"] = _str(code, f"{where}.service_code")
        for k in ("first_name", "phone"):
            if k in s:
                out[k] = _str(s[k], f"{where}.{k}")
        attrs = s.get("attributes", {})
        if not isinstance(attrs, dict):
            raise ScenarioError(f"{where}.attributes: a table of attribute code = value(s)")
        out["attributes"] = {
            _str(k, f"{where}.attributes"): [_str(x, f"{where}.attributes.{k}") for x in
                                             (v if isinstance(v, list) else [v])]
            for k, v in attrs.items()}
    else:
        raise ScenarioError(f"{where}.via: \"api\" or \"open311\", got {via!r}")
    return out


def _case_ref(town: _Town, ref: Any, where: str) -> dict[str, Any]:
    if isinstance(ref, str):
        if not ref.startswith("@") or len(ref) < 2:
            raise ScenarioError(f"{where}: a case is \"@label\" or {{ category, grid }}")
        return {"label": ref[1:]}
    s = _keys(ref, ("category", "grid", "grid_of"), where, required=("category",))
    return {"category": _str(s["category"], f"{where}.category"),
            "grids": _grids(town, s, where)}


def _grids(town: _Town, s: Mapping[str, Any], where: str) -> tuple[str, ...] | None:
    if "grid" in s and "grid_of" in s:
        raise ScenarioError(f"{where}: grid or grid_of, not both")
    if "grid" in s:
        g = _str(s["grid"], f"{where}.grid")
        if g not in town.grids:
            raise ScenarioError(f"{where}.grid: unknown grid {g!r}")
        return (g,)
    if "grid_of" in s:
        devs = select_devices(town, s["grid_of"], f"{where}.grid_of")
        return tuple(dict.fromkeys(town.devices[d]["grid"] for d in devs))
    return None


def _v_action(town: _Town, spec: Any, where: str) -> dict[str, Any]:
    s = _keys(spec, ("case", "action", "actor", "reason", "crew"), where,
              required=("case", "action", "actor"))
    action = _str(s["action"], f"{where}.action")
    if action not in CASE_ACTIONS:
        raise ScenarioError(f"{where}.action: unknown action {action!r}; one of "
                            + ", ".join(CASE_ACTIONS))
    actor = _str(s["actor"], f"{where}.actor")
    out = {"case": _case_ref(town, s["case"], f"{where}.case"), "action": action,
           "actor": actor, "crew": _bool(s.get("crew", actor == "@assigned"), f"{where}.crew")}
    if "reason" in s:
        out["reason"] = _str(s["reason"], f"{where}.reason")
    return out


def _v_ack(town: _Town, spec: Any, where: str) -> dict[str, Any]:
    s = _keys(spec, ("alarm", "devices", "by"), where, required=("alarm", "by"))
    out: dict[str, Any] = {"alarm": _str(s["alarm"], f"{where}.alarm"),
                           "by": _str(s["by"], f"{where}.by"), "devices": None}
    if "devices" in s:
        out["devices"] = select_devices(town, s["devices"], f"{where}.devices")
    return out


def _v_gps(town: _Town, spec: Any, where: str) -> dict[str, Any]:
    s = _keys(spec, ("units", *PLACE_KEYS), where, required=("units",))
    return {"units": select_units(town, s["units"], f"{where}.units"),
            "place": _place(town, s, where, allow_home=True)}


def _v_devices_only(town: _Town, spec: Any, where: str) -> dict[str, Any]:
    s = _keys(spec, ("devices",), where, required=("devices",))
    return {"devices": select_devices(town, s["devices"], f"{where}.devices")}


VALIDATORS = {"publish": _v_publish, "offline": _v_devices_only, "online": _v_devices_only,
              "report": _v_report, "action": _v_action, "ack": _v_ack, "gps": _v_gps}

EXPECT_KEYS = {
    "alarm": ("devices", "state", "severity", "absent", "before", "in_snapshot"),
    "situation": ("state", "members", "members_min", "individual_open", "in_snapshot"),
    "case": ("grid", "grid_of", "count", "priority", "state", "source", "alarms",
             "alarms_min", "alarms_cleared", "unit", "not_unit", "unit_qualification",
             "unit_type", "diverted_from", "assignments_include", "sla"),
}


def _state_list(v: Any, allowed: Sequence[str], where: str) -> tuple[str, ...]:
    states = tuple(_str_list(v, where))
    bad = [x for x in states if x not in allowed]
    if bad:
        raise ScenarioError(f"{where}: unknown state(s) {', '.join(bad)}; one of "
                            + ", ".join(allowed))
    return states


def _v_expect(town: _Town, spec: Any, where: str, labels: set[str]) -> Expectation:
    if not isinstance(spec, dict):
        raise ScenarioError(f"{where}: expected a table")
    kinds = [k for k in EXPECT_KEYS if k in spec]
    if len(kinds) != 1:
        raise ScenarioError(f"{where}: an expectation names exactly one of alarm, situation, "
                            f"case (got {', '.join(kinds) or 'none'})")
    kind = kinds[0]
    s = _keys(spec, (kind, "note", "staged_only", *EXPECT_KEYS[kind]), where)
    subject = _str(s[kind], f"{where}.{kind}")
    out: dict[str, Any] = {"note": str(s.get("note", ""))}
    for k in ("absent", "in_snapshot", "alarms_cleared"):
        if k in s:
            out[k] = _bool(s[k], f"{where}.{k}")
    for k in ("members", "members_min", "individual_open", "count", "priority", "alarms",
              "alarms_min"):
        if k in s:
            out[k] = _int(s[k], f"{where}.{k}", 0)
    for k in ("severity", "before", "source", "unit", "not_unit", "unit_qualification",
              "unit_type"):
        if k in s:
            out[k] = _str(s[k], f"{where}.{k}")
    if kind in ("alarm", "situation"):
        out["state"] = _state_list(s.get("state", "any"), ALARM_STATES, f"{where}.state")
    if kind == "alarm" and "devices" in s:
        out["devices"] = select_devices(town, s["devices"], f"{where}.devices")
    if kind == "situation":
        if subject not in town.grids or "-" not in subject:
            raise ScenarioError(f"{where}.situation: {subject!r} is no second-level grid")
        out["grid_devices"] = tuple(d for d, v in town.devices.items() if v["grid"] == subject)
    if kind == "case":
        if subject.startswith("@"):
            if subject[1:] not in labels:
                raise ScenarioError(f"{where}.case: no earlier report is labelled "
                                    f"{subject[1:]!r}")
            if any(k in s for k in ("grid", "grid_of", "count")):
                raise ScenarioError(f"{where}: grid, grid_of and count apply to a category, "
                                    "not to a labelled case")
        out["grids"] = _grids(town, s, where)
        if "state" in s:
            out["state"] = _state_list(s["state"], CASE_STATES, f"{where}.state")
        if "diverted_from" in s:
            ref = _str(s["diverted_from"], f"{where}.diverted_from")
            if not ref.startswith("@") or ref[1:] not in labels:
                raise ScenarioError(f"{where}.diverted_from: \"@label\" of an earlier report")
            out["diverted_from"] = ref[1:]
        if "assignments_include" in s:
            out["assignments_include"] = tuple(_str_list(s["assignments_include"],
                                                         f"{where}.assignments_include"))
        if "sla" in s:
            sla = _keys(s["sla"], SLA_STAGES, f"{where}.sla")
            out["sla"] = {st: _state_list(v, SLA_STATES, f"{where}.sla.{st}")
                          for st, v in sla.items()}
        if "unit" in s and s["unit"] not in town.units:
            raise ScenarioError(f"{where}.unit: unknown unit {s['unit']!r}")
    return Expectation(kind, subject, out, where,
                       staged_only=_bool(s.get("staged_only", False), f"{where}.staged_only"),
                       absent=bool(out.get("absent", False)))


def _v_history(town: _Town, spec: Any, where: str) -> History:
    s = _keys(spec, ("devices", "every", "values", "jitter"), where,
              required=("devices", "every", "values"))
    devices = select_devices(town, s["devices"], f"{where}.devices")
    every = parse_duration(s["every"], f"{where}.every")
    if every <= 0:
        raise ScenarioError(f"{where}.every: must be positive")
    vals = s["values"]
    if not isinstance(vals, dict) or not vals:
        raise ScenarioError(f"{where}.values: expected {{ metric = [values, oldest first] }}")
    out: dict[str, tuple[float, ...]] = {}
    for m, series in vals.items():
        if not isinstance(series, list) or not series:
            raise ScenarioError(f"{where}.values.{m}: expected a non-empty list of numbers")
        out[m] = tuple(_num(x, f"{where}.values.{m}") for x in series)
        for d in devices:
            if m not in town.devices[d]["metrics"]:
                raise ScenarioError(f"{where}.values: device {d} has no metric {m}")
    lengths = {len(v) for v in out.values()}
    if len(lengths) != 1:
        raise ScenarioError(f"{where}.values: every metric needs the same number of values")
    if lengths.pop() > MAX_HISTORY:
        raise ScenarioError(f"{where}.values: at most {MAX_HISTORY} values")
    if every * len(next(iter(out.values()))) > 7 * 86400 - 3600:
        raise ScenarioError(f"{where}: history reaches back more than 7 days (the hub "
                            "refuses older device times)")
    return History(devices, every, out, abs(_num(s.get("jitter", 0.0), f"{where}.jitter")))


def parse(doc: Mapping[str, Any], town_doc: Mapping[str, Any], *, name: str,
          path: Path | None = None) -> Scenario:
    """Validate a scenario document (parsed TOML); ScenarioError says what is wrong."""
    town = _Town(town_doc)
    fname = path.name if path else f"{name}.toml"
    _keys(doc, ("scenario", "history", "steps"), fname, required=("scenario", "steps"))
    head = _keys(doc["scenario"], ("name", "title", "summary", "seed", "duration"),
                 f"{fname} [scenario]", required=("name", "title", "seed"))
    if head["name"] != name:
        raise ScenarioError(f"{fname} [scenario]: name {head['name']!r} must match the file "
                            f"name {name!r}")
    seed = _int(head["seed"], f"{fname} [scenario].seed")
    history = tuple(_v_history(town, h, f"{fname} history[{i}]")
                    for i, h in enumerate(_list(doc.get("history", []), f"{fname} history")))
    steps: list[Step] = []
    labels: set[str] = set()
    last = 0.0
    for i, raw in enumerate(_list(doc["steps"], f"{fname} steps")):
        where = f"{fname} steps[{i}]"
        s = _keys(raw, ("at", "note", "within", "expect", *ACTION_KINDS), where,
                  required=("at",))
        at = parse_duration(s["at"], f"{where}.at")
        where = f"{where} ({fmt_tau(at)})"
        if at < 0:
            raise ScenarioError(f"{where}.at: steps start at 0; the past is [[history]]")
        if at < last:
            raise ScenarioError(f"{where}.at: steps must be in time order ({fmt_tau(at)} "
                                f"comes after {fmt_tau(last)})")
        last = at
        kinds = [k for k in ACTION_KINDS if k in s]
        if len(kinds) > 1:
            raise ScenarioError(f"{where}: one action per step, got {', '.join(kinds)}")
        if not kinds and "expect" not in s:
            raise ScenarioError(f"{where}: a step needs an action ({', '.join(ACTION_KINDS)})"
                                " or expectations")
        kind = kinds[0] if kinds else None
        spec = VALIDATORS[kind](town, s[kind], f"{where}.{kind}") if kind else {}
        if kind == "report":
            if spec["as"] in labels:
                raise ScenarioError(f"{where}.report.as: label {spec['as']!r} used twice")
            labels.add(spec["as"])
        if kind == "action" and "label" in spec["case"] and spec["case"]["label"] not in labels:
            raise ScenarioError(f"{where}.action.case: no earlier report is labelled "
                                f"{spec['case']['label']!r}")
        expect = tuple(_v_expect(town, e, f"{where} expect[{j}]", labels)
                       for j, e in enumerate(_list(s.get("expect", []), f"{where}.expect")))
        within = parse_duration(s.get("within", "1m"), f"{where}.within")
        steps.append(Step(i, at, str(s.get("note", "")), kind, spec, expect, max(0.0, within)))
    if not steps:
        raise ScenarioError(f"{fname}: no steps")
    duration = parse_duration(head.get("duration", last + TAIL_S),
                              f"{fname} [scenario].duration")
    if duration < last:
        raise ScenarioError(f"{fname} [scenario].duration: {fmt_tau(duration)} ends before "
                            f"the last step ({fmt_tau(last)})")
    owned: dict[str, None] = {}
    for h in history:
        owned.update(dict.fromkeys(h.devices))
    for st in steps:
        if st.kind in PROGRAM_KINDS:
            owned.update(dict.fromkeys(st.spec["devices"]))
    return Scenario(name, _str(head["title"], f"{fname} [scenario].title"),
                    str(head.get("summary", "")).strip(), seed, duration, tuple(steps), history,
                    tuple(owned), town_doc, path)


def _list(v: Any, where: str) -> list[Any]:
    if not isinstance(v, list):
        raise ScenarioError(f"{where}: expected an array of tables ([[...]])")
    return v


def load(path_or_name: Path | str, town_doc: Mapping[str, Any] | None = None) -> Scenario:
    """Read and validate a scenario file (a path, or a name in simulators/scenarios/)."""
    path = Path(path_or_name)
    if path.suffix != ".toml":
        path = path_for(str(path_or_name))
    if not path.exists():
        raise ScenarioError(f"no scenario file {path} (available: {', '.join(available())})")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{path.name}: not valid TOML: {e}") from e
    return parse(doc, town_doc if town_doc is not None else load_town(), name=path.stem,
                 path=path)


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


# ---------------------------------------------------------------- playing

@dataclass
class PlayResult:
    scenario: str
    time_scale: float
    log: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    passed: int = 0
    skipped: int = 0
    published: int = 0
    elapsed_s: float = 0.0
    cases: dict[str, int] = field(default_factory=dict)  # report label -> incident id

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        verdict = "ok" if self.ok else f"{len(self.failures)} FAILED"
        return (f"scenario {self.scenario}: {verdict} ({self.passed} expectations held, "
                f"{self.skipped} skipped; {self.published} messages; "
                f"{self.elapsed_s:.1f} s at x{self.time_scale:g})")

    def report(self) -> str:
        lines = [*self.log, self.summary()]
        lines += [f"  FAILED {f}" for f in self.failures]
        return "\n".join(lines)


class Player:
    """Plays one scenario against a running hub.

    ``alongside``: the living town runs too (its patrols own the units: ``gps`` steps and
    ``staged_only`` expectations are skipped). ``crews_live``: simulated crews answer
    dispatches (crew actions are left to them). ``publisher`` is started by the caller.
    """

    def __init__(self, scenario: Scenario, *, hub_url: str, publisher: Publisher,
                 time_scale: float = 1.0, alongside: bool = False, crews_live: bool = False,
                 token: str | None = None, field_token: str | None = None) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        # API token: ``token``, else $HUB_API_TOKEN (simulators/crews.py says which role);
        # crew actions under the crews' token where one is given (FIELD_TOKEN_ENV).
        self.headers = api_headers(token)
        field = field_token or os.environ.get(FIELD_TOKEN_ENV)
        self.field_headers = api_headers(field) if field else self.headers
        self.sc = scenario
        self.town = _Town(scenario.town)
        self.hub_url = hub_url.rstrip("/")
        self.pub = publisher
        self.time_scale = time_scale
        self.alongside = alongside
        self.crews_live = crews_live
        self.programs = make_programs(scenario)
        self.labels: dict[str, int] = {}
        self.staged: dict[str, tuple[float, float]] = {}
        self.base_alarm = 0
        self.base_incident = 0
        self.t0 = time.time()
        self.result = PlayResult(scenario.name, time_scale)
        self.client: httpx.AsyncClient | None = None
        self._o311_key = ""

    # ---- clocks
    def tau(self) -> float:
        return (time.time() - self.t0) * self.time_scale

    def wall_at(self, tau: float) -> float:
        return self.t0 + tau / self.time_scale

    def note(self, text: str, tau: float | None = None) -> None:
        line = f"[{self.sc.name} {fmt_tau(self.tau() if tau is None else tau)}] {text}"
        self.result.log.append(line)
        log.info("%s", line)

    @property
    def owned(self) -> frozenset[str]:
        return frozenset(self.sc.devices)

    # ---- the play
    async def play(self) -> PlayResult:
        started = time.monotonic()
        async with httpx.AsyncClient(base_url=self.hub_url, timeout=10.0,
                                     headers=self.headers) as client:
            self.client = client
            await self.begin()
            self.note(f"{self.sc.title} — {len(self.sc.steps)} steps over "
                      f"{fmt_tau(self.sc.duration)}, {len(self.programs)} devices, "
                      f"x{self.time_scale:g}" + (" alongside the town" if self.alongside
                                                 else ""), 0.0)
            for st in self.sc.steps:  # what holds from the start goes out with the first reading
                if st.at <= 0 and st.kind in PROGRAM_KINDS:
                    apply_program(self.sc, self.programs, st)
            await self._publish_initial()
            tasks = [asyncio.create_task(self._devices(), name=f"scenario-{self.sc.name}-dev"),
                     asyncio.create_task(self._gps(), name=f"scenario-{self.sc.name}-gps")]
            try:
                for st in self.sc.steps:
                    await _sleep_until(self.wall_at(st.at))
                    await self._run_step(st)
                await _sleep_until(self.wall_at(self.sc.duration))
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        self.client = None
        self.result.elapsed_s = time.monotonic() - started
        self.result.cases = dict(self.labels)
        self.note(self.result.summary())
        return self.result

    async def begin(self) -> None:
        """Remember where the hub's alarm and incident ids stand: expectations only look at
        what the scenario caused. Starts the scenario clock."""
        alarms = await self._get("/api/alarms", state="all", limit=1)
        incidents = await self._get("/api/incidents", state="all", limit=1)
        self.base_alarm = max((int(a["id"]) for a in alarms), default=0)
        self.base_incident = max((int(i["id"]) for i in incidents), default=0)
        self.t0 = time.time()

    async def _publish_initial(self) -> None:
        """Per owned device one message: its history (or a few primed normal readings) and
        its reading at the start, in device-time order, so the hub sees no gap. Alongside a
        town the hub may already hold newer readings: older ones are not sent."""
        hist = {d for h in self.sc.history for d in h.devices}
        hist_sent = 0
        for d, readings in initial_readings(self.sc, self.programs, self.t0).items():
            if self.alongside and len(readings) > 1:
                newest = await self._hub_newest(d)
                if newest is not None and readings[0][0] <= newest:
                    kept = [r for r in readings if r[0] > newest]
                    if d in hist:
                        self.note(f"history of {d}: the hub already has readings up to "
                                  f"{time.strftime('%H:%M:%S', time.localtime(newest))}; "
                                  f"{len(readings) - len(kept)} older readings not sent "
                                  "(its rules would not use them)", 0.0)
                    readings = kept
            if d in hist:
                hist_sent += sum(1 for r in readings if r[0] < self.t0)
            if readings:
                await self.pub.publish(wire.telemetry_topic(d), encode_batch(readings))
                self.result.published += 1
        if self.sc.history:
            self.note(f"history: {hist_sent} back-dated readings for {len(hist)} devices",
                      0.0)

    async def _devices(self) -> None:
        heap = [(self.t0 + p.interval_s / self.time_scale, d) for d, p in self.programs.items()]
        heapq.heapify(heap)
        while heap:
            due, d = heap[0]
            wait = due - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            heapq.heappop(heap)
            prog = self.programs[d]
            now = time.time()
            if not prog.offline:
                values = prog.values((now - self.t0) * self.time_scale, now)
                await self.pub.publish(wire.telemetry_topic(d),
                                       wire.encode_telemetry(round(now, 3), values))
                prog.sent += 1
                self.result.published += 1
            nxt = due + prog.interval_s / self.time_scale
            heapq.heappush(heap, (max(nxt, now), d))

    async def _gps(self) -> None:
        while True:
            await asyncio.sleep(GPS_REPEAT_S)
            for uid in list(self.staged):
                await self._fix(uid)

    async def _fix(self, uid: str) -> None:
        lon, lat = self.staged[uid]
        await self.pub.publish(wire.gps_topic(uid), wire.encode_gps(
            round(time.time(), 3), lat, lon, 0.0, None, 5.0))
        self.result.published += 1

    # ---- steps
    async def _run_step(self, st: Step) -> None:
        text = f"{st.note}" if st.note else (st.kind or "check")
        if st.kind in PROGRAM_KINDS:
            if st.at > 0:
                apply_program(self.sc, self.programs, st)
            self.note(f"{text} [{st.kind}: {_devs(st.spec['devices'])}]", st.at)
        elif st.kind is not None:
            await getattr(self, f"_do_{st.kind}")(st, text)
        elif st.note:
            self.note(text, st.at)
        if st.expect:
            await self._expect(st)

    async def _do_report(self, st: Step, text: str) -> None:
        s = st.spec
        lon, lat = resolve_place(self.town, s["place"])
        if s["via"] == "open311":
            form = {"service_code": s["service_code"], "lat": str(lat), "long": str(lon),
                    "description": s["description"] or s["service_code"]}
            for k in ("first_name", "phone"):
                if k in s:
                    form[k] = s[k]
            form["api_key"] = await self._open311_key()
            # A list value is sent as the field repeated (a multivaluelist's answers).
            fields: dict[str, Any] = {**form, **{f"attribute[{k}]": vs for k, vs in
                                                 s["attributes"].items()}}
            r = await self._http("POST", "/open311/v2/requests.json", data=fields)
            iid = int(r.json()[0]["service_request_id"]) if r.status_code == 201 else None
        else:
            body = {k: s[k] for k in ("category", "qualification", "priority", "title",
                                      "description", "source", "reporter")}
            r = await self._http("POST", "/api/incidents", json={**body, "lon": lon,
                                                                 "lat": lat})
            iid = int(r.json()["id"]) if r.status_code == 201 else None
        if iid is None:
            self._fail(st, f"report {s['as']!r} refused: HTTP {r.status_code} {r.text[:200]}")
            return
        self.labels[s["as"]] = iid
        self.note(f"{text} [report via {s['via']} -> case #{iid} @{s['as']}]", st.at)

    async def _do_action(self, st: Step, text: str) -> None:
        s = st.spec
        if s["crew"] and self.crews_live:
            self.note(f"{text} [{s['action']}: left to the simulated crews]", st.at)
            return
        iid = await self._case_id(s["case"])
        if iid is None:
            self._fail(st, f"action {s['action']}: no case {_ref(s['case'])} yet")
            return
        actor = s["actor"]
        if actor == "@assigned":
            inc = (await self._get(f"/api/incidents/{iid}"))["incident"]
            actor = inc.get("assigned_unit")
            if not actor:
                self._fail(st, f"action {s['action']} on case #{iid}: no unit assigned "
                           f"(state {inc.get('state')})")
                return
        body = {"action": s["action"]}
        if "reason" in s:
            body["reason"] = s["reason"]
        r = await self._http("POST", f"/api/incidents/{iid}/actions", json=body,
                             headers=self.field_headers if s["crew"] else self.headers)
        if r.status_code != 200:
            msg = f"{s['action']} by {actor} on case #{iid} refused: HTTP {r.status_code} " \
                  f"{_error_text(r)}"
            if self.alongside and r.status_code in (409, 422):
                self.note(f"{text} [{msg}; someone moved the case first]", st.at)
                return
            self._fail(st, msg)
            return
        self.note(f"{text} [{s['action']} by {actor}: case #{iid} -> {r.json().get('state')}]",
                  st.at)

    async def _do_ack(self, st: Step, text: str) -> None:
        s = st.spec
        alarms = [a for a in await self._alarms() if a["rule_id"] == s["alarm"]
                  and a["state"] == "active"
                  and (s["devices"] is None or a["device_id"] in s["devices"])]
        for a in alarms:
            r = await self._http("POST", f"/api/alarms/{a['id']}/ack")
            if r.status_code != 200:
                self._fail(st, f"ack of alarm #{a['id']} refused: HTTP {r.status_code} "
                           f"{_error_text(r)}")
        self.note(f"{text} [ack {len(alarms)} {s['alarm']} alarm(s) by {s['by']}]", st.at)

    async def _do_gps(self, st: Step, text: str) -> None:
        if self.alongside:
            self.note(f"{text} [gps skipped: the town's patrols move the units]", st.at)
            return
        for uid in st.spec["units"]:
            self.staged[uid] = resolve_place(self.town, st.spec["place"], uid)
            await self._fix(uid)
        self.note(f"{text} [gps: {', '.join(st.spec['units'])}]", st.at)

    # ---- expectations
    async def _expect(self, st: Step) -> None:
        active = [e for e in st.expect if not (e.staged_only and self.alongside)]
        skipped = len(st.expect) - len(active)
        positives = [e for e in active if not e.absent]
        absents = [e for e in active if e.absent]
        deadline = time.monotonic() + max(MIN_WAIT_S, st.within / self.time_scale)
        failures = await self.check(positives)
        while failures and time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
            failures = await self.check(positives)
        if absents:
            await asyncio.sleep(SETTLE_S)
            failures += await self.check(absents)
        held = len(active) - len(failures)
        self.result.passed += held
        self.result.skipped += skipped
        for f in failures:
            self._fail(st, f)
        self.note(f"expect: {held}/{len(active)} held" + (f", {skipped} skipped (staged "
                                                           "only)" if skipped else "")
                  + ("" if not failures else " — " + "; ".join(failures)))

    def _fail(self, st: Step, message: str) -> None:
        where = f"{self.sc.name} {st.label}" + (f" '{st.note}'" if st.note else "")
        self.result.failures.append(f"{where}: {message}")

    async def check(self, expectations: Sequence[Expectation]) -> list[str]:
        """Query the hub once and return one message per expectation that does not hold."""
        if not expectations:
            return []
        if self.client is None:
            async with httpx.AsyncClient(base_url=self.hub_url, timeout=10.0,
                                     headers=self.headers) as client:
                self.client = client
                try:
                    return await self.check(expectations)
                finally:
                    self.client = None
        view = _View(self, await self._alarms(), await self._incidents())
        if any(e.kind == "case" for e in expectations):
            view.units = {u["id"]: u for u in await self._get("/api/units")}
        if any(e.spec.get("in_snapshot") for e in expectations):
            snap = await self._get("/api/snapshot")
            view.snapshot_alarms = {int(a["id"]) for a in snap.get("alarms", [])}
        out = []
        for e in expectations:
            msg = await view.check(e)
            if msg:
                out.append(f"{e.describe()}: {msg}")
        return out

    # ---- cleanup
    async def cleanup(self) -> int:
        """Cancel the cases the scenario caused (its reports, and cases its devices' alarms
        opened), taking units off them, and clear its devices' open alarms: the hub is
        ready for the next story. Returns the number of cases cancelled."""
        async with httpx.AsyncClient(base_url=self.hub_url, timeout=10.0,
                                     headers=self.headers) as client:
            self.client = client
            try:
                return await self._cleanup()
            finally:
                self.client = None

    async def _cleanup(self) -> int:
        grids = {self.town.devices[d]["grid"] for d in self.owned}
        mine: set[int] = set(self.labels.values())
        for a in await self._alarms():
            if a.get("incident_id") and (a["device_id"] in self.owned):
                mine.add(int(a["incident_id"]))
        cancelled = 0
        for _ in range(CLEANUP_ROUNDS):
            pending = False
            for iid in sorted(mine):
                inc = (await self._get(f"/api/incidents/{iid}"))["incident"]
                state = inc["state"]
                action = {"reported": "cancel", "registered": "cancel", "dispatched": "cancel",
                          "shelved": "cancel", "accepted": "withdraw",
                          "handling": "shelve"}.get(state)
                if action is None:
                    continue
                pending = True
                r = await self._http("POST", f"/api/incidents/{iid}/actions", json={
                    "action": action, "reason": CLEANUP_REASON})
                if r.status_code == 200 and action == "cancel":
                    cancelled += 1
            if not pending:
                break
        for a in await self._alarms():
            if a["state"] != "cleared" and (a["device_id"] in self.owned or (
                    a.get("situation") and a.get("grid_id") in grids)):
                await self._http("POST", f"/api/alarms/{a['id']}/clear", json={
                    "reason": CLEANUP_REASON})
        self.note(f"cleanup: {cancelled} case(s) cancelled")
        return cancelled

    # ---- hub access
    async def _open311_key(self) -> str:
        """An Open311 API key for the player, issued with its (admin) token; an earlier
        player's key of the same scenario is revoked first."""
        if self._o311_key:
            return self._o311_key
        # One application per scenario: players of different scenarios run side by side.
        app = ("scenario-" + re.sub(r"[^A-Za-z0-9._-]", "_", self.sc.name))[:48]
        r = await self._http("POST", "/api/open311/keys", json={"app_name": app})
        if r.status_code == 409:
            for k in (await self._get("/api/open311/keys")):
                if k["app_name"] == app and k["revoked_at"] is None:
                    await self._http("DELETE", f"/api/open311/keys/{k['key_id']}")
            r = await self._http("POST", "/api/open311/keys", json={"app_name": app})
        if r.status_code != 201:
            raise ScenarioError(f"cannot get an Open311 API key ({r.status_code}): Open311 "
                                "reports need the player's token to be an admin's")
        self._o311_key = str(r.json()["api_key"])
        return self._o311_key

    async def _http(self, method: str, url: str, **kw: Any) -> httpx.Response:
        assert self.client is not None
        return await self.client.request(method, url, **kw)

    async def _get(self, url: str, **params: Any) -> Any:
        r = await self._http("GET", url, params=params or None)
        r.raise_for_status()
        return r.json()

    async def _alarms(self) -> list[dict[str, Any]]:
        rows = await self._get("/api/alarms", state="all", limit=1000)
        return [a for a in rows if int(a["id"]) > self.base_alarm]

    async def _incidents(self) -> list[dict[str, Any]]:
        rows = await self._get("/api/incidents", state="all", limit=1000)
        return [i for i in rows if int(i["id"]) > self.base_incident]

    async def _hub_newest(self, device_id: str) -> float | None:
        r = await self._http("GET", f"/api/devices/{device_id}/latest")
        if r.status_code != 200:
            return None
        return max((float(m["ts"]) for m in r.json()["metrics"].values()), default=None)

    async def _case_id(self, ref: Mapping[str, Any]) -> int | None:
        if "label" in ref:
            return self.labels.get(ref["label"])
        cases = [i for i in await self._incidents() if i["category"] == ref["category"]
                 and (ref["grids"] is None or i["grid_id"] in ref["grids"])]
        return max((int(i["id"]) for i in cases), default=None)


class _View:
    """One consistent read of the hub for checking a batch of expectations."""

    def __init__(self, player: Player, alarms: list[dict[str, Any]],
                 incidents: list[dict[str, Any]]) -> None:
        self.p = player
        self.alarms = alarms
        self.incidents = incidents
        self.units: dict[str, dict[str, Any]] = {}
        self.snapshot_alarms: set[int] = set()
        self._details: dict[int, dict[str, Any]] = {}

    async def detail(self, iid: int) -> dict[str, Any]:
        if iid not in self._details:
            self._details[iid] = await self.p._get(f"/api/incidents/{iid}")
        return self._details[iid]

    async def check(self, e: Expectation) -> str | None:
        if e.kind == "alarm":
            return self._alarm(e)
        if e.kind == "situation":
            return self._situation(e)
        return await self._case(e)

    # alarms
    @staticmethod
    def _in_state(a: Mapping[str, Any], states: Sequence[str]) -> bool:
        st = a["state"]
        return any(s == "any" or s == st or (s == "open" and st != "cleared") for s in states)

    def _alarm(self, e: Expectation) -> str | None:
        s = e.spec
        states = s["state"]
        rule = [a for a in self.alarms if a["rule_id"] == e.subject and not a.get("situation")]
        devices: Sequence[str | None] = s.get("devices") or [None]
        problems = []
        for d in devices:
            mine = [a for a in rule if d is None or a["device_id"] == d]
            hits = [a for a in mine if self._in_state(a, states)]
            at = f" at {d}" if d else ""
            if e.absent:
                if hits:
                    problems.append(f"expected none{at}, found #{hits[0]['id']} "
                                    f"({hits[0]['state']}, value {hits[0]['value']})")
                continue
            if not hits:
                seen = ", ".join(f"#{a['id']} {a['state']}" for a in mine)
                problems.append(f"no {'/'.join(states)} alarm{at}"
                                + (f" (only {seen})" if seen else ""))
                continue
            a = hits[0]
            if "severity" in s and a["severity"] != s["severity"]:
                problems.append(f"#{a['id']}{at} is {a['severity']}, expected {s['severity']}")
            if "before" in s:
                other = [b for b in self.alarms if b["rule_id"] == s["before"]
                         and b["device_id"] == a["device_id"]]
                if other and min(b["raised_at"] for b in other) < a["raised_at"]:
                    problems.append(f"#{a['id']}{at} was raised after {s['before']}")
            if s.get("in_snapshot") and int(a["id"]) not in self.snapshot_alarms:
                problems.append(f"#{a['id']}{at} is not in the console's live snapshot")
        return "; ".join(problems) or None

    def _situation(self, e: Expectation) -> str | None:
        s = e.spec
        key = f"storm:{e.subject}"
        mine = [a for a in self.alarms if a.get("situation") == key]
        hits = [a for a in mine if self._in_state(a, s["state"])]
        problems = []
        if not hits:
            seen = ", ".join(f"#{a['id']} {a['state']}" for a in mine)
            problems.append(f"no {'/'.join(s['state'])} situation alarm {key}"
                            + (f" (only {seen})" if seen else ""))
        else:
            a = hits[-1]
            if len([x for x in mine if x["state"] != "cleared"]) > 1:
                problems.append("more than one open situation alarm for the grid")
            if "members" in s and a.get("members") != s["members"]:
                problems.append(f"#{a['id']} has {a.get('members')} members, expected "
                                f"{s['members']}")
            if "members_min" in s and (a.get("members") or 0) < s["members_min"]:
                problems.append(f"#{a['id']} has {a.get('members')} members, expected at "
                                f"least {s['members_min']}")
            if s.get("in_snapshot") and int(a["id"]) not in self.snapshot_alarms:
                problems.append(f"#{a['id']} is not in the console's live snapshot")
        if "individual_open" in s:
            devs = set(s["grid_devices"])
            open_ = [a for a in self.alarms if a["rule_id"] == "device_offline"
                     and not a.get("situation") and a["device_id"] in devs
                     and a["state"] != "cleared"]
            if len(open_) != s["individual_open"]:
                problems.append(f"{len(open_)} individual device_offline alarm(s) open for "
                                f"the grid's devices ({', '.join(a['device_id'] for a in open_)})"
                                f", expected {s['individual_open']}")
        return "; ".join(problems) or None

    # cases
    async def _case(self, e: Expectation) -> str | None:
        s = e.spec
        if e.subject.startswith("@"):
            iid = self.p.labels.get(e.subject[1:])
            cases = [i for i in self.incidents if int(i["id"]) == iid]
            if not cases:
                return f"case {e.subject} was never reported"
        else:
            cases = [i for i in self.incidents if i["category"] == e.subject
                     and (s["grids"] is None or i["grid_id"] in s["grids"])]
            where = f" in {', '.join(s['grids'])}" if s["grids"] else ""
            if "count" in s and len(cases) != s["count"]:
                return (f"{len(cases)} {e.subject} case(s){where} "
                        f"({', '.join('#' + str(i['id']) for i in cases)}), expected "
                        f"{s['count']}")
            if not cases and s.get("count") != 0:
                return f"no {e.subject} case{where}"
        problems = []
        for inc in cases:
            for p in await self._one_case(inc, s):
                problems.append(f"case #{inc['id']} ({inc['grid_id']}): {p}")
        return "; ".join(problems) or None

    async def _one_case(self, inc: Mapping[str, Any], s: Mapping[str, Any]) -> list[str]:
        out = []
        iid = int(inc["id"])
        if "priority" in s and inc["priority"] != s["priority"]:
            out.append(f"priority {inc['priority']}, expected {s['priority']}")
        if "state" in s and inc["state"] not in s["state"]:
            out.append(f"state {inc['state']}, expected {'/'.join(s['state'])}")
        if "source" in s and inc["source"] != s["source"]:
            out.append(f"source {inc['source']}, expected {s['source']}")
        if "alarms_cleared" in s and bool(inc.get("alarms_cleared")) != s["alarms_cleared"]:
            out.append(f"alarms_cleared is {inc.get('alarms_cleared')}")
        for stage, states in s.get("sla", {}).items():
            got = ((inc.get("sla") or {}).get(stage) or {}).get("state")
            if got not in states:
                out.append(f"SLA {stage} is {got}, expected {'/'.join(states)}")
        unit_id = inc.get("assigned_unit")
        unit_keys = ("unit", "not_unit", "unit_qualification", "unit_type", "diverted_from")
        if any(k in s for k in unit_keys):
            if not unit_id:
                out.append(f"no unit assigned (state {inc['state']})")
            else:
                unit = self.units.get(unit_id, {})
                if "unit" in s and unit_id != s["unit"]:
                    out.append(f"unit {unit_id} assigned, expected {s['unit']}")
                if "not_unit" in s and unit_id == s["not_unit"]:
                    out.append(f"unit {unit_id} assigned, expected another unit")
                if "unit_qualification" in s and s["unit_qualification"] not in (
                        unit.get("qualifications") or []):
                    out.append(f"unit {unit_id} ({'/'.join(unit.get('qualifications') or [])})"
                               f" lacks {s['unit_qualification']}")
                if "unit_type" in s and unit.get("type") != s["unit_type"]:
                    out.append(f"unit {unit_id} is a {unit.get('type')}, expected "
                               f"{s['unit_type']}")
                if "diverted_from" in s:
                    other = self.p.labels.get(s["diverted_from"])
                    if other is None:
                        out.append(f"case @{s['diverted_from']} was never reported")
                    else:
                        det = await self.detail(other)
                        if not any(a["unit_id"] == unit_id and a["status"] == "preempted"
                                   for a in det["assignments"]):
                            seen = ", ".join(f"{a['unit_id']} {a['status']}"
                                             for a in det["assignments"])
                            out.append(f"{unit_id} was not diverted from case #{other} "
                                       f"(its assignments: {seen or 'none'})")
        if any(k in s for k in ("alarms", "alarms_min", "assignments_include")):
            det = await self.detail(iid)
            n = len(det["alarms"])
            if "alarms" in s and n != s["alarms"]:
                out.append(f"{n} alarm(s) attached, expected {s['alarms']}")
            if "alarms_min" in s and n < s["alarms_min"]:
                out.append(f"{n} alarm(s) attached, expected at least {s['alarms_min']}")
            statuses = [a["status"] for a in det["assignments"]]
            for want in s.get("assignments_include", ()):
                if want not in statuses:
                    out.append(f"no {want} assignment (assignments: "
                               f"{', '.join(statuses) or 'none'})")
        return out


def _devs(ids: Sequence[str]) -> str:
    return ", ".join(ids) if len(ids) <= 4 else f"{', '.join(ids[:3])} and {len(ids) - 3} more"


def _ref(ref: Mapping[str, Any]) -> str:
    if "label" in ref:
        return f"@{ref['label']}"
    return str(ref["category"]) + (f" in {', '.join(ref['grids'])}" if ref["grids"] else "")


def _error_text(r: httpx.Response) -> str:
    try:
        err = r.json().get("error", {})
        return f"{err.get('code')}: {err.get('message')}"
    except (ValueError, AttributeError):
        return r.text[:200]


async def _sleep_until(wall: float) -> None:
    while True:
        wait = wall - time.time()
        if wait <= 0:
            return
        await asyncio.sleep(min(wait, 1.0))


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
