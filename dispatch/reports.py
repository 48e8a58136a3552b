"""Assessment and patrol I/O shell: reads cases and tracks, calls the pure module
(dispatch/assessment.py), writes the patrol rollup. (Inspections: dispatch/inspection_store.py.)

Every function takes the time as ``now`` (UNIX seconds) from its caller. Errors are
``core.errors`` types with stable codes (hub/errors.py maps them to HTTP).
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import math
from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any

import asyncpg

from core.clock import to_datetime
from core.db import Querier
from core.errors import InvalidInput, NotFound
from dispatch import assessment, sla
from dispatch.sla_config import InForce

log = logging.getLogger("dispatch.reports")

# Assessment windows: a month when not given (the usual assessment period); at most a bit
# over a year so one request cannot read the whole history.
DEFAULT_WINDOW_S = 30 * 86_400.0
MAX_WINDOW_S = 400 * 86_400.0
# A live patrol computation reads every fix (one per 5 s while on duty): a month of one
# unit is ~500k rows, about as much as one request should chew.
PATROL_MAX_WINDOW_S = 31 * 86_400.0
# The patrol rollup recomputes today and this many days before it each run, so fixes that
# arrive late (a phone back in coverage) still count.
PATROL_ROLLUP_DAYS_BACK = 1



def town_day_range(first: date, last: date) -> tuple[float, float]:
    """``[since, until)`` UNIX seconds covering the town days ``first`` .. ``last``."""
    if last < first:
        raise InvalidInput("the last day is before the first", code="report.bad_range")
    cal = InForce.calendar
    return (sla.local_day_start(cal, first),
            sla.local_day_start(cal, last + timedelta(days=1)))


# ====================================================================== assessment
def _window(since: float | None, until: float | None, now: float,
            max_s: float) -> tuple[float, float]:
    until = until if until is not None else now
    since = since if since is not None else until - DEFAULT_WINDOW_S
    if not until > since:
        raise InvalidInput("until must be after since", code="report.bad_range")
    if until - since > max_s:
        raise InvalidInput(f"the range is limited to {max_s / 86_400:.0f} days",
                           code="report.range_too_long")
    return since, until


async def case_facts(db: Querier, since: float, until: float) -> list[assessment.CaseFacts]:
    """Facts of the incidents opened in ``[since, until)`` (their log, their unit)."""
    rows = await db.fetch(
        """SELECT i.id, extract(epoch FROM i.opened_at)::float8 AS opened_at, i.category,
                  i.priority, i.state, i.grid_id, g.parent_id AS grid1,
                  coalesce(i.assigned_unit, (
                      SELECT a.unit_id FROM assignments a WHERE a.incident_id = i.id
                      AND a.status NOT IN ('declined', 'superseded')
                      ORDER BY a.id DESC LIMIT 1)) AS unit
           FROM incidents i LEFT JOIN grids g ON g.id = i.grid_id
           WHERE i.opened_at >= $1 AND i.opened_at < $2 ORDER BY i.id""",
        to_datetime(since), to_datetime(until))
    if not rows:
        return []
    logs: dict[int, list[dict[str, Any]]] = {}
    for e in await db.fetch(
            """SELECT incident_id, action, actor, extract(epoch FROM ts)::float8 AS ts, reason
               FROM case_log WHERE incident_id = ANY($1::bigint[])
               ORDER BY incident_id, seq""", [r["id"] for r in rows]):
        logs.setdefault(int(e["incident_id"]), []).append(dict(e))
    return [assessment.facts_from_log(dict(r), logs.get(int(r["id"]), [])) for r in rows]


async def _names(db: Querier, by: str) -> dict[str, str]:
    if by in ("grid", "grid1"):
        rows = await db.fetch("SELECT id, name FROM grids")
    elif by in ("unit", "officer"):
        rows = await db.fetch("SELECT id, name FROM units")
    else:
        return {}
    return {r["id"]: r["name"] for r in rows}


async def assessment_report(db: Querier, *, by: str, now: float, since: float | None = None,
                            until: float | None = None, table: sla.SlaTable | None = None,
                            cal: sla.WorkCalendar | None = None) -> dict[str, Any]:
    """Assessment figures per group for incidents opened in ``[since, until)``.

    ``until`` defaults to ``now`` and ``since`` to ``DEFAULT_WINDOW_S`` before it. With
    ``by="unit"`` every unit has a row (cases or not) with its patrol figures from the
    daily rollup (``patrol_daily``, whole town days overlapping the range; see
    ``rollup_patrol``). Raises ``InvalidInput`` (``report.bad_grouping``,
    ``report.bad_range``, ``report.range_too_long``).
    """
    if by not in assessment.GROUPINGS:
        raise InvalidInput(f"by must be one of {', '.join(assessment.GROUPINGS)}",
                           code="report.bad_grouping")
    since, until = _window(since, until, now, MAX_WINDOW_S)
    # Judged by the limits and calendar the clocks run on (sla_config.InForce).
    table = table if table is not None else InForce.table
    cal = cal if cal is not None else InForce.calendar
    facts = await case_facts(db, since, until)
    groups = assessment.assess(facts, by, now=now, table=table, cal=cal)
    names = await _names(db, by)
    rows = []
    for g in groups:
        row = g.as_dict()
        row["name"] = names.get(g.key) if g.key is not None else None
        rows.append(row)
    if by == "unit":
        rows = await _with_patrol(db, rows, since, until, names)
    total = assessment.assess(facts, "all", now=now, table=table, cal=cal)
    return {"by": by, "since": since, "until": until, "now": now, "groups": rows,
            "total": total[0].as_dict() if total else None}


def _town_day(ts: float) -> date:
    return sla.local_date(InForce.calendar, ts)


async def _with_patrol(db: Querier, rows: list[dict[str, Any]], since: float, until: float,
                       names: dict[str, str]) -> list[dict[str, Any]]:
    patrol = {r["unit_id"]: r for r in await db.fetch(
        """SELECT unit_id, sum(distance_m) AS distance_m, sum(duty_s) AS duty_s,
                  sum(moving_s) AS moving_s, sum(stopped_s) AS stopped_s, sum(trips) AS trips,
                  sum(stops) AS stops, count(*) AS days, max(computed_at) AS computed_at
           FROM patrol_daily WHERE day >= $1 AND day <= $2 GROUP BY unit_id""",
        _town_day(since), _town_day(until - 1e-6))}
    present = {r["key"] for r in rows}
    for unit_id in sorted(names):
        if unit_id not in present:
            zero = assessment.empty_group(unit_id).as_dict()
            zero["name"] = names[unit_id]
            rows.append(zero)
    rows.sort(key=lambda r: (r["key"] is None, r["key"] or ""))
    for r in rows:
        p = patrol.get(r["key"])
        r["patrol_km"] = round(float(p["distance_m"]) / 1000.0, 3) if p else None
        r["duty_h"] = round(float(p["duty_s"]) / 3600.0, 3) if p else None
        r["patrol_trips"] = int(p["trips"]) if p else None
        r["patrol_days"] = int(p["days"]) if p else 0
    return rows


# CSV columns: (key in a group row, header). Chinese headers: the file is for Excel users.
CSV_COLUMNS: tuple[tuple[str, str], ...] = (
    ("key", "编号"), ("name", "名称"), ("cases", "案件数"), ("closed", "结案数"),
    ("closure_rate", "结案率"), ("due", "应结案数"), ("on_time", "按期结案数"),
    ("on_time_rate", "按期结案率"), ("rework_cases", "返工案件数"), ("rework_rate", "返工率"),
    ("extension_cases", "延期案件数"), ("extension_rate", "延期率"),
    ("response_p50_s", "到场时间P50(秒)"), ("response_p90_s", "到场时间P90(秒)"),
    ("accept_p50_s", "签收时间P50(秒)"), ("accept_p90_s", "签收时间P90(秒)"),
    ("cancelled", "撤销数"),
)
CSV_PATROL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("patrol_km", "巡查里程(公里)"), ("duty_h", "在岗时长(小时)"), ("patrol_trips", "出巡次数"),
)
# Excel opens a UTF-8 CSV as the local ANSI code page (GBK in China) unless it starts
# with a byte-order mark; with it, Chinese headers and names come out right.
CSV_BOM = "\ufeff"


def _csv_cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}".rstrip("0").rstrip(".") if math.isfinite(v) else ""
    return str(v)


def assessment_csv(report: dict[str, Any]) -> str:
    """The report's groups as CSV text (with the BOM; the total last, keyed ``合计``)."""
    cols = CSV_COLUMNS + (CSV_PATROL_COLUMNS if report["by"] == "unit" else ())
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow([h for _, h in cols])
    for r in report["groups"]:
        w.writerow([_csv_cell(r.get(k)) for k, _ in cols])
    if report["total"] is not None:
        total = {**report["total"], "key": "合计", "name": ""}
        w.writerow([_csv_cell(total.get(k)) for k, _ in cols])
    return CSV_BOM + buf.getvalue()


