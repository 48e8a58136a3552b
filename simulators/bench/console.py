"""Live console load benchmark (issue 7): ``./hubctl bench console [args]``, or
``python -m simulators.bench.console [args]`` with the bench environment's ``HUB_*`` exported.

What it does: a fresh scratch database with the demo town plus ``--units`` bench squads
(``BU<tag>-00001``..., ``<tag>`` random per run; qualification ``city_management``, homes
dealt over the level-2 grids, no patrol area so the geofence rule ignores them); the hub
with all its roles; then, each in its own process so that none of them starves the hub's
event loop of the GIL:

- ``--client-procs`` websocket client processes (default one per ``CLIENTS_PER_PROC``
  clients), ``--clients`` connections in total on
  ``/ws/live`` (the ``websockets`` library, asyncio). Each connection says hello (with
  acks, as the console does), takes the snapshot, then acknowledges every
  ``ACK_EVERY_FRAMES`` position frames and counts the position updates and events of every
  batch frame, checks that event seqs follow one another (a jump is a gap; an older seq a
  duplicate), records the publish -> client latency of every position (the fix's ``ts`` is
  its send time) in a 1 ms histogram, resumes with its last seq if the connection drops.
- one GPS generator: a paho publisher (simulators/mqtt_pub.py, QoS 1, TCP_NODELAY) paced by
  the load generator's token bucket at ``--rate`` fixes/s (default one per unit per
  second), each unit driving a circle of a few hundred metres around its home grid,
  ``gridhub/v1/units/{id}/gps``, payload ``ts`` = send time.
- this driver posts operator cases (``POST /api/incidents``, ``city_order``) at
  ``--incident-rate`` per second; the dispatcher reacts to each, so the feed carries a
  stream of sequenced events (``incident.opened``, assignments, unit status changes).

Timeline: clients connect (all snapshots in) -> GPS and cases start -> ``--warmup`` s ->
measurement window of ``--duration`` s (clients count from a "reset" to an "end" command
on their stdin) -> GPS and cases stop -> the last seq is read from the events table after
the hub has been quiet ``QUIET_S`` -> each client waits (at most ``SETTLE_S``) to reach it
and reports. Every process also stops by itself after a hard timeout.

Figures (last stdout line, one JSON object):

- ``events_per_s``: deliveries to clients per second in the window, position updates plus
  sequenced events (``positions_per_s`` and ``feed_events_per_s`` apart), summed over the
  clients. ``positions_per_unit_s``: position updates a client got per unit per second
  (the hub sends at most ~1 per unit per second, hub/live.py); ``position_rate_per_unit``
  is the same figure (issue 16's name) and ``position_rate_per_unit_min`` the slowest
  client's; ``gps_fixes_per_unit_s`` what the generator sent (the ceiling of both).
- ``p50_ms``/``p90_ms``/``p99_ms``/``max_ms``: publish -> client of the position updates in
  the window (1 ms bins, so to within 1 ms); ``event_p99_ms``: the event row's ``ts``
  (``now()`` of its transaction) -> client of the events; ``event_by_kind`` the same by
  event kind (``incident.opened`` from the cases posted, ``unit.assigned`` and the rest
  from the dispatcher's decisions); ``event_ts_to_bus_p50_ms``/``_p99_ms`` the hub's part
  of it (``ts`` -> the hub's bus: the transaction, commit, NOTIFY and event feed; hub
  stamps over its last 2,000 events, warm-up included), ``events_from_notices`` how many
  the event feed published straight from their NOTIFY; ``dispatch_decisions`` the hub's
  leader's decisions by part (``wait`` for the plan lock, ``state`` read, ``core``,
  ``writes``, ``commit``, ``total``: p50/p99/max ms, dispatch/decision_stats.py), the
  time a ``unit.assigned`` spends between its ``ts`` and its commit.
- ``gaps``: sequenced events some client missed: seq jumps inside a connection plus, at
  the end, events between a client's last seq and the final one; ``clients_with_gaps``;
  ``duplicates`` (an event seen twice); ``resyncs`` (the hub told a client it was too far
  behind: the snapshot that follows skips ``resync_skipped`` events, not counted as gaps);
  ``reconnects``; ``events_generated``: sequenced events committed in the window.
- ``peak_rss_mb`` (the hub's VmHWM), CPU in % of one core over the window of the hub, the
  broker, PostgreSQL (approximate), the GPS generator (``generator_cpu_pct``) and the
  client processes together (``clients_cpu_pct``); ``machine_busy_pct`` (100 = every core),
  ``other_cpu_pct`` (everything else on the machine), ``load`` (``uptime``'s averages).
- ``client_loop_lag_p50_ms``/``_p99_ms``/``_max_ms``: how late the client processes' own
  event loops woke from a ``LAG_PROBE_S`` sleep in the window (every receive time is
  stamped by such a loop, so a latency is the hub's only where this is small against it).
- ``pos_hist``/``event_hist``: the two latency histograms (sparse 1 ms bins), for plots.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from core.stats import percentile
from simulators.bench.alarm_feed import Probes
from simulators.bench.alarm_setup import drop_quietly, load_avg
from simulators.bench.console_clients import (
    CLIENTS_PER_PROC,
    CONNECT_TIMEOUT_S,
    MAX_CLIENT_PROCS,
    SETTLE_S,
    client_procs_for,
    clients_main,
    split_evenly,
)
from simulators.bench.console_counts import Histogram, event_summary_by_kind
from simulators.bench.console_gps import GPS_CONNECT_TIMEOUT_S, gps_main
from simulators.bench.console_load import (
    UNIT_PREFIX,
    Child,
    IncidentPoster,
    insert_units,
    wait_quiet,
)
from simulators.bench.harness import (
    ROOT,
    BenchEnv,
    HubProcess,
    ScratchDatabase,
    SyncDb,
    forget_mqtt_session,
    proc_status_kb,
    run_and_report,
    start_profiler,
)

HUB_ROLES = "ingest,dispatch,web"
# After the load stops: the hub's seq must stay put this long before it is final (the
# dispatcher finishes reacting to the last cases), and then the clients get
# console_clients.SETTLE_S to reach it.
QUIET_S = 2.0

def say(msg: str) -> None:
    print(f"[console-bench] {msg}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    env = BenchEnv.from_environ()
    if not args.client_procs:
        args.client_procs = client_procs_for(args.clients)
    if not 1 <= args.client_procs <= MAX_CLIENT_PROCS or args.clients < args.client_procs:
        raise ValueError(f"--client-procs must be 1..{MAX_CLIENT_PROCS} and at most --clients")
    rate = args.rate or float(args.units)
    unit_prefix = f"{UNIT_PREFIX}{secrets.token_hex(2)}-"
    run_id = f"{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}"
    load_start = load_avg()
    say(f"run {run_id}: load average {load_start} on {os.cpu_count()} CPUs")
    db = ScratchDatabase(env.database_url, f"bench_console_{run_id}", keep=args.keep_db)
    client_id = f"gridhub-console-bench-{run_id}"
    hub_env = {**os.environ, "HUB_DATABASE_URL": db.url, "HUB_MQTT_CLIENT_ID": client_id,
               "HUB_MQTT_SHARE_GROUP": f"consolebench{run_id.replace('_', '')}",
               "HUB_HTTP_PORT": str(env.http_port)}
    hub = HubProcess(hub_env, HUB_ROLES, env.var_dir / "log" / f"bench-console-{run_id}.log")
    units_file = env.var_dir / "log" / f"bench-console-{run_id}-units.json"
    children: list[Child] = []
    gps: Child | None = None
    poster: IncidentPoster | None = None
    profiler: subprocess.Popen[bytes] | None = None
    hard_timeout = CONNECT_TIMEOUT_S + args.warmup + args.duration + 120.0
    try:
        db.create()
        say(f"scratch database {db.name}: the town and {args.units} bench units")
        subprocess.run([sys.executable, "-m", "hub", "load-town"], cwd=ROOT, env=hub_env,
                       check=True, stdout=subprocess.DEVNULL)
        ids, centres = insert_units(db.url, args.units, unit_prefix)
        units_file.parent.mkdir(parents=True, exist_ok=True)
        units_file.write_text(json.dumps({"ids": ids, "centres": centres}))
        hub.start()
        hub.wait_healthy()
        assert hub.pid is not None
        say(f"hub pid {hub.pid} ready (log {hub.log_path})")
        probes = Probes(hub.pid, {"hub": hub.pid, "broker": env.pid_of("mqtt/mosquitto.pid"),
                                  "db": env.pid_of("pg/postmaster.pid")})
        me = [sys.executable, "-m", "simulators.bench.console"]
        url = f"ws://127.0.0.1:{hub.port}/ws/live?token={hub.token}"
        t_conn = time.monotonic()
        for i, n in enumerate(split_evenly(args.clients, args.client_procs)):
            children.append(Child(f"clients{i}", [
                *me, "--role", "clients", "--url", url, "--clients", str(n),
                "--hard-timeout", str(hard_timeout)]))
        for ch in children:
            ch.wait_for("ready", CONNECT_TIMEOUT_S)
        say(f"{args.clients} clients connected in {time.monotonic() - t_conn:.1f}s "
            f"(hub reports {hub.health().get('clients')}); starting GPS at {rate:g} fixes/s "
            f"and {args.incident_rate:g} cases/s")
        gps = Child("gps", [*me, "--role", "gps", "--port", str(env.mqtt_port),
                             "--units-file", str(units_file), "--rate", str(rate),
                             "--duration", str(args.warmup + args.duration + 1.0)])
        gps.wait_for("connected", GPS_CONNECT_TIMEOUT_S + 10.0)
        for ch in children:
            probes.procs[ch.name] = ch.proc.pid
        probes.procs["generator"] = gps.proc.pid
        poster = IncidentPoster(f"http://127.0.0.1:{hub.port}", args.incident_rate, centres,
                                hub.token)
        poster.start()
        time.sleep(args.warmup)

        seq0 = int(hub.health().get("seq", 0) or 0)
        for ch in children:
            ch.send("reset")
        probes.mark("start")
        if args.profile:
            profiler = start_profiler(hub.pid, args.duration, args.profile)
        t0 = time.monotonic()
        next_report = t0 + 10.0
        while time.monotonic() - t0 < args.duration:
            probes.sample_rss()
            if hub.proc is not None and hub.proc.poll() is not None:
                raise RuntimeError(f"the hub died during the run:\n{hub.log_tail()}")
            if time.monotonic() >= next_report:
                h = hub.health()
                say(f"t={time.monotonic() - t0:5.1f}s hub seq {h.get('seq')}, "
                    f"{h.get('clients')} clients, {poster.ok} cases posted, "
                    f"RSS {probes.peak_rss_kb / 1024:.0f} MB, load {load_avg()}")
                next_report += 10.0
            time.sleep(0.25)
        probes.mark("end")
        for ch in children:
            ch.send("end")
        seq1 = int(hub.health().get("seq", 0) or 0)
        poster.stop()
        gps_rep = gps.wait_for("sent", 60.0)
        final_seq = wait_quiet(hub, QUIET_S, 30.0)
        say(f"load stopped; final seq {final_seq}; clients settling")
        for ch in children:
            ch.send(f"stop {final_seq}")
        reps = [ch.wait_for("pos_hist", SETTLE_S + 30.0) for ch in children]
        hwm_kb = proc_status_kb(hub.pid, "VmHWM") or probes.peak_rss_kb
        health = hub.health()
        for ch in children:
            ch.stop()
        time.sleep(1.0)
        # Connections the hub still counts once every client has closed (its feed notices a
        # closed socket only when it next sends to it).
        lingering = hub.health().get("clients")
        with SyncDb(db.url) as sdb:
            assigned = int(sdb.fetchval(
                "SELECT count(*) FROM incidents WHERE assigned_unit LIKE $1", unit_prefix + "%"))
            positions_stored = int(sdb.fetchval(
                "SELECT count(*) FROM positions WHERE unit_id LIKE $1", unit_prefix + "%"))
        if profiler is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                profiler.wait(30)
    finally:
        if profiler is not None and profiler.poll() is None:
            profiler.terminate()
            profiler.wait()
        if poster is not None:
            poster.stop()
        for ch in [*children, *([gps] if gps else [])]:
            ch.stop()
        rc = hub.stop()
        if hub.proc is not None:
            say(f"hub {hub.pid} stopped (rc {rc})")
            forget_mqtt_session(env.mqtt_host, env.mqtt_port, client_id)
        drop_quietly(db)
        with contextlib.suppress(OSError):
            units_file.unlink()

    win = probes.between("start", "end")
    window_s = win["seconds"]
    pos_hist, ev_hist, lag_hist = Histogram(), Histogram(), Histogram()
    by_kind: dict[str, Histogram] = {}
    for r in reps:
        pos_hist.merge_sparse(r["pos_hist"])
        ev_hist.merge_sparse(r["ev_hist"])
        lag_hist.merge_sparse(r["lag_hist"])
        for kind, sparse in r["ev_hist_by_kind"].items():
            by_kind.setdefault(kind, Histogram()).merge_sparse(sparse)
    positions = sum(r["positions"] for r in reps)
    events = sum(r["events"] for r in reps)
    gaps = sum(r["gaps_internal"] + r["gaps_tail"] for r in reps)
    clients_cpu = sum(win.get(f"{ch.name}_cpu_s", 0.0) for ch in children)
    feed_stats: dict[str, Any] = health.get("event_feed") or {}
    feed_lag: dict[str, Any] = feed_stats.get("ts_to_bus_ms") or {}
    post_lat = sorted(poster.latencies_ms) if poster else []
    return {
        "benchmark": "console",
        "clients": args.clients,
        "clients_ready": sum(r["ready"] for r in reps),
        "units": args.units,
        "events_per_s": round((positions + events) / window_s, 1),
        "positions_per_s": round(positions / window_s, 1),
        "feed_events_per_s": round(events / window_s, 1),
        "positions_per_unit_s": round(positions / window_s / args.clients / args.units, 3),
        # Issue 16's name for it, and the slowest client's: every client must get them.
        "position_rate_per_unit": round(positions / window_s / args.clients / args.units, 3),
        "position_rate_per_unit_min": round(
            min(r["min_positions"] for r in reps) / window_s / args.units, 3),
        **pos_hist.summary(),
        **ev_hist.summary("event_"),
        "event_by_kind": event_summary_by_kind(by_kind),
        **{k: v for k, v in lag_hist.summary("client_loop_lag_").items()
           if not k.endswith(("samples", "p90_ms"))},
        "gaps": gaps,
        "gaps_internal": sum(r["gaps_internal"] for r in reps),
        "gaps_tail": sum(r["gaps_tail"] for r in reps),
        "clients_with_gaps": sum(r["clients_with_gaps"] for r in reps),
        "duplicates": sum(r["duplicates"] for r in reps),
        "resyncs": sum(r["resyncs"] for r in reps),
        "resync_skipped": sum(r["resync_skipped"] for r in reps),
        "reconnects": sum(r["reconnects"] for r in reps),
        "client_errors": sorted({e for r in reps for e in r["errors"]})[:5],
        "events_generated": seq1 - seq0,
        "events_per_client_min": min(r["min_events"] for r in reps),
        "events_per_client_max": max(r["max_events"] for r in reps),
        "final_seq": final_seq,
        "peak_rss_mb": round(hwm_kb / 1024, 1),
        "hub_cpu_pct": win.get("hub_cpu_pct"),
        "broker_cpu_pct": win.get("broker_cpu_pct"),
        "db_cpu_pct": win.get("db_cpu_pct"),
        "generator_cpu_pct": win.get("generator_cpu_pct"),
        "clients_cpu_pct": round(100.0 * clients_cpu / window_s, 1),
        "client_procs": args.client_procs,
        "machine_busy_pct": win["machine_busy_pct"],
        "other_cpu_pct": win["other_cpu_pct"],
        "gps_target_per_s": rate,
        "gps_fixes_per_s": gps_rep.get("fixes_per_s"),
        "gps_sent": gps_rep.get("sent"),
        "gps_acked": gps_rep.get("acked"),
        "gps_cpu_us_per_fix": gps_rep.get("cpu_us_per_fix"),
        "gps_fixes_per_unit_s": (round(gps_rep["fixes_per_s"] / args.units, 3)
                                 if gps_rep.get("fixes_per_s") else None),
        # The hub's side of event_*: each event's ts to the hub's bus (its transaction,
        # commit, NOTIFY, the event feed), over the hub's last outbox.LAG_WINDOW events
        # (the whole run, warm-up included); the rest of event_* is the fan-out and the
        # clients.
        "event_ts_to_bus_p50_ms": feed_lag.get("p50"),
        "event_ts_to_bus_p99_ms": feed_lag.get("p99"),
        "events_on_hub_bus": feed_stats.get("published"),
        "events_from_notices": feed_stats.get("from_notices"),
        "dispatch_decisions": health.get("dispatch_decisions"),
        "positions_stored": positions_stored,
        "position_rows_hub": (health.get("ingest") or {}).get("position_rows"),
        "incidents_posted": poster.ok if poster else 0,
        "incidents_failed": poster.failed if poster else 0,
        "incident_post_p50_ms": _r(percentile(post_lat, 50, nearest_rank=True)),
        "incident_post_p99_ms": _r(percentile(post_lat, 99, nearest_rank=True)),
        "incidents_on_bench_units": assigned,
        "hub_clients_after_close": lingering,
        "window_s": round(window_s, 1),
        "load": {"start": load_start, "end": load_avg()},
        "ncpu": os.cpu_count(),
        "run_id": run_id,
        # For the report's latency CDFs (simulators/bench_report.py): 1 ms bins, sparse.
        "pos_hist": pos_hist.to_sparse(),
        "event_hist": ev_hist.to_sparse(),
    }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--units", type=int, default=2000, help="moving bench units")
    p.add_argument("--rate", type=float, default=0.0,
                   help="GPS fixes/s in total (default: one per unit per second)")
    p.add_argument("--clients", type=int, default=200, help="websocket clients")
    p.add_argument("--client-procs", type=int, default=0,
                   help="processes the clients are spread over (default: one per "
                        f"{CLIENTS_PER_PROC} clients, at most {MAX_CLIENT_PROCS})")
    p.add_argument("--incident-rate", type=float, default=2.0,
                   help="operator cases posted per second (sequenced events)")
    p.add_argument("--warmup", type=float, default=10.0,
                   help="seconds of load before the measurement window")
    p.add_argument("--duration", type=float, default=60.0, help="measurement window, s")
    p.add_argument("--keep-db", action="store_true", help="keep the scratch database")
    p.add_argument("--profile", type=Path, metavar="FILE",
                   help="py-spy the hub during the window: FILE.svg flame graph or FILE.txt "
                        "collapsed stacks")


def _role_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("internal (the benchmark's own child processes)")
    g.add_argument("--role", choices=("driver", "clients", "gps"), default="driver",
                   help=argparse.SUPPRESS)
    g.add_argument("--url", help=argparse.SUPPRESS)
    g.add_argument("--hard-timeout", type=float, default=600.0, help=argparse.SUPPRESS)
    g.add_argument("--port", type=int, default=1883, help=argparse.SUPPRESS)
    g.add_argument("--units-file", help=argparse.SUPPRESS)
    g.add_argument("--seed", type=int, default=7, help=argparse.SUPPRESS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulators.bench.console",
                                     description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    _role_arguments(parser)
    args = parser.parse_args(argv)
    if args.role == "clients":
        print(json.dumps(asyncio.run(clients_main(args))), flush=True)
        return 0
    if args.role == "gps":
        args.duration = float(args.duration)
        print(json.dumps(asyncio.run(gps_main(args))), flush=True)
        return 0
    return run_and_report("console", run, args)


if __name__ == "__main__":
    sys.exit(main())
