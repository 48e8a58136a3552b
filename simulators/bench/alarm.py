"""Alarm latency benchmark (issue 4): ``./hubctl bench alarm [args]``, or
``python -m simulators.bench.alarm [args]`` with the bench environment's ``HUB_*`` exported.

What it does: a fresh scratch database with the demo town, ``--devices`` background bench
devices (``BENCH-<tag>-00001``..., model ``bench``, metric ``v``: no threshold rule watches
them, and their reporting interval is long enough that the no-data rule cannot fire during a
run) and one bench gas detector per trigger (``BENCHGAS<tag>-0001``..., model
``gas_detector``, spread over the level-2 grids; ``<tag>`` is random per run, because every
hub on the shared broker receives every publisher's messages); the hub with all its roles;
the lean load generator (simulators/loadgen.py) in its own process at ``--rate`` messages/s
of background telemetry. While it flows, ``--triggers`` readings of 40 %LEL
(``gas_lel_high`` raises at 25 %LEL, ``gas_lel_danger`` at 50) are published at known times,
each for its own detector, by a paho publisher (they are few); half an interval later the
same detector reads 1 %LEL, which clears the alarm (the full lifecycle, and the open picture
stays small). A websocket client on ``/ws/live`` stamps every ``alarm.raised`` event of
``gas_lel_high`` on arrival and matches it by device id.

Why one detector per trigger, not the demo town's 48 gas detectors taking turns: the hub
holds a (rule, device) that clears more than 3 times in 10 minutes as *flapping* (the 4th
clear and every later raise are held, ingest/watch.py), so 48 detectors give at most 192
fresh alarms; and a detector heard once then silent would raise ``device_offline`` after
3 of its 30 s intervals, mid-run. Triggers are paced under the default per-rule rate cap
(100 raises a minute, sliding, ingest/watch.py): the schedule is checked before the run.

Figures (last stdout line, one JSON object):

- ``p50_ms``/``p90_ms``/``p99_ms``/``max_ms``/``mean_ms``: publish -> ``alarm.raised`` frame
  received by the websocket client, over the triggers that alarmed within ``--timeout``.
  The trigger's payload ``ts`` is the send time (``time.time()`` just before the publish).
  ``to_txn_*``: publish -> the event row's ``ts`` (``now()`` of the raising transaction, i.e.
  the time the alarm writer started it: MQTT hops, decoding, rules, the alarm queue);
  ``txn_to_client_*``: from there to the client (the transaction, commit, NOTIFY, the event
  feed's fetch, the bus, the websocket pump). Same clock, same machine.
- ``triggers``, ``alarmed``, ``missed`` (no alarm within ``--timeout``), ``late`` (alarmed
  after it).
- ``background_msgs_per_s``: background messages stored by the hub (its ``received_at``)
  during the trigger window, counted in the database (``background_points_per_s`` in
  readings: ``--mode batched`` sends gateway messages of ``--batch`` readings);
  ``background_hub_msgs_per_s`` the same from the hub's counters; ``generator_msgs_per_s``
  what the generator offered over its whole send phase (it keeps at most 50,000 readings
  unconfirmed, so an overloaded hub slows it down: ``generator_window_full_s``);
  ``generator_cpu_s``/``generator_cpu_pct`` its CPU (Python plus its mosquitto_pub
  processes) over the trigger window.
- ``hub_cpu_pct``, ``broker_cpu_pct``, ``db_cpu_pct`` (PostgreSQL, approximate) over the
  trigger window, in % of one core; ``peak_rss_mb`` the hub's VmHWM; ``machine_busy_pct``
  (100 = every core); ``other_cpu_pct``: CPU taken meanwhile by processes outside the
  benchmark, in % of one core; ``load`` the 1/5/15-minute load averages at start and end
  (``uptime``).
- ``hub_clients_after_close``: websocket clients the hub still counts a second after the
  benchmark's client closed (the feed notices a closed socket only when it next sends).
- With ``--backtest``: while the triggers run, a client posts backtests back to back
  (``POST /api/rules/backtest``: a threshold rule over every background reading stored so
  far, run by the hub in a child process, ingest/backtest_job.py); ``backtests`` how many
  finished, ``backtest_ms`` their wall times (p50/max), ``backtest_readings`` the readings
  the largest one evaluated, ``backtest_errors`` any that failed, ``backtest_backend``
  whether the PostgreSQL backend reading for it was lowered, ``backtest_cpu_s`` and
  ``backtest_cpu_us_per_reading`` what the backtests cost the machine (child + backend CPU).
  With ``--backtest-rest X`` the triggers sent while a backtest ran (``during_bt_*``) are
  compared with those sent between (``no_bt_*``) in the same run: ``p50_ratio_bt``,
  ``p90_ratio_bt``, ``p99_ratio_bt``, each with a 90 % bootstrap interval (``*_ci90``);
  ``--backtest-sham S`` is the A/A control (same split, no backtest), the reference the
  real ratios are judged against. ``backtest_readings_per_s`` is how fast backtests read
  at their CPU budget (``HUB_BACKTEST_CPU_SHARE``), ``backtest_cpu_pct`` the share of one
  core they took (child + backend), ``backtest_rested_s`` how long they rested for it.
  Use ``--triggers 240`` or more: with 60 triggers a side the p99 is the slowest alarm.
  ``--backtest-window S`` runs backtests in fixed windows instead (cancelling the one
  running at a window's end: ``backtests_cut``), so the real and the sham runs split the
  triggers by the same clock.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ingest import wire
from ingest.watch import CAP_RAISES, CAP_WINDOW_S
from simulators.bench import loadgen
from simulators.bench.alarm_backtests import _backtests, ratio_interval, split_by_spans
from simulators.bench.alarm_feed import FeedWatcher, Probes, Trigger, _hub_rows, _probe, _until
from simulators.bench.alarm_setup import (
    BACKGROUND_SQL,
    CAP_MARGIN,
    CLEAR_LEL,
    GAS_METRIC,
    HUB_ROLES,
    PROBE_SUFFIX,
    RAISE_LEL,
    RULE_ID,
    detector_ids,
    drop_quietly,
    load_avg,
    max_in_window,
    register_devices,
    run_prefixes,
    say,
    summarize,
    trigger_schedule,
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
from simulators.mqtt_login import login_at
from simulators.mqtt_pub import Publisher


def _start_generator(args: argparse.Namespace, env: BenchEnv, hub: HubProcess, run_id: str,
                     duration_s: float, bg_prefix: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "simulators.bench.loadgen", "--port", str(env.mqtt_port),
         "--duration", f"{duration_s:.1f}", "--rate", str(args.rate), *loadgen.mix_argv(args),
         "--device-prefix", bg_prefix,
         "--confirm-url", hub.url("/api/health"), "--drain-timeout", "60",
         "--run-id", run_id],
        cwd=ROOT, stdout=subprocess.PIPE, start_new_session=True)


async def _session(args: argparse.Namespace, env: BenchEnv, hub: HubProcess, run_id: str,
                   detectors: list[str], probe_id: str, bg_prefix: str, offsets: list[float],
                   probes: Probes) -> dict[str, Any]:
    feed = FeedWatcher(f"ws://127.0.0.1:{hub.port}/ws/live?token={hub.token}")
    pub = Publisher(login_at(env.mqtt_port, "BENCH"),
                    f"alarm-bench-{run_id}", window=100)
    gen: subprocess.Popen[bytes] | None = None
    profiler: subprocess.Popen[bytes] | None = None
    stop_sampling = asyncio.Event()

    async def sample() -> None:
        while not stop_sampling.is_set():
            probes.sample_rss()
            if hub.proc is not None and hub.proc.poll() is not None:
                raise RuntimeError(f"the hub died during the run:\n{hub.log_tail()}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_sampling.wait(), 0.5)

    sampler = asyncio.create_task(sample(), name="alarm-bench.sampler")
    try:
        seq0 = await feed.start()
        if not await pub.start():
            raise RuntimeError(f"trigger publisher could not connect to port {env.mqtt_port}")
        probe_ms = await _probe(feed, pub, probe_id)
        say(f"feed at seq {seq0}; probe alarm arrived in {probe_ms:.1f} ms (no load yet)")

        span = offsets[-1]
        gen_duration = args.warmup + span + args.timeout + 2.0
        rows0 = await asyncio.to_thread(_hub_rows, hub)
        gen = _start_generator(args, env, hub, run_id, gen_duration, bg_prefix)
        probes.procs["generator"] = gen.pid
        say(f"load generator pid {gen.pid}: {args.rate:g} msg/s for {gen_duration:.0f}s")
        # Warm-up: the background must be flowing before the first trigger.
        flowing_by = time.monotonic() + 15.0
        while await asyncio.to_thread(_hub_rows, hub) <= rows0:
            if gen.poll() is not None or time.monotonic() > flowing_by:
                raise RuntimeError("the background telemetry never reached the hub")
            await asyncio.sleep(0.2)
        await asyncio.sleep(args.warmup)
        if args.profile:
            profiler = start_profiler(hub.proc.pid if hub.proc else 0,
                                      span + args.timeout, args.profile)

        triggers = [Trigger(d) for d in detectors]
        probes.mark("start", hub_rows=await asyncio.to_thread(_hub_rows, hub))
        bt_stop = asyncio.Event()
        bt_out: dict[str, Any] = {"backtests": 0, "backtest_readings": 0,
                                  "backtest_errors": [], "backtest_ms": None}
        backtester = (asyncio.create_task(_backtests(hub, time.time() - 3600, bt_stop, bt_out,
                                                     args.backtest_rest, args.backtest_sham,
                                                     args.backtest_window))
                      if args.backtest else None)
        say(f"{len(triggers)} triggers over {span:.0f}s; load {load_avg()}")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        clears: list[asyncio.Task[None]] = []

        async def clear_later(device: str, delay: float) -> None:
            await asyncio.sleep(delay)
            await pub.publish(wire.telemetry_topic(device),
                              wire.encode_telemetry(time.time(), {GAS_METRIC: CLEAR_LEL}))

        next_report = t0 + 10.0
        for t, off in zip(triggers, offsets, strict=True):
            delay = t0 + off - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if gen.poll() is not None:
                raise RuntimeError("the load generator stopped before the triggers did")
            feed.expect(t)
            t.sent_at = time.time()
            await pub.publish(wire.telemetry_topic(t.device),
                              wire.encode_telemetry(t.sent_at, {GAS_METRIC: RAISE_LEL}))
            clears.append(asyncio.create_task(clear_later(t.device, args.interval / 2)))
            if loop.time() >= next_report:
                done = [x.latency_ms for x in triggers if x.latency_ms is not None]
                s = summarize(done)
                say(f"t={loop.time() - t0:5.1f}s {len(done)} alarmed, p50 {s['p50_ms']} ms, "
                    f"p99 {s['p99_ms']} ms, max {s['max_ms']} ms; "
                    f"hub RSS {probes.peak_rss_kb / 1024:.0f} MB")
                next_report += 10.0
        last_sent = triggers[-1].sent_at
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                _until(lambda: all(x.received_at is not None for x in triggers), feed),
                max(0.0, last_sent + args.timeout - time.time()))
        probes.mark("end", hub_rows=await asyncio.to_thread(_hub_rows, hub))
        bt_stop.set()
        if backtester is not None:
            await backtester
        await asyncio.gather(*clears, return_exceptions=True)
        late_grace = time.monotonic() + 2.0  # alarms arriving after the timeout: "late"
        while time.monotonic() < late_grace and feed.waiting:
            await asyncio.sleep(0.1)

        say("triggers done; waiting for the load generator to finish")
        while gen.poll() is None:
            if time.monotonic() > probes.marks["end"]["t"] + gen_duration + 120:
                raise RuntimeError("the load generator overran its time")
            await asyncio.sleep(0.25)
        out = gen.stdout.read() if gen.stdout else b""
        lines = out.decode(errors="replace").strip().splitlines()
        gen_report = json.loads(lines[-1]) if lines else {}
        if profiler is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(profiler.wait, 30)
        await feed.stop()
        await asyncio.sleep(1.0)
        # Does the hub still count the closed client? (Its feed notices a closed socket only
        # when it next sends to it.)
        lingering = (await asyncio.to_thread(hub.health)).get("clients")
        return {"triggers": triggers, "probe_ms": probe_ms, "generator": gen_report,
                "backtest": bt_out if args.backtest else None,
                "hub_clients_after_close": lingering,
                "feed_frames": feed.frames, "feed_events": feed.events,
                "feed_resyncs": feed.resyncs}
    finally:
        stop_sampling.set()
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sampler
        await feed.stop()
        await pub.stop()
        if profiler is not None and profiler.poll() is None:
            profiler.terminate()
            profiler.wait()
        if gen is not None and gen.poll() is None:
            gen.terminate()  # the generator stops its mosquitto_pub processes
            try:
                gen.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(gen.pid, signal.SIGKILL)
                gen.wait()


def run(args: argparse.Namespace) -> dict[str, Any]:
    env = BenchEnv.from_environ()
    run_id = f"{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}"
    offsets = trigger_schedule(args.triggers, args.interval, args.jitter, args.seed)
    busiest = max_in_window(offsets, CAP_WINDOW_S)
    if busiest + CAP_MARGIN > CAP_RAISES:
        raise ValueError(
            f"{busiest} raises in one {CAP_WINDOW_S:.0f}s window: over the hub's per-rule cap "
            f"of {CAP_RAISES} (less {CAP_MARGIN} of margin) they would join the grouped alarm; "
            f"use a longer --interval")
    cfg = loadgen.LoadConfig(port=env.mqtt_port, rate=args.rate, devices=args.devices,
                             publishers=args.publishers, mode=args.mode,
                             batch=args.batch)  # validates before anything starts
    ppm = cfg.points_per_msg
    load_start = load_avg()
    say(f"run {run_id}: load average {load_start} on {os.cpu_count()} CPUs")
    gas_prefix, bg_prefix = run_prefixes(secrets.token_hex(2))
    detectors = detector_ids(args.triggers, gas_prefix)
    probe_id = gas_prefix + PROBE_SUFFIX
    db = ScratchDatabase(env.database_url, f"bench_alarm_{run_id}", keep=args.keep_db)
    client_id = f"gridhub-alarm-bench-{run_id}"
    hub_env = {**os.environ, "HUB_DATABASE_URL": db.url, "HUB_MQTT_CLIENT_ID": client_id,
               # default: one ingest on a plain subscription, rules inline; scaled_out: this
               # hub's storage on a shared group and the rules on the evaluator's own session
               # (the same process leads it: every message crosses the broker twice).
               "HUB_MQTT_SHARE_GROUP": (f"alarmbench{run_id.replace('_', '')}"
                                        if args.layout == "scaled_out" else ""),
               "HUB_MQTT_RULES_CLIENT_ID": f"alarmbench-rules-{run_id}",
               "HUB_HTTP_PORT": str(env.http_port)}
    hub = HubProcess(hub_env, HUB_ROLES, env.var_dir / "log" / f"bench-alarm-{run_id}.log")
    try:
        db.create()
        say(f"scratch database {db.name}: the town, {args.devices} background devices, "
            f"{len(detectors)} gas detectors")
        subprocess.run([sys.executable, "-m", "hub", "load-town"], cwd=ROOT, env=hub_env,
                       check=True, stdout=subprocess.DEVNULL)
        register_devices(db.url, args.devices, bg_prefix, [*detectors, probe_id])
        hub.start()
        hub.wait_healthy()
        assert hub.pid is not None
        say(f"hub pid {hub.pid} ready (log {hub.log_path})")
        probes = Probes(hub.pid, {"hub": hub.pid, "broker": env.pid_of("mqtt/mosquitto.pid"),
                                  "db": env.pid_of("pg/postmaster.pid")})
        res = asyncio.run(_session(args, env, hub, run_id, detectors, probe_id, bg_prefix,
                                   offsets, probes))
        hwm_kb = proc_status_kb(hub.pid, "VmHWM") or probes.peak_rss_kb
        win = probes.between("start", "end")
        m0, m1 = probes.marks["start"], probes.marks["end"]
        with SyncDb(db.url) as sdb:
            bg_rows = int(sdb.fetchval(BACKGROUND_SQL, m0["wall"], m1["wall"], bg_prefix + "%"))
            alarms_open = int(sdb.fetchval(
                "SELECT count(*) FROM alarms WHERE rule_id = $1 AND device_id LIKE $2",
                RULE_ID, gas_prefix + "%"))
            incidents = int(sdb.fetchval("SELECT count(*) FROM incidents"))
        health = hub.health()
    finally:
        rc = hub.stop()
        if hub.proc is not None:
            say(f"hub {hub.pid} stopped (rc {rc})")
            forget_mqtt_session(env.mqtt_host, env.mqtt_port, client_id)
        drop_quietly(db)

    triggers: list[Trigger] = res["triggers"]
    lat = [t.latency_ms for t in triggers if t.latency_ms is not None
           and t.latency_ms <= args.timeout * 1000]
    late = [t for t in triggers if t.latency_ms is not None
            and t.latency_ms > args.timeout * 1000]
    to_txn = [(t.event_ts - t.sent_at) * 1000 for t in triggers
              if t.event_ts is not None and t.latency_ms is not None]
    txn_to_client = [(t.received_at - t.event_ts) * 1000 for t in triggers
                     if t.event_ts is not None and t.received_at is not None]
    gen = res["generator"]
    window_s = win["seconds"]
    bt_res = dict(res["backtest"] or {})
    if bt_res:
        # Same run, same machine: the triggers sent while a backtest ran against the others.
        inside, outside = split_by_spans(triggers, bt_res.pop("busy", []))
        s_in, s_out = summarize(inside, "during_bt_"), summarize(outside, "no_bt_")
        bt_res.update(s_in, **s_out, during_bt_n=len(inside), no_bt_n=len(outside))
        for q in ("p50", "p90", "p99"):
            during, between = s_in[f"during_bt_{q}_ms"], s_out[f"no_bt_{q}_ms"]
            if during is not None and between:
                bt_res[f"{q}_ratio_bt"] = round(during / between, 2)
                # How sure that ratio is: a 90 % bootstrap interval (the A/A control,
                # --backtest-sham, shows how wide it is with no backtest at all).
                bt_res[f"{q}_ratio_bt_ci90"] = ratio_interval(inside, outside,
                                                              float(q[1:]))
    hub_rows = m1["hub_rows"] - m0["hub_rows"]
    return {
        "benchmark": "alarm",
        **summarize(lat),
        "triggers": len(triggers),
        "alarmed": len(lat),
        "missed": len(triggers) - len(lat),
        "late": len(late),
        **summarize(to_txn, "to_txn_"),
        **summarize(txn_to_client, "txn_to_client_"),
        "probe_unloaded_ms": round(res["probe_ms"], 1),
        "target_rate": args.rate,
        "mode": args.mode,
        "readings_per_msg": ppm,
        "background_msgs_per_s": round(bg_rows / ppm / window_s, 1),
        "background_points_per_s": round(bg_rows / window_s, 1),
        "background_hub_msgs_per_s": round(hub_rows / ppm / window_s, 1),
        "generator_msgs_per_s": gen.get("offered_msgs_per_s"),
        "generator_sent_msgs": gen.get("sent_msgs"),
        "generator_window_full_s": gen.get("window_full_s"),
        "generator_ok": gen.get("ok"),
        "generator_total_cpu_s": gen.get("cpu_s"),
        "generator_cpu_us_per_msg": gen.get("cpu_us_per_msg"),
        "generator_cpu_s": win.get("generator_cpu_s"),
        "generator_cpu_pct": win.get("generator_cpu_pct"),
        "hub_cpu_pct": win.get("hub_cpu_pct"),
        "broker_cpu_pct": win.get("broker_cpu_pct"),
        "db_cpu_pct": win.get("db_cpu_pct"),
        "machine_busy_pct": win["machine_busy_pct"],
        "other_cpu_pct": win["other_cpu_pct"],
        "peak_rss_mb": round(hwm_kb / 1024, 1),
        "window_s": round(window_s, 1),
        "trigger_interval_s": args.interval,
        "alarm_rows": alarms_open,
        "incidents": incidents,
        "feed_frames": res["feed_frames"],
        "feed_events": res["feed_events"],
        "feed_resyncs": res["feed_resyncs"],
        "hub_clients_after_close": res["hub_clients_after_close"],
        "alarm_writes": (health.get("ingest") or {}).get("alarm_writes")
        or ((health.get("ingest") or {}).get("rules") or {}).get("alarm_writes"),
        "layout": args.layout,
        **bt_res,
        # Every trigger's publish -> alarm latency (the report's CDF).
        "latencies_ms": sorted(round(x, 1) for x in lat),
        "load": {"start": load_start, "end": load_avg()},
        "ncpu": os.cpu_count(),
        "run_id": run_id,
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rate", type=float, default=10_000.0,
                   help="background telemetry, messages/s (one reading each)")
    loadgen.add_mix_arguments(p, devices_help="background bench devices")
    p.add_argument("--triggers", type=int, default=200, help="alarm readings, one per detector")
    p.add_argument("--interval", type=float, default=0.7,
                   help="seconds between triggers (the rule caps raises at "
                        f"{CAP_RAISES} per {CAP_WINDOW_S:.0f}s)")
    p.add_argument("--jitter", type=float, default=0.1, help="± seconds on each trigger time")
    p.add_argument("--seed", type=int, default=1, help="seed of the jitter")
    p.add_argument("--layout", choices=("default", "scaled_out"), default="default",
                   help="ingest layout: one process with rules inline, or storage on a "
                        "shared subscription and the leader-elected evaluator")
    p.add_argument("--warmup", type=float, default=5.0,
                   help="seconds of background load before the first trigger")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds after which a trigger without its alarm counts as missed")
    p.add_argument("--keep-db", action="store_true", help="keep the scratch database")
    p.add_argument("--backtest", action="store_true",
                   help="run backtests back to back during the triggers (alarm p99 must hold)")
    p.add_argument("--backtest-rest", type=float, default=0.0, metavar="X",
                   help="with --backtest: rest X times a backtest's wall time after it, so "
                        "that triggers fall both during and between backtests (compared in "
                        "the same run: during_bt_*, no_bt_*, p50_ratio_bt, p99_ratio_bt)")
    p.add_argument("--backtest-sham", type=float, default=0.0, metavar="S",
                   help="with --backtest: the A/A control; spans of S seconds count as "
                        "'during' but run no backtest (the ratios' own noise)")
    p.add_argument("--backtest-window", type=float, default=0.0, metavar="S",
                   help="with --backtest: fixed windows of S seconds of back-to-back "
                        "backtests (the last one cancelled at the window's end), then "
                        "S * --backtest-rest without; the split is then the same as "
                        "--backtest-sham S, set by the clock")
    p.add_argument("--profile", type=Path, metavar="FILE",
                   help="py-spy the hub during the triggers: FILE.svg flame graph or FILE.txt "
                        "collapsed stacks")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulators.bench.alarm",
                                     description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_and_report("alarm", run, args)


if __name__ == "__main__":
    sys.exit(main())
