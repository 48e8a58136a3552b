"""Benchmark drivers: ``python -m simulators.bench NAME [args]`` (``./hubctl bench NAME``).

``./hubctl bench`` starts the bench environment's private PostgreSQL+TimescaleDB and
Mosquitto and exports ``HUB_*``; each benchmark here then sets up what it measures, runs it,
stops everything it started (always) and prints, as the LAST line of stdout, one JSON
object with its figures. Progress goes to stderr. docs/PERFORMANCE.md has the figures.

Benchmarks are entries of ``BENCHMARKS`` (name -> ``Benchmark``); the helpers above them
(scratch database, hub process, CPU and memory probes) are shared by all of them.

``ingest`` (issue 3): a fresh scratch database with the demo town and ``--devices`` bench
devices; the hub with the ingest role only (``python -m hub serve --roles ingest``), on a
fresh MQTT client id (one hub: the default one-process layout; ``--hubs`` > 1 or
``--scaled-out``: a fresh share group and rules client id); the lean load generator
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
  generator's start until the database stopped growing) of the hub, the broker, PostgreSQL
  (postmaster and its live children; approximate) and the generator (getrusage of its
  process, Python plus its mosquitto_pub children). ``machine_busy_pct``: all CPUs, from
  /proc/stat, 100 = every core busy; ``other_cpu_s``: CPU used meanwhile by processes
  outside the benchmark (what a busy machine took from it). ``*_cpu_us_per_point``: those
  CPU seconds per stored reading.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from simulators.bench import loadgen, loadgen_lines
from simulators.bench.results import save_result
from simulators.mqtt_login import login_at, mosquitto_client_env

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
# The probe device (subscription check) is ``<prefix>PROBE``, outside the generator's ids.
PROBE_SUFFIX = "PROBE"
# Seconds allowed for the hub to start (migrations on an empty database, town in memory).
HUB_START_TIMEOUT_S = 90.0
# The database is "done" when its row count has not moved for this many polls 1 s apart.
STABLE_POLLS = 3


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- environment


@dataclass(frozen=True)
class BenchEnv:
    """What ``./hubctl bench`` exports (``./hubctl env bench`` prints the same)."""

    database_url: str
    mqtt_host: str
    mqtt_port: int
    http_port: int
    var_dir: Path

    @staticmethod
    def from_environ() -> BenchEnv:
        try:
            db = os.environ["HUB_DATABASE_URL"]
            mqtt = urlsplit(os.environ["HUB_MQTT_URL"])
        except KeyError as e:
            raise SystemExit(f"{e.args[0]} is not set: run through ./hubctl bench, or "
                             f'eval "$(./hubctl env bench)" first') from e
        host = mqtt.hostname or "127.0.0.1"
        if host not in ("127.0.0.1", "localhost"):
            raise SystemExit(f"benchmarks publish to 127.0.0.1 only, not {host}")
        return BenchEnv(db, "127.0.0.1", mqtt.port or 1883,
                        int(os.environ.get("HUB_HTTP_PORT", "8083")),
                        Path(os.environ.get("HUB_VAR_DIR", ROOT / "var" / "bench")))

    def pid_of(self, relative: str) -> int | None:
        """First line of a pid file under the var dir (mosquitto's, the postmaster's)."""
        try:
            return int((self.var_dir / relative).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None


def with_database(url: str, name: str) -> str:
    u = urlsplit(url)
    return urlunsplit((u.scheme, u.netloc, "/" + name, u.query, u.fragment))


class SyncDb:
    """One asyncpg connection driven from synchronous code (a private event loop).

    The drivers are sequential scripts that start processes and poll; blocking calls are
    what they want, and this keeps asyncpg (the project's driver) without an async shell.
    """

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        try:
            self.conn: asyncpg.Connection = self.loop.run_until_complete(asyncpg.connect(url))
        except BaseException:
            self.loop.close()
            raise

    def run(self, coro: Awaitable[T]) -> T:
        return self.loop.run_until_complete(coro)

    def execute(self, sql: str, *args: Any) -> str:
        return self.run(self.conn.execute(sql, *args))

    def fetchval(self, sql: str, *args: Any) -> Any:
        return self.run(self.conn.fetchval(sql, *args))

    def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return self.run(self.conn.fetch(sql, *args))

    def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        return self.run(self.conn.fetchrow(sql, *args))

    def close(self) -> None:
        try:
            self.run(self.conn.close())
        finally:
            self.loop.close()

    def __enter__(self) -> SyncDb:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ScratchDatabase:
    """A fresh database (``CREATE DATABASE ... TEMPLATE template1`` as the app role, which
    has CREATEDB; template1 carries TimescaleDB), dropped on exit unless ``keep``.

    Dropping uses ``admin_url`` (the superuser, ``HUB_ADMIN_DATABASE_URL``) when there is
    one: TimescaleDB's job scheduler keeps a superuser session on every database with the
    extension, and only a superuser may end it for ``DROP DATABASE ... WITH (FORCE)``.
    """

    def __init__(self, server_url: str, name: str, keep: bool = False,
                 admin_url: str | None = None) -> None:
        self.server_url = server_url
        self.admin_url = admin_url
        self.name = name
        self.url = with_database(server_url, name)
        self.keep = keep
        self.created = False

    def create(self) -> str:
        with SyncDb(self.server_url) as db:
            for attempt in range(50):
                try:
                    db.execute(f'CREATE DATABASE "{self.name}" TEMPLATE template1')
                    break
                except asyncpg.ObjectInUseError:
                    # TimescaleDB's launcher briefly connects to every database, template1
                    # included; CREATE DATABASE needs the template to itself.
                    if attempt == 49:
                        raise
                    time.sleep(0.2)
        self.created = True
        return self.url

    def drop(self) -> None:
        """Drop the database; a failure is reported, never raised (results come first)."""
        if not self.created or self.keep:
            if self.keep:
                say(f"kept database {self.name}")
            return
        errors = []
        for url in (self.admin_url, self.server_url):
            if not url:
                continue
            try:
                with SyncDb(url) as db:
                    db.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
                return
            except (OSError, asyncpg.PostgresError) as e:
                errors.append(str(e))
        say(f"could not drop database {self.name}: {'; '.join(errors)}")


# --------------------------------------------------------------------------- process probes


def proc_status_kb(pid: int, key: str) -> int | None:
    """A ``kB`` line of /proc/<pid>/status (VmHWM, VmRSS)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def tree_cpu_s(root: int | None) -> dict[int, float]:
    """CPU seconds of ``root`` and its live direct children (PostgreSQL backends)."""
    out: dict[int, float] = {}
    if root is None:
        return out
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry)
        if pid == root or int(fields[1]) == root:
            out[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def tree_cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two ``tree_cpu_s`` samples by processes alive at the second."""
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    total = sum(vals[:8])
    return total - idle, total


# --------------------------------------------------------------------------- hub process


def http_json(url: str, timeout: float = 5.0, token: str | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                timeout=timeout) as r:
        data: dict[str, Any] = json.loads(r.read())
    return data


def api_token(db_url: str, name: str, role: str = "supervisor") -> str:
    """An API token for a benchmark's client calls, made by ``python -m hub create-token``
    in the run's scratch database (as an operator would)."""
    r = subprocess.run([sys.executable, "-m", "hub", "create-token", "--name", name,
                        "--role", role], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "HUB_DATABASE_URL": db_url}, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"create-token failed: {r.stderr.strip()[-500:]}")
    return r.stdout.strip().splitlines()[-1]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    """A loopback TCP port nobody listens on now: each run's hub gets its own, so that a
    health check can never be answered by another process (another run, a demo)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class HubProcess:
    """``python -m hub serve --roles ROLES`` with ``HUB_*`` overrides, logging to a file."""

    def __init__(self, env: dict[str, str], roles: str, log_path: Path) -> None:
        self.env = env
        self.roles = roles
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = int(env["HUB_HTTP_PORT"])
        # A supervisor token for the benchmark's API calls, made once the hub has migrated
        # its database (wait_healthy).
        self.token: str | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> None:
        if port_in_use(self.port):
            raise RuntimeError(f"port {self.port} is already in use (a hub left running?)")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hub", "serve", "--roles", self.roles],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    def wait_healthy(self, timeout_s: float = HUB_START_TIMEOUT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"hub exited at start:\n{self.log_tail()}")
            with contextlib.suppress(OSError, ValueError):
                h = http_json(self.url("/api/health"), 2.0)
                if h.get("status") == "ok":
                    if self.token is None:
                        self.token = api_token(self.env["HUB_DATABASE_URL"],
                                               f"bench-{self.port}")
                    return h
            time.sleep(0.2)
        raise RuntimeError(f"hub not healthy after {timeout_s:.0f}s:\n{self.log_tail()}")

    def health(self) -> dict[str, Any]:
        try:
            return http_json(self.url("/api/health"), 5.0)
        except (OSError, ValueError):
            return {}

    def ingest_counters(self) -> dict[str, Any]:
        """The cheap ingest counters (from /api/health; /api/ingest/stats sorts latencies)."""
        return self.health().get("ingest") or {}

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            say(f"hub did not stop in {timeout:.0f}s; killing it")
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode


def forget_mqtt_session(host: str, port: int, client_id: str) -> None:
    """Discard the hub's persistent session: a clean-start connection with its client id.

    Otherwise the broker keeps the session (and its shared subscription) for the session
    expiry and queues later runs' messages for it, up to max_queued_messages.
    """
    exe = shutil.which("mosquitto_pub")
    if exe is None:
        return
    # As the hub's own account: the session is the hub's. (The message itself is dropped:
    # no account may write that topic.)
    with mosquitto_client_env(login_at(port, "HUB", host)) as env:
        subprocess.run([exe, "-h", host, "-p", str(port), "-V", "mqttv5", "-i", client_id,
                        "-t", "gridhub/bench/session-cleanup", "-n", "-q", "0"],
                       timeout=10, capture_output=True, check=False, env=env)


def start_profiler(pid: int, duration_s: float, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy (a tool, not a dependency: ``.venv/bin/pip install py-spy``) on the hub.

    Samples only while a thread holds the GIL (``--gil``): where the Python CPU goes.
    ``.txt`` writes collapsed stacks (``--format raw``), anything else a flame graph SVG.
    """
    exe = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if exe is None:
        say("py-spy not found; --profile ignored (.venv/bin/pip install py-spy)")
        return None
    fmt = ["--format", "raw"] if out.suffix == ".txt" else []
    say(f"profiling the hub with py-spy for {duration_s:.0f}s -> {out}")
    return subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--duration", str(int(duration_s)), "--rate", "100",
         "--nonblocking", "--gil", "--threads", "-o", str(out), *fmt],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


