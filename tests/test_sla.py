"""SLA deadlines over working calendars (pure, table-driven)."""

from __future__ import annotations

import math
import random
from datetime import date, datetime, timedelta, timezone

import pytest

from dispatch.sla import (
    DEFAULT_LIMITS_BY_PRIORITY,
    SlaLimits,
    SlaTable,
    WorkCalendar,
    add_working_seconds,
    deadlines,
    remaining_s,
    sla_state,
    working_seconds_between,
)

CST = timezone(timedelta(hours=8))
H = 3600.0


def cst(y: int, mo: int, d: int, hh: int = 0, mm: int = 0) -> float:
    return datetime(y, mo, d, hh, mm, tzinfo=CST).timestamp()


def days(start: date, end: date) -> frozenset[date]:
    return frozenset(start + timedelta(n) for n in range((end - start).days + 1))


OFFICE = WorkCalendar()  # Mon-Fri 08:30-17:30, no lunch break
LUNCH = WorkCalendar(lunch=("12:00", "13:30"))
# Spring Festival 2025: 28 Jan - 4 Feb off; Sunday 26 Jan and Saturday 8 Feb worked (调休).
SPRING_2025 = WorkCalendar(
    holidays=days(date(2025, 1, 28), date(2025, 2, 4)),
    extra_workdays=frozenset({date(2025, 1, 26), date(2025, 2, 8)}),
)
SIX_DAY = WorkCalendar(workdays=frozenset(range(6)))
UTC_CAL = WorkCalendar(tz_offset_s=0)

# 2025-01-06 is a Monday.
MON = (2025, 1, 6)


@pytest.mark.parametrize(
    ("cal", "start", "seconds", "expected", "why"),
    [
        (OFFICE, cst(*MON, 9), H, cst(*MON, 10), "inside the day"),
        (OFFICE, cst(*MON, 17), H, cst(2025, 1, 7, 9), "overnight"),
        (OFFICE, cst(2025, 1, 10, 17), H, cst(2025, 1, 13, 9), "over the weekend"),
        (OFFICE, cst(2025, 1, 11, 10), H, cst(2025, 1, 13, 9, 30), "starting on Saturday"),
        (OFFICE, cst(*MON, 7), H, cst(*MON, 9, 30), "before opening"),
        (OFFICE, cst(*MON, 17), 0.5 * H, cst(*MON, 17, 30), "ends exactly at closing"),
        (OFFICE, cst(*MON, 8, 30), 27 * H, cst(2025, 1, 8, 17, 30), "three working days"),
        (OFFICE, cst(2025, 1, 11, 3), 0, cst(2025, 1, 11, 3), "zero needs no working time"),
        (OFFICE, cst(*MON, 9), 1.5, cst(*MON, 9) + 1.5, "fractions of a second"),
        (LUNCH, cst(*MON, 11, 30), H, cst(*MON, 14), "across lunch"),
        (LUNCH, cst(*MON, 12, 15), 0.25 * H, cst(*MON, 13, 45), "starting in lunch"),
        (LUNCH, cst(*MON, 11), H, cst(*MON, 12), "ends when lunch starts"),
        (SPRING_2025, cst(2025, 1, 24, 17), H, cst(2025, 1, 26, 9), "into an adjusted Sunday"),
        (SPRING_2025, cst(2025, 1, 27, 17), H, cst(2025, 2, 5, 9), "over the holiday"),
        (SPRING_2025, cst(2025, 2, 7, 17), H, cst(2025, 2, 8, 9), "into an adjusted Saturday"),
        (SIX_DAY, cst(2025, 1, 11, 17), H, cst(2025, 1, 13, 9), "six-day week skips Sunday"),
        (
            UTC_CAL,
            cst(*MON, 16, 30),
            H,
            cst(*MON, 17, 30),
            "UTC office hours (16:30 CST = 08:30 UTC)",
        ),
    ],
)
def test_add_working_seconds(
    cal: WorkCalendar, start: float, seconds: float, expected: float, why: str
) -> None:
    assert add_working_seconds(cal, start, seconds) == pytest.approx(expected), why


