"""The ``ingest`` benchmark (issue 3): ``./hubctl bench ingest [args]``.

A fresh scratch database with the demo town and ``--devices`` bench
devices; the hub with the product's default roles (``python -m hub serve``: ingest,
dispatch, web; ``--roles`` for others), on a fresh MQTT client id (one hub: the default
one-process layout; ``--hubs`` > 1 or ``--scaled-out``: a fresh share group and rules
client id); the lean load generator
(simulators/loadgen.py) in its own process for ``--duration`` seconds, paced (``--rate``) or
flat out; then everything is counted in the database. Definitions of the figures:

- ``msgs_per_s`` / ``points_per_s``: distinct messages / readings stored, divided by the
  ingest window, the time from the first to the last ``received_at`` (the hub's receive
  time) of the run's rows. Because the generator keeps a bounded backlog, this is the rate
  the hub sustained while it had work. ``min_1s_msgs_per_s`` is the slowest whole second
  inside that window (first and last seconds excluded).
- ``lost``: messages sent minus distinct messages stored (``lost_points`` for readings);
  ``duplicated``: stored rows minus distinct readings (every reading carries a unique id in
  its value, so a duplicate is visible even if it slipped past the unique key with another
  timestamp); ``unexpected_rows``: rows whose id the generator never sent; ``foreign_msgs``:
  messages from another publisher on the broker (0 unless two benchmarks overlapped; the
  run's device ids are unique to it, so those are dead letters, not counted rows).
- ``p50_commit_ms``/``p99_commit_ms``: the hub's device-time-to-commit percentiles
  (``/api/ingest/stats``) over the run's readings; the generator stamps each message with
  the time it was written to mosquitto_pub, so this is publish-to-commit. In a flat-out run
  it includes the time spent in the deliberate backlog, so it is meaningful at a set rate.
- ``peak_rss_mb``: the hub's VmHWM; ``*_cpu_s``: CPU seconds over the measurement (from the
  generator's start until the database stopped growing) of the hub (with its dispatch
  child), the broker, PostgreSQL
  (postmaster and its live children; approximate) and the generator (getrusage of its
  process, Python plus its mosquitto_pub children). ``machine_busy_pct``: all CPUs, from
  /proc/stat, 100 = every core busy; ``other_cpu_s``: CPU used meanwhile by processes
  outside the benchmark (what a busy machine took from it). ``*_cpu_us_per_point``: those
  CPU seconds per stored reading.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from simulators.bench import loadgen, loadgen_lines
from simulators.bench.harness import (
    ROOT,
    BenchEnv,
    HubProcess,
    ScratchDatabase,
    SyncDb,
    forget_mqtt_session,
    free_port,
    http_json,
    machine_ticks,
    proc_status_kb,
    run_and_report,
    say,
    start_profiler,
    tree_cpu_delta,
    tree_cpu_s,
)
from simulators.mqtt_login import login_at, mosquitto_client_env

# The probe device (subscription check) is ``<prefix>PROBE``, outside the generator's ids.
PROBE_SUFFIX = "PROBE"
# The database is "done" when its row count has not moved for this many polls 1 s apart.
STABLE_POLLS = 3
# The roles of `python -m hub serve` without --roles (hub/__main__.py).
DEFAULT_ROLES = "ingest,dispatch,web"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=float, default=60.0, help="seconds of publishing")
    p.add_argument("--rate", type=float, default=0.0,
                   help="messages/s offered in total; 0 = flat out (closed loop)")
    loadgen.add_mix_arguments(p)
    p.add_argument("--window", type=int, default=0,
                   help="messages sent but not yet stored, at most (bounds the backlog; "
                        f"default {loadgen.DEFAULT_WINDOW_POINTS:,} readings' worth, at least "
                        f"{loadgen.DEFAULT_WINDOW_MIN_MSGS:,})")
    p.add_argument("--hubs", type=int, default=1,
                   help="ingest processes sharing the subscription; latency figures are "
                        "then the worst process's")
    p.add_argument("--scaled-out", action="store_true",
                   help="one hub in the scaled-out layout (share group, rules on their own "
                        "subscription) instead of the default one-process layout; implied "
                        "by --hubs > 1")
    p.add_argument("--roles", default=DEFAULT_ROLES,
                   help=f"each hub's roles (default {DEFAULT_ROLES}, as `python -m hub serve`)")
    p.add_argument("--keep-db", action="store_true", help="keep the scratch database")
    p.add_argument("--profile", type=Path, metavar="FILE",
                   help="py-spy the hub during the run: FILE.svg flame graph or FILE.txt "
                        "collapsed stacks")


def register_devices(url: str, count: int, prefix: str) -> None:
    with SyncDb(url) as db:
        grid = db.fetchrow(
            "SELECT id, center_lon, center_lat FROM grids WHERE level = 2 ORDER BY id LIMIT 1")
        if grid is None:
            raise RuntimeError("no level-2 grid: the town did not load")
        ids = [*loadgen_lines.device_ids(count, prefix), prefix + PROBE_SUFFIX]
        db.run(db.conn.copy_records_to_table(
            "devices",
            records=[(d, "environment", "bench", d, grid["center_lon"], grid["center_lat"],
                      grid["id"], [loadgen_lines.METRIC]) for d in ids],
            columns=("id", "kind", "model", "name", "lon", "lat", "grid_id", "metrics")))


def _probe_until_stored(hubs: list[HubProcess], env: BenchEnv, prefix: str,
                        timeout_s: float = 30.0) -> None:
    """Publish probe readings until every hub has committed one: their subscriptions are
    then live (health says "ok" as soon as the MQTT client starts, before it subscribes).
    The broker deals a shared subscription's messages round-robin, so each hub gets some."""
    exe = shutil.which("mosquitto_pub")
    if exe is None:
        raise RuntimeError("mosquitto_pub not found (Debian package mosquitto-clients)")
    topic = f"gridhub/v1/devices/{prefix}{PROBE_SUFFIX}/telemetry"
    deadline = time.monotonic() + timeout_s
    n = 0
    while time.monotonic() < deadline:
        payload = json.dumps({"ts": round(time.time(), 6),
                              "values": {loadgen_lines.METRIC: -1 - n}})
        with mosquitto_client_env(login_at(env.mqtt_port, "BENCH", env.mqtt_host)) as cenv:
            subprocess.run([exe, "-h", env.mqtt_host, "-p", str(env.mqtt_port), "-q", "1",
                            "-t", topic, "-m", payload], timeout=10, capture_output=True,
                           check=False, env=cenv)
        n += 1
        for _ in range(5):
            time.sleep(0.1)
            if all(int(h.ingest_counters().get("telemetry_rows", 0) or 0) > 0 for h in hubs):
                return
    raise RuntimeError(f"no probe reading stored after {timeout_s:.0f}s:\n{hubs[0].log_tail()}")


