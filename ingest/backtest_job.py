"""A backtest as a separate process: never on the hub's event loop.

``Backtests.run`` starts ``python -m ingest.backtest_job``, hands it the request on stdin
(the database URL too: never in argv, where ``ps`` shows it) and reads one JSON result on
stdout. The child reads the readings a block of devices at a time, one short query each (no
snapshot held across the backtest: see ``_SERIES``), through the pure
``ingest.backtest.backtest``, so its memory is one block's series plus the episodes, and
stops at ``max_rows`` readings. It runs at the lowest CPU priority
(``SCHED_IDLE``, else ``CHILD_NICE``; set by the parent as soon as it is spawned), and so
does, where the kernel allows it, the PostgreSQL backend reading for it (``BACKEND_NICE``:
a server on this machine, same PID namespace, run by this user or with root here). And,
always, it paces itself to a CPU budget: after each query it rests until the CPU the child
and that backend have used, plus the time they waited runnable for a CPU (``_Budget``), is
at most ``cpu_share`` of one core over the backtest's wall time (``rest_for``; the setting
``backtest_cpu_share``). Priorities alone did not keep a
backtest out of the alarm path's way on two cores (docs/PERFORMANCE.md). The parent kills
it after ``max_s`` seconds and when the request is cancelled (``Backtests.cancel``, or the
HTTP client gone), and refuses a new one while ``max_running`` run.

The child writes one JSON object a line on stdout: ``{"progress": {...}}`` at most every
``PROGRESS_S`` (kept by the parent: ``Backtests.progress``), then the result:
``{"ok": true, "readings": n, "episodes": [...], "pid": n, "queries": n,
"backend_lowered": "nice 19" | "not permitted" | "not local" | ..., "cpu_s": {"child": s,
"backend": s | null}, "queued_s": s, "rested_s": s, "cpu_share": x}`` (what the backtest
cost the machine, and how long it rested to stay in its budget) or
``{"ok": false, "code": "backtest.too_many_rows", "detail": "..."}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from core.db import connect
from core.errors import Conflict, InvalidInput
from ingest import backtest as bt
from ingest import rules

_ROOT = Path(__file__).resolve().parents[1]  # the child imports the project from here
# The child runs at Linux's idle scheduling class (else at this niceness): on a busy
# machine ingest and alarms get the CPU first and a backtest only what is left (a person
# waiting seconds, not an alarm waiting milliseconds; the time cap bounds the wait).
CHILD_NICE = 19
# A progress line at most this often: a console polling every second sees it move, and a
# backtest of 2M readings writes a few dozen lines, not one per query.
PROGRESS_S = 1.0
# Niceness given to the PostgreSQL backend reading for a backtest (when the server is local
# and ours, see _lower_backend): the weakest CFS weight short of the idle class.
BACKEND_NICE = 19
# Hosts of a database URL that mean this machine (a unix socket path starts with "/").
_LOCAL_HOSTS = frozenset({"", "localhost", "127.0.0.1", "::1"})

# The devices a backtest reads, and a block of devices' readings by device and time (the
# unique index (device_id, metric, ts) finds them). Short queries instead of one cursor over
# the whole range: a cursor holds one snapshot for the whole backtest (tens of seconds at
# the lowest priority), and while it is held PostgreSQL cannot prune the dead row versions
# of the tables ingest updates thousands of times a second (telemetry_latest, rule_state),
# which then grow and slow every write beside the backtest, the alarm path's too. Each
# query here is its own snapshot, for milliseconds.
_DEVICES = """SELECT id, interval_s FROM devices
    WHERE ($1::text IS NULL OR model = $1) AND (cardinality($2::text[]) = 0 OR id = ANY($2))
    ORDER BY id DESC"""
_SERIES = """SELECT device_id, extract(epoch FROM ts)::float8 AS ts, value FROM telemetry
    WHERE device_id = ANY($1) AND ts >= to_timestamp($2) AND ts < to_timestamp($3)
      {metric}
    ORDER BY device_id, ts LIMIT $4"""
_SERIES_OF_METRIC = _SERIES.format(metric="AND metric = $5")
_SERIES_ANY_METRIC = _SERIES.format(metric="")
# Devices per query, at most. One query per device made a backtest over the 10,000-device
# bench town 10,000 round trips, each with its executor start-up in the backend: most of
# the backtest's CPU went there, not into reading (measured: docs/PERFORMANCE.md,
# backtests). Blocks of up to 250 devices: 40 queries instead of 10,000.
DEVICES_PER_QUERY = 250
# Readings a query should return (its block of devices is sized to it from the readings
# per device seen so far: ``next_block``): ~5,000 readings are ~20 ms of CPU for the
# child and backend together (3.6-4.2 us a reading, measured), so the backtest works in short
# bursts between its rests and a query's snapshot lasts milliseconds, whatever the range.
# A device with more readings than this in the range is still read whole (one query).
ROUND_READINGS = 5_000
# The child's stdout is read a line at a time; its last line is the result, episodes and
# all (up to max_rows of them in theory): no line limit short of that.
_LINE_LIMIT = 2**30


def default_cpu_share() -> float:
    """The default CPU budget (child + backend, share of one core): the setting's default.
    Imported when asked for, not with this module: the child process is always given its
    share, and the settings' import (pydantic) was half of its start-up, which runs at the
    idle class and, on a saturated machine, waits runnable for seconds (docs/PERFORMANCE.md,
    backtests)."""
    from core.settings import Settings

    share: float = Settings.model_fields["backtest_cpu_share"].default
    return share


@dataclass
class Backtests:
    """The backtests running in child processes, by job id (cancellable), and how far each
    has got (``progress``)."""

    database_url: str
    max_rows: int
    max_s: float
    max_running: int
    cpu_share: float = field(default_factory=default_cpu_share)
    running: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)
    cancelled: set[str] = field(default_factory=set)
    # job id -> the child's last progress line plus "max_s" (what the time cap allows), while
    # it runs: {"readings", "devices_done", "devices", "elapsed_s", "cpu_s", "rested_s"}.
    progress: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.cpu_share > 0:
            raise ValueError(f"backtest CPU share must be above 0, not {self.cpu_share}")

    async def run(self, job_id: str, rule: rules.Rule, since: float, until: float,
                  model: str | None, device_ids: list[str]) -> dict[str, Any]:
        if job_id in self.running:
            raise Conflict(f"backtest {job_id} is already running", code="backtest.duplicate")
        if len(self.running) >= self.max_running:
            raise Conflict(f"{self.max_running} backtests are running; try again later",
                           code="backtest.busy")
        request = {"database_url": self.database_url, "max_rows": self.max_rows,
                   "cpu_share": self.cpu_share,
                   "rule": {"id": rule.id, "name": rule.name, "kind": rule.kind,
                            "metric": rule.metric, "device_model": rule.device_model,
                            "params": dict(rule.params), "severity": rule.severity},
                   "since": since, "until": until, "model": model, "device_ids": device_ids}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ingest.backtest_job", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=_ROOT,
            limit=_LINE_LIMIT)
        self.running[job_id] = proc
        self.progress[job_id] = {"readings": 0, "devices_done": 0, "devices": None,
                                 "elapsed_s": 0.0, "max_s": self.max_s}
        # The child lowers itself only once its imports are done (a few hundred ms of CPU
        # at normal priority for every backtest, back to back); lowered from here it
        # imports at the idle class too.
        lower_priority(proc.pid)
        try:
            out, err = await asyncio.wait_for(
                self._talk(job_id, proc, json.dumps(request).encode()), self.max_s)
        except TimeoutError:
            raise InvalidInput(f"backtest took over {self.max_s:g} s; narrow the range",
                               code="backtest.timeout") from None
        finally:
            if proc.returncode is None:  # timed out or cancelled: the child goes too
                proc.kill()
                await proc.wait()
            del self.running[job_id]
            self.progress.pop(job_id, None)
        if job_id in self.cancelled:
            self.cancelled.discard(job_id)
            raise Conflict(f"backtest {job_id} was cancelled", code="backtest.cancelled")
        try:
            result: dict[str, Any] = json.loads(out)
        except ValueError:
            raise RuntimeError(f"backtest process failed: {err.decode()[-500:]}") from None
        if not result.pop("ok"):
            raise InvalidInput(result["detail"], code=result["code"])
        return result

    async def _talk(self, job_id: str, proc: asyncio.subprocess.Process,
                    request: bytes) -> tuple[bytes, bytes]:
        """Send the request, keep the child's progress lines, answer (its last line, its
        stderr) once it has exited."""
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        proc.stdin.write(request)
        await proc.stdin.drain()
        proc.stdin.close()
        err_task = asyncio.ensure_future(proc.stderr.read())
        last = b""
        try:
            async for line in proc.stdout:
                if not line.startswith(b'{"progress"'):
                    last = line  # the result (a child that died has none: b"")
                    continue
                with contextlib.suppress(ValueError, KeyError):
                    self.progress[job_id] = {**json.loads(line)["progress"],
                                             "max_s": self.max_s}
            await proc.wait()
            return last, await err_task
        finally:
            err_task.cancel()

    def cancel(self, job_id: str) -> bool:
        proc = self.running.get(job_id)
        if proc is None or proc.returncode is not None:
            return False
        self.cancelled.add(job_id)
        proc.kill()
        return True


def next_block(size: int, rows: int, target: int = ROUND_READINGS,
               most: int | None = None) -> int:
    """The next block's devices, from the last block's ``size`` and the ``rows`` it
    returned: about ``target`` readings, growing at most fourfold a step (the first block
    is one device: a range of weeks can hold thousands of readings per device), between 1
    and ``most`` (default ``DEVICES_PER_QUERY``). Pure."""
    most = DEVICES_PER_QUERY if most is None else most
    per_device = max(rows, 1) / max(size, 1)
    return max(1, min(most, 4 * size, int(target / per_device)))


def rest_for(cpu_s: float, wall_s: float, share: float) -> float:
    """Seconds to rest so that ``cpu_s`` of CPU over ``wall_s`` (and the rest) is at most
    ``share`` of one core. Pure."""
    return max(0.0, cpu_s / share - wall_s)


@dataclass
class _Budget:
    """The time a backtest has held or queued for a CPU since it started reading, its
    child's and its backend's: their CPU, plus the time they waited runnable for a CPU
    (``/proc/<pid>/schedstat``). Where the backend's figures cannot be read (a server
    elsewhere), the time the child waited for its queries stands in for them (an upper
    bound: the server did at most that much for it).

    Why the queued time counts: on a saturated machine the idle-class child gets a few % of
    a core but stays *runnable* nearly all the time (measured: 0.9 s of every second during
    back-to-back backtests). A runnable task, whatever its priority, keeps its CPU from
    going idle, and a CPU about to go idle is where Linux pulls the tasks queued on the
    other one (newly-idle balancing), so the alarm path's tasks waited longer on two cores
    though the backtest used little CPU. Counting runnable time keeps the backtest runnable
    at most ``share`` of the time; on an idle machine (no queueing) it is the CPU budget."""

    share: float
    backend_pid: int | None
    started: float = field(default_factory=time.monotonic)
    child0: float = field(default_factory=time.process_time)
    backend0: float | None = None
    queued0: float = 0.0
    waited_s: float = 0.0  # wall time spent in queries
    rested_s: float = 0.0

    def __post_init__(self) -> None:
        self.backend0 = _cpu_s(self.backend_pid)
        self.queued0 = self._queued_total()

    def cpu_s(self) -> float:
        backend = _cpu_s(self.backend_pid)
        if backend is None or self.backend0 is None:
            return time.process_time() - self.child0 + self.waited_s
        return time.process_time() - self.child0 + backend - self.backend0

    def _queued_total(self) -> float:
        total = 0.0
        for pid in (os.getpid(), self.backend_pid):
            sched = _sched_s(pid)
            if sched is not None:
                total += sched[1]
        return total

    def queued_s(self) -> float:
        """Seconds the child and its backend have waited runnable for a CPU so far."""
        return self._queued_total() - self.queued0

    async def rest(self) -> None:
        pause = rest_for(self.cpu_s() + self.queued_s(), time.monotonic() - self.started,
                         self.share)
        if pause > 0:
            await asyncio.sleep(pause)
            self.rested_s += pause


def _say(line: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


async def _child(req: dict[str, Any]) -> dict[str, Any]:
    r = req["rule"]
    rule = rules.Rule(id=r["id"], name=r["name"], kind=r["kind"], metric=r["metric"],
                      device_model=r["device_model"], params=r["params"],
                      severity=r["severity"])
    max_rows = int(req["max_rows"])
    share = float(req.get("cpu_share") or default_cpu_share())
    report = req.get("progress", False)
    conn = await connect(req["database_url"])
    try:
        # One backend reads for a backtest: parallel workers would run at normal priority
        # beside ingest's writes (the child's idle class does not reach them).
        await conn.execute("SET max_parallel_workers_per_gather = 0")
        backend, backend_pid = await _lower_backend(conn, req["database_url"])
        budget = _Budget(share, backend_pid)
        devices = await conn.fetch(_DEVICES, req["model"], req["device_ids"])
        intervals = {x["id"]: float(x["interval_s"]) for x in devices}
        ids = [x["id"] for x in devices]
        query = _SERIES_OF_METRIC if rule.metric else _SERIES_ANY_METRIC
        extra = (rule.metric,) if rule.metric else ()
        episodes: list[bt.Episode] = []
        n = queries = 0
        next_progress = time.monotonic()  # the first query's, then every PROGRESS_S
        i, size = 0, 1
        while i < len(ids):
            # Rest before each query until the backtest is back within its CPU budget: the
            # work comes in bursts of one query of ~ROUND_READINGS and their evaluation
            # (milliseconds), each followed by a rest three times as long at the default
            # share.
            await budget.rest()
            block = ids[i:i + size]
            t = time.monotonic()
            # One more than the cap allows: enough to know it is over, never a whole range.
            rows = await conn.fetch(query, block, req["since"], req["until"],
                                    max_rows - n + 1, *extra)
            budget.waited_s += time.monotonic() - t
            queries += 1
            n += len(rows)
            if n > max_rows:
                return {"ok": False, "code": "backtest.too_many_rows",
                        "detail": f"more than {max_rows} readings; narrow the range"}
            if rows:
                episodes += bt.backtest(rule, _by_device(rows), intervals)
            i += len(block)
            size = next_block(len(block), len(rows))
            if report and time.monotonic() >= next_progress:
                next_progress = time.monotonic() + PROGRESS_S
                _say({"progress": {
                    "readings": n, "devices_done": i, "devices": len(ids),
                    "elapsed_s": round(time.monotonic() - budget.started, 1),
                    "cpu_s": round(budget.cpu_s(), 2), "queued_s": round(budget.queued_s(), 2),
                    "rested_s": round(budget.rested_s, 1)}})
        backend_cpu = _cpu_s(backend_pid)
        queued = budget.queued_s()
    finally:
        await conn.close()
    episodes.sort(key=lambda e: (e.raised_at, e.device_id))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"ok": True, "readings": n, "episodes": [asdict(e) for e in episodes],
            "pid": os.getpid(), "queries": queries, "backend_lowered": backend,
            "cpu_s": {"child": round(usage.ru_utime + usage.ru_stime, 3),
                      "backend": backend_cpu},
            "read_s": round(time.monotonic() - budget.started, 3),
            "queued_s": round(queued, 3), "rested_s": round(budget.rested_s, 3),
            "cpu_share": share}


def _by_device(rows: list[Any]) -> dict[str, list[tuple[float, float]]]:
    """Rows ordered by device and time -> each device's series, in order."""
    out: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        series = out.get(r["device_id"])
        if series is None:
            series = out[r["device_id"]] = []
        series.append((r["ts"], float(r["value"])))
    return out


