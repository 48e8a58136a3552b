"""Result assessment (结果考核): case figures per grid, squad and officer, and patrol
mileage and duty time from GPS tracks. Pure: values in, values out, ``now`` passed in.

Case figures
------------
``facts_from_log`` turns an incident row and its case log into ``CaseFacts`` (the first
dispatch, accept, arrival (``start_handling``) and close, counted reworks and extensions,
the SLA pauses); ``assess`` groups them and computes, per group:

- ``cases``: incidents not cancelled (a cancelled report, a duplicate or a false alarm,
  counts for nobody; it is reported in ``cancelled``);
- ``closure_rate`` = closed / cases, where closed means the case reached ``closed`` (it
  may since have been evaluated and archived);
- ``on_time_rate`` = closed by the resolve deadline / due, where due = closed cases plus
  open cases whose resolve deadline has passed at ``now``. Leaving a case open past its
  deadline counts against a group just as closing it late does; a shelved case (挂账) or
  one on an approved extension has its clock paused and is not yet due. Deadlines come
  from ``dispatch/sla.py``: the SLA table's limits for (category, priority), measured from
  ``opened_at`` on the given calendar, shifted by the pauses the case log shows (replayed
  through ``dispatch/workflow.py``; a log that does not replay is taken without pauses).
  ``CaseFacts.resolve_deadline`` overrides the computation when the caller knows it;
- ``rework_rate``: share of cases with at least one failed verification (返工);
  ``extension_rate``: share with at least one approved extension (延期);
- ``response_p50_s`` / ``response_p90_s``: arrival on scene minus ``opened_at``;
  ``accept_p50_s`` / ``accept_p90_s``: signing for the case minus ``opened_at`` (like the
  SLA limits, every time is measured from the report). Percentiles interpolate linearly
  between closest ranks (numpy's default, Excel's PERCENTILE.INC). A rate or percentile
  with nothing to measure is ``None``.

Groups: ``grid`` (second-level grid), ``grid1`` (its first-level grid), ``unit`` (the
squad the case was assigned to), ``officer`` (who signed for it: the actor of the last
``accept``, else of the last ``give_feedback``), ``all``. A case without a value for the
grouping (not dispatched yet) falls in the group whose key is ``None``.

Patrol
------
``patrol_stats`` measures a unit's GPS track. Filters, all on by default: fixes less
accurate than ``MAX_ACCURACY_M`` are dropped; a fix implying a speed above
``MAX_SPEED_KMH`` from the last good one is a jump and dropped (unless
``JUMP_RESET_FIXES`` consistent fixes in a row agree: then the unit really is there and
the track restarts from them); a stay of at least ``STOP_MIN_S`` within ``STOP_RADIUS_M``
is a stop, counted as one point (its centroid), so a parked phone's wandering adds
nothing; while moving, a step shorter than the jitter radius (the larger of
``JITTER_RADIUS_M`` and the fix's accuracy) is not counted until the track has really
moved that far. A silence longer than ``MAX_GAP_S`` ends a duty session: neither time nor
distance is counted across it. Distances are on a local plane around the track's first
fix (error well under 0.1 % over a township).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from core.stats import percentile
from dispatch import sla, workflow

GROUPINGS: tuple[str, ...] = ("grid", "grid1", "unit", "officer", "all")

# States at or past closing: the case was closed (later evaluated and archived).
CLOSED_STATES: frozenset[str] = frozenset({"closed", "evaluated", "archived"})


# ---------------------------------------------------------------------- case figures
@dataclass(frozen=True, slots=True)
class CaseFacts:
    """What assessment needs to know of one incident (times are UNIX seconds)."""

    incident_id: str
    opened_at: float
    category: str
    priority: int
    state: str
    grid: str | None = None
    grid1: str | None = None
    unit: str | None = None
    officer: str | None = None
    dispatched_at: float | None = None
    accepted_at: float | None = None
    arrived_at: float | None = None
    closed_at: float | None = None
    rework_count: int = 0
    extension_count: int = 0
    pauses: tuple[tuple[float, float | None], ...] = ()
    resolve_deadline: float | None = None


def facts_from_log(incident: Mapping[str, Any], log: Sequence[Mapping[str, Any]]) -> CaseFacts:
    """``CaseFacts`` of an incident from its row and its case log.

    ``incident`` has ``id``, ``opened_at`` (UNIX s), ``category``, ``priority``,
    ``state`` and optionally ``grid_id``, ``grid1`` and ``unit``. ``log`` is the case
    log in ``seq`` order, entries with ``action``, ``actor``, ``ts`` (UNIX s) and
    ``reason``. Times are the first occurrence of each action; reworks and extensions
    are counted in the log (the record), not read from the incident's columns.
    """
    first: dict[str, float] = {}
    officer: str | None = None
    feedback_by: str | None = None
    reworks = extensions = 0
    for e in log:
        action, ts = str(e["action"]), float(e["ts"])
        first.setdefault(action, ts)
        if action == "accept":
            officer = str(e["actor"])
        elif action == "give_feedback":
            feedback_by = str(e["actor"])
        elif action == "verify_fail":
            reworks += 1
        elif action == "approve_extension":
            extensions += 1
    try:
        pauses = workflow.replay(log).all_pauses()
    except workflow.TransitionError:
        pauses = ()
    return CaseFacts(
        incident_id=str(incident["id"]),
        opened_at=float(incident["opened_at"]),
        category=str(incident["category"]),
        priority=int(incident["priority"]),
        state=str(incident["state"]),
        grid=incident.get("grid_id"),
        grid1=incident.get("grid1"),
        unit=incident.get("unit"),
        officer=officer if officer is not None else feedback_by,
        dispatched_at=first.get("dispatch"),
        accepted_at=first.get("accept"),
        arrived_at=first.get("start_handling"),
        closed_at=first.get("close"),
        rework_count=reworks,
        extension_count=extensions,
        pauses=tuple(pauses),
    )


def _rate(n: int, d: int) -> float | None:
    return n / d if d else None


@dataclass(frozen=True, slots=True)
class GroupStats:
    """Figures of one group; see the module docstring for each definition."""

    key: str | None
    cases: int
    cancelled: int
    closed: int
    due: int
    on_time: int
    rework_cases: int
    reworks: int
    extension_cases: int
    extensions: int
    closure_rate: float | None
    on_time_rate: float | None
    rework_rate: float | None
    extension_rate: float | None
    response_n: int
    response_p50_s: float | None
    response_p90_s: float | None
    accept_n: int
    accept_p50_s: float | None
    accept_p90_s: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_deadline(
    facts: CaseFacts, table: sla.SlaTable, cal: sla.WorkCalendar
) -> float:
    """The case's resolve deadline (``math.inf`` while a pause is open)."""
    if facts.resolve_deadline is not None:
        return facts.resolve_deadline
    limits = table.limits(facts.category, facts.priority)
    return sla.deadlines(limits, cal, facts.opened_at, facts.pauses)["resolve"]


