"""Inspections and assessment I/O shell: reads registries, cases and tracks, calls the pure
modules (dispatch/inspections.py, dispatch/assessment.py), writes draws and results.

Every function takes the time as ``now`` (UNIX seconds) from its caller. Errors are
``core.errors`` types with stable codes (hub/errors.py maps them to HTTP).

Draws are written once and never changed except to be published; a draw that does not
reproduce from its own seed and inputs (a tampered row) cannot be published.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import math
import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from core.db import Conn, Querier, row_view
from core.errors import Conflict, InvalidInput, NotFound
from dispatch import assessment, inspections, sla
from dispatch.sla_config import InForce

log = logging.getLogger("dispatch.reports")

# 128 bits from the OS's CSPRNG: nobody can guess or steer a generated seed.
SEED_BYTES = 16
SCHEDULER_ACTOR = "system:scheduler"
# A scheduled (monthly) draw inspects this share of each matter's entities: the usual
# double-random sampling ratio is a few per cent a round, so over a year every entity
# has a fair chance and high-risk ones (weighted) a much higher one.
SCHEDULED_TARGET_SHARE = 0.05
SCHEDULED_MIN_TARGETS = 1
OUTCOMES: tuple[str, ...] = ("no_problem", "rectification_ordered", "case_filed",
                             "not_found", "refused")
OUTCOME_LABELS = {"no_problem": "未发现问题", "rectification_ordered": "发现问题已责令整改",
                  "case_filed": "发现问题已立案查处", "not_found": "未找到该主体",
                  "refused": "不配合检查"}

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


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


@asynccontextmanager
async def _transaction(db: Querier) -> AsyncIterator[Conn]:
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn, conn.transaction():
            yield conn
    else:
        async with db.transaction():
            yield db


# ====================================================================== inspections
async def list_matters(db: Querier) -> list[dict[str, Any]]:
    rows = await db.fetch("SELECT id, name, department, description, industries "
                          "FROM inspection_matters ORDER BY id")
    return [dict(r) for r in rows]


async def _matter(db: Querier, matter_id: str) -> asyncpg.Record:
    row = await db.fetchrow("SELECT id, name, department, industries FROM inspection_matters "
                            "WHERE id = $1", matter_id)
    if row is None:
        raise NotFound(f"no inspection matter {matter_id}", code="inspection.matter_not_found")
    return row


async def _pools(db: Querier, matter: asyncpg.Record) -> tuple[
        list[inspections.Inspector], list[inspections.Entity], list[tuple[str, str]]]:
    ins = await db.fetch("SELECT id, department FROM inspectors WHERE active AND department = $1",
                         matter["department"])
    ents = await db.fetch(
        "SELECT id, risk_class FROM market_entities WHERE active "
        "AND (cardinality($1::text[]) = 0 OR industry = ANY($1::text[]))",
        list(matter["industries"]))
    conflicts = await db.fetch("SELECT inspector_id, entity_id FROM inspector_conflicts")
    return ([inspections.Inspector(r["id"], r["department"]) for r in ins],
            [inspections.Entity(r["id"], r["risk_class"]) for r in ents],
            [(r["inspector_id"], r["entity_id"]) for r in conflicts])


async def make_draw(db: Querier, *, matter_id: str, targets: int, now: float, drawn_by: str,
                    inspectors_per_target: int = inspections.DEFAULT_INSPECTORS_PER_TARGET,
                    weight_by_risk: bool = True, seed: str | None = None) -> dict[str, Any]:
    """Draw for a matter from the current registries and store it; return its view.

    ``seed`` None: a fresh one from ``secrets``. A caller-given seed is recorded as such
    (``params.seed_source``): a seed someone chose is for public draws with a seed read
    out in the room, and every draw is kept, so trying seed after seed shows.
    Raises ``NotFound`` (``inspection.matter_not_found``) or ``DrawError``.
    """
    seed_source = "caller" if seed is not None else "generated"
    seed = seed if seed is not None else secrets.token_hex(SEED_BYTES)
    async with _transaction(db) as conn:
        matter = await _matter(conn, matter_id)
        ins, ents, conflicts = await _pools(conn, matter)
        result = inspections.draw(
            seed, inspections.Matter(matter["id"], matter["department"]), ins, ents, conflicts,
            targets=targets, inspectors_per_target=inspectors_per_target,
            risk_weights=inspections.DEFAULT_RISK_WEIGHTS if weight_by_risk else None)
        params = {**result.params_json(), "weight_by_risk": weight_by_risk,
                  "seed_source": seed_source}
        draw_id = await conn.fetchval(
            """INSERT INTO inspection_draws (seed, matter_id, params, drawn_at, drawn_by,
                                             algorithm, result)
               VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id""",
            seed, matter_id, params, _ts(now), drawn_by, result.algorithm,
            result.result_json())
        return await _draw_view(conn, int(draw_id), full=True)


_DRAW_SUMMARY = """d.id, d.matter_id, m.name AS matter_name, m.department, d.seed, d.algorithm,
    d.drawn_at, d.drawn_by, d.published, d.published_at, d.published_by,
    jsonb_array_length(d.result -> 'picks') AS targets,
    (SELECT count(*) FROM inspection_results r WHERE r.draw_id = d.id) AS results"""


async def list_draws(db: Querier, *, matter_id: str | None = None,
                     limit: int = 100) -> list[dict[str, Any]]:
    """Draws, newest first, without their (long) inputs."""
    rows = await db.fetch(
        f"""SELECT {_DRAW_SUMMARY} FROM inspection_draws d
            JOIN inspection_matters m ON m.id = d.matter_id
            WHERE $1::text IS NULL OR d.matter_id = $1 ORDER BY d.id DESC LIMIT $2""",
        matter_id, limit)
    return [row_view(r) for r in rows]


async def _draw_view(db: Querier, draw_id: int, *, full: bool) -> dict[str, Any]:
    row = await db.fetchrow(
        f"""SELECT {_DRAW_SUMMARY}, d.params, d.result FROM inspection_draws d
            JOIN inspection_matters m ON m.id = d.matter_id WHERE d.id = $1""", draw_id)
    if row is None:
        raise NotFound(f"no draw {draw_id}", code="inspection.draw_not_found")
    view = row_view(row)
    picks = view["result"].get("picks", [])
    entity_ids = [p["entity_id"] for p in picks]
    inspector_ids = sorted({i for p in picks for i in p["inspectors"]})
    ents = {r["id"]: r for r in await db.fetch(
        "SELECT e.id, e.name, e.industry, e.grid_id, g.name AS grid_name "
        "FROM market_entities e LEFT JOIN grids g ON g.id = e.grid_id WHERE e.id = ANY($1)",
        entity_ids)}
    names = {r["id"]: r["name"] for r in await db.fetch(
        "SELECT id, name FROM inspectors WHERE id = ANY($1)", inspector_ids)}
    results = {r["entity_id"]: row_view(r) for r in await db.fetch(
        "SELECT entity_id, outcome, notes, recorded_by, recorded_at FROM inspection_results "
        "WHERE draw_id = $1", draw_id)}
    view["picks"] = []
    for p in picks:
        e = ents.get(p["entity_id"])
        res = results.get(p["entity_id"])
        if res is not None:
            res["outcome_label"] = OUTCOME_LABELS.get(res["outcome"], res["outcome"])
        view["picks"].append({
            "entity_id": p["entity_id"], "risk_class": p["risk_class"],
            "entity_name": e["name"] if e else None, "industry": e["industry"] if e else None,
            "grid_id": e["grid_id"] if e else None, "grid_name": e["grid_name"] if e else None,
            "inspectors": [{"id": i, "name": names.get(i)} for i in p["inspectors"]],
            "result": res})
    if not full:
        del view["params"]
    return view


async def get_draw(db: Querier, draw_id: int) -> dict[str, Any]:
    """A draw with its seed, inputs (``params``), stored ``result``, named picks and results."""
    return await _draw_view(db, draw_id, full=True)


async def verify_draw(db: Querier, draw_id: int) -> dict[str, Any]:
    """Re-run a stored draw from its seed and recorded inputs: ``{"reproduced": bool}``."""
    row = await db.fetchrow("SELECT seed, algorithm, params, result FROM inspection_draws "
                            "WHERE id = $1", draw_id)
    if row is None:
        raise NotFound(f"no draw {draw_id}", code="inspection.draw_not_found")
    outcome = inspections.verify(row["seed"], row["algorithm"], row["params"], row["result"])
    return {"draw_id": draw_id, "reproduced": outcome.reproduced, "reason": outcome.reason,
            "algorithm": row["algorithm"]}


async def publish_draw(db: Querier, draw_id: int, *, by: str, now: float) -> dict[str, Any]:
    """Publish a draw (idempotent: publishing again keeps the first time and publisher).

    Raises ``Conflict`` (``inspection.not_reproducible``) for a draw that does not
    re-run to its stored result.
    """
    async with _transaction(db) as conn:
        row = await conn.fetchrow("SELECT seed, algorithm, params, result, published "
                                  "FROM inspection_draws WHERE id = $1 FOR UPDATE", draw_id)
        if row is None:
            raise NotFound(f"no draw {draw_id}", code="inspection.draw_not_found")
        if not row["published"]:
            outcome = inspections.verify(row["seed"], row["algorithm"], row["params"],
                                         row["result"])
            if not outcome.reproduced:
                raise Conflict(f"draw {draw_id} does not reproduce: {outcome.reason}",
                               code="inspection.not_reproducible")
            await conn.execute(
                "UPDATE inspection_draws SET published = true, published_at = $2, "
                "published_by = $3 WHERE id = $1", draw_id, _ts(now), by)
        return await _draw_view(conn, draw_id, full=True)


async def record_result(db: Querier, draw_id: int, *, entity_id: str, outcome: str,
                        notes: str, recorded_by: str, now: float) -> dict[str, Any]:
    """Record what the inspection of one drawn entity found (once per entity).

    Raises ``NotFound`` (``inspection.draw_not_found``), ``InvalidInput``
    (``inspection.bad_outcome``, ``inspection.not_drawn``: the entity is not a target of
    this draw) or ``Conflict`` (``inspection.result_exists``).
    """
    if outcome not in OUTCOMES:
        raise InvalidInput(f"outcome must be one of {', '.join(OUTCOMES)}",
                           code="inspection.bad_outcome")
    async with _transaction(db) as conn:
        result = await conn.fetchval("SELECT result FROM inspection_draws WHERE id = $1",
                                     draw_id)
        if result is None:
            raise NotFound(f"no draw {draw_id}", code="inspection.draw_not_found")
        if entity_id not in {p["entity_id"] for p in result.get("picks", [])}:
            raise InvalidInput(f"{entity_id} was not drawn in draw {draw_id}",
                               code="inspection.not_drawn")
        inserted = await conn.fetchval(
            """INSERT INTO inspection_results (draw_id, entity_id, outcome, notes, recorded_by,
                                               recorded_at)
               VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING entity_id""",
            draw_id, entity_id, outcome, notes, recorded_by, _ts(now))
        if inserted is None:
            raise Conflict(f"a result for {entity_id} in draw {draw_id} is already recorded",
                           code="inspection.result_exists")
        return await _draw_view(conn, draw_id, full=True)


async def public_draws(db: Querier, *, limit: int = 50) -> list[dict[str, Any]]:
    """The "one public": published draws, newest first, with seed, inputs, picks, results,
    so that anyone can re-run each draw (dispatch/inspections.py says how)."""
    ids = await db.fetch("SELECT id FROM inspection_draws WHERE published "
                         "ORDER BY published_at DESC, id DESC LIMIT $1", limit)
    return [await _draw_view(db, int(r["id"]), full=True) for r in ids]


def _town_month(now: float) -> tuple[datetime, datetime]:
    """The town's calendar month containing ``now``, as UTC instants [start, end)."""
    cal = InForce.calendar
    first = sla.local_date(cal, now).replace(day=1)
    nxt = (first + timedelta(days=32)).replace(day=1)
    return _ts(sla.local_day_start(cal, first)), _ts(sla.local_day_start(cal, nxt))