@pytest.mark.parametrize(
    ("cal", "a", "b", "expected"),
    [
        (OFFICE, cst(*MON, 8), cst(*MON, 18), 9 * H),
        (OFFICE, cst(*MON, 9), cst(*MON, 9), 0.0),
        (OFFICE, cst(2025, 1, 10, 17), cst(2025, 1, 13, 9), 1 * H),
        (OFFICE, cst(2025, 1, 11), cst(2025, 1, 13), 0.0),
        (OFFICE, cst(*MON), cst(2025, 1, 13), 45 * H),
        (OFFICE, cst(*MON, 18), cst(*MON, 9), -8.5 * H),
        (LUNCH, cst(*MON, 11), cst(*MON, 14), 1.5 * H),
        (LUNCH, cst(*MON), cst(2025, 1, 7), 7.5 * H),
        (SPRING_2025, cst(2025, 1, 27, 8, 30), cst(2025, 2, 5, 8, 30), 9 * H),
        (SPRING_2025, cst(2025, 1, 25), cst(2025, 1, 27), 9 * H),
        (SPRING_2025, cst(2025, 2, 8, 12), cst(2025, 2, 10, 9), 5.5 * H + 0.5 * H),
    ],
)
def test_working_seconds_between(cal: WorkCalendar, a: float, b: float, expected: float) -> None:
    assert working_seconds_between(cal, a, b) == pytest.approx(expected)


@pytest.mark.parametrize("cal", [OFFICE, LUNCH, SPRING_2025, UTC_CAL])
def test_add_and_between_are_inverse(cal: WorkCalendar) -> None:
    rnd = random.Random(11)
    for _ in range(200):
        start = cst(2025, 1, 20) + rnd.uniform(0, 30 * 86400)
        budget = rnd.choice([1.0, 600.0, 3 * H, 20 * H, 50 * H]) * rnd.uniform(0.1, 1.0)
        end = add_working_seconds(cal, start, budget)
        assert end > start
        assert working_seconds_between(cal, start, end) == pytest.approx(budget, abs=1e-6)


def test_calendar_without_working_time_fails_loudly() -> None:
    with pytest.raises(ValueError, match="no working time"):
        add_working_seconds(WorkCalendar(workdays=frozenset()), cst(*MON), 60)
    with pytest.raises(ValueError):
        add_working_seconds(OFFICE, cst(*MON), -1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"day_start": "18:00"},
        {"day_start": "8h30"},
        {"day_end": "17:75"},
        {"day_end": "25:00"},
        {"lunch": ("07:00", "08:00")},
        {"lunch": ("13:00", "12:00")},
        {"workdays": frozenset({7})},
    ],
)
def test_calendar_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        WorkCalendar(**kwargs)  # type: ignore[arg-type]


def test_calendar_day_length() -> None:
    assert OFFICE.day_s == 9 * H and LUNCH.day_s == 7.5 * H
    assert SPRING_2025.is_workday(date(2025, 1, 26)) and not SPRING_2025.is_workday(
        date(2025, 1, 28)
    )


# ---------------------------------------------------------------------- limits and deadlines
P1 = DEFAULT_LIMITS_BY_PRIORITY[1]
P3 = DEFAULT_LIMITS_BY_PRIORITY[3]


def test_wall_clock_deadlines_count_from_opening() -> None:
    t = cst(2025, 1, 11, 3)  # Saturday night: wall-clock limits do not care
    assert deadlines(P1, OFFICE, t) == {
        "register": t + P1.register_s,
        "dispatch": t + P1.dispatch_s,
        "accept": t + P1.accept_s,
        "arrive": t + P1.arrive_s,
        "resolve": t + P1.resolve_s,
    }


def test_working_time_resolve_deadline() -> None:
    # Three working days from Friday 16:30: 1 h Friday, 9 Monday, 9 Tuesday, 8 Wednesday.
    d = deadlines(P3, OFFICE, cst(2025, 1, 10, 16, 30))
    assert P3.resolve_working and P3.resolve_s == 27 * H
    assert d["resolve"] == pytest.approx(cst(2025, 1, 15, 16, 30))
    assert d["register"] == cst(2025, 1, 10, 16, 30) + P3.register_s


