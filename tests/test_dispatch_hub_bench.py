"""``./hubctl bench dispatch --hub`` and ``--from-db`` on the real services, briefly.

One short ``--hub`` run (a few minutes of the stream at a high speed: ~10 incidents, tens of
seconds) keeps its scratch database; the tests then check the JSON it printed against what
that database holds, recomputed here by other queries, and run ``--from-db`` on the same
database, whose ``recorded`` figures must be the hub run's own, in real seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from dispatch.geo import RoadGraph
from simulators.bench.dispatch_from_db import TOWN_TZ, build
from simulators.bench.dispatch_hub import window_stream
from simulators.bench.dispatch_hub_figures import RESULT_SQL
from simulators.bench.dispatch_town import load_town
from simulators.bench.dispatch_workload import ARRIVE_LIMITS, T0
from simulators.bench.harness import ROOT, ScratchDatabase, SyncDb, with_database
from tests.bench_cli import bench_json

SPEED = 120.0
HOURS = 0.2
START_HOUR = 9.0
SEED = 3


@pytest.fixture(scope="module")
def hub_run() -> Iterator[tuple[dict[str, Any], str, float]]:
    started = time.time()
    out = bench_json("dispatch", "--hub", "--seed", str(SEED), "--hours", str(HOURS),
                     "--start-hour", str(START_HOUR), "--speed", str(SPEED), "--limits", "nfpa",
                     "--keep-db")
    name = out["database"]
    url = with_database(os.environ["HUB_DATABASE_URL"], name)
    try:
        yield out, url, started
    finally:
        db = ScratchDatabase(os.environ["HUB_DATABASE_URL"], name,
                             admin_url=os.environ.get("HUB_ADMIN_DATABASE_URL"))
        db.created = True
        db.drop()


def _recorded(url: str) -> list[dict[str, Any]]:
    """Per bench incident: priority, seconds from opening to arrival (real) and the
    unit that arrived (its live or finished assignment), read here rather than
    by the bench's own query."""
    with SyncDb(url) as db:
        rows = db.fetch(
            """SELECT i.id, i.title, i.priority, i.opened_at, l.ts AS arrived, a.unit_id
               FROM incidents i JOIN case_log l ON l.incident_id = i.id
                 AND l.action = 'start_handling'
               JOIN assignments a ON a.incident_id = i.id
                 AND a.status IN ('active', 'accepted', 'done')
               WHERE i.title LIKE 'bench %' ORDER BY i.id""")
    return [{"title": r["title"], "priority": r["priority"], "unit": r["unit_id"],
             "real_s": (r["arrived"] - r["opened_at"]).total_seconds()} for r in rows]


def test_hub_mode_reports_what_the_database_recorded(
        hub_run: tuple[dict[str, Any], str, float]) -> None:
    out, url, _ = hub_run
    stream = window_stream(load_town(), SEED, START_HOUR, HOURS, out["rate"])
    recorded = _recorded(url)
    eng = out["engine"]
    # Every incident of the stream went through the hub and was reached by a unit, but
    # for at most one the run left on the way under load, which the bench then names.
    assert out["incidents"] == len(stream) == eng["incidents"] > 0
    unreached = set(out["unreached"])
    assert len(unreached) <= 1 and out["crew_errors"] == []
    assert sorted(r["title"] for r in recorded) == sorted(
        f"bench {i.id}" for i in stream if i.id not in unreached)
    if unreached:
        return  # the figures then count its response up to the run's end
    # The figures are the database's times, scaled to the world's seconds.
    sim = [r["real_s"] * SPEED for r in recorded]
    assert eng["mean_response_s"] == pytest.approx(sum(sim) / len(sim), abs=0.06)
    lim = ARRIVE_LIMITS["nfpa"]
    breaches = sum(s > lim[r["priority"]] for s, r in zip(sim, recorded, strict=True))
    assert eng["breaches"] == breaches
    assert eng["breach_share"] == round(breaches / len(sim), 4)
    with SyncDb(url) as db:
        preempted = db.fetchval("SELECT count(*) FROM assignments WHERE status = 'preempted'")
        dispatches = db.fetchval("SELECT count(*) FROM assignments")
        units = db.fetchval("SELECT count(*) FROM units")
    assert eng["preemptions"] == preempted
    assert out["commands"]["dispatch"] == dispatches  # every assignment reached its crew
    assert out["units"] == units
    # Hub and replay ran the same stream; the agreement is their difference.
    rep = out["replay_engine"]
    assert rep["incidents"] == eng["incidents"]
    assert out["agreement"]["mean_response_s"] == pytest.approx(
        eng["mean_response_s"] - rep["mean_response_s"], abs=0.06)
    assert out["agreement"]["breach_share"] == pytest.approx(
        eng["breach_share"] - rep["breach_share"], abs=1e-4)
    # The unit the bench compares with the replay's is the one that arrived (not the case
    # log's actor, which is the crews' login).
    with SyncDb(url) as db:
        reached = {r["title"]: r["reached_by"] for r in db.fetch(RESULT_SQL)}
    assert {r["title"]: r["unit"] for r in recorded} == reached


