"""The hub's dispatch latency on the real database: registration committed -> assignment
committed, through the running dispatch leader (``hub_decision_p99_ms`` of
``./hubctl bench dispatch``).

A scratch database gets the demo town, then ``units`` units (the town's 45 plus jittered
copies, ``dispatch_bench.scale_units``) with fresh positions and ``open_incidents`` open
cases (the stream sampler's categories, priorities and places), planned once by the
decision core; then all but ``UNACCEPTED`` of the assigned ones are accepted, half of
those started (on scene), and the cases nobody could take wait. The
dispatch leader (``dispatch.leader.Dispatcher``: its event feed, its decisions through
``dispatch.decisions.decide_and_apply``) runs where the hub runs it
(``Settings.dispatch_own_process``, ``HUB_DISPATCH_OWN_PROCESS``): by default in a process
of its own, ``python -m hub dispatch`` started and supervised as the hub does
(hub/dispatch_child.py); off, in this process, on its event loop.

Each timed decision registers one new case (``dispatch.service.open_incident``, one
committed transaction: t0 is when it returns) and waits until the leader's decision on
that case has committed (t1: when ``Dispatcher.decide`` returns for it, the transaction
committed; from the leader's own process, when its report of the decision reaches this
one). So t1 - t0 holds the leader's wake-up (LISTEN/NOTIFY, the event feed's read of
the events table, the bus), its state read, the core's decision, the write transaction
and its commit. The timed case must have been assigned by that decision: every timed case
is a city-management matter (the commonest qualification) at a new road vertex.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections.abc import Callable, Container
from itertools import pairwise
from typing import Any

import asyncpg

from core.bus import Bus
from core.db import create_pool
from core.heap import settle_gc
from core.outbox import EventFeed
from core.settings import Settings
from dispatch import decisions, planner, service
from dispatch.decision_stats import PARTS
from dispatch.leader import Dispatcher
from hub.dispatch_child import DispatchChild
from simulators.bench.dispatch_bench import _pct
from simulators.bench.dispatch_town import Town, scale_units
from simulators.bench.dispatch_workload import _Sampler


class _Seen:
    """The leader's committed decisions as this process learns of them."""

    def __init__(self) -> None:
        # case -> (ms inside the leader's decision, t1, the unit it was sent, the reason
        # it waits when none was)
        self.committed: dict[str, tuple[float, float, str | None, str]] = {}
        self.freed: set[str] = set()  # units whose UnitFreed decision has committed
        # case -> its decision's way (``timeline_gaps``' stamps, ``t1`` among them)
        self.timelines: dict[str, dict[str, Any]] = {}
        self.wake = asyncio.Event()

    def note(self, t1: float, event: str, ref: dict[str, Any], inside_ms: float,
             dispatched: list[tuple[str, str]], waiting: Callable[[], str],
             timeline: dict[str, Any]) -> None:
        """A decision on ``event`` (the input's class name and fields) heard of at ``t1``;
        ``waiting`` says why its case waits if it was not assigned; ``timeline``: the
        leader's stamps (``Dispatcher.timeline``, the report's ``sent``, the marks)."""
        if event == "IncidentRegistered":
            iid = str(ref["incident_id"])
            sent = next((u for i, u in dispatched if i == iid), None)
            self.committed[iid] = (inside_ms, t1, sent, waiting() if sent is None else "")
            self.timelines[iid] = {**timeline, "t1": t1}
            self.wake.set()
        elif event == "UnitFreed":
            self.freed.add(str(ref["unit_id"]))
            self.wake.set()

    async def wait(self, box: Container[str], key: str) -> None:
        """Until ``key`` is in ``box`` (``committed`` or ``freed``), woken by the leader's
        decisions; a failure after ``DECISION_TIMEOUT_S``."""
        deadline = time.perf_counter() + DECISION_TIMEOUT_S
        while key not in box:
            if time.perf_counter() >= deadline:
                raise RuntimeError(f"{key}: not decided within {DECISION_TIMEOUT_S} s")
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), deadline - time.perf_counter())