# $1: the run's device prefix, $2: its probe device.
COUNT_SQL = """
SELECT count(*) FROM telemetry WHERE starts_with(device_id, $1) AND device_id <> $2
"""

# value = (worker * ID_STRIDE + n) * POINT_STRIDE + i (simulators/loadgen.py point_id).
RESULT_SQL = """
WITH t AS (
    SELECT value::bigint AS v, received_at, late
    FROM telemetry WHERE starts_with(device_id, $1) AND device_id <> $2
), d AS (
    SELECT v, received_at, late, (v / $3) / $4 AS worker, (v / $3) % $4 AS n, v % $3 AS i
    FROM t
), ok AS (
    SELECT d.*, (worker < cardinality($5::bigint[]) AND n < ($5::bigint[])[worker + 1]
                 AND i < $6) AS valid
    FROM d
)
SELECT count(*) AS rows,
       count(*) FILTER (WHERE NOT valid) AS unexpected_rows,
       count(DISTINCT v) FILTER (WHERE valid) AS points,
       count(DISTINCT v / $3) FILTER (WHERE valid) AS msgs,
       count(*) FILTER (WHERE late) AS late_rows,
       extract(epoch FROM min(received_at)) AS first_rx,
       extract(epoch FROM max(received_at)) AS last_rx
FROM ok
"""

