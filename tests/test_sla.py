"""SLA deadlines over working calendars (pure, table-driven)."""

from __future__ import annotations

import math
import random
from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from dispatch import reports, sla_clocks, sla_config
from dispatch.assessment import CaseFacts, assess
from dispatch.sla import (
    DEFAULT_LIMITS_BY_PRIORITY,
    SlaLimits,
    SlaTable,
    WorkCalendar,
    add_working_seconds,
    deadlines,
    local_date,
    local_day_start,
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


# ====================================================================== configuration
# The shipped files (dispatch/data): limits table and the town's working calendar.
SHIPPED = sla_config.shipped_calendar()
SHIPPED_CAL = SHIPPED.calendar
SHIPPED_TABLE, SHIPPED_WARN = sla_config.parse_table(
    sla_config.read_toml(sla_config.DEFAULT_SLA_FILE), SHIPPED_CAL)
WD = 9 * H  # one working day of the shipped calendar (08:30-17:30)


@pytest.mark.parametrize(
    ("day", "working", "why"),
    [
        (date(2026, 1, 1), False, "New Year's Day, a Thursday"),
        (date(2026, 1, 2), False, "bridging Friday after New Year's Day"),
        (date(2026, 1, 4), True, "调休: Sunday worked for New Year's Day"),
        (date(2026, 2, 13), True, "the Friday before Spring Festival"),
        (date(2026, 2, 14), True, "调休: Saturday worked before Spring Festival"),
        (date(2026, 2, 16), False, "除夕 (New Year's Eve), a Monday"),
        (date(2026, 2, 17), False, "春节 (New Year's Day), a Tuesday"),
        (date(2026, 2, 23), False, "last day of the Spring Festival holiday, a Monday"),
        (date(2026, 2, 24), True, "first working day after Spring Festival"),
        (date(2026, 2, 28), True, "调休: Saturday worked after Spring Festival"),
        (date(2026, 3, 7), False, "an ordinary Saturday"),
        (date(2026, 4, 6), False, "Qingming, Monday"),
        (date(2026, 5, 5), False, "Labour Day holiday, Tuesday"),
        (date(2026, 5, 9), True, "调休: Saturday worked for Labour Day"),
        (date(2026, 6, 19), False, "Dragon Boat Festival, Friday"),
        (date(2026, 9, 20), True, "调休: Sunday worked for National Day"),
        (date(2026, 9, 25), False, "Mid-Autumn Festival, Friday"),
        (date(2026, 10, 7), False, "National Day holiday, Wednesday"),
        (date(2026, 10, 10), True, "调休: Saturday worked for National Day"),
        (date(2026, 12, 3), True, "an ordinary Thursday"),
        (date(2027, 2, 5), False, "除夕 2027, statutory, a Friday"),
        (date(2027, 2, 8), False, "初三 2027, statutory, a Monday"),
        (date(2027, 2, 9), True, "the notice for 2027 is not known: no bridging days shipped"),
        (date(2027, 10, 1), False, "National Day 2027, statutory"),
    ],
)
def test_shipped_calendar(day: date, working: bool, why: str) -> None:
    assert SHIPPED_CAL.is_workday(day) is working, why


def test_shipped_calendar_says_where_each_year_comes_from() -> None:
    years = {y.year: y for y in SHIPPED.years}
    assert years[2026].status == "official" and "2026" in years[2026].source
    assert years[2026].holidays == 33 and years[2026].workdays == 6
    assert years[2027].status == "statutory-only" and years[2027].workdays == 0
    assert SHIPPED.coverage_warnings(date(2026, 12, 3)) == [
        "the working calendar's 2027 dates are statutory-only (not from the State Council's "
        "notice): adjusted working days are missing"]
    assert len(SHIPPED.coverage_warnings(date(2028, 1, 1))) == 2  # neither 2028 nor 2029
    assert SHIPPED_CAL.tz_offset_s == 8 * 3600 and SHIPPED.tz == "Asia/Shanghai"


def test_shipped_table() -> None:
    assert SHIPPED_WARN == 0.8
    # The "*" rows are the built-in defaults, so a hub without the file judges the same.
    assert dict(SHIPPED_TABLE.by_priority) == dict(DEFAULT_LIMITS_BY_PRIORITY)
    p3 = SHIPPED_TABLE.limits("city_order", 3)
    assert (p3.register_s, p3.arrive_s, p3.resolve_s, p3.resolve_working) == (
        30 * 60, 24 * H, 3 * WD, True)
    # Per category: a gas leak is made safe on the wall clock whatever its priority.
    gas = SHIPPED_TABLE.limits("gas_leak", 3)
    assert (gas.arrive_s, gas.resolve_s, gas.resolve_working) == (H, 24 * H, False)
    assert SHIPPED_TABLE.limits("gas_leak", 1) == SHIPPED_TABLE.limits("city_order", 1)


# Spring Festival 2026: 15-23 February off; Saturday 14 and Saturday 28 February worked.
BEFORE_SPRING = cst(2026, 2, 13, 16)  # Friday 16:00, town time


def test_breach_across_spring_festival() -> None:
    """A normal (p3) case reported on the Friday afternoon before Spring Festival has three
    working days to be resolved: 1.5 h on Friday, Saturday 14th (调休), then nothing until
    Tuesday 24th; due Wednesday 25th at 16:00. A holiday-blind calendar would call it
    breached from Wednesday 18th, in the middle of the holiday."""
    limits = SHIPPED_TABLE.limits("city_order", 3)
    due = deadlines(limits, SHIPPED_CAL, BEFORE_SPRING)
    assert due["resolve"] == cst(2026, 2, 25, 16)
    assert deadlines(limits, OFFICE, BEFORE_SPRING)["resolve"] == cst(2026, 2, 18, 16)
    # Emergency stages run on the wall clock, holiday or not.
    assert due["arrive"] == BEFORE_SPRING + 24 * H
    # Closed the morning after the holiday: on time. Still open on the 25th at 17:00: late.
    assert sla_state(due["resolve"], BEFORE_SPRING, cst(2026, 2, 24, 10), cal=SHIPPED_CAL) == "ok"
    assert sla_state(due["resolve"], BEFORE_SPRING, cst(2026, 2, 25, 17)) == "breached"
    # Amber at 80 % of the working time (21.6 of 27 h): Wednesday 10:36, not mid-holiday.
    assert sla_clocks._warn_at(SHIPPED_CAL, 0.8, BEFORE_SPRING, due["resolve"], True) == (
        pytest.approx(cst(2026, 2, 25, 10, 36)))
    # Shelved over the holiday's first days (a pause): the deadline moves by the working
    # time the pause took, which over the holiday is only Saturday the 14th.
    paused = deadlines(limits, SHIPPED_CAL, BEFORE_SPRING,
                       [(cst(2026, 2, 14, 8), cst(2026, 2, 20, 12))])
    assert paused["resolve"] == cst(2026, 2, 26, 16)


def test_assessment_on_time_across_spring_festival() -> None:
    """The assessment report (dispatch/assessment.py) judges with the same calendar."""
    def case(i: int, closed: float) -> CaseFacts:
        return CaseFacts(incident_id=str(i), opened_at=BEFORE_SPRING, category="city_order",
                         priority=3, state="closed", grid="G01", grid1="G", unit="SQ-01",
                         closed_at=closed)
    cases = [case(1, cst(2026, 2, 24, 11)), case(2, cst(2026, 2, 25, 16, 30))]
    now = cst(2026, 3, 1)
    [holiday_aware] = assess(cases, "all", now=now, table=SHIPPED_TABLE, cal=SHIPPED_CAL)
    assert (holiday_aware.due, holiday_aware.on_time) == (2, 1)
    [blind] = assess(cases, "all", now=now, table=SHIPPED_TABLE, cal=OFFICE)
    assert blind.on_time == 0


@pytest.mark.parametrize(
    ("ts", "town_day", "utc_day"),
    [
        (cst(2026, 3, 2, 7, 30), date(2026, 3, 2), date(2026, 3, 1)),  # 07:30 town = 23:30 UTC
        (cst(2026, 3, 2, 0, 0), date(2026, 3, 2), date(2026, 3, 1)),
        (cst(2026, 3, 1, 23, 59), date(2026, 3, 1), date(2026, 3, 1)),
        (cst(2026, 3, 2, 8, 0), date(2026, 3, 2), date(2026, 3, 2)),
    ],
)
def test_town_day_boundaries(ts: float, town_day: date, utc_day: date) -> None:
    assert local_date(SHIPPED_CAL, ts) == town_day
    assert datetime.fromtimestamp(ts, UTC).date() == utc_day
    start = local_day_start(SHIPPED_CAL, town_day)
    assert start <= ts < start + 86_400
    assert start == cst(town_day.year, town_day.month, town_day.day)


def test_report_days_are_town_days() -> None:
    since, until = town_day_range_in(date(2026, 3, 2), date(2026, 3, 2))
    assert (since, until) == (cst(2026, 3, 2), cst(2026, 3, 3))
    assert datetime.fromtimestamp(since, UTC).hour == 16  # 16:00 UTC the day before


def town_day_range_in(first: date, last: date) -> tuple[float, float]:
    saved = sla_config.InForce.calendar
    sla_config.InForce.calendar = SHIPPED_CAL
    try:
        return reports.town_day_range(first, last)
    finally:
        sla_config.InForce.calendar = saved


@pytest.mark.parametrize(
    ("text", "working_ok", "expected"),
    [
        ("20m", False, (1200.0, False)),
        ("4h", False, (4 * H, False)),
        ("1.5d", False, (1.5 * 86400, False)),
        ("90s", False, (90.0, False)),
        ("3wd", True, (3 * WD, True)),
        ("27wh", True, (27 * H, True)),
        (" 5 wd ", True, (5 * WD, True)),
    ],
)
def test_parse_duration(text: str, working_ok: bool, expected: tuple[float, bool]) -> None:
    assert sla_config.parse_duration(text, working_ok=working_ok, day_s=WD) == expected


OK_ROW = {"register": "2m", "dispatch": "5m", "accept": "8m", "arrive": "20m",
          "resolve": "4h"}


def _limits_doc(star: dict[str, object] | None = None, more: dict[str, object] | None = None,
                **top: object) -> dict[str, object]:
    """A limits file: every "*" priority OK_ROW unless ``star`` says otherwise."""
    limits: dict[str, object] = {"*": star if star is not None else
                                 {str(p): OK_ROW for p in (1, 2, 3, 4)}}
    limits.update(more or {})
    return {"limits": limits, **top}


def _every_p(**changes: str) -> dict[str, object]:
    return {str(p): {**OK_ROW, **changes} for p in (1, 2, 3, 4)}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (_limits_doc(warn_share=1.2), "warn_share"),
        (_limits_doc(warn_share=True), "warn_share"),
        ({"limits": {"x": {}}}, 'limits."*"'),
        (_limits_doc(star={"1": {"register": "2m"}}), "limits need exactly"),
        (_limits_doc(star={"1": OK_ROW}), "priorities [2, 3, 4] are missing"),
        (_limits_doc(star=_every_p(arrive="1wd")), "only the resolve limit"),
        (_limits_doc(star=_every_p(register="9m")), "register <= dispatch"),
        (_limits_doc(star=_every_p(register="2 min")), "a duration"),
        (_limits_doc(more={"noise": {"5": OK_ROW}}), "priority 5"),
        (_limits_doc(more={"Bad-Name": {"1": OK_ROW}}), "category 'Bad-Name'"),
    ],
)
def test_limits_file_errors(doc: dict[str, object], message: str) -> None:
    with pytest.raises(sla_config.SlaConfigError) as e:
        sla_config.parse_table(doc, SHIPPED_CAL)
    assert message in str(e.value)