class _InProcess:
    """The leader on this process's loop, with the event feed it needs."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool, graph: Any) -> None:
        self.seen = _Seen()
        self.bus = Bus()
        self.settings = settings
        self.dispatcher = Dispatcher(settings, pool, self.bus, graph)
        self.dispatcher.on_decided.append(self._decided)
        self._feed: asyncio.Task[None] | None = None

    def _decided(self, event: planner.Input, decision: planner.Decision,
                 marks: list[float]) -> None:
        t1 = time.perf_counter()
        self.seen.note(t1, type(event).__name__, dataclasses.asdict(event),
                       (marks[-1] - marks[0]) * 1e3,
                       [(d.incident_id, d.unit_id) for d in decision.dispatches],
                       lambda: str(decision.waiting),
                       {**self.dispatcher.timeline, "sent": t1, "marks": list(marks)})

    async def start(self, pool: asyncpg.Pool) -> None:
        self.bus.last_seq = int(await pool.fetchval("SELECT coalesce(max(seq), 0) FROM events"))
        self._feed = asyncio.create_task(EventFeed(self.settings.database_url, self.bus).run())
        await self.dispatcher.start()
        # Until it leads and has made its catch-up plan (a timed case registered before
        # that would be planned by the catch-up, not by its own decision).
        await asyncio.wait_for(self.dispatcher.caught_up.wait(), DECISION_TIMEOUT_S)
        # The hub settles its heap once started (frozen out of collections, young ones
        # collected less often); time the leader in the same heap, not in CPython's
        # defaults, whose full collections walked the road graph (40-70 ms in a decision).
        settle_gc()

    def parts(self) -> object:
        return self.dispatcher.stats.summary()["ms"]

    async def stop(self) -> None:
        await self.dispatcher.stop()
        if self._feed is not None:
            self._feed.cancel()
            await asyncio.gather(self._feed, return_exceptions=True)


class _OwnProcess:
    """The leader in ``python -m hub dispatch``, started as the hub starts it; it settles
    its own heap once started (hub/dispatch_process.py)."""

    def __init__(self, settings: Settings) -> None:
        self.seen = _Seen()
        self.child = DispatchChild(settings, on_decided=self._decided)

    def _decided(self, msg: dict[str, Any]) -> None:
        marks = msg["marks"]
        self.seen.note(time.perf_counter(), msg["input"], msg["ref"],
                       (marks[-1] - marks[0]) * 1e3, [(i, u) for i, u in msg["dispatched"]],
                       lambda: "(the leader's own process reports only what it sent)",
                       {**msg.get("timeline", {}), "marks": marks})

    async def start(self, pool: asyncpg.Pool) -> None:
        await self.child.start()
        await asyncio.wait_for(self.child.caught_up.wait(), CHILD_START_TIMEOUT_S)

    def parts(self) -> object:
        return self.child.stats.summary()["ms"]

    async def stop(self) -> None:
        await self.child.stop()


# Dispatches not yet accepted at the timed moments: crews accept within a minute or two and
# cases arrive about one a minute at the peak, so a few are pending at any time; each of
# them the core weighs re-planning (its second solve) on every decision.
UNACCEPTED = 8
# A timed decision that has not committed after this long is a failure, not a data point.
DECISION_TIMEOUT_S = 10.0
# The leader's own process starts (imports, connections, warm-up, catch-up) within this.
CHILD_START_TIMEOUT_S = 60.0
# Pause after the leader's re-plan for each timed case's freed unit has committed (see the
# loop), for what follows it (the command sender, the event feed) to settle too.
SETTLE_S = 0.3


# A timed decision's way from t0 to t1, gap by gap (ms; they add up to t1 - t0). Stamps
# are ``time.perf_counter()`` (CLOCK_MONOTONIC on Linux: one clock for both processes).
GAPS = ("notify", "wake", "queue", "to_decide", "wait", "state", "core", "writes", "commit",
        "release", "report_out", "report_in")


def timeline_gaps(t0: float, tl: dict[str, Any]) -> dict[str, float]:
    """``GAPS`` of one timed decision: ``notify`` t0 -> the registration's notification
    received by the leader's process (negative when it came before the bench's
    ``open_incident`` returned: t0 is after its connection's release); ``wake`` -> the
    leader's loop woke; ``queue`` -> its event's turn (events drained before it);
    ``to_decide`` -> the decision began; ``wait`` (BEGIN and plan lock), ``state``,
    ``core``, ``writes``, ``commit``: the decision's parts (``DecisionStats``);
    ``release`` -> ``decide_and_apply`` returned (its connection back in the pool);
    ``report_out`` -> the report was sent; ``report_in`` -> t1, heard here."""
    marks = tl["marks"]
    start, end = marks[0], marks[-1]
    # The decision's own parts, named as DecisionStats names them (its last, "total",
    # is not a gap).
    parts = dict(zip(PARTS[:-1], ((b - a) for a, b in pairwise(marks)), strict=True))
    secs = {"notify": tl["received"] - t0, "wake": tl["woke"] - tl["received"],
            "queue": tl["event"] - tl["woke"], "to_decide": start - tl["event"], **parts,
            "release": tl["done"] - end, "report_out": tl["sent"] - tl["done"],
            "report_in": tl["t1"] - tl["sent"]}
    # Not a gap: the garbage collections' share of the leader's part (``Dispatcher.timeline``).
    return {**{k: secs[k] * 1e3 for k in GAPS}, "gc_in_leader": tl.get("gc", 0.0) * 1e3}


def _gap_summary(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {k: {"p50": round(_pct([r[k] for r in rows], 50), 2),
                "p99": round(_pct([r[k] for r in rows], 99), 2),
                "max": round(max(r[k] for r in rows), 2)}
            for k in (*GAPS, "gc_in_leader")} if rows else {}


def _unit_id(bench_id: str) -> str:
    """A copy's id as a hub unit id: "~" is not allowed in a unit's command topic."""
    return bench_id.replace("~", ".")


async def _populate(pool: asyncpg.Pool, town: Town, seed: int, n_units: int,
                    n_open: int) -> None:
    specs = scale_units(town.units, n_units, town.vertices, seed)
    async with pool.acquire() as conn:
        existing = {r["id"] for r in await conn.fetch("SELECT id FROM units")}
        await conn.executemany(
            """INSERT INTO units (id, name, type, qualifications, home_grid, status,
                                  duty_since, lon, lat, position_ts)
               VALUES ($1, $1, $2, $3, $4, 'available', now(), $5, $6, now())""",
            [(_unit_id(s.id), s.kind, sorted(s.qualifications), s.home_grid, s.lon, s.lat)
             for s in specs if s.id not in existing])
        await conn.execute("UPDATE units SET position_ts = now(), status = 'available', "
                           "duty_since = now()")
    rng = random.Random(f"hub-latency/{seed}")
    sampler = _Sampler(town, rng)
    for k in range(n_open):
        inc = sampler.draw(f"O{k}", 0.0)
        await service.open_incident(
            pool, category=inc.category, qualification=inc.qualification,
            priority=inc.priority, title=f"bench {k}", description="", lon=inc.lon,
            lat=inc.lat, source="operator", reporter="bench")


async def _settle(pool: asyncpg.Pool, graph: Any, policy: Any) -> dict[str, int]:
    """Plan the open cases once, then move all but ``UNACCEPTED`` of them along."""
    await decisions.decide_and_apply(pool, planner.Replan(), graph, policy)
    rows = await pool.fetch("SELECT id FROM incidents WHERE state = 'dispatched' ORDER BY id")
    for k, r in enumerate(rows[UNACCEPTED:]):
        await service.apply_action(pool, r["id"], "accept", "bench", None)
        if k % 2:
            await service.apply_action(pool, r["id"], "start_handling", "bench", None)
    counts = await pool.fetch("SELECT state, count(*) AS n FROM incidents GROUP BY state")
    return {r["state"]: int(r["n"]) for r in counts}


async def measure(settings: Settings, town: Town, seed: int, *, n_units: int = 300,
                  n_open: int = 200, decisions_n: int = 100) -> dict[str, Any]:
    """The figures (see the module docstring); the database must hold the town."""
    pool = await create_pool(settings.database_url, 2, 10)
    leader: _InProcess | _OwnProcess | None = None
    try:
        graph = await decisions.load_road_graph(pool)
        policy = decisions.policy_from_settings(settings)
        await _populate(pool, town, seed, n_units, n_open)
        states = await _settle(pool, graph, policy)
        leader = (_OwnProcess(settings) if settings.dispatch_own_process
                  else _InProcess(settings, pool, graph))
        await leader.start(pool)
        seen = leader.seen
        rng = random.Random(f"hub-latency-new/{seed}")
        sampler = _Sampler(town, rng)
        ms: list[float] = []
        inside: list[float] = []  # from the leader's BEGIN to its commit
        gaps: list[dict[str, float]] = []
        k = 0
        while len(ms) < decisions_n:
            k += 1
            inc = sampler.draw(f"N{k}", 0.0)
            view = await service.open_incident(
                pool, category="city_order", qualification="city_management",
                priority=inc.priority, title=f"timed {k}", description="", lon=inc.lon,
                lat=inc.lat, source="operator", reporter="bench")
            t0 = time.perf_counter()
            iid = int(view["id"])
            await seen.wait(seen.committed, str(iid))
            in_leader, t1, sent, waiting = seen.committed.pop(str(iid))
            if sent is None:
                raise RuntimeError(f"case {iid} was not assigned: {waiting}")
            ms.append((t1 - t0) * 1e3)
            timeline = seen.timelines.pop(str(iid))
            if "received" in timeline:  # decided on its own event (always, by the waits)
                gaps.append(timeline_gaps(t0, timeline))
            inside.append(in_leader)
            # Free the unit again so that the picture stays the same size.
            seen.freed.discard(sent)
            await service.apply_action(pool, iid, "cancel", "bench", "bench: timed case")
            # Let the leader re-plan for the freed unit before the next case is timed: a
            # decision queued behind another is the leader's backlog, not its latency (and
            # that re-plan would take the next case up before its own decision does).
            await seen.wait(seen.freed, sent)
            await asyncio.sleep(SETTLE_S)
        return {
            "hub_decision_p50_ms": round(_pct(ms, 50), 2),
            "hub_decision_p99_ms": round(_pct(ms, 99), 2),
            "hub_decision_max_ms": round(max(ms), 2),
            # The part inside the leader's decision (its BEGIN and plan lock, state read,
            # core, writes, commit); the rest is the wake-up (NOTIFY, the event feed's
            # read, the bus) and, from its own process, the report of the decision.
            "hub_decision_in_leader_p50_ms": round(_pct(inside, 50), 2),
            "hub_decision_in_leader_p99_ms": round(_pct(inside, 99), 2),
            "hub_decisions": len(ms),
            # The timed decisions' way from t0 to t1 by gap (``timeline_gaps``): where the
            # figure's milliseconds go, p50/p99/max of each (and ``gc_in_leader``: the
            # garbage collections from its event's turn to its return, part of the gaps).
            "hub_decision_timeline_ms": _gap_summary(gaps),
            # Every decision of the run by part (the timed ones and the re-plans for the
            # freed units; dispatch/decision_stats.py): where the leader's time went.
            "hub_decision_parts_ms": leader.parts(),
            # Where the leader ran (HUB_DISPATCH_OWN_PROCESS), as in a hub.
            "hub_dispatch_own_process": settings.dispatch_own_process,
            "hub_open_incidents": sum(v for s, v in states.items()
                                      if s in ("registered", "dispatched", "accepted",
                                               "handling")),
            "hub_units": n_units,
        }
    finally:
        if leader is not None:
            await leader.stop()
        await pool.close()
