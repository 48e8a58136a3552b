"""After-action replay: what a seek and a playback chunk cost (``./hubctl bench replay``).

What it does: a scratch database (migrations only: the replay reads nothing but
``replay_snapshots``, ``events`` and ``positions``); one saved picture of ``--units`` units
and ``--incidents`` open cases; after it ``--span-s`` seconds of history: every unit's fix
each ``--fix-every-s`` and ``--events-per-s`` events, each carrying a case and a unit (the
shape of a dispatch step, the commonest event with a unit in it). Then it times, ``--runs``
times each, through the replay's own code (hub/replay_store.py):

- ``seek``: ``picture_at`` at the end of the span, the worst case of a seek (the most
  events to fold and the longest span to look fixes up in);
- ``chunk_60x``: one playback request at 60x (120 s of history, fixes thinned to 30 s,
  as replay.js asks at 60x).

Last line: one JSON object with the medians and maxima in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from core.db import connect, migrate
from hub import replay_store
from simulators.bench.harness import BenchEnv, ScratchDatabase, say


def _unit(i: int, ts: float) -> dict[str, Any]:
    return {"id": f"BU-{i:05d}", "name": f"bench unit {i}", "type": "squad",
            "qualifications": ["city_management"], "home_grid": "G01-01", "members": 2,
            "status": "available", "duty_since": ts, "current_incident": None,
            "lon": 120.4 + i * 1e-5, "lat": 31.8, "speed": 0.0, "heading": None,
            "position_ts": ts}


def _incident(i: int, ts: float, unit: str | None) -> dict[str, Any]:
    return {"id": i, "category": "city_order", "priority": 3, "qualification":
            "city_management", "title": f"bench case {i}", "description": "", "lon": 120.4,
            "lat": 31.8, "grid_id": "G01-01", "source": "operator", "reporter": "bench",
            "state": "dispatched" if unit else "registered", "opened_at": ts,
            "updated_at": ts, "assigned_unit": unit, "rework_count": 0,
            "extension_count": 0, "handler": None, "alarms_cleared": False,
            "sla": {"dispatch": {"state": "met", "deadline": ts + 600}}}


async def run(args: argparse.Namespace, url: str) -> dict[str, Any]:
    conn = await connect(url)
    try:
        await migrate(conn)
        t0 = time.time() - args.span_s - 60
        units = {f"BU-{i:05d}": _unit(i, t0) for i in range(args.units)}
        incidents = {str(i): _incident(i, t0, None) for i in range(1, args.incidents + 1)}
        await conn.execute(
            "INSERT INTO replay_snapshots (taken_at, seq, state) VALUES (to_timestamp($1), 0, $2)",
            t0, {"alarms": {}, "incidents": incidents, "units": units})
        n_events = int(args.span_s * args.events_per_s)
        say(f"{len(units)} units, {n_events} events, fixes every {args.fix_every_s} s "
            f"over {args.span_s} s")
        ids = list(units)
        rows = []
        for k in range(n_events):
            ts = t0 + (k + 1) / args.events_per_s
            uid = ids[k % len(ids)]
            inc = 1 + k % max(1, args.incidents)
            payload = {"incident": _incident(inc, ts, uid),
                       "unit": {**units[uid], "status": "dispatched",
                                "current_incident": inc}}
            rows.append((datetime.fromtimestamp(ts, UTC), "unit.assigned", payload))
        await conn.executemany("INSERT INTO events (ts, kind, payload) VALUES ($1, $2, $3)",
                               rows)
        fixes = []
        steps = int(args.span_s / args.fix_every_s)
        for s in range(1, steps + 1):
            ts = datetime.fromtimestamp(t0 + s * args.fix_every_s, UTC)
            for i, uid in enumerate(ids):
                fixes.append((ts, uid, 31.8, 120.4 + i * 1e-5 + s * 1e-6, 5.0, 90.0, 5.0, ts))
        await conn.copy_records_to_table(
            "positions", records=fixes,
            columns=["ts", "unit_id", "lat", "lon", "speed", "heading", "accuracy",
                     "received_at"])
        await conn.execute("ANALYZE events; ANALYZE positions")
        say(f"{len(fixes)} fixes stored; timing")
        end = t0 + args.span_s + 0.5  # past the last record, whatever the rounding
        seek_ms, chunk_ms = [], []
        for _ in range(args.runs):
            started = time.perf_counter()
            pic = await replay_store.picture_at(conn, end)
            seek_ms.append((time.perf_counter() - started) * 1000)
            assert pic.seq == n_events, (pic.seq, n_events)
            started = time.perf_counter()
            await replay_store.chunk(conn, after_seq=0, clock=end - 120, start=end - 120,
                                     end=end, step_s=30, max_events=5000,
                                     unit_ids=ids)
            chunk_ms.append((time.perf_counter() - started) * 1000)
        return {
            "benchmark": "replay", "units": args.units, "span_s": args.span_s,
            "events": n_events, "fixes": len(fixes),
            "seek_ms_median": round(statistics.median(seek_ms), 1),
            "seek_ms_max": round(max(seek_ms), 1),
            "chunk_60x_ms_median": round(statistics.median(chunk_ms), 1),
            "chunk_60x_ms_max": round(max(chunk_ms), 1),
        }
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulators.bench replay",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--units", type=int, default=2000)
    p.add_argument("--incidents", type=int, default=50)
    # The default snapshot interval (HUB_REPLAY_SNAPSHOT_S): a seek's worst case.
    p.add_argument("--span-s", type=float, default=300.0)
    p.add_argument("--events-per-s", type=float, default=5.0)
    p.add_argument("--fix-every-s", type=float, default=1.0)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args(argv)
    env = BenchEnv.from_environ()
    db = ScratchDatabase(env.database_url, f"bench_replay_{uuid.uuid4().hex[:8]}",
                         admin_url=os.environ.get("HUB_ADMIN_DATABASE_URL"))
    db.create()  # its own event loop: before ours
    try:
        result = asyncio.run(run(args, db.url))
    finally:
        db.drop()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