PER_SECOND_SQL = """
SELECT count(*) AS n FROM telemetry WHERE starts_with(device_id, $1) AND device_id <> $2
GROUP BY date_trunc('second', received_at) ORDER BY date_trunc('second', received_at)
"""


def _wait_db_stable(url: str, prefix: str, expected: int, hubs: list[HubProcess],
                    timeout_s: float) -> int:
    with SyncDb(url) as db:
        last = -1
        stable = 0
        deadline = time.monotonic() + timeout_s
        while True:
            n = int(db.fetchval(COUNT_SQL, prefix, prefix + PROBE_SUFFIX))
            if n >= expected:
                return n
            stable = stable + 1 if n == last else 0
            pending = _sum_counter(hubs, "pending_rows")
            if (stable >= STABLE_POLLS and not pending) or time.monotonic() >= deadline:
                say(f"database stopped at {n} of {expected} rows")
                return n
            last = n
            time.sleep(1.0)


def _db_results(url: str, prefix: str, gen: dict[str, Any]) -> dict[str, Any]:
    with SyncDb(url) as db:
        row = db.fetchrow(
            RESULT_SQL, prefix, prefix + PROBE_SUFFIX, loadgen_lines.POINT_STRIDE,
            loadgen_lines.ID_STRIDE,
            [int(x) for x in gen["sent_by_worker"]], int(gen["batch"]))
        per_s = [int(r["n"]) for r in db.fetch(PER_SECOND_SQL, prefix, prefix + PROBE_SUFFIX)]
        dead = {r["reason"]: int(r["n"]) for r in db.fetch(
            "SELECT reason, count(*) AS n FROM dead_letters GROUP BY reason")}
    assert row is not None
    out = dict(row)
    out["per_second"] = per_s
    out["dead_letters"] = dead
    return out


def _round(x: float | None, nd: int = 1) -> float | None:
    return None if x is None else round(x, nd)


def _sum_counter(hubs: list[HubProcess], key: str) -> int:
    return sum(int(h.ingest_counters().get(key, 0) or 0) for h in hubs)


def _merge_latency(per_hub: list[dict[str, Any]]) -> dict[str, Any]:
    """One hub: its percentiles. Several: the worst hub's (percentiles do not add up)."""
    lats = [s.get("latency") or {} for s in per_hub]
    if len(lats) == 1:
        return lats[0]
    out: dict[str, Any] = {"samples": sum(int(x.get("samples", 0)) for x in lats)}
    for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms"):
        vals = [x[k] for x in lats if k in x]
        out[k] = max(vals) if vals else None
    return out