def group_key(facts: CaseFacts, by: str) -> str | None:
    if by == "all":
        return "all"
    if by not in GROUPINGS:
        raise ValueError(f"unknown grouping {by!r}; one of {', '.join(GROUPINGS)}")
    value: str | None = getattr(facts, by)
    return value


def _stats(key: str | None, cases: Sequence[CaseFacts], now: float, table: sla.SlaTable,
           cal: sla.WorkCalendar) -> GroupStats:
    live = [c for c in cases if c.state != "cancelled"]
    closed = due = on_time = rework_cases = reworks = ext_cases = exts = 0
    responses: list[float] = []
    accepts: list[float] = []
    for c in live:
        deadline = resolve_deadline(c, table, cal)
        is_closed = c.closed_at is not None or c.state in CLOSED_STATES
        if is_closed:
            closed += 1
            due += 1
            if c.closed_at is not None and c.closed_at <= deadline:
                on_time += 1
        elif now > deadline:
            due += 1
        if c.rework_count:
            rework_cases += 1
            reworks += c.rework_count
        if c.extension_count:
            ext_cases += 1
            exts += c.extension_count
        # Clamped at 0: a step logged a moment before the report (clock skew between
        # writers) is an instant response, not a negative one.
        if c.arrived_at is not None:
            responses.append(max(0.0, c.arrived_at - c.opened_at))
        if c.accepted_at is not None:
            accepts.append(max(0.0, c.accepted_at - c.opened_at))
    n = len(live)
    return GroupStats(
        key=key, cases=n, cancelled=len(cases) - n, closed=closed, due=due, on_time=on_time,
        rework_cases=rework_cases, reworks=reworks, extension_cases=ext_cases, extensions=exts,
        closure_rate=_rate(closed, n), on_time_rate=_rate(on_time, due),
        rework_rate=_rate(rework_cases, n), extension_rate=_rate(ext_cases, n),
        response_n=len(responses), response_p50_s=percentile(responses, 50),
        response_p90_s=percentile(responses, 90),
        accept_n=len(accepts), accept_p50_s=percentile(accepts, 50),
        accept_p90_s=percentile(accepts, 90),
    )