def _cpu_s(pid: int | None) -> float | None:
    """CPU seconds (user + system) a process on this machine has used so far, from
    /proc/<pid>/stat; None when it is not ours to see (a server elsewhere)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # utime and stime are fields 14 and 15 of stat(5); after the ")" they are 12 and 13.
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 3)


def _sched_s(pid: int | None) -> tuple[float, float] | None:
    """(seconds on a CPU, seconds waited runnable for one) of a process's main thread so
    far, from /proc/<pid>/schedstat; None where it is not ours to see."""
    if pid is None:
        return None
    try:
        on_cpu, waiting = Path(f"/proc/{pid}/schedstat").read_text().split()[:2]
        return int(on_cpu) / 1e9, int(waiting) / 1e9
    except (OSError, ValueError):
        return None


def lower_priority(pid: int = 0) -> None:
    """Put a process (0: this one) in the idle scheduling class, else at ``CHILD_NICE``."""
    try:
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, pid, CHILD_NICE)


def _is_local_postgres(pid: int) -> bool:
    """True if ``pid`` is a PostgreSQL process in this machine's (and PID namespace's) view:
    a server in another container or host has its own pids, and the same number here may
    be any process."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() in ("postgres", "postmaster")
    except OSError:
        return False


async def _lower_backend(conn: Any, database_url: str) -> tuple[str, int | None]:
    """Lower the CPU priority of the PostgreSQL backend that reads for this backtest, when
    the server runs on this machine as the same OS user (the kernel lets a user renice only
    their own processes): the child's idle class does not reach the backend, which would
    otherwise read at normal priority beside the alarm path's commits.

    Niceness, not the idle class: the backend holds buffer locks that ingest's writers may
    wait for, and an idle-class holder on a saturated machine can wait seconds for a CPU;
    at ``BACKEND_NICE`` it still gets its small share. The backend's autogroup too
    (``_lower_autogroup``): where the kernel groups tasks by session, a backend's own nice
    counts only against its own session, which PostgreSQL gives every backend.

    Answers what was done (``"nice 19, autogroup 19"``, ``"nice 19"``) or why not (``"not
    permitted"``, ``"not local"``), and the backend's pid where it is on this machine (its
    CPU is read from /proc for the budget), else None; without a lowered backend the
    backtest relies on its budget alone."""
    host = urlsplit(database_url).hostname or ""
    pid = int(await conn.fetchval("SELECT pg_backend_pid()"))
    if host not in _LOCAL_HOSTS and not host.startswith("/"):
        return "not local", None
    if not _is_local_postgres(pid):
        return "not local", None
    try:
        os.setpriority(os.PRIO_PROCESS, pid, BACKEND_NICE)
    except PermissionError:
        return "not permitted", pid
    except OSError as e:
        return f"not lowered: {e}", pid
    return f"nice {BACKEND_NICE}{_lower_autogroup(pid)}", pid