@pytest.mark.parametrize(
    ("pauses", "shift"),
    [
        ([], {"register": 0, "dispatch": 0, "arrive": 0, "resolve": 0}),
        # 5 minutes early on: everything not yet due moves by 5 minutes.
        ([(60, 360)], {"register": 300, "dispatch": 300, "arrive": 300, "resolve": 300}),
        # After the arrival deadline passed: only resolution moves.
        ([(1300, 1400)], {"register": 0, "dispatch": 0, "arrive": 0, "resolve": 100}),
        # Overlapping pauses count once.
        (
            [(60, 360), (300, 600)],
            {"register": 540, "dispatch": 540, "arrive": 540, "resolve": 540},
        ),
        # Two pauses: the second starts before the once-shifted dispatch deadline (600).
        (
            [(60, 360), (500, 600)],
            {"register": 300, "dispatch": 400, "arrive": 400, "resolve": 400},
        ),
        # An open pause stops the clock for good.
        (
            [(60, None)],
            {"register": math.inf, "dispatch": math.inf, "arrive": math.inf, "resolve": math.inf},
        ),
        ([(1300, None)], {"register": 0, "dispatch": 0, "arrive": 0, "resolve": math.inf}),
    ],
)
def test_pauses_shift_wall_deadlines(
    pauses: list[tuple[float, float | None]], shift: dict[str, float]
) -> None:
    t = cst(*MON, 10)
    base = deadlines(P1, OFFICE, t)
    moved = deadlines(P1, OFFICE, t, [(t + s, None if e is None else t + e) for s, e in pauses])
    for stage, delta in shift.items():
        assert moved[stage] - base[stage] == delta, stage


@pytest.mark.parametrize(
    ("opened", "pause", "expected"),
    [
        # Paused Tue 17:00 - Wed 17:00 (9 working hours): Thu 09:00 -> Fri 09:00.
        (cst(*MON, 9), (cst(2025, 1, 7, 17), cst(2025, 1, 8, 17)), cst(2025, 1, 10, 9)),
        # A pause over the weekend costs no working time.
        (
            cst(2025, 1, 10, 16, 30),
            (cst(2025, 1, 10, 17, 30), cst(2025, 1, 13, 8, 30)),
            cst(2025, 1, 15, 16, 30),
        ),
        # A pause after the deadline changes nothing.
        (cst(*MON, 9), (cst(2025, 1, 9, 10), cst(2025, 1, 9, 11)), cst(2025, 1, 9, 9)),
    ],
)
def test_pauses_shift_working_deadline(
    opened: float, pause: tuple[float, float], expected: float
) -> None:
    assert deadlines(P3, OFFICE, opened, [pause])["resolve"] == pytest.approx(expected)


def test_bad_pause_is_rejected() -> None:
    with pytest.raises(ValueError):
        deadlines(P1, OFFICE, 0.0, [(100.0, 50.0)])


@pytest.mark.parametrize(
    ("deadline", "started", "now", "warn_share", "expected"),
    [
        (100.0, 0.0, 50.0, 0.8, "ok"),
        (100.0, 0.0, 79.9, 0.8, "ok"),
        (100.0, 0.0, 80.0, 0.8, "warning"),
        (100.0, 0.0, 100.0, 0.8, "warning"),
        (100.0, 0.0, 100.1, 0.8, "breached"),
        (100.0, 0.0, 60.0, 0.5, "warning"),
        (math.inf, 0.0, 1e12, 0.8, "ok"),
        (0.0, 0.0, 0.0, 0.8, "ok"),
    ],
)
def test_sla_state(
    deadline: float, started: float, now: float, warn_share: float, expected: str
) -> None:
    assert sla_state(deadline, started, now, warn_share) == expected


def test_sla_state_in_working_time() -> None:
    started = cst(2025, 1, 10, 17)  # Friday
    deadline = cst(2025, 1, 13, 9, 30)  # 1.5 working hours later
    monday_early = cst(2025, 1, 13, 8)
    assert sla_state(deadline, started, monday_early) == "warning"  # 98 % of wall time
    assert sla_state(deadline, started, monday_early, cal=OFFICE) == "ok"  # 33 % of work time
    assert sla_state(deadline, started, cst(2025, 1, 13, 9, 15), cal=OFFICE) == "warning"
    assert remaining_s(deadline, monday_early, OFFICE) == pytest.approx(H)
    assert remaining_s(deadline, deadline + 10) == -10
    assert remaining_s(math.inf, 0.0) == math.inf


@pytest.mark.parametrize(
    "args",
    [
        (600, 300, 900, 1200, 3600),  # dispatch before register
        (60, 300, 900, 1200, 600),  # wall-clock resolve before arrival
        (0, 300, 900, 1200, 3600),
        (60, 300, 900, 1200, -1),
    ],
)
def test_limits_validation(args: tuple[float, float, float, float, float]) -> None:
    with pytest.raises(ValueError):
        SlaLimits(*args)


def test_table_falls_back_to_priority() -> None:
    fire = SlaLimits(60, 120, 180, 600, 2 * H)
    table = SlaTable(by_category={("消防隐患", 1): fire})
    assert table.limits("消防隐患", 1) is fire
    assert table.limits("占道经营", 1) == P1
    assert table.limits("占道经营", 3) == P3
    with pytest.raises(KeyError):
        table.limits("x", 9)