def empty_group(key: str | None) -> GroupStats:
    """The figures of a group with no cases (counts 0, rates and percentiles ``None``)."""
    return _stats(key, [], 0.0, sla.SlaTable(), sla.DEFAULT_CALENDAR)


def assess(
    facts: Sequence[CaseFacts],
    by: str,
    *,
    now: float,
    table: sla.SlaTable | None = None,
    cal: sla.WorkCalendar = sla.DEFAULT_CALENDAR,
) -> list[GroupStats]:
    """Figures per group of ``by`` (one of ``GROUPINGS``), sorted by key (``None`` last).

    ``now`` decides which open cases are already overdue. ``table`` defaults to
    ``sla.SlaTable()`` (the default limits by priority). Raises ``ValueError`` for an
    unknown grouping.
    """
    if by not in GROUPINGS:
        raise ValueError(f"unknown grouping {by!r}; one of {', '.join(GROUPINGS)}")
    table = table if table is not None else sla.SlaTable()
    groups: dict[str | None, list[CaseFacts]] = {}
    for f in facts:
        groups.setdefault(group_key(f, by), []).append(f)
    keys = sorted(groups, key=lambda k: (k is None, k or ""))
    return [_stats(k, groups[k], now, table, cal) for k in keys]


# ---------------------------------------------------------------------- patrol
# Above any patrol vehicle on the township's roads (main roads 60 km/h, the expressway
# 120): a fix implying more than this from the last good one is a GPS jump.
MAX_SPEED_KMH = 150.0
# After this many rejected fixes in a row that agree with each other, the unit really is
# there (the earlier fix was the bad one, or the phone was off while it drove): restart.
JUMP_RESET_FIXES = 3
# Fixes claiming worse accuracy than this come from cell towers or Wi-Fi, not GPS: a
# 200 m circle says nothing about a patrol's route.
MAX_ACCURACY_M = 100.0
# Phone GPS under open sky is good to about 5-10 m: steps shorter than this (or than the
# fix's own reported accuracy, if larger) are noise, not patrolling.
JITTER_RADIUS_M = 15.0
# A stop: staying within this radius for at least STOP_MIN_S. 50 m holds a parked phone
# with 10-20 m noise; a patrol on foot (1.4 m/s) leaves it in well under a minute.
STOP_RADIUS_M = 50.0
# Longer than a red light or a jammed junction (<= 2 min), shorter than any case handling.
STOP_MIN_S = 180.0
# The patrol app reports every few seconds up to 30 s while on duty; 10 minutes without a
# fix means the phone was off or the officer off duty: not counted as duty time.
MAX_GAP_S = 600.0
# A moving stretch between stops shorter than this is re-parking, not a trip.
TRIP_MIN_M = 100.0

