"""The demo town's history, written through the product's own code on the demo's first start.

``python -m simulators.backfill [--part cases|readings|all] [--days N] [--cases-per-day X]
[--seed S]`` (``HUB_DATABASE_URL`` names the database). ``./hubctl demo`` runs the
``cases`` part before the hub starts (its events must not meet a running dispatcher) and
the ``readings`` part beside the running hub (writer and rollups only, the longest part).
Each part stamps ``demo_history`` (migration 0023) when done; a second start skips it at
the cost of one query.

What it writes, all at past times (the services take ``now``; nothing here writes a table
the product's services own except through them):

- cases (simulators/history_plan.py stories, played by ``HistoryPlayer``): each step
  through dispatch/service.py (``open_incident``, ``apply_action``) and the dispatch core
  through dispatch/decisions.py (``decide_and_apply``, ``escalate``), so the case log's
  hash chain, the SLA clocks, the assignments and the events are the product's; sensor
  alarms through ingest/alarms.py;
- telemetry of every device every ``--telemetry-every`` seconds from the simulators'
  value generators (simulators/devices.py), through the ingest writer (ingest/writer.py),
  then the minute and hour rollups rebuilt over the range (ingest/retention.py);
- patrol tracks of the last ``--track-hours`` hours from the patrol simulator
  (simulators/patrol.py), through the same writer, then the patrol rollup
  (dispatch/reports.py);
- inspections ("double random"): a committed, drawn, inspected and published draw per
  matter (dispatch/inspection_store.py).

Every case is played in time order with the others (a heap of next-step times), so the
units the planner sees busy are the ones busy at that moment. A case whose next step would
come after ``now`` stays where it is: the live hub and crews carry it on.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import asyncpg

from core import log as hub_log
from core.db import create_pool
from core.errors import HubError
from core.settings import Settings
from dispatch import decisions, inspection_store, planner, reports, service, sla_clocks
from hub.open311_services import SERVICES
from ingest import alarms, retention
from ingest.batch import Batch, PositionRow, ts_of
from ingest.writer import BatchWriter
from simulators.devices import Faults, event_rates, make_generator
from simulators.history_plan import CaseStory, plan_cases
from simulators.patrol import Fleet
from simulators.patrol_motion import gps_fix
from simulators.patrol_roads import RoadGraph

log = logging.getLogger("simulators.backfill")

DEFAULT_TOWN = Path(__file__).resolve().parent / "data" / "xuxiake.json"
# Two weeks: the reports page's "last 7 days" is full and a week-on-week comparison has its
# week before. HUB_DEMO_HISTORY_DAYS overrides it (0: no history).
DEFAULT_DAYS = 14.0
# About what a township command center of ~45 squads registers a day (a quiet town sees a
# dozen, a busy one a hundred): enough for every group of the reports to have figures.
DEFAULT_CASES_PER_DAY = 20.0
# One reading per device every 15 minutes over the history: the device charts' day and week
# views are full (their buckets are a minute and an hour), ~600k rows for the demo town's
# 290 devices over 14 days instead of ~6M at the devices' real intervals.
DEFAULT_TELEMETRY_EVERY_S = 900.0
# Patrol tracks for the last 6 hours at one fix every 15 s: a shift's playback with its
# turns, without weeks of fixes the reports roll up anyway (written before the hub starts,
# so the live patrols carry on from the tracks' ends).
DEFAULT_TRACK_HOURS = 6.0
TRACK_FIX_S = 15.0
# A town scaled up (simulators/town_scale.py: 10,000 devices, 2,000 units) gets the same
# amount of history, more thinly: past readings and track fixes are spaced so that neither
# exceeds about what the demo town writes (~400k samples, ~65k fixes at the defaults).
MAX_READING_SAMPLES = 400_000
MAX_TRACK_FIXES = 100_000
# Rows handed to the writer per transaction: its own default batch size.
WRITE_BATCH = 5000
# A case waiting for a free unit is planned again this often (s) (the live leader does it on
# every freed unit; the backfill's units free up between two of its steps).
REPLAN_EVERY_S = 600.0
# Who acts in the history (principals as the live demo names them: docs/SECURITY.md).
OPERATOR = "operator:demo"
SUPERVISOR = "supervisor:demo"
INSPECTION_OUTCOMES = ("no_problem", "no_problem", "rectification_ordered", "case_filed")


# ====================================================================== cases
class HistoryPlayer:
    """Plays ``CaseStory`` values through the product's services, in time order."""

    def __init__(self, pool: asyncpg.Pool, graph: Any, policy: Any, now: float) -> None:
        self.pool = pool
        self.graph = graph
        self.policy = policy
        self.now = now
        self.steps = 0
        self.errors = 0

    async def play(self, stories: list[CaseStory]) -> dict[str, int]:
        """Run every story up to ``now``; returns counts of what happened."""
        heap: list[tuple[float, int]] = [(s.opened_at, k) for k, s in enumerate(stories)]
        heapq.heapify(heap)
        runs: dict[int, AsyncIterator[float]] = {}
        while heap:
            t, k = heapq.heappop(heap)
            if t > self.now:
                continue  # the live town takes it from here
            run = runs.get(k)
            if run is None:
                run = runs[k] = self._case(stories[k])
            try:
                nxt = await run.__anext__()
            except StopAsyncIteration:
                continue
            except Exception:  # one story that the product refuses must not stop the rest
                log.exception("history case %d stopped", k)
                self.errors += 1
                continue
            heapq.heappush(heap, (max(nxt, t), k))
        return {"cases": len(runs), "steps": self.steps, "errors": self.errors}

    async def _act(self, iid: int, action: str, actor: str, at: float,
                   reason: str | None = None) -> dict[str, Any]:
        self.steps += 1
        return await service.apply_action(self.pool, iid, action, actor, reason, now=at)

    async def _decide(self, event: planner.Input, at: float) -> None:
        self.steps += 1
        await decisions.decide_and_apply(self.pool, event, self.graph, self.policy, now=at)

    async def _case_row(self, iid: int) -> asyncpg.Record:
        row = await self.pool.fetchrow(
            """SELECT i.state, i.assigned_unit, a.id AS assignment_id,
                      extract(epoch FROM a.assigned_at)::float8 AS assigned_at,
                      extract(epoch FROM a.accept_due)::float8 AS accept_due
               FROM incidents i LEFT JOIN assignments a ON a.incident_id = i.id
                    AND a.status = 'active'
               WHERE i.id = $1""", iid)
        assert row is not None
        return row

    async def _case(self, s: CaseStory) -> AsyncIterator[float]:
        """One case's steps; yields the time of its next step and is resumed then."""
        t = s.opened_at
        alarm_id = None
        if s.rule_id is not None and s.device_id is not None:
            alarm, _, _ = await alarms.raise_alarm(
                self.pool, rule_id=s.rule_id, device_id=s.device_id, grid_id=s.grid,
                severity="major" if s.priority > 1 else "critical", value=None,
                message=s.title, ts=t)
            alarm_id = int(alarm["id"])
        view = await service.open_incident(
            self.pool, category=s.category, qualification=s.qualification,
            priority=s.priority, title=s.title, description=s.description, lon=s.lon,
            lat=s.lat, source=s.source, reporter=_reporter(s), alarm_id=alarm_id,
            grid_id=s.grid, now=t)
        iid = int(view["id"])
        self.steps += 1
        if alarm_id is not None:  # the sensor reads normal again a few minutes later
            t += 300.0
            yield t
            await alarms.clear_alarm_for(self.pool, rule_id=str(s.rule_id),
                                         device_id=str(s.device_id), ts=t)
        if s.source not in ("alarm", "operator"):
            t += s.register_after_s
            yield t
            if s.cancel_reason is not None:
                await self._act(iid, "cancel", OPERATOR, t, s.cancel_reason)
                return
            await self._act(iid, "register", OPERATOR, t)
        if s.shelving is not None:
            t += s.shelving.after_s  # before a unit is sent (no dispatcher runs meanwhile)
            yield t
            await self._act(iid, "shelve", OPERATOR, t, s.shelving.reason)
            if s.shelving.reopen_after_s is None:
                return
            t += s.shelving.reopen_after_s
            yield t
            await self._act(iid, "reopen", OPERATOR, t)
        await self._decide(planner.IncidentRegistered(str(iid)), t)
        answers = list(s.answers)
        unit = ""
        while not unit:  # until a crew accepts and gets there (a preempted one does not)
            row = await self._case_row(iid)
            if row["state"] == "registered":  # no unit free: plan again a little later
                t += REPLAN_EVERY_S
                yield t
                await self._decide(planner.IncidentRegistered(str(iid)), t)
                continue
            if row["state"] != "dispatched" or row["assignment_id"] is None:
                return  # moved by something this story does not know
            crew = str(row["assigned_unit"])
            ans = answers.pop(0) if answers else None
            if ans is not None and ans.late:
                t = max(t, float(row["accept_due"])) + 1.0
                yield t
                await decisions.escalate(self.pool, int(row["assignment_id"]), self.graph,
                                         self.policy, now=t)
                self.steps += 1
                continue
            t += ans.delay_s if ans is not None else 30.0
            yield t
            if ans is not None and ans.decline_reason is not None:
                await self._act(iid, "decline", crew, t, ans.decline_reason)
                await self._decide(planner.UnitDeclined(str(iid), crew), t)
                continue
            await self._act(iid, "accept", crew, t)
            t += s.travel_s
            yield t
            row = await self._case_row(iid)
            if row["state"] == "accepted" and row["assigned_unit"] == crew:
                unit = crew  # else a more urgent case took the crew on its way: again
        await self._act(iid, "start_handling", unit, t)
        worker = f"gridworker:{s.grid or 'town'}"
        for k, handling in enumerate(s.rounds):
            if k == 0 and s.extension is not None:
                t += handling * 0.5
                yield t
                await self._act(iid, "request_extension", unit, t, s.extension)
                t += s.approve_after_s
                yield t
                await self._act(iid, "approve_extension", SUPERVISOR, t)
                t += s.extension_extra_s
                yield t
                await self._act(iid, "resume", unit, t)
                handling *= 0.5
            t += handling
            yield t
            await self._act(iid, "give_feedback", unit, t)
            t += s.verify_after_s
            yield t
            if k < len(s.fail_reasons):
                await self._act(iid, "verify_fail", worker, t, s.fail_reasons[k])
            else:
                await self._act(iid, "verify_ok", worker, t)
        for action, wait in (("close", s.close_after_s), ("evaluate", s.evaluate_after_s),
                             ("archive", s.archive_after_s)):
            t += wait
            yield t
            await self._act(iid, action, OPERATOR, t)


