"""Dispatch states at town scale, in memory: what the console benchmark's leader decides over.

``./hubctl bench console`` runs 2,000 bench squads (qualification ``city_management``, homes
dealt over the level-2 grids, each driving a circle of a few hundred metres around its home
grid's centre) and posts a priority-3 case every half second; no crew answers, so every
case it dispatches stays dispatched-not-accepted and the leader's every decision weighs
re-planning all of them. ``scale_state`` builds that picture (and, with ``mixed``, one with
every status, priority, stale fixes and barred units, for equivalence tests) without a
database, so the decision core can be timed and profiled on its own:

    python -m simulators.bench.dispatch_scale [--units 2000] [--held 140] [--repeat 30]

prints the core's time per decision (``planner.decide`` of one registered case) as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dispatch.geo import RoadGraph
from dispatch.model import DispatchPolicy, IncidentState, UnitState
from dispatch.planner import DispatchState, IncidentRegistered, decide

TOWN_FILE = Path(__file__).resolve().parents[1] / "data" / "xuxiake.json"
NOW = 1_780_000_000.0
# The hub's policy (core/settings.py defaults): preemption up to priority 2, 6 min penalty.
HUB_POLICY = DispatchPolicy(stale_after_s=120.0, preempt_up_to_priority=2,
                            preempt_penalty_s=360.0, replan_gain_s=240.0)
# The console benchmark's tracks (simulators/bench/console.py TRACK_RADIUS_DEG).
TRACK_RADIUS_DEG = (0.002, 0.0045)
QUALS = ("city_management", "work_safety", "environment", "fire", "medical")


def load_town(path: Path = TOWN_FILE) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text("utf-8"))
    return doc


def grid_centres(town: Mapping[str, Any], level: int = 2) -> list[tuple[str, float, float]]:
    """(id, lon, lat) of the town's grids of ``level``: the mean of each outline's corners."""
    out = []
    for f in town["grids"]["features"]:
        if f["properties"].get("level") != level:
            continue
        ring = f["geometry"]["coordinates"][0]
        pts = ring[:-1] if ring[0] == ring[-1] else ring
        out.append((str(f["properties"]["id"]), sum(p[0] for p in pts) / len(pts),
                    sum(p[1] for p in pts) / len(pts)))
    return sorted(out)


def road_graph(town: Mapping[str, Any]) -> RoadGraph:
    return RoadGraph.from_geojson(town["roads"])


def scale_state(town: Mapping[str, Any], *, units: int = 2000, held: int = 140,
                waiting: int = 1, seed: int = 1, now: float = NOW,
                mixed: bool = False) -> DispatchState:
    """The town's own units plus ``units`` bench squads around the level-2 grid centres,
    ``held`` cases each with a bench squad dispatched and not accepted, ``waiting`` cases
    without a unit (the newest is the input's). ``mixed``: also units en route, on scene,
    returning, off duty, without a fix or with a stale one, cases of every priority and
    qualification, some units barred from some cases (an equivalence test's states)."""
    rnd = random.Random(seed)
    centres = grid_centres(town)
    out_units: list[UnitState] = []
    for u in town["units"]:
        out_units.append(UnitState(
            u["id"], u["type"], frozenset(u["qualifications"]), "available", u["lon"],
            u["lat"], now - rnd.uniform(0, 30), u["home_grid"], now - 3600 * 4,
            rnd.randrange(4)))
    for k in range(units):
        gid, lon, lat = centres[k % len(centres)]
        r = rnd.uniform(*TRACK_RADIUS_DEG)
        a = rnd.uniform(0, 6.283)
        quals = frozenset({"city_management"})
        status = "available"
        fix: float | None = now - rnd.uniform(0.0, 1.5)
        if mixed:
            quals = frozenset(rnd.sample(QUALS, rnd.randrange(1, 3)))
            status = rnd.choices(["available", "returning", "on_scene", "off_duty"],
                                 [0.8, 0.08, 0.07, 0.05])[0]
            fix = rnd.choice([fix, fix, fix, now - 600.0, None])
        out_units.append(UnitState(
            f"BU-{k + 1:05d}", "squad", quals, status,
            lon + r * math.cos(a) if fix is not None else None,
            lat + r * math.sin(a) if fix is not None else None, fix, gid,
            now - rnd.choice([3600.0, 7200.0, 14400.0]), rnd.randrange(6)))
    incidents: list[IncidentState] = []
    bench = [u for u in out_units if u.id.startswith("BU-") and u.status == "available"]
    rnd.shuffle(bench)
    by_id = {u.id: u for u in out_units}
    excluded: dict[str, frozenset[str]] = {}
    for n in range(held + waiting):
        gid, lon, lat = rnd.choice(centres)
        iid = str(1000 + n)
        prio = rnd.choice([1, 2, 3, 3, 4]) if mixed else 3
        qual = rnd.choice(QUALS[:3]) if mixed else "city_management"
        assigned = None
        if n < held:
            # The nearest qualified free squad by straight line: about what the leader
            # chose when the case came (a random pick would make every decision re-plan).
            lon_i, lat_i = lon, lat
            u = min((b for b in bench if qual in b.qualifications),
                    key=lambda b: (b.lon - lon_i) ** 2 + (b.lat - lat_i) ** 2
                    if b.lon is not None and b.lat is not None else 1e9, default=None)
            if u is not None:
                bench.remove(u)
                status = rnd.choice(["dispatched", "dispatched", "en_route"]) if mixed \
                    else "dispatched"
                by_id[u.id] = UnitState(u.id, u.kind, u.qualifications, status, u.lon, u.lat,
                                        u.position_ts, u.home_grid, u.duty_since,
                                        u.cases_today, iid, prio)
                assigned = u.id
        incidents.append(IncidentState(
            iid, "city_order", prio, qual, lon + rnd.uniform(-0.002, 0.002),
            lat + rnd.uniform(-0.002, 0.002), gid, now - (held + waiting - n) * 0.5,
            assigned))
        if mixed and rnd.random() < 0.2:
            excluded[iid] = frozenset(rnd.sample(sorted(by_id), 3))
    return DispatchState(tuple(incidents), tuple(sorted(by_id.values(), key=lambda u: u.id)),
                         excluded)


def time_core(states: Sequence[DispatchState], graph: RoadGraph | None,
              policy: DispatchPolicy = HUB_POLICY) -> list[float]:
    """CPU ms of ``decide`` on each state's newest case."""
    out = []
    for s in states:
        event = IncidentRegistered(s.incidents[-1].id)
        t = time.process_time()
        decide(s, event, NOW, policy, graph)
        out.append((time.process_time() - t) * 1000.0)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulators.bench.dispatch_scale",
                                description=__doc__)
    p.add_argument("--units", type=int, default=2000)
    p.add_argument("--held", type=int, default=140)
    p.add_argument("--repeat", type=int, default=30)
    args = p.parse_args(argv)
    town = load_town()
    graph = road_graph(town)
    states = [scale_state(town, units=args.units, held=args.held, seed=s)
              for s in range(args.repeat)]
    time_core(states[:2], graph)  # warm the graph's caches, as a running leader's are
    ms = sorted(time_core(states, graph))
    print(json.dumps({"units": args.units, "held": args.held, "decisions": len(ms),
                      "core_p50_ms": round(ms[len(ms) // 2], 2),
                      "core_max_ms": round(ms[-1], 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
