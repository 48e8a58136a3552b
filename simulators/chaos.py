"""Fault scenarios against the local services: ``python -m simulators.chaos`` (``./hubctl chaos``).

``./hubctl chaos`` starts the chaos environment's private PostgreSQL+TimescaleDB and
Mosquitto (ports 54384/18834/8084) and exports ``HUB_*``. Each scenario runs on a scratch
database of its own with the demo town and ``--devices`` bench devices, under steady QoS1
load, injects one fault a third of the way in, and counts in the database:

- ``kill_hub``: kill -9 the (all-roles) hub, start it again;
- ``restart_postgres``: ``pg_ctl restart -m fast`` of the environment's cluster;
- ``restart_mosquitto``: SIGTERM the environment's broker (it saves its persistence file)
  and start it again from the same configuration;
- ``leader_failover``: two hubs with the dispatch role; kill -9 the leader while operator
  reports keep arriving; count the cases dispatched more than once;
- ``db_outage`` (only when asked: ``--scenarios db_outage --outage-s 300 --rate 5000``): the
  database stopped for ``--outage-s`` under load; the hub's peak RSS and unacknowledged
  messages are sampled every second (the broker holds the backlog).

Each scenario runs in two layouts, reported separately (``--layouts``): ``default``, one
ingest process on a plain persistent subscription (rules inline), and ``scaled_out``, two
ingest processes on a shared subscription with the rules in the one holding the evaluator's
lock (ingest/evaluator.py); in ``kill_hub`` the killed process is the evaluator. Mosquitto
2.0 does not persist shared subscriptions, so ``restart_mosquitto`` may lose, scaled out
only, what devices publish before the hubs re-subscribe (docs/DEPLOYMENT.md): measured, not
counted against ``ok``; any other loss or duplicate is.

Load: the load generator's token bucket (simulators/bench/loadgen.py ``TokenBucket``) paces
``--rate`` single-reading messages/s over ``--devices`` device ids, from a paho client on a
persistent session that records each PUBACK. Not loadgen's ``mosquitto_pub -l`` workers:
those drop what is in flight when their connection breaks and cannot report PUBACKs, and a
broker restart is one of the faults. Definitions: ``sent`` messages published, ``acked``
PUBACKed by the broker, ``stored`` distinct messages in the database, ``lost`` acked but not
stored, ``duplicated`` stored rows beyond one per message; ``recovery_s`` from the fault to
the service answering again (hub healthy and subscribed, database accepting commits, broker
subscribed, new leader holding the lock), ``catch_up_s`` from the fault until every message
sent before recovery is stored.

Every process started here is stopped (always); the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg

from core.mqtt_client import BrokerAddress, make_client
from simulators.bench.harness import (
    BenchEnv,
    HubProcess,
    ScratchDatabase,
    SyncDb,
    free_port,
    say,
)
from simulators.chaos_services import (
    DOWN_S,
    AckedLoad,
    Services,
    _leader_pid,
    _stored,
    _subscribed,
    _until,
    _url,
    _wait_stored,
)
from simulators.mqtt_login import login_at

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("kill_hub", "restart_postgres", "restart_mosquitto", "leader_failover")
# Run only when named: it lasts --outage-s.
EXTRA_SCENARIOS = ("db_outage",)
LAYOUTS = ("default", "scaled_out")
# Ingest processes in the scaled-out layout.
SCALED_INGEST = 2
# The fault comes this far into the load (the service stays down DOWN_S).
FAULT_AT = 1 / 3


class Scenario:
    """One scratch database, its hubs and its load; ``run`` returns the scenario's figures."""

    def __init__(self, name: str, env: BenchEnv, args: argparse.Namespace,
                 layout: str = "default") -> None:
        self.name = name
        self.env = env
        self.args = args
        self.layout = layout
        run_id = f"{time.strftime('%Y%m%d_%H%M%S')}_{secrets.token_hex(2)}"
        self.prefix = f"CH{secrets.token_hex(2)}-"
        self.db = ScratchDatabase(env.database_url, f"chaos_{name}_{run_id}",
                                  admin_url=os.environ.get("HUB_ADMIN_DATABASE_URL"))
        # Scaled out: one share group and one evaluator session for this run's processes.
        self.group = f"chaos{secrets.token_hex(3)}" if layout == "scaled_out" else ""
        self.rules_client = f"chaos-rules-{secrets.token_hex(4)}"
        self.hubs: list[HubProcess] = []
        # The hubs log in with the hub's account, the load as the benchmarks' gateway.
        self.mqtt_url = _url(login_at(env.mqtt_port, "HUB"))
        self.load_url = _url(login_at(env.mqtt_port, "BENCH"))

    def hub(self, roles: str, **extra: str) -> HubProcess:
        h = HubProcess({**os.environ, "HUB_DATABASE_URL": self.db.url,
                        "HUB_MQTT_URL": self.mqtt_url,
                        "HUB_MQTT_CLIENT_ID": f"chaos-{secrets.token_hex(4)}",
                        "HUB_MQTT_SHARE_GROUP": self.group,
                        "HUB_MQTT_RULES_CLIENT_ID": self.rules_client,
                        "HUB_MQTT_SESSION_EXPIRY_S": "600",
                        "HUB_HTTP_PORT": str(free_port()), **extra}, roles,
                       self.env.var_dir / "log" / f"chaos-{self.name}-{len(self.hubs)}.log")
        self.hubs.append(h)
        return h

    def setup(self) -> None:
        from simulators.bench.ingest import register_devices

        self.db.create()
        subprocess.run([sys.executable, "-m", "hub", "load-town"], cwd=ROOT, check=True,
                       env={**os.environ, "HUB_DATABASE_URL": self.db.url},
                       stdout=subprocess.DEVNULL)
        register_devices(self.db.url, self.args.devices, self.prefix)

    def run(self) -> dict[str, Any]:
        try:
            self.setup()
            result: dict[str, Any] = getattr(self, self.name)()
            return result
        finally:
            for h in self.hubs:
                if h.proc is not None and h.proc.poll() is None:
                    h.proc.kill()  # the scenario is over; the database is dropped next
                    h.proc.wait()
            self._forget_sessions()
            self.db.drop()

    def _forget_sessions(self) -> None:
        """End the scenario's persistent MQTT sessions (a clean connect under each client
        id): otherwise the broker queues every later scenario's load for them, up to
        max_queued_messages each, and a restart has to load it all back."""
        ids = [h.env["HUB_MQTT_CLIENT_ID"] for h in self.hubs] + [self.rules_client]
        for cid in ids:
            client = make_client(cid, BrokerAddress.parse(self.mqtt_url), persistent=False,
                                 v311=True)
            try:
                client.loop_start()
                t_end = time.monotonic() + 5.0
                while not client.is_connected() and time.monotonic() < t_end:
                    time.sleep(0.02)
                client.disconnect()
            finally:
                client.loop_stop()

    def ingest_hubs(self, roles: str = "ingest") -> list[HubProcess]:
        """The layout's ingest processes: one (with ``roles``), or SCALED_INGEST."""
        if self.layout == "default":
            return [self.hub(roles)]
        return [self.hub("ingest") for _ in range(SCALED_INGEST)]

    def _evaluator(self, hubs: list[HubProcess]) -> HubProcess:
        """The process evaluating the rules (scaled out: the lock holder, once subscribed)."""
        if self.layout == "default":
            return hubs[0]
        found: list[HubProcess] = []

        def leader() -> bool:
            found[:] = [h for h in hubs if (h.ingest_counters().get("rules") or {}).get(
                "subscribed")]
            return bool(found)

        if _until(leader, 30, 0.2) is None:
            raise RuntimeError("no rule evaluator led within 30 s")
        return found[0]

    def _load(self) -> AckedLoad:
        return AckedLoad(self.load_url, self.prefix, self.args.devices, self.args.rate).start()

    def _finish(self, load: AckedLoad, fault_t: float, recovery_s: float | None,
                extra: dict[str, Any] | None = None,
                catch_up_timeout_s: float = 120.0) -> dict[str, Any]:
        # Catch-up: everything acknowledged by now (the backlog of the outage) stored.
        cu = _wait_stored(self.db.url, self.prefix, load.acked(), catch_up_timeout_s)
        catch_up_s = None if cu is None else time.monotonic() - fault_t
        rest = self.args.duration * (1 - FAULT_AT) - (time.monotonic() - fault_t)
        time.sleep(max(0.0, rest))
        load.stop()
        acked = load.acked()
        _wait_stored(self.db.url, self.prefix, acked, 60.0)
        stored, rows = _stored(self.db.url, self.prefix)
        out = {"layout": self.layout, "sent": load.sent, "acked": len(acked),
               "stored": len(stored),
               "lost": len(acked - stored), "duplicated": rows - len(stored),
               "stored_unacked": len(stored - acked),
               "recovery_s": None if recovery_s is None else round(recovery_s, 2),
               "catch_up_s": None if catch_up_s is None else round(catch_up_s, 2)}
        out.update(extra or {})
        say(f"{self.name} ({self.layout}): {json.dumps(out)}")
        return out

    def _wait_start(self, *hubs: HubProcess) -> None:
        for h in hubs:
            h.start()
        for h in hubs:
            h.wait_healthy()
        for h in hubs:
            if "ingest" in h.roles and _until(_subscribed(h), 30) is None:
                raise RuntimeError(f"hub not subscribed:\n{h.log_tail()}")

    # ---- scenarios
    def kill_hub(self) -> dict[str, Any]:
        hubs = self.ingest_hubs("ingest,dispatch,web")
        self._wait_start(*hubs)
        hub = self._evaluator(hubs)
        load = self._load()
        time.sleep(self.args.duration * FAULT_AT)
        t = time.monotonic()
        assert hub.proc is not None
        hub.proc.kill()  # kill -9
        hub.proc.wait()
        time.sleep(DOWN_S)
        hub.start()
        rec = _until(_subscribed(hub), 90)
        return self._finish(load, t, None if rec is None else time.monotonic() - t)

    def restart_postgres(self) -> dict[str, Any]:
        hubs = self.ingest_hubs("ingest,web")
        self._wait_start(*hubs)
        load = self._load()
        time.sleep(self.args.duration * FAULT_AT)
        t = time.monotonic()
        Services(self.env).restart_postgres()

        def rows() -> int:
            return sum(int(h.ingest_counters().get("telemetry_rows", 0) or 0) for h in hubs)

        up = rows()
        rec = _until(lambda: rows() > up, 90, 0.05)  # the first commit after the restart
        return self._finish(load, t, None if rec is None else time.monotonic() - t)

    def restart_mosquitto(self) -> dict[str, Any]:
        # Default: a plain subscription. Scaled out: a shared one, which Mosquitto 2.0 does
        # not persist (docs/DEPLOYMENT.md): the loss in its window is measured here.
        hubs = self.ingest_hubs("ingest,web")
        self._wait_start(*hubs)
        load = self._load()
        time.sleep(self.args.duration * FAULT_AT)
        t = time.monotonic()
        Services(self.env).restart_mosquitto()
        time.sleep(0.5)  # paho notices the broker left
        rec = _until(lambda: all(_subscribed(h)() for h in hubs), 90)
        return self._finish(load, t, None if rec is None else time.monotonic() - t,
                            {"subscription": "shared" if self.group else "plain"})

    def db_outage(self) -> dict[str, Any]:
        """The database away for --outage-s under load: memory and backlog sampled."""
        hubs = self.ingest_hubs("ingest,web")
        self._wait_start(*hubs)
        load = self._load()
        time.sleep(5.0)
        rss0 = [_rss_mb(h) for h in hubs]
        svc = Services(self.env)
        t = time.monotonic()
        svc.stop_postgres()
        peak_rss = list(rss0)
        peak_unacked = 0
        while time.monotonic() - t < self.args.outage_s:
            time.sleep(1.0)
            peak_rss = [max(a, _rss_mb(h)) for a, h in zip(peak_rss, hubs, strict=True)]
            peak_unacked = max(peak_unacked, sum(
                int(h.ingest_counters().get("unacked_messages") or 0) for h in hubs))
        outage_sent = load.sent
        svc.start_postgres()

        def rows() -> int:
            return sum(int(h.ingest_counters().get("telemetry_rows", 0) or 0) for h in hubs)

        up = rows()
        rec = _until(lambda: rows() > up, 90, 0.05)
        # No further load after the outage: _finish waits for the backlog to be stored.
        self.args = argparse.Namespace(**{**vars(self.args), "duration": 0.0})
        return self._finish(load, t, None if rec is None else time.monotonic() - t, {
            "outage_s": self.args.outage_s, "sent_before_recovery": outage_sent,
            "rss_mb_before": rss0, "rss_mb_peak": peak_rss,
            "peak_unacked_messages": peak_unacked},
            # A long outage leaves a long backlog: "lost" must not count what is still
            # queued at the broker when a short wait ends.
            catch_up_timeout_s=max(120.0, 3 * self.args.outage_s))

    def leader_failover(self) -> dict[str, Any]:
        ingest, *more = self.ingest_hubs()
        a = self.hub("dispatch,web")
        self._wait_start(ingest, *more, a)
        first = None
        if _until(lambda: _leader_pid(self.db.url) is not None, 30) is not None:
            first = _leader_pid(self.db.url)
        b = self.hub("dispatch,web")
        self._wait_start(b)
        load = self._load()
        reports: list[int] = []
        stop = threading.Event()

        def report() -> None:  # an operator report every 0.5 s, through the surviving node
            i = 0
            with SyncDb(self.db.url) as db:
                pts = db.fetch("SELECT lon, lat FROM devices WHERE model <> 'bench' "
                               "ORDER BY id LIMIT 40")
            while not stop.is_set():
                p = pts[i % len(pts)]
                body = json.dumps({"category": "city_order", "qualification": "city_management",
                                   "priority": 3, "title": f"chaos #{i}", "reporter": "chaos",
                                   "lon": p["lon"], "lat": p["lat"]}).encode()
                try:
                    req = urllib.request.Request(b.url("/api/incidents"), body,
                                                 {"Content-Type": "application/json",
                                                  "Authorization": f"Bearer {b.token}"})
                    with urllib.request.urlopen(req, timeout=5) as r:
                        reports.append(int(json.loads(r.read())["id"]))
                except OSError:
                    pass
                i += 1
                stop.wait(0.5)

        reporter = threading.Thread(target=report, daemon=True)
        reporter.start()
        time.sleep(self.args.duration * FAULT_AT)
        t = time.monotonic()
        assert a.proc is not None
        a.proc.kill()
        a.proc.wait()
        rec = _until(lambda: _leader_pid(self.db.url) not in (None, first), 60)
        rec_s = None if rec is None else time.monotonic() - t
        out = self._finish(load, t, rec_s)
        stop.set()
        reporter.join(10)
        time.sleep(2.0)
        with SyncDb(self.db.url) as db:
            twice = db.fetchval(
                "SELECT count(*) FROM (SELECT incident_id FROM case_log WHERE "
                "incident_id = ANY($1) AND action = 'dispatch' GROUP BY 1 "
                "HAVING count(*) > 1) x", reports)
            done = db.fetchval("SELECT count(DISTINCT incident_id) FROM assignments "
                               "WHERE incident_id = ANY($1)", reports)
        out.update({"first_leader_was_a": first is not None, "cases": len(reports),
                    "cases_dispatched": int(done), "cases_dispatched_twice": int(twice)})
        return out


