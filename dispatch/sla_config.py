"""SLA configuration: the limits table and the working calendar read from their files, and
the configuration in force in this process.

The parsing is pure (parsed TOML in, ``dispatch.sla`` values out, ``SlaConfigError`` with a
readable message for anything wrong). The shipped files are ``data/sla_limits.toml`` and
``data/calendar_cn.toml`` (each says where its values come from); a town points the
settings ``sla_file`` / ``calendar_file`` at its own. Supervisors' edits made through the
API are kept in the database and laid over the file's table (``dispatch/sla_settings.py``).

``InForce`` holds what the hub's clocks, dispatcher and reports use; it is set at start
and after every edit by ``sla_settings.load``, and read, never written, by everyone else.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dispatch import sla

DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_SLA_FILE = DATA_DIR / "sla_limits.toml"
DEFAULT_CALENDAR_FILE = DATA_DIR / "calendar_cn.toml"
# The towns gridhub serves are in mainland China: one zone, UTC+8 all year.
DEFAULT_TOWN_TZ = "Asia/Shanghai"

# The table's row for every category (limits by priority alone).
ANY_CATEGORY = "*"
# Incident categories as the API accepts them (hub/api.py IncidentBody).
CATEGORY_RE = re.compile(r"^[a-z_]{1,64}$")
PRIORITIES: tuple[int, ...] = (1, 2, 3, 4)
WEEKDAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# A calendar year's dates are "official" (from the State Council's notice) or
# "statutory-only" (the fixed statutory days, the notice not yet known).
YEAR_STATUSES = frozenset({"official", "statutory-only"})

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|wh|wd)\s*$")
_WALL_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}


class SlaConfigError(ValueError):
    """A configuration file or value is wrong; the message says where and why."""


# ---------------------------------------------------------------- files
def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise SlaConfigError(f"{path}: cannot read: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise SlaConfigError(f"{path}: not valid TOML: {e}") from e


# ---------------------------------------------------------------- the calendar
@dataclass(frozen=True, slots=True)
class CalendarYear:
    year: int
    status: str
    source: str
    holidays: int  # days off listed
    workdays: int  # adjusted working days (调休) listed


@dataclass(frozen=True, slots=True)
class Calendar:
    """The working calendar with what is known about each year's dates."""

    calendar: sla.WorkCalendar
    tz: str
    years: tuple[CalendarYear, ...]
    # The name the file gives each holiday's dates (its adjusted working days have none).
    names: Mapping[date, str] = field(default_factory=dict)

    def coverage_warnings(self, today: date) -> list[str]:
        """What an operator must be told: this year or the next missing or incomplete."""
        by_year = {y.year: y for y in self.years}
        out = []
        for year in (today.year, today.year + 1):
            y = by_year.get(year)
            if y is None:
                out.append(f"the working calendar has no holidays for {year}: working-time "
                           "SLA limits will run through that year's public holidays")
            elif y.status != "official":
                out.append(f"the working calendar's {year} dates are {y.status} (not from "
                           "the State Council's notice): adjusted working days are missing")
        return out


def tz_offset_s(tz: str, years: Iterable[int]) -> int:
    """The zone's UTC offset in seconds; ``SlaConfigError`` for an unknown zone or one whose
    offset changes within ``years`` (daylight saving: the calendar keeps one offset)."""
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise SlaConfigError(f"unknown time zone {tz!r}") from e
    offsets = set()
    for y in years:
        for month in (1, 4, 7, 10):
            off = datetime(y, month, 1, 12, tzinfo=zone).utcoffset()
            assert off is not None
            offsets.add(int(off.total_seconds()))
    if len(offsets) != 1:
        raise SlaConfigError(f"time zone {tz!r} changes its UTC offset (daylight saving); the "
                          "working calendar supports zones with one offset all year")
    return offsets.pop()