_EARTH_R_M = 6_371_008.8  # mean Earth radius (IUGG)

# (ts UNIX s, lon, lat, accuracy m or None)
Fix = tuple[float, float, float, float | None]


@dataclass(frozen=True, slots=True)
class PatrolSettings:
    """The filters of ``patrol_stats``; every one is on by default (see the constants)."""

    max_speed_kmh: float | None = MAX_SPEED_KMH  # None: no jump filter
    max_accuracy_m: float | None = MAX_ACCURACY_M  # None: keep every fix
    jitter_radius_m: float | None = JITTER_RADIUS_M  # None: count every step
    stop_radius_m: float | None = STOP_RADIUS_M  # None: no stop detection
    stop_min_s: float = STOP_MIN_S
    max_gap_s: float = MAX_GAP_S
    trip_min_m: float = TRIP_MIN_M
    jump_reset_fixes: int = JUMP_RESET_FIXES


DEFAULT_PATROL = PatrolSettings()


@dataclass(frozen=True, slots=True)
class PatrolStats:
    """A track's figures. ``duty_s = moving_s + stopped_s`` (time covered by fixes, gaps
    longer than ``MAX_GAP_S`` excluded); ``sessions``: stretches between such gaps."""

    distance_m: float = 0.0
    moving_s: float = 0.0
    stopped_s: float = 0.0
    duty_s: float = 0.0
    trips: int = 0
    stops: int = 0
    dropped_jumps: int = 0
    dropped_inaccurate: int = 0
    fixes: int = 0
    sessions: int = 0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["distance_km"] = round(self.distance_m / 1000.0, 3)
        out["duty_h"] = round(self.duty_s / 3600.0, 3)
        return out


@dataclass(slots=True)
class _Pt:
    ts: float
    x: float
    y: float
    acc: float
    stop_end: float | None = None  # set for a stop's centroid: when the stop ended


@dataclass(slots=True)
class _Acc:
    distance: float = 0.0
    moving: float = 0.0
    stopped: float = 0.0
    trips: int = 0
    stops: int = 0
    sessions: int = 0
    dropped_jumps: int = 0
    run_m: float = 0.0


def _dist(a: _Pt, b: _Pt) -> float:
    return math.hypot(a.x - b.x, a.y - b.y)


def _project(fixes: Sequence[Fix]) -> list[_Pt]:
    lat0 = math.radians(fixes[0][2])
    lon0 = fixes[0][1]
    k = math.pi / 180.0 * _EARTH_R_M
    return [_Pt(ts, (lon - lon0) * k * math.cos(lat0), (lat - fixes[0][2]) * k,
                acc if acc is not None else 0.0) for ts, lon, lat, acc in fixes]


def _sessions(pts: list[_Pt], cfg: PatrolSettings, acc: _Acc) -> list[list[_Pt]]:
    """Split at long gaps and drop jumps (a restart after consistent jumps is a new session)."""
    max_v = None if cfg.max_speed_kmh is None else cfg.max_speed_kmh / 3.6
    sessions: list[list[_Pt]] = []
    cur: list[_Pt] = []
    rejected: list[_Pt] = []
    for p in pts:
        if not cur:
            cur.append(p)
            continue
        last = cur[-1]
        dt = p.ts - last.ts
        if dt > cfg.max_gap_s:
            sessions.append(cur)
            cur, rejected = [p], []
            continue
        if max_v is None or _dist(last, p) <= max_v * dt:
            cur.append(p)
            rejected = []
            continue
        acc.dropped_jumps += 1
        if rejected and _dist(rejected[-1], p) > max_v * (p.ts - rejected[-1].ts):
            rejected = []
        rejected.append(p)
        if len(rejected) >= cfg.jump_reset_fixes:
            acc.dropped_jumps -= len(rejected)
            sessions.append(cur)
            cur, rejected = list(rejected), []
    if cur:
        sessions.append(cur)
    return sessions