def _rss_mb(hub: HubProcess) -> float:
    pid = hub.pid
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulators.chaos",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma-separated subset of {','.join(SCENARIOS)}")
    p.add_argument("--duration", type=float, default=15.0, help="seconds of load per scenario")
    p.add_argument("--rate", type=float, default=500.0, help="messages/s offered")
    p.add_argument("--devices", type=int, default=500, help="bench device ids")
    p.add_argument("--layouts", default=",".join(LAYOUTS),
                   help=f"comma-separated subset of {','.join(LAYOUTS)}")
    p.add_argument("--outage-s", type=float, default=300.0,
                   help="db_outage: seconds the database is away")
    args = p.parse_args(argv)
    env = BenchEnv.from_environ()
    names = [n for n in args.scenarios.split(",") if n]
    layouts = [n for n in args.layouts.split(",") if n]
    bad = [n for n in names if n not in SCENARIOS + EXTRA_SCENARIOS]
    bad += [n for n in layouts if n not in LAYOUTS]
    if bad:
        p.error(f"unknown scenario(s) or layout(s) {bad}")
    say(f"chaos: {', '.join(names)} in {', '.join(layouts)}; {args.rate:.0f} msg/s for "
        f"{args.duration:.0f}s each, load average {os.getloadavg()[0]:.2f} on "
        f"{os.cpu_count()} CPUs")
    results: dict[str, dict[str, Any]] = {}
    totals: dict[str, dict[str, int]] = {}
    ok = True
    keys = ("sent", "acked", "stored", "lost", "duplicated")
    for layout in layouts:
        res = results[layout] = {}
        for name in names:
            try:
                res[name] = Scenario(name, env, args, layout).run()
            except (RuntimeError, OSError, asyncpg.PostgresError,
                    subprocess.SubprocessError) as e:
                say(f"{name} ({layout}) failed: {e}")
                res[name] = {"error": str(e)}
        totals[layout] = {k: sum(int(r.get(k, 0)) for r in res.values()) for k in keys}
        # Losses allowed only where the broker loses them: a restart with shared groups.
        counted = {n: r for n, r in res.items()
                   if not (n == "restart_mosquitto" and r.get("subscription") == "shared")}
        ok = ok and all("error" not in r for r in res.values()) \
            and all(int(r.get("lost", 0)) == 0 for r in counted.values()) \
            and totals[layout]["duplicated"] == 0 \
            and all(r.get("cases_dispatched_twice", 0) == 0 for r in res.values())
    print(json.dumps({"chaos": results, "total": totals, "ok": ok,
                      "rate": args.rate, "duration_s": args.duration,
                      "ncpu": os.cpu_count()}), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
