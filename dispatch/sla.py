"""SLA deadlines: wall-clock and working-time limits, pauses, and the traffic light.

Pure: timestamps in, timestamps out. A ``WorkCalendar`` says when the township
government works: weekdays, office hours (optionally a lunch break), public
holidays and the weekend days that are worked instead (调休). Emergency stages
(register, dispatch, accept, arrive) run on the wall clock; resolution may run on
working time (``SlaLimits.resolve_working``).

Every limit is measured from the incident's ``opened_at`` (the report), not from
the previous step, so one slow step cannot be hidden by a fast next one.
Extension pauses and shelving stop the clock: a pause shifts every deadline that
had not yet passed when the pause began by the time (wall or working, matching
the limit) the pause lasted; an open pause pushes them to infinity.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date

# China Standard Time: UTC+8 all year, no daylight saving.
CHINA_TZ_OFFSET_S = 8 * 3600

DAY_S = 86_400
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()

# add_working_seconds gives up after this many calendar days: a calendar with no
# working time at all (or a mis-typed one) must fail loudly, not loop forever.
MAX_CALENDAR_DAYS = 3 * 366

STAGES: tuple[str, ...] = ("register", "dispatch", "accept", "arrive", "resolve")

# Share of the allowed time after which a running stage shows amber on the console:
# at 80 % there is still time to act, and few stages sit there for long.
DEFAULT_WARN_SHARE = 0.8


def _hhmm(text: str) -> int:
    """Seconds after midnight of an ``HH:MM`` string (``24:00`` allowed)."""
    hh, _, mm = text.partition(":")
    if not (hh.isascii() and hh.isdigit() and mm.isascii() and mm.isdigit() and len(mm) == 2):
        raise ValueError(f"bad time of day {text!r}, expected HH:MM")
    secs = int(hh) * 3600 + int(mm) * 60
    if int(mm) >= 60 or secs > DAY_S:
        raise ValueError(f"bad time of day {text!r}")
    return secs


@dataclass(frozen=True, slots=True)
class WorkCalendar:
    """When working time runs.

    A date is a working day if it is in ``extra_workdays`` (调休: a weekend day
    worked to bridge a holiday), else if it is not in ``holidays`` and its
    weekday (Monday = 0) is in ``workdays``. On a working day the hours
    ``day_start``-``day_end`` count, minus the optional ``lunch`` break
    (``("12:00", "13:30")``). Local time is UTC + ``tz_offset_s``.
    """

    workdays: frozenset[int] = frozenset({0, 1, 2, 3, 4})
    day_start: str = "08:30"
    day_end: str = "17:30"
    lunch: tuple[str, str] | None = None
    holidays: frozenset[date] = frozenset()
    extra_workdays: frozenset[date] = frozenset()
    tz_offset_s: int = CHINA_TZ_OFFSET_S
    # Working intervals of a working day, seconds after local midnight (derived).
    intervals: tuple[tuple[int, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        start, end = _hhmm(self.day_start), _hhmm(self.day_end)
        if not start < end:
            raise ValueError("day_start must be before day_end")
        spans = [(start, end)]
        if self.lunch is not None:
            ls, le = _hhmm(self.lunch[0]), _hhmm(self.lunch[1])
            if not start < ls < le < end:
                raise ValueError("lunch must lie strictly inside the working day")
            spans = [(start, ls), (le, end)]
        if not self.workdays <= frozenset(range(7)):
            raise ValueError("workdays are weekday numbers 0 (Monday) .. 6 (Sunday)")
        object.__setattr__(self, "intervals", tuple(spans))

    @property
    def day_s(self) -> int:
        """Working seconds in one working day."""
        return sum(e - s for s, e in self.intervals)

    def is_workday(self, d: date) -> bool:
        if d in self.extra_workdays:
            return True
        return d not in self.holidays and d.weekday() in self.workdays


DEFAULT_CALENDAR = WorkCalendar()


def _local_day(cal: WorkCalendar, ts: float) -> tuple[int, float]:
    """(day number since 1970-01-01 local, seconds into that local day)."""
    local = ts + cal.tz_offset_s
    day = math.floor(local / DAY_S)
    return day, local - day * DAY_S


def _date(day: int) -> date:
    return date.fromordinal(_EPOCH_ORDINAL + day)


def local_date(cal: WorkCalendar, ts: float) -> date:
    """The calendar's (the town's) date at instant ``ts``: a case reported at 07:30 town
    time belongs to that town day, not to the previous UTC day."""
    return _date(_local_day(cal, ts)[0])


def local_day_start(cal: WorkCalendar, d: date) -> float:
    """The instant (UNIX seconds) the town day ``d`` begins: local midnight."""
    return float((d.toordinal() - _EPOCH_ORDINAL) * DAY_S - cal.tz_offset_s)


def add_working_seconds(cal: WorkCalendar, start_ts: float, seconds: float) -> float:
    """The instant at which ``seconds`` of working time have elapsed after ``start_ts``.

    ``seconds == 0`` returns ``start_ts`` unchanged (nothing has to elapse), even
    outside working hours. A budget that runs out exactly at the end of a working
    interval returns that end (e.g. 17:30), not the next morning. Raises
    ``ValueError`` for a negative budget or a calendar without working time.
    """
    if seconds < 0:
        raise ValueError("seconds must be >= 0")
    if seconds == 0:
        return start_ts
    remaining = float(seconds)
    day, pos = _local_day(cal, start_ts)
    for _ in range(MAX_CALENDAR_DAYS + int(seconds // DAY_S) + 1):
        if cal.is_workday(_date(day)):
            for s, e in cal.intervals:
                lo = max(float(s), pos)
                if lo >= e:
                    continue
                if remaining <= e - lo:
                    return day * DAY_S + lo + remaining - cal.tz_offset_s
                remaining -= e - lo
        day += 1
        pos = 0.0
    raise ValueError(f"no working time found within {MAX_CALENDAR_DAYS} days")


def working_seconds_between(cal: WorkCalendar, a: float, b: float) -> float:
    """Working seconds in ``[a, b]``; negative if ``b < a``."""
    if b < a:
        return -working_seconds_between(cal, b, a)
    day_a, pos_a = _local_day(cal, a)
    day_b, pos_b = _local_day(cal, b)
    total = 0.0
    for day in range(day_a, day_b + 1):
        if not cal.is_workday(_date(day)):
            continue
        lo_cut = pos_a if day == day_a else 0.0
        hi_cut = pos_b if day == day_b else float(DAY_S)
        for s, e in cal.intervals:
            lo = max(float(s), lo_cut)
            hi = min(float(e), hi_cut)
            if hi > lo:
                total += hi - lo
    return total


@dataclass(frozen=True, slots=True)
class SlaLimits:
    """Limits for one (category, priority), each in seconds from ``opened_at``.

    ``register_s`` .. ``arrive_s`` are wall-clock seconds and must not decrease
    from one stage to the next. ``resolve_s`` is wall-clock seconds, or working
    seconds of the calendar when ``resolve_working`` is true.
    """

    register_s: float
    dispatch_s: float
    accept_s: float
    arrive_s: float
    resolve_s: float
    resolve_working: bool = False

    def __post_init__(self) -> None:
        wall = [self.register_s, self.dispatch_s, self.accept_s, self.arrive_s]
        if min([*wall, self.resolve_s]) <= 0:
            raise ValueError("SLA limits must be positive")
        if wall != sorted(wall):
            raise ValueError("register <= dispatch <= accept <= arrive limits, all from opening")
        if not self.resolve_working and self.resolve_s < self.arrive_s:
            raise ValueError("a wall-clock resolve limit must not precede arrival")


_H = 3600.0
_WORKDAY = float(DEFAULT_CALENDAR.day_s)  # 9 working hours with the default calendar

# Starting values for the command center to tune in settings. Critical and major
# incidents (fire risk, hazardous leaks, public order) run on the wall clock around
# the clock; normal and low ones (city appearance, stalls, noise) are resolved in
# working days like other government matters. Arrival limits follow the township's
# size: ~20 minutes reaches any grid by road.
DEFAULT_LIMITS_BY_PRIORITY: Mapping[int, SlaLimits] = {
    1: SlaLimits(2 * 60, 5 * 60, 8 * 60, 20 * 60, 4 * _H),
    2: SlaLimits(10 * 60, 20 * 60, 30 * 60, 1 * _H, 24 * _H),
    3: SlaLimits(30 * 60, 2 * _H, 4 * _H, 24 * _H, 3 * _WORKDAY, resolve_working=True),
    4: SlaLimits(2 * _H, 8 * _H, 24 * _H, 72 * _H, 5 * _WORKDAY, resolve_working=True),
}


@dataclass(frozen=True, slots=True)
class SlaTable:
    """Limits per (category, priority), falling back to limits per priority."""

    by_category: Mapping[tuple[str, int], SlaLimits] = field(default_factory=dict)
    by_priority: Mapping[int, SlaLimits] = field(
        default_factory=lambda: dict(DEFAULT_LIMITS_BY_PRIORITY)
    )

    def limits(self, category: str, priority: int) -> SlaLimits:
        """The limits for an incident; ``KeyError`` if neither table has them."""
        found = self.by_category.get((category, priority))
        return found if found is not None else self.by_priority[priority]


def _shift_wall(deadline: float, pauses: Sequence[tuple[float, float | None]]) -> float:
    for start, end in pauses:
        if start >= deadline:
            break
        if end is None:
            return math.inf
        deadline += max(0.0, end - start)
    return deadline


def _shift_working(
    cal: WorkCalendar, deadline: float, pauses: Sequence[tuple[float, float | None]]
) -> float:
    for start, end in pauses:
        if start >= deadline:
            break
        if end is None:
            return math.inf
        # The clock stops at `start` with this much working time left, and restarts at `end`.
        left = working_seconds_between(cal, start, deadline)
        deadline = add_working_seconds(cal, max(start, end), left)
    return deadline


def deadlines(
    limits: SlaLimits,
    cal: WorkCalendar,
    opened_at: float,
    pauses: Sequence[tuple[float, float | None]] = (),
) -> dict[str, float]:
    """The deadline of every stage in ``STAGES``, as UNIX timestamps.

    ``pauses`` are ``(start, end)`` intervals in which the clock stood still
    (``end`` ``None`` for a pause still open: the deadlines it affects are
    ``math.inf``), e.g. ``CaseState.all_pauses()``. A pause only shifts
    deadlines that had not passed when it started; overlapping pauses are
    merged first.
    """
    merged = _merge(pauses)
    wall = {
        "register": limits.register_s,
        "dispatch": limits.dispatch_s,
        "accept": limits.accept_s,
        "arrive": limits.arrive_s,
    }
    out = {stage: _shift_wall(opened_at + limit, merged) for stage, limit in wall.items()}
    if limits.resolve_working:
        base = add_working_seconds(cal, opened_at, limits.resolve_s)
        out["resolve"] = _shift_working(cal, base, merged)
    else:
        out["resolve"] = _shift_wall(opened_at + limits.resolve_s, merged)
    return out


def _merge(
    pauses: Sequence[tuple[float, float | None]],
) -> list[tuple[float, float | None]]:
    out: list[tuple[float, float | None]] = []
    for start, end in sorted(pauses, key=lambda p: p[0]):
        if end is not None and end < start:
            raise ValueError(f"pause ends before it starts: {start} > {end}")
        if out:
            last_start, last_end = out[-1]
            if last_end is None:
                break  # an open pause swallows everything after it
            if start <= last_end:
                new_end = None if end is None else max(last_end, end)
                out[-1] = (last_start, new_end)
                continue
        out.append((start, end))
    return out


def sla_state(
    deadline: float,
    started: float,
    now: float,
    warn_share: float = DEFAULT_WARN_SHARE,
    cal: WorkCalendar | None = None,
) -> str:
    """``"ok"``, ``"warning"`` or ``"breached"`` for a stage started at ``started``.

    Breached once ``now`` is past ``deadline``; warning once ``warn_share`` of
    the allowed time (``started`` to ``deadline``) has elapsed. With ``cal`` the
    shares are measured in working time (for working-time deadlines). For a
    completed stage pass its completion time as ``now``. An infinite deadline
    (paused clock) is always ``"ok"``.
    """
    if math.isinf(deadline):
        return "ok"
    if now > deadline:
        return "breached"
    if cal is None:
        allowed = deadline - started
        used = now - started
    else:
        allowed = working_seconds_between(cal, started, deadline)
        used = working_seconds_between(cal, started, now)
    if allowed <= 0:
        return "ok"
    return "warning" if used >= warn_share * allowed else "ok"


def remaining_s(deadline: float, now: float, cal: WorkCalendar | None = None) -> float:
    """Time left until ``deadline`` (negative when overdue); working time with ``cal``."""
    if math.isinf(deadline):
        return math.inf
    if cal is None:
        return deadline - now
    return working_seconds_between(cal, now, deadline)
