"""Replay what a hub recorded: ``./hubctl bench dispatch --from-db [DATABASE_URL]``.

"What would this policy have done last week?" The incidents a hub's database holds in
``[--since, --until)`` (default: the last 7 days) go through the replay's simulation
(simulators/bench/dispatch_bench.py) twice, under closest-idle and under the decision core with the
benchmark's policy (``--set KNOB=VALUE`` to try another), on the roads, units and unit
positions of that same database. The figures have the replay's keys, plus ``recorded``: the
same figures for what the hub actually did, from its case log.

What is taken from the database:

- incidents: every incident registered in the range (the time of its ``register`` case-log
  entry is its arrival: time before registration is the operator's, not dispatch's),
  with its category, qualification, priority and place. Incidents that no unit of the
  database is qualified for cannot be dispatched by either policy and are left out (counted
  in ``skipped_unqualified``);
- on-scene time: from its ``start_handling`` to its first ``give_feedback``; an incident
  without both (never reached, still open) gets the median recorded time of its category,
  else ``FALLBACK_HANDLING_S`` (counted in ``imputed_handling``);
- units: the ``units`` table (id, type, qualifications, home grid), each starting at its last
  GPS fix at ``--since`` (``positions``), else its first one after, else its current one;
  units with none are left out;
- roads: the ``roads`` table, as the hub's dispatcher builds its graph.

Times are shifted so that the local midnight (``TOWN_TZ``) before ``--since`` is the
simulation's T0: "cases today" resets at the town's midnight, as in the replay. A database
recorded by a world running faster than the wall clock (a ``--hub`` run's, kept with
``--keep-db``) is read with that run's ``--speed``: its times are multiplied back and
``--since`` is T0.
Every unit is on duty and answers at once (the replay's model): the comparison is between
policies on the same calls, not a reconstruction of the shifts and delays of that week.

``DATABASE_URL`` defaults to ``HUB_DATABASE_URL``; ``demo`` means the demo's database
(``./hubctl env demo``). Under ``./hubctl bench`` HUB_DATABASE_URL is the bench's own
database, so name the one to read.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from dispatch.geo import RoadGraph
from dispatch.model import DispatchPolicy
from simulators.bench.dispatch_bench import compare
from simulators.bench.dispatch_town import Town, UnitSpec
from simulators.bench.dispatch_workload import ARRIVE_LIMITS, CATEGORIES, T0, Incident
from simulators.bench.harness import ROOT, SyncDb

# The town's time zone: day boundaries ("cases today") are local.
TOWN_TZ = ZoneInfo("Asia/Shanghai")
# On-scene time of an incident of an unknown category with no recorded handling: the middle
# of the replay's category medians (25-50 min).
FALLBACK_HANDLING_S = 35 * 60.0
DEFAULT_DAYS = 7.0

INCIDENTS_SQL = """
SELECT i.id, i.category, i.qualification, i.priority, i.lon, i.lat,
       coalesce(i.grid_id, '') AS grid_id,
       extract(epoch FROM r.ts)::float8 AS registered,
       extract(epoch FROM h.ts)::float8 AS arrived,
       extract(epoch FROM (SELECT min(l.ts) FROM case_log l WHERE l.incident_id = i.id
         AND l.action = 'give_feedback' AND l.ts >= h.ts))::float8 AS freed
FROM incidents i
JOIN LATERAL (SELECT min(ts) AS ts FROM case_log WHERE incident_id = i.id
              AND action = 'register') r ON r.ts IS NOT NULL
LEFT JOIN LATERAL (SELECT min(ts) AS ts FROM case_log WHERE incident_id = i.id
                   AND action = 'start_handling') h ON true
WHERE r.ts >= $1 AND r.ts < $2
ORDER BY r.ts, i.id
"""
UNITS_SQL = """
SELECT u.id, u.type, u.qualifications, u.home_grid,
       coalesce(p.lon, q.lon, u.lon) AS lon, coalesce(p.lat, q.lat, u.lat) AS lat
