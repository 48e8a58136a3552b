"""A backtest paces itself to its CPU budget, says how far it has got while it runs, and is
still cancellable while it rests; the benchmark's ratio comes with a bootstrap interval."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from core.db import connect
from core.errors import Conflict
from ingest import backtest, backtest_job, rules
from ingest.backtest_job import Backtests, rest_for
from simulators.bench.alarm_backtests import ratio_interval
from tests.conftest import HubProcess, town_database, wait_for

MODEL = "bt_pace"
N_DEVICES = 600  # three queries of DEVICES_PER_QUERY (250)
PER_DEVICE = 5


@pytest.mark.parametrize(("cpu", "wall", "share", "rest"), [
    (0.1, 0.1, 0.25, 0.3),   # 100 ms of CPU in 100 ms: rest until 400 ms have passed
    (0.1, 1.0, 0.25, 0.0),   # already under budget: no rest
    (0.0, 0.0, 0.25, 0.0),
    (0.5, 0.5, 1.0, 0.0),    # a whole core allowed
    (0.2, 0.3, 0.5, 0.1),
])
def test_rest_for_keeps_cpu_within_the_share(cpu: float, wall: float, share: float,
                                            rest: float) -> None:
    assert rest_for(cpu, wall, share) == pytest.approx(rest)
    # after resting, the CPU used is at most the share of the wall time
    assert cpu <= share * (wall + rest_for(cpu, wall, share)) + 1e-9


@pytest_asyncio.fixture(scope="module")
async def pace_db(base_db_url: str) -> AsyncIterator[str]:
    async with town_database(base_db_url, "btp") as url:
        conn = await connect(url)
        grid = await conn.fetchval("SELECT id FROM grids ORDER BY id LIMIT 1")
        ids = [f"BTP-{i:04d}" for i in range(N_DEVICES)]
        await conn.executemany(
            """INSERT INTO devices (id, kind, model, name, lon, lat, grid_id, metrics,
                                    interval_s)
               VALUES ($1, 'environment', $2, $1, 120.38, 31.84, $3, '{v}', 60)""",
            [(d, MODEL, grid) for d in ids])
        base = round(time.time()) - 3600
        await conn.executemany(
            "INSERT INTO telemetry (ts, device_id, metric, value, received_at) VALUES "
            "(to_timestamp($1), $2, 'v', $3, now())",
            [(base + 60 * k, d, 99.0 if (i + k) % 4 == 0 else 1.0)
             for i, d in enumerate(ids) for k in range(PER_DEVICE)])
        await conn.close()
        yield url


RULE = rules.Rule(id="p", name="p", kind="threshold", metric="v", device_model=MODEL,
                  params={"raise_above": 50, "clear_below": 10})


async def test_a_paced_backtest_rests_and_finds_the_same_episodes(
        pace_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """At a small share the child rests between its queries; what it finds is what the pure
    backtest finds over the same series."""
    monkeypatch.setattr(backtest_job, "DEVICES_PER_QUERY", 100)
    since, until = time.time() - 7200, time.time()
    req = {"database_url": pace_db, "max_rows": 10_000, "cpu_share": 0.05,
           "rule": {"id": RULE.id, "name": RULE.name, "kind": RULE.kind,
                    "metric": RULE.metric, "device_model": RULE.device_model,
                    "params": dict(RULE.params), "severity": RULE.severity},
           "since": since, "until": until, "model": MODEL, "device_ids": []}
    done = await backtest_job._child(req)
    # blocks of 1, 4, 16, 64 devices, then 100 (the most, here) at a time
    assert done["ok"] and done["readings"] == N_DEVICES * PER_DEVICE and done["queries"] == 10
    assert done["cpu_share"] == 0.05 and done["rested_s"] > 0 and done["queued_s"] >= 0
    assert done["read_s"] >= done["rested_s"]
    conn: asyncpg.Connection = await connect(pace_db)
    try:
        rows = await conn.fetch(
            "SELECT t.device_id, extract(epoch FROM t.ts)::float8 AS ts, t.value FROM telemetry t"
            " JOIN devices d ON d.id = t.device_id WHERE d.model = $1 ORDER BY 1, 2", MODEL)
    finally:
        await conn.close()
    want = backtest.backtest(RULE, backtest.group_rows(
        (r["device_id"], r["ts"], float(r["value"])) for r in rows), None)
    assert sorted(done["episodes"], key=lambda e: (e["raised_at"], e["device_id"])) == [
        dataclasses.asdict(e) for e in want] and want


async def test_progress_shows_while_it_runs_and_a_resting_backtest_cancels(
        pace_db: str) -> None:
    """A backtest at a tiny share takes seconds: its progress is there meanwhile (readings,
    devices done of all, elapsed of the time cap), and cancelling it mid-rest kills it."""
    jobs = Backtests(pace_db, 10_000, 60.0, 2, cpu_share=0.005)
    task = asyncio.create_task(jobs.run("slow", RULE, time.time() - 7200, time.time(), MODEL,
                                        []))
    seen = await wait_for(lambda: asyncio.sleep(0, (jobs.progress.get("slow") or {}).get(
        "readings")), timeout=30.0, interval=0.05)
    progress = jobs.progress["slow"]
    assert seen > 0 and progress["devices"] == N_DEVICES
    assert 0 < progress["devices_done"] < N_DEVICES and progress["max_s"] == 60.0
    proc = jobs.running["slow"]
    assert jobs.cancel("slow")
    with pytest.raises(Conflict) as cancelled:
        await task
    assert cancelled.value.code == "backtest.cancelled" and proc.returncode is not None
    assert jobs.progress == {} and jobs.running == {}


async def test_an_unpaced_run_through_the_parent_still_answers(pace_db: str) -> None:
    """The parent reads progress lines and the result line alike: a whole-core share
    answers at once with every reading."""
    jobs = Backtests(pace_db, 10_000, 60.0, 2, cpu_share=1.0)
    done = await jobs.run("fast", RULE, time.time() - 7200, time.time(), MODEL, [])
    assert done["readings"] == N_DEVICES * PER_DEVICE and done["cpu_share"] == 1.0
    assert done["episodes"] and jobs.progress == {}


async def test_the_backend_is_lowered_in_its_own_autogroup_too(pace_db: str) -> None:
    """The test server runs on this machine as a user the tests may renice (root, or the
    server's own): the backend gets nice 19 and, where the kernel groups tasks by session
    (PostgreSQL puts every backend in a session of its own), its autogroup too, without
    which its nice counted for nothing against other sessions' processes."""
    conn: asyncpg.Connection = await connect(pace_db)
    try:
        answer, pid = await backtest_job._lower_backend(conn, pace_db)
        assert pid == await conn.fetchval("SELECT pg_backend_pid()")
        assert os.getpriority(os.PRIO_PROCESS, pid) == 19
        grouped = Path("/proc/sys/kernel/sched_autogroup_enabled")
        if grouped.exists() and grouped.read_text().strip() == "1":
            assert answer == "nice 19, autogroup 19"
            assert Path(f"/proc/{pid}/autogroup").read_text().split()[-1] == "19"
        else:  # no autogroups here: the nice is all there is to lower
            assert answer == "nice 19"
    finally:
        await conn.close()


def test_a_process_that_shares_its_session_keeps_its_autogroup() -> None:
    """Only a session leader's autogroup is its own: another process's (here one in the
    tests' session) is never lowered, whatever it is."""
    proc = subprocess.Popen(["sleep", "30"])
    try:
        group = Path(f"/proc/{proc.pid}/autogroup")  # absent on kernels without autogroups
        before = group.read_text() if group.exists() else None
        assert backtest_job._lower_autogroup(proc.pid) == ""
        assert (group.read_text() if group.exists() else None) == before
    finally:
        proc.kill()
        proc.wait()


def test_sched_times_of_a_process_are_read_from_proc() -> None:
    """The budget's figures: time on a CPU and time waited runnable for one, in seconds;
    None for no process or one that is not there."""
    end = time.process_time() + 0.05
    while time.process_time() < end:
        pass
    on_cpu, waited = backtest_job._sched_s(os.getpid()) or (0.0, -1.0)
    assert on_cpu >= 0.05 and waited >= 0
    assert backtest_job._sched_s(None) is None
    assert backtest_job._sched_s(2**22 + 1) is None  # above the kernel's pid limit


@pytest.mark.parametrize(("size", "rows", "most", "nxt"), [
    (1, 10_000, 250, 1),      # a week of one device: one device a query
    (1, 5, 250, 4),           # sparse: grows, fourfold at most
    (64, 320, 250, 250),      # ... up to the most devices a query
    (100, 50_000, 250, 10),   # dense: shrinks to ~ROUND_READINGS a query at once
    (10, 0, 250, 40),         # nothing in the range: grows
])
def test_next_block_aims_at_a_round_of_readings(size: int, rows: int, most: int,
                                                nxt: int) -> None:
    assert backtest_job.next_block(size, rows, 5_000, most) == nxt


async def test_the_api_shows_a_backtests_progress_and_cancels_it(pace_db: str,
                                                                mqtt_url: str) -> None:
    """Through the hub: the share is the setting's, progress answers while the POST waits
    (readings so far, devices done of all, the time cap), DELETE ends it with a 409 on the
    POST, and a finished or unknown job has no progress (404)."""
    hub = HubProcess(pace_db, mqtt_url, roles="web",
                     extra_env={"HUB_BACKTEST_CPU_SHARE": "0.005"}).start()
    try:
        async with hub.async_client(timeout=60) as client:
            body = {"rule": {"name": "v > 50", "kind": "threshold", "metric": "v",
                             "device_model": MODEL,
                             "params": {"raise_above": 50, "clear_below": 10}},
                    "since": time.time() - 7200, "job_id": "paced"}
            post = asyncio.create_task(client.post("/api/rules/backtest", json=body))

            async def progress() -> dict[str, object] | None:
                r = await client.get("/api/rules/backtest/paced")
                return r.json() if r.status_code == 200 and r.json()["readings"] else None

            seen = await wait_for(progress, timeout=30.0, interval=0.1)
            assert seen["devices"] == N_DEVICES and seen["max_s"] == 120.0
            assert 0 < int(str(seen["devices_done"])) < N_DEVICES
            assert (await client.delete("/api/rules/backtest/paced")).status_code == 200
            r = await post
            assert r.status_code == 409 and r.json()["error"]["code"] == "backtest.cancelled"
            r = await client.get("/api/rules/backtest/paced")
            assert r.status_code == 404 and r.json()["error"]["code"] == "backtest.not_running"
    finally:
        hub.stop()


def test_ratio_interval_brackets_the_ratio_and_narrows_with_data() -> None:
    same = [float(x % 17) + 5 for x in range(120)]
    lo, hi = ratio_interval(same, same, 50) or (0, 0)
    assert lo <= 1.0 <= hi
    slower = [x * 2 for x in same]
    lo2, hi2 = ratio_interval(slower, same, 50) or (0, 0)
    assert lo2 > 1.2 and hi2 >= 2.0 * 0.9
    assert ratio_interval([], same, 99) is None