def _hours(doc: Mapping[str, Any]) -> dict[str, Any]:
    hours = doc.get("hours", {})
    if not isinstance(hours, Mapping):
        raise SlaConfigError("[hours] must be a table")
    out: dict[str, Any] = {}
    days = hours.get("workdays", list(WEEKDAYS[:5]))
    if not isinstance(days, list) or any(d not in WEEKDAYS for d in days):
        raise SlaConfigError(f"hours.workdays: a list of {', '.join(WEEKDAYS)}")
    out["workdays"] = frozenset(WEEKDAYS.index(d) for d in days)
    for key in ("day_start", "day_end"):
        if key in hours:
            if not isinstance(hours[key], str):
                raise SlaConfigError(f"hours.{key}: a time of day as \"HH:MM\"")
            out[key] = hours[key]
    lunch = hours.get("lunch")
    if lunch is not None:
        if not (isinstance(lunch, list) and len(lunch) == 2
                and all(isinstance(t, str) for t in lunch)):
            raise SlaConfigError('hours.lunch: ["HH:MM", "HH:MM"]')
        out["lunch"] = (lunch[0], lunch[1])
    return out


def _span(item: Any, where: str) -> list[date]:
    if not (isinstance(item, Mapping) and isinstance(item.get("from"), date)
            and isinstance(item.get("to"), date) and not isinstance(item["from"], datetime)
            and not isinstance(item["to"], datetime)):
        raise SlaConfigError(f"{where}: {{ name = ..., from = YYYY-MM-DD, to = YYYY-MM-DD }}")
    start, end = item["from"], item["to"]
    if end < start:
        raise SlaConfigError(f"{where}: ends before it starts")
    return [start + timedelta(n) for n in range((end - start).days + 1)]


def parse_calendar(doc: Mapping[str, Any], tz: str) -> Calendar:
    """The working calendar of a calendar file (see data/calendar_cn.toml) in zone ``tz``."""
    hours = _hours(doc)
    years_doc = doc.get("years", {})
    if not isinstance(years_doc, Mapping):
        raise SlaConfigError("[years] must be a table of years")
    holidays: set[date] = set()
    extra: set[date] = set()
    names: dict[date, str] = {}
    years: list[CalendarYear] = []
    for key, ydoc in sorted(years_doc.items()):
        where = f"years.{key}"
        if not (key.isascii() and key.isdigit() and len(key) == 4) or not isinstance(
                ydoc, Mapping):
            raise SlaConfigError(f"{where}: years are tables named by the year, e.g. [years.2026]")
        year = int(key)
        status = ydoc.get("status")
        if status not in YEAR_STATUSES:
            raise SlaConfigError(f"{where}.status: one of {', '.join(sorted(YEAR_STATUSES))}")
        source = ydoc.get("source")
        if not isinstance(source, str) or not source.strip():
            raise SlaConfigError(f"{where}.source: say where the dates come from")
        days_off: list[date] = []
        for i, item in enumerate(ydoc.get("holidays", [])):
            span = _span(item, f"{where}.holidays[{i}]")
            days_off += span
            names.update((d, str(item.get("name", ""))) for d in span)
        worked = ydoc.get("workdays", [])
        if not isinstance(worked, list) or any(
                not isinstance(d, date) or isinstance(d, datetime) for d in worked):
            raise SlaConfigError(f"{where}.workdays: a list of dates")
        for d in [*days_off, *worked]:
            if d.year != year:
                raise SlaConfigError(f"{where}: {d} is not in {year}")
        clash = set(days_off) & set(worked)
        if clash:
            raise SlaConfigError(f"{where}: {min(clash)} is both a holiday and a working day")
        holidays |= set(days_off)
        extra |= set(worked)
        years.append(CalendarYear(year, status, source.strip(), len(set(days_off)),
                                  len(set(worked))))
    offset = tz_offset_s(tz, [y.year for y in years] or [datetime.now(UTC).year])
    try:
        cal = sla.WorkCalendar(holidays=frozenset(holidays), extra_workdays=frozenset(extra),
                               tz_offset_s=offset, **hours)
    except ValueError as e:
        raise SlaConfigError(f"hours: {e}") from e
    if cal.day_s <= 0 or not cal.workdays:
        raise SlaConfigError("hours: the calendar has no working time")
    return Calendar(cal, tz, tuple(years), names)