FROM units u
LEFT JOIN LATERAL (SELECT lon, lat FROM positions WHERE unit_id = u.id AND ts <= $1
                   ORDER BY ts DESC LIMIT 1) p ON true
LEFT JOIN LATERAL (SELECT lon, lat FROM positions WHERE unit_id = u.id AND ts > $1
                   ORDER BY ts LIMIT 1) q ON true
WHERE u.status <> 'off_duty' OR p.lon IS NOT NULL
ORDER BY u.id
"""
ROADS_SQL = "SELECT id, name, class, speed_kmh, geometry FROM roads"


def demo_database_url() -> str:
    """The demo's HUB_DATABASE_URL, as ``./hubctl env demo`` prints it (the caller's own
    HUB_DATABASE_URL removed, or hubctl would echo it back)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("HUB_DATABASE_URL", "HUB_MQTT_URL")}
    out = subprocess.run([str(ROOT / "hubctl"), "env", "demo"], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=False)
    for line in out.stdout.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        if key == "HUB_DATABASE_URL":
            return value.strip().strip("'\"")
    raise SystemExit(f"--from-db demo: ./hubctl env demo printed no HUB_DATABASE_URL "
                     f"({out.stderr.strip()[-300:]})")


def local_midnight(ts: float) -> float:
    """The town's midnight at or before ``ts``."""
    d = datetime.fromtimestamp(ts, TOWN_TZ)
    return d.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def _category_medians() -> dict[str, float]:
    return {c.name: c.handling_median_s for c in CATEGORIES}


def build(incidents: Sequence[Mapping[str, Any]], units: Sequence[Mapping[str, Any]],
          graph: RoadGraph, since: float, speed: float = 1.0
          ) -> tuple[Town, tuple[Incident, ...], dict[str, Any]]:
    """The recorded week as the replay's town and stream (pure: rows in, values out).

    ``speed`` > 1: the database recorded a world running that much faster than the wall
    clock (a ``--hub`` run): its times are multiplied back, ``since`` becoming T0."""
    specs = tuple(UnitSpec(str(u["id"]), str(u["type"]), frozenset(u["qualifications"]),
                           str(u["home_grid"]), float(u["lon"]), float(u["lat"]))
                  for u in units if u["lon"] is not None and u["lat"] is not None)
    held = set().union(*(s.qualifications for s in specs)) if specs else set()
    recorded: dict[str, list[float]] = {}
    for r in incidents:
        if r["arrived"] is not None and r["freed"] is not None:
            recorded.setdefault(str(r["category"]), []).append(
                (float(r["freed"]) - float(r["arrived"])) * speed)
    medians = {k: statistics.median(v) for k, v in recorded.items()}
    fallback = _category_medians()
    origin = local_midnight(since) if speed == 1.0 else since
    stream: list[Incident] = []
    skipped, imputed = 0, 0
    for r in incidents:
        if r["qualification"] not in held:
            skipped += 1
            continue
        if r["arrived"] is not None and r["freed"] is not None:
            handling = (float(r["freed"]) - float(r["arrived"])) * speed
        else:
            imputed += 1
            handling = medians.get(str(r["category"]),
                                   fallback.get(str(r["category"]), FALLBACK_HANDLING_S))
        stream.append(Incident(str(r["id"]), str(r["category"]), str(r["qualification"]),
                               int(r["priority"]), float(r["lon"]), float(r["lat"]),
                               str(r["grid_id"]),
                               T0 + (float(r["registered"]) - origin) * speed,
                               max(handling, 0.0)))
    return (Town(graph, specs, (), ()), tuple(stream),
            {"skipped_unqualified": skipped, "imputed_handling": imputed})