def _segment(session: list[_Pt], cfg: PatrolSettings) -> list[_Pt]:
    """Replace each stay (>= stop_min_s within stop_radius_m) by its centroid."""
    if cfg.stop_radius_m is None:
        return session
    out: list[_Pt] = []
    i, n = 0, len(session)
    while i < n:
        sx, sy = session[i].x, session[i].y
        count = 1
        j = i + 1
        while j < n:
            cx, cy = sx / count, sy / count
            if math.hypot(session[j].x - cx, session[j].y - cy) > cfg.stop_radius_m:
                break
            sx += session[j].x
            sy += session[j].y
            count += 1
            j += 1
        if session[j - 1].ts - session[i].ts >= cfg.stop_min_s:
            out.append(_Pt(session[i].ts, sx / count, sy / count, 0.0,
                           stop_end=session[j - 1].ts))
            i = j
        else:
            out.append(session[i])
            i += 1
    return out


def _end_run(acc: _Acc, cfg: PatrolSettings) -> None:
    if acc.run_m >= cfg.trip_min_m:
        acc.trips += 1
    acc.run_m = 0.0


def _measure(points: list[_Pt], cfg: PatrolSettings, acc: _Acc) -> None:
    last = points[-1]
    span = (last.stop_end if last.stop_end is not None else last.ts) - points[0].ts
    stopped = 0.0
    for p in points:
        if p.stop_end is not None:
            acc.stops += 1
            stopped += p.stop_end - p.ts
    acc.sessions += 1
    acc.stopped += stopped
    acc.moving += span - stopped
    anchor = points[0]
    for p in points[1:]:
        d = _dist(anchor, p)
        at_stop = p.stop_end is not None or anchor.stop_end is not None
        if cfg.jitter_radius_m is None or at_stop or d >= max(cfg.jitter_radius_m, p.acc):
            acc.distance += d
            acc.run_m += d
            anchor = p
            if p.stop_end is not None:
                _end_run(acc, cfg)
    _end_run(acc, cfg)


def patrol_stats(fixes: Sequence[Fix], cfg: PatrolSettings = DEFAULT_PATROL) -> PatrolStats:
    """Mileage, moving/stopped/duty time, trips and stops of one unit's GPS track.

    ``fixes`` are ``(ts, lon, lat, accuracy)`` in any order (sorted here; a repeated
    timestamp keeps its first fix; non-finite values are dropped). See the module
    docstring for the filters; ``cfg`` turns them off or tunes them.
    """
    clean: list[Fix] = []
    seen: set[float] = set()
    dropped_inaccurate = 0
    for f in sorted(fixes, key=lambda f: f[0]):
        ts, lon, lat, accuracy = f
        if ts in seen or not all(math.isfinite(v) for v in (ts, lon, lat)):
            continue
        seen.add(ts)
        if (accuracy is not None and cfg.max_accuracy_m is not None
                and not accuracy <= cfg.max_accuracy_m):
            dropped_inaccurate += 1
            continue
        clean.append(f)
    if not clean:
        return PatrolStats(dropped_inaccurate=dropped_inaccurate)
    acc = _Acc()
    for session in _sessions(_project(clean), cfg, acc):
        _measure(_segment(session, cfg), cfg, acc)
    duty = acc.moving + acc.stopped
    return PatrolStats(
        distance_m=acc.distance, moving_s=acc.moving, stopped_s=acc.stopped, duty_s=duty,
        trips=acc.trips, stops=acc.stops, dropped_jumps=acc.dropped_jumps,
        dropped_inaccurate=dropped_inaccurate, fixes=len(clean) - acc.dropped_jumps,
        sessions=acc.sessions)