# ====================================================================== patrol
async def _fixes(db: Querier, unit_id: str, since: float, until: float
                 ) -> list[assessment.Fix]:
    rows = await db.fetch(
        """SELECT extract(epoch FROM ts)::float8 AS ts, lon, lat, accuracy FROM positions
           WHERE unit_id = $1 AND ts >= $2 AND ts < $3 ORDER BY ts""",
        unit_id, to_datetime(since), to_datetime(until))
    return [(r["ts"], r["lon"], r["lat"], r["accuracy"]) for r in rows]


async def unit_patrol(db: Querier, unit_id: str, *, now: float, since: float | None = None,
                      until: float | None = None) -> dict[str, Any]:
    """Patrol mileage, duty time, trips and stops of a unit over ``[since, until)`` from
    its raw GPS fixes (default: the last ``DEFAULT_WINDOW_S``; at most
    ``PATROL_MAX_WINDOW_S``). Raises ``NotFound`` (``unit.not_found``)."""
    name = await db.fetchval("SELECT name FROM units WHERE id = $1", unit_id)
    if name is None:
        raise NotFound(f"no unit {unit_id}", code="unit.not_found")
    since, until = _window(since, until, now, PATROL_MAX_WINDOW_S)
    fixes = await _fixes(db, unit_id, since, until)
    # Pure but CPU-heavy for long tracks: off the event loop.
    stats = await asyncio.to_thread(assessment.patrol_stats, fixes)
    return {"unit_id": unit_id, "name": name, "since": since, "until": until,
            **stats.as_dict()}