# --------------------------------------------------------------------------- ingest


def _ingest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=float, default=60.0, help="seconds of publishing")
    p.add_argument("--rate", type=float, default=0.0,
                   help="messages/s offered in total; 0 = flat out (closed loop)")
    p.add_argument("--mode", choices=("single", "batched"), default="single",
                   help="one reading per message, or gateway batches of --batch readings")
    p.add_argument("--batch", type=int, default=50, help="readings per batched message")
    p.add_argument("--devices", type=int, default=10_000, help="bench device ids")
    p.add_argument("--publishers", type=int, default=2, help="mosquitto_pub processes")
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
    p.add_argument("--keep-db", action="store_true", help="keep the scratch database")
    p.add_argument("--profile", type=Path, metavar="FILE",
                   help="py-spy the hub during the run: FILE.svg flame graph or FILE.txt "
                        "collapsed stacks")


def _register_devices(url: str, count: int, prefix: str) -> None:
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
                        "HUB_HTTP_PORT": str(free_port())}, "ingest",
                       env.var_dir / "log" / f"bench-hub-{run_id}-{i}.log")
            for i, cid in enumerate(client_ids)]
    gen_proc: subprocess.Popen[bytes] | None = None
    profiler: subprocess.Popen[bytes] | None = None
    try:
        db.create()
        say(f"scratch database {db.name}: loading the town and {args.devices} bench devices")
        subprocess.run([sys.executable, "-m", "hub", "load-town"], cwd=ROOT, env=base_env,
                       check=True, stdout=subprocess.DEVNULL)
        _register_devices(db.url, args.devices, prefix)
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
        hub_cpu0 = [loadgen.proc_cpu_s(p) or 0.0 for p in pids]
        broker_cpu0 = loadgen.proc_cpu_s(broker_pid)
        db_cpu0 = tree_cpu_s(pg_pid)
        busy0, total0 = machine_ticks()
        t0 = time.monotonic()
        gen_proc = subprocess.Popen(
            [sys.executable, "-m", "simulators.bench.loadgen", "--port", str(env.mqtt_port),
             "--duration", str(args.duration), "--rate", str(args.rate), "--mode", args.mode,
             "--batch", str(args.batch), "--devices", str(args.devices),
             "--publishers", str(args.publishers), "--window", str(args.window),
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
            return sum((loadgen.proc_cpu_s(p) or 0.0) - c0
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


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Benchmark:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], dict[str, Any]]


BENCHMARKS: dict[str, Benchmark] = {
    "ingest": Benchmark("MQTT -> TimescaleDB ingest throughput, loss and latency (issue 3)",
                        _ingest_args, bench_ingest),
}


# Benchmarks with a command line of their own, run as they are (same JSON last line).
DELEGATED: dict[str, str] = {
    "dispatch": "simulators.bench.dispatch_modes",  # issue 5: engine vs closest idle
    "alarm": "simulators.bench.alarm",        # issue 4: publish -> alarm on the websocket
    "console": "simulators.bench.console",    # issue 7: 2,000 units, 200 clients
    "report": "simulators.bench.report",      # issue 16: HTML plots + PERFORMANCE.md table
    "replay": "simulators.bench.replay",      # issue 15: a seek, a playback chunk
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in DELEGATED:
        module = importlib.import_module(DELEGATED[argv[0]])
        return int(module.main(argv[1:]))
    parser = argparse.ArgumentParser(prog="python -m simulators.bench",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="name", required=True,
                                metavar="{" + ",".join([*BENCHMARKS, *DELEGATED]) + "}")
    for name, b in BENCHMARKS.items():
        b.add_arguments(sub.add_parser(name, help=b.help, description=b.help))
    args = parser.parse_args(argv)
    return run_and_report(args.name, BENCHMARKS[args.name].run, args)


def run_and_report(name: str, run: Callable[[argparse.Namespace], dict[str, Any]],
                   args: argparse.Namespace) -> int:
    """Run one benchmark and print its result, or its failure, as the one last JSON line;
    the exit code says which (0, 1, or 130 when interrupted)."""
    try:
        result = run(args)
    except (RuntimeError, OSError, asyncpg.PostgresError, subprocess.SubprocessError,
            ValueError) as e:
        say(f"failed: {e}")
        print(json.dumps({"benchmark": name, "error": str(e)}), flush=True)
        return 1
    except KeyboardInterrupt:
        say("interrupted; everything started was stopped")
        print(json.dumps({"benchmark": name, "error": "interrupted"}), flush=True)
        return 130
    print(json.dumps(result), flush=True)
    try:
        say(f"result saved to {save_result(name, result)}")  # for ./hubctl bench report
    except OSError as e:
        say(f"could not save the result: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
