"""The figures of ``./hubctl bench dispatch --hub``: what the hub did, read back from its
database (``hub_result``), how it agrees with the replay of the same stream, and the
replay's own noise (``jitter_noise``)."""

from __future__ import annotations

import dataclasses
import random
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from dispatch.model import DispatchPolicy
from simulators.bench.dispatch_hub_crews import TITLE_PREFIX
from simulators.bench.dispatch_sim import RunResult, Simulation
from simulators.bench.dispatch_town import Town
from simulators.bench.dispatch_workload import ARRIVE_LIMITS, T0, Incident

# An incident assigned within this long (real seconds) of its registration found a unit
# free: the leader acts on the registration event in milliseconds; anything later waited
# for a unit to free up.
QUEUED_REAL_S = 1.0
# Replays with jittered dispatch delays behind the noise estimate (``jitter_noise``): ~1 s
# each on this (loaded) machine; 20 give the spread to about +-15 %.
JITTER_RUNS = 20


# reached_by: the unit whose assignment was holding the case when handling started. Not the
# case log's actor: that is the authenticated principal (the crews' login), not a unit.
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
  (SELECT a.unit_id FROM assignments a WHERE a.incident_id = i.id
     AND a.status IN ('active', 'accepted', 'done') AND a.assigned_at <= (
       SELECT min(l.ts) FROM case_log l WHERE l.incident_id = i.id
         AND l.action = 'start_handling')
     ORDER BY a.assigned_at DESC LIMIT 1) AS reached_by
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