def _reporter(s: CaseStory) -> str:
    return {"alarm": service.SYSTEM_ACTOR, "open311": "open311:随手拍",
            "hotline": OPERATOR, "operator": OPERATOR,
            "grid_worker": f"gridworker:{s.grid or 'town'}"}[s.source]


# ====================================================================== readings
class _Sink:
    """The ingest writer used directly (no broker, nothing to acknowledge)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.writer = BatchWriter(pool, lambda _acks: None)
        self.batch = Batch()
        self.rows = 0

    async def add_telemetry(self, ts: float, device_id: str,
                            values: Mapping[str, float]) -> None:
        # telemetry rows carry UNIX seconds (ingest/copy_binary.py encodes them)
        self.batch.telemetry.extend((ts, device_id, m, float(v), ts, False)
                                    for m, v in values.items())
        await self._maybe_flush()

    async def add_position(self, row: PositionRow) -> None:
        self.batch.positions.append(row)
        await self._maybe_flush()

    async def _maybe_flush(self, force: bool = False) -> None:
        if self.batch.size() >= WRITE_BATCH or (force and self.batch.size()):
            self.rows += self.batch.size()
            await self.writer.write(self.batch)
            self.batch = Batch()

    async def flush(self) -> None:
        await self._maybe_flush(force=True)


async def backfill_telemetry(pool: asyncpg.Pool, town: Mapping[str, Any], since: float,
                             until: float, every_s: float, seed: int) -> int:
    """Every device's values at ``since + k * every_s`` (< ``until``); rollups rebuilt."""
    if every_s <= 0:
        return 0
    devices = list(town["devices"])
    every_s = max(every_s, (until - since) * len(devices) / MAX_READING_SAMPLES)
    rates = event_rates(devices, 0.0)
    gens = [make_generator(d, seed, Faults(event_rate_per_s=rates[d["id"]])) for d in devices]
    sink = _Sink(pool)
    t = since
    while t < until:
        for g in gens:
            values = g.sample(t)
            if values is not None:
                await sink.add_telemetry(t, g.id, values)
        t += every_s
    await sink.flush()
    for r in retention.ROLLUPS:  # the ranges the scheduled rollup will not go back to
        day = retention.floor_to(ts_of(since), r.width)
        stop = ts_of(until)
        while day < stop:
            nxt = min(day + r.step, stop)
            await retention.rebuild(pool, r, day, nxt)
            day = nxt
    return sink.rows