def _cal_doc(**year: object) -> dict[str, object]:
    y: dict[str, object] = {"status": "official", "source": "test notice", "holidays": [],
                            "workdays": []}
    y.update(year)
    return {"years": {"2026": y}}


@pytest.mark.parametrize(
    ("doc", "tz", "message"),
    [
        (_cal_doc(), "Mars/Olympus", "unknown time zone"),
        (_cal_doc(), "Europe/Berlin", "daylight saving"),
        (_cal_doc(status="rumour"), "Asia/Shanghai", "status"),
        (_cal_doc(source=""), "Asia/Shanghai", "say where the dates come from"),
        (_cal_doc(holidays=[{"name": "x", "from": date(2026, 2, 3), "to": date(2026, 2, 1)}]),
         "Asia/Shanghai", "ends before it starts"),
        (_cal_doc(workdays=[date(2027, 1, 2)]), "Asia/Shanghai", "not in 2026"),
        (_cal_doc(holidays=[{"name": "x", "from": date(2026, 2, 1), "to": date(2026, 2, 1)}],
                  workdays=[date(2026, 2, 1)]), "Asia/Shanghai", "both a holiday"),
        ({"hours": {"workdays": ["monday"]}}, "Asia/Shanghai", "hours.workdays"),
        ({"hours": {"day_start": "18:00"}}, "Asia/Shanghai", "day_start must be before"),
    ],
)
def test_calendar_file_errors(doc: dict[str, object], tz: str, message: str) -> None:
    with pytest.raises(sla_config.SlaConfigError) as e:
        sla_config.parse_calendar(doc, tz)
    assert message in str(e.value)


