"""The two other modes of ``./hubctl bench dispatch``: ``--hub`` and ``--from-db``.

The replay (simulators/dispatch_bench.py) owns the command line; this module adds the modes'
options to it and runs the one selected, so the replay's module only needs a two-line hook.
"""

from __future__ import annotations

import argparse

from dispatch.model import DispatchPolicy
from simulators import dispatch_from_db, dispatch_hub_bench

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
    dispatch_hub_bench.add_arguments(p)


def selected(args: argparse.Namespace) -> bool:
    return bool(args.hub) or args.from_db is not None


def main(args: argparse.Namespace, policy: DispatchPolicy) -> int:
    if args.hub:
        if args.overrides:
            raise SystemExit("--hub runs the hub's own policy (its settings); --set applies "
                             "to the replay and --from-db only")
        if args.units_scale != 1.0:
            raise SystemExit("--hub runs the town's own units (--units-scale 1)")
        args.hours = dispatch_hub_bench.DEFAULT_HOURS if args.hours is None else args.hours
        return dispatch_hub_bench.main(args)
    return dispatch_from_db.main(args, policy)
