"""Benchmark drivers: ``python -m simulators.bench NAME [args]`` (``./hubctl bench NAME``).

``./hubctl bench`` starts the bench environment's private PostgreSQL+TimescaleDB and
Mosquitto and exports ``HUB_*``; each benchmark here then sets up what it measures, runs it,
stops everything it started (always) and prints, as the LAST line of stdout, one JSON
object with its figures. Progress goes to stderr. docs/PERFORMANCE.md has the figures.

Each benchmark is a module of this package with a ``main(argv)``, named in ``BENCHMARKS``;
the helpers here (scratch database, hub process, CPU and memory probes, the one JSON last
line) are shared by all of them. The ``ingest`` benchmark's figures are defined in
simulators/bench/ingest.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
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

from simulators.bench.results import save_result
from simulators.mqtt_login import login_at, mosquitto_client_env

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
# Seconds allowed for the hub to start (migrations on an empty database, town in memory).
HUB_START_TIMEOUT_S = 90.0


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


# --------------------------------------------------------------------------- registry


# Each benchmark: a module with a ``main(argv)`` of its own (same JSON last line).
BENCHMARKS: dict[str, str] = {
    "ingest": "simulators.bench.ingest",      # issue 3: MQTT -> TimescaleDB, loss, latency
    "dispatch": "simulators.bench.dispatch_modes",  # issue 5: engine vs closest idle
    "alarm": "simulators.bench.alarm",        # issue 4: publish -> alarm on the websocket
    "console": "simulators.bench.console",    # issue 7: 2,000 units, 200 clients
    "report": "simulators.bench.report",      # issue 16: HTML plots + PERFORMANCE.md table
    "replay": "simulators.bench.replay",      # issue 15: a seek, a playback chunk
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in BENCHMARKS:
        module = importlib.import_module(BENCHMARKS[argv[0]])
        return int(module.main(argv[1:]))
    parser = argparse.ArgumentParser(prog="python -m simulators.bench",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=list(BENCHMARKS),
                        help="the benchmark; NAME --help for its arguments")
    parser.parse_args(argv)  # exits with the usage: the name was missing or unknown
    return 2


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
