"""What the fault scenarios of simulators/chaos.py act on and count with: the paced, PUBACK-
recording load (``AckedLoad``), the environment's PostgreSQL and Mosquitto stopped and
started (``Services``), and the database's count of stored messages.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import asyncpg

from core.mqtt_client import BrokerAddress, make_client
from dispatch.leader import LEADER_LOCK_KEY
from ingest import wire
from simulators.acked import AckedPublisher
from simulators.bench import loadgen_lines
from simulators.bench.harness import (
    BenchEnv,
    HubProcess,
    SyncDb,
)

# A stopped service stays down this long before it is started again.
DOWN_S = 2.0
# Messages a publisher may have out without a PUBACK: bounds what paho queues while the
# broker is away (paho message ids wrap at 65,535).
WINDOW = 2000


class AckedLoad(AckedPublisher):
    """Paced QoS1 single-reading messages; message ``i`` goes to device ``i % devices``
    with value ``i`` (its id in the database)."""

    def __init__(self, mqtt_url: str, prefix: str, devices: int, rate: float) -> None:
        topics = [wire.telemetry_topic(d) for d in loadgen_lines.device_ids(devices, prefix)]
        super().__init__(
            make_client(f"chaos-load-{secrets.token_hex(4)}", BrokerAddress.parse(mqtt_url),
                        persistent=True, session_expiry_s=600),
            lambda i: topics[i % len(topics)],
            lambda i: wire.encode_telemetry(time.time(), {loadgen_lines.METRIC: float(i)}),
            rate=rate, window=WINDOW)

    def stop(self, drain_s: float = 30.0) -> None:
        super().stop(drain_s)


def _stored(url: str, prefix: str) -> tuple[set[int], int]:
    with SyncDb(url) as db:
        rows = db.fetch("SELECT value::bigint AS v FROM telemetry WHERE starts_with(device_id, $1)",
                        prefix)
    return {int(r["v"]) for r in rows}, len(rows)


def _wait_stored(url: str, prefix: str, want: set[int], timeout_s: float) -> float | None:
    """Seconds until every message in ``want`` is stored, or None after ``timeout_s``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if want <= _stored(url, prefix)[0]:
            return time.monotonic() - t0
        time.sleep(0.25)
    return None


def _until(check: Callable[[], bool], timeout_s: float, interval: float = 0.05) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        try:
            if check():
                return time.monotonic() - t0
        except (OSError, ValueError, asyncpg.PostgresError):
            pass
        time.sleep(interval)
    return None


def _subscribed(hub: HubProcess) -> Callable[[], bool]:
    return lambda: hub.health().get("mqtt") == "subscribed" and hub.health().get(
        "status") == "ok"


def _leader_pid(url: str) -> int | None:
    with SyncDb(url) as db:
        # pg_locks is cluster-wide: only this database's leader counts.
        pid = db.fetchval("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                          "AND classid = 0 AND objid = $1 AND database = (SELECT oid FROM "
                          "pg_database WHERE datname = current_database())", LEADER_LOCK_KEY)
    return int(pid) if pid is not None else None


class Services:
    """The chaos environment's own PostgreSQL and Mosquitto, restarted in place."""

    def __init__(self, env: BenchEnv) -> None:
        self.env = env
        self.var = env.var_dir
        major = sorted(Path("/usr/lib/postgresql").iterdir(), key=lambda p: int(p.name))[-1]
        self.pg_ctl = major / "bin" / "pg_ctl"
        self.prefix = ["runuser", "-u", "gridhub", "--"] if os.geteuid() == 0 else []

    def stop_postgres(self) -> None:
        subprocess.run([*self.prefix, str(self.pg_ctl), "-D", str(self.var / "pg"), "-m",
                        "fast", "-w", "stop"], check=True, capture_output=True)

    def start_postgres(self) -> None:
        subprocess.run([*self.prefix, str(self.pg_ctl), "-D", str(self.var / "pg"), "-l",
                        str(self.var / "log" / "pg.log"), "-w", "start"], check=True,
                       capture_output=True)

    def restart_postgres(self) -> None:
        self.stop_postgres()
        time.sleep(DOWN_S)
        self.start_postgres()

    def restart_mosquitto(self) -> None:
        pid = self.env.pid_of("mqtt/mosquitto.pid")
        if pid is None:
            raise RuntimeError("no mosquitto pid file: is this the hubctl chaos environment?")
        os.kill(pid, signal.SIGTERM)  # Mosquitto saves its persistence file on SIGTERM
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        time.sleep(DOWN_S)
        conf = self.var / "mqtt" / "mosquitto.conf"
        subprocess.run(["mosquitto", "-c", str(conf), "-d"], check=True)


def _url(addr: BrokerAddress) -> str:
    auth = f"{quote(addr.username or '')}:{quote(addr.password or '')}@" if addr.username else ""
    return f"mqtt://{auth}{addr.host}:{addr.port}"
