"""Dispatch benchmark on the running hub: ``./hubctl bench dispatch --hub``.

The replay (simulators/bench/dispatch_bench.py) feeds the decision core a seeded incident stream in
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
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import httpx

from simulators.bench.dispatch_bench import compare, summarise
from simulators.bench.dispatch_hub_crews import TITLE_PREFIX, BenchCrews, _mqtt
from simulators.bench.dispatch_hub_figures import (
    BUSY_SQL,
    RESULT_SQL,
    agreement,
    hub_result,
    jitter_noise,
    reaction_sim_s,
    same_units,
)
from simulators.bench.dispatch_sim import BENCH_POLICY
from simulators.bench.dispatch_town import Town, load_town
from simulators.bench.dispatch_workload import ARRIVE_LIMITS, T0, Incident, make_stream
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
# After the last incident, give up waiting for the hub to finish if nothing moved for this
# long (real seconds): a case no unit can take would otherwise hang the run.
STALL_S = 120.0
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


