"""The command line of ``./hubctl bench dispatch``: the replay (dispatch_bench.py, the
default, over dispatch_town.py, dispatch_workload.py and dispatch_sim.py), the hub's own
decision latency (dispatch_latency.py), and the two other modes, ``--hub``
(dispatch_hub.py) and ``--from-db`` (dispatch_from_db.py), all in simulators/bench/. It sits
above all of them, so none imports it back.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from dispatch.model import DispatchPolicy
from simulators.bench import dispatch_bench, dispatch_from_db, dispatch_hub, dispatch_latency
from simulators.bench.dispatch_bench import _policy_with, compare, latency_scenario
from simulators.bench.dispatch_town import DEFAULT_TOWN, Town, load_town
from simulators.bench.dispatch_workload import (
    ARRIVE_LIMITS,
    DEFAULT_HOURS,
    DEFAULT_RATE,
    DEFAULT_SEED,
    make_stream,
)

EPILOG = """modes:
  (default)   the replay: a seeded incident stream through closest-idle and through the
              decision core, in a discrete-event simulation (a week, ~30 s)
  --hub       the same stream's window (--start-hour, --hours, default 09:00-12:00) through
              the running hub: a hub process on a scratch database, its dispatch leader,
              simulated crews answering on their MQTT command topics and through the API,
              the world --speed times faster; figures from the database, beside the replay's
              on the same incidents (replay_engine, agreement)
  --from-db [DATABASE_URL|demo]
              the incidents a hub's database recorded between --since and --until (default:
              the last 7 days; ISO dates, naive = town time) through closest-idle and the
              core, with what the hub actually did (recorded); DATABASE_URL defaults to
              HUB_DATABASE_URL, 'demo' reads the demo's (docs/PERFORMANCE.md)
every mode prints one JSON object as the last line of stdout"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    modes = p.add_mutually_exclusive_group()
    modes.add_argument("--hub", action="store_true",
                       help="run the stream through the running hub (see modes below)")
    modes.add_argument("--from-db", nargs="?", const="", default=None,
                       metavar="DATABASE_URL",
                       help="replay the incidents recorded in a hub's database")
    p.add_argument("--since", help="--from-db: start of the range (default: --until - 7 days)")
    p.add_argument("--until", help="--from-db: end of the range (default: now)")
    dispatch_hub.add_arguments(p)


def selected(args: argparse.Namespace) -> bool:
    return bool(args.hub) or args.from_db is not None


def run_mode(args: argparse.Namespace, policy: DispatchPolicy) -> int:
    if args.hub:
        if args.overrides:
            raise SystemExit("--hub runs the hub's own policy (its settings); --set applies "
                             "to the replay and --from-db only")
        if args.units_scale != 1.0:
            raise SystemExit("--hub runs the town's own units (--units-scale 1)")
        args.hours = dispatch_hub.DEFAULT_HOURS if args.hours is None else args.hours
        return dispatch_hub.main(args)
    return dispatch_from_db.main(args, policy)


def hub_latency(town: Town, seed: int, decisions: int) -> dict[str, Any]:
    """``hub_decision_*`` on a scratch database with the town (dispatch_latency.py)."""
    import asyncio
    import subprocess

    from core.settings import Settings
    from simulators.bench.harness import ROOT, BenchEnv, ScratchDatabase

    env = BenchEnv.from_environ()
    db = ScratchDatabase(env.database_url, f"bench_dispatch_{os.getpid()}",
                         admin_url=os.environ.get("HUB_ADMIN_DATABASE_URL"))
    db.create()
    try:
        hub_env = {**os.environ, "HUB_DATABASE_URL": db.url}
        subprocess.run([sys.executable, "-m", "hub", "load-town"], cwd=ROOT, env=hub_env,
                       check=True, stdout=subprocess.DEVNULL)
        settings = Settings(database_url=db.url,
                            mqtt_client_id=f"gridhub-dispatch-bench-{os.getpid()}")
        return asyncio.run(dispatch_latency.measure(settings, town, seed,
                                                    decisions_n=decisions))
    finally:
        db.drop()


def _say(msg: str) -> None:
    print(f"[dispatch-bench] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; the last line of stdout is one JSON object. Returns 0."""
    p = argparse.ArgumentParser(prog="python -m simulators.bench.dispatch_modes",
                                description=(dispatch_bench.__doc__ or "").split("\n\n")[0])
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--hours", type=float, default=None,
                   help=f"hours of arrivals (the run continues until every case is handled; "
                        f"default {DEFAULT_HOURS:g}, --hub 3, --from-db: the range)")
    p.add_argument("--rate", type=float, default=DEFAULT_RATE,
                   help="mean incidents an hour over the day")
    p.add_argument("--units-scale", type=float, default=1.0,
                   help="round(45 x K) units: the town's plus jittered copies")
    p.add_argument("--limits", choices=sorted(ARRIVE_LIMITS), default="township",
                   help="arrive limits behind breach_share (the other set is reported too)")
    p.add_argument("--town", type=Path, default=DEFAULT_TOWN)
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KNOB=VALUE", help="override a DispatchPolicy knob of the engine")
    p.add_argument("--latency-decisions", type=int, default=200,
                   help="decisions timed in the 300 units x 200 incidents scenario (0: skip)")
    p.add_argument("--hub-decisions", type=int, default=100,
                   help="decisions timed through the dispatch leader on a scratch database "
                        "(needs ./hubctl bench's database; 0: skip)")
    add_arguments(p)
    args = p.parse_args(argv)
    policy = _policy_with(args.overrides)
    if selected(args):
        return run_mode(args, policy)
    args.hours = DEFAULT_HOURS if args.hours is None else args.hours

    t = time.perf_counter()
    town = load_town(args.town, args.units_scale, args.seed)
    stream = make_stream(town, args.seed, args.hours, args.rate)
    _say(f"seed {args.seed}: {len(stream)} incidents over {args.hours:g} h, "
         f"{len(town.units)} units")
    out = compare(town, stream, policy, args.limits, _say)
    if args.latency_decisions > 0:
        lat = latency_scenario(town, args.seed, decisions=args.latency_decisions,
                               dispatch_policy=policy)
        _say(f"300 units x 200 incidents: p50 {lat['decision_300x200_p50_ms']} ms, "
             f"p99 {lat['decision_300x200_p99_ms']} ms")
        out.update(lat)
    if args.hub_decisions > 0 and os.environ.get("HUB_DATABASE_URL"):
        hub = hub_latency(town, args.seed, args.hub_decisions)
        _say(f"hub, through the leader: p50 {hub['hub_decision_p50_ms']} ms, "
             f"p99 {hub['hub_decision_p99_ms']} ms")
        out.update(hub)
    out.update({"seed": args.seed, "hours": args.hours, "rate": args.rate,
                "units": len(town.units), "incidents": len(stream),
                "policy": {k: v for k, v in dataclasses.asdict(policy).items()
                           if v != getattr(DispatchPolicy(), k)},
                "wall_s": round(time.perf_counter() - t, 1)})
    print(json.dumps(out, ensure_ascii=False, sort_keys=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