def bench_ingest(args: argparse.Namespace) -> dict[str, Any]:
    env = BenchEnv.from_environ()
    run_id = f"{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}"
    # Device ids unique to this run: messages from another publisher on the same broker (a
    # second benchmark, a simulator) are then dead letters here, not rows counted as ours.
    prefix = f"{loadgen_lines.DEVICE_PREFIX}{secrets.token_hex(2)}-"
    cfg = loadgen.LoadConfig(  # validates the arguments before anything starts
        port=env.mqtt_port, duration_s=args.duration, rate=args.rate, mode=args.mode,
        batch=args.batch, devices=args.devices, publishers=args.publishers,
        window=args.window, run_id=run_id, device_prefix=prefix)
    if not 1 <= args.hubs <= 8:
        raise ValueError("--hubs must be 1..8")
    ppm = cfg.points_per_msg
    load1 = os.getloadavg()[0]
    say(f"run {run_id}: load average {load1:.2f} on {os.cpu_count()} CPUs")
    db = ScratchDatabase(env.database_url, f"bench_{run_id}", keep=args.keep_db,
                         admin_url=os.environ.get("HUB_ADMIN_DATABASE_URL"))
    client_ids = [f"gridhub-bench-{run_id}-{i}" for i in range(args.hubs)]
    # One hub runs the default layout (a plain subscription, rules inline: what a deployment
    # of one ingest process runs); several hubs, or --scaled-out, the scaled-out one (storage
    # on a share group, the rules on the elected evaluator's own subscription, which sees
    # and decodes every message a second time). The rules client id is the run's own, so no
    # session of an earlier run queues messages into this one.
    scaled_out = args.hubs > 1 or args.scaled_out
    base_env = {**os.environ, "HUB_DATABASE_URL": db.url}
    rules_client_id = f"gridhub-bench-rules-{run_id}"
    if scaled_out:
        base_env.update({"HUB_MQTT_SHARE_GROUP": f"bench{run_id.replace('_', '')}",
                         "HUB_MQTT_RULES_CLIENT_ID": rules_client_id})
    hubs = [HubProcess({**base_env, "HUB_MQTT_CLIENT_ID": cid,
                        "HUB_HTTP_PORT": str(free_port())}, args.roles,
                       env.var_dir / "log" / f"bench-hub-{run_id}-{i}.log")
            for i, cid in enumerate(client_ids)]
    gen_proc: subprocess.Popen[bytes] | None = None
    profiler: subprocess.Popen[bytes] | None = None
    try:
        db.create()
        say(f"scratch database {db.name}: loading the town and {args.devices} bench devices")
        subprocess.run([sys.executable, "-m", "hub", "load-town"], cwd=ROOT, env=base_env,
                       check=True, stdout=subprocess.DEVNULL)
        register_devices(db.url, args.devices, prefix)
        for hub in hubs:
            hub.start()
        for hub in hubs:
            hub.wait_healthy()
        _probe_until_stored(hubs, env, prefix)
        for hub in hubs:
            http_json(hub.url("/api/ingest/stats?reset=true"), 30.0, hub.token)
        base_rows = _sum_counter(hubs, "telemetry_rows")
        pids = [h.pid for h in hubs if h.pid is not None]
        say(f"hub pid(s) {', '.join(map(str, pids))} ready (log {hubs[0].log_path}); "
            "starting the load")

        broker_pid = env.pid_of("mqtt/mosquitto.pid")
        pg_pid = env.pid_of("pg/postmaster.pid")
        # Each hub with its children (the dispatch role's own process).
        hub_cpu0 = [tree_cpu_s(p) for p in pids]
        broker_cpu0 = loadgen.proc_cpu_s(broker_pid)
        db_cpu0 = tree_cpu_s(pg_pid)
        busy0, total0 = machine_ticks()
        t0 = time.monotonic()
        gen_proc = subprocess.Popen(
            [sys.executable, "-m", "simulators.bench.loadgen", "--port", str(env.mqtt_port),
             "--duration", str(args.duration), "--rate", str(args.rate),
             *loadgen.mix_argv(args), "--window", str(args.window),
             "--device-prefix", prefix,
             "--confirm-url", ",".join(h.url("/api/health") for h in hubs),
             "--run-id", run_id],
            cwd=ROOT, stdout=subprocess.PIPE, start_new_session=True)
        if args.profile:
            profiler = start_profiler(pids[0], args.duration, args.profile)
        gen_deadline = t0 + cfg.hard_timeout_s + 30.0
        peak_rss_kb = [0] * len(pids)
        next_report = t0 + 5.0

        def hub_cpu_now() -> float:
            return sum(tree_cpu_delta(c0, tree_cpu_s(p))
                       for p, c0 in zip(pids, hub_cpu0, strict=True))

        while gen_proc.poll() is None:
            if time.monotonic() > gen_deadline:
                raise RuntimeError("the load generator overran its hard timeout")
            for hub in hubs:
                if hub.proc is not None and hub.proc.poll() is not None:
                    raise RuntimeError(f"a hub died during the run:\n{hub.log_tail()}")
            peak_rss_kb = [max(k, proc_status_kb(p, "VmRSS") or 0)
                           for k, p in zip(peak_rss_kb, pids, strict=True)]
            if time.monotonic() >= next_report:
                el = time.monotonic() - t0
                rows = _sum_counter(hubs, "telemetry_rows") - base_rows
                say(f"t={el:5.1f}s hub stored {rows // ppm} msgs ({rows / el:,.0f} points/s "
                    f"average), hub CPU {100 * hub_cpu_now() / el:.0f}%, "
                    f"RSS {max(peak_rss_kb) / 1024:.0f} MB")
                next_report += 5.0
            time.sleep(0.25)
        out, _ = gen_proc.communicate(timeout=30)
        lines = out.decode(errors="replace").strip().splitlines()
        if not lines:
            raise RuntimeError(f"the load generator printed no report (rc {gen_proc.returncode})")
        gen = json.loads(lines[-1])

        expected = int(gen["sent_points"])
        _wait_db_stable(db.url, prefix, expected, hubs, timeout_s=120.0)
        t_end = time.monotonic()
        hub_cpu = hub_cpu_now()
        broker_cpu1 = loadgen.proc_cpu_s(broker_pid)
        broker_cpu = (broker_cpu1 - broker_cpu0
                      if broker_cpu0 is not None and broker_cpu1 is not None else None)
        db_cpu = tree_cpu_delta(db_cpu0, tree_cpu_s(pg_pid)) if pg_pid else None
        busy1, total1 = machine_ticks()
        hwm_kb = [proc_status_kb(p, "VmHWM") or k for p, k in zip(pids, peak_rss_kb, strict=True)]
        per_hub = [http_json(h.url("/api/ingest/stats"), 60.0, h.token) for h in hubs]
        if profiler is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                profiler.wait(30)
        res = _db_results(db.url, prefix, gen)
    finally:
        if gen_proc is not None and gen_proc.poll() is None:
            gen_proc.terminate()  # the generator stops its mosquitto_pub processes
            try:
                gen_proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(gen_proc.pid, signal.SIGKILL)  # its whole process group
            gen_proc.wait()
        if profiler is not None and profiler.poll() is None:
            profiler.terminate()
            profiler.wait()
        for hub, cid in zip(hubs, client_ids, strict=True):
            rc = hub.stop()
            if hub.proc is not None:
                say(f"hub {hub.pid} stopped (rc {rc})")
                try:
                    forget_mqtt_session(env.mqtt_host, env.mqtt_port, cid)
                except (OSError, subprocess.SubprocessError) as e:
                    say(f"could not clear the MQTT session {cid}: {e}")
        if scaled_out:
            try:
                forget_mqtt_session(env.mqtt_host, env.mqtt_port, rules_client_id)
            except (OSError, subprocess.SubprocessError) as e:
                say(f"could not clear the MQTT session {rules_client_id}: {e}")
        db.drop()

    window = (res["last_rx"] - res["first_rx"]) if res["rows"] else 0.0
    window = float(window or 0.0)
    msgs = int(res["msgs"])
    points = int(res["points"])
    interior = res["per_second"][1:-1]
    lat = _merge_latency(per_hub)
    measured_s = t_end - t0
    sent = int(gen["sent_msgs"])
    busy_s = (busy1 - busy0) / os.sysconf("SC_CLK_TCK")
    # Messages nobody in this run sent: another publisher shares the broker (its devices are
    # unknown here). The figures then include its load; run benchmarks one at a time.
    foreign = int(res["dead_letters"].get("unknown_device", 0)) + int(res["unexpected_rows"])
    if foreign:
        say(f"warning: {foreign} messages from another publisher reached this run's hub")
    def per_point_us(cpu_s: float | None) -> float | None:
        return round(cpu_s / points * 1e6, 2) if cpu_s is not None and points else None

    return {
        "benchmark": "ingest",
        "layout": "scaled out" if scaled_out else "one process",
        "roles": args.roles,
        "mode": args.mode,
        "batch": ppm,
        "duration_s": args.duration,
        "target_rate": args.rate or "flat out",
        "devices": args.devices,
        "publishers": args.publishers,
        "hubs": args.hubs,
        "msgs_per_s": round(msgs / window, 1) if window > 0 else None,
        "points_per_s": round(points / window, 1) if window > 0 else None,
        "min_1s_msgs_per_s": (min(interior) // ppm) if interior else None,
        "ingest_window_s": round(window, 2),
        # Points stored per second of the hub's receive time (the report's throughput plot).
        "per_second_points": res["per_second"],
        "p50_commit_ms": lat.get("p50_ms"),
        "p90_commit_ms": lat.get("p90_ms"),
        "p99_commit_ms": lat.get("p99_ms"),
        "max_commit_ms": lat.get("max_ms"),
        "latency_samples": lat.get("samples"),
        "peak_rss_mb": round(max(hwm_kb) / 1024, 1),
        # Flushes, and those written through the merge path (a batch held a stored reading).
        "flushes": sum(int(h.get("batches", 0)) for h in per_hub),
        "merged_flushes": sum(int(h.get("merged_batches", 0)) for h in per_hub),
        # Mean per batch (the first hub's): waiting for a flush slot, flushing, and
        # commit to acknowledgement (ingest/writer.py): where a batch's time goes.
        "flush_queue_ms": per_hub[0].get("flush_queue_ms"),
        "flush_ms": per_hub[0].get("flush_ms"),
        "ack_hold_ms": per_hub[0].get("ack_hold_ms"),
        "sent_msgs": sent,
        "sent_points": int(gen["sent_points"]),
        "stored_msgs": msgs,
        "stored_points": points,
        "stored_rows": int(res["rows"]),
        "lost": sent - msgs,
        "lost_points": int(gen["sent_points"]) - points,
        "duplicated": int(res["rows"]) - int(res["unexpected_rows"]) - points,
        "unexpected_rows": int(res["unexpected_rows"]),
        "late_rows": int(res["late_rows"]),
        "dead_letters": res["dead_letters"],
        "foreign_msgs": foreign,
        "offered_msgs_per_s": gen["offered_msgs_per_s"],
        "offered_points_per_s": gen["offered_points_per_s"],
        "generator_window": gen["window"],
        "generator_window_full_s": gen["window_full_s"],
        "generator_cpu_s": gen["cpu_s"],
        "generator_python_cpu_s": gen["self_cpu_s"],
        "generator_cpu_us_per_msg": gen["cpu_us_per_msg"],
        "generator_ok": gen["ok"],
        "generator_drained": gen["drained"],
        "hub_cpu_s": _round(hub_cpu, 2),
        "hub_cpu_pct": round(100.0 * hub_cpu / measured_s, 1) if measured_s > 0 else None,
        "hub_cpu_us_per_msg": round(hub_cpu / msgs * 1e6, 1) if msgs else None,
        "broker_cpu_s": _round(broker_cpu, 2),
        "db_cpu_s": _round(db_cpu, 2),
        # CPU per stored reading, by process (docs/PERFORMANCE.md's accounting).
        "hub_cpu_us_per_point": per_point_us(hub_cpu),
        "db_cpu_us_per_point": per_point_us(db_cpu),
        "broker_cpu_us_per_point": per_point_us(broker_cpu),
        "generator_cpu_us_per_point": per_point_us(float(gen["cpu_s"])),
        "total_cpu_us_per_point": per_point_us(
            hub_cpu + (db_cpu or 0.0) + (broker_cpu or 0.0) + float(gen["cpu_s"])),
        "measured_s": round(measured_s, 2),
        "machine_busy_pct": round(100.0 * (busy1 - busy0) / max(1, total1 - total0), 1),
        # CPU used meanwhile by everything outside the benchmark: 0 on a quiet machine.
        "other_cpu_s": round(max(0.0, busy_s - hub_cpu - (broker_cpu or 0.0) - (db_cpu or 0.0)
                                 - float(gen["cpu_s"])), 1),
        "load_avg_at_start": round(load1, 2),
        "load_avg_at_end": round(os.getloadavg()[0], 2),
        "ncpu": os.cpu_count(),
        "run_id": run_id,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulators.bench ingest",
                                     description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run_and_report("ingest", bench_ingest, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