async def backfill_tracks(pool: asyncpg.Pool, town: Mapping[str, Any], since: float,
                          until: float, seed: int) -> int:
    """The patrol simulator's fixes of every unit from ``since`` to ``until``."""
    if until <= since:
        return 0
    fleet = Fleet(RoadGraph.from_town(town), town["units"], seed, since, TRACK_FIX_S,
                  grids=town["grids"]["features"])
    rng = random.Random(f"tracks:{seed}")
    sink = _Sink(pool)
    step = max(TRACK_FIX_S, (until - since) * len(fleet.units) / MAX_TRACK_FIXES)
    t = since
    while t < until:
        fleet.step(t, step)
        for u in fleet.units.values():
            fix = gps_fix(u.id, u.mover, t, rng)
            at = ts_of(t)
            await sink.add_position((at, fix.unit_id, fix.lat, fix.lon, fix.speed,
                                     fix.heading, fix.acc, at))
        t += step
    await sink.flush()
    days_back = int((until - since) // 86400) + 1
    await reports.rollup_patrol(pool, until, days_back=days_back)
    return sink.rows


# ====================================================================== inspections
async def backfill_inspections(pool: asyncpg.Pool, since: float, until: float,
                               seed: int) -> int:
    """One published draw per matter, committed early in the window and inspected over
    the next days. Returns the draws made."""
    rng = random.Random(f"inspections:{seed}")
    made = 0
    for m in await inspection_store.list_matters(pool):
        t = since + rng.uniform(0.05, 0.3) * (until - since)
        try:
            c = await inspection_store.commit(pool, matter_id=str(m["id"]), targets=3,
                                              by=SUPERVISOR, now=t)
            d = await inspection_store.make_draw(pool, commitment_id=int(c["id"]),
                                                 now=t + 3600.0, drawn_by=SUPERVISOR)
        except HubError as e:  # a matter without targets or inspectors to draw from
            log.info("no inspection draw for %s: %s", m["id"], e)
            continue
        made += 1
        at = t + 86400.0
        for p in d.get("picks", []):
            at += rng.uniform(3600.0, 86400.0)
            await inspection_store.record_result(
                pool, int(d["id"]), entity_id=str(p["entity_id"]),
                outcome=rng.choice(INSPECTION_OUTCOMES), notes="演示历史：现场检查记录",
                recorded_by=str(p["inspectors"][0]["id"]) if p.get("inspectors")
                else SUPERVISOR, now=min(at, until))
        await inspection_store.publish_draw(pool, int(d["id"]), by=SUPERVISOR,
                                            now=min(at + 3600.0, until))
    return made


# ====================================================================== the whole
PARTS = ("cases", "readings", "all")


async def history_done(db: asyncpg.Pool | asyncpg.Connection, part: str = "all") -> bool:
    """Whether this town already has that part of its history (one query)."""
    row = await db.fetchrow("SELECT readings_done_at FROM demo_history")
    if part == "cases":
        return row is not None
    return row is not None and row["readings_done_at"] is not None


async def backfill_cases(pool: asyncpg.Pool, settings: Settings, town: Mapping[str, Any], *,
                         days: float, cases_per_day: float, seed: int, now: float,
                         track_hours: float = DEFAULT_TRACK_HOURS) -> dict[str, Any]:
    """The first part, before the hub starts (its events must not meet a running
    dispatcher): cases, inspections and patrol tracks of ``[now - days, now)``, unless
    there. Returns what was written (``{"skipped": True}`` when it was there)."""
    if await history_done(pool, "cases"):
        return {"skipped": True}
    since = now - days * 86400.0
    await sla_clocks.configure(pool, settings)  # the SLA limits and calendar in force
    graph = await decisions.load_road_graph(pool)
    policy = decisions.policy_from_settings(settings)
    rules = [dict(r) for r in await pool.fetch(
        "SELECT id, name, incident_category, qualification, priority, device_model "
        "FROM rules WHERE enabled AND incident_category IS NOT NULL")]
    services = [{"code": s.code, "name": s.name, "qualification": s.qualification,
                 "priority": s.priority} for s in SERVICES.values()]
    stories = plan_cases(town=town, rules=rules, services=services, since=since, until=now,
                         cases_per_day=cases_per_day, seed=seed,
                         accept_timeout_s={p: v * sla_clocks.SlaConfig.scale
                                           for p, v in service.ACCEPT_TIMEOUT_S.items()})
    t0 = time.monotonic()
    draws = await backfill_inspections(pool, since, now, seed)
    counts = await HistoryPlayer(pool, graph, policy, now).play(stories)
    log.info("history: %d cases (%d steps, %d refused), %d inspection draws in %.1f s",
             counts["cases"], counts["steps"], counts["errors"], draws,
             time.monotonic() - t0)
    t0 = time.monotonic()
    fixes = await backfill_tracks(pool, town, max(since, now - track_hours * 3600.0), now,
                                  seed)
    log.info("history: %d patrol fixes in %.1f s", fixes, time.monotonic() - t0)
    await pool.execute(
        """INSERT INTO demo_history (days, seed, since, until, cases, positions)
           VALUES ($1, $2, $3, $4, $5, $6)""",
        days, seed, ts_of(since), ts_of(now), counts["cases"], fixes)
    return {"skipped": False, "cases": counts["cases"], "steps": counts["steps"],
            "refused": counts["errors"], "positions": fixes, "draws": draws}


async def backfill_readings(pool: asyncpg.Pool, town: Mapping[str, Any], *, now: float,
                            telemetry_every_s: float = DEFAULT_TELEMETRY_EVERY_S
                            ) -> dict[str, Any]:
    """The second part, beside the running hub (no events: the writer and the rollups
    only): every device's past readings from the history's start to ``now``. Safe to run
    again after an interruption (the writer drops readings it has). Needs the first part."""
    row = await pool.fetchrow("SELECT since, seed, readings_done_at FROM demo_history")
    if row is None or row["readings_done_at"] is not None:
        return {"skipped": True}
    t0 = time.monotonic()
    readings = await backfill_telemetry(pool, town, row["since"].timestamp(), now,
                                        telemetry_every_s, int(row["seed"]))
    log.info("history: %d readings in %.1f s", readings, time.monotonic() - t0)
    await pool.execute("UPDATE demo_history SET telemetry = $1, readings_done_at = now()",
                       readings)
    return {"skipped": False, "telemetry": readings}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m simulators.backfill",
                                description="Give the demo town its past (first start only).")
    p.add_argument("--town", default=str(DEFAULT_TOWN))
    p.add_argument("--days", type=float,
                   default=float(os.environ.get("HUB_DEMO_HISTORY_DAYS", DEFAULT_DAYS)),
                   help=f"days of history (default {DEFAULT_DAYS:g}, or "
                        "$HUB_DEMO_HISTORY_DAYS; 0: none)")
    p.add_argument("--cases-per-day", type=float, default=DEFAULT_CASES_PER_DAY)
    p.add_argument("--telemetry-every", type=float, default=DEFAULT_TELEMETRY_EVERY_S,
                   metavar="S", help="seconds between a device's past readings (0: none)")
    p.add_argument("--track-hours", type=float, default=DEFAULT_TRACK_HOURS)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--part", choices=PARTS, default="all",
                   help="cases (before the hub starts: cases, inspections, tracks), "
                        "readings (beside the running hub: the sensors' past) or all")
    p.add_argument("--log-level", default=None)
    args = p.parse_args(argv)
    if args.days < 0 or args.cases_per_day < 0 or args.track_hours < 0:
        p.error("--days, --cases-per-day and --track-hours must be >= 0")
    return args