def _lower_autogroup(pid: int) -> str:
    """Give the backend's autogroup ``BACKEND_NICE`` when the backend leads its own session
    (PostgreSQL calls setsid() in every backend), so the autogroup is the backend's alone;
    answers ``", autogroup 19"`` if done, ``""`` where there is nothing to do.

    Why: with autogroups (Linux's ``sched_autogroup_enabled``, on by default on desktop
    and many server kernels; they apply to tasks outside any cpu cgroup), the scheduler
    first shares the CPU between sessions, each at its autogroup's weight, and only then
    between a session's tasks by their nice. A backend alone in its session at nice 19
    still took a full nice-0 share against the hub, the broker and ingest's backends, each
    in sessions of their own (measured: docs/PERFORMANCE.md, backtests). Its autogroup's
    nice is the knob that counts there."""
    try:
        session = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])
        enabled = Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip()
    except (OSError, IndexError, ValueError):
        return ""  # a kernel without autogroups
    if session != pid or enabled != "1":
        return ""  # another session's group (or none in use): not the backend's to lower
    try:
        Path(f"/proc/{pid}/autogroup").write_text(str(BACKEND_NICE))
    except OSError as e:  # EAGAIN: unprivileged writers are rate-limited (10 a second)
        return f", autogroup not lowered: {e.strerror}"
    return f", autogroup {BACKEND_NICE}"


def main() -> None:
    lower_priority()
    req = json.loads(sys.stdin.buffer.read())
    result = asyncio.run(_child({**req, "progress": True}))
    _say(result)


if __name__ == "__main__":
    main()
