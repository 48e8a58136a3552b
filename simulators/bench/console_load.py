"""The console benchmark driver's parts: bench squads in the scratch database, operator
cases posted at a steady rate, child processes speaking JSON lines, and the wait for the
hub to go quiet."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from simulators.bench.harness import (
    ROOT,
    HubProcess,
    SyncDb,
)

# Unit ids are UNIT_PREFIX + a per-run tag + "-00001"...: every hub on the shared broker
# receives every publisher's fixes, so another run's units can never pass for this run's.
UNIT_PREFIX = "BU"


def unit_ids(count: int, prefix: str = UNIT_PREFIX + "-") -> list[str]:
    """``BU-00001``... (``prefix`` + a number)."""
    width = max(5, len(str(count)))
    return [f"{prefix}{i:0{width}d}" for i in range(1, count + 1)]


def insert_units(url: str, count: int, prefix: str
                 ) -> tuple[list[str], list[tuple[float, float]]]:
    """Bench squads, homes dealt over the level-2 grids; returns ids and home centres."""
    ids = unit_ids(count, prefix)
    with SyncDb(url) as db:
        grids = db.fetch("SELECT id, center_lon, center_lat FROM grids WHERE level = 2 "
                         "ORDER BY id")
        if not grids:
            raise RuntimeError("no level-2 grid: the town did not load")
        rows = []
        centres = []
        for i, u in enumerate(ids):
            g = grids[i % len(grids)]
            rows.append((u, f"压测小组 {u}", "squad", ["city_management"], g["id"]))
            centres.append((float(g["center_lon"]), float(g["center_lat"])))
        db.run(db.conn.copy_records_to_table(
            "units", records=rows, columns=("id", "name", "type", "qualifications",
                                            "home_grid")))
    return ids, centres


class IncidentPoster:
    """Operator cases at a steady rate, from a thread (blocking HTTP is fine there)."""

    def __init__(self, base_url: str, rate: float, centres: list[tuple[float, float]],
                 token: str | None) -> None:
        self.url = base_url + "/api/incidents"
        self.token = token
        self.rate = rate
        self.centres = centres
        self.ok = 0
        self.failed = 0
        self.latencies_ms: list[float] = []
        self.errors: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="incident-poster", daemon=True)

    def start(self) -> None:
        if self.rate > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(15)

    def _run(self) -> None:
        rng = random.Random(11)
        period = 1.0 / self.rate
        nxt = time.monotonic()
        i = 0
        while not self._stop.is_set():
            lon, lat = rng.choice(self.centres)
            body = json.dumps({
                "category": "city_order", "qualification": "city_management", "priority": 3,
                "title": f"压测占道经营 #{i}", "lon": lon + rng.uniform(-0.002, 0.002),
                "lat": lat + rng.uniform(-0.002, 0.002), "reporter": "bench"}).encode()
            req = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": f"Bearer {self.token}"})
            t = time.monotonic()
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    r.read()
                self.ok += 1
                self.latencies_ms.append((time.monotonic() - t) * 1000)
            except (OSError, urllib.error.HTTPError) as e:
                self.failed += 1
                self.errors.add(str(e)[:120])
            i += 1
            nxt += period
            self._stop.wait(max(0.0, nxt - time.monotonic()))


class Child:
    """A child process of this benchmark speaking JSON lines on stdout."""

    def __init__(self, name: str, argv: list[str]) -> None:
        self.name = name
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, start_new_session=True)
        self.lines: list[dict[str, Any]] = []
        self._cv = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True, name=f"{name}-out")
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                obj = json.loads(raw)
            except ValueError:
                continue
            with self._cv:
                self.lines.append(obj)
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    def wait_for(self, key: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                for obj in self.lines:
                    if key in obj:
                        return obj
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise RuntimeError(f"{self.name}: no {key!r} line (rc {self.proc.poll()})")
                self._cv.wait(min(left, 0.5))

    def send(self, line: str) -> None:
        if self.proc.stdin is not None and self.proc.poll() is None:
            with contextlib.suppress(BrokenPipeError, OSError):
                self.proc.stdin.write(line.encode() + b"\n")
                self.proc.stdin.flush()

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                if self.proc.stdin is not None:
                    self.proc.stdin.close()
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._reader.join(5)


def wait_quiet(hub: HubProcess, quiet_s: float, limit_s: float) -> int:
    """The hub's seq once it has not moved for ``quiet_s`` (at most ``limit_s``)."""
    deadline = time.monotonic() + limit_s
    last = -1
    since = time.monotonic()
    while True:
        seq = int(hub.health().get("seq", 0) or 0)
        if seq != last:
            last, since = seq, time.monotonic()
        elif time.monotonic() - since >= quiet_s or time.monotonic() > deadline:
            return seq
        time.sleep(0.2)