async def amain(args: argparse.Namespace) -> int:
    settings = Settings()  # type: ignore[call-arg]  # database_url comes from HUB_*
    pool = await create_pool(settings.database_url)
    try:
        if args.days == 0 or await history_done(pool, args.part):
            log.info("demo history (%s): already there (or --days 0); nothing to do",
                     args.part)
            return 0
        town = json.loads(Path(args.town).read_text(encoding="utf-8"))
        t0 = time.monotonic()
        if args.part in ("cases", "all"):
            log.info("demo history: writing %g days of cases (first start only)", args.days)
            out = await backfill_cases(pool, settings, town, days=args.days,
                                       cases_per_day=args.cases_per_day, seed=args.seed,
                                       now=time.time(), track_hours=args.track_hours)
            log.info("demo history: cases written in %.0f s: %s", time.monotonic() - t0, out)
        if args.part in ("readings", "all"):
            t0 = time.monotonic()
            out = await backfill_readings(pool, town, now=time.time(),
                                          telemetry_every_s=args.telemetry_every)
            log.info("demo history: readings written in %.0f s: %s", time.monotonic() - t0,
                     out)
        return 0
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    hub_log.setup(args.log_level)
    return asyncio.run(amain(args))


if __name__ == "__main__":
    raise SystemExit(main())