def test_from_db_replays_the_recorded_incidents(
        hub_run: tuple[dict[str, Any], str, float]) -> None:
    hub_out, url, started = hub_run
    since = datetime.fromtimestamp(started - 60, UTC).isoformat()
    until = datetime.fromtimestamp(time.time() + 60, UTC).isoformat()
    out = bench_json("dispatch", "--from-db", url, "--since", since, "--until", until,
                     "--limits", "nfpa", "--speed", str(SPEED), "--latency-decisions", "0",
                     "--hub-decisions", "0")
    recorded = _recorded(url)
    with SyncDb(url) as db:
        registered = db.fetchval(
            "SELECT count(DISTINCT incident_id) FROM case_log WHERE action = 'register'")
        units = db.fetchval("SELECT count(*) FROM units")
    assert out["mode"] == "from-db"
    # every registered case; the reached ones are those the hub run did not leave on the way
    assert out["incidents"] == registered == len(recorded) + len(hub_out["unreached"])
    assert out["units"] == units and out["skipped_unqualified"] == 0
    # On-scene time is imputed exactly for the cases the database has no handling for (a
    # case the run left unfinished under load); normally none.
    with SyncDb(url) as db:
        unhandled = db.fetchval(
            """SELECT count(*) FROM incidents i WHERE EXISTS (SELECT 1 FROM case_log r
                 WHERE r.incident_id = i.id AND r.action = 'register')
               AND NOT EXISTS (SELECT 1 FROM case_log h, case_log f
                 WHERE h.incident_id = i.id AND h.action = 'start_handling'
                   AND f.incident_id = i.id AND f.action = 'give_feedback'
                   AND f.ts >= (SELECT min(ts) FROM case_log WHERE incident_id = i.id
                                AND action = 'start_handling'))""")
    assert out["imputed_handling"] == unhandled <= 1
    for policy in ("closest_idle", "engine"):
        assert out[policy]["incidents"] == registered
        assert out[policy]["mean_response_s"] > 0
    # What the hub did, read back at the run's speed: the --hub run's own figures.
    rec = out["recorded"]
    assert rec["reached"] == registered - len(hub_out["unreached"])
    mean_sim = sum(r["real_s"] for r in recorded) / len(recorded) * SPEED
    assert rec["mean_response_s"] == pytest.approx(mean_sim, abs=0.06)
    if hub_out["unreached"]:
        return  # the --hub figures then count its response up to the run's end
    assert rec["mean_response_s"] == pytest.approx(hub_out["engine"]["mean_response_s"],
                                                   abs=0.11)
    assert rec["breach_share"] == hub_out["engine"]["breach_share"]


def test_from_db_outside_the_range_says_so(hub_run: tuple[dict[str, Any], str, float]
                                           ) -> None:
    _, url, _ = hub_run
    r = subprocess.run([sys.executable, "-m", "simulators.bench", "dispatch", "--from-db",
                        url, "--since", "2020-01-01", "--until", "2020-01-08"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode != 0
    assert "no dispatchable incident" in r.stderr


def test_from_db_build_aligns_days_and_fills_gaps() -> None:
    """Pure part of --from-db: the town's midnight before --since becomes T0, an incident
    nobody is qualified for is skipped, a missing on-scene time is its category's median."""
    since = datetime(2026, 3, 2, 6, 0, tzinfo=TOWN_TZ).timestamp()  # 06:00 town time
    at10 = datetime(2026, 3, 2, 10, 0, tzinfo=TOWN_TZ).timestamp()

    def row(iid: int, qual: str, registered: float, arrived: float | None,
            freed: float | None) -> dict[str, Any]:
        return {"id": iid, "category": qual, "qualification": qual, "priority": 2,
                "lon": 120.41, "lat": 31.8, "grid_id": "G1", "registered": registered,
                "arrived": arrived, "freed": freed}

    incidents = [row(1, "traffic", at10, at10 + 300, at10 + 900),
                 row(2, "traffic", at10 + 60, at10 + 400, at10 + 2400),
                 row(3, "traffic", at10 + 120, None, None),
                 row(4, "fire", at10 + 180, at10 + 500, at10 + 800)]
    units = [{"id": "P1", "type": "police", "qualifications": ["traffic"], "home_grid": "G1",
              "lon": 120.40, "lat": 31.8},
             {"id": "X", "type": "squad", "qualifications": ["fire"], "home_grid": "G1",
              "lon": None, "lat": None}]  # never reported a position: left out
    no_roads = RoadGraph.from_geojson({"type": "FeatureCollection", "features": []})
    town, stream, notes = build(incidents, units, no_roads, since)
    assert [u.id for u in town.units] == ["P1"]
    assert [i.id for i in stream] == ["1", "2", "3"]
    assert notes == {"skipped_unqualified": 1, "imputed_handling": 1}
    assert stream[0].opened_at == pytest.approx(T0 + 10 * 3600)
    assert [i.handling_s for i in stream] == [600.0, 2000.0, 1300.0]