def recorded_figures(incidents: Sequence[Mapping[str, Any]], stream: Sequence[Incident],
                     limits: str, speed: float = 1.0) -> dict[str, Any]:
    """What the hub did with the same incidents: response = start_handling - register, over
    the incidents it reached (``reached``); those not reached are counted, not guessed."""
    kept = {inc.id for inc in stream}
    resp: list[tuple[int, float]] = [
        (int(r["priority"]), (float(r["arrived"]) - float(r["registered"])) * speed)
        for r in incidents if str(r["id"]) in kept and r["arrived"] is not None]
    out: dict[str, Any] = {"incidents": len(kept), "reached": len(resp)}
    if not resp:
        return out
    out["mean_response_s"] = round(sum(t for _, t in resp) / len(resp), 1)
    lim = ARRIVE_LIMITS[limits]
    out["breach_share"] = round(sum(t > lim[p] for p, t in resp) / len(resp), 4)
    for name, other in ARRIVE_LIMITS.items():
        if name != limits:
            out[f"breach_share_{name}"] = round(sum(t > other[p] for p, t in resp) / len(resp),
                                                4)
    return out


def run(url: str, since: float, until: float, policy: DispatchPolicy, limits: str,
        say: Any, speed: float = 1.0) -> dict[str, Any]:
    t = time.perf_counter()
    since_dt, until_dt = datetime.fromtimestamp(since, UTC), datetime.fromtimestamp(until, UTC)
    with SyncDb(url) as db:
        incidents = [dict(r) for r in db.fetch(INCIDENTS_SQL, since_dt, until_dt)]
        units = [dict(r) for r in db.fetch(UNITS_SQL, since_dt)]
        roads = db.fetch(ROADS_SQL)
    graph = RoadGraph.from_geojson({"type": "FeatureCollection", "features": [
        # A plain connection returns jsonb as text (the hub's pool decodes it).
        {"type": "Feature", "geometry": (json.loads(r["geometry"])
                                         if isinstance(r["geometry"], str) else r["geometry"]),
         "properties": {"id": r["id"], "name": r["name"], "class": r["class"],
                        "speed_kmh": r["speed_kmh"]}} for r in roads]})
    town, stream, notes = build(incidents, units, graph, since, speed)
    say(f"{len(stream)} incidents registered {since_dt:%Y-%m-%d %H:%M} - "
        f"{until_dt:%Y-%m-%d %H:%M} UTC, {len(town.units)} units, {len(roads)} roads")
    if not stream:
        raise SystemExit("--from-db: no dispatchable incident was registered in that range")
    out = compare(town, stream, policy, limits, say)
    out["recorded"] = recorded_figures(incidents, stream, limits, speed)
    out.update({"mode": "from-db", "speed": speed, "since": since_dt.isoformat(),
                "until": until_dt.isoformat(), "units": len(town.units),
                "incidents": len(stream), **notes,
                "wall_s": round(time.perf_counter() - t, 1)})
    return out


def parse_time(text: str) -> float:
    """ISO date or date-time; a naive one is the town's local time."""
    d = datetime.fromisoformat(text)
    if d.tzinfo is None:
        d = d.replace(tzinfo=TOWN_TZ)
    return d.timestamp()


def main(args: argparse.Namespace, policy: DispatchPolicy) -> int:
    def say(msg: str) -> None:
        print(f"[dispatch-bench --from-db] {msg}", file=sys.stderr, flush=True)

    url = args.from_db or os.environ.get("HUB_DATABASE_URL", "")
    if url == "demo":
        url = demo_database_url()
    if not url:
        raise SystemExit("--from-db: give a DATABASE_URL (or 'demo'), or set HUB_DATABASE_URL")
    until = parse_time(args.until) if args.until else time.time()
    since = (parse_time(args.since) if args.since
             else (datetime.fromtimestamp(until, UTC) - timedelta(days=DEFAULT_DAYS)).timestamp())
    if since >= until:
        raise SystemExit("--from-db: --since must be before --until")
    speed = 1.0 if args.speed is None else args.speed
    if speed <= 0:
        raise SystemExit("--speed must be positive")
    out = run(url, since, until, policy, args.limits, say, speed)
    print(json.dumps(out, ensure_ascii=False), flush=True)
    return 0