# Kinds of a calendar day edited through the API (table sla_calendar_days, migration
# 0025): a day off, an adjusted working day (调休), or "normal": the file's entry for
# that date removed, so the date follows its weekday again.
DAY_KINDS = frozenset({"holiday", "workday", "normal"})


def with_days(cal: sla.WorkCalendar, days: Mapping[date, str]) -> sla.WorkCalendar:
    """``cal`` with the edited days laid over its holidays and adjusted working days:
    each date in ``days`` becomes exactly what its kind says (``DAY_KINDS``)."""
    holidays, extra = set(cal.holidays), set(cal.extra_workdays)
    for d, kind in days.items():
        if kind not in DAY_KINDS:
            raise SlaConfigError(f"{d}: a calendar day is one of {', '.join(sorted(DAY_KINDS))}")
        holidays.discard(d)
        extra.discard(d)
        if kind == "holiday":
            holidays.add(d)
        elif kind == "workday":
            extra.add(d)
    return dataclasses.replace(cal, holidays=frozenset(holidays), extra_workdays=frozenset(extra))


def day_kind(cal: sla.WorkCalendar, d: date) -> str:
    """What ``cal`` makes of ``d``: "holiday", "workday" (adjusted) or "normal"."""
    if d in cal.extra_workdays:
        return "workday"
    return "holiday" if d in cal.holidays else "normal"


# ---------------------------------------------------------------- the limits table
def parse_duration(text: Any, *, working_ok: bool, day_s: float) -> tuple[float, bool]:
    """``(seconds, working)`` of a duration such as ``"20m"``, ``"24h"`` or ``"3wd"``."""
    m = _DURATION.match(text) if isinstance(text, str) else None
    if m is None:
        raise SlaConfigError(f"{text!r}: a duration such as \"20m\", \"4h\", \"2d\" or \"3wd\"")
    value, unit = float(m.group(1)), m.group(2)
    if unit in _WALL_UNIT_S:
        return value * _WALL_UNIT_S[unit], False
    if not working_ok:
        raise SlaConfigError(f"{text!r}: only the resolve limit may be in working time")
    return value * (3600.0 if unit == "wh" else day_s), True


def parse_limits(row: Any, cal: sla.WorkCalendar) -> sla.SlaLimits:
    if not isinstance(row, Mapping) or set(row) != set(sla.STAGES):
        raise SlaConfigError(f"limits need exactly {', '.join(sla.STAGES)}")
    register, dispatch, accept, arrive = (
        parse_duration(row[s], working_ok=False, day_s=cal.day_s)[0] for s in sla.STAGES[:-1])
    resolve, working = parse_duration(row["resolve"], working_ok=True, day_s=cal.day_s)
    try:
        return sla.SlaLimits(register, dispatch, accept, arrive, resolve,
                             resolve_working=working)
    except ValueError as e:
        raise SlaConfigError(str(e)) from e


def check_key(category: str, priority: int) -> None:
    if category != ANY_CATEGORY and not CATEGORY_RE.match(category):
        raise SlaConfigError(f"category {category!r}: lower-case letters and _, or \"*\"")
    if priority not in PRIORITIES:
        raise SlaConfigError(f"priority {priority}: one of 1, 2, 3, 4")


