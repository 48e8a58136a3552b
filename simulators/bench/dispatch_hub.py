"""Dispatch benchmark on the running hub: ``./hubctl bench dispatch --hub``.

The replay (simulators/dispatch_bench.py) feeds the decision core a seeded incident stream in
a discrete-event simulation. This mode puts the same stream through the product: a hub
process (``python -m hub serve --roles ingest,dispatch,web``) on a scratch database with the
demo town, its dispatch leader deciding, and simulated field crews (``BenchCrews``) doing what
the replay's units do, through the hub's own interfaces:

- incidents are reported with ``POST /api/incidents`` (source ``operator``: registered at
  once, as in the replay where an incident is dispatchable on arrival), at their stream times;
- a crew learns of a dispatch or a withdrawal (preemption) on its unit's MQTT command topic,
  accepts with ``POST /api/incidents/{id}/actions``, turns out (``TURNOUT_S``, none for a
  unit already moving), drives for the road travel time (``RoadGraph.travel_time_s``, the
  replay's), posts ``start_handling`` on arrival, handles for the incident's pre-drawn time
  and posts ``give_feedback`` (the unit is ``available`` at the scene, as in the replay);
- every unit's GPS fix goes to the hub over MQTT (``gridhub/v1/units/{id}/gps``) every
  ``GPS_PERIOD_S``, interpolated along the straight line while en route (the replay's model
  of what a fix shows), so the leader sees the positions the replay's core sees.

Time-scaling. The hub runs on the wall clock; the *world* runs ``--speed`` times faster:
stream times, turnout, travel and handling are divided by the speed, and the figures are
computed from the database's timestamps multiplied back (sim time = T0 + (t - start) x
speed). This is honest for the decision core because it reads time only to judge GPS
staleness (``stale_after_s``, real seconds, met by fixes every ``GPS_PERIOD_S``) and every
cost it weighs is in road seconds, which are not scaled; the hub's SLA timer and accept
time-outs run at their real lengths (``HUB_SLA_TIME_SCALE`` stays 1) so that no escalation
happens that the replay does not model: crews accept within milliseconds. What the scaling
costs: every real millisecond the hub and the crews take (register -> assignment commit ->
command -> accept; arrival -> ``start_handling`` commit) counts ``speed`` times in simulated
seconds, so response times carry a small positive bias (reported as
``hub_overhead_sim_s``). "Cases today" (the workload term) counts from the database's UTC
midnight: a run that straddles it resets the counts the replay keeps.

The stream is the replay's generator (``make_stream``, same seed) over
``[--start-hour, --start-hour + --hours)`` of the first day, shifted to start at T0, so the
replay run it is compared with (``compare`` on the same incidents) is the "same seed and
horizon". Figures (same keys as the replay): ``engine`` = what the hub did, from the
database; ``closest_idle`` = the replay's baseline on the same stream (the hub has no
closest-idle mode; the baseline is a policy, not the product); ``replay_engine`` = the
replay's core on the same stream; ``agreement`` = hub minus replay for breach shares and mean
response. ``queued_share``: incidents whose first assignment committed more than
``QUEUED_REAL_S`` after their registration; ``decision_p50_ms``/``decision_p99_ms`` of the
hub: registration committed -> first assignment committed, over the incidents not queued
(database transaction included); ``preemptions``: assignments ended as ``preempted``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import paho.mqtt.client as mqtt

from dispatch.geo import RoadGraph
from dispatch.model import DispatchPolicy
from ingest import wire
from ingest.mqtt import BrokerAddress, make_client
from simulators.bench.dispatch_bench import (
    ARRIVE_LIMITS,
    BENCH_POLICY,
    T0,
    TURNOUT_S,
    Incident,
    RunResult,
    Simulation,
    Town,
    compare,
    load_town,
    make_stream,
    summarise,
)
from simulators.bench.harness import (
    ROOT,
    BenchEnv,
    HubProcess,
    ScratchDatabase,
    SyncDb,
    forget_mqtt_session,
    free_port,
)
from simulators.mqtt_login import gateway_url

log = logging.getLogger("simulators.bench.dispatch_hub")

# World seconds per real second. At 60 an hour of incidents takes a minute; the hub's own
# reaction (~10-50 ms from registration to the unit's accept) then costs 1-3 simulated
# seconds against a 60 s turnout and ~15 min responses (a bias under 0.5 %). Faster speeds
# shorten runs but magnify that bias and the jitter of a shared machine.
DEFAULT_SPEED = 60.0
# Three hours of the late-morning peak (09:00-12:00, 1.4-1.5x the mean rate): ~150 incidents,
# the squads saturate and queues form, as in the replay's daytime. The night hours would
# show nothing (no queue, no breach).
DEFAULT_START_HOUR = 9.0
DEFAULT_HOURS = 3.0
# Every unit's fix is re-sent this often (real seconds): well inside the hub's 120 s
# staleness, and at speed 60 an en-route position lags the truth by under 30 simulated
# seconds (~300 m), which moves an ETA far less than the 360 s preemption penalty.
GPS_PERIOD_S = 0.5
# An incident assigned within this long (real seconds) of its registration found a unit
# free: the leader acts on the registration event in milliseconds; anything later waited
# for a unit to free up.
QUEUED_REAL_S = 1.0
# After the last incident, give up waiting for the hub to finish if nothing moved for this
# long (real seconds): a case no unit can take would otherwise hang the run.
STALL_S = 120.0
TITLE_PREFIX = "bench "
# Replays with jittered dispatch delays behind the noise estimate (``jitter_noise``): ~1 s
# each on this (loaded) machine; 20 give the spread to about +-15 %.
JITTER_RUNS = 20
OPERATOR = "operator:bench"


# ---------------------------------------------------------------------- the stream
def window_stream(town: Town, seed: int, start_hour: float, hours: float,
                  rate: float) -> tuple[Incident, ...]:
    """The replay's seeded stream over ``[start_hour, start_hour + hours)``, shifted so its
    window starts at T0 (the replay's day boundaries and spans then match)."""
    shift = start_hour * 3600.0
    full = make_stream(town, seed, start_hour + hours, rate)
    return tuple(dataclasses.replace(inc, opened_at=inc.opened_at - shift)
                 for inc in full if inc.opened_at >= T0 + shift)


# ---------------------------------------------------------------------- crews
@dataclass(slots=True)
class CrewUnit:
    """One simulated unit: where it is and what it does (real time)."""

    id: str
    lon: float  # available / on scene: where it is; en route: where the leg started
    lat: float
    status: str = "available"
    incident: int | None = None
    dest: tuple[float, float] | None = None
    depart_r: float = 0.0
    arrive_r: float = 0.0
    moving: bool = False  # withdrawn while en route: the next leg needs no turnout
    task: asyncio.Task[None] | None = None

    def position(self, now_r: float) -> tuple[float, float]:
        """As dispatch_bench._Unit.position: linear along the leg, by elapsed travel time."""
        if self.status != "en_route" or self.dest is None or self.arrive_r <= self.depart_r:
            return self.lon, self.lat
        f = min(1.0, max(0.0, (now_r - self.depart_r) / (self.arrive_r - self.depart_r)))
        return (self.lon + f * (self.dest[0] - self.lon), self.lat + f * (self.dest[1] - self.lat))


class CaseMoved(Exception):
    """The hub refused a crew's step (409/422): the case is no longer this unit's."""


class BenchCrews:
    """The replay's units, acting through the hub's API on the commands it sends them."""

    def __init__(self, town: Town, graph: RoadGraph, handling_s: Mapping[str, float],
                 client: httpx.AsyncClient, gps: mqtt.Client, speed: float) -> None:
        self.units = {u.id: CrewUnit(u.id, u.lon, u.lat) for u in town.units}
        self.graph = graph
        self.handling_s = handling_s  # stream id -> on-scene seconds (world time)
        self.client = client
        self.gps = gps
        self.speed = speed
        self.seen: set[str] = set()
        self.errors: list[str] = []
        self.conflicts: list[str] = []
        self.commands = {"dispatch": 0, "withdraw": 0}
        self.ours: set[Any] = set()  # incident ids of this run's dispatches
        self.foreign = 0  # commands for cases of another hub on the same broker

    # ---- commands (called on the event loop)
    def on_command(self, unit_id: str, payload: bytes) -> None:
        unit = self.units.get(unit_id)
        if unit is None:
            return
        try:
            cmd = json.loads(payload)
            cid, kind = str(cmd["id"]), str(cmd["type"])
        except (ValueError, KeyError, TypeError):
            self.errors.append(f"unreadable command for {unit_id}")
            return
        if cid in self.seen:  # QoS 1 may deliver twice
            return
        self.seen.add(cid)
        # The broker may carry another hub's commands for units of the same ids (a shared
        # test broker, a demo running beside): only this run's cases are ours.
        if kind == "dispatch" and not str(cmd.get("incident", {}).get("title") or ""
                                          ).startswith(TITLE_PREFIX):
            self.foreign += 1
            return
        if kind == "withdraw" and cmd.get("incident_id") not in self.ours:
            self.foreign += 1
            return
        now = time.time()
        if kind == "withdraw":
            self.commands["withdraw"] += 1
            if unit.incident == cmd.get("incident_id"):
                self._stop(unit, now)
        elif kind == "dispatch":
            self.commands["dispatch"] += 1
            inc = cmd["incident"]
            self.ours.add(inc["id"])
            title = str(inc.get("title") or "")
            if unit.incident is not None:
                self._stop(unit, now)  # the withdrawal may not have arrived yet
            unit.incident = int(inc["id"])
            unit.task = asyncio.create_task(self._leg(
                unit, int(inc["id"]), float(inc["lon"]), float(inc["lat"]),
                self.handling_s.get(title.removeprefix(TITLE_PREFIX), 0.0), now))

    def _stop(self, unit: CrewUnit, now: float) -> None:
        """Taken off its case: the unit stays where it is now, still moving if it was."""
        unit.lon, unit.lat = unit.position(now)
        unit.moving = unit.status == "en_route"
        unit.status, unit.incident, unit.dest = "available", None, None
        if unit.task is not None:
            unit.task.cancel()
            unit.task = None
        self.publish(unit, now)

    async def _leg(self, unit: CrewUnit, iid: int, lon: float, lat: float, handling_s: float,
                   received: float) -> None:
        try:
            diverted = unit.moving
            try:
                await self._act(iid, "accept")
            except CaseMoved:
                # A re-plan that withdrew and re-sent this very unit can race the accept of
                # the first command: the hub then took that accept for the new dispatch.
                if not await self._mine_accepted(iid, unit.id):
                    raise
            unit.depart_r = received + (0.0 if diverted else TURNOUT_S / self.speed)
            travel = self.graph.travel_time_s(unit.lon, unit.lat, lon, lat)
            unit.arrive_r = unit.depart_r + travel / self.speed
            unit.status, unit.dest = "en_route", (lon, lat)
            await asyncio.sleep(max(0.0, unit.arrive_r - time.time()))
            unit.status, unit.lon, unit.lat, unit.dest = "on_scene", lon, lat, None
            unit.moving = False
            self.publish(unit, time.time())
            await self._act(iid, "start_handling")
            await asyncio.sleep(handling_s / self.speed)
            await self._act(iid, "give_feedback", "已到场处置完毕")
            unit.status, unit.incident, unit.task = "available", None, None
        except asyncio.CancelledError:
            raise
        except CaseMoved as e:
            # The hub moved the case between its command and this step (a re-plan of a
            # dispatch not yet accepted, a preemption racing the arrival): its withdrawal
            # command resets the unit. Counted: the replay has no such race.
            self.conflicts.append(f"case {iid} unit {unit.id}: {e}")
        except Exception as e:  # a crew must never take the run down; counted, reported
            self.errors.append(f"case {iid} unit {unit.id}: {type(e).__name__}: {e}")
            log.warning("case %s unit %s: %s", iid, unit.id, e)

    async def _act(self, iid: int, action: str, reason: str | None = None) -> None:
        # Recorded under the bench's token: the hub takes the actor from authentication.
        body: dict[str, Any] = {"action": action}
        if reason is not None:
            body["reason"] = reason
        r = await self.client.post(f"/api/incidents/{iid}/actions", json=body)
        if r.status_code in (409, 422):
            raise CaseMoved(f"{action} refused: {r.text[:200]}")
        r.raise_for_status()

    async def _mine_accepted(self, iid: int, unit_id: str) -> bool:
        r = await self.client.get(f"/api/incidents/{iid}")
        inc = r.json().get("incident", {}) if r.status_code == 200 else {}
        return bool(inc.get("assigned_unit") == unit_id and inc.get("state") == "accepted")

    # ---- GPS
    def publish(self, unit: CrewUnit, now: float) -> None:
        lon, lat = unit.position(now)
        self.gps.publish(wire.gps_topic(unit.id), wire.encode_gps(now, lat, lon), qos=0)

    async def gps_loop(self) -> None:
        while True:
            now = time.time()
            for unit in self.units.values():
                self.publish(unit, now)
            await asyncio.sleep(GPS_PERIOD_S)


def _mqtt(url: str, client_id: str, crews_ref: list[BenchCrews],
          loop: asyncio.AbstractEventLoop, connected: asyncio.Event) -> mqtt.Client:
    """One client for both directions: the fleet account publishes fixes and reads every
    unit's commands (as the demo's crews do)."""
    client = make_client(client_id, BrokerAddress.parse(url), persistent=False, v311=True)

    def on_connect(c: mqtt.Client, *_: object) -> None:
        c.subscribe("gridhub/v1/units/+/commands", qos=1)
        loop.call_soon_threadsafe(connected.set)

    def on_message(c: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if len(parts) == 5 and crews_ref:
            loop.call_soon_threadsafe(crews_ref[0].on_command, parts[3], bytes(msg.payload))

    client.on_connect = on_connect
    client.on_message = on_message
    client.loop_start()
    return client


# ---------------------------------------------------------------------- the run
async def drive(base_url: str, token: str, town: Town, stream: Sequence[Incident],
                speed: float, mqtt_url: str, say: Any) -> dict[str, Any]:
    """Feed ``stream`` to the hub at ``speed`` with crews answering; return when every
    incident has had its unit on scene and been handled (or the hub stalled)."""
    loop = asyncio.get_running_loop()
    crews_ref: list[BenchCrews] = []
    connected = asyncio.Event()
    client_id = f"dispatch-hub-bench-{os.getpid()}-{int(time.time())}"
    gps = _mqtt(mqtt_url, client_id, crews_ref, loop, connected)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30.0) as client:
        crews = BenchCrews(town, town.graph, {i.id: i.handling_s for i in stream}, client,
                           gps, speed)
        crews_ref.append(crews)
        gps_task: asyncio.Task[None] | None = None
        start = time.time()
        try:
            await asyncio.wait_for(connected.wait(), 20.0)
            gps_task = asyncio.create_task(crews.gps_loop())
            await _wait_positions(client, crews)
            posts: list[asyncio.Task[httpx.Response]] = []
            start = time.time() + 0.5
            for inc in stream:
                due = start + (inc.opened_at - T0) / speed
                await asyncio.sleep(max(0.0, due - time.time()))
                posts.append(asyncio.create_task(client.post("/api/incidents", json={
                    "category": inc.category, "qualification": inc.qualification,
                    "priority": inc.priority, "title": TITLE_PREFIX + inc.id,
                    "lon": inc.lon, "lat": inc.lat, "source": "operator",
                    "reporter": OPERATOR})))
            for r in await asyncio.gather(*posts):
                r.raise_for_status()
            say(f"all {len(stream)} incidents reported; waiting for the crews")
            await _wait_handled(client, len(stream), say)
        finally:
            if gps_task is not None:
                gps_task.cancel()
            for unit in crews.units.values():
                if unit.task is not None:
                    unit.task.cancel()
            gps.loop_stop()
            gps.disconnect()
    return {"start": start, "crew_errors": crews.errors, "commands": crews.commands,
            "conflicts": crews.conflicts}


async def _wait_positions(client: httpx.AsyncClient, crews: BenchCrews) -> None:
    """Until the hub holds a fix of every unit at its start position (ingest is up)."""
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        units = (await client.get("/api/units")).json()
        fresh = {u["id"] for u in units if u.get("position_ts") and u.get("lon") is not None
                 and abs(float(u["lon"]) - crews.units[u["id"]].lon) < 1e-6}
        if set(crews.units) <= fresh:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError("the hub did not store the units' start positions within 60 s")


async def _wait_handled(client: httpx.AsyncClient, n: int, say: Any) -> None:
    last, since = -1, time.monotonic()
    while True:
        rows = (await client.get("/api/incidents", params={"limit": 1000})).json()
        done = sum(1 for r in rows if str(r.get("title", "")).startswith(TITLE_PREFIX)
                   and r.get("state") not in ("registered", "dispatched", "accepted",
                                              "handling"))
        if done >= n:
            return
        if done != last:
            last, since = done, time.monotonic()
        elif time.monotonic() - since > STALL_S:
            say(f"stalled: {done}/{n} incidents handled after {STALL_S:.0f} s without change")
            return
        await asyncio.sleep(1.0)


# ---------------------------------------------------------------------- figures
RESULT_SQL = f"""
SELECT i.id, i.title, i.priority, extract(epoch FROM i.opened_at)::float8 AS opened,
  (SELECT extract(epoch FROM min(l.ts))::float8 FROM case_log l
     WHERE l.incident_id = i.id AND l.action = 'start_handling') AS arrived,
  (SELECT extract(epoch FROM min(l.ts))::float8 FROM case_log l
     WHERE l.incident_id = i.id AND l.action = 'give_feedback') AS freed,
  (SELECT extract(epoch FROM min(a.assigned_at))::float8 FROM assignments a
     WHERE a.incident_id = i.id) AS first_assigned,
  (SELECT extract(epoch FROM min(l.ts))::float8 FROM case_log l
     WHERE l.incident_id = i.id AND l.action = 'accept') AS first_accepted,
  (SELECT l.actor FROM case_log l WHERE l.incident_id = i.id
     AND l.action = 'start_handling' ORDER BY l.seq LIMIT 1) AS reached_by
FROM incidents i WHERE i.title LIKE '{TITLE_PREFIX}%' ORDER BY i.id
"""
# Busy time of units: each assignment from its start to the case's feedback (it finished)
# or to the withdrawal that ended it (the unit went straight on to another case).
BUSY_SQL = """
SELECT a.unit_id, extract(epoch FROM a.assigned_at)::float8 AS t0,
  extract(epoch FROM CASE WHEN a.status = 'done' THEN
    (SELECT min(l.ts) FROM case_log l WHERE l.incident_id = a.incident_id
       AND l.action = 'give_feedback' AND l.ts >= a.assigned_at)
  ELSE (SELECT min(l.ts) FROM case_log l WHERE l.incident_id = a.incident_id
       AND l.action IN ('withdraw', 'decline') AND l.ts >= a.assigned_at) END)::float8 AS t1,
  a.status
FROM assignments a
"""


def hub_result(rows: Sequence[Mapping[str, Any]], busy: Sequence[Mapping[str, Any]],
               stream: Sequence[Incident], start: float, speed: float,
               n_units: int) -> tuple[RunResult, dict[str, Any]]:
    """What the database recorded, as the replay's ``RunResult`` (simulated seconds, stream
    order) plus the hub-only figures. An incident never reached counts its response up to
    the last recorded moment (so it is a breach of any limit it passed), and is listed."""
    by_title = {str(r["title"]).removeprefix(TITLE_PREFIX): r for r in rows}
    missing = [inc.id for inc in stream if inc.id not in by_title]
    if missing:
        raise RuntimeError(f"{len(missing)} incidents not in the database: {missing[:5]}")
    last = max([float(r[k]) for r in rows for k in ("arrived", "freed") if r[k] is not None]
               + [start])
    response, queued, latency, overhead, unreached = [], [], [], [], []
    for inc in stream:
        r = by_title[inc.id]
        opened = float(r["opened"])
        arrived = float(r["arrived"]) if r["arrived"] is not None else None
        if arrived is None:
            unreached.append(inc.id)
        response.append(((arrived if arrived is not None else last) - opened) * speed)
        first = r["first_assigned"]
        waited = first is None or float(first) - opened > QUEUED_REAL_S
        queued.append(waited)
        if not waited:
            latency.append((float(first) - opened) * 1e3)
        # The hub's lateness: registration committed vs when the stream said it happened.
        overhead.append((opened - (start + (inc.opened_at - T0) / speed)) * speed)
    busy_s = sum((float(b["t1"]) - float(b["t0"])) * speed for b in busy
                 if b["t1"] is not None)
    span = (last - start) * speed
    preempted = sum(1 for b in busy if b["status"] == "preempted")
    result = RunResult("hub", tuple(response), tuple(queued), preempted, tuple(latency),
                       busy_s / (span * n_units) if span > 0 else 0.0, span)
    return result, {"unreached": unreached,
                    "report_lag_sim_s_mean": round(sum(overhead) / len(overhead), 2)
                    if overhead else 0.0}


def _diff(a: float | None, b: float | None, nd: int = 4) -> float | None:
    return round(a - b, nd) if a is not None and b is not None else None


def agreement(hub: Mapping[str, Any], replay: Mapping[str, Any]) -> dict[str, Any]:
    """Hub minus replay, for the figures the issue compares."""
    keys = [k for k in hub if k.startswith("breach_share")] + ["mean_response_s",
                                                               "p90_response_s"]
    out: dict[str, Any] = {k: _diff(hub.get(k), replay.get(k)) for k in keys}
    mr = replay.get("mean_response_s")
    out["mean_response_rel"] = (round((hub["mean_response_s"] - mr) / mr, 4) if mr else None)
    return out


def same_units(rows: Sequence[Mapping[str, Any]], town: Town, stream: Sequence[Incident],
               policy: DispatchPolicy) -> dict[str, Any]:
    """Did the hub send the units the replay sent? ``same_unit_share``: incidents reached by
    the same unit in both; ``first_divergence_min``: simulated minutes into the window of the
    first incident reached by another unit (timing differences show up as late
    divergences that then cascade; a different decision rule would diverge early)."""
    sim = Simulation(town, stream, "engine", policy)
    sim.run()
    replay_unit = {inc.id: (sim.units[c.unit].spec.id if c.unit is not None else None)
                   for inc, c in zip(stream, sim.cases, strict=True)}
    by_title = {str(r["title"]).removeprefix(TITLE_PREFIX): r for r in rows}
    differ = [inc for inc in stream
              if by_title.get(inc.id, {}).get("reached_by") != replay_unit[inc.id]]
    return {"same_unit_share": round(1 - len(differ) / len(stream), 4) if stream else None,
            "first_divergence_min": round((differ[0].opened_at - T0) / 60, 1)
            if differ else None}


def reaction_sim_s(rows: Sequence[Mapping[str, Any]], speed: float) -> list[float]:
    """The hub's reaction, registration committed -> first accept committed, for each
    incident that found a unit free, in simulated seconds: the delay the time-scaling adds
    to a dispatch (the replay's units are en route the instant they are dispatched)."""
    return [(float(r["first_accepted"]) - float(r["opened"])) * speed for r in rows
            if r["first_accepted"] is not None and r["first_assigned"] is not None
            and float(r["first_assigned"]) - float(r["opened"]) <= QUEUED_REAL_S]


def jitter_noise(town: Town, stream: Sequence[Incident], policy: DispatchPolicy,
                 limits: str, delays_s: Sequence[float],
                 runs: int = JITTER_RUNS) -> dict[str, Any]:
    """How far the replay itself moves when its dispatches come as late as the hub's: each
    run delays each incident's arrival at the core by a delay drawn from ``delays_s`` (the
    hub's measured reactions, resampled) and counts the delay in its response. One
    different pick early in a busy window re-routes everything after it, so this spread,
    not zero, is what the hub can be expected to agree within."""
    if not delays_s:
        delays_s = [0.0]
    lim = ARRIVE_LIMITS[limits]
    others = {k: v for k, v in ARRIVE_LIMITS.items() if k != limits}
    shares: dict[str, list[float]] = {"breach_share": [], **{f"breach_share_{k}": []
                                                           for k in others}}
    means: list[float] = []
    for k in range(runs):
        rng = random.Random(f"jitter/{k}")
        delays = [rng.choice(delays_s) for _ in stream]
        late = [dataclasses.replace(inc, opened_at=inc.opened_at + d)
                for inc, d in zip(stream, delays, strict=True)]
        res = Simulation(town, late, "engine", policy).run()
        resp = [r + d for r, d in zip(res.response_s, delays, strict=True)]
        means.append(sum(resp) / len(resp))
        shares["breach_share"].append(
            sum(r > lim[i.priority] for r, i in zip(resp, stream, strict=True)) / len(resp))
        for name, other in others.items():
            shares[f"breach_share_{name}"].append(
                sum(r > other[i.priority] for r, i in zip(resp, stream, strict=True))
                / len(resp))
    out: dict[str, Any] = {"runs": runs,
                           "delay_mean_s": round(statistics.mean(delays_s), 2),
                           "delay_max_s": round(max(delays_s), 2),
                           "mean_response_s": round(statistics.mean(means), 1),
                           "mean_response_sd": round(statistics.stdev(means), 1)}
    for key, vals in shares.items():
        out[key] = round(statistics.mean(vals), 4)
        out[f"{key}_sd"] = round(statistics.stdev(vals), 4)
    return out


def run(args: argparse.Namespace, say: Any) -> dict[str, Any]:
    """The whole ``--hub`` run: set up, drive, read the database, compare. See the doc."""
    env = BenchEnv.from_environ()
    town = load_town(args.town, 1.0, args.seed)
    stream = window_stream(town, args.seed, args.start_hour, args.hours, args.rate)
    if not stream:
        raise ValueError("the window holds no incident")
    limits = args.limits
    others = {k: v for k, v in ARRIVE_LIMITS.items() if k != limits}
    say(f"seed {args.seed}: {len(stream)} incidents over {args.hours:g} h from "
        f"{args.start_hour:g}:00 at speed {args.speed:g} (~"
        f"{args.hours * 3600 / args.speed / 60:.1f} min of arrivals)")
    t_wall = time.perf_counter()
    replay = compare(town, stream, BENCH_POLICY, limits, say)
    run_id = f"{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}"
    db = ScratchDatabase(env.database_url, f"bench_dispatch_hub_{run_id}", keep=args.keep_db,
                         admin_url=os.environ.get("HUB_ADMIN_DATABASE_URL"))
    client_id = f"gridhub-dispatch-bench-{run_id}"
    hub_env = {**os.environ, "HUB_DATABASE_URL": db.url, "HUB_MQTT_CLIENT_ID": client_id,
               "HUB_MQTT_SHARE_GROUP": f"dispatchbench{run_id.replace('_', '')}",
               "HUB_HTTP_PORT": str(free_port()),
               # The replay's policy (the hub's defaults today; explicit so both stay equal).
               "HUB_DISPATCH_PREEMPT_UP_TO_PRIORITY": str(BENCH_POLICY.preempt_up_to_priority),
               "HUB_DISPATCH_PREEMPT_PENALTY_S": str(BENCH_POLICY.preempt_penalty_s),
               "HUB_DISPATCH_REPLAN_GAIN_S": str(BENCH_POLICY.replan_gain_s),
               "HUB_POSITION_STALE_AFTER_S": str(BENCH_POLICY.stale_after_s)}
    hub = HubProcess(hub_env, "ingest,dispatch,web",
                     env.var_dir / "log" / f"bench-dispatch-hub-{run_id}.log")
    try:
        db.create()
        subprocess.run([sys.executable, "-m", "hub", "load-town"], cwd=ROOT, env=hub_env,
                       check=True, stdout=subprocess.DEVNULL)
        # Only the stream's cases: the town's alarm rules would open cases of their own
        # (its sensors never report here, so a no-data rule fires once a run outlasts three
        # reporting intervals, and a shared broker may carry other publishers' readings).
        with SyncDb(db.url) as sdb:
            sdb.execute("UPDATE rules SET enabled = false")
        hub.start()
        hub.wait_healthy()
        assert hub.token is not None
        say(f"hub pid {hub.pid} ready (log {hub.log_path})")
        drove = asyncio.run(drive(hub.url(""), hub.token, town, stream, args.speed,
                                  gateway_url("SIM"), say))
        with SyncDb(db.url) as sdb:
            rows = [dict(r) for r in sdb.fetch(RESULT_SQL)]
            busy = [dict(r) for r in sdb.fetch(BUSY_SQL)]
    finally:
        hub.stop()
        forget_mqtt_session(env.mqtt_host, env.mqtt_port, client_id)
        db.drop()
    result, extra = hub_result(rows, busy, stream, drove["start"], args.speed,
                               len(town.units))
    eng = summarise(result, stream, ARRIVE_LIMITS[limits], others)
    ci = replay["closest_idle"]
    out: dict[str, Any] = {"closest_idle": ci, "engine": eng,
                           "replay_engine": replay["engine"],
                           "agreement": {**agreement(eng, replay["engine"]),
                                         **same_units(rows, town, stream, BENCH_POLICY)}}
    noise = jitter_noise(town, stream, BENCH_POLICY, limits, reaction_sim_s(rows, args.speed))
    out["replay_jitter"] = noise
    # Hub vs the jittered replays, in their standard deviations (|z| <= 2: within noise).
    for key, sd in (("mean_response_s", "mean_response_sd"), ("breach_share", "breach_share_sd")):
        out["agreement"][f"{key}_z"] = (round((eng[key] - noise[key]) / noise[sd], 2)
                                        if noise[sd] else None)
    out["decision_p99_ms"] = eng["decision_p99_ms"]
    red = _reduction(ci["breach_share"], eng["breach_share"])
    out["breach_reduction"] = red
    for name in others:
        key = f"breach_share_{name}"
        out[f"breach_reduction_{name}"] = _reduction(ci[key], eng[key])
    change = _reduction(ci["mean_response_s"], eng["mean_response_s"])
    out["mean_response_change"] = -change if change is not None else None
    out["replay"] = {k: replay[k] for k in replay if k.startswith(("breach_reduction",
                                                                   "mean_response_change"))}
    out.update({
        "mode": "hub", "limits": limits, "seed": args.seed, "hours": args.hours,
        "start_hour": args.start_hour, "rate": args.rate, "speed": args.speed,
        "units": len(town.units), "incidents": len(stream),
        "unreached": extra["unreached"], "report_lag_sim_s_mean":
            extra["report_lag_sim_s_mean"],
        "database": db.name if args.keep_db else None,
        "crew_errors": drove["crew_errors"][:10], "commands": drove["commands"],
        "crew_conflicts": len(drove["conflicts"]), "conflicts": drove["conflicts"][:5],
        "load_per_cpu": round(os.getloadavg()[0] / (os.cpu_count() or 1), 2),
        "wall_s": round(time.perf_counter() - t_wall, 1),
    })
    return out


def _reduction(ci: float, eng: float) -> float | None:
    return round((ci - eng) / ci, 4) if ci else None


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``--hub`` options (besides the replay's --seed, --rate, --limits, --town)."""
    p.add_argument("--speed", type=float, default=None,
                   help=f"world seconds per real second: --hub's world (default "
                        f"{DEFAULT_SPEED:g}); --from-db: the recorded world's (default 1; a "
                        f"--hub run's database was recorded at that run's --speed)")
    p.add_argument("--start-hour", type=float, default=DEFAULT_START_HOUR,
                   help="--hub: the window of the first day's stream starts at this hour")
    p.add_argument("--keep-db", action="store_true",
                   help="--hub: keep the scratch database (its name is printed)")


def main(args: argparse.Namespace) -> int:
    def say(msg: str) -> None:
        print(f"[dispatch-bench --hub] {msg}", file=sys.stderr, flush=True)

    args.speed = DEFAULT_SPEED if args.speed is None else args.speed
    if args.speed <= 0:
        raise SystemExit("--speed must be positive")
    if args.hours > 24 - args.start_hour:
        raise SystemExit("--hub: the window must end within the first day")
    out = run(args, say)
    e, r = out["engine"], out["replay_engine"]
    say(f"hub: {e['breach_share']:.1%} breaches, mean {e['mean_response_s']:.0f} s; replay: "
        f"{r['breach_share']:.1%}, mean {r['mean_response_s']:.0f} s")
    print(json.dumps(out, ensure_ascii=False), flush=True)
    return 0