def test_town_calendar_replaces_the_shipped_one() -> None:
    """A town's own file: six-day week with a lunch break, its own holiday, in UTC+7."""
    doc = {"hours": {"workdays": ["mon", "tue", "wed", "thu", "fri", "sat"],
                     "day_start": "08:00", "day_end": "17:00", "lunch": ["12:00", "13:00"]},
           "years": {"2026": {"status": "official", "source": "town decree 1/2026",
                              "holidays": [{"name": "fair", "from": date(2026, 3, 3),
                                            "to": date(2026, 3, 3)}]}}}
    cal = sla_config.parse_calendar(doc, "Asia/Bangkok")
    assert cal.calendar.tz_offset_s == 7 * 3600 and cal.calendar.day_s == 8 * 3600
    assert cal.calendar.is_workday(date(2026, 3, 7))  # Saturday
    assert not cal.calendar.is_workday(date(2026, 3, 3))
    # Monday 16:30 Bangkok time + 1 working hour: Wednesday (Tuesday is the fair) 08:30.
    start = datetime(2026, 3, 2, 16, 30, tzinfo=timezone(timedelta(hours=7))).timestamp()
    assert add_working_seconds(cal.calendar, start, H) == datetime(
        2026, 3, 4, 8, 30, tzinfo=timezone(timedelta(hours=7))).timestamp()