def check_warn_share(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise SlaConfigError("warn_share: a share of the allowed time, between 0 and 1")
    return float(value)


def parse_table(doc: Mapping[str, Any], cal: sla.WorkCalendar) -> tuple[sla.SlaTable, float]:
    """``(table, warn_share)`` of a limits file (see data/sla_limits.toml)."""
    warn = check_warn_share(doc.get("warn_share", sla.DEFAULT_WARN_SHARE))
    limits = doc.get("limits")
    if not isinstance(limits, Mapping) or not isinstance(limits.get(ANY_CATEGORY), Mapping):
        raise SlaConfigError('[limits."*"]: limits for every category are required')
    rows: dict[tuple[str, int], sla.SlaLimits] = {}
    for category, by_priority in limits.items():
        if not isinstance(by_priority, Mapping):
            raise SlaConfigError(f"limits.{category}: a table of priorities")
        for p, row in by_priority.items():
            if not (p.isascii() and p.isdigit()):
                raise SlaConfigError(f"limits.{category}.{p}: priorities are 1 .. 4")
            try:
                check_key(category, int(p))
                rows[(category, int(p))] = parse_limits(row, cal)
            except SlaConfigError as e:
                raise SlaConfigError(f"limits.{category}.{p}: {e}") from e
    missing = [p for p in PRIORITIES if (ANY_CATEGORY, p) not in rows]
    if missing:
        raise SlaConfigError(f'limits."*": priorities {missing} are missing')
    return table_of(rows), warn


def table_of(rows: Mapping[tuple[str, int], sla.SlaLimits]) -> sla.SlaTable:
    """A ``SlaTable`` from rows keyed (category or ``"*"``, priority)."""
    return sla.SlaTable(
        by_category={k: v for k, v in rows.items() if k[0] != ANY_CATEGORY},
        by_priority={p: v for (c, p), v in rows.items() if c == ANY_CATEGORY})


def rows_of(table: sla.SlaTable) -> dict[tuple[str, int], sla.SlaLimits]:
    return {**{(ANY_CATEGORY, p): v for p, v in table.by_priority.items()},
            **dict(table.by_category)}


def scaled(table: sla.SlaTable, scale: float) -> sla.SlaTable:
    """Every limit at ``scale`` of its length (demos and tests shrink days into seconds)."""
    if scale == 1.0:
        return table
    return table_of({k: sla.SlaLimits(
        v.register_s * scale, v.dispatch_s * scale, v.accept_s * scale, v.arrive_s * scale,
        v.resolve_s * scale, v.resolve_working) for k, v in rows_of(table).items()})


def limits_view(limits: sla.SlaLimits) -> dict[str, Any]:
    return {"register_s": limits.register_s, "dispatch_s": limits.dispatch_s,
            "accept_s": limits.accept_s, "arrive_s": limits.arrive_s,
            "resolve_s": limits.resolve_s, "resolve_working": limits.resolve_working}


# ---------------------------------------------------------------- in force
class InForce:
    """The configuration this process runs on, set by ``sla_settings.load`` (the hub does
    at start). Before that: the built-in limits by priority (``sla.DEFAULT_LIMITS_BY_PRIORITY``,
    the same as the shipped file's "*" rows) and a calendar without holidays."""

    # Effective limits (file + supervisors' edits), at their real length: what the API shows.
    base_table: ClassVar[sla.SlaTable] = sla.SlaTable()
    # The same scaled by ``scale``: what the clocks use.
    table: ClassVar[sla.SlaTable] = sla.SlaTable()
    # Where each row of base_table comes from: "file" or "edited".
    origin: ClassVar[dict[tuple[str, int], str]] = {}
    warn_share: ClassVar[float] = sla.DEFAULT_WARN_SHARE
    calendar: ClassVar[sla.WorkCalendar] = sla.DEFAULT_CALENDAR
    # The calendar as its file has it, before the days edited through the API.
    file_calendar: ClassVar[sla.WorkCalendar] = sla.DEFAULT_CALENDAR
    # Names of the file's holidays, and the edited days: date -> (kind, name, actor).
    day_names: ClassVar[Mapping[date, str]] = {}
    edited_days: ClassVar[Mapping[date, tuple[str, str, str]]] = {}
    tz: ClassVar[str] = DEFAULT_TOWN_TZ
    years: ClassVar[tuple[CalendarYear, ...]] = ()
    scale: ClassVar[float] = 1.0
    # What an operator must be told about the calendar (Calendar.coverage_warnings).
    warnings: ClassVar[tuple[str, ...]] = ()
    sla_file: ClassVar[Path] = DEFAULT_SLA_FILE
    calendar_file: ClassVar[Path] = DEFAULT_CALENDAR_FILE


def shipped_calendar(tz: str = DEFAULT_TOWN_TZ) -> Calendar:
    """The calendar shipped in the package (tests and tools without a hub)."""
    return parse_calendar(read_toml(DEFAULT_CALENDAR_FILE), tz)