def town_day_range(first: date, last: date) -> tuple[float, float]:
    """``[since, until)`` UNIX seconds covering the town days ``first`` .. ``last``."""
    if last < first:
        raise InvalidInput("the last day is before the first", code="report.bad_range")
    cal = InForce.calendar
    return (sla.local_day_start(cal, first),
            sla.local_day_start(cal, last + timedelta(days=1)))


async def scheduled_draw(pool: asyncpg.Pool, now: float) -> list[dict[str, Any]]:
    """The monthly draw: one draw per matter with default parameters (risk-weighted, teams
    of two, ``SCHEDULED_TARGET_SHARE`` of the matter's entities, at least one).

    A matter that already has a scheduled draw this calendar month (the town's) is
    skipped, so a restart or a second scheduler does not draw twice. A matter that cannot
    be drawn (no entities, too few inspectors) is logged and reported, and the others go
    on. Returns one item per matter: ``{"matter_id", "draw_id"}``, ``{"matter_id",
    "skipped": "already_drawn"}`` or ``{"matter_id", "error": code}``.
    """
    month_start, month_end = _town_month(now)
    out: list[dict[str, Any]] = []
    for m in await list_matters(pool):
        done = await pool.fetchval(
            "SELECT id FROM inspection_draws WHERE matter_id = $1 AND drawn_by = $2 "
            "AND drawn_at >= $3 AND drawn_at < $4 LIMIT 1",
            m["id"], SCHEDULER_ACTOR, month_start, month_end)
        if done is not None:
            out.append({"matter_id": m["id"], "skipped": "already_drawn", "draw_id": done})
            continue
        size = await pool.fetchval(
            "SELECT count(*) FROM market_entities WHERE active "
            "AND (cardinality($1::text[]) = 0 OR industry = ANY($1::text[]))",
            list(m["industries"]))
        targets = min(int(size), max(SCHEDULED_MIN_TARGETS,
                                     math.ceil(SCHEDULED_TARGET_SHARE * int(size))))
        if targets < 1:
            log.warning("scheduled draw: matter %s has no entities", m["id"])
            out.append({"matter_id": m["id"], "error": "inspection.not_enough_entities"})
            continue
        try:
            view = await make_draw(pool, matter_id=m["id"], targets=targets, now=now,
                                   drawn_by=SCHEDULER_ACTOR)
        except inspections.DrawError as e:
            log.warning("scheduled draw for matter %s failed: %s", m["id"], e.message)
            out.append({"matter_id": m["id"], "error": e.code})
            continue
        out.append({"matter_id": m["id"], "draw_id": view["id"]})
    return out


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
        _ts(since), _ts(until))
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
        unit_id, _ts(since), _ts(until))
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
                s.stops, s.dropped_jumps, s.fixes, _ts(now))
            written += 1
    return written