async def rollup_patrol(pool: asyncpg.Pool, now: float,
                        days_back: int = PATROL_ROLLUP_DAYS_BACK,
                        unit_ids: Sequence[str] | None = None) -> int:
    """Recompute ``patrol_daily`` for every unit (or ``unit_ids``) for today (the town's day,
    up to ``now``) and ``days_back`` days before; return the rows written. Meant to run
    periodically (e.g. hourly); reports read the rollup instead of every fix."""
    if unit_ids is None:
        unit_ids = [r["id"] for r in await pool.fetch("SELECT id FROM units ORDER BY id")]
    today = _town_day(now)
    written = 0
    for back in range(days_back, -1, -1):
        day = today - timedelta(days=back)
        start = sla.local_day_start(InForce.calendar, day)
        end = min(start + 86_400.0, now)
        for unit_id in unit_ids:
            fixes = await _fixes(pool, unit_id, start, end)
            if not fixes:
                continue
            s = await asyncio.to_thread(assessment.patrol_stats, fixes)
            await pool.execute(
                """INSERT INTO patrol_daily (unit_id, day, distance_m, moving_s, stopped_s,
                                             duty_s, trips, stops, dropped_jumps, fixes,
                                             computed_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                   ON CONFLICT (unit_id, day) DO UPDATE SET distance_m = excluded.distance_m,
                     moving_s = excluded.moving_s, stopped_s = excluded.stopped_s,
                     duty_s = excluded.duty_s, trips = excluded.trips, stops = excluded.stops,
                     dropped_jumps = excluded.dropped_jumps, fixes = excluded.fixes,
                     computed_at = excluded.computed_at""",
                unit_id, day, s.distance_m, s.moving_s, s.stopped_s, s.duty_s, s.trips,
                s.stops, s.dropped_jumps, s.fixes, to_datetime(now))
            written += 1
    return written
