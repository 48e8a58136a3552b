"""SLA configuration I/O: load the files and the supervisors' edits into ``InForce``, show
it, and append to the change log.

The limits file gives the table; rows in ``sla_limits`` (edited through the API) replace
the file's row for their (category, priority), ``sla_options`` its warn share, and
``sla_calendar_days`` the calendar file's days. The edits themselves are
dispatch/sla_edits.py and dispatch/sla_days.py: each one transaction that changes its row,
appends to ``sla_config_log`` with the actor and puts the result in force
(dispatch/sla_retime.py). Every process loads (``load``) at start, on each
``sla.config_changed`` event (hub/config_reload.py) and periodically (hub/jobs.py).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.db import Conn, Querier
from core.settings import Settings
from dispatch import sla
from dispatch.sla_config import (
    DEFAULT_CALENDAR_FILE,
    DEFAULT_SLA_FILE,
    InForce,
    check_warn_share,
    day_kind,
    limits_view,
    parse_calendar,
    parse_table,
    read_toml,
    rows_of,
    scaled,
    table_of,
    with_days,
)

log = logging.getLogger("dispatch.sla_settings")

WARN_SHARE_KEY = "warn_share"
# The change log as the API lists it: the newest this many.
CHANGES_LIMIT = 200


def limits_of(r: Any) -> sla.SlaLimits:
    return sla.SlaLimits(r["register_s"], r["dispatch_s"], r["accept_s"], r["arrive_s"],
                         r["resolve_s"], resolve_working=r["resolve_working"])


async def load(db: Querier, *, sla_file: Path, calendar_file: Path, tz: str,
               scale: float = 1.0, now: float | None = None) -> list[str]:
    """Read the files and the database's edits and put them in force in this process.

    Returns the warnings an operator must see (calendar years missing or not official),
    which are also logged (each once) and shown by ``view``. Raises ``SlaConfigError`` for
    a broken file: the hub must not run on limits nobody set.
    """
    cal = parse_calendar(read_toml(calendar_file), tz)
    edited = {r["day"]: (r["kind"], r["name"], r["updated_by"]) for r in await db.fetch(
        "SELECT day, kind, name, updated_by FROM sla_calendar_days")}
    calendar = with_days(cal.calendar, {d: v[0] for d, v in edited.items()})
    table, warn = parse_table(read_toml(sla_file), calendar)
    rows = rows_of(table)
    origin = {k: "file" for k in rows}
    for r in await db.fetch("SELECT * FROM sla_limits"):
        key = (r["category"], int(r["priority"]))
        rows[key] = limits_of(r)
        origin[key] = "edited"
    stored = await db.fetchval("SELECT value FROM sla_options WHERE key = $1", WARN_SHARE_KEY)
    if stored is not None:
        warn = check_warn_share(stored)
    base = table_of(rows)
    InForce.base_table = base
    InForce.table = scaled(base, scale)
    InForce.origin = origin
    InForce.warn_share = warn
    InForce.calendar = calendar
    InForce.file_calendar = cal.calendar
    InForce.day_names = cal.names
    InForce.edited_days = edited
    InForce.tz = tz
    InForce.years = cal.years
    InForce.scale = scale
    InForce.sla_file = sla_file
    InForce.calendar_file = calendar_file
    today = sla.local_date(calendar, now if now is not None else datetime.now(UTC)
                           .timestamp())
    warnings = cal.coverage_warnings(today)
    for w in warnings:
        if w not in InForce.warnings:  # once, not at every periodic reload
            log.warning("SLA calendar (%s): %s", calendar_file, w)
    InForce.warnings = tuple(warnings)
    return warnings


async def load_settings(db: Querier, settings: Settings, now: float | None = None
                        ) -> list[str]:
    """``load`` with the files, zone and time scale the settings name."""
    return await load(db, sla_file=settings.sla_file or DEFAULT_SLA_FILE,
                      calendar_file=settings.calendar_file or DEFAULT_CALENDAR_FILE,
                      tz=settings.town_tz, scale=settings.sla_time_scale, now=now)


def view() -> dict[str, Any]:
    """The configuration in force, as the API shows it (limits at their real length)."""
    cal = InForce.calendar
    rows = rows_of(InForce.base_table)
    return {
        "tz": InForce.tz,
        "warn_share": InForce.warn_share,
        "time_scale": InForce.scale,
        "warnings": list(InForce.warnings),
        "sla_file": str(InForce.sla_file),
        "limits": [
            {"category": c, "priority": p, **limits_view(v),
             "origin": InForce.origin.get((c, p), "file")}
            for (c, p), v in sorted(rows.items())],
        "calendar": {
            "file": str(InForce.calendar_file),
            "workdays": sorted(cal.workdays),
            "day_start": cal.day_start, "day_end": cal.day_end,
            "lunch": list(cal.lunch) if cal.lunch else None,
            "working_day_s": cal.day_s,
            "years": [{"year": y.year, "status": y.status, "source": y.source,
                       "holidays": y.holidays, "adjusted_workdays": y.workdays}
                      for y in InForce.years],
            "holidays": sorted(d.isoformat() for d in cal.holidays),
            "adjusted_workdays": sorted(d.isoformat() for d in cal.extra_workdays),
            "days": calendar_days(),
        },
    }


def calendar_days() -> list[dict[str, Any]]:
    """Every holiday and adjusted working day in force, and every file day removed, in
    date order: ``date``, ``kind`` ("holiday", "workday"; "normal" for a removed file day),
    ``name``, ``origin`` ("file" or "edited") and, when edited, ``updated_by``."""
    file_cal, cal = InForce.file_calendar, InForce.calendar
    dates = (file_cal.holidays | file_cal.extra_workdays | cal.holidays | cal.extra_workdays
             | frozenset(InForce.edited_days))
    out = []
    for d in sorted(dates):
        edit = InForce.edited_days.get(d)
        row: dict[str, Any] = {"date": d.isoformat(), "kind": day_kind(cal, d)}
        if edit is None:
            row.update(name=InForce.day_names.get(d, ""), origin="file")
        else:
            row.update(name=edit[1] or InForce.day_names.get(d, ""), origin="edited",
                       updated_by=edit[2], file_kind=day_kind(file_cal, d))
        out.append(row)
    return out


async def changes(db: Querier, limit: int = CHANGES_LIMIT) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT id, at, actor, target, before, after FROM sla_config_log "
        "ORDER BY id DESC LIMIT $1", limit)
    return [{**dict(r), "at": r["at"].timestamp()} for r in rows]


async def log_change(conn: Conn, actor: str, target: str, before: Any, after: Any) -> None:
    await conn.execute(
        "INSERT INTO sla_config_log (actor, target, before, after) VALUES ($1, $2, $3, $4)",
        actor, target, before, after)
